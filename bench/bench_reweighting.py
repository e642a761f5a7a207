"""RAPO's reweighted reference at Qwen's vocabulary: how much mass it puts on the tail, and how much it adds to entropy.

    python bench/bench_reweighting.py                 # ~20 s on 2 cores; --json FILE also writes the numbers

`grpo.reweighted_reference` tempers the reference, ref^phi, inside its nucleus (tokens with ref >= nucleus * max ref)
and leaves the rest alone; nucleus 0 tempers the whole vocabulary (ref^phi / Z, the per-token form taken literally).
This measures both on synthetic next-token distributions shaped like an LLM's, over V = 151,936 tokens (Qwen3's):
a head of a few plausible tokens, and a tail of log-probabilities drawn from N(mu, 2) for mu = -20, -25, -30. The
heads (this project's choice, meant to span what a reasoning model's positions look like):

    confident  0.90 on one token, the rest halving (0.05, 0.025, ...) over 7 more        entropy ~0.45 nats
    two-way    0.55 / 0.35, then 0.05, 0.025, ... over 6 more                            entropy ~1.0
    spread     Zipf over 20 tokens (p_k ~ 1 / k)                                         entropy ~2.5

For each, at phi from 1e-3 (the phi -> 0 limit) to 1: the reweighted reference's `tail`, its mass on tokens the
reference gives < 1e-4 (the reference's own is 2e-3 at mu = -20), and its entropy minus the reference's, in nats.
What it cannot show: real model distributions (the trainer logs both numbers every step, `ref_hat_tail` and
`ref_hat_entropy_gain`, and stops past --ref-hat-max-tail / --ref-hat-max-entropy-gain).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpo  # noqa: E402

V = 151_936  # Qwen3's vocabulary
TAIL_BELOW = 1e-4  # a token the reference gives less than this is "tail" (as the trainer's ref_hat_tail counts it)
PHIS = [1e-3, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0]
NUCLEI = [0.0, 0.01, 0.1, 0.3]


def heads() -> dict[str, torch.Tensor]:
    geometric = lambda first, n: [first / 2**k for k in range(n)]  # noqa: E731
    zipf = torch.tensor([1 / k for k in range(1, 21)], dtype=torch.float64)
    shapes = {"confident": [0.9] + geometric(0.05, 7), "two-way": [0.55, 0.35] + geometric(0.05, 6),
              "spread": (zipf / zipf.sum()).tolist()}
    return {name: torch.tensor(p, dtype=torch.float64) / sum(p) for name, p in shapes.items()}


def distribution(head: torch.Tensor, mu: float, seed: int = 0) -> torch.Tensor:
    """log ref [V]: the head's shape for the first tokens, tail log-probs ~ N(mu, 2) for the rest, normalised."""
    g = torch.Generator().manual_seed(seed)
    tail = mu + 2 * torch.randn(V - len(head), generator=g, dtype=torch.float64)  # [V - h]
    tail_mass = tail.exp().sum()
    return torch.cat([torch.log(head * (1 - tail_mass)), tail])  # [V]


def measure(log_ref: torch.Tensor, phi: float, nucleus: float) -> dict[str, float]:
    log_hat = grpo.reweighted_reference(log_ref[None], torch.tensor([phi], dtype=torch.float64), nucleus)[0]  # [V]
    entropy = lambda lp: float(-(lp.exp() * lp).sum())  # noqa: E731
    return {"tail": float(log_hat.exp()[log_ref.exp() < TAIL_BELOW].sum()),
            "entropy_gain": entropy(log_hat) - entropy(log_ref)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args(argv)
    rows = []
    for name, head in heads().items():
        for mu in (-20.0, -25.0, -30.0):
            log_ref = distribution(head, mu)
            ref_tail = float(log_ref.exp()[log_ref.exp() < TAIL_BELOW].sum())
            ref_entropy = float(-(log_ref.exp() * log_ref).sum())
            for nucleus in NUCLEI:
                cells = {phi: measure(log_ref, phi, nucleus) for phi in PHIS}
                rows.append(dict(head=name, mu=mu, nucleus=nucleus, ref_tail=ref_tail, ref_entropy=ref_entropy,
                                 cells={str(phi): c for phi, c in cells.items()}))
    print(f"V = {V}; tail = mass on tokens with ref < {TAIL_BELOW:g}; gain = H(ref_hat) - H(ref) in nats")
    print(f"{'head':<10}{'mu':>5}{'H(ref)':>8}{'nucleus':>9}  " + "".join(f"{'phi ' + f'{p:g}':>15}" for p in PHIS))
    for r in rows:
        print(f"{r['head']:<10}{r['mu']:>5.0f}{r['ref_entropy']:>8.2f}{r['nucleus']:>9g}  " + "".join(
            f"{c['tail']:>7.1e}/{c['entropy_gain']:<+7.2f}" for c in r["cells"].values()))
    worst = {nucleus: (max(c["tail"] for r in rows if r["nucleus"] == nucleus for c in r["cells"].values()),
                       max(c["entropy_gain"] for r in rows if r["nucleus"] == nucleus for c in r["cells"].values()))
             for nucleus in NUCLEI}
    print("worst over heads, tails and every phi:  " + "   ".join(
        f"nucleus {n:g}: tail {t:.1e}, gain {g:+.2f}" for n, (t, g) in worst.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return {"rows": rows, "worst": worst}


if __name__ == "__main__":
    main()
