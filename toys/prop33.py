"""Our reconstruction of RAPO's Proposition 3.3, checked numerically on one 16-token distribution.

    python toys/prop33.py [--plot prop33.png]          # the table (and a bar chart), a second on a CPU

max_pi E_pi[r] - alpha KL(ref || pi) + beta H(pi): with the forward KL (RAPO) the optimum is positive on every token,
also where the reference is 0; with the reverse KL (GRPO) it is ref^(alpha / (alpha + beta)) exp(r / (alpha + beta))
/ Z, zero wherever the reference is (Lemma 3.1 at beta = 0). Gradient ascent on the logits and the root of the
optimality condition must agree. The paper's own statement was not available to us: the condition below is our
reconstruction from its abstract and a secondary summary (docs/algorithms.md §3.3). The reference's shape and the
rewards of the demo are this project's choice; what it shows is the support, not any training run.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch




def ascend(ref: np.ndarray, reward: np.ndarray, alpha: float, beta: float, lr: float = 2.0, tol: float = 1e-12,
           max_steps: int = 100_000) -> np.ndarray:
    """Plain gradient ascent on the logits (float64, from uniform) until every partial derivative is below `tol`."""
    ref_t, reward_t = torch.tensor(ref), torch.tensor(reward)  # [V] float64
    logits = torch.zeros(len(ref), dtype=torch.float64, requires_grad=True)  # [V]
    for _ in range(max_steps):
        logp = torch.log_softmax(logits, dim=0)  # [V]
        kl = (torch.special.xlogy(ref_t, ref_t) - ref_t * logp).sum()  # KL(ref || pi); tokens with ref = 0 add 0
        entropy = -(logp.exp() * logp).sum()
        objective = (logp.exp() * reward_t).sum() - alpha * kl + beta * entropy
        (grad,) = torch.autograd.grad(objective, logits)  # [V]
        if grad.abs().max() < tol:
            return logp.exp().detach().numpy()
        with torch.no_grad():
            logits += lr * grad
    raise RuntimeError(f"gradient ascent did not converge in {max_steps} steps (max |grad| {grad.abs().max():.1e})")


def bisect_decreasing(f, lo, hi, iters: int = 200):
    """The root of f, decreasing on [lo, hi], by bisection; elementwise when f maps arrays to arrays.

    An endpoint where f is 0 in floating point brackets too (f(z) = -e^z rounds to -0 at z = -1000)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if not (np.all(f(lo) >= 0) and np.all(f(hi) <= 0)):
        raise ValueError("bisection: the root is not bracketed (need f(lo) >= 0 >= f(hi))")
    for _ in range(iters):
        mid = (lo + hi) / 2
        if np.all((mid == lo) | (mid == hi)):  # no float64 left between lo and hi
            break
        above = f(mid) > 0  # the root lies right of mid
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return (lo + hi) / 2


def prop33_root(ref: np.ndarray, reward: np.ndarray, alpha: float, beta: float) -> tuple[np.ndarray, float]:
    """(pi, lambda) solving our reconstruction of Proposition 3.3, for every alpha > 0 and beta > 0:
        r(y) + alpha ref(y) / pi(y) - beta (log pi(y) + 1) = lambda   for all y.

    Everything is solved in log space (at beta 1e-3, pi(y) runs to e^-1000, below float64's range).

    For fixed lambda, u = log pi(y) solves  alpha ref(y) e^-u = beta u + c,  c = lambda + beta - r(y).
    Where ref(y) = 0 the root is u = -c / beta (positive mass outside the reference's support). Elsewhere the left
    side is positive, so u > -c / beta; with v = u + c / beta > 0 the equation is  v e^v = (alpha ref / beta)
    e^(c / beta), i.e. v + log v = z with z = log(alpha ref / beta) + c / beta, and s = log v solves
    z - e^s - s = 0, strictly decreasing in s. Its brackets, from s = z - e^s: s < z always, and for z > 1, v >= 1
    (at v = 1, v + log v = 1 < z) so v <= z, s <= log z. So hi = log z for z > 1, z otherwise, and as s <= hi,
    s >= lo = z - e^hi; lo < hi (z > 1: lo = 0 < log z; z <= 1: lo = z - e^z < z), and e^hi <= max(z, e) never
    overflows (the old brackets in u, +-(|c| + 1) / beta, did: e^1000 at beta 1e-3).

    lambda is the root of log sum_y pi(y), decreasing in lambda (each pi(y) is). Its brackets: at lambda = max r -
    beta - alpha the best-rewarded token has c = -alpha, where u = 0 leaves alpha ref e^-u > beta u + c, so its u > 0:
    pi > 1, the sum above 1. pi(y) = 1 / V exactly at lambda = r(y) + alpha V ref(y) + beta (log V - 1), so above
    hi = max_y (r(y) + alpha V ref(y)) + beta log V every pi(y) < 1 / V: the sum below 1.
    """
    support = ref > 0

    def log_pi(lam):  # [V]
        c = lam + beta - reward  # [V]
        with np.errstate(divide="ignore"):  # log 0 off the support, replaced below
            z = np.where(support, np.log(alpha * ref / beta) + c / beta, 0.0)  # [V]
        hi = np.where(z > 1, np.log(np.maximum(z, 1)), z)
        s = bisect_decreasing(lambda s: z - np.exp(s) - s, z - np.exp(hi), hi)  # [V] log v
        return np.where(support, np.exp(s), 0.0) - c / beta

    def log_total(lam):  # log sum_y pi(y), without overflow
        u = log_pi(lam)
        return u.max() + np.log(np.exp(u - u.max()).sum())

    V = len(ref)
    lam = bisect_decreasing(log_total, reward.max() - beta - alpha, (reward + alpha * V * ref).max() + beta * np.log(V))
    return np.exp(log_pi(lam)), float(lam)


def reverse_kl_optimum(ref: np.ndarray, reward: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """argmax E_pi[r] - alpha KL(pi || ref) + beta H(pi) = ref^(alpha / (alpha + beta)) exp(r / (alpha + beta)) / Z.

    (beta = 0 is Lemma 3.1, ref exp(r / alpha) / Z.) Exactly zero wherever ref is. Normalised in log space: at
    alpha + beta = 1e-3, exp(r / (alpha + beta)) = e^1000 overflows float64.
    """
    with np.errstate(divide="ignore"):  # log 0 = -inf where ref is zero: pi is exactly zero there
        log_pi = alpha / (alpha + beta) * np.log(ref) + reward / (alpha + beta)  # [V]
    pi = np.exp(log_pi - log_pi.max())
    return pi / pi.sum()


def prop33_demo(alpha: float = 1.0, beta: float = 0.5) -> dict:
    """The paper's Figure 2 setting: 16 tokens, ref supported on tokens 3-12 (its shape and the rewards are this
    project's choice: reward 1 on two tokens inside the support and two outside). Returns ref, reward, lambda and three
    policies: `ascent` and `root` (the forward-KL + entropy optimum, two ways) and `reverse` (the KL reversed)."""
    ref = np.zeros(16)
    ref[3:13] = [1, 2, 3, 4, 5, 5, 4, 3, 2, 1]  # a bump on tokens 3..12
    ref /= ref.sum()
    reward = np.zeros(16)
    reward[[1, 4, 8, 14]] = 1.0  # tokens 1 and 14 are outside the support
    root, lam = prop33_root(ref, reward, alpha, beta)
    return dict(alpha=alpha, beta=beta, ref=ref, reward=reward, lam=lam, root=root,
                ascent=ascend(ref, reward, alpha, beta), reverse=reverse_kl_optimum(ref, reward, alpha, beta))


def print_theory(d: dict, plot: str = "") -> None:
    """The table of `prop33_demo`'s result, and optionally a bar chart of it."""
    print(f"max_pi E_pi[r] - alpha KL + beta H(pi) on 16 tokens, alpha = {d['alpha']}, beta = {d['beta']}\n"
          "(the 'Prop 3.3' column is our reconstruction of the paper's Proposition 3.3, whose statement we could not "
          "read)\n"
          f"{'':20}  {'forward KL + entropy':>21}  {'reverse KL + entropy':>20}\n"
          f"{'token':>5} {'ref':>7} {'reward':>6}  {'ascent':>10} {'Prop 3.3':>10}  {'optimum':>20}")
    for y in range(len(d["ref"])):
        print(f"{y:>5} {d['ref'][y]:>7.4f} {d['reward'][y]:>6.0f}  {d['ascent'][y]:>10.6f} {d['root'][y]:>10.6f}"
              f"  {d['reverse'][y]:>20.6f}")
    outside = d["ref"] == 0
    print(f"max |ascent - root| = {np.abs(d['ascent'] - d['root']).max():.1e}; mass outside the reference's support: "
          f"forward KL {d['root'][outside].sum():.4f}, reverse KL {d['reverse'][outside].sum():.4f}")
    if plot:
        import matplotlib  # here: matplotlib is needed only to draw, and slow to import

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tokens, width = np.arange(len(d["ref"])), 0.27
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.bar(tokens - width, d["ref"], width, label="reference")
        ax.bar(tokens, d["root"], width, label="forward KL + entropy (Prop. 3.3 root)")
        ax.plot(tokens, d["ascent"], "k.", label="forward KL + entropy (gradient ascent)")
        ax.bar(tokens + width, d["reverse"], width, label="reverse KL + entropy")
        ax.set_xticks(tokens, [f"{y}*" if d["reward"][y] else str(y) for y in tokens])
        ax.set_xlabel("token (* = reward 1)")
        ax.set_ylabel("probability")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot, dpi=150)
        print(f"plot: {plot}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alpha", type=float, default=1.0, help="the KL's weight")
    parser.add_argument("--beta", type=float, default=0.5, help="the entropy bonus's weight")
    parser.add_argument("--plot", default="", help="also save a bar chart of the three policies to this PNG file")
    args = parser.parse_args(argv)
    print_theory(prop33_demo(args.alpha, args.beta), args.plot)


if __name__ == "__main__":
    main()
