"""Gold answers as datasets write them (`reward.gold_answer`), the load-time gold check (`data.check_gold`), and the
held-out cases (tests/data/heldout_cases.jsonl, sources in tests/data/README.md): reward.py must be at least as
accurate as Math-Verify on them, with no more false positives (skipped when math_verify is not installed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import data
import reward
from common import DataError
from reward import gold_answer, math_reward

ROOT = Path(__file__).resolve().parents[1]

HELDOUT = Path(__file__).resolve().parent / "data" / "heldout_cases.jsonl"


# ---------------------------------------------------------------------------------------------------------------------
# Reading a gold answer
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gold, content", [
    ("\\boxed{5}", "5"),
    ("\\fbox{5}", "5"),
    ("so the area is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),  # a MATH solution: its last box
    ("first $\\boxed{3}$, then $\\boxed{7}$ is our answer.", "7"),
    ("\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).", "1, -2"),  # one answer in two boxes
    ("\\boxed{x = 1 \\text{ and } x = 2", "x = 1 \\text{ and } x = 2"),  # a box left unclosed at the end
    ("$\\frac{1}{3}$", "\\frac{1}{3}"), ("$$9$$", "9"), ("\\(\\sqrt{2}\\)", "\\sqrt{2}"), ("\\[ 2 \\]", "2"),
    ("$42$.", "42"),
    ("The answer is 12.", "12"), ("Answer: $x = 3$", "x = 3"), ("so the final answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("$1$ and $2$", "$1$ and $2$"),  # several math spans: left whole (normalisation drops the dollars)
    ("\\text{Evelyn}", "\\text{Evelyn}"), ("7", "7"),
])
def test_gold_answer_reads_the_content(gold, content):
    assert gold_answer(gold) == content


@pytest.mark.parametrize("gold, right, wrong", [
    ("\\boxed{\\frac{1}{2}}", "0.5", "\\frac{1}{3}"),
    ("Therefore, the polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$", "(3, \\pi/2)", "(3, \\pi)"),
    ("$\\frac{1}{3}$", "\\dfrac{1}{3}", "3"),
    ("The answer is 12.", "12", "1"),
    ("\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).", "-2, 1", "1"),
    ("$(1,2)$", "(1, 2)", "(2, 1)"),
])
def test_a_gold_as_datasets_write_it_scores(gold, right, wrong):
    assert math_reward(f"so \\boxed{{{right}}}.", gold) == 1.0
    assert math_reward(f"so \\boxed{{{wrong}}}.", gold) == 0.0
    assert reward.is_equiv(right, gold) and not reward.is_equiv(wrong, gold)


# ---------------------------------------------------------------------------------------------------------------------
# The gold check at load
# ---------------------------------------------------------------------------------------------------------------------
ROWS = [
    {"problem": "p1", "answer": "\\boxed{5}"},
    {"problem": "p2", "answer": "\\frac{1}{"},  # unbalanced: no response could match it
    {"problem": "p3", "answer": "The answer is $x = 2$."},
    {"problem": "p4", "answer": "   "},
    {"problem": "p5", "answer": "\\boxed{}"},
]


def write_rows(tmp_path, rows) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_check_gold_stop_names_count_and_file_rows(tmp_path):
    rows = [ROWS[0], ROWS[1], ROWS[2], ROWS[4]]
    problems = data.load_jsonl(write_rows(tmp_path, rows))
    with pytest.raises(DataError) as info:
        data.check_gold(problems, "stop", where="train.jsonl")
    message = str(info.value)
    assert "\n" not in message
    assert "train.jsonl: 2 of 4 problems" in message and "train.jsonl:2" in message and "train.jsonl:4" in message
    assert "train.jsonl:1:" not in message and "train.jsonl:3:" not in message


def test_check_gold_drop_warns_and_keeps_the_rest_in_order(tmp_path, capsys):
    problems = data.load_jsonl(write_rows(tmp_path, [ROWS[0], ROWS[1], ROWS[2]]))
    kept = data.check_gold(problems, "drop")
    assert [p.id for p in kept] == ["train.jsonl:1", "train.jsonl:3"]
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and out.startswith("warning: 1 of 3 problems") and "train.jsonl:2" in out


def test_check_gold_examples_are_bounded_and_good_data_passes(tmp_path, capsys):
    many = [data.Problem(f"f.jsonl:{i}", "p", "\\frac{1}{") for i in range(10)]
    kept = data.check_gold(many, "drop")
    out = capsys.readouterr().out
    assert kept == [] and "10 of 10" in out and "f.jsonl:2" in out and "f.jsonl:3" not in out and "7 more" in out
    good = [data.Problem("g:1", "p", "\\boxed{3}"), data.Problem("g:2", "p", "$\\frac{1}{2}$")]
    assert data.check_gold(good, "stop") == good
    with pytest.raises(ValueError):
        data.check_gold(good, "ignore")


# ---------------------------------------------------------------------------------------------------------------------
# Held-out cases: at least as accurate as Math-Verify
# ---------------------------------------------------------------------------------------------------------------------
def load_heldout() -> list[dict]:
    return [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]


def score(verdicts: list[bool], cases: list[dict]) -> dict:
    headline = [(v, c["expected"]) for v, c in zip(verdicts, cases) if not c["policy_dependent"]]
    return {
        "true": sum(v for v, e in headline if e), "false": sum(not v for v, e in headline if not e),
        "false_positives": sum(v and not c["expected"] for v, c in zip(verdicts, cases)),
    }


def test_heldout_cases_are_well_formed_and_sourced():
    cases = load_heldout()
    assert len(cases) == 90 and len({c["id"] for c in cases}) == len(cases)
    for c in cases:
        assert set(c) >= {"id", "source", "gold", "response", "expected", "note", "policy_dependent"}, c["id"]
        assert ":" in c["source"] and "/" in c["source"].split(":")[0], c["id"]


def test_heldout_accuracy_pinned():
    """Counts on the held-out headline cases (41 true, 31 false); loose by one true case, none on false ones."""
    cases = load_heldout()
    ours = score([math_reward(c["response"], c["gold"]) == 1.0 for c in cases], cases)
    assert ours["true"] >= 40
    assert ours["false"] == 31
    assert ours["false_positives"] <= 2  # all cases, policy-dependent ones included (2 today: the in-order tests)


def test_heldout_at_least_as_accurate_as_math_verify():
    math_verify = pytest.importorskip("math_verify", reason="math_verify is not installed (pip install math-verify)")

    def mv(response: str, gold: str) -> bool:
        try:
            return bool(math_verify.verify(math_verify.parse("$" + gold + "$"), math_verify.parse(response)))
        except Exception:  # a crash of the reference grader counts as "not equal", as in bench_reward.py
            return False

    cases = load_heldout()
    ours = score([math_reward(c["response"], c["gold"]) == 1.0 for c in cases], cases)
    theirs = score([mv(c["response"], c["gold"]) for c in cases], cases)
    assert ours["true"] + ours["false"] >= theirs["true"] + theirs["false"], (ours, theirs)
    assert ours["false_positives"] <= theirs["false_positives"], (ours, theirs)


def test_the_trainer_stops_on_a_bad_gold_answer_in_one_line(tiny_model, tmp_path):
    """--bad-gold, wired: `grpo.py --data` with a row whose gold no response can match stops before anything is
    loaded, naming the file and line; --bad-gold drop trains on the rest (checked up to the load, not the run)."""
    import subprocess
    import sys

    path = tmp_path / "train.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "?", "answer": "\\\\boxed{}"}\n')
    result = subprocess.run([sys.executable, str(ROOT / "grpo.py"), "--model", tiny_model, "--data", str(path)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "train.jsonl:2" in lines[0] and "--bad-gold drop" in lines[0], lines[0]
    kept = data.load_problems(str(path), bad_gold="drop")
    assert [p.answer for p in kept] == ["2"]
