"""Evaluation: sample n answers per problem, report unbiased pass@k per benchmark and problem, save, compare, plot.

    python evaluate.py --model runs/pope/final --benchmarks aime-2025,hmmt-feb-2025,pope-hard          # n = 32
    torchrun --nproc_per_node=8 evaluate.py --model runs/rapo/final --benchmarks aime-2024 --n-samples 2048
    python evaluate.py --compare runs/eval/base.json runs/eval/pope.json       # side by side, nothing sampled
    python evaluate.py --plot runs/eval/base.json runs/eval/pope.json --png runs/eval/pass_at_k.png
    python evaluate.py --plot-metrics runs/pope/metrics.jsonl                   # training curves of a run

The estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", arXiv 2107.03374;
docs/algorithms.md §1.7).
A problem with n samples of which c are correct has

    pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)        (= 1 when n - c < k)

the chance that k of the n samples, drawn without replacement, include a correct one; a benchmark's pass@k is the
mean over its problems. The product form is what `pass_at_k` computes: it never forms a binomial coefficient, and
C(2048, 1024) ~ 1e615 does not fit in a float. pass@1 is the mean accuracy c/n. POPE's "solvability" of the hard
set (the fraction of problems with at least one correct answer in 8 samples) is pass@8 here: the mean of pass@8 is
the expected fraction of problems solved by 8 samples, estimated from all n >= 8 samples at once.

A worked example: 2 problems, n = 4 samples each, c = 1 and c = 0 correct.
    pass@1 = (1/4 + 0) / 2 = 0.125;   pass@2 = (1 - C(3,2)/C(4,2) + 0) / 2 = (1 - 3/6) / 2 = 0.25;   pass@4 = 0.5

Where the protocol comes from:
- Samples: temperature 0.8, top_p 0.95, top_k 50, at most 16,000 new tokens: the POPE authors' eval sampler
  (`test_llm`, docs/algorithms.md §2.8 item 13). RAPO's eval sampler is not published (§3.8).
- n = 32 and k = 1, 2, 4, ...: the POPE authors sample AIME 32 times and report pass@1 and pass@16 (§2.9); RAPO plots
  pass@k for k = 2^m up to 1024 from n = 2048 (§3.8, Figure 3). Every k = 2^m <= n (or <= --k-max) is reported.
- Benchmarks by name (data.DATASETS): aime-2024 (HuggingFaceH4/aime_2024), aime-2025 (MathArena/aime_2025, POPE's
  loader), hmmt-feb-2025 (MathArena/hmmt_feb_2025: POPE's HMMT source was not found, §2.9), pope-hard (the authors'
  hard set); or a local .jsonl/.parquet file with 'problem' and 'answer'; or a Hub id org/name.
- Prompts: unguided (POPE tests the hard set unguided, §2.9), the training system prompt and the model's chat template
  (data.make_prompt). A sample is correct when reward.py's binary math reward is positive (§1.8).
- Seeds: problem i of a benchmark is seeded common.stage_seed(--seed, BENCHMARK, crc32 of the benchmark's name, i),
  so its samples depend neither on how many ranks share the work nor on which other benchmarks run alongside it.

Data parallel under torchrun: rank r samples prompts[r::world] with its own vLLM engine and rank 0 gathers the rows
and writes the results JSON (per benchmark: pass@k; per problem: id, n, c, pass@k and every sample's score, so tables
and plots are redone from the file) and a PNG of the pass@k curves beside it.

Deliberately left out: maj@k / self-consistency, confidence intervals (the scores are all in the file: a bootstrap
over problems is a few lines), RAPO's "hard subset" (its definition is not published: pass it as a local file),
guided prompts, and the completions' text (n = 2048 x 16k tokens is gigabytes; the estimator needs only the scores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoTokenizer

import data
import reward
from common import (BENCHMARK, EVAL, ConfigError, check_device, check_model_path, init_distributed, one_line_errors,
                    opt, parse_config, reduce_sums, stage_seed)
from rollout import Engine, Sample, check_context, make_engine


@dataclass
class EvalConfig:
    system_prompt: str = opt(data.DEFAULT_SYSTEM_PROMPT, "system turn of every prompt ('' for none); use the one the "
                             "model was trained with")
    model: str = opt("", "HF model id or local folder to evaluate (e.g. runs/pope/final)")
    benchmarks: str = opt("aime-2025,hmmt-feb-2025", "comma-separated: names in data.DATASETS (aime-2024, "
                          "aime-2025, hmmt-feb-2025, pope-hard, ...), local .jsonl/.parquet files with 'problem' "
                          "and 'answer' columns, or Hub ids org/name")
    out: str = opt("", "results JSON ('' = runs/eval/<model folder name>.json); the pass@k plot goes beside it (.png)")
    n_samples: int = opt(32, "samples per problem, n (POPE authors: 32 on AIME; RAPO: 2048). Not --n: torchrun "
                         "would take --n as an abbreviation of its own flags")
    k_max: int = opt(0, "report pass@k for k = 1, 2, 4, ... up to this (0 = up to n); must be <= n")
    temperature: float = opt(0.8, "sampling temperature (POPE authors' eval sampler)")
    top_p: float = opt(0.95, "nucleus sampling, 1.0 = off (POPE authors' eval sampler)")
    top_k: int = opt(50, "top-k sampling, 0 = off (POPE authors' eval sampler)")
    max_new_tokens: int = opt(16_000, "completion budget per sample (POPE authors' eval sampler)")
    max_model_len: int = opt(0, "vLLM context; 0 = the longest prompt + --max-new-tokens")
    limit: int = opt(0, "evaluate only the first this many problems of each benchmark (0 = all)")
    bad_gold: str = opt("stop", "a problem whose gold answer scores 0 against itself boxed: stop naming file:row, or "
                        "drop it with a warning (it would count as unsolved)", choices=list(data.BAD_GOLD_POLICIES))
    samples_per_call: int = opt(4096, "samples per vLLM generate call (whole problems, at least one): bounds host "
                                "memory at large n, while keeping the engine's batch full")
    seed: int = opt(0, "seeds every problem's samples (see the module docstring)")
    allow_cpu: bool = opt(False, "start even when a model of more than 100 M parameters finds no CUDA device "
                          "(by default that stops at once, naming what torch sees) [this project's]")
    dtype: str = opt("auto", "vLLM dtype: auto = bfloat16 on GPU, float32 on CPU",
                     choices=["auto", "bfloat16", "float32"])
    vllm_gpu_memory_utilization: float = opt(0.9, "fraction of GPU memory the vLLM engine takes (vLLM's default: "
                                             "nothing else shares the GPU here)")
    vllm_kv_cache_bytes: int = opt(0, "explicit KV-cache size in bytes; 0 = from utilization (CPU default 64 MiB)")
    vllm_log_level: str = opt("WARNING", "vLLM's own logging: WARNING keeps a step's output to the bar, the sample "
                              "rollouts and the metrics; INFO restores vLLM's start-up and progress lines",
                              choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    reward_workers: int = opt(0, "processes for reward scoring (0 = in this process)")
    reward_timeout: float = opt(10.0, "seconds before a reward call is abandoned and scored 0")
    dist_timeout_minutes: float = opt(240.0, "torchrun: how long a collective waits for the slowest rank (each rank "
                                      "samples its share of a benchmark before the rows are gathered)")


# ----------------------------------------------------------------------------------------------------------------
# The estimator


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021), in the stable product form.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 1, 4), pass_at_k(4, 0, 4)
    (0.25, 0.5, 1.0, 0.0)
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c={c} correct out of n={n} samples is impossible")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def powers_of_two(k_max: int) -> list[int]:
    """[1, 2, 4, ...] up to k_max: the k at which pass@k is reported (RAPO's Figure 3 grid).

    >>> powers_of_two(48)
    [1, 2, 4, 8, 16, 32]
    """
    return [2**m for m in range(k_max.bit_length())]


def summarize(problems: list[data.Problem], scores: np.ndarray, ks: list[int], reward_failures: int = 0) -> dict:
    """A benchmark's results from its scores [P, n]: pass@k over problems, and each problem's n, c, pass@k, scores.
    `reward_failures` counts reward calls that timed out (scored 0, so they lower pass@k)."""
    n = scores.shape[1]
    per_problem = []
    for problem, row in zip(problems, scores):
        c = int((row > 0).sum())
        per_problem.append({"id": problem.id, "answer": problem.answer, "n": n, "c": c,
                            **{f"pass@{k}": pass_at_k(n, c, k) for k in ks}, "scores": row.tolist()})
    return {"problems": len(problems), "n": n, "solved": sum(p["c"] > 0 for p in per_problem),
            **{f"pass@{k}": float(np.mean([p[f"pass@{k}"] for p in per_problem])) for k in ks},
            "reward_failures": reward_failures, "per_problem": per_problem}


# ----------------------------------------------------------------------------------------------------------------
# Sampling and scoring (the trainer's periodic evaluation calls `sample_scores` too)


def sample(engine: Engine, prompts: list[data.Prompt], n: int, temperature: float, max_tokens: int, seed: int,
           stage: int, round_index: int, ids: list[int] | None = None, top_p: float = 1.0,
           top_k: int = 0) -> list[list[Sample]]:
    """n samples of each prompt, in order; prompt j is seeded stage_seed(seed, stage, round_index, ids[j]), ids[j] its
    index in the stage's full problem list (default 0, 1, ...): the only stage -> request seeds outside training."""
    ids = range(len(prompts)) if ids is None else ids
    return engine.generate([p.prompt_ids for p in prompts], n=n, temperature=temperature, max_tokens=max_tokens,
                           seeds=[stage_seed(seed, stage, round_index, i) for i in ids], top_p=top_p, top_k=top_k)


def sample_scores(engine: Engine, pool: reward.RewardPool, reward_fn, prompts: list[data.Prompt], n: int,
                  temperature: float, max_tokens: int, seed: int, stage: int, round_index: int, rank: int = 0,
                  world: int = 1, top_p: float = 1.0, top_k: int = 0, samples_per_call: int = 4096,
                  progress: bool = False) -> np.ndarray:
    """Rewards of n samples of each of this rank's prompts, prompts[rank::world]: an array [P_local, n].

    `reward_fn(text, prompt) -> float` runs in `pool`. Prompt i is sampled by `sample` with its index in the full
    list, whatever the number of ranks. Prompts go to vLLM a few at a time, about `samples_per_call` samples per
    call, so at n = 2048 the completions of only a couple of problems are held.
    """
    mine = list(range(rank, len(prompts), world))
    per_call = max(1, samples_per_call // n)
    scores = np.zeros((len(mine), n))  # [P_local, n]
    for start in tqdm(range(0, len(mine), per_call), disable=not progress, desc="sampling", leave=False):
        idx = mine[start:start + per_call]
        groups = sample(engine, [prompts[i] for i in idx], n, temperature, max_tokens, seed, stage, round_index,
                        ids=idx, top_p=top_p, top_k=top_k)
        flat = pool.map(reward_fn, [(s.text, prompts[i]) for i, group in zip(idx, groups) for s in group])
        scores[start:start + len(idx)] = np.array(flat).reshape(len(idx), n)
    return scores


def solvability(engine: Engine, pool: reward.RewardPool, reward_fn, prompts: list[data.Prompt], k: int,
                temperature: float, max_tokens: int, seed: int, step: int, top_p: float, top_k: int, rank: int,
                world: int, device) -> dict[str, float]:
    """The trainer's periodic evaluation: the fraction of `prompts` with at least one correct answer in k samples
    (POPE's solvability), and the unbiased pass@j of the same samples at j = 1, 2, 4, ... <= k, over all ranks.
    Prompt i is seeded stage_seed(seed, EVAL, step, i)."""
    scores = sample_scores(engine, pool, reward_fn, prompts, k, temperature, max_tokens, seed=seed, stage=EVAL,
                           round_index=step, rank=rank, world=world, top_p=top_p,
                           top_k=top_k)  # [P_local, k], prompts[rank::world]
    correct = (scores > 0).sum(1)  # [P_local]
    ks = powers_of_two(k)
    sums = reduce_sums({"solved": float((correct > 0).sum()), "n": float(len(scores)),
                        **{f"pass@{j}": sum(pass_at_k(k, int(c), j) for c in correct) for j in ks}}, device)
    return {f"eval_solvable_at_{k}": sums["solved"] / sums["n"],
            **{f"eval_pass_at_{j}": sums[f"pass@{j}"] / sums["n"] for j in ks}}


def unshard(parts: list[np.ndarray]) -> np.ndarray:
    """Undo prompts[rank::world]: rank r's rows go back to rows r, r + world, ... (parts[r] is rank r's [P_r, n])."""
    world = len(parts)
    out = np.zeros((sum(len(p) for p in parts), parts[0].shape[1]))  # [P, n]
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def gather_rows(local: np.ndarray, world: int) -> np.ndarray:
    """Every rank's rows [P_local, n], back in problem order [P, n], on every rank."""
    if world == 1:
        return local
    parts = [None] * world
    dist.all_gather_object(parts, local)
    return unshard(parts)


def load_benchmark(name: str, limit: int = 0, bad_gold: str = "stop") -> list[data.Problem]:
    """The problems of a benchmark: a name in data.DATASETS, a local .jsonl/.parquet file, or a Hub id org/name."""
    local_file = name.endswith((".jsonl", ".parquet"))
    hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()
    if not (name in data.DATASETS or local_file or hub_id):
        raise ConfigError(f"unknown benchmark {name!r}: use a name in data.DATASETS ({', '.join(data.DATASETS)}), "
                          "a .jsonl/.parquet file, or a Hub dataset id org/name")
    try:
        return data.load_problems(name, limit=limit or None, bad_gold=bad_gold)
    except OSError as e:  # any other Hub failure (load_problems names an unknown or uncached dataset itself)
        raise data.DataError(f"{name}: could not load it from the Hub ({str(e).splitlines()[0]})") from None


def check_config(cfg: EvalConfig) -> list[int]:
    """Reject impossible settings before anything is loaded; returns the k at which pass@k is reported."""
    if cfg.n_samples < 1:
        raise ConfigError(f"--n-samples {cfg.n_samples}: at least one sample per problem is needed")
    if cfg.k_max > cfg.n_samples:
        raise ConfigError(f"--k-max {cfg.k_max} > --n-samples {cfg.n_samples}: pass@k needs at least k samples per "
                          "problem; raise --n-samples or lower --k-max")
    if cfg.temperature <= 0:
        raise ConfigError(f"--temperature {cfg.temperature}: pass@k needs random samples (temperature > 0)")
    if not 0 < cfg.top_p <= 1 or cfg.top_k < 0:
        raise ConfigError(f"--top-p {cfg.top_p} / --top-k {cfg.top_k}: need 0 < top_p <= 1 and top_k >= 0 (0 = off)")
    return powers_of_two(cfg.k_max or cfg.n_samples)


def evaluate(cfg: EvalConfig, engine: Engine | None = None, reward_fn=reward.prompt_reward) -> dict:
    """Sample, score and summarise every benchmark of `cfg`; returns the results (the same on every rank).

    `engine` reuses a running vLLM engine serving cfg.model (by default one is started); `reward_fn(text, prompt)`.
    """
    ks = check_config(cfg)
    check_model_path(cfg.model)
    check_device(cfg.model, cfg.allow_cpu)
    names = list(dict.fromkeys(b.strip() for b in cfg.benchmarks.split(",") if b.strip()))
    if not names:
        raise ConfigError("--benchmarks is empty: name at least one (e.g. aime-2025)")
    problems = {name: load_benchmark(name, cfg.limit, cfg.bad_gold) for name in names}
    rank, world, device = init_distributed(cfg.dist_timeout_minutes)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    prompts = {name: [data.make_prompt(tokenizer, p, cfg.system_prompt) for p in ps] for name, ps in problems.items()}
    longest = max(len(p.prompt_ids) for ps in prompts.values() for p in ps)
    context = engine.max_model_len if engine else cfg.max_model_len or longest + cfg.max_new_tokens
    check_context(longest, cfg.max_new_tokens, context)
    engine = engine or make_engine(cfg, world, max_model_len=context)
    pool = reward.RewardPool(cfg.reward_workers, cfg.reward_timeout)
    results = {"model": cfg.model, "config": dataclasses.asdict(cfg), "benchmarks": {}}
    try:
        for name, ps in prompts.items():
            t0, failures_before = time.perf_counter(), pool.failures
            local = sample_scores(engine, pool, reward_fn, ps, cfg.n_samples, cfg.temperature, cfg.max_new_tokens,
                                  seed=cfg.seed, stage=BENCHMARK, round_index=zlib.crc32(name.encode()), rank=rank,
                                  world=world, top_p=cfg.top_p, top_k=cfg.top_k,
                                  samples_per_call=cfg.samples_per_call, progress=rank == 0)
            failures = int(reduce_sums({"f": pool.failures - failures_before}, device)["f"])
            results["benchmarks"][name] = summarize(problems[name], gather_rows(local, world), ks, failures)
            if rank == 0:
                print(f"{name}: {len(ps)} problems x {cfg.n_samples} samples in {time.perf_counter() - t0:.0f}s, "
                      f"{failures} reward calls timed out (scored 0)", flush=True)
    finally:
        pool.close()
    return results


def run(cfg: EvalConfig, engine: Engine | None = None, reward_fn=reward.prompt_reward) -> dict:
    """The command-line job: evaluate, then (on rank 0) print the table and write the JSON and the pass@k PNG."""
    results = evaluate(cfg, engine, reward_fn)
    if int(os.environ.get("RANK", 0)) == 0:  # torchrun's rank: vLLM's shutdown may have ended the process group
        out = Path(cfg.out or f"runs/eval/{Path(cfg.model).name}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(results_json(results))
        plot_pass_at_k({Path(cfg.model).name: results}, out.with_suffix(".png"))
        print(results_table(results))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return results


# ----------------------------------------------------------------------------------------------------------------
# Files and tables


def results_json(results: dict) -> str:
    """The results as indented JSON, except that lists of numbers (the scores) stay on one line each.

    A "[" followed by a raw newline is always a list json.dumps broke over lines (strings hold newlines escaped),
    so only such lists of plain values are joined; text inside strings is never touched."""
    text = json.dumps(results, indent=1)
    return re.sub(r"\[\n[^\[\]{}\"]*\]", lambda m: "[" + " ".join(m.group()[1:-1].split()) + "]", text)


def load_results(path: str) -> dict:
    """A results file written by `run`, or a DataError naming the file and what is wrong with it."""
    try:
        results = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise data.DataError(f"{path}: no such results file") from None
    except json.JSONDecodeError as e:
        raise data.DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(results, dict) or not isinstance(results.get("benchmarks"), dict):
        raise data.DataError(f"{path}: not a results file of evaluate.py (no 'benchmarks' object)")
    for name, b in results["benchmarks"].items():
        missing = {"problems", "n", "solved", "per_problem"} - set(b)
        if missing:
            raise data.DataError(f"{path}: benchmark {name!r} lacks {sorted(missing)} (not written by evaluate.py?)")
    return results


def metric_names(benchmarks: list[dict]) -> list[str]:
    """The pass@k keys present in any of these benchmark summaries, by increasing k."""
    ks = {int(key[5:]) for b in benchmarks for key in b if key.startswith("pass@")}
    return [f"pass@{k}" for k in sorted(ks)]


def text_table(rows: list[list[str]]) -> str:
    """Aligned columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def results_table(results: dict) -> str:
    """One row per benchmark: problems, n, solved (at least one correct sample of n), pass@k in %."""
    metrics = metric_names(list(results["benchmarks"].values()))
    rows = [["benchmark", "problems", "n", "solved"] + metrics]
    for name, b in results["benchmarks"].items():
        rows.append([name, str(b["problems"]), str(b["n"]), f"{b['solved']}/{b['problems']}"]
                    + [f"{100 * b[m]:.1f}" if m in b else "-" for m in metrics])
    return text_table(rows) + "\n(pass@k in %; solved = problems with at least one correct sample of n)"


def compare_table(runs: dict[str, dict]) -> str:
    """Runs side by side: one row per (benchmark, metric), one column per run, and the difference of two runs."""
    labels = list(runs)
    delta = len(labels) == 2
    rows = [["benchmark", "metric"] + labels + ([f"{labels[1]} - {labels[0]}"] if delta else [])]
    names = list(dict.fromkeys(name for r in runs.values() for name in r["benchmarks"]))
    for name in names:
        entries = [r["benchmarks"].get(name) for r in runs.values()]
        present = [e for e in entries if e]
        rows.append([name, "n"] + [str(e["n"]) if e else "-" for e in entries] + ([""] if delta else []))
        rows.append([name, "solved"] + [f"{e['solved']}/{e['problems']}" if e else "-" for e in entries]
                    + ([""] if delta else []))
        for m in metric_names(present):
            values = [100 * e[m] if e and m in e else None for e in entries]
            cells = [f"{v:.1f}" if v is not None else "-" for v in values]
            if delta:
                cells.append(f"{values[1] - values[0]:+.1f}" if None not in values else "-")
            rows.append([name, m] + cells)
    return text_table(rows) + "\n(pass@k in %)"


# ----------------------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no pyplot state, no display needed)


def plot_pass_at_k(runs: dict[str, dict], png: Path) -> None:
    """pass@k against k on a log2 axis, one panel per benchmark, one line per run (like RAPO's Figure 3)."""
    from matplotlib.figure import Figure  # here: matplotlib is needed only to draw, and slow to import

    names = list(dict.fromkeys(name for r in runs.values() for name in r["benchmarks"]))
    fig = Figure(figsize=(4.5 * len(names), 3.8), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names):
        all_ks = set()
        for label, results in runs.items():
            b = results["benchmarks"].get(name)
            if b is None:
                continue
            ks = [int(m[5:]) for m in metric_names([b])]
            all_ks.update(ks)
            ax.plot(ks, [b[f"pass@{k}"] for k in ks], marker="o", markersize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(all_ks), labels=[str(k) for k in sorted(all_ks)])
        ax.minorticks_off()
        ax.set(title=name, xlabel="k", ylabel="pass@k", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)


def load_metrics(path: str) -> list[dict]:
    """The rows of a training run's metrics.jsonl, the last record of each step kept (a re-run appends)."""
    if not Path(path).is_file():
        raise data.DataError(f"{path}: no such metrics file")
    by_step = {}
    for line_no, row in data.read_jsonl(path):
        if "step" not in row:
            raise data.DataError(f"{path}:{line_no}: a metrics row needs a 'step' field")
        by_step[row["step"]] = row
    if not by_step:
        raise data.DataError(f"{path}: the file holds no rows")
    return [by_step[s] for s in sorted(by_step)]


def plot_training(metrics_path: str, png: Path) -> list[str]:
    """Reward (guided vs unguided), unguided solvability, entropy and response length over steps (like POPE's
    Figure 2), from grpo.train's metrics.jsonl. Returns a note for each series the file does not have."""
    from matplotlib.figure import Figure  # here: matplotlib is needed only to draw, and slow to import

    rows = load_metrics(metrics_path)
    keys = set().union(*rows)
    solvable = sorted((k for k in keys if k.startswith("eval_solvable_at_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    panels = [("reward", ["reward_guided", "reward_unguided"]),
              ("unguided solvability", (solvable or ["eval_solvable_at_<k>"]) + ["eval_pass_at_1",
                                                                                 "solve_rate_unguided"]),
              ("entropy", ["entropy"]),
              ("response length (tokens)", ["len_mean", "len_max"])]
    notes = []
    fig = Figure(figsize=(11, 7), layout="constrained")
    for ax, (title, series) in zip(fig.subplots(2, 2).flat, panels):
        drawn = 0
        for key in series:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if not points:
                notes.append(f"{metrics_path}: no '{key}' values, not plotted")
                continue
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=key)
            drawn += 1
        if drawn:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    return notes


# ----------------------------------------------------------------------------------------------------------------
# Command line


def report_parser() -> argparse.ArgumentParser:
    """Flags of the modes that read saved files (lists of files, so not a config dataclass); nothing is sampled."""
    parser = argparse.ArgumentParser(description="Tables and plots from saved evaluation results or training metrics.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compare", nargs="+", metavar="RESULTS", help="results JSON files: print them side by side")
    mode.add_argument("--plot", nargs="+", metavar="RESULTS", help="results JSON files: their pass@k curves, one PNG")
    mode.add_argument("--plot-metrics", metavar="METRICS", help="a training run's metrics.jsonl: reward, "
                      "solvability, entropy and response length over steps, one PNG")
    parser.add_argument("--png", default="", help="the PNG to write ('' = the first input file with .png)")
    return parser


def labelled_runs(paths: list[str]) -> dict[str, dict]:
    """{label: results} for results files; the label is the file name without .json, or the path if names repeat."""
    paths = list(dict.fromkeys(paths))
    labels = [Path(p).stem for p in paths]
    return {label: load_results(p) for label, p in zip(labels if len(set(labels)) == len(labels) else paths, paths)}


def report(argv: list[str]) -> None:
    args = report_parser().parse_args(argv)
    if args.compare:
        print(compare_table(labelled_runs(args.compare)))
        return
    if args.plot:
        png = Path(args.png or Path(args.plot[0]).with_suffix(".png"))
        plot_pass_at_k(labelled_runs(args.plot), png)
    else:
        png = Path(args.png or Path(args.plot_metrics).with_suffix(".png"))
        for note in plot_training(args.plot_metrics, png):
            print(note)
    print(f"wrote {png}")


def main(argv: list[str] | None = None) -> None:
    """Evaluate a model (flags of EvalConfig), or report on saved files (--compare / --plot / --plot-metrics)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a.split("=")[0] in ("--compare", "--plot", "--plot-metrics") for a in argv):
        with one_line_errors():
            report(argv)
    else:
        cfg = parse_config(EvalConfig, argv)
        with one_line_errors(cfg.dist_timeout_minutes):
            run(cfg)


if __name__ == "__main__":
    main()
