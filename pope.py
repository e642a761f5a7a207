"""POPE: privileged on-policy exploration (Qu et al., arXiv 2601.18779). GRPO, plus guided copies of hard problems.

    python pope.py --model Qwen/Qwen3-4B-Instruct-2507                # one 141 GB GPU (80 GB is too small)
    torchrun --nproc_per_node=8 pope.py --model Qwen/Qwen3-4B-Instruct-2507   # one 8-GPU node

On a hard problem (the base model never answers correctly in many samples) on-policy RL gets no signal. POPE adds,
for each hard problem, a *guided* copy whose prompt holds a short prefix of an oracle solution and asks the model to
continue it. Both copies are trained on, each as its own group with its own baseline; the prefix is prompt, so it is
never a training target. What is learned from guided states transfers to the unguided problem. What differs from
GRPO is all here, in the functions before `run`, which then calls `grpo.train`:

    1. hard set       problems with 0 correct in --mine-k samples (`mine_hard`; --mine, the default data is mined)
    2. prefixes       for each, the shortest of a few line-based prefixes of its oracle solution (up to 25%) whose
                      guided prompt gets >= 1 correct answer in --prefix-k samples  (`find_prefixes`)
    3. training set   --unguided-copies unguided + --guided-copies guided prompts per hard problem (1:1 default),
                      optionally --easy-data mixed in (the paper's "ray interference" experiment)  (`training_set`)
    4. train          grpo.train; rewards and solve rates are logged per kind (guided / unguided / easy), and every
                      --eval-every steps the unguided hard set's solvability (>= 1 correct in --eval-k samples)

Defaults follow the POPE authors' PipelineRL config (docs/algorithms.md §2.8; read from their code, not confirmed as
the paper's final runs): group 8, 32 prompts per step, lr 1e-6 under a cosine with no warmup over their
max_train_steps of 100,000 (so effectively constant over any run of this size), AdamW weight
decay 0.01, grad-norm clip 0.3, temperature 0.8, advantages r - mean (no std), no KL, entropy 1e-4, loss summed over
tokens / sequences per step, 16k-token responses, and their eval sampler (T 0.8, top-p 0.95, top-k 50) for the
solvability eval, as in evaluate.py. Two are this project's: clip 0.2/0.2 (the authors' loose [-3, 5] clip suits
their asynchronous trainer; this one is synchronous) and the prefix search's k = 16 (the paper's value was not
published).

The CPU toy world that shows what this does, GRPO and its rivals against POPE from one tiny base model, is
`python toys/pope_compare.py` (toys/README.md); it builds POPE's arm with the functions above.

Deliberately left out: asynchronous (PipelineRL-style) rollouts, importance weighting between guided and unguided
contexts (the authors apply none), and generating oracle solutions (the hard set ships verified ones).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist
from transformers import AutoTokenizer

import data
import evaluate
import grpo
import reward
from common import (MINING, PREFIX, ConfigError, check_device, check_model_path, command_line, init_distributed, opt,
                    preset)
from data import GUIDED_TEMPLATES  # by name: the `data` field shadows the module inside PopeConfig
from rollout import check_context, make_engine


POPE = "POPE authors' PipelineRL config, docs/algorithms.md §2.8"


@preset({
    "data": ("pope-hard", "POPE: the authors' hard set for Qwen3-4B-Instruct-2507 with verified Gemini solutions; "
                          "a file needs a 'solution' column too"),
    "out_dir": ("runs/pope", "this project's: the mining and prefix caches go here too"),
    "prompts_per_step": (32, POPE), "group_size": (8, POPE), "temperature": (0.8, POPE),
    "max_new_tokens": (16384, POPE), "max_model_len": (20000, f"{POPE}: the trainer's seq_length"),
    "lr": (1e-6, POPE), "lr_schedule": ("cosine", f"{POPE}: no warmup"),
    "lr_decay_steps": (100_000, f"{POPE}: max_train_steps; after 1000 steps the rate is still 0.9998 x --lr"),
    "weight_decay": (0.01, POPE), "max_grad_norm": (0.3, POPE), "adv_std_norm": (False, f"{POPE}: r - mean only"),
    "loss_agg": ("sum", POPE), "entropy_coef": (1e-4, POPE),
    "grad_checkpointing": (True, "this project's: 16k-token responses"),
    "micro_batch_size": (8, "this project's: within --micro-batch-tokens"),
    "micro_batch_tokens": (40_000, "this project's: 2 x 20k padded tokens, the peak of the memory table; on a "
                                   "long-tailed step 5 passes instead of 16, padding 17% instead of 22%, "
                                   "bench/bench_padding.py"),
    "eval_every": (10, "this project's"),
    "save_every": (10, "this project's: a 4B model's checkpoint is ~56 GB (DCP fp32 weights + AdamW 48 GB, bf16 HF "
                       "export 8 GB; arithmetic), about a minute to write every ~10 steps of up to ~8 minutes"),
    "eval_k": (8, "POPE blog, Figure 2: pass@8"),
    "eval_top_p": (0.95, "POPE's eval sampler, as evaluate.py"), "eval_top_k": (50, "POPE's eval sampler"),
})
@dataclass
class PopeConfig(grpo.Config):
    data_limit: int = opt(0, "use only the first N problems (0 = all)")
    eval_limit: int = opt(64, "hard problems in the solvability eval: 64 x --eval-k 8 = 512 samples, 2x a training "
                          "step's 256 rollouts, every --eval-every 10 steps (+20% rollout time, arithmetic); 0 = the "
                          "whole hard set [this project's]")
    # POPE's own
    mine: bool = opt(False, "first keep only the problems with 0 correct in --mine-k base-model samples")
    mine_k: int = opt(128, "samples per problem for the hardness filter (POPE: 128)")
    mine_max_tokens: int = opt(32768, "response budget of the hardness filter (POPE: 32k)")
    prefix_k: int = opt(16, "samples per guided candidate: solvable = >= 1 correct (not published; this project's)")
    prefix_max_tokens: int = opt(16384, "response budget of the prefix search (the training budget)")
    prefix_max_fraction: float = opt(0.25, "longest candidate prefix, as a fraction of the solution's lines "
                                     "(POPE write-ups: 'up to a quarter')")
    prefix_candidates: int = opt(4, "candidate prefix lengths, evenly spaced up to --prefix-max-fraction")
    prefix_fallback: str = opt("longest", "when no candidate is solvable: keep the longest (stays 1:1) or drop the "
                               "guided copy", choices=["longest", "drop"])
    guided_template: str = opt("continue", "guided prompt: 'continue' (template (a), docs/algorithms.md §2.5) or "
                               "the 'no-restate' ablation", choices=sorted(GUIDED_TEMPLATES))
    guided_copies: int = opt(1, "guided prompts per hard problem in the training set (POPE: 1:1 with unguided)")
    unguided_copies: int = opt(1, "unguided prompts per hard problem in the training set")
    easy_data: str = opt("", "optional easier problems mixed in as kind 'easy' (the hard+easy interference runs)")
    easy_limit: int = opt(0, "use only the first N easy problems (0 = all)")


# ----------------------------------------------------------------------------------------------------------------
# The hard set and the minimal sufficient guiding prefixes (docs/algorithms.md §2.3, §2.4).
# Both sample from the base model with `evaluate.sample` (which seeds the requests) through any engine with
# rollout.Engine's `generate(prompt_ids, n, temperature, max_tokens, seeds, top_p, top_k)`, score with
# `reward_fn(text, prompt) -> float`, and append one JSON line per finished problem to a cache: a rerun (or
# `--resume`) skips what is there. Under torchrun each rank takes problems[rank::world] and writes its own file;
# every rank then reads all of them.


def _read_cache(cache: Path) -> dict[str, dict]:
    done = {}
    for part in sorted(cache.parent.glob(cache.name + ".rank*")):
        lines = part.read_text().splitlines()
        for line_no, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if line_no == len(lines):
                    continue  # a line cut by a kill mid-write: that problem is simply redone
                raise data.DataError(f"{part}:{line_no}: corrupt cache line; delete the file to recompute") from None
            done[row["id"]] = row
    return done


def _correct_and_tokens(prompts: list[data.Prompt], groups, reward_fn) -> list[tuple[int, int]]:
    """(correct answers, sampled tokens) of each prompt's samples (`evaluate.sample`'s groups, in order)."""
    return [(sum(reward_fn(s.text, p) > 0 for s in group), sum(len(s.completion_ids) for s in group))
            for p, group in zip(prompts, groups)]


def mine_hard(engine, tokenizer, problems: list[data.Problem], reward_fn, cache: str | Path, k: int = 128,
              temperature: float = 1.0, max_tokens: int = 32768, batch_size: int = 64, seed: int = 0,
              system_prompt: str = data.DEFAULT_SYSTEM_PROMPT, rank: int = 0, world: int = 1) -> list[data.Problem]:
    """The problems the base model never solves: 0 correct in `k` samples (POPE: k=128 at 32k tokens).

    Results go to `cache` as {"id", "correct", "k", "tokens"} lines, written as each batch finishes; finished
    problems are skipped on a rerun. Problem i of `problems` is seeded stage_seed(seed, MINING, 0, i). Returns the hard
    problems in input order (all ranks' results, once all are done).
    """
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    done = _read_cache(cache)
    todo = [(i, p) for i, p in enumerate(problems) if i % world == rank and p.id not in done]  # problems[rank::world]
    with open(f"{cache}.rank{rank}", "a") as out:
        for start in range(0, len(todo), batch_size):
            indices, batch = zip(*todo[start:start + batch_size])
            prompts = [data.make_prompt(tokenizer, p, system_prompt) for p in batch]
            groups = evaluate.sample(engine, prompts, k, temperature, max_tokens, seed, MINING, 0, ids=indices)
            for p, (c, tokens) in zip(batch, _correct_and_tokens(prompts, groups, reward_fn)):
                out.write(json.dumps({"id": p.id, "correct": c, "k": k, "tokens": tokens}) + "\n")
            out.flush()
    if dist.is_initialized():  # every rank's cache file is complete before anyone reads them
        dist.barrier()
    done = _read_cache(cache)
    return [p for p in problems if p.id in done and done[p.id]["correct"] == 0]


def candidate_prefixes(solution: str, max_fraction: float = 0.25, n_candidates: int = 4) -> list[str]:
    """Line-based prefixes of an oracle solution, shortest first: the first floor(f * L) of its L lines for
    f = max_fraction * (1/n, 2/n, ..., 1), deduplicated, so no prefix holds more than `max_fraction` of the lines.
    One line is the minimum: a solution shorter than 1 / max_fraction lines (4 at 25%) gets its first line as the
    only candidate, more than the fraction. Lines, 4 lengths and 25% are docs/algorithms.md §2.4's reading of the
    POPE write-ups ("progressively longer prefixes, up to a quarter the length of the solution"); the unit and the
    count were not published.

    >>> candidate_prefixes("a\\nb\\nc\\nd\\ne\\nf\\ng\\nh", max_fraction=0.25, n_candidates=4)
    ['a', 'a\\nb']
    >>> candidate_prefixes("a\\nb\\nc\\nd\\ne", max_fraction=0.25)   # 5 lines: 1 line (20%), never 2 (40%)
    ['a']
    """
    lines = [line for line in solution.split("\n") if line.strip()]
    counts = sorted({max(1, math.floor(max_fraction * (j + 1) / n_candidates * len(lines) + 1e-9))
                     for j in range(n_candidates)})  # + 1e-9: 0.25 * 4 / 4 * 8 must give 2, not 1.999...
    return ["\n".join(lines[:m]) for m in counts if m < len(lines)]


def find_prefixes(engine, tokenizer, problems: list[data.Problem], reward_fn, cache: str | Path, k: int = 16,
                  temperature: float = 0.8, max_tokens: int = 16384, max_fraction: float = 0.25,
                  n_candidates: int = 4, template: str = "continue", fallback: str = "longest", seed: int = 0,
                  system_prompt: str = data.DEFAULT_SYSTEM_PROMPT, rank: int = 0, world: int = 1) -> dict[str, dict]:
    """POPE's minimal sufficient prefix for each problem: the shortest candidate whose guided prompt gets at least
    one correct answer in `k` samples (docs/algorithms.md §2.4: k=16 at T=0.8 and 16k tokens, this project's reading).

    When no candidate works, `fallback` decides: "longest" keeps the longest candidate (~25%; the fallback in the
    POPE summaries, so the guided:unguided mixture stays 1:1), "drop" gives the problem no guided copy.
    Returns {id: {"prefix": str | None, "lines": int, "solvable": bool, "samples": int, "tokens": int}}, the last two
    the search's cost for that problem (its sampling budget); problems without a solution are absent.
    Candidates are tried in rounds (all problems' shortest first, then the next ...), one batched generate a round;
    in round j, problem i of `problems` is seeded stage_seed(seed, PREFIX, j, i).
    """
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    done = _read_cache(cache)
    todo = {p.id: (i, p, candidate_prefixes(p.solution, max_fraction, n_candidates))
            for i, p in enumerate(problems) if i % world == rank and p.solution and p.id not in done}
    todo = {i: v for i, v in todo.items() if v[2]}  # a one-line solution has no proper prefix
    spent = {i: 0 for i in todo}  # tokens sampled so far for each problem
    with open(f"{cache}.rank{rank}", "a") as out:
        for j in range(n_candidates):
            live = [(i, p, cands[j]) for i, p, cands in todo.values() if j < len(cands)]
            prompts = [data.make_guided_prompt(tokenizer, p, prefix, template, system_prompt) for _, p, prefix in live]
            groups = evaluate.sample(engine, prompts, k, temperature, max_tokens, seed, PREFIX, j,
                                     ids=[i for i, _, _ in live]) if live else []
            for (_, p, prefix), (c, tokens) in zip(live, _correct_and_tokens(prompts, groups, reward_fn)):
                spent[p.id] += tokens
                last = j == len(todo[p.id][2]) - 1
                if c > 0 or last:
                    keep = prefix if c > 0 or fallback == "longest" else None
                    out.write(json.dumps({"id": p.id, "prefix": keep, "lines": prefix.count("\n") + 1 if keep else 0,
                                          "solvable": c > 0, "samples": k * (j + 1), "tokens": spent[p.id]}) + "\n")
                    del todo[p.id]
            out.flush()
    if dist.is_initialized():  # every rank's cache file is complete before anyone reads them
        dist.barrier()
    wanted = {p.id for p in problems}
    return {i: row for i, row in _read_cache(cache).items() if i in wanted}


def cache_path(cfg: PopeConfig, stage: str, *settings) -> Path:
    """A cache file per stage whose name hashes what its results depend on (model, data, sampling settings)."""
    key = hashlib.sha256(json.dumps([cfg.model, cfg.data, cfg.system_prompt, cfg.seed, *settings]).encode())
    return Path(cfg.out_dir) / "cache" / f"{stage}-{key.hexdigest()[:12]}.jsonl"


def training_set(tokenizer, hard: list[data.Problem], prefixes: dict[str, dict], cfg: PopeConfig,
                 easy: list[data.Problem] = ()) -> list[data.Prompt]:
    """Unguided and guided copies of every hard problem (each copy is its own prompt: its own group and baseline),
    plus easy problems as kind 'easy'."""
    prompts = []
    for p in hard:
        prompts += [data.make_prompt(tokenizer, p, cfg.system_prompt)] * cfg.unguided_copies
        prefix = prefixes.get(p.id, {}).get("prefix")
        if prefix:
            guided = data.make_guided_prompt(tokenizer, p, prefix, cfg.guided_template, cfg.system_prompt)
            prompts += [guided] * cfg.guided_copies
    return prompts + [dataclasses.replace(data.make_prompt(tokenizer, p, cfg.system_prompt), kind="easy") for p in easy]


def engine_context(cfg: PopeConfig, tokenizer, problems: list[data.Problem]) -> int:
    """Check every prompt + budget against the context before anything samples; returns the engine's context: the
    training context, or more when --mine needs it (mining's budget, 32k, exceeds training's 16k + prompt)."""
    unguided = max(len(data.make_prompt(tokenizer, p, cfg.system_prompt).prompt_ids) for p in problems)
    longest_prefixes = [(p, c[-1]) for p in problems if p.solution
                        for c in [candidate_prefixes(p.solution, cfg.prefix_max_fraction, cfg.prefix_candidates)] if c]
    guided = max((len(data.make_guided_prompt(tokenizer, p, prefix, cfg.guided_template, cfg.system_prompt).prompt_ids)
                  for p, prefix in longest_prefixes), default=0)
    check_context(unguided, cfg.max_new_tokens, cfg.max_model_len, "unguided prompt")
    for budget, flag in [(cfg.max_new_tokens, "--max-new-tokens"), (cfg.prefix_max_tokens, "--prefix-max-tokens")]:
        check_context(guided, budget, cfg.max_model_len, "guided prompt", flag, " or --prefix-max-fraction")
    return max(cfg.max_model_len, unguided + cfg.mine_max_tokens) if cfg.mine else cfg.max_model_len


def run(cfg: PopeConfig, reward_fn=reward.prompt_reward, engine=None) -> list[dict]:
    """Hard set -> minimal prefixes -> guided + unguided training set -> GRPO."""
    check_model_path(cfg.model)
    check_device(cfg.model, cfg.allow_cpu)
    rank, world, _ = init_distributed(cfg.dist_timeout_minutes)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    problems = data.load_problems(cfg.data, limit=cfg.data_limit or None, bad_gold=cfg.bad_gold)
    context = engine_context(cfg, tokenizer, problems)
    if engine is not None and engine.max_model_len < context:
        raise ConfigError(f"the engine's context {engine.max_model_len} is shorter than the {context} tokens mining "
                          "needs (the longest prompt + --mine-max-tokens)")
    # The base model samples for the offline stages, then trains; its context fits mining's budget too.
    engine = engine or make_engine(cfg, world, max_model_len=context, sleep_mode=cfg.sleep_level > 0)

    hard = problems
    if cfg.mine:
        hard = mine_hard(engine, tokenizer, problems, reward_fn,
                         cache_path(cfg, "mining", cfg.mine_k, cfg.mine_max_tokens, cfg.temperature),
                         k=cfg.mine_k, temperature=cfg.temperature, max_tokens=cfg.mine_max_tokens,
                         seed=cfg.seed, system_prompt=cfg.system_prompt, rank=rank, world=world)
    prefixes = find_prefixes(
        engine, tokenizer, hard, reward_fn,
        cache_path(cfg, "prefixes", cfg.prefix_k, cfg.prefix_max_tokens, cfg.temperature, cfg.prefix_max_fraction,
                   cfg.prefix_candidates, cfg.guided_template, cfg.prefix_fallback),
        k=cfg.prefix_k, temperature=cfg.temperature, max_tokens=cfg.prefix_max_tokens,
        max_fraction=cfg.prefix_max_fraction, n_candidates=cfg.prefix_candidates, template=cfg.guided_template,
        fallback=cfg.prefix_fallback, seed=cfg.seed, system_prompt=cfg.system_prompt, rank=rank, world=world)
    easy = (data.load_problems(cfg.easy_data, limit=cfg.easy_limit or None, bad_gold=cfg.bad_gold)
            if cfg.easy_data else [])
    prompts = training_set(tokenizer, hard, prefixes, cfg, easy)
    eval_prompts = [data.make_prompt(tokenizer, p, cfg.system_prompt) for p in hard[:cfg.eval_limit or None]]
    if rank == 0:
        found = [row for row in prefixes.values() if row["prefix"]]
        print(f"pope: {len(problems)} problems, {len(hard)} hard, {len(found)} with a guiding prefix "
              f"({sum(row['solvable'] for row in found)} solvable with it, mean "
              f"{sum(row['lines'] for row in found) / max(len(found), 1):.1f} lines); training on {len(prompts)} "
              f"prompts, solvability eval on {len(eval_prompts)}")
    if not prompts:
        raise ConfigError(f"{cfg.data}: no training prompts (no hard problems left after mining?)")
    return grpo.train(cfg, prompts, reward_fn, eval_prompts, engine=engine)


def main(argv=None) -> None:
    command_line(PopeConfig, run, argv)


if __name__ == "__main__":
    main()
