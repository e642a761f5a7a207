"""Where a GRPO step's time goes, and what the rollout wrapper costs over bare vLLM.

    python bench/bench_step.py                       # the tiny offline model on CPU
    python bench/bench_step.py --model DIR --prompts 32 --group-size 8 --max-new-tokens 1024   # a real model

Runs `grpo.train` for a few steps and prints the mean seconds per phase (rollout / reward / trainer logprobs /
backward + optimizer step / weight sync). Then, in the same process and on the same engine, it times the rollout of
the same prompts through `Engine.generate` and through a bare `llm.generate` with identical SamplingParams and seeds,
alternating the two, and prints their throughput ratio (goal >= 0.9: the wrapper adds little).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "toys"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import data  # noqa: E402
import grpo  # noqa: E402
import reward  # noqa: E402
import tiny  # noqa: E402
from common import request_seed  # noqa: E402
from rollout import make_engine  # noqa: E402
from vllm import SamplingParams  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="", help="model folder (default: build the tiny offline model)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6, help="training steps (the first is dropped as warm-up)")
    ap.add_argument("--repeats", type=int, default=5, help="rollout timing repeats for each of the two paths")
    args = ap.parse_args()
    model = args.model or tiny.make_tiny_model(tempfile.mkdtemp(), hidden_size=128, num_layers=4)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    problems = [data.Problem(str(i), f"What is {i} + {2 * i}?", str(3 * i)) for i in range(4 * args.prompts)]
    prompts = [data.make_prompt(tok, p) for p in problems]
    cfg = grpo.Config(model=model, out_dir=tempfile.mkdtemp(), steps=args.steps, prompts_per_step=args.prompts,
                      group_size=args.group_size, max_new_tokens=args.max_new_tokens, max_model_len=1024,
                      lr=1e-5, log_samples=0, micro_batch_size=16)
    engine = make_engine(cfg, world=1)
    history = grpo.train(cfg, prompts, reward.prompt_reward, engine=engine)[1:]
    phases = ["rollout", "reward", "logprobs", "backward_step", "sync"]
    mean = {p: statistics.mean(h[f"time_{p}"] for h in history) for p in phases}
    total = statistics.mean(h["time_step"] for h in history)
    print(f"\nper step ({len(history)} steps after warm-up; {args.prompts} prompts x {args.group_size} samples, "
          f"<= {args.max_new_tokens} new tokens, mean {statistics.mean(h['len_mean'] for h in history):.0f}):")
    for p in phases:
        print(f"  {p:<14} {mean[p]:8.3f} s  {100 * mean[p] / total:5.1f} %")
    print(f"  {'step total':<14} {total:8.3f} s")

    ids = [p.prompt_ids for p in prompts[:args.prompts]]
    seeds = [request_seed(0, 99, j) for j in range(len(ids))]
    params = [SamplingParams(n=args.group_size, temperature=1.0, top_p=1.0, top_k=0, max_tokens=args.max_new_tokens,
                             logprobs=0, seed=s) for s in seeds]
    ours, bare, tokens = [], [], 0
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both paths alike
        t = time.perf_counter()
        groups = engine.generate(ids, args.group_size, 1.0, args.max_new_tokens, seeds=seeds)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        outs = engine.llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
        bare.append(time.perf_counter() - t)
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        assert tokens == sum(len(s.completion_ids) for g in groups for s in g), "the two paths sampled differently"
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"\nrollout of the same {len(ids)} prompts x {args.group_size} ({tokens} tokens), median of {args.repeats}:")
    print(f"  Engine.generate  {o:.3f} s  {tokens / o:9.0f} tokens/s")
    print(f"  bare llm.generate {b:.3f} s  {tokens / b:9.0f} tokens/s")
    print(f"  throughput ratio (ours / bare): {b / o:.3f}")
    print(json.dumps({"phases_s": mean, "step_s": total, "rollout_ratio": b / o}))


if __name__ == "__main__":
    main()
