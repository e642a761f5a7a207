"""Datasets and prompts: typed problem records, strict loaders, and the chat-templated prompts the trainer samples.

    problems = load_jsonl("train.jsonl")              # each row: {"problem": ..., "answer": ...}; optional "solution", "id"
    prompts = [make_prompt(tok, p) for p in problems]   # unguided: the bare problem as the user turn
    prompts[0].prompt_ids                                # token ids for vLLM and the trainer

A `Prompt` is what the trainer samples a group of completions for; a POPE guided copy is a second `Prompt` of the same
`Problem`, with `kind="guided"` and the oracle prefix inside its user turn (so it is prompt, never a training target).

Bad input fails loudly: a row that is not JSON, or lacks a field, raises `DataError` naming the file, the line and the
field; an empty file is an error too. Nothing is dropped silently. `check_gold` finds gold answers the reward checker
cannot score (a problem no response could ever earn reward on) and stops the run or drops them, saying which.

Left out: deduplication, problem-text checks, and any judgement of whether a gold answer is right.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import reward
from common import DataError

# The system prompt of the POPE authors' PipelineRL config (conf/pope.yaml: actor.system_prompt), used for guided and
# unguided prompts alike so that the two differ only by the guidance (docs/algorithms.md §2.5).
DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class Problem:
    """One math problem as a dataset stores it."""

    id: str
    problem: str
    answer: str  # the gold answer, bare LaTeX or plain text (as the reward checker expects it)
    solution: str | None = None  # an oracle solution (human or verified strong-model), for POPE's guiding prefixes


@dataclass
class Prompt:
    """A problem rendered for the model: what one group of rollouts is sampled from."""

    problem: Problem
    prompt_ids: list[int]
    kind: str = "unguided"  # "unguided" | "guided" (POPE) | any tag the caller wants rewards logged under
    prefix: str = ""  # the oracle prefix inside a guided prompt (empty for unguided)


def load_jsonl(path: str | Path, problem_key: str = "problem", answer_key: str = "answer",
               solution_key: str = "solution", id_key: str = "id") -> list[Problem]:
    """Read a JSONL file of problems. `*_key` map the file's column names onto the record's fields.

    `problem` and `answer` are required (non-empty); `solution` and `id` are optional (id defaults to "file:line").
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    problems = [problem_from_row(row, f"{path}:{line_no}", problem_key, answer_key, solution_key, id_key,
                                 default_id=f"{path.name}:{line_no}") for line_no, row in read_jsonl(path)]
    if not problems:
        raise DataError(f"{path}: the file holds no rows")
    return problems


def read_jsonl(path: str | Path):
    """Yield (line number, object) for each non-blank line; a line that is not a JSON object raises `DataError`
    naming the file and the line."""
    with Path(path).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def problem_from_row(row: dict, where: str, problem_key: str = "problem", answer_key: str = "answer",
                     solution_key: str = "solution", id_key: str = "id", default_id: str = "") -> Problem:
    """Turn one row into a `Problem`, or raise `DataError` naming `where` and the missing or empty column.
    Keys may be dotted paths into nested fields (see `get_field`)."""
    for key in (problem_key, answer_key):
        value = get_field(row, key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{where}: field '{key}' is missing or empty (row keys: {sorted(row)})")
    solution = get_field(row, solution_key)
    return Problem(id=str(get_field(row, id_key) or default_id), problem=str(get_field(row, problem_key)),
                   answer=str(get_field(row, answer_key)), solution=str(solution) if solution else None)


# Datasets by name: where they live on the Hugging Face Hub and which columns hold problem / answer / solution.
# Columns and splits are from the dataset cards and the POPE/RAPO authors' loaders (docs/algorithms.md §2.3, §2.9,
# §3.7); a dotted column ("prompt.0.content") walks into nested fields. `keep` filters rows (Omni-MATH levels 5-8,
# the POPE blog's hard pool).
DATASETS = {
    "omni-math": dict(path="KbsdJames/Omni-MATH", split="test", solution="solution",
                      keep=lambda row: 5 <= float(row.get("difficulty") or 0) <= 8),
    "dapo-math-17k": dict(path="BytedTsinghua-SIA/DAPO-Math-17k", split="train", problem="prompt.0.content",
                          answer="reward_model.ground_truth"),
    "acereason-math": dict(path="nvidia/AceReason-Math", split="train"),
    # the POPE authors' hard set, with verified Gemini solutions as oracles (violetxi/ExpRL loaders)
    "pope-hard": dict(path="CohenQu/POPE-hard-dataset-Qwen3-4B-Instruct-32k-128-filtered-iter3-gemini-success",
                      split="test", solution="gemini_solution"),
    "aime-2024": dict(path="HuggingFaceH4/aime_2024", split="train", solution="solution"),
    "aime-2025": dict(path="MathArena/aime_2025", split="train"),
    "hmmt-feb-2025": dict(path="MathArena/hmmt_feb_2025", split="train"),
    "simplerl-zoo": dict(path="hkust-nlp/SimpleRL-Zoo-Data", split="train", problem="question", answer="gt_answer",
                         data_files="simplelr_qwen_level3to5/train.parquet"),
}


def get_field(row: dict, dotted: str):
    """row["a"]["0"]["b"] for "a.0.b" (integers index lists); None when any step is missing."""
    value = row
    for key in dotted.split("."):
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return None
    return value


def load_problems(source: str, split: str | None = None, problem: str = "problem", answer: str = "answer",
                  solution: str = "solution", id: str = "id", limit: int | None = None,
                  strict: bool | None = None, bad_gold: str = "stop") -> list[Problem]:
    """Problems from a dataset name in `DATASETS`, a local .jsonl / .parquet file, or any Hub id.

    Column names map the source onto `Problem` (a name in `DATASETS` brings its own). A row without problem or
    answer raises `DataError` naming the file/row and field when `strict` (the default for local files); otherwise
    (the default for Hub datasets) such rows are skipped and reported by count with an example id, never silently.
    Every gold answer is then checked (`check_gold`): one the reward cannot be earned on stops the load, or with
    `bad_gold="drop"` is dropped with a warning.
    """
    spec = dict(DATASETS.get(source, {}))
    if source.endswith(".jsonl"):
        problems = load_jsonl(source, problem, answer, solution, id)
        return check_gold(problems[:limit], bad_gold, source)
    import datasets  # imported here: loading a local JSONL file needs no pyarrow

    keep = spec.pop("keep", None)
    problem, answer, solution = spec.pop("problem", problem), spec.pop("answer", answer), spec.pop("solution", solution)
    if source.endswith(".parquet"):
        if not Path(source).is_file():
            raise DataError(f"{source}: no such data file")
        rows = datasets.load_dataset("parquet", data_files=source, split="train")
        strict = True if strict is None else strict
    else:
        path = spec.pop("path", source)
        try:
            rows = datasets.load_dataset(path, split=split or spec.pop("split", "train"), **spec)
        except datasets.exceptions.DatasetNotFoundError:  # the Hub answered: no such (public) dataset
            raise DataError(f"{source}: not a .jsonl/.parquet file, not a name in data.DATASETS "
                            f"({', '.join(DATASETS)}), and no dataset {path} on the Hub (or a private or gated one: "
                            "log in with `hf auth login`); check the name or pass a local file") from None
        except ConnectionError:  # offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) or the Hub unreachable, uncached
            where = ("offline: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set" if datasets.config.HF_HUB_OFFLINE
                     else "the Hub was not reachable")
            what = f"the Hub dataset {path}" if source in DATASETS else (
                f"not a .jsonl/.parquet file, not a name in data.DATASETS ({', '.join(DATASETS)}), and the Hub "
                f"dataset {path}")
            raise DataError(f"{source}: {what} is not in the local Hugging Face cache ({where}); load it once where "
                            "the Hub is reachable (it is cached then) or pass a local .jsonl/.parquet file") from None
        strict = False if strict is None else strict
    problems, bad = [], []
    for i, row in enumerate(rows):
        if keep is not None and not keep(row):
            continue
        try:
            problems.append(problem_from_row(row, f"{source} row {i}", problem, answer, solution, id,
                                             default_id=f"{source}:{i}"))
        except DataError as e:
            if strict:
                raise
            bad.append(str(e))
        if limit and len(problems) >= limit:
            break
    if bad:
        print(f"warning: {source}: skipped {len(bad)} rows without a usable problem/answer, e.g. {bad[0]}")
    if not problems:
        raise DataError(f"{source}: no usable rows (columns used: problem={problem!r}, answer={answer!r})")
    return check_gold(problems, bad_gold, source)


BAD_GOLD_POLICIES = ("stop", "drop")
BAD_GOLD_EXAMPLES = 3  # problems named in the message


def check_gold(problems: list[Problem], policy: str = "stop", where: str = "") -> list[Problem]:
    """The problems whose gold answer the reward can be earned on; the others stop the run or are dropped, never
    trained on silently. Wiring: `problems = check_gold(problems, cfg.bad_gold)` with `--bad-gold stop|drop`.

    A gold passes when the answer it states (`reward.gold_answer`: the content of its box, of its `$...$`, or after
    "The answer is") scores 1.0 through `reward.math_reward` as the response `\\boxed{<that answer>}`. One that fails is
    reported with the count and up to BAD_GOLD_EXAMPLES examples, each with its `Problem.id` ("file:line" for a local
    file) and its gold: policy "stop" raises `DataError` with that one line; "drop" prints it as a warning and returns
    the other problems (in order). `where` names the source in the message (e.g. the data path). Costs ~1 ms a problem.
    """
    if policy not in BAD_GOLD_POLICIES:
        raise ValueError(f"unknown bad-gold policy {policy!r}; choose one of {BAD_GOLD_POLICIES}")
    kept, bad = [], []
    for problem in problems:
        (kept if _gold_scores_itself(problem.answer) else bad).append(problem)
    if not bad:
        return kept
    examples = "; ".join(f"{p.id}: {p.answer[:80]!r}" for p in bad[:BAD_GOLD_EXAMPLES])
    more = f" (and {len(bad) - BAD_GOLD_EXAMPLES} more)" if len(bad) > BAD_GOLD_EXAMPLES else ""
    source = f"{where}: " if where else ""
    message = (f"{source}{len(bad)} of {len(problems)} problems have a gold answer that scores 0 against itself boxed, "
               f"so no response could earn reward on them: {examples}{more}")
    if policy == "stop":
        raise DataError(message + " (--bad-gold drop skips them)")
    print(f"warning: {message}; dropped")
    return kept


def _gold_scores_itself(gold: str) -> bool:
    content = reward.gold_answer(gold)
    return bool(content.strip()) and reward.math_reward("\\boxed{" + content + "}", gold) == 1.0


def render(tokenizer, user_text: str, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    """Token ids of a chat with one user turn (and a system turn unless `system_prompt` is empty), ready for the
    assistant's answer: `<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n`."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": user_text}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def make_prompt(tokenizer, problem: Problem, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> Prompt:
    """The unguided prompt: the bare problem text as the user turn."""
    return Prompt(problem, render(tokenizer, problem.problem, system_prompt))


# POPE guided prompts (docs/algorithms.md §2.5). The paper's verbatim template was not readable; template (a) is the
# continuation prompt of the authors' research circle (violetxi/ExpRL, gen_rm/data_processing/continue_rollout.py,
# get_prompt_template("rollout")), used as the user turn under the same system prompt as unguided problems.
GUIDED_TEMPLATES = {
    "continue": (
        "You are given a problem and a partial solution.\n\n"
        "Your task is to carefully study the partial response, identify what reasoning or steps are already "
        "provided, and then complete the solution from where it left off. Ensure your continuation is logically "
        "consistent and leads to a complete and correct final answer.\n\n"
        "**Important**: Show your reasoning step-by-step, and clearly present the final answer using LaTeX-style "
        "`\\boxed{{}}` notation.\n\n"
        "Problem:\n{problem}\n\n"
        "Partial Response:\n{prefix}\n\n"
        "Continue solving the problem, starting from where the partial response ends. Make sure your final answer "
        "is written as: \\boxed{{your_answer_here}}"
    ),
}
# The "do not restate the prefix" ablation (POPE blog / write-ups report that transfer to unguided problems degrades;
# the exact wording was not found, this sentence is this project's choice, docs/algorithms.md §2.10 item 5).
GUIDED_TEMPLATES["no-restate"] = GUIDED_TEMPLATES["continue"] + (
    "\n\nDo not restate or repeat any part of the partial response; begin directly with the next step.")


def guided_text(problem: Problem, prefix: str, template: str = "continue") -> str:
    """The user turn of a guided prompt: the problem plus an oracle-solution prefix and the instruction to continue."""
    if template not in GUIDED_TEMPLATES:
        raise ValueError(f"unknown guided template {template!r}; choose one of {sorted(GUIDED_TEMPLATES)}")
    return GUIDED_TEMPLATES[template].format(problem=problem.problem, prefix=prefix)


def make_guided_prompt(tokenizer, problem: Problem, prefix: str, template: str = "continue",
                       system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> Prompt:
    """A POPE guided copy of `problem`: its own group, its own baseline; the prefix lives in the prompt."""
    return Prompt(problem, render(tokenizer, guided_text(problem, prefix, template), system_prompt),
                  kind="guided", prefix=prefix)
