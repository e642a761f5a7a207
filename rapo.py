"""RAPO: GRPO with a forward KL to a reward-aware reweighted reference, plus an entropy bonus (arXiv 2510.03865).

    torchrun --nproc_per_node=8 rapo.py --model Qwen/Qwen2.5-3B      # RAPO on SimpleRL-Zoo, 8 GPUs
    torchrun --nproc_per_node=8 rapo.py --model Qwen/Qwen2.5-7B      # the paper's other model
    torchrun --nproc_per_node=8 rapo.py --model M --arm grpo-rkl     # baseline: GRPO, reverse KL (exact)
    torchrun --nproc_per_node=8 rapo.py --model M --arm grpo-k3      # baseline as published: GRPO's k3 term
    torchrun --nproc_per_node=8 rapo.py --model M --arm grpo-fkl     # ablation: forward KL to the plain reference

The CPU toy world of these arms is `python toys/rapo_world.py`; the Proposition 3.3 check, `python toys/prop33.py`.

What changes from GRPO (grpo.py holds the loss; this file only sets its knobs). Per completion token t of sample i,
with pi = pi_theta(. | s_t) and ref = pi_ref(. | s_t):

    L_t           = -clipped surrogate_t + alpha * KL(ref_hat_i || pi) - beta * H(pi)     (GRPO: alpha * KL(pi || ref))
    ref_hat_i     = ref^phi_i on the reference's nucleus, renormalised to its mass (grpo.reweighted_reference)
    phi_i         = phi_min + (1 - phi_min) * r_i       (r_i in [0, 1]; phi = 1: the reference, phi -> 0: uniform)

The paper reweights the reference of the whole response, pi_ref(y|x)^phi(r) / Z(x); here it is reweighted per token
(ref_hat above, normalised at each position), a stand-in: the sequence-level Z(x) sums over every possible response.

Why: with GRPO's reverse KL, the best policy for max E_pi[r] - alpha KL(pi || ref) is ref * exp(r / alpha) / Z
(Lemma 3.1; with + beta H(pi) it is ref^(alpha / (alpha + beta)) exp(r / (alpha + beta)) / Z), zero wherever the
reference is zero: the policy cannot learn an answer the reference never produces. With the forward KL and the
entropy term it is positive on every token (Proposition 3.3). `python toys/prop33.py` checks both on 16 tokens,
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
forward-k3, whose gradient is the forward KL's, see grpo.kl_term), alpha = beta = 1e-3, and SimpleRL-Zoo's recipe
for everything else (group 8, lr 5e-7, clip 0.2, 1024 prompts per step in 4 minibatches, 8192 tokens, temperature
1, reverse-KL 1e-4).

Why the reweighting tempers only the reference's nucleus (`grpo.reweighted_reference`, --ref-nucleus 0.1, this
project's): ref^phi / Z over the whole vocabulary lifts every token the reference rules out. At Qwen's 151,936
tokens with tail log-probs near -20, ref^0.5 / Z put 87% of a position's mass on tokens the reference gives < 1e-4
and added 10 nats of entropy (bench/bench_reweighting.py); in the toy (toys/rapo_world.py, 384 tokens) it took ~30% and
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
from dataclasses import dataclass

import grpo
from common import opt, parse_config

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
    model: str = tagged("model", "", f"{PAPER}: Qwen2.5-3B and -7B base models, no SFT; required (the CPU toy world "
                        "is python toys/rapo_world.py)")
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


def parse(argv=None) -> RapoConfig:
    """Flags -> RapoConfig. The --arm preset replaces the defaults, so flags given explicitly still win (the values
    are checked where training starts, `grpo.train`)."""
    arm = parse_config(RapoConfig, argv).arm
    return parse_config(RapoConfig, argv, **ARMS[arm])


def main(argv=None) -> None:
    """Parse the flags with the --arm preset as defaults (explicit flags win), then train (errors in one line)."""
    grpo.main(argv, RapoConfig, **ARMS[parse(argv).arm])


if __name__ == "__main__":
    main()
