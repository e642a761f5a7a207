"""Weight sync, before and after: bytes gathered and sent per sync, and seconds, on a tied tiny model in bf16.

    python bench/bench_sync.py            # a tied tiny Qwen3 (built offline), a bfloat16 vLLM CPU engine

Before (this project until issue 16): every tensor of `state_dict()` was gathered in float32, the master dtype, and
the tied embedding twice (once as `model.embed_tokens.weight`, once as `lm_head.weight`). After: `grpo.hf_state` gives
the parameters (a tied one under both names), and `Engine.sync_weights` casts each to the engine's dtype before the
gather, and gathers a tied tensor once. In one process "gathered" is what the stream materialises; under FSDP2 it is
what crosses the network, per rank. The Qwen3-4B-Instruct-2507 line is computed from its config (36 layers, hidden
2560, MLP 9728, 32 / 8 heads of 128, vocabulary 151,936, tied), not measured. Deliberately left out: the GPU
(no GPU here), and vLLM's own copy into its buffers (the same bytes before and after).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "toys"))

import grpo  # noqa: E402
import tiny  # noqa: E402
from rollout import Engine  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def before(model):
    """The old stream: state_dict() in float32, the tied embedding gathered twice."""
    return [(name.removeprefix("lm."), t.detach()) for name, t in grpo.Policy(model).state_dict().items()]


def gathered_bytes(pairs, dtype=None) -> int:
    """Bytes the stream materialises: each distinct tensor once (per object), cast to `dtype` when given."""
    seen, total = set(), 0
    for _, t in pairs:
        if dtype is None or id(t) not in seen:
            total += t.numel() * (torch.finfo(dtype).bits // 8 if dtype else t.element_size())
        seen.add(id(t))
    return total


def qwen3_4b_bytes() -> dict[str, float]:
    """GB per sync for Qwen3-4B-Instruct-2507, from its config: before (fp32, embedding twice) and after (bf16, once)."""
    layers, hidden, mlp, vocab, heads, kv_heads, head_dim = 36, 2560, 9728, 151_936, 32, 8, 128
    per_layer = (hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden  # q, k, v, o
                 + 3 * hidden * mlp + 2 * hidden + 2 * head_dim)  # gate, up, down; 2 RMSNorms; q/k norms
    params = layers * per_layer + vocab * hidden + hidden  # tied embedding once, final norm
    return {"params_b": params / 1e9, "before_gb": 4 * (params + vocab * hidden) / 1e9, "after_gb": 2 * params / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="syncs timed per path (alternating)")
    args = ap.parse_args()
    model_dir = tiny.make_tiny_model(tempfile.mkdtemp(), hidden_size=256, num_layers=4, tied=True)
    engine = Engine(model_dir, dtype="bfloat16", max_model_len=256, seed=0)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    old, new = before(lm), list(grpo.hf_state(grpo.Policy(lm)))
    times = {"before": [], "after": []}
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both paths alike
        t = time.perf_counter()
        engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(old)})
        engine.llm.reset_prefix_cache()
        times["before"].append(time.perf_counter() - t)
        t = time.perf_counter()
        engine.sync_weights(new)
        times["after"].append(time.perf_counter() - t)
    result = {
        "tiny_before_bytes": gathered_bytes(old), "tiny_after_bytes": gathered_bytes(new, engine.dtype),
        "tiny_before_s": statistics.median(times["before"]), "tiny_after_s": statistics.median(times["after"]),
        "qwen3_4b": qwen3_4b_bytes(),
    }
    print(f"tiny tied model, bf16 engine, median of {args.repeats} syncs:")
    print(f"  before  {result['tiny_before_bytes'] / 1e6:8.2f} MB gathered  {result['tiny_before_s'] * 1e3:8.1f} ms")
    print(f"  after   {result['tiny_after_bytes'] / 1e6:8.2f} MB gathered  {result['tiny_after_s'] * 1e3:8.1f} ms")
    q = result["qwen3_4b"]
    print(f"Qwen3-4B-Instruct-2507 ({q['params_b']:.2f} B parameters), per rank per sync, computed: "
          f"before {q['before_gb']:.1f} GB, after {q['after_gb']:.1f} GB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
