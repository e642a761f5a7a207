"""RAPO: GRPO with a forward KL to a reward-aware reweighted reference, plus an entropy bonus (arXiv 2510.03865).

    torchrun --nproc_per_node=8 rapo.py --model Qwen/Qwen2.5-3B      # RAPO on SimpleRL-Zoo, 8 GPUs
    torchrun --nproc_per_node=8 rapo.py --model Qwen/Qwen2.5-7B      # the paper's other model
    torchrun --nproc_per_node=8 rapo.py --model M --arm grpo-rkl     # baseline: GRPO, reverse KL (exact)
    torchrun --nproc_per_node=8 rapo.py --model M --arm grpo-k3      # baseline as published: GRPO's k3 term
    torchrun --nproc_per_node=8 rapo.py --model M --arm grpo-fkl     # ablation: forward KL to the plain reference

The CPU toy world of these arms is `python toys/rapo_world.py`; the Proposition 3.3 check, `python toys/prop33.py`.

What changes from GRPO. grpo.py holds the loss and the mechanism, a per-sequence sharpness of the KL's reference
(`grpo.reweighted_reference`); this file holds RAPO's rule for it, `reward_phi`, which reaches `grpo.train` the way
the reward function does, and the arms' knobs. Per completion token t of sample i, with pi = pi_theta(. | s_t) and
ref = pi_ref(. | s_t):

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
and added 10 nats of entropy (bench/bench_reweighting.py); in the first toy (toys/rapo_world.py v1, 384 tokens) it took
~30% and pass@1 fell from 0.59 to 0.15. Tempering only the tokens with ref >= 0.1 x max ref keeps the tail at the
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

from dataclasses import dataclass
from functools import partial

import torch

import grpo
from common import ConfigError, command_line, opt, parse_config, preset

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


@preset({
    "model": ("", f"{PAPER}: Qwen2.5-3B and -7B base models, no SFT; required (the CPU toy world is python "
                  "toys/rapo_world.py)"),
    "data": ("simplerl-zoo", f"{PAPER}: SimpleRL-Zoo's 8K problems, hkust-nlp/SimpleRL-Zoo-Data"),
    "out_dir": (ARMS["rapo"]["out_dir"], f"{OURS}: one folder per arm"),
    "prompts_per_step": (1024, f"{OURS}: SimpleRL-Zoo's train_batch_size"),
    "minibatches": (4, f"{OURS}: SimpleRL-Zoo's ppo_mini_batch_size 256 of 1024"),
    "group_size": (8, f"{OURS}: SimpleRL-Zoo's rollout_n"),
    "temperature": (1.0, f"{OURS}: SimpleRL-Zoo"),
    "max_new_tokens": (8192, f"{OURS}: SimpleRL-Zoo's 7B max_response_length"),
    "max_model_len": (9216, f"{OURS}: 8192 response + 1024 prompt"),
    "eps_low": (0.2, f"{OURS}: GRPO's"), "eps_high": (0.2, f"{OURS}: GRPO's"),
    "lr": (5e-7, f"{OURS}: SimpleRL-Zoo's"),
    "grad_checkpointing": (True, f"{OURS}: 8192-token responses"),
    "kl": (ARMS["rapo"]["kl"], f"{PAPER}: forward KL; {OURS}: per token, exact (default) or sampled (forward-k3); "
                               "arms: grpo-rkl reverse-exact, grpo-k3 forward-k3 (GRPO's k3 as published)"),
    "kl_coef": (ARMS["rapo"]["kl_coef"], f"{OURS}: RAPO's alpha, the same in the grpo-rkl and grpo-fkl arms; the "
                                         "grpo-k3 arm 1e-4 (SimpleRL-Zoo's k3 coefficient, as published)"),
    "entropy_coef": (1e-3, f"{PAPER}: an entropy bonus; {OURS}: RAPO's beta = SimpleRL-Zoo's 1e-3, in every arm"),
})
@dataclass
class RapoConfig(grpo.Config):
    ref_phi_min: float = opt(ARMS["rapo"]["ref_phi_min"], "RAPO's reward-aware reference: the KL's reference of a "
                             "sample is ref^phi on the reference's nucleus (--ref-nucleus), phi = phi_min + (1 - "
                             f"phi_min) * reward; 1 = the plain reference [{PAPER}: ref^phi(r) / Z, phi monotone in "
                             f"the reward; {OURS}: the linear form, 0.5 (1 in the grpo-* arms)]")
    ref_phi_source: str = opt("sample", "reward that sets phi: the sample's own, or its group's mean "
                              f"[{OURS}: not published]", choices=["sample", "group-mean"])
    arm: str = opt("rapo", "preset for the comparison: grpo-rkl (gradient of the reverse KL, exact), grpo-k3 (GRPO's "
                   "k3 as published: reverse-KL value, forward-KL gradient), grpo-fkl (forward KL, phi = 1) or rapo "
                   "(forward KL, phi < 1); sets --kl, --kl-coef, --ref-phi-min, --out-dir "
                   f"[{PAPER}: the arms GRPO-RKL, GRPO-FKL, RAPO; {OURS}: GRPO-RKL split into grpo-rkl and grpo-k3]",
                   choices=list(ARMS))


def reward_phi(rewards: torch.Tensor, phi_min: float, source: str) -> torch.Tensor:
    """RAPO's phi [B, G] from the step's rewards [B, G] in [0, 1]: phi = phi_min + (1 - phi_min) * r, with r the
    sample's own reward or its group's mean. A correct sample (r = 1) keeps the plain reference; a failed one's is
    tempered to ref^phi_min, spreading the reference's mass over the alternatives it already gives weight to.

    >>> reward_phi(torch.tensor([[1.0, 0.0]]), phi_min=0.5, source="sample")
    tensor([[1.0000, 0.5000]])
    """
    r = rewards if source == "sample" else rewards.mean(1, keepdim=True).expand_as(rewards)  # [B, G]
    if not ((r >= 0) & (r <= 1)).all():
        raise ConfigError(f"--ref-phi-min < 1 needs rewards in [0, 1]; got {r.min():.3g} .. {r.max():.3g}")
    return phi_min + (1 - phi_min) * r  # [B, G]


def phi_rule(phi_min: float, source: str = "sample"):
    """RAPO's rule as grpo.train's `ref_sharpness`: rewards [B, G] -> phi [B, G]; None when phi_min = 1 (the plain
    reference, the grpo-* arms)."""
    return None if phi_min == 1 else partial(reward_phi, phi_min=phi_min, source=source)


def check_config(cfg: RapoConfig) -> None:
    """Reject RAPO settings that cannot work, before anything is loaded (grpo.train checks the rest)."""
    if not 0 < cfg.ref_phi_min <= 1:
        raise ConfigError(f"--ref-phi-min {cfg.ref_phi_min}: must be in (0, 1] (1 = the plain reference)")
    if cfg.ref_phi_min < 1 and cfg.kl_coef == 0:
        raise ConfigError("--ref-phi-min < 1 reweights the KL's reference, but --kl-coef 0 turns the KL off")


def run(cfg: RapoConfig) -> list[dict]:
    """GRPO, with phi from each sample's reward setting the sharpness of its KL's reference (phi_min 1: plain)."""
    check_config(cfg)
    return grpo.run(cfg, ref_sharpness=phi_rule(cfg.ref_phi_min, cfg.ref_phi_source))


ARM_PRESETS = ("arm", ARMS)  # --arm's value picks its ARMS entry as the defaults (common.parse_config)


def parse(argv=None) -> RapoConfig:
    """The flags, parsed once, with the --arm preset as defaults: flags given explicitly still win."""
    return parse_config(RapoConfig, argv, presets=ARM_PRESETS)


def main(argv=None) -> None:
    command_line(RapoConfig, run, argv, presets=ARM_PRESETS)


if __name__ == "__main__":
    main()
