"""The node check: run it first on a GPU node, before an 8-GPU POPE run (one GPU, a few minutes); results as JSON.

    python bench/node_check.py                                  # Qwen3-4B-Instruct-2507, POPE's settings, GPU 0
    python bench/node_check.py --model DIR --out node.json
    python bench/node_check.py --trainer-only                   # where torch has CUDA but vLLM is not installed

Each check runs the trainer's own code (pope.PopeConfig's defaults, rollout.make_engine, grpo.load_model, grpo.update,
Engine.sync_weights) and records its numbers and `ok`:
  versions   torch, CUDA, driver, GPUs, vLLM, the model runner (common.versions)
  engine     start-up seconds and the KV cache's size in tokens, the engine built exactly as training builds it
  sync       after the trainer's first sync: >= 95% of greedy tokens are the trainer's argmax (bf16 near-ties may
             flip), and on seeded samples at the
             training temperature |vLLM - trainer| logprob <= grpo.GAP_BOUND for the compute dtype
  perturb    every weight, then only the (tied) embedding, changed in the trainer and synced: the engine's answers
             change and match the trainer again (a stale prefix cache or a skipped tensor fails this)
  sleep      levels 1 and 2, woken in the trainer's order (weights, sync, KV cache): the same greedy tokens as awake
             (GPU only: the CPU build has no sleep mode)
  rollout    --rollout-seqs sequences of up to --max-new-tokens: sampled tokens per second
  train      one micro-batch of --seq-len tokens per sequence, as many as --micro-batch-tokens allows, with the
             engine resident: seconds of logprobs + backward + optimizer step, peak GPU memory, attention kernel
tests/test_node_check.py runs the whole script on the tiny offline model on CPU, so it cannot rot; what only a GPU
can show (bf16 kernels, CUDA graphs, sleep, memory, speed) shows only there. Nothing here has run on a GPU yet.
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402
import grpo  # noqa: E402
import pope  # noqa: E402
from common import compute_dtype, versions  # noqa: E402
from rollout import Sample  # noqa: E402


def trainer_logprobs(policy, cfg, groups, autocast) -> torch.Tensor:
    """The trainer's logprobs [N] of the sampled tokens, through the trainer's own path, and vLLM's [N]."""
    ro = grpo.rollout_tensors(groups, torch.zeros(len(groups), len(groups[0])), None, cfg, policy.lm.device)
    with torch.no_grad():
        ours = grpo.micro_batch_stats(policy, None, ro, cfg, autocast)["logp"].float()
    return ours, ro.per_token(ro.sampler_logp)


def greedy_agrees(policy, samples: list[Sample], autocast) -> float:
    """Share of greedy completion tokens that are the trainer's argmax at their position."""
    same = total = 0
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids], device=policy.lm.device)
        with torch.no_grad(), autocast:
            logits = policy.lm(input_ids=ids).logits[0, len(s.prompt_ids) - 1:-1]  # [C, V]
        same += (logits.argmax(-1).cpu() == torch.tensor(s.completion_ids)).sum().item()
        total += len(s.completion_ids)
    return same / max(total, 1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="Qwen/Qwen3-4B-Instruct-2507")
    ap.add_argument("--out", default="runs/node_check.json", help="where the JSON results go")
    ap.add_argument("--seq-len", type=int, default=20_000, help="tokens per training sequence (POPE: 20k)")
    ap.add_argument("--max-new-tokens", type=int, default=1024, help="the rollout check's budget per sequence")
    ap.add_argument("--rollout-seqs", type=int, default=32, help="sequences in the rollout check (a rank's share)")
    ap.add_argument("--max-model-len", type=int, default=0, help="engine context (0 = POPE's 20000)")
    ap.add_argument("--trainer-only", action="store_true", help="skip every vLLM check (vLLM not installed)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    cfg = pope.PopeConfig(model=args.model, max_model_len=args.max_model_len or pope.PopeConfig.max_model_len,
                          sleep_level=0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and compute_dtype(cfg.dtype) == torch.bfloat16)
    bound = grpo.GAP_BOUND[compute_dtype(cfg.dtype)]
    results = {"versions": versions(), "model": args.model, "dtype": str(compute_dtype(cfg.dtype))}
    device = torch.device("cuda" if cuda else "cpu")
    engine = None
    if not args.trainer_only:
        from rollout import make_engine  # the engine's checks: vLLM is imported when it starts

        t0 = time.perf_counter()
        engine = make_engine(cfg, world=1, sleep_mode=cuda)
        cache = engine.llm.llm_engine.vllm_config.cache_config
        blocks = getattr(cache, "num_gpu_blocks", None) or 0
        results["engine"] = {"startup_s": round(time.perf_counter() - t0, 1), "kv_tokens": blocks * cache.block_size,
                             "ok": True}
    policy = grpo.load_model(cfg, device, world=1, trainable=True)
    if engine is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        prompts = [data.render(tok, q) for q in ("What is 17 * 23?", "Name the largest planet.", "Solve x + 3 = 10.")]

        def check_served(name: str) -> dict:
            greedy = [g[0] for g in engine.generate(prompts, n=1, temperature=0.0, max_tokens=32, seeds=[0, 1, 2])]
            seeded = engine.generate(prompts, n=4, temperature=cfg.temperature, max_tokens=32, seeds=[10, 20, 30])
            ours, theirs = trainer_logprobs(policy, cfg, seeded, autocast)
            gap = (ours - theirs).abs()
            agree = greedy_agrees(policy, greedy, autocast)
            return {"name": name, "greedy_agreement": agree, "gap_mean": gap.mean().item(),
                    "gap_max": gap.max().item(), "tokens": [g.completion_ids for g in greedy],
                    "ok": agree >= 0.95 and gap.mean().item() <= bound}  # bf16: near-ties may flip

        engine.sync_weights(grpo.hf_state(policy))
        results["sync"] = check_served("after the first sync")
        before = results["sync"]
        results["perturb"] = []
        embedding = policy.lm.get_input_embeddings().weight
        for what, params in (("all weights", list(policy.parameters())), ("the embedding only", [embedding])):
            with torch.no_grad():
                for p in params:
                    p.add_(torch.randn_like(p) * p.std() * 0.5)
            engine.sync_weights(grpo.hf_state(policy))
            now = check_served(f"after perturbing {what}")
            now["changed"] = now["tokens"] != before["tokens"]
            now["ok"] = now["ok"] and now["changed"]
            results["perturb"].append(now)
            before = now
        if cuda:
            awake = before["tokens"]
            results["sleep"] = []
            for level in (1, 2):
                engine.sleep(level)
                engine.wake_up(["weights"])
                engine.sync_weights(grpo.hf_state(policy))
                engine.wake_up(["kv_cache"])
                tokens = [g[0].completion_ids for g in engine.generate(prompts, n=1, temperature=0.0, max_tokens=32,
                                                                        seeds=[0, 1, 2])]
                results["sleep"].append({"level": level, "same_greedy_tokens": tokens == awake, "ok": tokens == awake})
        else:
            results["sleep"] = {"skipped": "the CPU build of vLLM has no sleep mode", "ok": True}
        per = max(1, args.rollout_seqs // len(prompts))
        t0 = time.perf_counter()
        groups = engine.generate(prompts, n=per, temperature=cfg.temperature, max_tokens=args.max_new_tokens,
                                 seeds=[100, 200, 300])
        sampled = sum(len(s.completion_ids) for g in groups for s in g)
        results["rollout"] = {"sequences": per * len(prompts), "tokens": sampled,
                              "tokens_per_s": round(sampled / (time.perf_counter() - t0), 1), "ok": sampled > 0}
    # One training micro-batch at the training length, with the engine (if any) still resident.
    seqs = max(1, min(cfg.micro_batch_size, cfg.micro_batch_tokens // args.seq_len))
    prompt = min(512, args.seq_len // 4)
    vocab = policy.lm.config.vocab_size
    samples = [Sample(torch.randint(vocab, (prompt,)).tolist(), torch.randint(vocab, (args.seq_len - prompt,)).tolist(),
                      [0.0] * (args.seq_len - prompt), "", "length") for _ in range(seqs)]
    ro = grpo.rollout_tensors([samples], torch.arange(seqs, dtype=torch.float32)[None], None, cfg, device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.0)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    grpo.update(policy, None, optimizer, ro, dataclasses.replace(cfg, max_new_tokens=args.seq_len), device,
                autocast, {})
    if cuda:
        torch.cuda.synchronize()
    results["train"] = {"sequences": seqs, "seq_len": args.seq_len, "seconds": round(time.perf_counter() - t0, 2),
                        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                        "attention": policy.lm.config._attn_implementation, "ok": True}
    checks = [c for k in ("engine", "sync", "perturb", "sleep", "rollout", "train") if k in results
              for c in (results[k] if isinstance(results[k], list) else [results[k]])]
    results["ok"] = all(c["ok"] for c in checks)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    for name in ("engine", "sync", "perturb", "sleep", "rollout", "train"):
        if name in results:
            shown = [{k: v for k, v in c.items() if k != "tokens"} for c in results[name]] if isinstance(
                results[name], list) else {k: v for k, v in results[name].items() if k != "tokens"}
            print(f"{name:8s} {json.dumps(shown)}")
    print(f"node check: {'ok' if results['ok'] else 'FAILED'}; {results['versions']}; results in {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
