"""bench/node_check.py, the check a user runs first on a GPU node, run here on the tiny model on CPU: every check
passes on a correct trainer and engine, and fails on an engine that stops taking the trainer's weights."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import node_check  # noqa: E402

SMALL = ["--seq-len", "256", "--max-new-tokens", "16", "--rollout-seqs", "6", "--max-model-len", "1024"]


def test_the_node_check_passes_on_the_tiny_model(tiny_model, tmp_path):
    pytest.importorskip("vllm")
    results = node_check.main(["--model", tiny_model, "--out", str(tmp_path / "node.json"), *SMALL])
    assert results["ok"], results
    assert results["engine"]["kv_tokens"] > 0 and results["rollout"]["tokens_per_s"] > 0
    assert results["sync"]["gap_mean"] < 1e-4 and [p["changed"] for p in results["perturb"]] == [True, True]
    assert (tmp_path / "node.json").is_file()
    trainer = node_check.main(["--model", tiny_model, "--out", str(tmp_path / "t.json"), "--trainer-only", *SMALL])
    assert trainer["ok"] and "engine" not in trainer and trainer["train"]["sequences"] == 8


@pytest.mark.slow  # ~30 s: a second engine
def test_the_node_check_fails_when_the_engine_keeps_old_weights(tiny_model, tmp_path, monkeypatch):
    """Plant: every sync after the first loads nothing. The perturbation checks must see it."""
    pytest.importorskip("vllm")
    from rollout import Engine

    real, calls = Engine.sync_weights, []

    def first_only(self, weights):
        calls.append(1)
        if len(calls) == 1:
            real(self, weights)

    monkeypatch.setattr(Engine, "sync_weights", first_only)
    results = node_check.main(["--model", tiny_model, "--out", str(tmp_path / "node.json"), *SMALL])
    assert results["sync"]["ok"] and not results["ok"]
    assert [p["ok"] for p in results["perturb"]] == [False, False], results["perturb"]
