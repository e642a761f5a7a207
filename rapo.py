"""RAPO: GRPO with a forward KL to a reward-aware reweighted reference, plus an entropy bonus (arXiv 2510.03865).

    python rapo.py                                                   # the CPU toy world: 4 arms, pass@k, ~7 minutes
    torchrun --nproc_per_node=8 rapo.py --model Qwen/Qwen2.5-3B      # RAPO on SimpleRL-Zoo, 8 GPUs
    torchrun --nproc_per_node=8 rapo.py --model Qwen/Qwen2.5-7B      # the paper's other model
    torchrun --nproc_per_node=8 rapo.py --model M --arm grpo-rkl     # baseline: GRPO, reverse KL (exact)
    torchrun --nproc_per_node=8 rapo.py --model M --arm grpo-k3      # baseline as published: GRPO's k3 term
    torchrun --nproc_per_node=8 rapo.py --model M --arm grpo-fkl     # ablation: forward KL to the plain reference
    python rapo.py --theory --theory-plot prop33.png                 # our Proposition 3.3 check, 16 tokens (CPU)

What changes from GRPO (grpo.py holds the loss; this file only sets its knobs). Per completion token t of sample i,
with pi = pi_theta(. | s_t) and ref = pi_ref(. | s_t):

    L_t           = -clipped surrogate_t + alpha * KL(ref_hat_i || pi) - beta * H(pi)     (GRPO: alpha * KL(pi || ref))
    log ref_hat_i = log_softmax(phi_i * log ref)        (ref^phi / Z: the reference at temperature 1 / phi)
    phi_i         = phi_min + (1 - phi_min) * r_i       (r_i in [0, 1]; phi = 1: the reference, phi -> 0: uniform)

The paper reweights the reference of the whole response, pi_ref(y|x)^phi(r) / Z(x); here it is reweighted per token
(ref_hat above, normalised at each position), a stand-in: the sequence-level Z(x) sums over every possible response.

Why: with GRPO's reverse KL, the best policy for max E_pi[r] - alpha KL(pi || ref) is ref * exp(r / alpha) / Z
(Lemma 3.1; with + beta H(pi) it is ref^(alpha / (alpha + beta)) exp(r / (alpha + beta)) / Z), zero wherever the
reference is zero: the policy cannot learn an answer the reference never produces. With the forward KL and the
entropy term it is positive on every token (Proposition 3.3). `python rapo.py --theory` checks both on 16 tokens,
against our reconstruction of Proposition 3.3 from the paper's abstract and a secondary summary (the paper's own
statement was not available to us; docs/algorithms.md §3.3).

The paper's (docs/algorithms.md §3; read from its abstract, captions and a secondary summary, the full text was not
readable): the forward KL in place of the reverse KL, the entropy bonus, the reference reweighted as ref^phi(r) / Z
with phi monotone in the reward, the GRPO surrogate otherwise unchanged, Qwen2.5-3B/7B base models with no SFT, and
SimpleRL-Zoo's 8K training problems. This project's choices, where the paper's values were NOT FOUND: phi linear in
the reward with phi_min = 0.5 on the reference's nucleus, phi from the sample's own reward (its group's mean is
--ref-phi-source group-mean), the KL per token (a per-sequence ratio is a product of token ratios and explodes),
the KL exact over the vocabulary at each visited position (its gradient is the true forward-KL gradient there; the
paper's sampled value estimate w log w - w + 1 has a biased gradient as a loss, so the sampled option is --kl
forward-k3, whose gradient is the forward KL's, see grpo.kl_term), alpha = beta = 1e-3, and SimpleRL-Zoo's recipe for everything else (group 8,
lr 5e-7, clip 0.2, 1024 prompts per step in 4 minibatches, 8192 tokens, temperature 1, reverse-KL 1e-4).

Why the reweighting tempers only the reference's nucleus (`grpo.reweighted_reference`, --ref-nucleus 0.1, this
project's): ref^phi / Z over the whole vocabulary lifts every token the reference rules out. At Qwen's 151,936
tokens with tail log-probs near -20, ref^0.5 / Z put 87% of a position's mass on tokens the reference gives < 1e-4
and added 10 nats of entropy (bench/bench_reweighting.py); in the toy (toy_rapo.py, 384 tokens) it took ~30% and
pass@1 fell from 0.59 to 0.15. Tempering only the tokens with ref >= 0.1 x max ref keeps the tail at the
reference's own share for every phi, and added at most 0.25 nats on the bench's heads for every phi in (0, 1],
which is why phi_min 0.5 is safe with it. Each step logs what the reweighting did (ref_hat_tail, ref_hat_entropy_gain,
over the reweighted tokens) and the run stops past --ref-hat-max-tail / --ref-hat-max-entropy-gain.

The baselines. The paper's GRPO-RKL ran GRPO's k3 term (SimpleRL-Zoo: verl's low_var_kl), whose value estimates the
reverse KL but whose gradient is the forward KL's (grpo.kl_term): as published it is the `grpo-k3` arm. A comparison
about the KL's direction needs a true reverse-KL gradient: the `grpo-rkl` arm, exact over the vocabulary like the
forward arms. So four arms: grpo-rkl (reverse), grpo-k3 (as published: forward gradient, plain reference),
grpo-fkl (forward, plain reference) and rapo (forward, reweighted reference); grpo-rkl, grpo-fkl and rapo share
alpha = 1e-3, every arm shares beta.

Deliberately left out: the paper's evaluation (pass@k to k = 1024 on AIME 2024/2025 from 2048 samples, and its "hard"
subsets), SimpleRL-Zoo's qwen-boxed prompt (the project's system prompt carries the same instruction), and any
sequence-level KL.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import numpy as np
import torch

import grpo
from common import one_line_errors, opt, parse_config, shutdown

# The arms of the paper's comparison (its Fig. 3 calls them GRPO-RKL, GRPO-FKL and RAPO; GRPO-RKL as published is
# grpo-k3, see the docstring). --arm picks one and its values become the defaults; a flag given explicitly still wins.
# grpo-rkl, grpo-fkl and rapo differ only in what they are named for (the KL's direction, the reweighting): the same
# alpha 1e-3; grpo-k3 keeps the published baseline's 1e-4. All else (the entropy bonus beta too) is shared.
ARMS = {
    "grpo-rkl": dict(kl="reverse-exact", kl_coef=1e-3, ref_phi_min=1.0, out_dir="runs/rapo-arm-grpo-rkl"),
    "grpo-k3": dict(kl="forward-k3", kl_coef=1e-4, ref_phi_min=1.0, out_dir="runs/rapo-arm-grpo-k3"),
    "grpo-fkl": dict(kl="forward-exact", kl_coef=1e-3, ref_phi_min=1.0, out_dir="runs/rapo-arm-grpo-fkl"),
    "rapo": dict(kl="forward-exact", kl_coef=1e-3, ref_phi_min=0.5, out_dir="runs/rapo-arm-rapo"),
}


PAPER, OURS = "paper", "this project's choice"  # where a default comes from, in --help


def tagged(name: str, default, tag: str):
    """grpo.Config's field `name` with a new default, its --help text extended by where the value comes from."""
    base = next(f for f in dataclasses.fields(grpo.Config) if f.name == name)
    return opt(default, f"{base.metadata['help']} [{tag}]", **{k: v for k, v in base.metadata.items() if k != "help"})


@dataclass
class RapoConfig(grpo.Config):
    model: str = tagged("model", "", f"{PAPER}: Qwen2.5-3B and -7B base models, no SFT; empty = the CPU toy world "
                        "(its flags: python rapo.py --help)")
    data: str = tagged("data", "simplerl-zoo", f"{PAPER}: SimpleRL-Zoo's 8K problems, hkust-nlp/SimpleRL-Zoo-Data")
    out_dir: str = tagged("out_dir", ARMS["rapo"]["out_dir"], f"{OURS}: one folder per arm")
    prompts_per_step: int = tagged("prompts_per_step", 1024, f"{OURS}: SimpleRL-Zoo's train_batch_size")
    minibatches: int = tagged("minibatches", 4, f"{OURS}: SimpleRL-Zoo's ppo_mini_batch_size 256 of 1024")
    group_size: int = tagged("group_size", 8, f"{OURS}: SimpleRL-Zoo's rollout_n")
    temperature: float = tagged("temperature", 1.0, f"{OURS}: SimpleRL-Zoo")
    max_new_tokens: int = tagged("max_new_tokens", 8192, f"{OURS}: SimpleRL-Zoo's 7B max_response_length")
    max_model_len: int = tagged("max_model_len", 9216, f"{OURS}: 8192 response + 1024 prompt")
    eps_low: float = tagged("eps_low", 0.2, f"{OURS}: GRPO's")
    eps_high: float = tagged("eps_high", 0.2, f"{OURS}: GRPO's")
    lr: float = tagged("lr", 5e-7, f"{OURS}: SimpleRL-Zoo's")
    grad_checkpointing: bool = tagged("grad_checkpointing", True, f"{OURS}: 8192-token responses")
    kl: str = tagged("kl", ARMS["rapo"]["kl"], f"{PAPER}: forward KL; {OURS}: per token, exact (default) or sampled "
                     "(forward-k3); arms: grpo-rkl reverse-exact, grpo-k3 forward-k3 (GRPO's k3 as published)")
    kl_coef: float = tagged("kl_coef", ARMS["rapo"]["kl_coef"], f"{OURS}: RAPO's alpha, the same in the grpo-rkl and "
                            "grpo-fkl arms; the grpo-k3 arm 1e-4 (SimpleRL-Zoo's k3 coefficient, as published)")
    ref_phi_min: float = tagged("ref_phi_min", ARMS["rapo"]["ref_phi_min"], f"{PAPER}: ref^phi(r) / Z, phi "
                                f"monotone in reward; {OURS}: the linear form, 0.5 (1 in the grpo-* arms), tempering "
                                "the reference's nucleus only (--ref-nucleus)")
    ref_phi_source: str = tagged("ref_phi_source", "sample", OURS)
    entropy_coef: float = tagged("entropy_coef", 1e-3, f"{PAPER}: an entropy bonus; {OURS}: RAPO's beta = "
                                 "SimpleRL-Zoo's 1e-3, in every arm")
    arm: str = opt("rapo", "preset for the comparison: grpo-rkl (gradient of the reverse KL, exact), grpo-k3 (GRPO's "
                   "k3 as published: reverse-KL value, forward-KL gradient), grpo-fkl (forward KL, phi = 1) or rapo "
                   "(forward KL, phi < 1); sets --kl, --kl-coef, --ref-phi-min, --out-dir "
                   f"[{PAPER}: the arms GRPO-RKL, GRPO-FKL, RAPO; {OURS}: GRPO-RKL split into grpo-rkl and grpo-k3]",
                   choices=list(ARMS))
    theory: bool = opt(False, "no training: check our reconstruction of Proposition 3.3 (the paper's statement was "
                       "not available) on a 16-token vocabulary, print it and exit")
    theory_plot: str = opt("", "with --theory, also save a bar chart of the three policies to this PNG file")


def parse(argv=None) -> RapoConfig:
    """Flags -> RapoConfig. The --arm preset replaces the defaults, so flags given explicitly still win (the values
    are checked where training starts, `grpo.train`)."""
    arm = parse_config(RapoConfig, argv).arm
    return parse_config(RapoConfig, argv, **ARMS[arm])


# ----------------------------------------------------------------------------------------------------------------
# The theory, numerically: max_pi  E_pi[r] - alpha KL(ref || pi) + beta H(pi)  over one 16-token distribution


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
    argv = sys.argv[1:] if argv is None else argv
    if not any(a.split("=")[0] in ("--model", "--theory") for a in argv):  # the toy world, with its own flags
        import toy_rapo  # here: it imports this file's neighbours and builds a model; only the toy needs it

        with one_line_errors():
            toy_rapo.run(parse_config(toy_rapo.RapoToyConfig, argv))
        shutdown()
        return
    cfg = parse(argv)
    if cfg.theory:
        print_theory(prop33_demo(), cfg.theory_plot)
        return
    grpo.main(argv, RapoConfig, **ARMS[cfg.arm])  # parses the same flags again, trains, reports errors in one line


if __name__ == "__main__":
    main()
