"""Padding in training micro-batches, and ranks waiting for the slowest one: token-budget micro-batches vs fixed ones.

    python bench/bench_padding.py            # ~1-2 minutes on 2 CPU cores; no GPU, no vLLM

1. Arithmetic on a long-tailed length distribution like a real POPE run's (completions log-normal with median 3k
   tokens, capped at the 16k budget, plus a 300-token prompt; 256 rollouts a step over 8 ranks): the padded share of
   the tokens the trainer processes per step, with POPE's fixed micro-batches of 2 sequences (--micro-batch-tokens
   0) and with a 40k-token budget over length-sorted sequences (`grpo.micro_batches`, --micro-batch-tokens 40000).
2. Measured: `grpo.update` on the tiny offline model (CPU, float32) over the same distribution scaled down 32x,
   both ways, alternating, median seconds and their ratio (one process, one run: ratios, not absolute times).
3. Simulated: how long each rank waits per step under the static split (each rank samples 32 rollouts; a batch of
   decoding sequences takes about as long as its longest), as a share of the slowest rank's rollout time. The
   lengths are drawn, not measured on a GPU.
"""

import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "toys"))

import grpo  # noqa: E402
import tiny  # noqa: E402
from rollout import Sample  # noqa: E402

PROMPT, BUDGET, MEDIAN, SIGMA = 300, 16_384, 3_000, 0.9  # tokens; the log-normal's sigma [this bench's assumption]


def completion_lengths(n: int, rng: np.random.Generator, scale: int = 1) -> np.ndarray:
    """n completion lengths: log-normal around MEDIAN, capped at BUDGET (the truncated tail), divided by `scale`."""
    return np.minimum(rng.lognormal(np.log(MEDIAN), SIGMA, n), BUDGET).astype(int) // scale + 1


def padded_share(seq_lens: np.ndarray, max_seqs: int, max_tokens: int) -> tuple[float, int, int]:
    """(padded share of processed tokens, processed tokens, passes) when `grpo.micro_batches` groups them."""
    batches = grpo.micro_batches(seq_lens, max_seqs, max_tokens)
    processed = sum(len(b) * seq_lens[b].max() for b in batches)
    return 1 - seq_lens.sum() / processed, int(processed), len(batches)


def rank_idle(rng: np.random.Generator, ranks: int = 8, per_rank: int = 32, steps: int = 200) -> dict:
    """Mean over steps of each rank's wait for the slowest rank, as a share of the slowest rank's rollout time."""
    waits = []
    for _ in range(steps):
        longest = np.array([completion_lengths(per_rank, rng).max() for _ in range(ranks)])  # [ranks]
        waits.append(((longest.max() - longest) / longest.max()).mean())
    return {"mean_idle_share": float(np.mean(waits)), "p90_idle_share": float(np.quantile(waits, 0.9))}


def update_seconds(model: str, seq_lens: np.ndarray, max_seqs: int, max_tokens: int, repeats: int) -> list[float]:
    """Seconds of `grpo.update` (logprobs, backward, optimizer step) on sequences of these lengths, `repeats` times."""
    cfg = grpo.Config(model=model, micro_batch_size=max_seqs, micro_batch_tokens=max_tokens, lr=0.0,
                      max_new_tokens=int(seq_lens.max()))
    policy = grpo.load_model(cfg, "cpu", world=1, trainable=True)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    prompt = PROMPT // 32
    samples = [Sample([1] * prompt, [2] * int(n - prompt), [0.0] * int(n - prompt), "", "stop") for n in seq_lens]
    rewards = torch.rand(len(samples) // 8, 8, generator=torch.Generator().manual_seed(0))
    ro = grpo.rollout_tensors([samples[i:i + 8] for i in range(0, len(samples), 8)], rewards, None, cfg, "cpu")
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        grpo.update(policy, None, optimizer, ro, cfg, "cpu", nullcontext(), {})
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    transformers_logging.disable_progress_bar()
    rng = np.random.default_rng(0)
    step = PROMPT + completion_lengths(256, rng)  # [256] one step's sequences, all ranks
    rank_share = step[:32]  # one rank's
    print(f"one step: 256 sequences, {step.sum():,} tokens, mean {step.mean():.0f}, max {step.max()} (log-normal, "
          f"median {MEDIAN} + {PROMPT}-token prompts, capped at {BUDGET})")
    for name, (seqs, budget) in {"fixed, 2 sequences (POPE's default before)": (2, 0),
                                 "token budget 40000, <= 16 sequences": (16, 40_000),
                                 "token budget 40000, <= 8 sequences": (8, 40_000)}.items():
        share, processed, passes = padded_share(rank_share, seqs, budget)
        print(f"  {name:<44} {passes:>2} passes, padded share {share:.3f}, tokens processed per rank "
              f"{processed:,} (real {rank_share.sum():,})")

    model = tiny.make_tiny_model(tempfile.mkdtemp(), hidden_size=128, num_layers=4)
    small = PROMPT // 32 + completion_lengths(32, np.random.default_rng(1), scale=32)  # [32] one rank, 32x smaller
    times = {name: [] for name in ("fixed", "budget")}
    for _ in range(3):  # alternate, so drift in the machine's speed hits both
        times["fixed"] += update_seconds(model, small, 2, 0, repeats=2)
        times["budget"] += update_seconds(model, small, 16, int(2 * small.max()), repeats=2)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"grpo.update on the tiny model, one rank's 32 sequences scaled 32x down (max {small.max()} tokens): "
          f"fixed {med['fixed']:.2f} s, budget {med['budget']:.2f} s, ratio fixed / budget "
          f"{med['fixed'] / med['budget']:.2f} (median of {len(times['fixed'])})")
    idle = rank_idle(np.random.default_rng(2))
    print(f"rank idle time under the static split (8 ranks x 32 rollouts, simulated): mean "
          f"{idle['mean_idle_share']:.2f} of the slowest rank's rollout time, p90 {idle['p90_idle_share']:.2f}")


if __name__ == "__main__":
    main()
