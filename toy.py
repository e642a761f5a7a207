r"""The toy world: a synthetic task family with oracle solutions, and a tiny Qwen3 "base model" warm-started on it.

Everything here runs offline on a CPU (the warm-start's target is about two minutes; not yet reached), and produces real Hugging Face folders that both
`transformers` and vLLM load, so the trainer's GPU code path is the one exercised on a laptop.

The task ("digit registers"). Four registers a, b, c, d hold one digit each; the problem lists k distinct
operations such as `c+9` ("add 9 to register c, mod 10, no carry"); the answer is the final state. The oracle
solution writes one line per operation with the state after it, then the boxed answer:

    >>> import random
    >>> p = make_problem(random.Random(0), steps=3)
    >>> print(p.problem)
    Registers start at a6 b6 c0 d4. Apply in order, each mod 10: d+6, d+5, c+8. What are the registers at the end?
    >>> print(p.solution)
    d+6: a6 b6 c0 d0
    d+5: a6 b6 c0 d5
    c+8: a6 b6 c8 d5
    \boxed{a6 b6 c8 d5}
    >>> toy_reward("c+8: a6 b6 c8 d5\n\\boxed{a6 b6 c8 d5}", data.Prompt(p, []))
    1.0

Why this family (the toy must reproduce POPE's exploration bottleneck, see ../shared/spec/algorithms.md §2):
- Every step is the same easy, local skill (copy the op, update one digit), so a k-step problem is solved only if all
  k lines are right: with per-line accuracy p at temperature 1 the success rate is about p^k. Short problems (the
  "easy" split) are solved often; long ones (the "hard" split, same family) essentially never -- pass@k is measured,
  not assumed (`python toy.py measure`).
- A wrong line is never repaired later (each op touches one digit), and the answer space has 10^4 values, so a
  wrong chain almost never lands on the gold answer by luck (mod-10 of a single number would give
  10% free hits). Each digit is written with its register's label, so an unchanged digit is copied by matching its label (an induction lookup a tiny model learns quickly).
- An oracle prefix of m lines leaves only k-m lines to compute, so a guided prompt is solvable where the unguided
  one is not; and because the warm-start teaches the model to *restate* the given lines and continue (the target of a
  guided example is the whole oracle solution), guided rollouts visit the same states ("lines 1..j written, next op")
  as unguided ones. What RL sharpens there (per-line accuracy) is the same skill the unguided problem needs.
- Operations in one problem are distinct, so "which op comes next" is an induction lookup (find the op of the
  previous line in the problem, take the one after it) that does not depend on the chain length.

The base model: `make_tokenizer` (byte-level BPE trained on the toy corpus, digits split one per token so numbers
tokenise regularly), a tiny Qwen3 (untied embeddings, head_dim 32: vLLM-CPU constraints, ../shared/spec/cpu-stack.md),
and `warm_start`: a short supervised fine-tune on EASY problems only (unguided, guided with the "continue" template
whose target restates the prefix, and a few guided with the "no-restate" template whose target is the rest only, so
the POPE ablation has an instruction the base model follows). `build_base_model(out_dir, seed)` does all three and
caches the folder. Deliberately left out: a math verifier (the reward is exact match of the last \boxed{}), and any
warm-start on hard problems (the hard split's pass@k must be zero for the base model).

`make_tiny_model(out_dir)` (the random tiny Qwen3 the unit tests use) is kept: a random model + a small tokenizer.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

import data

# Qwen's chat format without the tool-calling branches: <|im_start|>role\ncontent<|im_end|>\n ...
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(corpus: list[str], vocab_size: int = 384, split_digits: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus` (any text still encodes, byte by byte). EOS is <|im_end|>.

    `split_digits=True` makes every digit its own token (no "77" merges), so numbers tokenise the same way everywhere.
    """
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE,
                                   padding_side="left")


DEFAULT_CORPUS = [
    "What is 1/2 + 1/4? The answer is \\boxed{3/4}.",
    "Solve x^2 = 4, so x = \\pm 2.",
    "system user assistant Please reason step by step, and put your final answer within \\boxed{}.",
    "0123456789 +-*/=()[]{}^_.,:;!? \\frac{\\sqrt{3}}{2}",
] * 10


def _qwen3_config(tok: PreTrainedTokenizerFast, hidden_size: int, num_layers: int, max_positions: int,
                  intermediate_size: int | None = None, num_heads: int = 4, num_kv_heads: int = 2) -> Qwen3Config:
    return Qwen3Config(vocab_size=len(tok), hidden_size=hidden_size,
                       intermediate_size=intermediate_size or 2 * hidden_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                       head_dim=32,  # vLLM's CPU attention supports head_dim in {32, 64, ...} only
                       max_position_embeddings=max_positions, tie_word_embeddings=False,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)


def make_tiny_model(out_dir: str, seed: int = 0, corpus: list[str] | None = None, vocab_size: int = 384,
                    hidden_size: int = 64, num_layers: int = 2, max_positions: int = 1024) -> str:
    """Build a random tiny Qwen3 + tokenizer and save both to `out_dir`; returns `out_dir`."""
    tok = make_tokenizer(corpus or DEFAULT_CORPUS, vocab_size)
    cfg = _qwen3_config(tok, hidden_size, num_layers, max_positions)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# The task family
# ---------------------------------------------------------------------------------------------------------------

REGISTERS = "abcd"  # the state's digits, in order; 4 digits -> 10^4 answers, so lucky guesses are ~1e-4


def show(state: str) -> str:
    """`show("3705") == "a3 b7 c0 d5"`: the state with each digit labelled by its register (how lines write it; the
    labels let the model copy an unchanged digit by matching its label, and make answers 4 independent digits)."""
    return " ".join(f"{r}{v}" for r, v in zip(REGISTERS, state))


def apply_op(state: str, op: str) -> str:
    """`apply_op("3705", "c+9") == "3795"`: add the op's digit to one register, mod 10 (no carry)."""
    i = REGISTERS.index(op[0])
    return state[:i] + str((int(state[i]) + int(op[2])) % 10) + state[i + 1:]


def make_problem(rng: random.Random, steps: int, pid: str = "") -> data.Problem:
    """One problem with `steps` distinct operations, its gold answer and its line-by-line oracle solution."""
    all_ops = [f"{r}+{d}" for r in REGISTERS for d in range(1, 10)]  # 36 ops; distinct within a problem
    if not 1 <= steps <= len(all_ops):
        raise ValueError(f"steps must be in 1..{len(all_ops)}, got {steps}")
    state = "".join(str(rng.randrange(10)) for _ in REGISTERS)
    ops = rng.sample(all_ops, steps)
    text = (f"Registers start at {show(state)}. Apply in order, each mod 10: {', '.join(ops)}. "
            f"What are the registers at the end?")
    lines = []
    for op in ops:
        state = apply_op(state, op)
        lines.append(f"{op}: {show(state)}")
    lines.append(f"\\boxed{{{show(state)}}}")
    return data.Problem(id=pid or f"toy-{steps}-{'-'.join(ops)}", problem=text, answer=show(state),
                        solution="\n".join(lines))


def make_split(n: int, min_steps: int, max_steps: int, seed: int = 0, name: str = "toy") -> list[data.Problem]:
    """`n` problems with a step count drawn uniformly from [min_steps, max_steps]; deterministic for `seed`."""
    rng = random.Random(f"{name}-{seed}")  # string seeds: different splits never share a random stream
    return [make_problem(rng, rng.randint(min_steps, max_steps), pid=f"{name}-{seed}-{i}") for i in range(n)]


# Difficulty knob defaults, PROVISIONAL (not yet measured on a converged warm-start): the intent is that the base model
# solves 1-4 step problems often and 10-12 step problems never; re-pick HARD_STEPS from `python toy.py measure`.
EASY_STEPS = (1, 4)
HARD_STEPS = (10, 12)


def easy_split(n: int = 64, seed: int = 0, steps: tuple[int, int] = EASY_STEPS) -> list[data.Problem]:
    """Short problems: the warm-start trains on these (with other seeds), the base model solves them."""
    return make_split(n, *steps, seed=seed, name="easy")


def hard_split(n: int = 48, seed: int = 0, steps: tuple[int, int] = HARD_STEPS) -> list[data.Problem]:
    """Long problems of the same family: the base model's unguided pass@k on them is zero (measured)."""
    return make_split(n, *steps, seed=seed, name="hard")


def solution_lines(problem: data.Problem) -> list[str]:
    """The oracle solution's lines (POPE cuts its guiding prefixes on line boundaries, spec §2.4)."""
    if not problem.solution:
        raise ValueError(f"problem {problem.id} has no oracle solution")
    return problem.solution.split("\n")


def oracle_prefix(problem: data.Problem, m: int) -> str:
    """The first `m` lines of the oracle solution, as the guided prompt's "Partial Response"."""
    return "\n".join(solution_lines(problem)[:m])


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (no nested braces: toy answers are digits), or None."""
    found = _BOXED.findall(text)
    return found[-1] if found else None


def toy_reward(text: str, prompt: data.Prompt) -> float:
    """1.0 iff the last \\boxed{} in `text` equals the gold answer after removing spaces; else 0.0."""
    got = last_boxed(text)
    return float(got is not None and got.replace(" ", "") == prompt.problem.answer.replace(" ", ""))


# ---------------------------------------------------------------------------------------------------------------
# The base model: tokenizer on the toy corpus, tiny Qwen3, supervised warm-start on easy problems
# ---------------------------------------------------------------------------------------------------------------

def toy_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Text for the tokenizer: problems, solutions, the system prompt and both guided templates."""
    texts = [data.DEFAULT_SYSTEM_PROMPT, "system user assistant"]
    for i, p in enumerate(make_split(n, 1, 16, seed=seed, name="corpus")):
        texts += [p.problem, p.solution]
        if i < 20:
            texts += [data.guided_text(p, oracle_prefix(p, 2), t) for t in data.GUIDED_TEMPLATES]
    return texts


def warm_start_examples(problems: list[data.Problem], tok, seed: int = 0, guided_frac: float = 0.5,
                        no_restate_frac: float = 0.15) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, target_ids) pairs. A problem becomes, with probability `guided_frac`, a guided example with a
    random m-line oracle prefix (m in 1..k): target = the WHOLE solution (restate, then continue); with probability
    `no_restate_frac` of those, the "no-restate" template and target = the remaining lines only. Else unguided."""
    rng = random.Random(f"warm-{seed}")
    out = []
    for p in problems:
        lines = solution_lines(p)
        steps = len(lines) - 1
        if rng.random() < guided_frac:
            m = rng.randint(1, steps)
            template = "no-restate" if rng.random() < no_restate_frac else "continue"
            prompt = data.make_guided_prompt(tok, p, oracle_prefix(p, m), template=template)
            target = "\n".join(lines[m:]) if template == "no-restate" else p.solution
        else:
            prompt = data.make_prompt(tok, p)
            target = p.solution
        out.append((prompt.prompt_ids, tok.encode(target, add_special_tokens=False) + [tok.eos_token_id]))
    return out


def warm_start(model: Qwen3ForCausalLM, examples: list[tuple[list[int], list[int]]], steps: int = 600,
               batch_size: int = 32, lr: float = 3e-3, warmup: int = 30, weight_decay: float = 0.01,
               seed: int = 0, log_every: int = 50, bucket: bool = True, long_prompt: int = 150) -> list[float]:
    """Plain supervised fine-tuning, fp32 on CPU: cross-entropy on target tokens only (prompt tokens masked),
    AdamW with linear warm-up then cosine decay, grad-norm clip 1.0. Returns the loss per step.

    `bucket`: alternate batches of short prompts (unguided, ~80 tokens) and long ones (guided: the "continue" template
    alone is ~200 tokens), split at `long_prompt` tokens, so short examples are not padded to guided length."""
    torch.manual_seed(seed)
    rng = random.Random(f"batches-{seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    pad = model.config.pad_token_id
    model.train()
    losses, t0 = [], time.time()
    for step in range(steps):
        batch = rng.sample(examples, batch_size)
        if bucket:  # a batch of only long (guided) or only short (unguided) examples: less padding, ~2x faster
            long_batch = step % 2 == 1
            batch = [e for e in rng.sample(examples, 3 * batch_size)
                     if (len(e[0]) > long_prompt) == long_batch][:batch_size]
        length = max(len(p) + len(t) for p, t in batch)
        ids = torch.full((len(batch), length), pad, dtype=torch.long)
        labels = torch.full((len(batch), length), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, (p, t) in enumerate(batch):  # right padding: positions start at 0 for every row
            seq = p + t
            ids[row, :len(seq)] = torch.tensor(seq)
            labels[row, len(p):len(seq)] = torch.tensor(t)
            mask[row, :len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"warm-start step {step:4d}  loss {loss.item():.4f}  {time.time() - t0:.0f}s", flush=True)
    model.eval()
    return losses


def build_base_model(out_dir: str, seed: int = 0, *, n_train: int = 20_000, train_steps: tuple[int, int] = EASY_STEPS,
                     steps: int = 600, batch_size: int = 32, lr: float = 3e-3, guided_frac: float = 0.5,
                     no_restate_frac: float = 0.15, vocab_size: int = 640, hidden_size: int = 128,
                     num_layers: int = 4, max_positions: int = 1024, force: bool = False,
                     log_every: int = 50) -> str:
    """Build (or reuse) the toy base model in `out_dir`: tokenizer + tiny Qwen3 + warm-start on easy problems.

    Deterministic for a given `seed` and settings; the settings are written to `out_dir/toy_build.json`, and a folder
    whose file matches is reused as is (pass `force=True` to rebuild). Returns `out_dir`.
    """
    settings = dict(seed=seed, n_train=n_train, train_steps=list(train_steps), steps=steps, batch_size=batch_size,
                    lr=lr, guided_frac=guided_frac, no_restate_frac=no_restate_frac, vocab_size=vocab_size,
                    hidden_size=hidden_size, num_layers=num_layers, max_positions=max_positions, version=1)
    marker = Path(out_dir) / "toy_build.json"
    if not force and marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return out_dir
    t0 = time.time()
    tok = make_tokenizer(toy_corpus(seed=seed), vocab_size, split_digits=True)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(_qwen3_config(tok, hidden_size, num_layers, max_positions))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    train = make_split(n_train, *train_steps, seed=seed, name="warm")  # never the eval splits' names
    examples = warm_start_examples(train, tok, seed=seed, guided_frac=guided_frac, no_restate_frac=no_restate_frac)
    losses = warm_start(model, examples, steps=steps, batch_size=batch_size, lr=lr, seed=seed, log_every=log_every)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    marker.write_text(json.dumps(dict(settings=settings, n_params=n_params, final_loss=sum(losses[-20:]) / 20,
                                      seconds=round(time.time() - t0, 1)), indent=1))
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Measurement with vLLM: pass@k of the base model, unguided and guided
# ---------------------------------------------------------------------------------------------------------------

def measure(model_dir: str, n: int = 32, ks: tuple[int, ...] = (8, 32), n_easy: int = 32, n_hard: int = 32,
            prefix_lines: tuple[int, ...] = (2, 4, 6, 8), temperature: float = 1.0, seed: int = 1) -> dict:
    """Print and return the base model's pass@k: easy unguided, hard unguided, hard guided by prefix length."""
    import evaluate  # imported here: vLLM is only needed for measuring
    import reward
    from rollout import Engine

    tok = AutoTokenizer.from_pretrained(model_dir)
    engine = Engine(model_dir, dtype="float32", max_model_len=1024, seed=seed)
    easy, hard = easy_split(n_easy, seed=seed), hard_split(n_hard, seed=seed)
    rows = {}

    def report(name: str, prompts: list[data.Prompt]) -> None:
        t0 = time.time()
        scores = evaluate.sample_scores(engine, reward.RewardPool(0), toy_reward, prompts, n, temperature,
                                        max_tokens=200, seed=seed)  # [P, n]
        c = [int(ci) for ci in (scores > 0).sum(1)]
        row = {f"pass@{k}": sum(evaluate.pass_at_k(n, ci, k) for ci in c) / len(c) for k in ks}
        row["solved"] = f"{sum(ci > 0 for ci in c)}/{len(c)}"
        row["correct_counts"] = c
        rows[name] = row
        print(f"{name:28s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("pass@"))
              + f"  solved {row['solved']}  ({time.time() - t0:.0f}s)", flush=True)

    report("easy unguided", [data.make_prompt(tok, p) for p in easy])
    report("hard unguided", [data.make_prompt(tok, p) for p in hard])
    for m in prefix_lines:
        report(f"hard guided m={m}", [data.make_guided_prompt(tok, p, oracle_prefix(p, m)) for p in hard])
    for m in prefix_lines:
        report(f"hard guided no-restate m={m}",
               [data.make_guided_prompt(tok, p, oracle_prefix(p, m), template="no-restate") for p in hard])
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The comparison: `python pope.py` with no --model runs this
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class ToyConfig:
    out_dir: str = field(default="runs/toy", metadata=dict(help="base model, arms' runs, summary JSON and the PNG"))
    seed: int = field(default=0, metadata=dict(help="seeds the problems, the base model and every arm"))
    warm_steps: int = field(default=800, metadata=dict(help="supervised warm-start steps of the base model"))
    n_hard: int = field(default=32, metadata=dict(help="hard problems: the training set, and the set whose "
                                                       "unguided solvability is measured"))
    arms: str = field(default="grpo,grpo-entropy,grpo-clip-higher,pope",
                      metadata=dict(help="comma-separated arms, each from the same base model and seed"))
    steps: int = field(default=20, metadata=dict(help="training steps per arm"))
    prompts_per_step: int = field(default=16, metadata=dict(help="prompts per step (POPE: guided and unguided)"))
    group_size: int = field(default=8, metadata=dict(help="samples per prompt"))
    minibatches: int = field(default=2, metadata=dict(help="optimizer steps per rollout batch (2: the clip acts)"))
    lr: float = field(default=1e-3, metadata=dict(help="AdamW learning rate of every arm"))
    max_new_tokens: int = field(default=200, metadata=dict(help="response budget (a 12-step solution is ~170)"))
    entropy_coef: float = field(default=1e-2, metadata=dict(help="entropy bonus of the grpo-entropy arm"))
    eps_high: float = field(default=0.28, metadata=dict(help="upper clip of the grpo-clip-higher arm (DAPO)"))
    prefix_k: int = field(default=8, metadata=dict(help="samples per guided candidate in POPE's prefix search"))
    prefix_max_fraction: float = field(default=0.5, metadata=dict(help="longest guiding prefix, fraction of lines"))
    eval_every: int = field(default=5, metadata=dict(help="unguided hard-set solvability every N steps"))
    eval_k: int = field(default=8, metadata=dict(help="solvable = >= 1 correct in k samples (POPE: pass@8)"))
    final_n: int = field(default=32, metadata=dict(help="samples per hard problem for each arm's final pass@k"))


def arm_config(cfg: ToyConfig, base_dir: str, arm: str):
    """The GRPO config of one arm: all share everything but the arm's own knob."""
    import grpo

    common = dict(model=base_dir, out_dir=str(Path(cfg.out_dir) / arm), steps=cfg.steps, seed=cfg.seed,
                  prompts_per_step=cfg.prompts_per_step, group_size=cfg.group_size, minibatches=cfg.minibatches,
                  temperature=1.0, max_new_tokens=cfg.max_new_tokens, max_model_len=1024, lr=cfg.lr,
                  adv_std_norm=False, micro_batch_size=64, log_samples=1, eval_every=cfg.eval_every,
                  eval_k=cfg.eval_k)
    own = {"grpo": {}, "grpo-entropy": {"entropy_coef": cfg.entropy_coef}, "grpo-clip-higher": {"eps_high": cfg.eps_high},
           "pope": {}}
    if arm not in own:
        raise ValueError(f"unknown arm {arm!r}; choose from {sorted(own)}")
    return grpo.Config(**common, **own[arm])


def run_comparison(cfg: ToyConfig) -> dict:
    """Build the base model, then train every arm from it and measure unguided hard-set solvability and pass@k."""
    import evaluate  # imported here: the task family and the model builder need no vLLM
    import grpo
    import reward

    out = Path(cfg.out_dir)
    t0 = time.time()
    base_dir = build_base_model(str(out / "base-model"), seed=cfg.seed, steps=cfg.warm_steps, batch_size=16, lr=2e-3)
    print(f"toy: base model ready in {time.time() - t0:.0f} s", flush=True)
    tok = AutoTokenizer.from_pretrained(base_dir)
    hard = hard_split(cfg.n_hard, seed=cfg.seed)
    unguided = [data.make_prompt(tok, p) for p in hard]
    engine = grpo.make_engine(arm_config(cfg, base_dir, "grpo"), world=1)
    pool = reward.RewardPool(0)
    ks = evaluate.powers_of_two(cfg.final_n)

    def pass_curve() -> dict[str, float]:  # the engine's current weights, unguided hard problems
        scores = evaluate.sample_scores(engine, pool, toy_reward, unguided, cfg.final_n, 1.0, cfg.max_new_tokens,
                                        seed=cfg.seed + 7)
        c = (scores > 0).sum(1)
        return {f"pass@{k}": float(sum(evaluate.pass_at_k(cfg.final_n, int(ci), k) for ci in c) / len(c)) for k in ks}

    results = {"base": {"final": pass_curve(), "curve": []}}
    print(f"toy: base model, unguided hard set: {results['base']['final']}", flush=True)
    for arm in cfg.arms.split(","):
        acfg = arm_config(cfg, base_dir, arm)
        prompts = list(unguided)
        if arm == "pope":
            import pope

            prefixes = data.find_prefixes(engine, tok, hard, toy_reward, out / "cache" / "prefixes.jsonl",
                                          k=cfg.prefix_k, temperature=1.0, max_tokens=cfg.max_new_tokens,
                                          max_fraction=cfg.prefix_max_fraction, seed=cfg.seed)
            solvable = sum(row["solvable"] for row in prefixes.values())
            print(f"toy: POPE prefixes: {solvable}/{len(hard)} hard problems solvable with a guiding prefix "
                  f"(mean {sum(r['lines'] for r in prefixes.values()) / max(len(prefixes), 1):.1f} lines)", flush=True)
            prompts = pope.training_set(tok, hard, prefixes, pope.PopeConfig())
        t = time.time()
        history = grpo.train(acfg, prompts, toy_reward, eval_prompts=unguided, engine=engine)
        results[arm] = {"final": pass_curve(), "seconds": round(time.time() - t, 1),
                        "curve": [(h["step"], h[f"eval_solvable_at_{cfg.eval_k}"]) for h in history
                                  if f"eval_solvable_at_{cfg.eval_k}" in h]}
        print(f"toy: {arm}: unguided hard set after {cfg.steps} steps: {results[arm]['final']} "
              f"({results[arm]['seconds']:.0f} s)", flush=True)
    pool.close()
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    print_summary(results, ks)
    plot_comparison(results, cfg, out / "toy_comparison.png")
    print(f"toy: total {time.time() - t0:.0f} s; summary {out / 'summary.json'}, plot {out / 'toy_comparison.png'}")
    return results


def print_summary(results: dict, ks: list[int]) -> None:
    print(f"\n{'unguided hard set':<20}" + "".join(f"{f'pass@{k}':>9}" for k in ks))
    for arm, r in results.items():
        print(f"{arm:<20}" + "".join(f"{r['final'][f'pass@{k}']:>9.3f}" for k in ks))


def plot_comparison(results: dict, cfg: ToyConfig, path: Path) -> None:
    """Left: unguided hard-set solvability during training, per arm. Right: each arm's final pass@k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    base = results["base"]["final"][f"pass@{cfg.eval_k}"]
    for arm, r in results.items():
        if arm == "base":
            continue
        steps, values = zip(*([(0, base)] + [(s + 1, v) for s, v in r["curve"]]))
        left.plot(steps, values, marker="o", label=arm)
        ks = [int(k.split("@")[1]) for k in r["final"]]
        right.plot(ks, list(r["final"].values()), marker="o", label=arm)
    ks = [int(k.split("@")[1]) for k in results["base"]["final"]]
    right.plot(ks, list(results["base"]["final"].values()), "k--", label="base model")
    left.set(xlabel="training step", ylabel=f"solvable (>= 1 of {cfg.eval_k} correct)", ylim=(-0.02, 1.02),
             title="unguided hard problems, during training")
    right.set(xscale="log", xlabel="k", ylabel="pass@k", ylim=(-0.02, 1.02), title="unguided hard problems, at the end")
    right.set_xticks(ks, [str(k) for k in ks])
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    """`python pope.py` (no --model) and `python toy.py`: the side-by-side comparison."""
    import grpo

    run_comparison(grpo.parse_config(ToyConfig, argv))


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] in ("build", "measure"):
        out = sys.argv[2] if len(sys.argv) > 2 else "runs/toy-base"
        build_base_model(out)
        if sys.argv[1] == "measure":
            measure(out)
    else:
        main()
