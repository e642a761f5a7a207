"""The toy comparison (`python pope.py` with no --model; `--model M --help` lists POPE's own flags).

    python pope.py                                   # GRPO and POPE side by side (pope.py puts this file together)
    python pope.py --arms grpo,grpo-entropy,grpo-clip-higher,pope     # every arm

`toy.py` holds the task and its base model; this file holds the experiment around them: the arms' settings (all
share everything but the arm's own knob), the base model's and each arm's unguided hard-set solvability and pass@k
on the same prompts, samples and seeds, `summary.json` and the plot. POPE's own part, the prefix search and the guided
training set, is in pope.py, which runs this experiment (`pope.run_toy`), so neither file imports the other's
caller. Deliberately left out: several seeds per run (run it again with --seed), and arms that need their own code
(easy-problem mixing, SFT on the oracle solutions).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import data
import evaluate
import grpo
import reward
import toy
from common import ConfigError, opt, request_seed
from rollout import Engine

ARMS = ("grpo", "grpo-entropy", "grpo-clip-higher", "pope")


@dataclass
class ToyConfig:
    out_dir: str = opt("runs/toy", "base model, arms' runs, summary JSON and the PNG")
    seed: int = opt(0, "seeds the problems, the base model and every arm")
    warm_steps: int = opt(600, "supervised warm-start steps of the base model")
    base_model: str = opt("", "use this toy base-model folder instead of building one")
    n_hard: int = opt(32, "hard problems: the training set, and the set whose unguided solvability is measured")
    arms: str = opt("grpo,grpo-entropy,grpo-clip-higher,pope", "comma-separated arms, each from the same base model "
                    f"and seed: {', '.join(ARMS)}")
    steps: int = opt(6, "training steps per arm")
    prompts_per_step: int = opt(8, "prompts per step (POPE: guided and unguided)")
    group_size: int = opt(8, "samples per prompt")
    minibatches: int = opt(2, "optimizer steps per rollout batch (2: the clip acts)")
    lr: float = opt(2e-4, "AdamW learning rate of every arm (1e-3 wrecks the tiny model in one step)")
    max_new_tokens: int = opt(260, "response budget (a 16-step solution is 238)")
    entropy_coef: float = opt(1e-2, "entropy bonus of the grpo-entropy arm")
    eps_high: float = opt(0.28, "upper clip of the grpo-clip-higher arm (DAPO)")
    prefix_k: int = opt(8, "samples per guided candidate in POPE's prefix search")
    prefix_max_fraction: float = opt(0.8, "longest guiding prefix, fraction of lines: candidates 3, 6, 10, 13 of 17 "
                                     "(POPE's 0.25 leaves 12 of 16 steps: p^12 ~ 0)")
    guided_template: str = opt("no-restate", "POPE's guided prompt; 'no-restate' because the tiny model cannot learn "
                               "to copy a block from the prompt (toy.py's docstring)")
    eval_every: int = opt(3, "unguided hard-set solvability every N steps (--steps is a multiple: the last one is "
                          "each arm's result)")
    eval_k: int = opt(8, "solvable = >= 1 correct in k samples (POPE: pass@8)")


def arm_config(cfg: ToyConfig, base_dir: str, arm: str) -> grpo.Config:
    """The GRPO config of one arm: all share everything but the arm's own knob."""
    common = dict(model=base_dir, out_dir=str(Path(cfg.out_dir) / arm), steps=cfg.steps, seed=cfg.seed,
                  prompts_per_step=cfg.prompts_per_step, group_size=cfg.group_size, minibatches=cfg.minibatches,
                  temperature=1.0, max_new_tokens=cfg.max_new_tokens, max_model_len=1024, lr=cfg.lr,
                  adv_std_norm=False, micro_batch_size=64, log_samples=1, eval_every=cfg.eval_every,
                  eval_k=cfg.eval_k)
    own = {"grpo": {}, "grpo-entropy": {"entropy_coef": cfg.entropy_coef},
           "grpo-clip-higher": {"eps_high": cfg.eps_high}, "pope": {}}
    if arm not in own:
        raise ConfigError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    return grpo.Config(**common, **own[arm])


def setup(cfg: ToyConfig) -> tuple[str, list[data.Problem], Engine]:
    """The base model (built, or --base-model), the hard problems, and one engine that every arm shares."""
    unknown = set(cfg.arms.split(",")) - set(ARMS)
    if unknown:
        raise ConfigError(f"--arms: unknown {', '.join(sorted(unknown))}; choose from {', '.join(ARMS)}")
    if cfg.steps % cfg.eval_every:
        raise ConfigError(f"--steps {cfg.steps} must be a multiple of --eval-every {cfg.eval_every} "
                          f"(the last step's evaluation is each arm's final result)")
    t0 = time.time()
    base_dir = cfg.base_model or toy.build_base_model(str(Path(cfg.out_dir) / "base-model"), seed=cfg.seed,
                                                      steps=cfg.warm_steps)
    print(f"toy: base model ready in {time.time() - t0:.0f} s", flush=True)
    return base_dir, toy.hard_split(cfg.n_hard, seed=cfg.seed), grpo.make_engine(arm_config(cfg, base_dir, "grpo"), 1)


def measured(metrics: dict, eval_k: int) -> dict:
    """The eval entries of one step's metrics, renamed for the summary."""
    return {"solvable": metrics[f"eval_solvable_at_{eval_k}"],
            **{k.replace("eval_pass_at_", "pass@"): v for k, v in metrics.items() if k.startswith("eval_pass_at_")}}


def run_arms(cfg: ToyConfig, base_dir: str, engine: Engine, arm_prompts: dict[str, list[data.Prompt]],
             unguided: list[data.Prompt], searched: dict[str, dict] | None = None) -> dict:
    """Train each arm on its prompts from the base model; evaluate the base model and every arm on `unguided`
    (the same prompts, samples and seeds as each arm's last step); write summary.json and the plot.

    Each arm's budget is reported: the rollouts and sampled tokens of its training, plus `searched[arm]` (what an
    arm sampled before training, e.g. POPE's prefix search: {"rollouts", "sampled_tokens"}). The evaluations are
    measurements, not budget."""
    pool, out, t0 = reward.RewardPool(0), Path(cfg.out_dir), time.time()
    base = measured(evaluate.solvability(engine, pool, toy.toy_reward, unguided, k=cfg.eval_k, temperature=1.0,
                                         max_tokens=cfg.max_new_tokens, seed=request_seed(cfg.seed, cfg.steps - 1),
                                         top_p=1.0, top_k=0, rank=0, world=1, device="cpu"), cfg.eval_k)
    results = {"base": {"final": base, "curve": []}}
    print(f"toy: base model, unguided hard set: {base}", flush=True)
    for arm, prompts in arm_prompts.items():
        t = time.time()
        history = grpo.train(arm_config(cfg, base_dir, arm), prompts, toy.toy_reward, eval_prompts=unguided,
                             engine=engine)
        evals = [(h["step"] + 1, measured(h, cfg.eval_k)) for h in history if f"eval_solvable_at_{cfg.eval_k}" in h]
        before = (searched or {}).get(arm, {})
        results[arm] = {"final": evals[-1][1], "curve": [(s, m["solvable"]) for s, m in evals],
                        "rollouts": sum(h["samples"] for h in history) + before.get("rollouts", 0),
                        "sampled_tokens": sum(h["sampled_tokens"] for h in history) + before.get("sampled_tokens", 0),
                        "clip_frac": max(h["clip_frac_pos_adv"] + h["clip_frac_neg_adv"] for h in history),
                        "seconds": round(time.time() - t, 1)}
        print(f"toy: {arm}: unguided hard set after {cfg.steps} steps: {results[arm]['final']} "
              f"({results[arm]['seconds']:.0f} s)", flush=True)
    pool.close()
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    print_summary(results)
    plot_comparison(results, cfg, out / "toy_comparison.png")
    print(f"toy: arms took {time.time() - t0:.0f} s; summary {out / 'summary.json'}, plot {out / 'toy_comparison.png'}")
    return results


def print_summary(results: dict) -> None:
    keys = list(results["base"]["final"])
    print(f"\n{'unguided hard set':<20}" + "".join(f"{k:>10}" for k in keys) + f"{'rollouts':>10}{'tokens':>10}")
    for arm, r in results.items():
        print(f"{arm:<20}" + "".join(f"{r['final'][k]:>10.3f}" for k in keys)
              + f"{r.get('rollouts', 0):>10.0f}{r.get('sampled_tokens', 0):>10.0f}")


def plot_comparison(results: dict, cfg: ToyConfig, path: Path) -> None:
    """Left: unguided hard-set solvability during training, per arm. Right: each arm's final pass@k."""
    import matplotlib  # here: matplotlib is needed only to draw, and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ks = [int(k.split("@")[1]) for k in results["base"]["final"] if k.startswith("pass@")]
    for arm, r in results.items():
        style = dict(marker="o", label=arm) if arm != "base" else dict(color="k", linestyle="--", label="base model")
        if arm != "base":
            steps, values = zip(*[(0, results["base"]["final"]["solvable"])] + [tuple(p) for p in r["curve"]])
            left.plot(steps, values, **style)
        right.plot(ks, [r["final"][f"pass@{k}"] for k in ks], **style)
    left.set(xlabel="training step", ylabel=f"solvable (>= 1 of {cfg.eval_k} correct)", ylim=(-0.02, 1.02),
             title="unguided hard problems, during training")
    right.set(xscale="log", xlabel="k", ylabel="pass@k", ylim=(-0.02, 1.02), title="unguided hard problems, at the end")
    right.set_xticks(ks, [str(k) for k in ks])
    right.minorticks_off()
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
