"""bench/node_check.py, the check a user runs first on a GPU node, run here as a user runs it (its own process: a
second vLLM engine's teardown in the test process would reset the shared engine's state) on the tiny model on CPU:
every check passes on a correct trainer and engine, and fails on an engine that stops taking the trainer's weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--seq-len", "256", "--max-new-tokens", "16", "--rollout-seqs", "6", "--max-model-len", "1024"]
NO_VLLM = """import sys; sys.path.insert(0, {bench!r}); sys.path.insert(0, {root!r})
sys.modules["vllm"] = None
import node_check
sys.exit(0 if node_check.main(sys.argv[1:])["ok"] else 1)
"""
# A planted bug, for the second test: every sync after the first loads nothing.
STALE = """import sys; sys.path.insert(0, {bench!r}); sys.path.insert(0, {root!r})
import rollout
real, calls = rollout.Engine.sync_weights, []
def first_only(self, weights):
    calls.append(1)
    if len(calls) == 1:
        real(self, weights)
rollout.Engine.sync_weights = first_only
import node_check
sys.exit(0 if node_check.main(sys.argv[1:])["ok"] else 1)
"""


def node_check(args: list[str], program: list[str] | None = None) -> tuple[int, dict]:
    out = Path(args[args.index("--out") + 1])
    result = subprocess.run([sys.executable, *(program or [str(ROOT / "bench" / "node_check.py")]), *args, *SMALL],
                            capture_output=True, text=True, timeout=600)
    assert out.is_file(), result.stderr[-3000:]
    return result.returncode, json.loads(out.read_text())


def test_the_node_check_passes_on_the_tiny_model(tiny_model, tmp_path):
    pytest.importorskip("vllm")
    code, results = node_check(["--model", tiny_model, "--out", str(tmp_path / "node.json")])
    assert code == 0 and results["ok"], results
    assert results["engine"]["kv_tokens"] > 0 and results["rollout"]["tokens_per_s"] > 0
    assert results["sync"]["gap_mean"] < 1e-4 and [p["changed"] for p in results["perturb"]] == [True, True]
    # The trainer half where vLLM cannot be imported (sys.modules["vllm"] = None makes `import vllm` fail).
    code, trainer = node_check(["--model", tiny_model, "--out", str(tmp_path / "t.json"), "--trainer-only"],
                               ["-c", NO_VLLM.format(bench=str(ROOT / "bench"), root=str(ROOT))])
    assert code == 0 and "engine" not in trainer and trainer["train"]["sequences"] == 8
    assert "vLLM not installed" in trainer["versions"]


@pytest.mark.slow  # ~30 s: a second engine
def test_the_node_check_fails_when_the_engine_keeps_old_weights(tiny_model, tmp_path):
    pytest.importorskip("vllm")
    program = ["-c", STALE.format(bench=str(ROOT / "bench"), root=str(ROOT))]
    code, results = node_check(["--model", tiny_model, "--out", str(tmp_path / "node.json")], program)
    assert code == 1 and results["sync"]["ok"] and not results["ok"]
    assert [p["ok"] for p in results["perturb"]] == [False, False], results["perturb"]
