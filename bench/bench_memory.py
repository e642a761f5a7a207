"""Per-GPU memory of training Qwen3-4B with this trainer: an ESTIMATE counted on fake tensors, not multiplied by hand.

    python bench/bench_memory.py             # Qwen3-4B-Instruct-2507, 8 ranks and 1, POPE's micro-batch: ~3-4 min
    python bench/bench_memory.py --no-ref    # without the reference-model passes (--kl-coef > 0): about 1 min
    python bench/bench_memory.py --small     # the same code on a 2-layer, hidden-64 model and 2 x 48 tokens: seconds

What it measures, and how. The model is Qwen3-4B-Instruct-2507's architecture (its public config.json, `QWEN3_4B`
below; no weights, nothing is downloaded), built and run under torch's FakeTensorMode: every tensor has a shape, a
dtype and a device but no data and no memory, so a 4B-parameter model and a 2 x 20,000-token micro-batch cost
nothing. The trainer's code runs on it:
- `load_model` here is grpo.load_model line for line (fp32 master weights, gradient checkpointing, FSDP2
  `fully_shard` per decoder layer then the root, bf16 compute, fp32 gradient reduction; the reference's output
  embedding gathered whole), from `from_config` instead of `from_pretrained`. The 8 ranks are a fake process group
  (torch's FakeStore, backend "fake"): collectives move nothing, but every buffer FSDP2 makes on a rank (shards,
  all-gather and reduce-scatter buffers, unsharded bf16 copies) is made. One rank runs as grpo.train does without
  torchrun: no FSDP, fp32 weights under bf16 autocast.
- one micro-batch of POPE's training (--micro-batch-size 2, seq_length 20k, 16k-token responses): two right-padded
  sequences of 20,000 and 19,999 tokens, 16,384 completion tokens each, through `grpo.micro_batch_stats` (Policy ->
  completion_states -> token_stats, logits for 512 completion positions at a time), `grpo.token_weights`,
  `grpo.grpo_loss` and backward: the body of grpo.update's micro-batch loop (`micro_batch_loss`), not update itself,
  whose bookkeeping reads tensor values (lengths, metrics) that fake tensors do not have. Then the optimizer step as
  update runs it: clip_grad_norm_ and AdamW, foreach (torch's default on CUDA; on CPU it would loop per tensor).
- before that, untracked, a 2 x 8-token micro-batch and an optimizer step: FSDP2 initialises itself, and gradients
  (of the step's earlier micro-batches: POPE has 16 per rank per step) and AdamW's exp_avg and exp_avg_sq exist, as
  at a run's second micro-batch or later.
- memory is counted by torch.distributed._tools: FSDPMemTracker for 8 ranks, MemTracker for 1. Both are dispatch
  modes that see every tensor the ops create, follow its storage until it is freed, and keep the peak and its
  breakdown (parameters, gradients, optimizer state, unsharded copies, activations, temporaries): the number
  torch.cuda.max_memory_allocated reports for the same ops on one rank (bench/gpu_check.py checks that on a GPU;
  tests/test_bench_memory.py checks on the small model that fake tensors count what real CPU tensors hold).
- counted from the built tensors: parameters (a tied weight once), the rank's fp32 shard storage (with FSDP2's
  padding), its gradients and AdamW state, the reference's resident memory; recorded as the ops make them: the
  boolean attention mask [b, 1, S, S] and the additive bias attention makes from it.

What is assumed or stood in for, not measured:
- The tensors are fake CPU tensors (fake "cuda" tensors abort a CPU-only torch), so the kernels are the CPU ones:
  attention runs CPU flash attention with a bf16 additive bias made from transformers' boolean mask; a GPU picks its
  own SDPA kernel (gpu_check.py prints which). One rank uses CPU autocast in place of CUDA autocast (both run
  linear, matmul and SDPA in bf16; the model casts its norms to fp32 itself).
- The vLLM engine is not built. Its row is --vllm-gpu-memory-utilization x the card: vLLM loads its weights and
  sizes its KV cache to fill that fraction. Its bf16 weights (2 bytes x parameters) and KV bytes per token
  (2 x layers x KV heads x head_dim x 2 bytes) are counted from the config.
- The card sizes (--cards) are assumed, not read from a GPU (gpu_check.py prints the real one).
- Fake tensors have no values, so `FakeDataOps` answers the two kinds of op that need them: boolean-mask indexing
  gets the masks' True counts, known when the batch is built, and .item() (logged metrics, the gradient norm) gets 0.

Deliberately left out: memory outside PyTorch's allocator (the CUDA context, NCCL and cuBLAS workspaces), allocator
fragmentation (reserved minus allocated), vLLM's CUDA graphs and its activations while sampling: the headroom row is
what must cover them. Also the rollout phase and the first step (no AdamW state yet): both hold less.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import torch
import torch._guards
import torch.distributed as dist
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensor, FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import grpo  # noqa: E402

GiB = 2**30

# huggingface.co/Qwen/Qwen3-4B-Instruct-2507/blob/main/config.json, as published (copied here: nothing is downloaded)
QWEN3_4B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2560,
    "initializer_range": 0.02, "intermediate_size": 9728, "max_position_embeddings": 262144,
    "max_window_layers": 36, "model_type": "qwen3", "num_attention_heads": 32, "num_hidden_layers": 36,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 5000000,
    "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
# The same architecture, tiny, for the test. vocab 1001 is not a multiple of 8: FSDP2 pads that shard.
SMALL = {**QWEN3_4B, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "max_window_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1001,
         "bos_token_id": 0, "eos_token_id": 1}

# how the trackers' categories add up to the table's rows (FSDPMemTracker's names, then MemTracker's)
STATE = {"Sharded Param", "Sharded Grad", "OptState", "Parameter", "Gradient", "Optstate"}
COPIES = {"Unsharded Param", "All Gather"}
TOTAL = "Total"  # every other category (activations, temporaries, reduce-scatter buffers, inputs) is activation


@dataclass
class Shape:
    """One micro-batch: `seqs` right-padded sequences of seq_len, seq_len - 1, ... tokens, the last `completion` of
    each a completion token (loss and logits there), and the logit chunk of token_stats."""
    seqs: int = 2
    seq_len: int = 20_000
    completion: int = 16_384
    chunk: int = 512


POPE = Shape()
SMALL_SHAPE = Shape(seqs=2, seq_len=48, completion=32, chunk=16)


# ----------------------------------------------------------------------------------------------------------------
# Building the trainer's models on fake tensors


@contextmanager
def fake_ranks(world: int):
    """A process group of `world` ranks in which this process is rank 0 and collectives move nothing; yields its
    device mesh (None for one rank). The mesh is made here, outside FakeTensorMode: making one reads a tensor's
    values, which is why FSDP2's default mesh cannot be used under it."""
    if world == 1:
        yield None
        return
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised; run the bench in its own process")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield init_device_mesh("cpu", (world,))
    finally:
        dist.destroy_process_group()


def load_model(config: dict, world: int, trainable: bool, mesh) -> grpo.Policy | grpo.Reference:
    """`grpo.load_model`, line for line, on fake tensors, with two differences: the weights are `config`'s, random
    (nothing to load), and FSDP2 gets the fake process group's `mesh` (see `fake_ranks`). Keep it in step with
    grpo.load_model. (That function cannot be called here as it is: under FakeTensorMode, its `.to(device)` fails,
    as torch 2.13's Module.to refuses to swap fake parameters, and so does fully_shard's default mesh.)"""
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    if trainable:  # cfg.grad_checkpointing: on in POPE
        lm.gradient_checkpointing_enable()
    model = (grpo.Policy if trainable else grpo.Reference)(lm).train(trainable).requires_grad_(trainable)
    if world > 1:
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)  # compute_dtype on a GPU
        for layer in lm.model.layers:
            fully_shard(layer, mp_policy=mp, mesh=mesh)
        fully_shard(model, mp_policy=mp, mesh=mesh)
    return model if trainable else model.gather_head()


def train_config(shape: Shape, with_ref: bool) -> grpo.Config:
    """The memory-relevant settings of a POPE run (pope.py's defaults), with a KL term when `with_ref`."""
    return grpo.Config(model="(from config)", dtype="bfloat16", grad_checkpointing=True,
                       micro_batch_size=shape.seqs, logprob_chunk=shape.chunk, temperature=0.8, entropy_coef=1e-4,
                       loss_agg="sum", max_new_tokens=shape.completion, kl_coef=0.04 if with_ref else 0.0)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly sharded) tensor."""
    return t.to_local() if isinstance(t, DTensor) else t


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (a tied weight, or a view, counts once; FSDP2's shard views
    count their padded storage)."""
    seen = {}
    for t in tensors:
        st = local(t).untyped_storage()
        seen[id(st)] = (st, st.nbytes())  # keeps st alive, so no id is reused while counting
    return sum(n for _, n in seen.values())


def parameter_counts(lm) -> dict:
    """Parameter counts of an HF causal LM; `parameters()` yields a tied weight once."""
    layer = lm.model.layers[0]
    return {"total": sum(p.numel() for p in lm.parameters()),
            "embedding": lm.model.embed_tokens.weight.numel(),
            "per_layer": sum(p.numel() for p in layer.parameters()),
            "layers": len(lm.model.layers)}


# ----------------------------------------------------------------------------------------------------------------
# The micro-batch, and what fake tensors cannot answer


@dataclass
class Batch:
    rollouts: grpo.Rollouts
    weights: torch.Tensor  # [N] grpo.token_weights
    true_counts: dict  # mask shape -> number of True: the boolean masks that index tensors
    n_tokens: int  # completion tokens N


def micro_batch(shape: Shape, loss_agg: str) -> Batch:
    """The right-padded micro-batch as `grpo.rollout_tensors` lays it out (real tensors: ids and masks are small)."""
    lengths = [shape.seq_len - i for i in range(shape.seqs)]
    ids, attention_mask, loss_mask = grpo.batch_tensors(
        [dict(ids=[0] * n, n_prompt=n - shape.completion) for n in lengths], "cpu")
    n_tokens = int(loss_mask.sum())
    # float32, as the trainer casts them to the loss's dtype
    weights = grpo.token_weights(loss_mask.sum(1), loss_agg, shape.seqs, n_tokens, shape.completion).float()
    counts = {tuple(loss_mask.shape): n_tokens, tuple(loss_mask[:, 1:].shape): int(loss_mask[:, 1:].sum())}
    seq_lens = torch.tensor(lengths)  # [b] on the host, as the trainer keeps them
    rollouts = grpo.Rollouts(ids, attention_mask, loss_mask, sampler_logp=torch.zeros(ids.shape),
                             adv=torch.ones(shape.seqs), seq_lens=seq_lens,
                             completion_lens=torch.full((shape.seqs,), shape.completion))
    return Batch(rollouts, weights, counts, n_tokens)


def as_fake(batch: Batch, fake: FakeTensorMode) -> Batch:
    """The same batch as fake tensors of `fake`."""
    ro = batch.rollouts
    rollouts = grpo.Rollouts(*(fake.from_tensor(getattr(ro, f)) for f in
                               ("ids", "attention_mask", "loss_mask", "sampler_logp", "adv")),
                             seq_lens=ro.seq_lens, completion_lens=ro.completion_lens)  # host lengths stay real
    return Batch(rollouts, fake.from_tensor(batch.weights), batch.true_counts, batch.n_tokens)


class FakeDataOps(TorchDispatchMode):
    """Answers the ops whose output depends on tensor values, which fake tensors do not have, and records the
    attention masks that the model makes.

    - boolean-mask indexing (`hidden[loss_mask]`, and its backward) by a fake mask: the output has as many rows as
      the mask has True values; they are known per mask shape (`true_counts`), and the mask is replaced by integer
      indices of that length. A fake boolean index of any other shape is an error.
    - .item(): only logged metrics and the gradient norm read a value; they get 0 (memory does not depend on them).
    - every 4-d tensor [..., seq_len, seq_len] is an attention mask: the largest boolean one and the largest floating
      one are recorded (storage bytes).
    """

    INDEX_OPS = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
                 torch.ops.aten._index_put_impl_.default}

    def __init__(self, true_counts: dict, seq_len: int):
        super().__init__()
        self.true_counts, self.seq_len = true_counts, seq_len
        self.mask_bytes = {"bool": 0, "float": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.INDEX_OPS and any(isinstance(i, FakeTensor) and i.dtype == torch.bool for i in args[1]):
            args = (args[0], self._integer_indices(args[1]), *args[2:])
        try:
            out = func(*args, **kwargs)
        except DataDependentOutputException:
            if func is not torch.ops.aten._local_scalar_dense.default:
                raise
            return 0
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() == 4 and tuple(t.shape[-2:]) == (self.seq_len, self.seq_len):
                kind = "bool" if t.dtype == torch.bool else "float"
                self.mask_bytes[kind] = max(self.mask_bytes[kind], t.untyped_storage().nbytes())
        return out

    def _integer_indices(self, indices):
        out = []
        for i in indices:
            if not isinstance(i, FakeTensor) or i.dtype != torch.bool:
                out.append(i)
                continue
            if tuple(i.shape) not in self.true_counts:
                raise RuntimeError(f"boolean index of shape {tuple(i.shape)}: its True count is unknown "
                                   f"(known: {self.true_counts})")
            n = self.true_counts[tuple(i.shape)]
            out += [torch.zeros(n, dtype=torch.long, device=i.device) for _ in range(i.dim())]
        return out


# ----------------------------------------------------------------------------------------------------------------
# The measurement


def snapshot(tracker, kind: str) -> dict[str, int]:
    """The tracker's current or peak breakdown, {category: bytes} (one device: the fake CPU)."""
    snap = tracker.get_tracker_snapshot(kind)
    if len(snap) > 1:
        raise RuntimeError(f"memory on more than one device: {list(snap)}")
    per_device = next(iter(snap.values()), {})
    return {(k.value if isinstance(k, Enum) else k): v for k, v in per_device.items() if v}


def rows(snap: dict[str, int]) -> dict[str, int]:
    """A tracker breakdown as the table's rows: training state, bf16 compute copies, activations + temporaries."""
    state = sum(v for k, v in snap.items() if k in STATE)
    copies = sum(v for k, v in snap.items() if k in COPIES)
    return {"state": state, "copies": copies, "activations": snap.get(TOTAL, 0) - state - copies,
            "total": snap.get(TOTAL, 0)}


class FrozenSafeMemTracker(MemTracker):
    """MemTracker that also lets frozen modules run: torch 2.13's registers a gradient hook on every parameter of
    each module that runs forward, which raises for parameters without requires_grad (the reference model's)."""

    def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
        trainable = all(p.requires_grad for p in module.parameters())
        return super()._track_module_params_and_buffers(module, install_grad_hooks=install_grad_hooks and trainable)


@contextmanager
def own_fake_mode_for_dtensor():
    """DTensor finds its outputs' shapes by running each op on fake tensors of the global shape, in
    `detect_fake_mode()`: under our FakeTensorMode that is our mode, and the trackers (which skip ops run in any other
    fake mode) would count those global-shape tensors as the rank's memory (the optimizer step's foreach temporaries
    come out 8x too large). A TracingContext hands DTensor a fake mode of its own."""
    with torch._guards.tracing(torch._guards.TracingContext(FakeTensorMode())):
        yield


def new_tracker(policy, optimizer, world: int, extra=()):
    """FSDPMemTracker for a sharded policy, MemTracker (knowing `policy`, `optimizer` and `extra`) for one rank."""
    if world > 1:
        return FSDPMemTracker(policy, optimizer)  # it ignores track_external: `extra` is counted by the caller
    tracker = FrozenSafeMemTracker()
    tracker.track_external(policy, optimizer, *extra)
    return tracker


def micro_batch_loss(policy, ref, batch: Batch, cfg: grpo.Config, autocast) -> torch.Tensor:
    """grpo.update's micro-batch up to the loss: token statistics (with the reference's, if any), then grpo_loss with
    pi_old = pi (one minibatch, as POPE); the caller runs (loss x world).backward() as update does."""
    ro = batch.rollouts
    stats = grpo.micro_batch_stats(policy, ref, ro, cfg, autocast)
    loss, _ = grpo.grpo_loss(stats["logp"], stats["logp"].detach(), ro.per_token(ro.adv), batch.weights,
                             entropy=stats["entropy"], ref_logp=stats.get("ref_logp"),
                             kl_forward=stats.get("kl_forward"), kl_reverse=stats.get("kl_reverse"),
                             **grpo.loss_options(cfg))
    return loss


def measure(config: dict, world: int, shape: Shape, with_ref: bool = False, fake: bool = True) -> dict:
    """Per-rank bytes of one training micro-batch and optimizer step of `config` on `world` ranks, on fake tensors
    (fake=False: on real CPU tensors, for a small config: the test compares the two).

    Returns the parameter counts; the rank's shard, gradient and AdamW bytes (counted from the tensors); the bf16
    unsharded copy of one layer and of the root (counted: parameters x 2 bytes); the tracker's breakdown after the
    forward, at the peak of forward + backward and at the peak of the optimizer step; the attention mask's bytes;
    and, with `with_ref`, the reference model's resident bytes.
    """
    cfg = train_config(shape, with_ref)
    started = time.perf_counter()
    mode = FakeTensorMode() if fake else nullcontext()
    batch = micro_batch(shape, cfg.loss_agg)  # real tensors first (their counts are read), then fake copies
    warm = micro_batch(Shape(seqs=2, seq_len=8, completion=4, chunk=shape.chunk), cfg.loss_agg)
    if fake:
        batch, warm = as_fake(batch, mode), as_fake(warm, mode)
    with fake_ranks(world) as mesh, mode:
        policy = load_model(config, world, trainable=True, mesh=mesh)
        ref = load_model(config, world, trainable=False, mesh=mesh) if with_ref else None
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        ref_sharded = [*ref.parameters(), ref.head] if ref is not None else []  # FSDP2 keeps these shards
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=world == 1)  # grpo.train: world 1 on a GPU
        # Warm-up, untracked: a 2 x 8-token micro-batch and an optimizer step. FSDP2 initialises itself at its first
        # forward; after this the gradients (of an earlier micro-batch of the step) and AdamW's state exist, as when
        # a run is at its second micro-batch or later.
        with own_fake_mode_for_dtensor(), FakeDataOps(warm.true_counts, 8):
            (micro_batch_loss(policy, ref, warm, cfg, autocast) * world).backward()
            optimizer.step()
        # The reference's resident memory: its fp32 shards, its gathered fp32 head, and (FSDP2) its root, which
        # stays gathered in bf16 after a forward without backward (the root does not reshard after forward).
        ref_resident = storage_bytes(ref_sharded + list(ref.parameters())) if ref is not None else 0
        tracker = new_tracker(policy, optimizer, world, extra=[ref] if ref is not None else [])
        ops = FakeDataOps(batch.true_counts, shape.seq_len)
        with own_fake_mode_for_dtensor(), tracker, ops:  # grpo.update's micro-batch loop, one pass
            loss = micro_batch_loss(policy, ref, batch, cfg, autocast)
            after_forward, forward_peak = snapshot(tracker, "current"), snapshot(tracker, "peak")
            (loss * world).backward()
        peak = snapshot(tracker, "peak")
        step_tracker = new_tracker(policy, optimizer, world, extra=[ref] if ref is not None else [])
        with own_fake_mode_for_dtensor(), step_tracker, ops:  # grpo.update's optimizer step
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
        step_peak = snapshot(step_tracker, "peak")
        lm = policy.lm
        root_params = [p for name, p in lm.named_parameters() if not name.startswith("model.layers.")]
        adam = [v for s in optimizer.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
        out = {
            "world": world, "with_ref": with_ref, "params": parameter_counts(lm),
            "shard_bytes": storage_bytes(policy.parameters()),
            "grad_bytes": storage_bytes(p.grad for p in policy.parameters()),
            "adam_bytes": storage_bytes(adam),
            "layer_bf16_bytes": 2 * sum(p.numel() for p in lm.model.layers[0].parameters()),
            "root_bf16_bytes": 2 * sum(p.numel() for p in root_params),
            "after_forward": after_forward, "forward_peak": forward_peak, "peak": peak, "step_peak": step_peak,
            "mask_bytes": ops.mask_bytes, "completion_tokens": batch.n_tokens,
            # MemTracker registers the reference's tensors (track_external); FSDPMemTracker ignores them
            "ref_untracked_bytes": ref_resident if world > 1 else 0, "ref_resident_bytes": ref_resident,
        }
    out["seconds"] = time.perf_counter() - started
    return out


# ----------------------------------------------------------------------------------------------------------------
# The table


def vllm_bytes(config: dict, params: int, card_bytes: float, utilization: float) -> dict:
    """vLLM's share of a card: utilization x card (vLLM fills it: weights, then KV cache); the weights and the KV
    cache's bytes per token counted from the config."""
    kv_per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * 2
    total, weights = int(utilization * card_bytes), 2 * params
    return {"total": total, "weights": weights, "kv_per_token": kv_per_token,
            "kv_tokens_at_most": max(0, int((total - weights) // kv_per_token))}


def estimate(config: dict, shape: Shape, worlds=(8, 1), with_ref: bool = True) -> dict[int, dict]:
    """`measure` for each world size, without and (with_ref) with the reference model."""
    out = {}
    for world in worlds:
        out[world] = {"base": measure(config, world, shape)}
        if with_ref:
            out[world]["ref"] = measure(config, world, shape, with_ref=True)
    return out


def summarise(results: dict[int, dict], config: dict, cards: list[float], utilization: float) -> dict:
    """The table's numbers (bytes) per world and card."""
    summary = {}
    for world, r in results.items():
        base = r["base"]
        peak = rows(base["peak"])
        trainer = max(peak["total"], base["step_peak"][TOTAL])
        ref_extra = None
        if "ref" in r:
            with_ref = r["ref"]
            ref_extra = max(with_ref["peak"][TOTAL], with_ref["step_peak"][TOTAL]) \
                + with_ref["ref_untracked_bytes"] - trainer
        for card in cards:
            vllm = vllm_bytes(config, base["params"]["total"], card * GiB, utilization)
            total = trainer + vllm["total"]
            summary[f"{world}x{card:g}"] = {
                "world": world, "card_gib": card, **{f"peak_{k}": v for k, v in peak.items()},
                "step_peak": base["step_peak"][TOTAL], "trainer_peak": trainer, "vllm": vllm["total"],
                "vllm_weights": vllm["weights"], "vllm_kv_tokens_at_most": vllm["kv_tokens_at_most"],
                "ref_extra": ref_extra, "total": total,
                "total_with_ref": None if ref_extra is None else total + ref_extra,
                "headroom": int(card * GiB) - total,
                "headroom_with_ref": None if ref_extra is None else int(card * GiB) - total - ref_extra,
            }
    return summary


def plural(world: int) -> str:
    return f"{world} GPU" + "s" * (world > 1)


def print_report(results: dict, summary: dict, config: dict, shape: Shape, utilization: float, unit: str) -> None:
    """The table (in `unit`: GiB, or KiB for the small model) and how each row was obtained."""
    scale = {"GiB": GiB, "KiB": 2**10}[unit]

    def fmt(x, digits: int = 1) -> str:
        return "-" if x is None else f"{x / scale:.{digits}f}"

    worlds = list(results)
    base = {w: results[w]["base"] for w in worlds}
    p, n_tok = base[worlds[0]]["params"], base[worlds[0]]["completion_tokens"]
    print(f"ESTIMATE, not a GPU measurement: memory per GPU in {unit}, counted on fake tensors by torch's memory "
          f"trackers\n(how, and what is left out: the docstring of bench/bench_memory.py).")
    print(f"model: {p['total']:,} parameters (the tied embedding once: {p['embedding']:,}; {p['layers']} layers x "
          f"{p['per_layer']:,}; the final norm)")
    print(f"micro-batch: {shape.seqs} right-padded sequences of {shape.seq_len:,} tokens (and 1 less), {n_tok:,} "
          f"completion tokens, logit chunk {shape.chunk}, gradient checkpointing, bf16 compute, the steady state "
          f"of a run\n")
    print(f"{f'per rank, {unit}':<62}" + "".join(f"{plural(w):>10}" for w in worlds))
    lines = [
        ("fp32 parameter shard, with FSDP2's padding (counted)", lambda b: b["shard_bytes"]),
        ("fp32 gradients (counted)", lambda b: b["grad_bytes"]),
        ("AdamW exp_avg + exp_avg_sq, fp32 (counted)", lambda b: b["adam_bytes"]),
        ("bf16 unsharded copy of one decoder layer (counted)",
         lambda b: b["layer_bf16_bytes"] if b["world"] > 1 else None),
        ("bf16 unsharded copy of the root: embedding = lm_head, norm",
         lambda b: b["root_bf16_bytes"] if b["world"] > 1 else None),
        ("activations kept from forward to backward (tracked)", lambda b: rows(b["after_forward"])["activations"]),
        ("  the attention mask [b, 1, S, S], bool (recorded)", lambda b: b["mask_bytes"]["bool"]),
        ("  its bf16 additive bias, made in each attention call", lambda b: b["mask_bytes"]["float"]),
        ("peak during the forward, all of the rank's memory (tracked)", lambda b: b["forward_peak"][TOTAL]),
    ]
    for name, get in lines:
        print(f"{name:<62}" + "".join(f"{fmt(get(base[w]), 2):>10}" for w in worlds))
    cols = list(summary)
    heads = [f"{plural(s['world'])}, {s['card_gib']:g}" for s in summary.values()]
    print(f"\n{f'per GPU, {unit}; card = assumed usable GiB':<62}" + "".join(f"{h:>16}" for h in heads))
    table = [
        ("training state: fp32 params + grads + AdamW m, v", "peak_state"),
        ("bf16 compute copies: FSDP2's gathered root + layers [a]", "peak_copies"),
        (f"activations + temporaries, {shape.seqs} x {shape.seq_len:,} tokens [b]", "peak_activations"),
        ("= trainer peak, forward + backward", "peak_total"),
        ("trainer peak, optimizer step: clip + AdamW foreach [c]", "step_peak"),
        (f"vLLM engine, --vllm-gpu-memory-utilization {utilization} [d]", "vllm"),
        ("total, --kl-coef 0 (POPE): larger trainer peak + vLLM", "total"),
        ("headroom: card - total [e]", "headroom"),
        ("reference model, --kl-coef > 0: added to the peak [f]", "ref_extra"),
        ("total, --kl-coef > 0", "total_with_ref"),
        ("headroom, --kl-coef > 0", "headroom_with_ref"),
    ]
    for name, key in table:
        print(f"{name:<62}" + "".join(
            f"{'-' if key == 'peak_copies' and summary[c]['world'] == 1 else fmt(summary[c][key]):>16}"
            for c in cols))
    kv = vllm_bytes(config, p["total"], GiB, utilization)["kv_per_token"]
    per_card = {s["card_gib"]: s["vllm_kv_tokens_at_most"] for s in summary.values()}
    kv_tokens = ", ".join(f"{n:,} tokens on the {card:g} GiB card" for card, n in per_card.items())
    resident = ", ".join(f"{fmt(results[w]['ref']['ref_resident_bytes'])} {unit} on {plural(w)}"
                         for w in worlds if "ref" in results[w]) or "not run (--no-ref)"
    print(f"""
How each row was obtained (tracked: by torch's memory tracker, at the moment named; counted: from the tensors):
[a] tracked at the peak of forward + backward: FSDP2's unsharded bf16 parameters and all-gather buffers (the root
    stays gathered from forward to backward, layers one or two at a time). With 1 GPU there is no FSDP: the bf16
    casts autocast makes of the fp32 weights are in [b].
[b] tracked at the same peak: all else the micro-batch holds, with the gradients and AdamW state already allocated
    (a run's second micro-batch or later): checkpointed layer inputs, the attention mask, one layer's recomputed
    activations, logit chunks, gradients in flight, reduce-scatter buffers.
[c] tracked at the peak of clip_grad_norm_ + AdamW.step; foreach makes temporaries the size of the rank's
    parameters. The totals take the larger of the two trainer peaks.
[d] not measured: utilization x card, which is how vLLM sizes itself. Counted from the config: bf16 weights
    {fmt(2 * p["total"])} {unit} (2 bytes x parameters), {kv:,} bytes of KV cache per token; the rest holds at most
    {kv_tokens}, less what vLLM's activations and CUDA graphs take.
[e] what it must cover is left out: CUDA context, NCCL and cuBLAS workspaces, allocator fragmentation.
[f] tracked: the peak with a reference model minus the peak without, plus what the tracker does not see. The
    reference is fp32, sharded as the policy, with its output embedding gathered whole in fp32 and (FSDP2) its root
    left gathered in bf16 after each forward (no backward reshards it).
    Resident: {resident}.""")
    for s in summary.values():
        if s["world"] != 1:
            continue
        card = s["card_gib"] * GiB
        if s["trainer_peak"] > card:
            line = (f"1 GPU of {s['card_gib']:g} GiB: the trainer alone peaks at {fmt(s['trainer_peak'])} {unit}, "
                    f"more than the card: even with the engine asleep (--sleep-level 1 or 2) this micro-batch does "
                    f"not fit.")
        elif card - s["trainer_peak"] < s["vllm_weights"]:
            line = (f"1 GPU of {s['card_gib']:g} GiB: the trainer alone peaks at {fmt(s['trainer_peak'])} {unit}; "
                    f"the {fmt(card - s['trainer_peak'])} {unit} left are less than the engine's bf16 weights "
                    f"({fmt(s['vllm_weights'])} {unit}): only with the engine asleep (--sleep-level 1 or 2), and "
                    f"all that is left must cover [e].")
        else:
            line = (f"1 GPU of {s['card_gib']:g} GiB: the trainer alone peaks at {fmt(s['trainer_peak'])} {unit}; "
                    f"the engine, awake, can have at most {(card - s['trainer_peak']) / card:.2f} of the card "
                    f"(--vllm-gpu-memory-utilization), before what [e] must cover.")
        print(textwrap.fill(line, width=116, subsequent_indent="    ", break_on_hyphens=False))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a 2-layer, hidden-64 model and 2 x 48 tokens (seconds)")
    parser.add_argument("--seqs", type=int, help=f"sequences per micro-batch (default {POPE.seqs}; --small 2)")
    parser.add_argument("--seq-len", type=int, help=f"padded length S (default {POPE.seq_len}; --small 48)")
    parser.add_argument("--completion", type=int,
                        help=f"completion tokens per sequence (default {POPE.completion}; --small 32)")
    parser.add_argument("--chunk", type=int, help=f"grpo --logprob-chunk (default {POPE.chunk}; --small 16)")
    parser.add_argument("--worlds", default="8,1", help="ranks (GPUs) to estimate, comma-separated")
    parser.add_argument("--no-ref", action="store_true", help="skip the passes with a reference model (--kl-coef > 0)")
    parser.add_argument("--vllm-util", type=float, default=0.35, help="--vllm-gpu-memory-utilization of the run")
    parser.add_argument("--cards", default="79.1,139.8",
                        help="usable GiB per card, as torch reports total_memory: an 80 GB H100 79.1 (assumed; "
                             "0.35 x 79.1 = the 27.7 GiB vLLM takes there), a 141 GB H200 139.8 (assumed)")
    args = parser.parse_args(argv)
    config, default = (SMALL, SMALL_SHAPE) if args.small else (QWEN3_4B, POPE)
    shape = Shape(*(getattr(args, k) or getattr(default, k) for k in ("seqs", "seq_len", "completion", "chunk")))
    cards = [float(c) for c in args.cards.split(",")]
    results = estimate(config, shape, [int(w) for w in args.worlds.split(",")], with_ref=not args.no_ref)
    summary = summarise(results, config, cards, args.vllm_util)
    print_report(results, summary, config, shape, args.vllm_util, "KiB" if args.small else "GiB")
    print(json.dumps({"estimate": True, "model": "small" if args.small else "Qwen3-4B-Instruct-2507",
                      "shape": asdict(shape), "vllm_util": args.vllm_util, "units": "bytes",
                      "measured": {str(w): r for w, r in results.items()}, "table": summary}))


if __name__ == "__main__":
    main()
