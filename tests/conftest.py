"""Shared fixtures: a tiny Qwen3 built offline, and one in-process vLLM engine serving it for the whole session."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "toys"))  # the toy worlds and tiny.py

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test of half a minute or more (the toy worlds' claims and decoding "
                                       "sweep, bf16 on 2 ranks, the SIGKILL resume); the development loop skips "
                                       "them with -m 'not slow', CI runs everything")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    import tiny

    return tiny.make_tiny_model(str(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def engine(tiny_model):
    """One engine for all tests (starting one costs seconds); `grpo.train` re-syncs it to its --model first."""
    pytest.importorskip("vllm")
    from rollout import Engine

    return Engine(tiny_model, dtype="float32", max_model_len=1024, seed=0)
