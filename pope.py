"""POPE: privileged on-policy exploration (Qu et al., arXiv 2601.18779). GRPO, plus guided copies of hard problems.

    python pope.py                                                    # the CPU toy world (toy.py), minutes
    python pope.py --model Qwen/Qwen3-4B-Instruct-2507                # one GPU
    torchrun --nproc_per_node=8 pope.py --model Qwen/Qwen3-4B-Instruct-2507   # one 8-GPU node

On a hard problem (the base model never answers correctly in many samples) on-policy RL gets no signal. POPE adds,
for each hard problem, a *guided* copy whose prompt holds a short prefix of an oracle solution and asks the model to
continue it. Both copies are trained on, each as its own group with its own baseline; the prefix is prompt, so it is
never a training target. What is learned from guided states transfers to the unguided problem. What differs from
GRPO is all here, before `grpo.train`:

    1. hard set       problems with 0 correct in --mine-k samples (--mine; the default data is already mined)
    2. prefixes       for each, the shortest of a few line-based prefixes of its oracle solution (up to 25%) whose
                      guided prompt gets >= 1 correct answer in --prefix-k samples  (data.find_prefixes)
    3. training set   --unguided-copies unguided + --guided-copies guided prompts per hard problem (1:1 default),
                      optionally --easy-data mixed in (the paper's "ray interference" experiment)
    4. train          grpo.train; rewards and solve rates are logged per kind (guided / unguided / easy), and every
                      --eval-every steps the unguided hard set's solvability (>= 1 correct in --eval-k samples)

Defaults follow the POPE authors' PipelineRL config (spec/algorithms.md §2.8; read from their code, not confirmed as
the paper's final runs): group 8, 32 prompts per step, lr 1e-6 decayed by a cosine with no warmup, AdamW weight
decay 0.01, grad-norm clip 0.3, temperature 0.8, advantages r - mean (no std), no KL, entropy 1e-4, loss summed over
tokens / sequences per step, 16k-token responses, and their eval sampler (T 0.8, top-p 0.95, top-k 50) for the
solvability eval, as in evaluate.py. Two are this project's: clip 0.2/0.2 (the authors' loose [-3, 5] clip suits
their asynchronous trainer; this one is synchronous) and the prefix search's k = 16 (the paper's value was not
published).

Deliberately left out: asynchronous (PipelineRL-style) rollouts, importance weighting between guided and unguided
contexts (the authors apply none), and generating oracle solutions (the hard set ships verified ones).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import data
import grpo
import reward
from data import GUIDED_TEMPLATES  # by name: the `data` field shadows the module inside PopeConfig
from grpo import opt


@dataclass
class PopeConfig(grpo.Config):
    model: str = opt("", "HF model id or folder; empty = the CPU toy world (its flags: python toy.py --help)")
    data: str = opt("pope-hard", "hard problems with oracle solutions: a name in data.DATASETS (pope-hard = the "
                    "authors' set for Qwen3-4B-Instruct-2507 with verified Gemini solutions) or a .jsonl/.parquet "
                    "file with problem, answer, solution")
    data_limit: int = opt(0, "use only the first N problems (0 = all)")
    out_dir: str = opt("runs/pope", "metrics, samples, checkpoints, and the mining / prefix caches")
    # the authors' RL settings (PipelineRL conf, spec §2.8)
    prompts_per_step: int = opt(32, "prompts per step over all ranks (POPE: 32)")
    group_size: int = opt(8, "samples per prompt (POPE: 8)")
    temperature: float = opt(0.8, "sampling temperature, also applied to trainer logits (POPE: 0.8)")
    max_new_tokens: int = opt(16384, "response budget (POPE: 16k)")
    max_model_len: int = opt(20000, "vLLM context (POPE trainer seq_length: 20k)")
    lr: float = opt(1e-6, "AdamW learning rate (POPE: 1e-6)")
    lr_schedule: str = opt("cosine", "constant, or cosine from --lr to 0 over --steps (POPE: cosine, no warmup)",
                           choices=["constant", "cosine"])
    weight_decay: float = opt(0.01, "AdamW weight decay (POPE: 0.01)")
    max_grad_norm: float = opt(0.3, "gradient-norm clip (POPE: 0.3)")
    adv_std_norm: bool = opt(False, "divide advantages by the group std (POPE: off, r - mean only)")
    loss_agg: str = opt("sum", "token-loss aggregation (POPE: sum over tokens / sequences per step)",
                        choices=["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "sum"])
    entropy_coef: float = opt(1e-4, "entropy bonus (POPE: 1e-4)")
    grad_checkpointing: bool = opt(True, "recompute decoder layers in backward (16k-token responses)")
    micro_batch_size: int = opt(2, "sequences per forward/backward on each rank (2 x 20k tokens of activations)")
    eval_every: int = opt(10, "every N steps, the unguided hard set's solvability (>= 1 correct in --eval-k)")
    eval_k: int = opt(8, "samples per hard problem for solvability (POPE blog, Figure 2: pass@8)")
    eval_limit: int = opt(256, "hard problems in the solvability eval (0 = all)")
    eval_top_p: float = opt(0.95, "nucleus sampling of the solvability eval (POPE's eval sampler, as evaluate.py)")
    eval_top_k: int = opt(50, "top-k sampling of the solvability eval (POPE's eval sampler, as evaluate.py)")
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
    guided_template: str = opt("continue", "guided prompt: 'continue' (template (a), spec §2.5) or the 'no-restate' "
                               "ablation", choices=sorted(GUIDED_TEMPLATES))
    guided_copies: int = opt(1, "guided prompts per hard problem in the training set (POPE: 1:1 with unguided)")
    unguided_copies: int = opt(1, "unguided prompts per hard problem in the training set")
    easy_data: str = opt("", "optional easier problems mixed in as kind 'easy' (the hard+easy interference runs)")
    easy_limit: int = opt(0, "use only the first N easy problems (0 = all)")


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
    for p in easy:
        prompt = data.make_prompt(tokenizer, p, cfg.system_prompt)
        prompt.kind = "easy"
        prompts.append(prompt)
    return prompts


def run(cfg: PopeConfig, reward_fn=reward.prompt_reward, engine=None) -> list[dict]:
    """Hard set -> minimal prefixes -> guided + unguided training set -> GRPO."""
    grpo.check_model_path(cfg.model)
    from transformers import AutoTokenizer

    rank, world, _ = grpo.init_distributed()
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    problems = data.load_problems(cfg.data, limit=cfg.data_limit or None)
    engine = engine or grpo.make_engine(cfg, world)  # the base model samples for the offline stages, then trains

    hard = problems
    if cfg.mine:
        hard = data.mine_hard(engine, tokenizer, problems, reward_fn,
                              cache_path(cfg, "mining", cfg.mine_k, cfg.mine_max_tokens, cfg.temperature),
                              k=cfg.mine_k, temperature=cfg.temperature, max_tokens=cfg.mine_max_tokens,
                              seed=cfg.seed, system_prompt=cfg.system_prompt, rank=rank, world=world)
    prefixes = data.find_prefixes(
        engine, tokenizer, hard, reward_fn,
        cache_path(cfg, "prefixes", cfg.prefix_k, cfg.prefix_max_tokens, cfg.temperature, cfg.prefix_max_fraction,
                   cfg.prefix_candidates, cfg.guided_template, cfg.prefix_fallback),
        k=cfg.prefix_k, temperature=cfg.temperature, max_tokens=cfg.prefix_max_tokens,
        max_fraction=cfg.prefix_max_fraction, n_candidates=cfg.prefix_candidates, template=cfg.guided_template,
        fallback=cfg.prefix_fallback, seed=cfg.seed, system_prompt=cfg.system_prompt, rank=rank, world=world)
    easy = data.load_problems(cfg.easy_data, limit=cfg.easy_limit or None) if cfg.easy_data else []
    prompts = training_set(tokenizer, hard, prefixes, cfg, easy)
    eval_prompts = [data.make_prompt(tokenizer, p, cfg.system_prompt) for p in hard[:cfg.eval_limit or None]]
    if rank == 0:
        found = [row for row in prefixes.values() if row["prefix"]]
        print(f"pope: {len(problems)} problems, {len(hard)} hard, {len(found)} with a guiding prefix "
              f"({sum(row['solvable'] for row in found)} solvable with it, mean {sum(row['lines'] for row in found) / max(len(found), 1):.1f} "
              f"lines); training on {len(prompts)} prompts, solvability eval on {len(eval_prompts)}")
    if not prompts:
        raise grpo.ConfigError(f"{cfg.data}: no training prompts (no hard problems left after mining?)")
    return grpo.train(cfg, prompts, reward_fn, eval_prompts, engine=engine)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="")
    given, _ = pre.parse_known_args(argv)
    if not given.model and not {"-h", "--help"} & set(argv):  # no model: the toy world, with toy.py's flags
        import toy

        toy.main(argv)
        return
    cfg = grpo.parse_config(PopeConfig, argv)
    try:
        run(cfg)
    except (grpo.ConfigError, data.DataError) as e:
        raise SystemExit(f"error: {e}") from None
    grpo.shutdown()


if __name__ == "__main__":
    main()
