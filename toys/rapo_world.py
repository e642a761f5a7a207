r"""RAPO's toy world: watch pass@k at large k shrink under GRPO and hold under RAPO (`python toys/rapo_world.py`).

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
    >>> print(direct(p.problem))                     # the common way (85% of the warm-start data)
    \boxed{a1 b7 c7 d9}
    >>> print(careful(p.problem))                    # the rare way (15%)
    d: 7 + 3 = 10, mod 10: 0
    \boxed{a1 b7 c7 d0}

- *direct* writes the new state at once, with a misconception: a register that would pass 9 stops at 9. So it is
  right only when d + 3 < 10, and then 90% of the time (it slips a digit 10% of the time).
- *careful* writes the sum as two digits and then its last digit: right on every problem, 70% of the time (it slips
  30% of the time). It does the same thing in the same tokens whether or not d wraps ("4 + 3 = 07, mod 10: 7"), so
  what training does to it on problems that do not wrap carries over to those that do. Two earlier versions did not:
  with "past 9 so 0" written only on wrapping problems, training never visited those tokens and every arm, the KL
  arms included, lost them; with the sum unpadded ("= 7" but "= 10"), the last-digit step was trained only on
  one-digit sums, and RAPO's careful answers to wrapping problems fell from 59% right to 35% (seed 1).
The training problems are ones the common way can do (d <= 6, `--train-wrap-share 0`), and there direct is the
better way (0.9 against 0.7): sharpening onto it raises pass@1. The held-out problems are the family as drawn, and
about 30% of them wrap: the base model solves those only the rare way (measured: 13% of its answers are careful,
54-59% of those right on wrapping problems, so ~7% a sample and almost surely within 256 samples), and a policy that
stops answering carefully loses them, so its pass@256 falls below the base model's. The first token is where the
two ways split, and where a KL term holds the rare way's share near the reference's. In theory the directions differ
there once that share is small (the reverse KL's pull on a token vanishes with its probability, the forward KL's
does not: grpo.kl_term, tests/test_loss.py); at this toy's weight (alpha 0.3) the share never gets small under either,
and the reverse KL keeps reach as well as the forward one (README, "RAPO's toy world").

The arms (`ARMS`): GRPO with no KL, GRPO + reverse KL, GRPO + forward KL, and RAPO (forward KL to the reweighted
reference + an entropy bonus), all exact over the vocabulary, from the same base model and seed with the same
rollouts. The weights are this project's, for a 0.7 M-parameter model trained for 24 steps (the paper's are for
3B-7B models and thousands of steps), and two of them were found by trying, on the unpadded version of the task
(seed 0, `measure`'s numbers, 16 steps):
- lr 5e-4, not 1e-3: at 1e-3 the rare way drifts wherever it is seldom visited: after 16 steps a careful answer to
  a wrapping problem was right 8-27% of the time (53% in the base model) even under the forward KL at alpha 0.3 or 1,
  and pass@256 held or not by chance (forward KL 1.00 at alpha 0.3, 0.97 at 1; RAPO 0.91 at 0.3, 1.00 at 1 with
  pass@1 0.56, the base model's). At 5e-4 RAPO (alpha 0.3) kept that accuracy at 0.59.
- the reweighting on the reference's nucleus only (grpo.reweighted_reference, --ref-nucleus 0.1), then phi_min 0.5
  as in rapo.py. Reweighted over this whole 384-token vocabulary, ref^0.5 / Z put ~30% of each position's mass on
  tokens the reference gives ~0; every failed sample then pulled the policy towards them, and at alpha 0.3 (lr 1e-3)
  the entropy went from 0.08 to 2.17 nats and pass@1 from 0.56 to 0.03; on the final task, pass@1 0.59 -> 0.15
  (seed 0) and 0.69 -> 0.46 (seed 1) on 32 held-out problems, so the toy used phi_min 0.8 (~1%). With the nucleus,
  the prediction written down before its run (issue 23's note) was that 0.5 keeps the claim on seeds 0 and 1; it
  did: RAPO pass@1 0.644 and 0.752 (base 0.590, 0.688), pass@256 1.00 on both.
Measured on held-out problems: pass@k for k = 1 ... 256 (unbiased, from 256 samples each), for the base model and
each arm, split by kind, with the share of careful answers; and each arm's entropy during training. Deliberately
left out: the paper's models, data and k up to 1024; problems the training set covers but the base model cannot do
(that is POPE's toy); training on wrapping problems too (--train-wrap-share sets their share; then GRPO is rewarded
for the careful way on them, which asks whether RL learns when to use it, a different question).
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the algorithms, for `python toys/rapo_world.py`

import data  # noqa: E402
import evaluate  # noqa: E402
import grpo  # noqa: E402
import pope_world  # noqa: E402
import rapo  # noqa: E402
import tiny  # noqa: E402
from common import BENCHMARK, ConfigError, command_line, opt  # noqa: E402
from rollout import make_engine  # noqa: E402

RARE = 0.15  # the warm-start data's share of `careful` answers (the base model then writes 13%)
DIRECT_SLIP = 0.1  # a direct answer's chance of a wrong digit
CAREFUL_SLIP = 0.3  # a careful answer's chance of a wrong digit
ADD = 3  # the task adds 3 to register d: 3 in 10 problems wrap past 9


def make_problem(rng: random.Random, wrap: bool | None = None, pid: str = "") -> data.Problem:
    """Registers a, b, c, d; add 3 to d, mod 10. `wrap` forces d + 3 >= 10 (True) or < 10 (False)."""
    while True:
        state = "".join(str(rng.randrange(10)) for _ in pope_world.REGISTERS)
        if wrap is None or (int(state[3]) + ADD >= 10) == wrap:
            break
    text = f"Registers start at {pope_world.show(state)}. Add 3 to register d, mod 10. What are the registers?"
    answer = pope_world.show(state[:3] + str((int(state[3]) + ADD) % 10))
    return data.Problem(id=pid or f"add3-{state}", problem=text, answer=answer, solution=careful(text))


def _state(text: str) -> str:
    return "".join(text.split("start at ")[1].split(".")[0].split())[1::2]  # "a3 b7 c0 d5" -> "3705"


def _slip(digit: int, p: float, rng: random.Random | None) -> int:
    return rng.choice([d for d in range(10) if d != digit]) if p and rng.random() < p else digit


def direct(text: str, slip: float = 0.0, rng: random.Random | None = None) -> str:
    """The common way: the new state at once, with the misconception: a register that would pass 9 stops at 9."""
    state = _state(text)
    d = _slip(min(int(state[3]) + ADD, 9), slip, rng)
    return f"\\boxed{{{pope_world.show(state[:3] + str(d))}}}"


def careful(text: str, slip: float = 0.0, rng: random.Random | None = None) -> str:
    """The rare way: the sum written out, then its last digit; that digit slips with probability `slip`."""
    state = _state(text)
    total = int(state[3]) + ADD
    d = _slip(total % 10, slip, rng)
    return f"d: {state[3]} + 3 = {total:02d}, mod 10: {d}\n\\boxed{{{pope_world.show(state[:3] + str(d))}}}"


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


def build_base_model(out_dir: str, seed: int = 0, *, n_train: int = 20_000, steps: int = 400,
                     batch_size: int = 32, lr: float = 2e-3, rare: float = RARE, direct_slip: float = DIRECT_SLIP,
                     careful_slip: float = CAREFUL_SLIP, hidden_size: int = 128, num_layers: int = 4,
                     force: bool = False, log_every: int = 100) -> str:
    """Tokenizer + tiny Qwen3 + a supervised warm-start on sloppy answers of random problems (never the eval
    split's): `careful` with probability `rare`, else `direct`. Cached in `out_dir` like pope_world.build_base_model."""
    settings = dict(seed=seed, n_train=n_train, steps=steps, batch_size=batch_size, lr=lr, rare=rare,
                    direct_slip=direct_slip, careful_slip=careful_slip, hidden_size=hidden_size, num_layers=num_layers,
                    version=3)
    marker = Path(out_dir) / "toy_build.json"
    if not force and marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return out_dir
    t0, rng = time.time(), random.Random(f"add3-warm-{seed}")
    problems = [make_problem(rng, pid=f"warm-{i}") for i in range(n_train)]
    corpus = [data.DEFAULT_SYSTEM_PROMPT, "system user assistant"] + [
        t for p in problems[:300] for t in (p.problem, careful(p.problem), direct(p.problem))]
    tok = tiny.make_tokenizer(corpus, 384, split_digits=True)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny.qwen3_config(tok, hidden_size, num_layers, 256))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    examples = [(data.make_prompt(tok, p).prompt_ids, tok.encode(
        careful(p.problem, careful_slip, rng) if rng.random() < rare else direct(p.problem, direct_slip, rng),
        add_special_tokens=False) + [tok.eos_token_id]) for p in problems]
    losses = tiny.warm_start(model, examples, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                            log_every=log_every)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    marker.write_text(json.dumps(dict(settings=settings, n_params=sum(p.numel() for p in model.parameters()),
                                      final_loss=sum(losses[-20:]) / 20, seconds=round(time.time() - t0, 1)),
                                 indent=1))
    return out_dir


# The arms: what each adds to GRPO's loss (grpo.Config fields), and nothing else: every arm has the same entropy bonus
# (`RapoToyConfig.entropy_coef`), the KL arms the same alpha, and every other setting is shared (`RapoToyConfig`).
ARMS = {
    "grpo": lambda c: dict(kl_coef=0.0),
    "grpo-rkl": lambda c: dict(kl="reverse-exact", kl_coef=c.kl_coef),
    "grpo-fkl": lambda c: dict(kl="forward-exact", kl_coef=c.kl_coef),
    "rapo": lambda c: dict(kl="forward-exact", kl_coef=c.kl_coef, ref_phi_min=c.ref_phi_min, ref_nucleus=c.ref_nucleus),
}  # ref_phi_min is not a grpo.Config field: it is RAPO's rule, rapo.phi_rule, which run_seed hands to grpo.train


@dataclass
class RapoToyConfig:
    out_dir: str = opt("runs/rapo-toy", "base model, arms' runs, summary JSON and the PNG")
    seeds: str = opt("0", "comma-separated seeds: each draws its own train/eval problems and seeds every arm")
    base_model: str = opt("", "a base-model folder from build_base_model (default: built in --out-dir, ~1 minute)")
    arms: str = opt(",".join(ARMS), f"comma-separated arms from {', '.join(ARMS)}")
    n_train: int = opt(256, "training problems")
    train_wrap_share: float = opt(0.0, "share of training problems that wrap (0: all are ones the common way can do)")
    n_eval: int = opt(64, "held-out problems for pass@k, drawn from the whole family (about 30% wrap)")
    eval_samples: int = opt(256, "samples per held-out problem: pass@k for k = 1, 2, 4, ... up to this")
    steps: int = opt(24, "training steps per arm (at 16, GRPO kept pass@256 at 1.00 on seed 2: 1.5% of its answers "
                     "were still careful)")
    prompts_per_step: int = opt(32, "prompts per step")
    group_size: int = opt(8, "samples per prompt")
    lr: float = opt(5e-4, "AdamW learning rate of every arm [this project's: a 0.7 M-parameter model; at 1e-3 the "
                 "rare way's unvisited states drift and even the KL arms lose the wrapping problems]")
    kl_coef: float = opt(0.3, "alpha, the KL weight of the KL arms [this project's; the paper's 1e-3 is for 3B-7B "
                         "models over thousands of steps]")
    entropy_coef: float = opt(1e-3, "beta, RAPO's entropy bonus, in every arm [paper: a bonus; this project's value, "
                              "SimpleRL's 1e-3]")
    ref_phi_min: float = opt(0.5, "RAPO's reweighting: phi = phi_min + (1 - phi_min) * reward [this project's linear "
                             "form and value, as rapo.py: with the nucleus, 0.5 keeps the claim on seeds 0 and 1]")
    ref_nucleus: float = opt(0.1, "RAPO: only tokens with ref >= this x max ref are reweighted [as rapo.py; 0 = the "
                             "whole vocabulary, where phi_min 0.5 put ~30% of each position's mass on junk tokens]")
    max_new_tokens: int = opt(40, "response budget (a careful answer is ~30 tokens)")


def pass_curve(scores: np.ndarray) -> dict[str, float]:
    """{"pass@k": mean over problems} for k = 1, 2, 4, ... up to n, from [P, n] rewards."""
    n = scores.shape[1]
    correct = (scores > 0).sum(1)
    return {f"pass@{k}": float(np.mean([evaluate.pass_at_k(n, int(c), k) for c in correct]))
            for k in evaluate.powers_of_two(n)}


def measure(engine, prompts: list[data.Prompt], cfg: RapoToyConfig, seed: int) -> dict:
    """pass@k on the held-out prompts from the engine's current weights (all, wrapping problems, the others), and
    the share of answers that take the rare way (`careful`: they start with "d:"). Sampled by evaluate.sample in
    stage BENCHMARK, round 0, like evaluate.py's benchmarks: the held-out set is one, measured with the same
    seeds for the base model and every arm (EVAL's round is the training step)."""
    groups = evaluate.sample(engine, prompts, cfg.eval_samples, 1.0, cfg.max_new_tokens, seed=seed, stage=BENCHMARK,
                             round_index=0)
    scores = np.array([[pope_world.toy_reward(s.text, p) for s in g] for g, p in zip(groups, prompts)])  # [P, n]
    rare = np.array([[s.text.startswith("d:") for s in g] for g in groups])  # [P, n]
    wrap = np.array([is_wrap(p.problem) for p in prompts])  # [P]
    careful_on_wrap = scores[wrap][rare[wrap]]  # rewards of the careful answers to wrapping problems
    return {"all": pass_curve(scores), "wrap": pass_curve(scores[wrap]) if wrap.any() else {},
            "no_wrap": pass_curve(scores[~wrap]) if (~wrap).any() else {}, "rare_share": float(rare.mean()),
            "rare_accuracy_wrap": float(careful_on_wrap.mean()) if careful_on_wrap.size else None}


def run_seed(cfg: RapoToyConfig, arms: list[str], base_dir: str, engine, tok, seed: int) -> dict:
    """The base model and every arm for one seed: pass@k on held-out problems, entropy per step, budget."""
    train = [data.make_prompt(tok, p) for p in split(cfg.n_train, seed, "train", cfg.train_wrap_share)]
    held_out = [data.make_prompt(tok, p) for p in split(cfg.n_eval, seed, "eval", None)]
    engine.sync_weights(AutoModelForCausalLM.from_pretrained(base_dir).named_parameters(remove_duplicate=False))
    results = {"base": {"pass": measure(engine, held_out, cfg, seed)}}
    print(f"rapo toy seed {seed}: base model: {summary_line(results['base'])}", flush=True)
    for arm in arms:
        t = time.time()
        knobs = ARMS[arm](cfg)
        phi = rapo.phi_rule(knobs.pop("ref_phi_min", 1.0))  # RAPO's phi from each sample's reward; None: plain ref
        arm_cfg = grpo.Config(model=base_dir, out_dir=str(Path(cfg.out_dir) / f"seed{seed}" / arm), steps=cfg.steps,
                              seed=seed, prompts_per_step=cfg.prompts_per_step, group_size=cfg.group_size,
                              temperature=1.0, max_new_tokens=cfg.max_new_tokens, max_model_len=256, lr=cfg.lr,
                              adv_std_norm=False, micro_batch_size=128, log_samples=1, entropy_coef=cfg.entropy_coef,
                              **knobs)
        history = grpo.train(arm_cfg, train, pope_world.toy_reward, engine=engine,
                             ref_sharpness=phi)  # the engine ends with the arm's weights
        results[arm] = {"pass": measure(engine, held_out, cfg, seed), "entropy": [h["entropy"] for h in history],
                        "reward": [h["reward"] for h in history],
                        "rollouts": sum(h["samples"] for h in history),
                        "sampled_tokens": sum(h["sampled_tokens"] for h in history),
                        "seconds": round(time.time() - t, 1)}
        print(f"rapo toy seed {seed}: {arm}: {summary_line(results[arm])} ({results[arm]['seconds']:.0f} s)",
              flush=True)
    return results


def reported_ks(n: int) -> list[int]:
    """The k of the table and the summary lines: 1, 16 and the largest."""
    return sorted({1, min(16, n), n})


def summary_line(r: dict) -> str:
    p = r["pass"]
    top = max(int(k.split("@")[1]) for k in p["all"])
    line = "  ".join(f"pass@{k} {p['all'][f'pass@{k}']:.3f}" for k in reported_ks(top))
    if p["wrap"]:
        line += f"  (wrapping: pass@1 {p['wrap']['pass@1']:.3f}, pass@{top} {p['wrap'][f'pass@{top}']:.3f})"
    accuracy = "" if p["rare_accuracy_wrap"] is None else f", {p['rare_accuracy_wrap']:.2f} right on wrapping problems"
    return line + f"  rare way: {p['rare_share']:.3f} of answers{accuracy}"


def table(per_seed: dict[int, dict], ks: list[int]) -> dict[str, dict]:
    """{arm: {"pass@k": [mean, min, max], "rare_share": [mean, min, max]}} over seeds, on all held-out problems."""
    def spread(values) -> list[float]:
        values = list(values)
        return [float(np.mean(values)), min(values), max(values)]

    first = next(iter(per_seed.values()))
    return {arm: {**{f"pass@{k}": spread(r[arm]["pass"]["all"][f"pass@{k}"] for r in per_seed.values()) for k in ks},
                  "rare_share": spread(r[arm]["pass"]["rare_share"] for r in per_seed.values())} for arm in first}


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
    engine = make_engine(grpo.Config(model=base_dir, max_model_len=256), 1)
    seeds = [int(s) for s in cfg.seeds.split(",")]
    per_seed = {seed: run_seed(cfg, arms, base_dir, engine, tok, seed) for seed in seeds}
    ks = reported_ks(cfg.eval_samples)
    summary = {"seeds": per_seed, "table": table(per_seed, ks)}
    Path(cfg.out_dir, "summary.json").write_text(json.dumps(summary, indent=1))
    over = f"mean [min, max] over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    print(f"\nheld-out problems, {over}")
    columns = [f"pass@{k}" for k in ks] + ["rare_share"]
    print(f"{'':<10}" + "".join(f"{c:>22}" for c in columns))
    for arm, row in summary["table"].items():
        print(f"{arm:<10}" + "".join(f"{'{:.3f} [{:.3f}, {:.3f}]'.format(*row[c]):>22}" for c in columns))
    plot(per_seed, Path(cfg.out_dir) / "rapo_toy.png")
    del engine  # vLLM's teardown resets process-wide state: run it now (see pope_compare.run)
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


def main(argv=None) -> None:
    command_line(RapoToyConfig, run, argv)


if __name__ == "__main__":
    main()
