"""RAPO's toy world: the two ways to add are right where they should be and slip as often as asked, the splits hold
their share of carry problems, pass@k curves are computed right, `python rapo.py` runs end to end (small), and, in
one slow test, the claim: GRPO raises pass@1 and lowers pass@256 below the base model's, RAPO raises pass@1 and keeps
pass@256."""

from __future__ import annotations

import json
import random

import numpy as np

import data
import toy
import toy_rapo


def score(text: str, p: data.Problem) -> float:
    return toy.toy_reward(text, data.Prompt(p, []))


def test_direct_is_right_exactly_when_the_units_do_not_carry_and_columns_always() -> None:
    rng = random.Random(0)
    for carry in (False, True) * 100:
        p = toy_rapo.make_problem(rng, carry)
        a, b = (int(x) for x in p.problem.removeprefix("What is ").removesuffix("?").split(" + "))
        assert p.answer == str(a + b) and a + b < 100 and toy_rapo.is_carry(p) == carry
        assert score(toy_rapo.direct(p.problem), p) == float(not carry)
        assert score(toy_rapo.columns(p.problem), p) == 1.0 and p.solution == toy_rapo.columns(p.problem)


def test_slips_happen_as_often_as_asked() -> None:
    rng = random.Random(1)
    problems = [toy_rapo.make_problem(rng, carry=False) for _ in range(2000)]
    direct = np.mean([score(toy_rapo.direct(p.problem, 0.2, rng), p) for p in problems])
    columns = np.mean([score(toy_rapo.columns(p.problem, 0.25, rng), p) for p in problems])
    assert abs(direct - 0.8) < 0.03 and abs(columns - 0.75 ** 2) < 0.03, (direct, columns)


def test_splits_hold_their_carry_share_and_differ_by_name_and_seed() -> None:
    train, held_out = toy_rapo.split(64, 0, "train"), toy_rapo.split(64, 0, "eval")
    assert sum(map(toy_rapo.is_carry, train)) == 16 == sum(map(toy_rapo.is_carry, held_out))
    assert [p.problem for p in train] == [p.problem for p in toy_rapo.split(64, 0, "train")]
    assert [p.problem for p in train] != [p.problem for p in held_out]
    assert [p.problem for p in train] != [p.problem for p in toy_rapo.split(64, 1, "train")]


def test_pass_curve() -> None:
    scores = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=float)
    curve = toy_rapo.pass_curve(scores)
    assert list(curve) == ["pass@1", "pass@2", "pass@4"]
    assert np.isclose(curve["pass@1"], (0.25 + 0 + 1) / 3) and np.isclose(curve["pass@4"], 2 / 3)
    assert np.isclose(curve["pass@2"], (0.5 + 0 + 1) / 3)  # 1 - C(3,2)/C(4,2) = 0.5 for the first problem


def test_rapo_toy_runs_end_to_end(tmp_path) -> None:
    """`python rapo.py` with no --model, shrunk: a small base model, every arm, two seeds, summary and plot."""
    import matplotlib.image

    import rapo

    base = toy_rapo.build_base_model(str(tmp_path / "base"), n_train=300, steps=3, batch_size=8, hidden_size=64,
                                     num_layers=2, log_every=0)
    rapo.main(["--base-model", base, "--out-dir", str(tmp_path), "--seeds", "0,1", "--steps", "2", "--n-train", "8",
               "--n-eval", "4", "--eval-samples", "4", "--prompts-per-step", "2", "--group-size", "2",
               "--max-new-tokens", "8"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["seeds"]) == ["0", "1"] and set(summary["table"]) == {"base", *toy_rapo.ARMS}
    runs = summary["seeds"]["0"]
    assert list(runs["base"]["pass"]["all"]) == ["pass@1", "pass@2", "pass@4"]
    assert {r["rollouts"] for arm, r in runs.items() if arm != "base"} == {2 * 2 * 2}  # the same budget
    assert all(len(r["entropy"]) == 2 for arm, r in runs.items() if arm != "base")
    assert summary["table"]["rapo"]["pass@4"][1] <= summary["table"]["rapo"]["pass@4"][0]
    assert matplotlib.image.imread(tmp_path / "rapo_toy.png").shape[0] > 100
