r"""RAPO's toy world: `python rapo.py` with no --model. Watch pass@k at large k shrink under GRPO and hold under RAPO.

RAPO's claim (Deng et al., arXiv 2510.03865) is about reach: RL sharpens the policy onto its most rewarded way of
answering, and what it stops sampling it can no longer solve, so pass@k at large k falls below the base model's; a
forward KL to a reward-reweighted reference, with an entropy bonus, keeps the rare ways alive. This file builds a
task family where that trade-off exists by construction, a tiny base model that has it, and the four arms of the
comparison, each from the same base model and seed with the same budget.

The task ("two ways to add 3"). Four registers; add 3 to register d, mod 10. The base model answers in one of two
ways, chosen by its first token:

    >>> import random
    >>> p = make_problem(random.Random(1), wrap=True)
    >>> print(p.problem)
    Registers start at a1 b7 c7 d7. Add 3 to register d, mod 10. What are the registers?
    >>> print(direct(p.problem))                     # the common way (85% of the base model's answers)
    \boxed{a1 b7 c7 d9}
    >>> print(careful(p.problem))                    # the rare way (15%)
    d: 7 + 3 = 10, past 9 so 0
    \boxed{a1 b7 c7 d0}

- *direct* writes the new state at once, with a misconception: a register that would pass 9 stops at 9. So it is
  right only when d + 3 < 10, and then 90% of the time (it slips a digit 10% of the time).
- *careful* writes the sum out and wraps: right on every problem, 70% of the time (it slips 30% of the time).
The training problems are ones the common way can do (d <= 6, `--train-wrap-share 0`), and there direct is the
better way (0.9 against 0.7): sharpening onto it raises pass@1. The held-out problems are the family as drawn, and
about 30% of them wrap: the base model solves those only the rare way (~10% a sample, so almost surely within 256
samples), and a policy that stops answering carefully loses them, so its pass@256 falls below the base model's. The
first token is where the two ways split, so it is where the KL directions differ: the reverse KL's gradient on a
token vanishes with its probability, the forward KL's pulls it towards the reference's share (grpo.kl_term,
tests/test_loss.py).

The arms (`ARMS`): GRPO with no KL, GRPO + reverse KL, GRPO + forward KL, and RAPO (forward KL to the reweighted
reference + an entropy bonus), all exact over the vocabulary. The KL and entropy weights here are this project's, for a
0.7 M-parameter model trained for tens of steps at a large learning rate; the paper's (1e-3) are for 3B-7B models and
thousands of steps. Measured on held-out problems: pass@k for k = 1 ... 256 (unbiased, from 256 samples each), for
the base model and each arm, split by kind; and each arm's entropy during training. Deliberately left out: the
paper's models, data and k up to 1024; problems the training set covers but the base model cannot do (that is POPE's
toy); a family where the training set holds wrapping problems too (--train-wrap-share sets it; with a share as
drawn, GRPO is rewarded for answering carefully on them and the toy shows little).
"""

from __future__ import annotations

import gc
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

import data
import evaluate
import grpo
import reward
import toy
from common import ConfigError, opt

RARE = 0.15  # the base model's share of `careful` answers (its warm-start data's)
DIRECT_SLIP = 0.1  # a direct answer's chance of a wrong digit
CAREFUL_SLIP = 0.3  # a careful answer's chance of a wrong digit
ADD = 3  # the task adds 3 to register d: 3 in 10 problems wrap past 9


def make_problem(rng: random.Random, wrap: bool | None = None, pid: str = "") -> data.Problem:
    """Registers a, b, c, d; add 3 to d, mod 10. `wrap` forces d + 3 >= 10 (True) or < 10 (False)."""
    while True:
        state = "".join(str(rng.randrange(10)) for _ in toy.REGISTERS)
        if wrap is None or (int(state[3]) + ADD >= 10) == wrap:
            break
    text = f"Registers start at {toy.show(state)}. Add 3 to register d, mod 10. What are the registers?"
    answer = toy.show(state[:3] + str((int(state[3]) + ADD) % 10))
    return data.Problem(id=pid or f"add3-{state}", problem=text, answer=answer, solution=careful(text))


def _state(text: str) -> str:
    return "".join(text.split("start at ")[1].split(".")[0].split())[1::2]  # "a3 b7 c0 d5" -> "3705"


def _slip(digit: int, p: float, rng: random.Random | None) -> int:
    return rng.choice([d for d in range(10) if d != digit]) if p and rng.random() < p else digit


def direct(text: str, slip: float = 0.0, rng: random.Random | None = None) -> str:
    """The common way: the new state at once, with the misconception: a register that would pass 9 stops at 9."""
    state = _state(text)
    d = _slip(min(int(state[3]) + ADD, 9), slip, rng)
    return f"\\boxed{{{toy.show(state[:3] + str(d))}}}"


def careful(text: str, slip: float = 0.0, rng: random.Random | None = None) -> str:
    """The rare way: the sum written out, then past 9 it wraps; the result digit slips with probability `slip`."""
    state = _state(text)
    total = int(state[3]) + ADD
    d = _slip(total % 10, slip, rng)
    work = f"d: {state[3]} + 3 = {total}" + (f", past 9 so {d}" if total >= 10 else "")
    return f"{work}\n\\boxed{{{toy.show(state[:3] + str(d))}}}"


def split(n: int, seed: int, name: str, wrap_share: float | None) -> list[data.Problem]:
    """`n` problems; round(wrap_share * n) of them wrap (None: as drawn, about 30%), in a seeded order."""
    rng = random.Random(f"add3-{name}-{seed}")
    if wrap_share is None:
        return [make_problem(rng, pid=f"{name}-{seed}-{i}") for i in range(n)]
    kinds = [i < round(wrap_share * n) for i in range(n)]
    rng.shuffle(kinds)
    return [make_problem(rng, wrap, pid=f"{name}-{seed}-{i}") for i, wrap in enumerate(kinds)]


def is_wrap(problem: data.Problem) -> bool:
    return int(_state(problem.problem)[3]) + ADD >= 10


def build_base_model(out_dir: str, seed: int = 0, *, n_train: int = 20_000, steps: int = 500,
                     batch_size: int = 32, lr: float = 2e-3, rare: float = RARE, direct_slip: float = DIRECT_SLIP,
                     careful_slip: float = CAREFUL_SLIP, hidden_size: int = 128, num_layers: int = 4,
                     force: bool = False, log_every: int = 100) -> str:
    """Tokenizer + tiny Qwen3 + a supervised warm-start on sloppy answers of random problems (never the eval
    split's): `careful` with probability `rare`, else `direct`. Cached in `out_dir` like toy.build_base_model."""
    settings = dict(seed=seed, n_train=n_train, steps=steps, batch_size=batch_size, lr=lr, rare=rare,
                    direct_slip=direct_slip, careful_slip=careful_slip, hidden_size=hidden_size, num_layers=num_layers,
                    version=1)
    marker = Path(out_dir) / "toy_build.json"
    if not force and marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return out_dir
    t0, rng = time.time(), random.Random(f"add3-warm-{seed}")
    problems = [make_problem(rng, pid=f"warm-{i}") for i in range(n_train)]
    corpus = [data.DEFAULT_SYSTEM_PROMPT, "system user assistant"] + [
        t for p in problems[:300] for t in (p.problem, careful(p.problem), direct(p.problem))]
    tok = toy.make_tokenizer(corpus, 384, split_digits=True)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(toy._qwen3_config(tok, hidden_size, num_layers, 256))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    examples = [(data.make_prompt(tok, p).prompt_ids, tok.encode(
        careful(p.problem, careful_slip, rng) if rng.random() < rare else direct(p.problem, direct_slip, rng),
        add_special_tokens=False) + [tok.eos_token_id]) for p in problems]
    losses = toy.warm_start(model, examples, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                            log_every=log_every)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    marker.write_text(json.dumps(dict(settings=settings, n_params=sum(p.numel() for p in model.parameters()),
                                      final_loss=sum(losses[-20:]) / 20, seconds=round(time.time() - t0, 1)),
                                 indent=1))
    return out_dir


# The arms: what each adds to GRPO's loss (grpo.Config fields). Every other setting is shared (`RapoToyConfig`).
ARMS = {
    "grpo": lambda c: dict(kl_coef=0.0),
    "grpo-rkl": lambda c: dict(kl="reverse-exact", kl_coef=c.kl_coef),
    "grpo-fkl": lambda c: dict(kl="forward-exact", kl_coef=c.kl_coef),
    "rapo": lambda c: dict(kl="forward-exact", kl_coef=c.kl_coef, ref_phi_min=c.ref_phi_min,
                           entropy_coef=c.entropy_coef),
}


@dataclass
class RapoToyConfig:
    out_dir: str = opt("runs/rapo-toy", "base model, arms' runs, summary JSON and the PNG")
    seeds: str = opt("0", "comma-separated seeds: each draws its own train/eval problems and seeds every arm")
    base_model: str = opt("", "a base-model folder from build_base_model (default: built in --out-dir, ~3 minutes)")
    arms: str = opt(",".join(ARMS), f"comma-separated arms from {', '.join(ARMS)}")
    n_train: int = opt(256, "training problems")
    train_wrap_share: float = opt(0.0, "share of training problems that wrap (0: all are ones the common way can do)")
    n_eval: int = opt(64, "held-out problems for pass@k, drawn from the whole family (about 30% wrap)")
    eval_samples: int = opt(256, "samples per held-out problem: pass@k for k = 1, 2, 4, ... up to this")
    steps: int = opt(16, "training steps per arm")
    prompts_per_step: int = opt(32, "prompts per step")
    group_size: int = opt(8, "samples per prompt")
    lr: float = opt(1e-3, "AdamW learning rate of every arm [this project's: a 0.7 M-parameter model]")
    kl_coef: float = opt(0.1, "alpha, the KL weight of the KL arms [this project's; the paper's 1e-3 is for 3B-7B "
                         "models over thousands of steps]")
    entropy_coef: float = opt(0.01, "beta, RAPO's entropy bonus [paper: a bonus; this project's value]")
    ref_phi_min: float = opt(0.5, "RAPO's reweighting: phi = phi_min + (1 - phi_min) * reward [this project's "
                             "linear form, as rapo.py]")
    max_new_tokens: int = opt(40, "response budget (a column answer is ~30 tokens)")


def pass_curve(scores: np.ndarray) -> dict[str, float]:
    """{"pass@k": mean over problems} for k = 1, 2, 4, ... up to n, from [P, n] rewards."""
    n = scores.shape[1]
    correct = (scores > 0).sum(1)
    return {f"pass@{k}": float(np.mean([evaluate.pass_at_k(n, int(c), k) for c in correct]))
            for k in evaluate.powers_of_two(n)}


def measure(engine, prompts: list[data.Prompt], cfg: RapoToyConfig, seed: int) -> dict:
    """pass@k on the held-out prompts from the engine's current weights: all, wrapping problems, the others."""
    pool = reward.RewardPool(0)
    scores = evaluate.sample_scores(engine, pool, toy.toy_reward, prompts, cfg.eval_samples, 1.0,
                                    max_tokens=cfg.max_new_tokens, seed=seed)  # [P, n]
    pool.close()
    wrap = np.array([is_wrap(p.problem) for p in prompts])
    return {"all": pass_curve(scores), "wrap": pass_curve(scores[wrap]), "no_wrap": pass_curve(scores[~wrap])}


def run_seed(cfg: RapoToyConfig, arms: list[str], base_dir: str, engine, tok, seed: int) -> dict:
    """The base model and every arm for one seed: pass@k on held-out problems, entropy per step, budget."""
    train = [data.make_prompt(tok, p) for p in split(cfg.n_train, seed, "train", cfg.train_wrap_share)]
    held_out = [data.make_prompt(tok, p) for p in split(cfg.n_eval, seed, "eval", None)]
    engine.sync_weights(AutoModelForCausalLM.from_pretrained(base_dir).named_parameters(remove_duplicate=False))
    results = {"base": {"pass": measure(engine, held_out, cfg, seed)}}
    print(f"rapo toy seed {seed}: base model: {summary_line(results['base'])}", flush=True)
    for arm in arms:
        t = time.time()
        arm_cfg = grpo.Config(model=base_dir, out_dir=str(Path(cfg.out_dir) / f"seed{seed}" / arm), steps=cfg.steps,
                              seed=seed, prompts_per_step=cfg.prompts_per_step, group_size=cfg.group_size,
                              temperature=1.0, max_new_tokens=cfg.max_new_tokens, max_model_len=256, lr=cfg.lr,
                              adv_std_norm=False, micro_batch_size=128, log_samples=1, **ARMS[arm](cfg))
        history = grpo.train(arm_cfg, train, toy.toy_reward, engine=engine)  # the engine ends with its weights
        results[arm] = {"pass": measure(engine, held_out, cfg, seed), "entropy": [h["entropy"] for h in history],
                        "reward": [h["reward"] for h in history],
                        "rollouts": sum(h["samples"] for h in history),
                        "sampled_tokens": sum(h["sampled_tokens"] for h in history),
                        "seconds": round(time.time() - t, 1)}
        print(f"rapo toy seed {seed}: {arm}: {summary_line(results[arm])} ({results[arm]['seconds']:.0f} s)",
              flush=True)
    return results


def summary_line(r: dict) -> str:
    top = max(int(k.split("@")[1]) for k in r["pass"]["all"])
    return "  ".join(f"pass@{k} {r['pass']['all'][f'pass@{k}']:.3f}" for k in (1, 16, top)) + \
        f"  (wrapping: pass@1 {r['pass']['wrap']['pass@1']:.3f}, pass@{top} {r['pass']['wrap'][f'pass@{top}']:.3f})"


def table(per_seed: dict[int, dict], ks: tuple[int, ...]) -> dict[str, dict]:
    """{arm: {"pass@k": [mean, min, max]}} over seeds, on all held-out problems."""
    first = next(iter(per_seed.values()))
    return {arm: {f"pass@{k}": [f(r[arm]["pass"]["all"][f"pass@{k}"] for r in per_seed.values())
                                for f in (lambda v: float(np.mean(list(v))), min, max)] for k in ks}
            for arm in first}


def run(cfg: RapoToyConfig) -> dict:
    """Every seed's arms; summary.json ({"seeds", "table"}), the table, and the plot (pass@k and entropy)."""
    arms = cfg.arms.split(",")
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ConfigError(f"--arms: unknown {', '.join(sorted(unknown))}; choose from {', '.join(ARMS)}")
    if cfg.eval_samples & (cfg.eval_samples - 1):
        raise ConfigError(f"--eval-samples {cfg.eval_samples}: a power of two (pass@k is reported at k = 1, 2, 4 ...)")
    t0 = time.time()
    base_dir = cfg.base_model or build_base_model(str(Path(cfg.out_dir) / "base-model"))
    print(f"rapo toy: base model ready in {time.time() - t0:.0f} s", flush=True)
    tok = AutoTokenizer.from_pretrained(base_dir)
    engine = grpo.make_engine(grpo.Config(model=base_dir, max_model_len=256), 1)
    seeds = [int(s) for s in cfg.seeds.split(",")]
    per_seed = {seed: run_seed(cfg, arms, base_dir, engine, tok, seed) for seed in seeds}
    ks = (1, 16, cfg.eval_samples)
    summary = {"seeds": per_seed, "table": table(per_seed, ks)}
    Path(cfg.out_dir, "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nheld-out problems, {'mean [min, max] over ' + str(len(seeds)) + ' seeds' if len(seeds) > 1 else 'one seed'}")
    print(f"{'':<10}" + "".join(f"{f'pass@{k}':>22}" for k in ks))
    for arm, row in summary["table"].items():
        print(f"{arm:<10}" + "".join(f"{'{:.3f} [{:.3f}, {:.3f}]'.format(*row[f'pass@{k}']):>22}" for k in ks))
    plot(per_seed, Path(cfg.out_dir) / "rapo_toy.png")
    del engine  # vLLM's teardown resets process-wide state: run it now (see toy_compare.run)
    gc.collect()
    print(f"rapo toy: {time.time() - t0:.0f} s; summary {cfg.out_dir}/summary.json, plot {cfg.out_dir}/rapo_toy.png")
    return summary


def plot(per_seed: dict[int, dict], path: Path) -> None:
    """Left: pass@k against k (log axis) on held-out problems, mean over seeds, like the paper's Fig. 3. Right: each
    arm's mean token entropy during training."""
    import matplotlib  # here: matplotlib is needed only to draw, and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(per_seed.values())
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ks = [int(k.split("@")[1]) for k in runs[0]["base"]["pass"]["all"]]
    for arm in runs[0]:
        style = dict(marker="o", label=arm) if arm != "base" else dict(color="k", linestyle="--", label="base model")
        left.plot(ks, [np.mean([r[arm]["pass"]["all"][f"pass@{k}"] for r in runs]) for k in ks], **style)
        if arm != "base":
            right.plot(np.mean([r[arm]["entropy"] for r in runs], axis=0), label=arm)
    left.set(xscale="log", xlabel="k", ylabel="pass@k", title=f"held-out problems ({len(runs)} seed(s))")
    left.set_xticks(ks, [str(k) for k in ks])
    left.minorticks_off()
    right.set(xlabel="training step", ylabel="mean token entropy (nats)", title="entropy during training")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
