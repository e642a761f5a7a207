"""POPE's toy comparison: GRPO's rivals and POPE, trained from one shipped base model on the toy world's hard problems.

    python toys/pope_compare.py                               # GRPO and POPE side by side, 4.5 minutes
    python toys/pope_compare.py --arms all --seeds 0,1,2      # every arm, three seeds (65 min): toys/README.md's table

`pope_world.py` holds the task and its shipped base model; this file holds the experiment around them. Every arm starts
from the same base model and, per seed, trains on the same 32 hard problems (the seed draws them and seeds all
sampling); every arm is measured on those problems unguided, with the same prompts, samples and seeds. The arms:

    grpo              GRPO on the unguided hard problems
    grpo-entropy      + an entropy bonus (--entropy-coef)
    grpo-clip-higher  + DAPO's clip-higher (--eps-high; it can act: each batch is --minibatches 2 updates)
    grpo-klcov        + KL-Cov (Cui et al. 2025, arXiv 2505.22617), an entropy-collapse control (grpo.grpo_loss)
    grpo-mix          GRPO on the hard problems and as many easy ones (the POPE paper's hard + easy mixing, §5)
    sft-grpo          supervised fine-tuning on the hard problems' oracle solutions (--sft-steps), then GRPO
    pope              unguided + guided copies, after pope.py's prefix search

Equal budgets: every arm but POPE samples a larger group (--baseline-group-size; by default the smallest that gives
it at least POPE's rollouts, POPE's prefix search included), so "the rivals sampled less" cannot explain a gap.
Each arm's rollouts and sampled tokens are in `summary.json` and the printed table. With several --seeds, the table
gives each arm's mean and range. Deliberately left out: the SFT arm's oracle tokens from its budget (they are not
sampled), and a second skill that only hard problems need, without which easy-problem mixing cannot show the POPE
paper's "ray interference" (README's toy section).
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the algorithms, for `python toys/pope_compare.py`

import data  # noqa: E402
import evaluate  # noqa: E402
import grpo  # noqa: E402
import pope  # noqa: E402
import pope_world  # noqa: E402
import reward  # noqa: E402
import tiny  # noqa: E402
from common import ConfigError, command_line, opt  # noqa: E402
from rollout import Engine, make_engine  # noqa: E402

ARMS = ("grpo", "grpo-entropy", "grpo-clip-higher", "grpo-klcov", "grpo-mix", "sft-grpo", "pope")


@dataclass
class ToyConfig:
    out_dir: str = opt("runs/toy", "arms' runs, summary JSON and the PNG (one folder per seed)")
    seeds: str = opt("0", "comma-separated seeds; each draws its own hard problems and seeds every arm's sampling")
    base_model: str = opt(pope_world.SHIPPED_MODEL, "toy base-model folder (default: the shipped one, which "
                          "`python pope_world.py build` rebuilds)")
    n_hard: int = opt(32, "hard problems: the training set, and the set whose unguided solvability is measured")
    arms: str = opt("grpo,pope", f"comma-separated arms, or all: {', '.join(ARMS)}")
    steps: int = opt(12, "training steps per arm")
    prompts_per_step: int = opt(16, "prompts per step (POPE: guided and unguided)")
    group_size: int = opt(8, "samples per prompt of the POPE arm")
    baseline_group_size: int = opt(0, "samples per prompt of every other arm; 0 = the smallest group that gives each "
                                   "at least POPE's rollouts, its prefix search included")
    minibatches: int = opt(2, "optimizer steps per rollout batch (2: the clip acts)")
    lr: float = opt(4e-4, "AdamW learning rate of every arm (1e-3 wrecks the tiny model in one step)")
    max_new_tokens: int = opt(260, "response budget (a 16-step solution is 238)")
    entropy_coef: float = opt(1e-2, "entropy bonus of the grpo-entropy arm")
    eps_high: float = opt(0.28, "upper clip of the grpo-clip-higher arm (DAPO)")
    kl_cov_ratio: float = opt(2e-3, "grpo-klcov: fraction of tokens, by covariance, that get the KL penalty "
                              "(KL-Cov; this project's: ~30 tokens of a 15k-token micro-batch; verl's recipes 1e-3)")
    kl_cov_coef: float = opt(1.0, "grpo-klcov: weight of the |log ratio| penalty (verl's default: 1)")
    sft_steps: int = opt(16, "sft-grpo: supervised steps on the oracle solutions (16 x 16 = 8 epochs of 32)")
    sft_lr: float = opt(1e-3, "sft-grpo: supervised learning rate")
    prefix_k: int = opt(8, "samples per guided candidate in POPE's prefix search")
    prefix_max_fraction: float = opt(0.85, "longest guiding prefix, fraction of lines: candidates 3, 7, 10, 14 of 17 "
                                     "(POPE's 0.25 leaves 12 of 16 steps: about 10 wraps)")
    guided_template: str = opt("no-restate", "POPE's guided prompt; 'no-restate' because the tiny model cannot learn "
                               "to copy a block from the prompt (pope_world.py's docstring)")
    eval_every: int = opt(4, "unguided hard-set solvability every N steps (--steps is a multiple: the last one is "
                          "each arm's result)")
    eval_k: int = opt(8, "solvable = >= 1 correct in k samples (POPE: pass@8)")


def arm_config(cfg: ToyConfig, model: str, arm: str, seed: int, group_size: int) -> grpo.Config:
    """The GRPO config of one arm: all share everything but the arm's own knob (and POPE its group size)."""
    common = dict(model=model, out_dir=str(Path(cfg.out_dir) / f"seed{seed}" / arm), steps=cfg.steps, seed=seed,
                  prompts_per_step=cfg.prompts_per_step, group_size=group_size, minibatches=cfg.minibatches,
                  temperature=1.0, max_new_tokens=cfg.max_new_tokens, max_model_len=1024, lr=cfg.lr,
                  adv_std_norm=False, micro_batch_size=64, log_samples=1, eval_every=cfg.eval_every,
                  eval_k=cfg.eval_k)
    own = {"grpo-entropy": {"entropy_coef": cfg.entropy_coef}, "grpo-clip-higher": {"eps_high": cfg.eps_high},
           "grpo-klcov": {"kl_cov_ratio": cfg.kl_cov_ratio, "kl_cov_coef": cfg.kl_cov_coef}}
    return grpo.Config(**common, **own.get(arm, {}))


def check(cfg: ToyConfig) -> list[str]:
    """The arms to run, after checking the flags."""
    arms = list(ARMS) if cfg.arms == "all" else cfg.arms.split(",")
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ConfigError(f"--arms: unknown {', '.join(sorted(unknown))}; choose from all, {', '.join(ARMS)}")
    if cfg.steps % cfg.eval_every:
        raise ConfigError(f"--steps {cfg.steps} must be a multiple of --eval-every {cfg.eval_every} "
                          f"(the last step's evaluation is each arm's final result)")
    if not Path(cfg.base_model, "config.json").is_file():
        if cfg.base_model != pope_world.SHIPPED_MODEL:
            raise ConfigError(f"--base-model {cfg.base_model}: no config.json there; build one with "
                              f"`python pope_world.py build {cfg.base_model}`")
        pope_world.build_base_model(cfg.base_model)  # the shipped folder is missing (deleted?): rebuild it, ~5 minutes
    return arms


def measured(metrics: dict, eval_k: int) -> dict:
    """The eval entries of one step's metrics, renamed for the summary."""
    return {"solvable": metrics[f"eval_solvable_at_{eval_k}"],
            **{k.replace("eval_pass_at_", "pass@"): v for k, v in metrics.items() if k.startswith("eval_pass_at_")}}


def sft_model(cfg: ToyConfig, base_dir: str, tok, hard: list[data.Problem], out_dir: Path, seed: int) -> str:
    """The sft-grpo arm's start: the base model fine-tuned on the hard problems' full oracle solutions, the same
    privileged data POPE cuts its prefixes from (tiny.warm_start: cross-entropy on the solution tokens)."""
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    examples = [(data.make_prompt(tok, p).prompt_ids,
                 tok.encode(p.solution, add_special_tokens=False) + [tok.eos_token_id]) for p in hard]
    tiny.warm_start(model, examples, steps=cfg.sft_steps, batch_size=min(16, len(examples)), lr=cfg.sft_lr,
                   warmup=max(1, cfg.sft_steps // 10), seed=seed, log_every=0)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)


def run_seed(cfg: ToyConfig, arms: list[str], engine: Engine, tok, seed: int) -> dict:
    """Every arm for one seed: the base model's and each arm's unguided hard-set results, and each arm's budget."""
    out = Path(cfg.out_dir) / f"seed{seed}"
    hard = pope_world.hard_split(cfg.n_hard, seed=seed)
    unguided = [data.make_prompt(tok, p) for p in hard]
    engine.sync_weights(AutoModelForCausalLM.from_pretrained(cfg.base_model).named_parameters(
        remove_duplicate=False))  # the base again
    pool = reward.RewardPool(0)
    base = measured(evaluate.solvability(engine, pool, pope_world.toy_reward, unguided, k=cfg.eval_k, temperature=1.0,
                                         max_tokens=cfg.max_new_tokens, seed=seed, step=cfg.steps - 1,
                                         top_p=1.0, top_k=0, rank=0, world=1, device="cpu"), cfg.eval_k)
    pool.close()
    print(f"toy seed {seed}: base model, unguided hard set: {base}", flush=True)
    results, searched = {"base": {"final": base, "curve": []}}, {}
    training = {arm: unguided for arm in arms}
    if "pope" in arms:  # POPE's prefix search samples from the base model, before any arm trains
        pope_cfg = pope.PopeConfig(model=cfg.base_model, data=f"toy hard split of {cfg.n_hard}", out_dir=str(out),
                                   seed=seed, guided_template=cfg.guided_template)
        settings = (cfg.prefix_k, cfg.max_new_tokens, cfg.prefix_max_fraction, cfg.guided_template)
        prefixes = pope.find_prefixes(engine, tok, hard, pope_world.toy_reward,
                                      pope.cache_path(pope_cfg, "prefixes", *settings), k=cfg.prefix_k,
                                      temperature=1.0, max_tokens=cfg.max_new_tokens, seed=seed,
                                      max_fraction=cfg.prefix_max_fraction, template=cfg.guided_template)
        lines = sum(r["lines"] for r in prefixes.values()) / len(hard)
        print(f"toy seed {seed}: POPE prefixes: {sum(r['solvable'] for r in prefixes.values())}/{len(hard)} hard "
              f"problems solvable with a guiding prefix (mean {lines:.1f} lines)", flush=True)
        training["pope"] = pope.training_set(tok, hard, prefixes, pope_cfg)
        searched = {"rollouts": sum(r["samples"] for r in prefixes.values()),
                    "sampled_tokens": sum(r["tokens"] for r in prefixes.values())}
    if "grpo-mix" in arms:
        easy = [replace(data.make_prompt(tok, p), kind="easy") for p in pope_world.easy_split(cfg.n_hard, seed=seed)]
        training["grpo-mix"] = [p for pair in zip(unguided, easy) for p in pair]  # 1:1, interleaved
    pope_rollouts = searched.get("rollouts", 0) + cfg.steps * cfg.prompts_per_step * cfg.group_size
    baseline_group = cfg.baseline_group_size or (math.ceil(pope_rollouts / (cfg.steps * cfg.prompts_per_step))
                                                 if "pope" in arms else cfg.group_size)
    for arm in arms:
        t = time.time()
        model = cfg.base_model
        if arm == "sft-grpo":
            model = sft_model(cfg, cfg.base_model, tok, hard, out / arm / "sft-model", seed)
        group = cfg.group_size if arm == "pope" else baseline_group
        history = grpo.train(arm_config(cfg, model, arm, seed, group), training[arm], pope_world.toy_reward,
                             eval_prompts=unguided, engine=engine)
        evals = [(h["step"] + 1, measured(h, cfg.eval_k)) for h in history if f"eval_solvable_at_{cfg.eval_k}" in h]
        before = searched if arm == "pope" else {}
        results[arm] = {"final": evals[-1][1], "curve": [(s, m["solvable"]) for s, m in evals], "group_size": group,
                        "rollouts": sum(h["samples"] for h in history) + before.get("rollouts", 0),
                        "sampled_tokens": sum(h["sampled_tokens"] for h in history) + before.get("sampled_tokens", 0),
                        "clip_frac": max(h["clip_frac_pos_adv"] + h["clip_frac_neg_adv"] for h in history),
                        "seconds": round(time.time() - t, 1)}
        print(f"toy seed {seed}: {arm}: unguided hard set after {cfg.steps} steps: {results[arm]['final']} "
              f"({results[arm]['seconds']:.0f} s)", flush=True)
    return results


def table(per_seed: dict[int, dict]) -> dict[str, dict]:
    """{arm: {metric: [mean, min, max]}} over seeds, for the final measurements and the budget."""
    first = next(iter(per_seed.values()))
    out = {}
    for arm in first:
        rows = [r[arm] for r in per_seed.values()]
        values = {k: [r["final"][k] for r in rows] for k in first["base"]["final"]}
        values.update({k: [r.get(k, 0) for r in rows] for k in ("rollouts", "sampled_tokens", "clip_frac")})
        out[arm] = {k: [sum(v) / len(v), min(v), max(v)] for k, v in values.items()}
    return out


def print_table(summary: dict[str, dict], seeds: int) -> None:
    keys = [k for k in next(iter(summary.values())) if k not in ("rollouts", "sampled_tokens", "clip_frac")]
    print(f"\nunguided hard set, {'mean [min, max] over ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed'}")
    print(f"{'':<18}" + "".join(f"{k:>20}" for k in keys) + f"{'rollouts':>10}{'tokens':>10}{'clip frac':>10}")
    for arm, r in summary.items():
        cells = [f"{r[k][0]:.2f} [{r[k][1]:.2f}, {r[k][2]:.2f}]" if seeds > 1 else f"{r[k][0]:.3f}" for k in keys]
        print(f"{arm:<18}" + "".join(f"{c:>20}" for c in cells)
              + f"{r['rollouts'][0]:>10.0f}{r['sampled_tokens'][0]:>10.0f}{r['clip_frac'][2]:>10.3f}")


def run(cfg: ToyConfig) -> dict:
    """Every seed's arms, then summary.json ({"seeds": per seed, "table": mean/min/max}), the table and the plot."""
    arms = check(cfg)
    seeds = [int(s) for s in cfg.seeds.split(",")]
    tok = AutoTokenizer.from_pretrained(cfg.base_model)
    engine = make_engine(arm_config(cfg, cfg.base_model, "grpo", seeds[0], cfg.group_size), 1)
    t0 = time.time()
    per_seed = {seed: run_seed(cfg, arms, engine, tok, seed) for seed in seeds}
    summary = {"seeds": per_seed, "table": table(per_seed)}
    Path(cfg.out_dir, "summary.json").write_text(json.dumps(summary, indent=1))
    print_table(summary["table"], len(seeds))
    plot_comparison(per_seed, cfg, Path(cfg.out_dir) / "toy_comparison.png")
    del engine  # vLLM's teardown resets process-wide state: run it now, not when the garbage collector gets to it
    gc.collect()  # (by then a later engine in this process, e.g. the next run of the toy test, would lose that state)
    print(f"toy: {time.time() - t0:.0f} s; summary {cfg.out_dir}/summary.json, plot {cfg.out_dir}/toy_comparison.png")
    return summary


def plot_comparison(per_seed: dict[int, dict], cfg: ToyConfig, path: Path) -> None:
    """Left: unguided hard-set solvability during training, per arm (mean over seeds). Right: each arm's final
    pass@k (mean over seeds)."""
    import matplotlib  # here: matplotlib is needed only to draw, and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    runs = list(per_seed.values())
    ks = [int(k.split("@")[1]) for k in runs[0]["base"]["final"] if k.startswith("pass@")]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    for arm in runs[0]:
        style = dict(marker="o", label=arm) if arm != "base" else dict(color="k", linestyle="--", label="base model")
        if arm != "base":
            steps = [0] + [s for s, _ in runs[0][arm]["curve"]]
            values = [mean([r["base"]["final"]["solvable"] for r in runs])] + [
                mean([r[arm]["curve"][i][1] for r in runs]) for i in range(len(steps) - 1)]
            left.plot(steps, values, **style)
        right.plot(ks, [mean([r[arm]["final"][f"pass@{k}"] for r in runs]) for k in ks], **style)
    left.set(xlabel="training step", ylabel=f"solvable (>= 1 of {cfg.eval_k} correct)", ylim=(-0.02, 1.02),
             title=f"unguided hard problems, during training ({len(runs)} seed{'s' * (len(runs) > 1)})")
    right.set(xscale="log", xlabel="k", ylabel="pass@k", ylim=(-0.02, 1.02), title="unguided hard problems, at the end")
    right.set_xticks(ks, [str(k) for k in ks])
    right.minorticks_off()
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    command_line(ToyConfig, run, argv)


if __name__ == "__main__":
    main()
