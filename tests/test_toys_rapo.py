"""RAPO's toy world ("two ways to add 3"): each way is right where it should be and slips as often as asked, the
splits hold their share of wrapping problems, pass@k curves are computed right, `python toys/rapo_world.py` runs end to end
(small), and, in one slow test, the claim on two seeds: GRPO raises pass@1 and lowers pass@256 below the base
model's; RAPO raises pass@1 and keeps pass@256 at the base model's."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import data
import pope_world
import rapo_world


def score(text: str, p: data.Problem) -> float:
    return pope_world.toy_reward(text, data.Prompt(p, []))


def test_direct_is_right_exactly_when_d_does_not_wrap_and_careful_always() -> None:
    rng = random.Random(0)
    for wrap in (False, True) * 100:
        p = rapo_world.make_problem(rng, wrap)
        d = int(p.problem.split(" d")[1][0])
        assert rapo_world.is_wrap(p) == wrap == (d + 3 >= 10) and p.answer.endswith(f"d{(d + 3) % 10}")
        assert score(rapo_world.direct(p.problem), p) == float(not wrap)
        assert score(rapo_world.careful(p.problem), p) == 1.0 and p.solution == rapo_world.careful(p.problem)
        assert rapo_world.careful(p.problem).startswith("d:") and not rapo_world.direct(p.problem).startswith("d:")


def test_slips_happen_as_often_as_asked() -> None:
    rng = random.Random(1)
    problems = [rapo_world.make_problem(rng, wrap=False) for _ in range(2000)]
    direct = np.mean([score(rapo_world.direct(p.problem, 0.2, rng), p) for p in problems])
    careful = np.mean([score(rapo_world.careful(p.problem, 0.35, rng), p) for p in problems])
    assert abs(direct - 0.8) < 0.03 and abs(careful - 0.65) < 0.03, (direct, careful)


def test_splits_hold_their_wrap_share_and_differ_by_name_and_seed() -> None:
    train, held_out = rapo_world.split(64, 0, "train", 0.25), rapo_world.split(64, 0, "eval", 0.25)
    assert sum(map(rapo_world.is_wrap, train)) == 16 == sum(map(rapo_world.is_wrap, held_out))
    assert not any(map(rapo_world.is_wrap, rapo_world.split(64, 0, "train", 0.0)))
    assert [p.problem for p in train] == [p.problem for p in rapo_world.split(64, 0, "train", 0.25)]
    assert [p.problem for p in train] != [p.problem for p in held_out]
    assert [p.problem for p in train] != [p.problem for p in rapo_world.split(64, 1, "train", 0.25)]


def test_pass_curve() -> None:
    scores = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=float)
    curve = rapo_world.pass_curve(scores)
    assert list(curve) == ["pass@1", "pass@2", "pass@4"]
    assert np.isclose(curve["pass@1"], (0.25 + 0 + 1) / 3) and np.isclose(curve["pass@4"], 2 / 3)
    assert np.isclose(curve["pass@2"], (0.5 + 0 + 1) / 3)  # 1 - C(3,2)/C(4,2) = 0.5 for the first problem


def test_rapo_toy_runs_end_to_end(tmp_path) -> None:
    """`python toys/rapo_world.py`, shrunk: a small base model, every arm, two seeds, summary and plot."""
    import matplotlib.image

    base = rapo_world.build_base_model(str(tmp_path / "base"), n_train=300, steps=3, batch_size=8, hidden_size=64,
                                     num_layers=2, log_every=0)
    rapo_world.main(["--base-model", base, "--out-dir", str(tmp_path), "--seeds", "0,1", "--steps", "2", "--n-train", "8",
               "--n-eval", "4", "--eval-samples", "4", "--prompts-per-step", "2", "--group-size", "2",
               "--max-new-tokens", "8"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["seeds"]) == ["0", "1"] and set(summary["table"]) == {"base", *rapo_world.ARMS}
    runs = summary["seeds"]["0"]
    assert list(runs["base"]["pass"]["all"]) == ["pass@1", "pass@2", "pass@4"]
    assert {r["rollouts"] for arm, r in runs.items() if arm != "base"} == {2 * 2 * 2}  # the same budget
    assert {r["sampled_tokens"] > 0 for arm, r in runs.items() if arm != "base"} == {True}
    assert all(len(r["entropy"]) == 2 for arm, r in runs.items() if arm != "base")
    mean, low, high = summary["table"]["rapo"]["pass@4"]
    assert low <= mean <= high
    assert matplotlib.image.imread(tmp_path / "rapo_toy.png").shape[0] > 100


@pytest.mark.slow
def test_grpo_narrows_reach_and_rapo_keeps_it(tmp_path) -> None:
    """The claim, on seeds 0 and 1, at the default settings with 32 held-out problems instead of 64 (about 6
    minutes): GRPO raises pass@1 and lowers pass@256 below the base model's; RAPO raises pass@1 and keeps pass@256
    at the base model's or above. Planted bug that fails it: the whole-vocabulary reweighting (--ref-nucleus 0): the
    run stops at step 0 (ref_hat_tail 0.273 > --ref-hat-max-tail 0.01); before that check existed, it took RAPO's
    pass@1 from 0.59 to 0.15 on seed 0 (rapo_world's docstring)."""
    cfg = rapo_world.RapoToyConfig(out_dir=str(tmp_path), seeds="0,1", arms="grpo,rapo", n_eval=32)
    summary = rapo_world.run(cfg)
    for seed, runs in summary["seeds"].items():
        base, grpo, rapo = (runs[arm]["pass"]["all"] for arm in ("base", "grpo", "rapo"))
        seen = {arm: (round(r["pass@1"], 3), round(r["pass@256"], 3)) for arm, r in
                (("base", base), ("grpo", grpo), ("rapo", rapo))}
        assert grpo["pass@1"] > base["pass@1"] and grpo["pass@256"] < base["pass@256"], (seed, seen)
        assert rapo["pass@1"] > base["pass@1"] and rapo["pass@256"] >= base["pass@256"], (seed, seen)
        assert runs["grpo"]["rollouts"] == runs["rapo"]["rollouts"]


def test_rapo_help_names_the_toy_flags(capsys) -> None:
    """`python toys/rapo_world.py --help` documents the toy's flags (their help holds a '%', which argparse would
    otherwise read as a format)."""
    with pytest.raises(SystemExit) as exit_:
        rapo_world.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--kl-coef" in out and "about 30% wrap" in out
