"""The toy world: the task family's oracle solutions verify, the reward scores right, the base-model build is
deterministic for a seed and cached. Fast (a few seconds): the warm-start here runs a handful of steps on a
smaller model; the real build and its pass@k are measured by `python toy.py measure`."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

import data
import toy


@pytest.mark.parametrize("steps", [1, 3, 12, 36])
def test_oracle_solution_verifies(steps: int) -> None:
    rng = random.Random(steps)
    for _ in range(20):
        p = toy.make_problem(rng, steps)
        start = "".join(p.problem.split("start at ")[1].split(". Apply")[0].split())[1::2]  # "a6 b6 c0 d4" -> "6604"
        ops = p.problem.split("mod 10: ")[1].split(". What")[0].split(", ")
        assert len(ops) == len(set(ops)) == steps  # distinct ops, as listed in the problem
        lines = toy.solution_lines(p)
        assert len(lines) == steps + 1
        state = start
        for op, line in zip(ops, lines):  # every intermediate line is the previous state with the op applied
            state = toy.apply_op(state, op)
            assert line == f"{op}: {toy.show(state)}"
        assert lines[-1] == f"\\boxed{{{p.answer}}}" and toy.show(state) == p.answer
        assert toy.toy_reward(p.solution, data.Prompt(p, [])) == 1.0


def test_apply_op_is_mod_10_without_carry() -> None:
    assert toy.apply_op("3705", "c+9") == "3795"
    assert toy.apply_op("3795", "c+9") == "3785"
    assert toy.apply_op("9999", "a+1") == "0999"


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


def test_warm_start_examples_restate_the_prefix() -> None:
    tok = toy.make_tokenizer(toy.toy_corpus(n=40), 400, split_digits=True)
    problems = toy.make_split(50, 2, 4, seed=0, name="t")
    ex = toy.warm_start_examples(problems, tok, guided_frac=1.0, no_restate_frac=0.0)
    for p, (_, target) in zip(problems, ex):  # "continue": the target is the whole oracle solution (restated)
        assert tok.decode(target, skip_special_tokens=True) == p.solution
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
               "--prompts-per-step", "2", "--group-size", "2", "--eval-every", "1", "--eval-k", "2", "--final-n", "2",
               "--max-new-tokens", "16", "--prefix-k", "1"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"base", "grpo", "pope"}
    assert [step for step, _ in summary["pope"]["curve"]] == [0, 1]  # solvability logged at every eval step
    assert set(summary["grpo"]["final"]) == {"pass@1", "pass@2"}
    assert (tmp_path / "grpo" / "metrics.jsonl").is_file() and (tmp_path / "pope" / "metrics.jsonl").is_file()
    assert "reward_guided" in json.loads((tmp_path / "pope" / "metrics.jsonl").read_text().splitlines()[0])
    assert matplotlib.image.imread(tmp_path / "toy_comparison.png").shape[0] > 100
