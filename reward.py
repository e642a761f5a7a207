"""The math reward: extract the final answer from a model response and decide whether it equals the gold answer.

    >>> math_reward("... so the area is \\\\boxed{\\\\frac{1}{2}}.", "0.5")
    1.0
    >>> extract_answer("We get \\\\boxed{x = 3} and \\\\boxed{x = -3}.")
    'x = 3, x = -3'
    >>> is_equiv("x = 3, x = -3", "\\\\pm 3"), is_equiv("\\\\sqrt{8}", "2\\\\sqrt2"), is_equiv("(1, 2]", "(1, 2)")
    (True, True, False)

The reward is the only signal RL gets, so the checker is strict where a reward could be gamed (a false positive teaches
the model to exploit the checker) and generous only where the answer is unambiguous (a false negative hides a rare
correct solution). This file works on text; `mathexpr.py` reads the maths. In order:

0. Gold answers (`gold_answer`, used by `is_equiv` on its gold side, so every caller benefits): read as datasets write
   them, the gold's content is what is compared: the last box / group of boxes as in step 1 (a MATH solution, or
   `\\boxed{1} and \\boxed{-2}`), a box left unclosed at the end, the text after "The answer is" / "final answer is" /
   "Answer:", or the inside of `$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]` wrapping the whole gold. `data.check_gold`
   uses it to find golds that cannot score 1 against themselves.
1. Extraction (`extract_answer`): the last `\\boxed{...}` / `\\fbox{...}`, braces matched (escaped `\\{` `\\}` skipped),
   after undoing a double escape (`\\\\boxed`, JSON inside JSON). `box_policy`: "last_group" (default) joins the boxes
   right before the last one that only connectors separate from it ("," "and" `\\quad` `$`): `\\boxed{1}, \\boxed{2}`
   is the list "1, 2", as Math-Verify reads it, and "3, 4" never equals a single gold 3; "last" takes the last box
   only (Qwen2.5-Math, lighteval); "all_agree" takes it only if every box is equivalent to it. `no_box_policy`: "zero"
   (default: the trainer's prompt asks for a box, as in DeepSeek-R1-style rule rewards), "answer_phrase" (the text
   after the last "final answer is" / "answer is" / "answer:", the Minerva format), "last_number" (lenient).
2. Normalisation (`normalize`), both sides: Unicode maths made LaTeX (`π` `−` `√` `≤` `±` ...; `°` and currency
   signs dropped), math delimiters, `\\left`/`\\right`, spacing commands, `\\dfrac` `\\tfrac`
   `\\cfrac`, `^\\circ`, `\\%` (and "percent"/"pct"), `\\$`, thousands separators (`1,000`, `1{,}000`, `1,\\!000`,
   `1 000` when the whole answer is that number), trailing unit text (`15\\text{ cm}^2`, `125 miles`), `\\text{...}`
   unwrapped, bare function names (`sqrt`, `pi`) made commands, a lettered choice `(C)` made `C`, an ellipsis made
   `\\dots` (one element: `1, 2, 3, ...` is not `1, 2, 3`), a doubled backslash before a command outside a matrix
   (`\\\\dfrac`) halved.
3. Comparison (`is_equiv`): identical normalised answers match. An answer with a word of three or more letters
   ("Evelyn", "odd") is compared as text, case-insensitively, and one the parser cannot read as its normalised string;
   otherwise `mathexpr.equal` compares the parsed maths (its docstring has the rules). `28\\%` also equals `0.28`.

Time bounds: an answer over MAX_ANSWER_CHARS scores 0; mathexpr's limits bound parsing and arithmetic (`9^{9^{9^9}}`
takes ~1 ms); a SIGALRM timer (CALL_TIME_LIMIT_S; main thread only; nests in an outer timer) is the backstop. Any
exception inside scores 0.0 and is counted in STATS. `RewardPool` runs a reward in worker processes.

Deliberately left out: unit conversion (`1\\text{ m}` vs `100\\text{ cm}`), `<think>`-aware extraction (the whole
response is searched), a tolerance knob, gold answers in other dataset formats (GSM8K's `#### 42`, a lettered
choice with its text `(D) Alina`: compared as written), Unicode beyond the table `_UNICODE` (compared as text), and
what mathexpr leaves out (its docstring: no sympy, no integrals, ...).
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import pickle
import re
import signal
import threading
import time
from collections import deque
from fractions import Fraction
from functools import lru_cache
from types import SimpleNamespace
from typing import Callable, NamedTuple

import mathexpr
from mathexpr import Node

MAX_ANSWER_CHARS = 1000  # a longer extracted answer is not a final answer (a 6x6 matrix of fractions is ~600)
MAX_BOXES = 20  # boxes looked at for box_policy="last_group"/"all_agree"
TAIL_CHARS = 4000  # the no-box policies search only the end of the response (the answer is at the end)
CALL_TIME_LIMIT_S = 0.5  # backstop timer per math_reward call (main thread only); the limits keep calls ~1 ms
ALARM_REFIRE_S = 0.05  # a timer that fired re-fires this often until its call has stopped
HARD_KILL_GRACE_S = 1.0  # RewardPool: a worker gets this long after its own timer before it is killed
BOX_POLICIES = ("last_group", "last", "all_agree")
NO_BOX_POLICIES = ("zero", "answer_phrase", "last_number")

# This process's math_reward calls scored 0.0 by an internal error or by the timer (failures), and by the timer alone.
STATS = SimpleNamespace(failures=0, timeouts=0)


def math_reward(response: str, gold: str, *, box_policy: str = "last_group", no_box_policy: str = "zero") -> float:
    """1.0 if the response's final answer equals `gold`, else 0.0. Never raises on any text: an internal error or a
    call past CALL_TIME_LIMIT_S scores 0.0 and is counted in STATS. (An unknown policy name is a ValueError.)"""
    _check_policies(box_policy, no_box_policy)
    if isinstance(gold, (int, float, Fraction)):
        gold = str(gold)
    score, failure = _guarded_call(_score, (response, gold, box_policy, no_box_policy), CALL_TIME_LIMIT_S)
    STATS.failures += failure is not None
    STATS.timeouts += failure == "timeout"
    return score


def prompt_reward(text: str, prompt) -> float:
    """The trainer's default reward for a `data.Prompt`: `math_reward` against its problem's gold answer. It lives
    here, in a module that imports no torch or vLLM, so `RewardPool` workers start in a fraction of a second."""
    return math_reward(text, prompt.problem.answer)


def extract_answer(response: str, *, box_policy: str = "last_group", no_box_policy: str = "zero") -> str | None:
    """The final answer of a model response as a string, or None when there is none (policies: module docstring)."""
    _check_policies(box_policy, no_box_policy)
    if not isinstance(response, str):
        return None
    double_escaped = "\\\\boxed" in response or "\\\\fbox" in response  # JSON inside JSON: halve the backslashes
    text = response.replace("\\\\", "\\") if double_escaped else response
    boxes = _boxes_from_end(text, 1 if box_policy == "last" else MAX_BOXES)
    if boxes:
        if box_policy == "last":
            return boxes[0].content
        if box_policy == "all_agree":
            last = boxes[0].content
            return last if all(is_equiv(b.content, last) for b in boxes[1:]) else None
        group = [boxes[0]]  # last_group
        for box in boxes[1:]:
            gap = text[box.end : group[-1].start]
            if len(gap) > 80 or not _CONNECTOR_RE.fullmatch(gap):
                break
            group.append(box)
        return ", ".join(b.content for b in reversed(group))
    if no_box_policy == "answer_phrase":
        return _answer_after_phrase(text)
    if no_box_policy == "last_number":
        numbers = _LAST_NUMBER_RE.findall(text[-TAIL_CHARS:])  # integers, decimals, a/b
        return numbers[-1].rstrip(",") if numbers else None
    return None


def is_equiv(pred: str | None, gold: str | None) -> bool:
    """Whether an extracted answer equals a gold answer. The gold is read with `gold_answer`, so it may be written as
    datasets write it (boxed, in `$...$`, after "The answer is"); see the module docstring."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    a, b = _analyse(pred), _analyse(gold_answer(gold))
    if not a.items or not b.items:
        return False
    if a.compact == b.compact or mathexpr.equal(a.items, b.items):
        return True
    if a.percent != b.percent:  # "28%" against "0.28"
        scaled_a, scaled_b = (_per_hundred(a.items), b.items) if a.percent else (a.items, _per_hundred(b.items))
        return scaled_a is not None and scaled_b is not None and mathexpr.equal(scaled_a, scaled_b)
    return False


@lru_cache(maxsize=4096)  # a group of samples shares one gold answer
def gold_answer(text: str) -> str:
    """The answer a gold string states, read the way datasets write it (module docstring, step 0):

    >>> gold_answer("so the area is $\\\\boxed{\\\\frac{1}{2}}$."), gold_answer("The answer is $x = 3$.")
    ('\\\\frac{1}{2}', 'x = 3')
    >>> gold_answer("\\\\(\\\\sqrt{2}\\\\)"), gold_answer("$1$ and $2$"), gold_answer("\\\\text{Evelyn}")
    ('\\\\sqrt{2}', '$1$ and $2$', '\\\\text{Evelyn}')
    """
    s = text.strip()
    boxed = extract_answer(s)  # the last box, or the last group of boxes ("\\boxed{1} and \\boxed{-2}": "1, -2")
    if boxed is None:
        boxed = _unclosed_last_box(s)
    if boxed is not None:
        return boxed.strip()
    if _GOLD_PHRASE_RE.search(s[-TAIL_CHARS:]):
        s = _answer_after_phrase(s) or s
    return _strip_math_delimiters(s)


# A gold answer that states itself: "The answer is 5", "Answer: 5", "the final answer is $5$".
_GOLD_PHRASE_RE = re.compile(r"(?i)\b(?:final answer is|answer is|answer:)")
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _unclosed_last_box(text: str) -> str | None:
    """What follows the last box command when its brace is never closed (a truncated gold string), else None."""
    start, command = max((text.rfind(c + "{"), c) for c in _BOX_COMMANDS)
    if start < 0:
        return None
    rest = text[start + len(command) + 1 :]
    return rest if _match_brace("{" + rest, 0, MAX_ANSWER_CHARS + 2) < 0 and rest.strip() else None


def _strip_math_delimiters(s: str) -> str:
    """`$x$`, `$$x$$`, `\\(x\\)`, `\\[x\\]` (and a sentence's full stop after them) -> `x`, when one pair wraps the
    whole answer; `$1$ and $2$` is left whole (normalisation removes the dollars)."""
    for _ in range(2):  # "$\\(x\\)$"
        trimmed = s.rstrip(" .")
        for opener, closer in _MATH_DELIMITERS:
            inner = trimmed[len(opener) : -len(closer)]
            if (len(trimmed) > len(opener) + len(closer) and trimmed.startswith(opener) and trimmed.endswith(closer)
                    and opener not in inner and closer not in inner):
                s = inner.strip()
                break
        else:
            return s
    return s


def _check_policies(box_policy: str, no_box_policy: str) -> None:
    if box_policy not in BOX_POLICIES or no_box_policy not in NO_BOX_POLICIES:
        raise ValueError(f"unknown policy: box_policy={box_policy!r}, no_box_policy={no_box_policy!r}")


def _score(response: str, gold: str, box_policy: str, no_box_policy: str) -> float:
    answer = extract_answer(response, box_policy=box_policy, no_box_policy=no_box_policy)
    return 1.0 if answer is not None and is_equiv(answer, gold) else 0.0


# -- Extraction --------------------------------------------------------------------------------------------------------
_BOX_COMMANDS = ("\\boxed", "\\fbox")
# What may stand between two boxes that belong to one answer: "\boxed{1}, \boxed{2}", "\boxed{a} \quad\text{and}\quad".
_CONNECTOR_RE = re.compile(
    r"(?:\\(?:text|textrm|textnormal|mathrm|mbox)\s*\{\s*(?:and|or|,)?\s*\}|\\q?quad|\\[,;:! ]|\\[()\[\]]|\\\\"
    r"|\band\b|\bor\b|[\s$,;&.])*"
)
_BOX_TOKEN_RE = re.compile(r"[^\s$]+")
_LAST_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


class _Box(NamedTuple):
    start: int  # index of the backslash of \boxed
    end: int  # index just past the closing brace
    content: str


def _match_brace(text: str, open_index: int, limit: int) -> int:
    """Index just past the brace matching text[open_index] == '{', or -1 (also when it is not closed within `limit`
    characters). Escaped braces (\\{, \\}) are skipped."""
    depth = 0
    i = open_index
    n = min(len(text), open_index + limit)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _box_at(text: str, start: int, command: str) -> _Box | None:
    """The box whose command starts at `start`: `\\boxed{...}` (braces matched) or `\\boxed 5`; None if unbalanced."""
    i = start + len(command)
    if i < len(text) and text[i].isalpha():  # \boxedx is another command
        return None
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        end = _match_brace(text, i, limit=MAX_ANSWER_CHARS + 2)  # a longer box is no usable answer
        return None if end < 0 else _Box(start, end, text[i + 1 : end - 1])
    m = _BOX_TOKEN_RE.match(text, i)  # "\boxed 5": one token
    return _Box(start, m.end(), m.group()) if m and i > start + len(command) else None


def _boxes_from_end(text: str, limit: int) -> list[_Box]:
    """Up to `limit` boxes, last one first, skipping boxes nested inside a later one's content (at most
    2 * MAX_BOXES box commands are examined, each costing at most MAX_ANSWER_CHARS steps)."""
    boxes: list[_Box] = []
    pos = len(text)
    for _ in range(2 * MAX_BOXES):
        if len(boxes) >= limit or pos <= 0:
            break
        start, command = max((text.rfind(c, 0, pos), c) for c in _BOX_COMMANDS)
        if start < 0:
            break
        box = _box_at(text, start, command)
        if box is not None and (not boxes or box.end <= boxes[-1].start):
            boxes.append(box)
        pos = start
    return boxes


def _answer_after_phrase(text: str) -> str | None:
    """The answer stated after the last 'final answer is' / 'answer is' / 'answer:' near the end, or None."""
    tail = text[-TAIL_CHARS:]
    lower = tail.lower()
    phrases = ("final answer is", "answer is", "answer:")
    ends = [lower.rfind(phrase) + len(phrase) for phrase in phrases if phrase in lower]
    if not ends:
        return None
    rest = tail[max(ends):].lstrip(" :\n\t")
    for opener, closer in _MATH_DELIMITERS:
        if rest.startswith(opener):
            end = rest.find(closer, len(opener))
            return rest[len(opener) : end] if end > 0 else None
    m = re.compile(r"[^\n]*?(?=\.\s|\.$|\n|$)").match(rest)
    answer = m.group().strip() if m else ""
    return answer[:200] or None


# -- Normalisation -----------------------------------------------------------------------------------------------------
# Unicode maths as models and datasets write it, made LaTeX (π, −, √, ≤, ...); currency signs and ° are dropped.
_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u22c5": "\\cdot ", "\u00b7": "\\cdot ", "\u00f7": "\\div ",
    "\u2264": "\\le ", "\u2265": "\\ge ", "\u2260": "\\ne ", "\u2248": "\\approx ", "\u03c0": "\\pi ",
    "\u221e": "\\infty ", "\u221a": "\\sqrt ", "\u00b1": "\\pm ", "\u222a": "\\cup ", "\u2208": "\\in ",
    "\u00b0": "", "\u00b2": "^2", "\u00b3": "^3", "\u20ac": "", "\u00a3": "", "\u00a5": "", "\uff0c": ",",
    "\u00a0": " ",
}
_DOUBLED_COMMAND_RE = re.compile(r"(?<!\\)\\\\(?=(?:[dtc]?frac|sqrt|pi|infty|cdot|times|text)(?![A-Za-z]))")
_TEXT_COMMANDS = ("text|textnormal|textrm|textup|textbf|textit|textsf|texttt|mbox|hbox|mathrm|mathbf|mathit|mathsf"
                  "|mathtt|mathnormal|mathbb|mathcal|operatorname|boldsymbol|bm")
_TEXT_RE = re.compile(r"\\(?:" + _TEXT_COMMANDS + r")\s*\{([^{}]*)\}")
# A unit written as text at the end, after a value: "15\mbox{ cm}^2", "\frac{1}{3}\textbf{ meters}".
_TRAILING_TEXT_UNIT_RE = re.compile(
    r"\\(text|textnormal|textrm|textup|textbf|textit|mbox|mathrm)\s*\{([^{}]*)\}\s*(?:\^\s*\{?\s*\d\s*\}?)?\s*\.?\s*$")
_FUNCTION_WORDS_RE = re.compile(
    r"(?<![\\A-Za-z])(arcsin|arccos|arctan|sinh|cosh|tanh|sqrt|sin|cos|tan|sec|csc|cot|ln|log|exp|pi|infty)"
    r"(?![A-Za-z])")
_CHOICE_RE = re.compile(r"\(\s*([A-Ea-e])\s*\)|([A-E])")
# Spacing commands become spaces; a row break "\\\\" is matched first so that "\\\\ " keeps its backslashes.
_SPACING_RE = re.compile(r"(\\\\)|\\q?quad|\\(?:displaystyle|textstyle|limits|[,;:! ])|~")
_THOUSANDS_COMMA_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_THOUSANDS_SPACE_RE = re.compile(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?")


def normalize(answer: str) -> tuple[str, bool]:
    """Canonical LaTeX-ish string of an answer, and whether it carried a percent sign. See the module docstring."""
    s = answer.strip()
    for char, replacement in _UNICODE.items():
        if char in s:
            s = s.replace(char, replacement)
    s = s.replace("\\$", " ").replace("$", " ")
    if "&" not in s:  # outside a matrix, "\\\\dfrac" is a doubled escape, not a row break before the word "dfrac"
        s = _DOUBLED_COMMAND_RE.sub(r"\\", s)
    s = re.sub(r"\\[()\[\]]", " ", s)
    s = re.sub(r"\\(?:left|right)\s*\.", " ", s)
    s = re.sub(r"\\(?:left|right|[bB]igg?[lr]?)(?![A-Za-z])", "", s)
    s = re.sub(r"(?<=\d),\\!\s*(?=\d{3}(?!\d))", "", s)  # 10,\!000 (the MATH dataset's thousands separator)
    s = re.sub(r"(?<=\d)\{,\}(?=\d{3}(?!\d))", "", s)  # 14{,}916
    s = _SPACING_RE.sub(lambda m: m.group(1) or " ", s)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\[dt]binom(?![A-Za-z])", r"\\binom", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])", "", s)
    percent = "%" in s
    s = re.sub(r"\\?%", " ", s)
    s, count = re.subn(r"(?<![A-Za-z])(?:percentage|percent|pct)(?![A-Za-z])", " ", s)
    percent = percent or count > 0
    s = _strip_trailing_units(s)
    for _ in range(3):  # nested \text{\textbf{..}}
        s, count = _TEXT_RE.subn(lambda m: " " + m.group(1) + " ", s)
        if not count:
            break
    s = _strip_trailing_units(s)
    s = _FUNCTION_WORDS_RE.sub(r"\\\1", s)
    s = re.sub(r"(?<![A-Za-z])(?:infinity|inf)(?![A-Za-z])", r"\\infty", s)
    s = re.sub(r"\.\.\.|\u2026", r"\\dots ", s)  # an ellipsis is an element ("1, 2, 3, ..." is not 1, 2, 3)
    s = re.sub(r"(?<![.\\])\.$", "", s.strip()).strip()  # a sentence's full stop
    choice = _CHOICE_RE.fullmatch(s)
    if choice:
        s = choice.group(1) or choice.group(2)
    if _THOUSANDS_COMMA_RE.fullmatch(s):
        s = s.replace(",", "")
    elif _THOUSANDS_SPACE_RE.fullmatch(s):
        s = s.replace(" ", "")
    return re.sub(r"\s+", " ", s), percent


def _strip_trailing_units(s: str) -> str:
    """Drop unit text after a value: `125\\text{ miles}`, `15\\mbox{ cm}^2`, `125 miles`, `0.06 yuan`."""
    for _ in range(3):
        m = _TRAILING_TEXT_UNIT_RE.search(s)
        if not m:
            break
        before, content = s[: m.start()], m.group(2).strip()
        is_unit = re.search("[A-Za-z]", content) and content.lower() not in mathexpr.SEPARATOR_WORDS
        if not (is_unit and re.search(r"[\d})]", before)) or (m.group(1) == "mathrm" and len(content) < 2):
            break
        s = before.rstrip()
    words = s.split()  # bare words after a number: "125 miles", "5 square units"
    n_unit_words = 0
    while n_unit_words < min(3, len(words) - 1):
        word = words[-1 - n_unit_words].rstrip(".")
        if not (word.isalpha() and len(word) >= 3 and word.lower() not in mathexpr.SEPARATOR_WORDS):
            break
        n_unit_words += 1
    if n_unit_words and re.search(r"[\d})]$", words[-1 - n_unit_words]):
        s = " ".join(words[:-n_unit_words])
    return s


def _is_wordy(s: str) -> bool:
    """True when the answer contains a word (3+ letters, not all capitals, not a command, subscript or and/or):
    such answers are compared as text."""
    s = re.sub(r"\\(?:begin|end)\s*\{[A-Za-z*]*\}(?:\{[^{}]*\})?", " ", s)  # \begin{pmatrix}, \begin{array}{ccc}
    s = re.sub(r"\\[A-Za-z]+|_\{[^{}]*\}|_[A-Za-z0-9]", " ", s)
    words = re.findall(r"[A-Za-z]+", s)
    # An all-capitals run is a list of point names (triangle ABC), not a word.
    return any(len(w) >= 3 and not w.isupper() and w.lower() not in mathexpr.SEPARATOR_WORDS for w in words)


class _Answer(NamedTuple):
    items: tuple[Node, ...]  # empty: nothing usable (too long, empty)
    percent: bool
    compact: str  # the normalised string without spaces, for the cheap identical-answer check


@lru_cache(maxsize=4096)  # a group of samples shares one gold answer, and often the same predicted answer
def _analyse(answer: str) -> _Answer:
    """Normalise and parse one answer string (cached; the cached trees are immutable)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return _Answer((), False, "")
    normalized, percent = normalize(answer)
    compact = normalized.replace(" ", "")
    if not compact:
        return _Answer((), percent, "")
    if _is_wordy(normalized):
        text = re.sub(r"[\s{}]+", " ", normalized).strip().lower()
        return _Answer((Node("text", value=text),), percent, compact)
    try:
        items = mathexpr.parse(normalized)
    except mathexpr.ParseError:
        items = (Node("text", value=compact),)
    return _Answer(items, percent, compact)


def _per_hundred(items: tuple[Node, ...]) -> tuple[Node, ...] | None:
    """'28%' read as 0.28 (only for a single scalar)."""
    if len(items) != 1 or items[0].kind not in mathexpr.SCALAR_KINDS:
        return None
    return (Node("div", (items[0], Node("num", value=Fraction(100)))),)


# -- Time limits -------------------------------------------------------------------------------------------------------
class _Timeout(BaseException):
    """Raised by our SIGALRM handler. A BaseException, so that `except Exception` inside the timed code cannot
    swallow it; `args[0]` identifies the timer that fired."""


def _call_with_time_limit(seconds: float, fn: Callable, *args) -> tuple[bool, object]:
    """(True, fn(*args)), or (False, None) if it ran past `seconds`. Uses SIGALRM in the main thread and nests
    with an outer timer (the outer one keeps its deadline); elsewhere fn simply runs."""
    # SIGALRM timers work only in the main thread, on POSIX, and when the current handler can be restored.
    if not (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGALRM) is not None):
        return True, fn(*args)
    outer_remaining, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if outer_remaining and outer_remaining <= seconds:
        return True, fn(*args)  # an outer timer fires first anyway
    token = object()
    state = {"active": True}

    def on_alarm(signum, frame):
        if state["active"]:
            # Fire again soon: if this exception lands in a finalizer (__del__), Python drops it and moves on.
            signal.setitimer(signal.ITIMER_REAL, ALARM_REFIRE_S)
            raise _Timeout(token)

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return True, fn(*args)
    except _Timeout as exc:
        state["active"] = False
        if exc.args[0] is not token:
            raise
        return False, None
    finally:
        state["active"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_remaining:
            left = outer_remaining - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-4), outer_interval)


def _guarded_call(fn: Callable, args: tuple, timeout_s: float) -> tuple[float, str | None]:
    """(fn(*args) as a float, None); or (0.0, "timeout") past timeout_s; or (0.0, "error") when it raised or returned
    a non-finite value."""
    try:
        finished, value = _call_with_time_limit(timeout_s, fn, *args)
        if not finished:
            return 0.0, "timeout"
        value = float(value)
    except Exception:  # the one boundary where any failure inside a reward function becomes a 0 reward
        return 0.0, "error"
    return (value, None) if math.isfinite(value) else (0.0, "error")


# -- RewardPool: scoring in worker processes ---------------------------------------------------------------------------
def _worker_main(conn, timeout_s: float) -> None:
    """A worker process: receive (index, pickled (fn, args)), send back (index, score, failed), until killed."""
    conn.send("ready")
    while True:
        try:
            index, payload = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        try:
            fn, args = pickle.loads(payload)
        except Exception:  # unpickling failed (e.g. the function's module does not import here)
            conn.send((index, 0.0, True))
            continue
        score, failure = _guarded_call(fn, args, timeout_s)
        conn.send((index, score, failure is not None))


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context, timeout_s: float):
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child_conn, timeout_s), daemon=True)
        self.process.start()
        child_conn.close()

    def wait_ready(self, timeout_s: float) -> bool:
        try:
            return self.conn.poll(timeout_s) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            return False

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class RewardPool:
    """Scores calls fn(*args) -> float in worker processes so a pathological case cannot stall training:
    `pool = RewardPool(workers=4, timeout_s=5.0); scores = pool.map(reward_fn, [(text, prompt), ...]); pool.close()`.

    workers=0 runs the calls in this process (with the same SIGALRM time limit when called from the main thread).
    Workers use the `spawn` start method (the trainer holds a vLLM engine and torch threads; fork is unsafe), start on
    the first `map`, and are reused; a worker whose call outlives `timeout_s` (+HARD_KILL_GRACE_S, for code that
    ignores signals) is killed and replaced, and that call scores 0.0. `failures` counts calls that raised, timed out
    or returned a non-finite value. `reward_fn` must be a module-level function: spawn pickles it by reference, so
    every worker imports its module once (seconds, if that module imports torch or vLLM).
    """

    STARTUP_TIMEOUT_S = 120.0  # a fresh spawn worker imports this module (and fn's module) before it is ready

    def __init__(self, workers: int = 0, timeout_s: float = 5.0):
        self.workers = workers
        self.timeout_s = timeout_s
        self.failures = 0
        self._context = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []

    def _start_workers(self, count: int) -> None:
        fresh = [_Worker(self._context, self.timeout_s) for _ in range(count)]
        for worker in fresh:
            if not worker.wait_ready(self.STARTUP_TIMEOUT_S):
                worker.kill()
                raise RuntimeError("RewardPool: a worker process failed to start")
            self._idle.append(worker)

    def _replace(self, worker: _Worker) -> None:
        """A worker that died or hung: its call scores 0.0 and counts as a failure; a fresh worker takes its place."""
        self.failures += 1
        worker.kill()
        self._start_workers(1)

    def map(self, fn: Callable, args: list[tuple]) -> list[float]:
        """Scores in the order of `args`; never raises for a failing call (it scores 0.0 and is counted)."""
        if self.workers == 0:
            calls = [_guarded_call(fn, tuple(a), self.timeout_s) for a in args]
            self.failures += sum(failure is not None for _, failure in calls)
            return [score for score, _ in calls]
        payloads = [pickle.dumps((fn, tuple(a))) for a in args]  # fails loudly for a lambda: a programming error
        if len(self._idle) < self.workers:
            self._start_workers(self.workers - len(self._idle))
        results = [0.0] * len(args)
        pending = deque(range(len(args)))
        busy: dict[_Worker, float] = {}  # worker -> when its call started
        while pending or busy:
            while pending and self._idle:
                worker, index = self._idle.pop(), pending.popleft()
                worker.conn.send((index, payloads[index]))
                busy[worker] = time.monotonic()
            deadline = min(busy.values()) + self.timeout_s + HARD_KILL_GRACE_S
            timeout = max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait([w.conn for w in busy], timeout=timeout)
            for worker in [w for w in busy if w.conn in ready]:
                del busy[worker]
                try:
                    index, score, failed = worker.conn.recv()
                except (EOFError, OSError):  # the worker died (e.g. killed for memory)
                    self._replace(worker)
                    continue
                results[index] = score
                self.failures += failed
                self._idle.append(worker)
            now = time.monotonic()
            for worker, started in list(busy.items()):
                if now - started > self.timeout_s + HARD_KILL_GRACE_S:
                    del busy[worker]
                    self._replace(worker)
        return results

    def close(self) -> None:
        """Stop the worker processes, idle between calls (a later `map` starts new ones)."""
        for worker in self._idle:
            worker.kill()
        self._idle = []
