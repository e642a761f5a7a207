"""evaluate.py: the pass@k estimator against brute-force enumeration and exact binomials, the sharding round trip,
a real tiny-model evaluation (JSON + PNG), the comparison table, the training plot, and one-line errors."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from matplotlib.image import imread
from transformers import AutoTokenizer

import data
import evaluate


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The fraction of all k-subsets of n samples (the first c correct) that contain a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_estimator_equals_brute_force_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert evaluate.pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_edge_cases():
    for n in (1, 5, 64):
        for k in range(1, n + 1):
            assert evaluate.pass_at_k(n, 0, k) == 0.0  # nothing correct: never solved
            assert evaluate.pass_at_k(n, n, k) == 1.0  # everything correct: always solved
        for c in range(n + 1):
            assert evaluate.pass_at_k(n, c, n) == float(c > 0)  # k = n: solved iff any sample is correct
            assert evaluate.pass_at_k(n, c, 1) == pytest.approx(c / n)  # pass@1 is the accuracy


def test_stable_form_matches_binomial_form():
    for n, c, k in [(16, 3, 8), (64, 10, 16), (300, 7, 256), (2048, 1, 1024), (2048, 37, 512), (2048, 2000, 1)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))  # exact rational arithmetic
        assert evaluate.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9, abs=1e-15)
    with pytest.raises(OverflowError):  # why the product form: the binomial itself does not fit in a float
        float(math.comb(2048, 1024))


def test_bad_k_or_c_is_an_error():
    for n, c, k in [(4, 1, 5), (4, 1, 0), (4, 5, 1), (4, -1, 1)]:
        with pytest.raises(ValueError):
            evaluate.pass_at_k(n, c, k)
    assert evaluate.powers_of_two(32) == [1, 2, 4, 8, 16, 32]
    assert evaluate.powers_of_two(48) == [1, 2, 4, 8, 16, 32]
    assert evaluate.powers_of_two(1) == [1]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_unshard_inverts_rank_sharding(world):
    for n_prompts in range(8):
        full = np.arange(n_prompts * 3, dtype=float).reshape(n_prompts, 3)
        assert np.array_equal(evaluate.unshard([full[r::world] for r in range(world)]), full)


def text_parity(text: str, prompt: data.Prompt) -> float:
    """A test reward that depends on the text only: 1 when the completion has an even number of characters."""
    return float(len(text) % 2 == 0)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_tiny_model_evaluation_writes_json_and_png(tiny_model, engine, tmp_path):
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"id": f"p{i}", "problem": f"What is {i} + {i}?",
                                                    "answer": str(2 * i)} for i in range(5)])
    cfg = evaluate.EvalConfig(model=tiny_model, benchmarks=bench, n_samples=4, max_new_tokens=8,
                              out=str(tmp_path / "run.json"))
    evaluate.run(cfg, engine=engine, reward_fn=text_parity)

    results = json.loads((tmp_path / "run.json").read_text())
    b = results["benchmarks"][bench]
    assert (b["problems"], b["n"]) == (5, 4)
    assert [p["id"] for p in b["per_problem"]] == [f"p{i}" for i in range(5)]
    for p in b["per_problem"]:
        assert p["n"] == 4 and len(p["scores"]) == 4 and set(p["scores"]) <= {0.0, 1.0}
        assert p["c"] == sum(s > 0 for s in p["scores"])
        for k in (1, 2, 4):
            assert p[f"pass@{k}"] == pytest.approx(brute_force_pass_at_k(4, p["c"], k))
    for k in (1, 2, 4):
        assert b[f"pass@{k}"] == pytest.approx(np.mean([p[f"pass@{k}"] for p in b["per_problem"]]))
    assert "pass@8" not in b
    assert b["solved"] == sum(p["c"] > 0 for p in b["per_problem"])
    assert 0 < sum(p["c"] for p in b["per_problem"]) < 20, "the parity reward should give mixed scores"

    image = imread(tmp_path / "run.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    # Sharding: two ranks' rows, put back in order, are the one-rank rows (each problem keeps its own seeds).
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [data.make_prompt(tokenizer, p) for p in data.load_problems(bench)]
    pool = evaluate.reward.RewardPool(0, 10.0)
    common = dict(n=4, temperature=0.8, max_tokens=8, seed=7, stage=evaluate.BENCHMARK, round_index=0, top_p=0.95,
                  top_k=50)
    whole = evaluate.sample_scores(engine, pool, text_parity, prompts, **common)
    shards = [evaluate.sample_scores(engine, pool, text_parity, prompts, rank=r, world=2, **common) for r in (0, 1)]
    assert shards[0].shape == (3, 4) and shards[1].shape == (2, 4)
    assert np.array_equal(evaluate.unshard(shards), whole)


def fake_results(model: str, counts: dict[str, list[int]], n: int) -> dict:
    """A results dict as `evaluate` returns it, from per-problem correct counts (scores: c ones then zeros)."""
    benchmarks = {}
    for name, cs in counts.items():
        problems = [data.Problem(f"{name}-{i}", "q", "1") for i in range(len(cs))]
        scores = np.array([[1.0] * c + [0.0] * (n - c) for c in cs])
        benchmarks[name] = evaluate.summarize(problems, scores, evaluate.powers_of_two(n))
    return {"model": model, "config": {}, "benchmarks": benchmarks}


def test_compare_and_plot_from_saved_files(tmp_path, capsys):
    a, b = tmp_path / "base.json", tmp_path / "pope.json"
    a.write_text(evaluate.results_json(fake_results("base", {"aime-2025": [1, 0, 4, 0]}, n=4)))
    b.write_text(evaluate.results_json(fake_results("pope", {"aime-2025": [2, 1, 4, 0], "hmmt-feb-2025": [0, 3]}, 4)))
    assert '"scores": [1.0, 0.0, 0.0, 0.0]' in a.read_text(), "a problem's scores stay on one line"
    assert json.loads(a.read_text()) == fake_results("base", {"aime-2025": [1, 0, 4, 0]}, n=4)

    evaluate.main(["--compare", str(a), str(b)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["benchmark", "metric", "base", "pope", "pope", "-", "base"]
    row = {tuple(line.split()[:2]): line.split()[2:] for line in lines[1:]}
    # base pass@1 = (1 + 0 + 4 + 0) / 16 = 31.25 %, pope (2 + 1 + 4 + 0) / 16 = 43.75 %
    assert row[("aime-2025", "pass@1")] == ["31.2", "43.8", "+12.5"]
    assert row[("aime-2025", "solved")] == ["2/4", "3/4"]
    assert row[("hmmt-feb-2025", "pass@4")] == ["-", "50.0", "-"]

    evaluate.main(["--plot", str(a), str(b), "--png", str(tmp_path / "curves.png")])
    assert imread(tmp_path / "curves.png").shape[0] > 100


def test_training_plot_skips_missing_series(tmp_path, capsys):
    rows = [{"step": s, "reward": 0.1 * s, "reward_guided": 0.2 * s, "reward_unguided": 0.05 * s, "entropy": 1 - s / 10,
             **({"eval_solvable_at_8": s / 10, "eval_pass_at_1": s / 40} if s % 2 else {})} for s in range(6)]
    metrics = write_jsonl(tmp_path / "metrics.jsonl", rows)
    evaluate.main(["--plot-metrics", metrics])
    out = capsys.readouterr().out
    assert "'len_mean'" in out and "'len_max'" in out and "'solve_rate_unguided'" in out  # absent: noted
    assert "'entropy'" not in out and "'eval_solvable_at_8'" not in out  # present: plotted
    assert imread(tmp_path / "metrics.png").shape[0] > 100


@pytest.mark.parametrize("case", ["k_above_n", "unknown_benchmark", "no_answer_column", "not_results",
                                  "unknown_hub_model", "uncached_hub_dataset"])
def test_bad_input_gives_one_clear_error_line(tiny_model, tmp_path, case):
    no_answer = write_jsonl(tmp_path / "q.jsonl", [{"problem": "1+1?", "solution": "2"}])
    argv = {"k_above_n": ["--model", tiny_model, "--benchmarks", no_answer, "--n-samples", "4", "--k-max", "8"],
            "unknown_benchmark": ["--model", tiny_model, "--benchmarks", "aime-2026"],
            "no_answer_column": ["--model", tiny_model, "--benchmarks", no_answer],
            "not_results": ["--compare", no_answer],
            "unknown_hub_model": ["--model", "nosuch/model", "--benchmarks", no_answer],
            "uncached_hub_dataset": ["--model", tiny_model, "--benchmarks", "nosuch/dataset"]}[case]
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    expected = {"k_above_n": "--k-max 8 > --n-samples 4", "unknown_benchmark": "aime-2025, hmmt-feb-2025",
                "no_answer_column": "field 'answer'", "not_results": "not a results file",
                "unknown_hub_model": "--model nosuch/model: not a local folder, and not in the local Hugging Face",
                "uncached_hub_dataset": "Hub dataset nosuch/dataset is not in the local Hugging Face cache"}[case]
    assert expected in message, message
