"""Benchmark the reward checker against Math-Verify on the peer cases and on the held-out cases, in one run.

    python bench/bench_reward.py            # tests/data/peer_cases.jsonl + tests/data/heldout_cases.jsonl
    python bench/bench_reward.py --cases path.jsonl --heldout "" --repeat 5 --show-errors
    python bench/bench_reward.py --no-box-policy answer_phrase     # another extraction policy for our checker

For each case set and checker it prints accuracy on true and on false cases (the headline: cases with
policy_dependent=false), false positives, the policy-dependent cases apart, and answers per second; for the peer
cases also accuracy per category (headline cases). The held-out cases (tests/data/heldout_cases.jsonl, sources in
tests/data/README.md) were tuned on by neither checker. Math-Verify is
called as its authors recommend: verify(parse("$" + gold + "$"), parse(response)).

Timing: every repetition scores all cases once, sequentially, in this process; the median repetition is reported.
Our parse cache is cleared before each repetition, so a repeated gold answer is the only cache hit (as in training,
where a group of samples shares one gold answer). Both checkers run on the same machine in the same run, so the
ratio is meaningful even when absolute numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import reward  # noqa: E402

DEFAULT_CASES = "tests/data/peer_cases.jsonl"  # relative to the repository root
DEFAULT_HELDOUT = "tests/data/heldout_cases.jsonl"


def load_cases(path: str) -> list[dict]:
    """The cases file, resolved relative to the repository root when the path is relative."""
    resolved = Path(path) if Path(path).is_absolute() else ROOT / path
    with open(resolved) as f:
        return [json.loads(line) for line in f if line.strip()]


def make_ours(box_policy: str, no_box_policy: str):
    def check(response: str, gold: str) -> bool:
        return reward.math_reward(response, gold, box_policy=box_policy, no_box_policy=no_box_policy) == 1.0

    def reset() -> None:
        reward._analyse.cache_clear()

    return check, reset


def make_math_verify():
    """Math-Verify's documented call, or None when it is not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None

    def check(response: str, gold: str) -> bool:
        try:
            return bool(verify(parse("$" + gold + "$"), parse(response)))
        except Exception:  # a crash of the reference grader counts as "not equal", as in its own error handling
            return False

    return check, lambda: None


def run(check, reset, cases: list[dict], repeat: int) -> tuple[list[bool], float]:
    """Verdicts on all cases and the median seconds per full pass."""
    check(cases[0]["response"], cases[0]["gold"])  # warm up imports and lazy initialisation
    times = []
    verdicts: list[bool] = []
    for _ in range(repeat):
        reset()
        start = time.perf_counter()
        verdicts = [check(c["response"], c["gold"]) for c in cases]
        times.append(time.perf_counter() - start)
    return verdicts, statistics.median(times)


def accuracy(cases: list[dict], verdicts: list[bool], keep) -> tuple[int, int]:
    """(correct, total) over the cases selected by keep(case)."""
    pairs = [(c, v) for c, v in zip(cases, verdicts) if keep(c)]
    return sum(v == c["expected"] for c, v in pairs), len(pairs)


def fmt(correct: int, total: int) -> str:
    return f"{correct}/{total} {100 * correct / total:5.1f}%" if total else "-"


def report(title: str, path: str, cases: list[dict], results: dict, show_errors: bool, categories: bool) -> None:
    """The accuracy table of one case set (and per category, and the wrong verdicts, on request)."""
    headline = [c for c in cases if not c.get("policy_dependent")]
    print(f"\n== {title}: {len(cases)} cases ({path}); headline (policy_dependent=false): {len(headline)}; "
          f"policy-dependent: {len(cases) - len(headline)}")
    rows = {
        "true cases (headline)": lambda c: c["expected"] and not c.get("policy_dependent"),
        "false cases (headline)": lambda c: not c["expected"] and not c.get("policy_dependent"),
        "true cases (policy-dependent)": lambda c: c["expected"] and c.get("policy_dependent"),
        "false cases (policy-dependent)": lambda c: not c["expected"] and c.get("policy_dependent"),
    }
    names = list(results)
    print(f"{'':32}" + "".join(f"{n:>20}" for n in names))
    for label, keep in rows.items():
        print(f"{label:32}" + "".join(f"{fmt(*accuracy(cases, results[n][0], keep)):>20}" for n in names))
    false_positives = {n: sum(v and not c["expected"] for c, v in zip(cases, results[n][0])) for n in names}
    print(f"{'false positives (all cases)':32}" + "".join(f"{false_positives[n]:>20}" for n in names))
    rates = {n: len(cases) / results[n][1] for n in names}
    print(f"{'answers/second':32}" + "".join(f"{rates[n]:>20.0f}" for n in names))
    if "math-verify" in rates:
        print(f"{'throughput ratio ours/math-verify':32}{rates['ours'] / rates['math-verify']:>20.1f}")

    if categories:
        by_category: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(cases):
            if not c.get("policy_dependent"):
                for cat in c.get("categories") or ["(none)"]:
                    by_category[cat].append(i)
        print("\nper category (headline cases, true and false together):")
        print(f"{'category':24}{'n':>5}" + "".join(f"{n:>14}" for n in names))
        for cat in sorted(by_category):
            idx = by_category[cat]
            cells = []
            for n in names:
                correct = sum(results[n][0][i] == cases[i]["expected"] for i in idx)
                cells.append(f"{100 * correct / len(idx):13.1f}%")
            print(f"{cat:24}{len(idx):>5}" + "".join(cells))

    if show_errors:
        for n in names:
            print(f"\nwrong verdicts of {n}:")
            for c, v in zip(cases, results[n][0]):
                if v != c["expected"]:
                    tag = "policy" if c.get("policy_dependent") else "headline"
                    print(f"  {c['id']} [{tag}] expected={c['expected']} gold={c['gold'][-60:]!r} "
                          f"response=...{c['response'][-80:]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=DEFAULT_CASES, help="JSONL cases (relative paths: from the repo root)")
    ap.add_argument("--heldout", default=DEFAULT_HELDOUT, help="a second JSONL case set, reported apart ('' for none)")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over all cases per checker (median)")
    ap.add_argument("--box-policy", default="last_group", choices=reward.BOX_POLICIES)
    ap.add_argument("--no-box-policy", default="zero", choices=reward.NO_BOX_POLICIES)
    ap.add_argument("--show-errors", action="store_true", help="list the cases each checker gets wrong")
    args = ap.parse_args()

    case_sets = {"peer cases": args.cases}
    if args.heldout:
        case_sets["held-out cases"] = args.heldout
    checkers = {"ours": make_ours(args.box_policy, args.no_box_policy)}
    math_verify = make_math_verify()
    if math_verify is None:
        print("math-verify is not installed: only our checker is measured")
    else:
        checkers["math-verify"] = math_verify
    print(f"our policies: box_policy={args.box_policy}, no_box_policy={args.no_box_policy}")
    for title, path in case_sets.items():
        cases = load_cases(path)
        results = {name: run(check, reset, cases, args.repeat) for name, (check, reset) in checkers.items()}
        report(title, path, cases, results, args.show_errors, categories=title == "peer cases")


if __name__ == "__main__":
    main()
