"""One real GPU against bench/bench_memory.py's estimate: the trainer's micro-batch on a random Qwen3-4B, peak memory.

    python bench/gpu_check.py --estimate est.json   # first, on any CPU machine: the estimate only (~1 min)
    python bench/gpu_check.py --estimate est.json   # then on the GPU machine: 2 x 16,384 tokens, ~1-2 min
    python bench/gpu_check.py --seq-len 20000 --completion 16384   # POPE's 2 x 20k (estimate 86.7 GiB)

Expected time on one H200 (not yet run on a GPU): model build well under a minute, the measured micro-batch under a
minute, plus about a minute of CPU for the estimate when est.json is not brought along: 2-3 minutes, well under 10.
It needs about 82 GiB free at the default size (one rank holds the whole fp32 training state, 60 GiB, and the
estimate is 81.8 GiB): on an 80 GB card it stops before building anything, with exit status 2.

What it runs: one process on one GPU, the way `grpo.train` runs without torchrun: `grpo.load_model` builds
Qwen3-4B-Instruct-2507's architecture (`bench_memory.QWEN3_4B`) with random weights (from_pretrained is swapped for
from_config on the GPU: nothing is downloaded), fp32 master weights, gradient checkpointing; AdamW as the trainer makes
it (foreach: torch's default on CUDA); bf16 autocast. First a 2 x 8-token micro-batch and an optimizer step, so that
gradients and AdamW's state exist as at a run's second micro-batch; then torch.cuda.reset_peak_memory_stats and the
measured micro-batch: 2 right-padded sequences (seq_len and seq_len - 1 tokens, --completion of them completion
tokens) through grpo.micro_batch_stats (Policy -> token_stats, logits in chunks of --chunk positions), grpo.grpo_loss and
backward (bench_memory.micro_batch_loss: the body of grpo.update's loop); then clip_grad_norm_ and AdamW.step.

What it measures: torch.cuda.max_memory_allocated over forward + backward and over the optimizer step, the reserved
peak (allocator fragmentation = reserved - allocated), the memory outside PyTorch (total - free - reserved: CUDA
context, cuBLAS), the card's total memory, and which attention kernel ran with the boolean mask. Then it computes
bench_memory.measure(world=1) at the same shape (fake tensors, on this machine's CPU) and compares.

Exit status: 1 if a measured peak exceeds its estimate by more than --margin (default 0.10, i.e. 10%); 2 if no GPU,
or the card is too small for the estimate; 0 otherwise. An estimate above the measurement by more than the margin is
reported, not failed. The last line is one JSON object with every number.

Deliberately left out: vLLM (its share is utilization x card by definition), FSDP (one GPU has none: the 8-rank
estimate is checked only through the shared code), and the reference model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_memory as bm  # noqa: E402  (it puts the repository on sys.path and imports grpo)
from bench_memory import GiB, grpo  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402


@contextmanager
def random_weights(config: dict, device: torch.device):
    """grpo.load_model's `from_pretrained(name, dtype=...)` builds `config` with random weights on `device` instead."""
    hf_config = AutoConfig.for_model(**config)

    def build(_name, dtype):
        with torch.device(device):
            return AutoModelForCausalLM.from_config(hf_config, dtype=dtype)

    with mock.patch.object(grpo.AutoModelForCausalLM, "from_pretrained", build):
        yield


class AttentionProbe(TorchDispatchMode):
    """Records the attention kernels that run (below autocast and SDPA's dispatch) and the largest boolean and
    floating 4-d [..., S, S] tensor (the mask, and the additive bias made from it)."""

    def __init__(self, seq_len: int):
        super().__init__()
        self.seq_len, self.kernels, self.mask_bytes = seq_len, set(), {"bool": 0, "float": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if "attention" in func.name():
            self.kernels.add(func.name())
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() == 4 and tuple(t.shape[-2:]) == (self.seq_len, self.seq_len):
                kind = "bool" if t.dtype == torch.bool else "float"
                self.mask_bytes[kind] = max(self.mask_bytes[kind], t.untyped_storage().nbytes())
        return out


def on_device(batch: bm.Batch, device) -> bm.Batch:
    ro = batch.rollouts
    rollouts = grpo.Rollouts(*(getattr(ro, f).to(device) for f in
                               ("ids", "attention_mask", "loss_mask", "sampler_logp", "adv")),
                             seq_lens=ro.seq_lens, completion_lens=ro.completion_lens)  # on the host
    return bm.Batch(rollouts, batch.weights.to(device), batch.true_counts, batch.n_tokens)


def measure_gpu(shape: bm.Shape, device: torch.device) -> dict:
    """The trainer's steady-state micro-batch and optimizer step on one GPU; bytes."""
    cfg = bm.train_config(shape, with_ref=False)
    cfg.model = "(random weights)"
    started = time.perf_counter()
    with random_weights(bm.QWEN3_4B, device):
        policy = grpo.load_model(cfg, device, world=1, trainable=True)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)  # as grpo.train
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)  # grpo.train on one GPU with bf16
    warm = on_device(bm.micro_batch(bm.Shape(seqs=2, seq_len=8, completion=4, chunk=shape.chunk), cfg.loss_agg), device)
    bm.micro_batch_loss(policy, None, warm, cfg, autocast).backward()
    optimizer.step()
    batch = on_device(bm.micro_batch(shape, cfg.loss_agg), device)
    torch.cuda.synchronize(device)
    built = time.perf_counter() - started
    state = torch.cuda.memory_allocated(device)  # params + grads + AdamW state (+ the batch)
    torch.cuda.reset_peak_memory_stats(device)
    probe = AttentionProbe(shape.seq_len)
    started = time.perf_counter()
    with probe:
        bm.micro_batch_loss(policy, None, batch, cfg, autocast).backward()
    torch.cuda.synchronize(device)
    micro_batch_s = time.perf_counter() - started
    peak, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
    optimizer.step()
    torch.cuda.synchronize(device)
    step_peak = torch.cuda.max_memory_allocated(device)
    free, total = torch.cuda.mem_get_info(device)
    return {"state_bytes": state, "peak": peak, "peak_reserved": reserved, "step_peak": step_peak,
            "outside_pytorch": total - free - torch.cuda.memory_reserved(device), "card_bytes": total,
            "card": torch.cuda.get_device_name(device), "attention_kernels": sorted(probe.kernels),
            "mask_bytes": probe.mask_bytes, "build_s": built, "micro_batch_s": micro_batch_s}


def load_or_measure_estimate(path: Path | None, shape: bm.Shape) -> dict:
    """bench_memory.measure for one GPU at `shape` (fake tensors, about a minute of CPU), cached in `path`."""
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved["shape"] != vars(shape):
            sys.exit(f"gpu_check: {path} holds the estimate for {saved['shape']}, not {vars(shape)}")
        return saved["estimate"]
    estimate = bm.measure(bm.QWEN3_4B, 1, shape)
    if path is not None:
        path.write_text(json.dumps({"shape": vars(shape), "estimate": estimate}))
    return estimate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seqs", type=int, default=2, help="sequences in the micro-batch (POPE: 2)")
    parser.add_argument("--seq-len", type=int, default=16_384, help="padded length S (POPE's seq_length: 20,000)")
    parser.add_argument("--completion", type=int, default=15_360, help="completion tokens per sequence")
    parser.add_argument("--chunk", type=int, default=512, help="grpo --logprob-chunk")
    parser.add_argument("--margin", type=float, default=0.10, help="fail if measured > (1 + margin) x estimate")
    parser.add_argument("--estimate", type=Path,
                        help="read bench_memory's estimate from this file if it exists (same shape), else compute it "
                             "and write it there; without a GPU, writing it is all this does (saves a minute of "
                             "GPU time: make it on a CPU machine, bring the file along)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and args.estimate is None:
        print("gpu_check: no CUDA device here; run it on a machine with one GPU (see the docstring)")
        return 2
    shape = bm.Shape(args.seqs, args.seq_len, args.completion, args.chunk)
    estimate = load_or_measure_estimate(args.estimate, shape)
    need = max(estimate["peak"][bm.TOTAL], estimate["step_peak"][bm.TOTAL])
    print(f"the estimate for 1 GPU, {shape.seqs} x {shape.seq_len:,} tokens: {need / GiB:.2f} GiB "
          f"({estimate['seconds']:.0f} s on a CPU)")
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here; the estimate is in {args.estimate}")
        return 0
    device = torch.device("cuda", 0)
    free, total = torch.cuda.mem_get_info(device)
    print(f"{torch.cuda.get_device_name(device)}: {total / GiB:.2f} GiB, {free / GiB:.2f} GiB free")
    if need > free:
        print("gpu_check: the estimate does not fit in this card's free memory; lower --seq-len")
        print(json.dumps({"shape": vars(shape), "card_bytes": total, "free_bytes": free, "estimate_bytes": need}))
        return 2
    gpu = measure_gpu(shape, device)
    checks = [("training state before the micro-batch", gpu["state_bytes"], bm.rows(estimate["peak"])["state"]),
            ("peak, forward + backward", gpu["peak"], estimate["peak"][bm.TOTAL]),
            ("peak, clip + AdamW step", gpu["step_peak"], estimate["step_peak"][bm.TOTAL])]
    print(f"{'GiB':<40}{'measured':>10}{'estimate':>10}{'ratio':>8}")
    failed = False
    for name, measured, estimated in checks:
        ratio = measured / estimated
        flag = ""
        if name.startswith("peak") and ratio > 1 + args.margin:
            flag, failed = "  MEASURED ABOVE THE ESTIMATE + margin", True
        elif name.startswith("peak") and ratio < 1 - args.margin:
            flag = "  (estimate pessimistic by more than the margin)"
        print(f"{name:<40}{measured / GiB:>10.2f}{estimated / GiB:>10.2f}{ratio:>8.3f}{flag}")
    print(f"reserved at the peak {gpu['peak_reserved'] / GiB:.2f} GiB (fragmentation "
          f"{(gpu['peak_reserved'] - gpu['peak']) / GiB:.2f}); outside PyTorch {gpu['outside_pytorch'] / GiB:.2f} GiB; "
          f"attention kernels {gpu['attention_kernels']}; mask bytes {gpu['mask_bytes']} (estimate "
          f"{estimate['mask_bytes']}); model build {gpu['build_s']:.0f} s, micro-batch {gpu['micro_batch_s']:.0f} s")
    print(json.dumps({"shape": vars(shape), "margin": args.margin, "gpu": gpu, "estimate": {k: estimate[k] for k in (
        "peak", "step_peak", "after_forward", "mask_bytes", "shard_bytes", "grad_bytes", "adam_bytes")},
        "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
