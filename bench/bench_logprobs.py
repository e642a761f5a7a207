"""Peak memory and time of the trainer's token statistics: chunked (`grpo.token_stats`) vs the naive full logits.

    OMP_NUM_THREADS=1 python bench/bench_logprobs.py                        # V = 151,936, 4 x 2,048 positions
    OMP_NUM_THREADS=1 python bench/bench_logprobs.py --len 512 --chunk 256 --ref

Both variants compute the same thing at N = seqs x len completion positions, forward and backward: per-position
log-probability of the target token, the entropy over the vocabulary (and, with --ref, the exact forward
KL(ref || pi) to a fixed reference), a scalar loss mixing them, and its gradient w.r.t. the hidden states and the
output head.
- naive: the full logits [N, V] in float32, log_softmax, gather, entropy over [N, V], backward through all of it.
- chunked: `grpo.token_stats(..., chunk_size=--chunk)`: logits for --chunk positions at a time, each chunk
  checkpointed (its logits are recomputed in backward instead of kept).

How memory is measured: each variant runs in a fresh subprocess. After the inputs are built (and after importing
grpo, which imports vLLM), the process reads its high-water resident set size, ru_maxrss; after the runs it reads it
again. "peak MB" is the difference: the most memory the computation itself ever held on top of its inputs (CPU RSS;
PyTorch's CPU allocator returns large blocks to the OS, so freed tensors leave no trace). Time is the fastest of
--repeats forward+backward passes, as wall-clock time and as the process's CPU time (user + system, all its
threads): on a machine shared with other work, CPU time is the steadier of the two. The loss and gradient norms
printed for each variant show that both computed the same thing.

At the default size the naive variant needs about 24 GB (five [8192, 151936] float32 tensors of 4.7 GB at once):
on a small machine run a smaller --len with a proportionally smaller --chunk (same len/chunk, about the same
ratio), or `--variants chunked` alone at the full size.
Timings on a shared machine are noisy: run it when the machine is quiet, and compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--vocab", type=int, default=151_936, help="vocabulary size V (Qwen2.5/Qwen3: 151,936)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size H (small: the matmul is not the point)")
    parser.add_argument("--seqs", type=int, default=4, help="sequences in the micro-batch")
    parser.add_argument("--len", type=int, default=2048, help="completion tokens per sequence")
    parser.add_argument("--chunk", type=int, default=512, help="positions per chunk (grpo --logprob-chunk)")
    parser.add_argument("--temperature", type=float, default=0.8, help="the trainer divides its logits by this")
    parser.add_argument("--ref", action="store_true", help="also the exact forward KL to a reference (RAPO)")
    parser.add_argument("--repeats", type=int, default=2, help="forward+backward passes per variant; time = fastest")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in each variant's process")
    parser.add_argument("--variants", default="naive,chunked",
                        help="which to run, comma-separated; 'chunked' alone measures sizes whose naive run won't fit")
    parser.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)  # set for the children
    return parser.parse_args(argv)


def naive_stats(h, W, y, T, ref_h=None, ref_W=None, phi=None):
    """Everything at once: [N, V] logits, log_softmax, gather, entropy (and the reference's [N, V] too)."""
    logp_all = torch.log_softmax((h @ W.T).float() / T, dim=-1)  # [N, V]
    out = {"logp": logp_all.gather(-1, y[:, None])[:, 0], "entropy": -(logp_all.exp() * logp_all).sum(-1)}
    if ref_h is not None:
        with torch.no_grad():
            ref_all = torch.log_softmax(phi[:, None] * torch.log_softmax((ref_h @ ref_W.T).float() / T, -1), -1)
        out["kl_forward"] = (ref_all.exp() * (ref_all - logp_all)).sum(-1)  # [N]
    return out


def run_variant(args) -> dict:
    """One variant in this (fresh) process: build inputs, note the RSS high-water mark, run, measure again."""
    sys.path.insert(0, str(ROOT))
    import grpo  # here, not at the top: only the children need it (it imports vLLM)

    torch.set_num_threads(args.threads)
    n, g = args.seqs * args.len, torch.Generator().manual_seed(0)
    h = torch.randn(n, args.hidden, generator=g).requires_grad_()  # [N, H] final hidden states
    W = (torch.randn(args.vocab, args.hidden, generator=g) / args.hidden**0.5).requires_grad_()  # [V, H] head
    y = torch.randint(args.vocab, (n,), generator=g)  # [N] targets
    mix = torch.randn(3, n, generator=g)  # per-position weights of logp, entropy, kl in the scalar loss
    ref = {}
    if args.ref:
        ref = dict(ref_h=torch.randn(n, args.hidden, generator=g),
                   ref_W=torch.randn(args.vocab, args.hidden, generator=g) / args.hidden**0.5,
                   phi=0.5 + 0.5 * torch.rand(n, generator=g))
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        h.grad = W.grad = None
        if args.variant == "naive":
            s = naive_stats(h, W, y, args.temperature, **ref)
        else:
            s = grpo.token_stats(h, W, y, args.temperature, args.chunk, ref.get("ref_h"), ref.get("ref_W"),
                                 ref.get("phi"))
        loss = (mix[0] * s["logp"] + mix[1] * s["entropy"]).sum()
        if args.ref:
            loss = loss + (mix[2] * s["kl_forward"]).sum()
        loss.backward()
        return loss.item()

    times, cpu_times = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb
    return {"variant": args.variant, "peak_mb": peak_kb / 1024, "time_s": min(times), "cpu_s": min(cpu_times),
            "loss": loss, "grad_W_norm": W.grad.norm().item(), "grad_h_norm": h.grad.norm().item()}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    n = args.seqs * args.len
    print(f"V={args.vocab:,} H={args.hidden} N={args.seqs}x{args.len}={n:,} chunk={args.chunk} "
          f"T={args.temperature} ref={args.ref} threads={args.threads} repeats={args.repeats}")
    print(f"one [N, V] float32 tensor: {n * args.vocab * 4 / 2**20:,.0f} MB; one [chunk, V]: "
          f"{min(args.chunk, n) * args.vocab * 4 / 2**20:,.0f} MB")
    flags = sys.argv[1:] if argv is None else list(argv)
    results = {}
    for variant in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, *flags, "--variant", variant], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{variant} failed (exit {out.returncode}; -9 = killed, likely out of memory):\n"
                     f"{out.stderr[-2000:]}")
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'variant':<8} {'peak MB':>10} {'wall s':>8} {'CPU s':>8} {'loss':>14} {'|grad W|':>12} {'|grad h|':>12}")
    for r in results.values():
        print(f"{r['variant']:<8} {r['peak_mb']:>10,.0f} {r['time_s']:>8.2f} {r['cpu_s']:>8.2f} {r['loss']:>14.6g} "
              f"{r['grad_W_norm']:>12.6g} {r['grad_h_norm']:>12.6g}")
    if len(results) < 2:
        return
    naive, chunked = results["naive"], results["chunked"]
    print(f"memory naive / chunked: {naive['peak_mb'] / chunked['peak_mb']:.1f}x   "
          f"time chunked / naive: {chunked['time_s'] / naive['time_s']:.2f}x wall, "
          f"{chunked['cpu_s'] / naive['cpu_s']:.2f}x CPU")


if __name__ == "__main__":
    main()
