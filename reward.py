"""The math reward: extract the final answer from a model response and decide whether it equals the gold answer.

    >>> math_reward("... so the area is \\\\boxed{\\\\frac{1}{2}}.", "0.5")
    1.0
    >>> extract_answer("We get \\\\boxed{x = 3} and \\\\boxed{x = -3}.")
    'x = 3, x = -3'
    >>> is_equiv("x = 3, x = -3", "\\\\pm 3"), is_equiv("\\\\sqrt{8}", "2\\\\sqrt2"), is_equiv("(1, 2]", "(1, 2)")
    (True, True, False)

The reward is the only signal RL gets, so the checker is strict where a reward could be gamed (a false positive teaches
the model to exploit the checker) and generous only where the answer is unambiguous (a false negative hides a rare
correct solution). The pipeline, in order:

1. Extraction (`extract_answer`). The last `\\boxed{...}` / `\\fbox{...}`, braces matched (escaped `\\{` `\\}` skipped).
   Options, defaults first:
   - `box_policy="last_group"`: the last box, plus the boxes right before it that are separated from it only by
     connectors (commas, "and", "or", `\\quad`, math delimiters), joined with ", ". `\\boxed{1}, \\boxed{2}` is the list
     "1, 2" (Math-Verify also reads such runs of boxes together); a lone final box is used as is. Joining never rewards
     a hedge: "3, 4" does not equal a single gold 3. `"last"`: only the last box (Qwen2.5-Math, NeMo-Skills, lighteval).
     `"all_agree"`: the last box, only if every box in the response is equivalent to it (`is_equiv`).
   - `no_box_policy="zero"`: no box, no answer (DeepSeek-R1-style rule rewards; the trainer's system prompt asks for a
     box). `"answer_phrase"`: the text after the last "final answer is" / "answer is" / "answer:" (the Minerva format
     that lighteval and Qwen2.5-Math also read). `"last_number"`: the last number in the response (Qwen2.5-Math and
     Math-Verify fall back to it; lenient, so not the default).
   A response whose box command is itself escaped twice (`\\\\boxed`, JSON inside JSON) is unescaped once first.
2. Normalisation (`normalize`), applied to both sides: math delimiters, `\\left`/`\\right`, spacing commands, `\\dfrac`
   `\\tfrac` `\\cfrac`, `^\\circ`, `\\%` (and "percent"/"pct"), `\\$`, thousands separators (`1,000`, `1{,}000`,
   `1,\\!000`, `1 000` when the whole answer is that number), trailing unit text (`15\\text{ cm}^2`, `125 miles`),
   `\\text{...}` unwrapped, bare function names (`sqrt`, `pi`) made commands, a lettered choice `(C)` made `C`.
   Answers with words of three or more letters ("Evelyn", "odd") are compared as text, case-insensitively.
3. Parsing, by a small recursive-descent parser of our own (`_Parser`) into a tree of `Node`s: numbers (exact
   fractions), one-letter symbols, `\\pi`, `\\infty`, `\\frac` `\\sqrt[n]` `^` `!` `\\binom`, functions, `|x|`, `\\pm`, relations (`= < \\le \\ne
   \\approx \\in`), tuples and intervals, sets `\\{..\\}`, `\\cup`, ratios `a:b`, matrices, `\\sum`, lists
   separated by ",", ";", "and", "or". Model text is never handed to `eval`, to Python's compiler, or to any
   library's string parser; the tree is built from a fixed grammar and only then turned into numbers.
4. Comparison (`is_equiv`). Lists and sets match as sets (every element on each side equals one on the other), tuples
   and intervals element by element with the same brackets, `x = 2` or `k \\in [1, 2]` against `2` or `[1, 2]`
   (Math-Verify's rule for a variable on the left; `7 = 11a + c` is not a value), equations up to a nonzero factor
   (`2x + 4y = 3` equals `y = -x/2 + 3/4`), inequalities up to a positive factor, chains like `-2 \\le x \\le 7` as
   intervals, `a \\pm b` as the set {a+b, a-b}. Scalars: exact rational arithmetic when both sides are rational,
   otherwise numeric comparison at a few pseudo-random points for the free symbols (complex arithmetic, principal
   branches; symbols used as sum bounds get integer values); undefined functions `f(x)` and indexed names `a_{n}` are
   pseudo-random functions, the same on both sides. Two exact forms must agree to float precision (`FLOAT_REL_TOL`,
   1e-12); a decimal answer to `rel_tol` (1e-9, ~9 significant digits: 0.0833333333333333 is 1/12, 0.0833 is not)
   and to its last written digit (11111111100.5 is not 11111111100). Numbers that cannot decide (evaluation failed,
   or the sides agree only at magnitudes above LARGE_FLOAT, where a float cannot show a difference of 1) count as
   different: a false negative, never a false positive. (A sympy fallback for these decided none of the peer cases.)

Time bounds (`math_reward` returns well under a second on any input):
- guards before any arithmetic: answers over `MAX_ANSWER_CHARS` score 0; at most `MAX_NODES` tree nodes and
  `MAX_DEPTH` levels of nesting, both while parsing and in the finished tree (every recursion here then stays far
  below Python's default recursion limit, so no score depends on `sys.getrecursionlimit()`); exact powers only while
  the result stays under `MAX_EXACT_BITS` bits (beyond that, floats, which overflow to "inconclusive" at once:
  `9^{9^{9^9}}` costs microseconds); factorials and binomials up to `MAX_FACTORIAL`; sums up to `MAX_SUM_TERMS`
  terms; an evaluation step budget.
- a SIGALRM timer (`setitimer`) around each call (`CALL_TIME_LIMIT_S`), only in the main thread, nested correctly
  with an outer timer.
- any exception inside scores 0.0 and is counted in `STATS` (per process).
- `RewardPool` runs calls in reused `spawn` worker processes and kills a worker whose call outlives its timeout.

Deliberately left out: Greek letters and other commands no peer case or test needs (`\\alpha`, `\\lfloor`, `\\prod`,
`\\lg`, `\\overline`, `\\dots`, `\\lvert`; such an answer is compared as text), Unicode maths (`π`, `≤`: compared as
text), a boxed gold answer (gold answers are bare), a label on the right (`5 = x`), unit conversion (`1\\text{ m}` vs
`100\\text{ cm}`), degrees vs radians, the real cube root of a symbolic negative radicand (principal branches are
used), integrals/limits/derivatives, set-builder notation, merging of overlapping intervals, `<think>`-aware
extraction (the whole response is searched), and rounding a gold decimal (a gold `7.78` is not matched by `70/9`).
"""

from __future__ import annotations

import cmath
import math
import multiprocessing
import multiprocessing.connection
import pickle
import re
import signal
import threading
import time
import zlib
from collections import deque
from fractions import Fraction
from functools import lru_cache
from types import SimpleNamespace
from typing import Callable, NamedTuple


# ---------------------------------------------------------------------------------------------------------------------
# Limits. Each one bounds the work a single call can do; none of them is reached by a real answer.
# ---------------------------------------------------------------------------------------------------------------------
MAX_ANSWER_CHARS = 1000  # a longer extracted answer is not a final answer (a 6x6 matrix of fractions is ~600)
MAX_NODES = 2000  # parse-tree nodes per answer: keeps parsing and each evaluation linear and small
MAX_DEPTH = 30  # nesting while parsing (brackets, arguments) and depth of the finished tree (1/2/.../n, ---1)
MAX_ITEMS = 40  # elements in a list/set; set comparison is quadratic in this
MAX_BOXES = 20  # boxes looked at for box_policy="last_group"/"all_agree"
MAX_EXACT_BITS = 20_000  # exact rationals up to ~6000 digits; beyond, floats (which overflow quickly and safely)
MAX_FACTORIAL = 1000  # 1000! has 2568 digits; larger factorials and binomials cannot be decided
MAX_SUM_TERMS = 1000  # terms of one \sum with numeric bounds
EVAL_BUDGET = 200_000  # evaluation steps per comparison (nested sums multiply)
MAX_PM_ALTERNATIVES = 8  # a \pm b expands to 2 values; three \pm signs at most
CALL_TIME_LIMIT_S = 0.5  # backstop timer per math_reward call (main thread only); guards keep calls ~1 ms
ALARM_REFIRE_S = 0.05  # a timer that fired re-fires this often until its call has stopped
REL_TOL = 1e-9  # how close a decimal answer must be to the value it approximates (~9 significant digits)
FLOAT_REL_TOL = 1e-12  # two exact forms evaluated in floats agree to ~1e-15; this leaves room for rounding only
ABS_TOL = 1e-12  # absolute tolerance for float values near zero (sin(pi) evaluates to 1.2e-16)
LARGE_FLOAT = 1e6  # agreement only above this magnitude proves nothing (x + 1 == x in floats at 1e16)
RATIO_REL_TOL = 1e-7  # equations: (lhs - rhs) of one side over the other's must be the same constant at every point
N_POINTS = 3  # evaluation points for expressions with free symbols; a wrong identity survives 3 random points ~never
TAIL_CHARS = 4000  # the no-box policies search only the end of the response (the answer is at the end)
HARD_KILL_GRACE_S = 1.0  # RewardPool: a worker gets this long after its own timer before it is killed

BOX_POLICIES = ("last_group", "last", "all_agree")
NO_BOX_POLICIES = ("zero", "answer_phrase", "last_number")


# This process's math_reward calls scored 0.0 by an internal error or by the timer (failures), and by the timer alone.
STATS = SimpleNamespace(failures=0, timeouts=0)


# =====================================================================================================================
# 1. Extraction
# =====================================================================================================================
_BOX_COMMANDS = ("\\boxed", "\\fbox")
# What may stand between two boxes that belong to one answer: "\boxed{1}, \boxed{2}", "\boxed{a} \quad\text{and}\quad".
_CONNECTOR_RE = re.compile(
    r"(?:\\(?:text|textrm|textnormal|mathrm|mbox)\s*\{\s*(?:and|or|,)?\s*\}|\\q?quad|\\[,;:! ]|\\[()\[\]]|\\\\"
    r"|\band\b|\bor\b|[\s$,;&.])*"
)


_BOX_TOKEN_RE = re.compile(r"[^\s$]+")


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


def _undo_double_escape(text: str) -> str:
    """A response escaped twice ("\\\\boxed{\\\\frac..}") has its backslashes halved; others are returned as is."""
    if "\\\\boxed" in text or "\\\\fbox" in text:
        return text.replace("\\\\", "\\")
    return text


def _answer_after_phrase(text: str) -> str | None:
    """The answer stated after the last 'final answer is' / 'answer is' / 'answer:' near the end, or None."""
    tail = text[-TAIL_CHARS:]
    lower = tail.lower()
    best = -1
    for phrase in ("final answer is", "answer is", "answer:"):
        at = lower.rfind(phrase)
        if at >= 0 and at + len(phrase) > best:
            best = at + len(phrase)
    if best < 0:
        return None
    rest = tail[best:].lstrip(" :\n\t")
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(opener):
            end = rest.find(closer, len(opener))
            return rest[len(opener) : end] if end > 0 else None
    m = re.compile(r"[^\n]*?(?=\.\s|\.$|\n|$)").match(rest)
    answer = m.group().strip() if m else ""
    return answer[:200] or None


_LAST_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _last_number(text: str) -> str | None:
    """The last number (integer, decimal or a/b) near the end of the response, or None."""
    matches = _LAST_NUMBER_RE.findall(text[-TAIL_CHARS:])
    return matches[-1].rstrip(",") if matches else None


def extract_answer(response: str, *, box_policy: str = "last_group", no_box_policy: str = "zero") -> str | None:
    """The final answer of a model response as a string, or None when there is none (policies: module docstring)."""
    if box_policy not in BOX_POLICIES or no_box_policy not in NO_BOX_POLICIES:
        raise ValueError(f"unknown policy: box_policy={box_policy!r}, no_box_policy={no_box_policy!r}")
    if not isinstance(response, str):
        return None
    text = _undo_double_escape(response)
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
        return _last_number(text)
    return None


# =====================================================================================================================
# 2. Normalisation (strings)
# =====================================================================================================================
_TEXT_COMMANDS = ("text|textnormal|textrm|textup|textbf|textit|textsf|texttt|mbox|hbox|mathrm|mathbf|mathit|mathsf"
                  "|mathtt|mathnormal|mathbb|mathcal|operatorname|boldsymbol|bm")
_TEXT_RE = re.compile(r"\\(?:" + _TEXT_COMMANDS + r")\s*\{([^{}]*)\}")
# A unit written as text at the end, after a value: "15\mbox{ cm}^2", "\frac{1}{3}\textbf{ meters}".
_TRAILING_TEXT_UNIT_RE = re.compile(
    r"\\(text|textnormal|textrm|textup|textbf|textit|mbox|mathrm)\s*\{([^{}]*)\}\s*(?:\^\s*\{?\s*\d\s*\}?)?\s*\.?\s*$")
_FUNCTION_WORDS_RE = re.compile(
    r"(?<![\\A-Za-z])(arcsin|arccos|arctan|sinh|cosh|tanh|sqrt|sin|cos|tan|sec|csc|cot|ln|log|exp|pi|infty)"
    r"(?![A-Za-z])")
_SEPARATOR_WORDS = ("and", "or")
_CHOICE_RE = re.compile(r"\(\s*([A-Ea-e])\s*\)|([A-E])")
# Spacing commands become spaces; a row break "\\\\" is matched first so that "\\\\ " keeps its backslashes.
_SPACING_RE = re.compile(r"(\\\\)|\\q?quad|\\(?:displaystyle|textstyle|limits|[,;:! ])|~")
_THOUSANDS_COMMA_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_THOUSANDS_SPACE_RE = re.compile(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?")


def _strip_trailing_units(s: str) -> str:
    """Drop unit text after a value: `125\\text{ miles}`, `15\\mbox{ cm}^2`, `125 miles`, `0.06 yuan`."""
    for _ in range(3):
        m = _TRAILING_TEXT_UNIT_RE.search(s)
        if not m:
            break
        before, content = s[: m.start()], m.group(2).strip()
        is_unit = re.search("[A-Za-z]", content) and content.lower() not in _SEPARATOR_WORDS
        if not (is_unit and re.search(r"[\d})]", before)) or (m.group(1) == "mathrm" and len(content) < 2):
            break
        s = before.rstrip()
    words = s.split()  # bare words after a number: "125 miles", "5 square units"
    n_unit_words = 0
    while n_unit_words < min(3, len(words) - 1):
        word = words[-1 - n_unit_words].rstrip(".")
        if not (word.isalpha() and len(word) >= 3 and word.lower() not in _SEPARATOR_WORDS):
            break
        n_unit_words += 1
    if n_unit_words and re.search(r"[\d})]$", words[-1 - n_unit_words]):
        s = " ".join(words[:-n_unit_words])
    return s


def normalize(answer: str) -> tuple[str, bool]:
    """Canonical LaTeX-ish string of an answer, and whether it carried a percent sign. See the module docstring."""
    s = answer.strip().replace("\\$", " ").replace("$", " ")
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
    s = s.strip().rstrip(".").strip()
    choice = _CHOICE_RE.fullmatch(s)
    if choice:
        s = choice.group(1) or choice.group(2)
    if _THOUSANDS_COMMA_RE.fullmatch(s):
        s = s.replace(",", "")
    elif _THOUSANDS_SPACE_RE.fullmatch(s):
        s = s.replace(" ", "")
    return re.sub(r"\s+", " ", s), percent


def _is_wordy(s: str) -> bool:
    """True when the answer contains a word (3+ letters, not all capitals, not a command, subscript or and/or):
    such answers are compared as text."""
    s = re.sub(r"\\(?:begin|end)\s*\{[A-Za-z*]*\}(?:\{[^{}]*\})?", " ", s)  # \begin{pmatrix}, \begin{array}{ccc}
    s = re.sub(r"\\[A-Za-z]+|_\{[^{}]*\}|_[A-Za-z0-9]", " ", s)
    words = re.findall(r"[A-Za-z]+", s)
    # An all-capitals run is a list of point names (triangle ABC), not a word.
    return any(len(w) >= 3 and not w.isupper() and w.lower() not in _SEPARATOR_WORDS for w in words)


# =====================================================================================================================
# 3. Parsing into a tree
# =====================================================================================================================
class Node(NamedTuple):
    """A parse-tree node: `kind` names it, `args` holds the child nodes, `value` a number, a name or operators.

    Scalars: num / dec (value: a Fraction; "dec" marks a decimal literal), sym (value: the name), const (pi, inf),
    add, mul, neg, div, pow, func (value: \\sin, \\sqrt, ...), root (args: radicand, index), apply (f(x); value: f),
    sub (a_{n}; value: a; args: (index,)), fact, abs, binom, pm (a \\pm b), sum (value: the bound variable;
    args: low, high, body), basen (204_5). Structures: list, set, groups (";"-separated lists), bracket (value: the
    brackets, e.g. "[)"), union, ratio, matrix (args: rows of nodes), rel (value: the operators), labeled (args:
    label, value), text (value: the text).
    """

    kind: str
    args: tuple = ()
    value: object = None


class _ParseError(Exception):
    pass


_TOKEN_RE = re.compile(
    r"(?P<ws>\s+)|(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<word>[A-Za-z]+)|(?P<cmd>\\(?:[A-Za-z]+|.))"
    r"|(?P<op><=|>=|!=|\*\*|[-+*/^_(){}\[\],;:=<>!|&'])"
)
_REL_OPS = {
    "=": "=", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "!=": "!=", "\\lt": "<", "\\gt": ">", "\\le": "<=",
    "\\leq": "<=", "\\leqslant": "<=", "\\ge": ">=", "\\geq": ">=", "\\geqslant": ">=", "\\ne": "!=",
    "\\neq": "!=", "\\approx": "~", "\\simeq": "~", "\\in": "in",
}
_FUNCTIONS = {
    "\\sin", "\\cos", "\\tan", "\\sec", "\\csc", "\\cot", "\\arcsin", "\\arccos", "\\arctan", "\\sinh", "\\cosh",
    "\\tanh", "\\ln", "\\log", "\\exp",
}
_INVERSE = {"\\sin": "\\arcsin", "\\cos": "\\arccos", "\\tan": "\\arctan"}
_FUNCTION_LETTERS = "fgh"  # f(x), g(2), h(t) are applications; other letters before "(" multiply: x(x+1)
_MUL_OPS = {"*", "\\cdot", "\\times", "\\ast"}
_DIV_OPS = {"/", "\\div"}


def _tokenize(s: str) -> list[tuple[str, str]]:
    """(type, text) pairs; words become single-letter symbols, except the separators "and"/"or"."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if not m:
            raise _ParseError(f"unexpected character {s[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        text = m.group()
        if kind == "ws":
            continue
        if kind == "word":
            if text.lower() in _SEPARATOR_WORDS:
                tokens.append(("op", ","))
            else:
                tokens.extend(("id", c) for c in text)
        elif kind == "cmd" and text == "\\\\":
            tokens.append(("op", "\\\\"))
        elif text == "**":
            tokens.append(("op", "^"))
        else:
            tokens.append((kind, text))
    return tokens


class _Parser:
    """Recursive descent over the tokens of one normalised answer. Grammar, loosest binding first:

    answer  := list (';' list)*            list := item ((',' | 'and' | 'or') item)*
    item    := union (relop union)*        union := ratio ('\\cup' ratio)*      ratio := sum (':' sum)*
    sum     := ['+'|'-'|'\\pm'] term (('+'|'-'|'\\pm'|'\\mp') term)*
    term    := factor ((mulop | divop | <juxtaposition>) factor)*      factor := ('-'|'+')* power
    power   := postfix ['^' ('-'|'+')* postfix]                       postfix := primary '!'*
    primary := number | letter [subscript] | command ... | '(' list ')' | '[' list ')' | '{' list '}' | '|' sum '|'

    Every cycle of the grammar passes through `parse_primary`, which counts the nesting: at most MAX_DEPTH levels,
    each ~12 Python frames deep (~350 frames in all; Python's default limit is 1000).
    """

    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.pos = 0
        self.nodes = 0
        self.depth = 0
        self.abs_depth = 0

    # -- helpers ------------------------------------------------------------------------------------------------------
    def node(self, kind: str, args: tuple = (), value: object = None) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _ParseError("too many nodes")
        return Node(kind, args, value)

    def peek(self, offset: int = 0) -> tuple[str, str]:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else ("end", "")

    def at(self, *texts: str) -> bool:
        return self.peek()[1] in texts and self.peek()[0] != "end"

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token[0] == "end":
            raise _ParseError("unexpected end")
        self.pos += 1
        return token

    def expect(self, text: str) -> None:
        if self.take()[1] != text:
            raise _ParseError(f"expected {text!r}")

    # -- lists and relations ------------------------------------------------------------------------------------------
    def parse_answer(self) -> Node:
        groups = [self.parse_list(closers=(";",))]
        while self.at(";"):
            self.take()
            groups.append(self.parse_list(closers=(";",)))
        if self.peek()[0] != "end":
            raise _ParseError(f"unexpected {self.peek()[1]!r}")
        groups = [g for g in groups if g.args]
        if not groups:
            raise _ParseError("empty answer")
        return groups[0] if len(groups) == 1 else self.node("groups", tuple(groups))

    def parse_list(self, closers: tuple[str, ...], separators: tuple[str, ...] = (",", "\\\\")) -> Node:
        """Items separated by `separators` until a closer (not consumed) or the end; empty items are skipped."""
        items = []
        while True:
            while self.at(*separators):
                self.take()
            if self.peek()[0] == "end" or self.at(*closers):
                break
            items.append(self.parse_item())
            if len(items) > MAX_ITEMS:
                raise _ParseError("too many items")
            if not (self.at(*separators) or self.at(*closers) or self.peek()[0] == "end"):
                raise _ParseError(f"unexpected {self.peek()[1]!r}")
        return self.node("list", tuple(items))

    def parse_item(self) -> Node:
        parts = [self.parse_union()]
        ops = []
        while self.peek()[1] in _REL_OPS and self.peek()[0] in ("op", "cmd"):
            ops.append(_REL_OPS[self.take()[1]])
            parts.append(self.parse_union())
        return parts[0] if not ops else self.node("rel", tuple(parts), tuple(ops))

    def parse_union(self) -> Node:
        parts = [self.parse_ratio()]
        while self.at("\\cup"):
            self.take()
            parts.append(self.parse_ratio())
        return parts[0] if len(parts) == 1 else self.node("union", tuple(parts))

    def parse_ratio(self) -> Node:
        parts = [self.parse_sum()]
        while self.at(":"):
            self.take()
            parts.append(self.parse_sum())
        return parts[0] if len(parts) == 1 else self.node("ratio", tuple(parts))

    # -- arithmetic ---------------------------------------------------------------------------------------------------
    def parse_sum(self) -> Node:
        if self.at("-"):
            self.take()
            acc = self.node("neg", (self.parse_term(),))
        elif self.at("+"):
            self.take()
            acc = self.parse_term()
        elif self.at("\\pm", "\\mp"):
            self.take()
            acc = self.node("pm", (self.node("num", value=Fraction(0)), self.parse_term()))
        else:
            acc = self.parse_term()
        while self.at("+", "-", "\\pm", "\\mp"):
            op = self.take()[1]
            term = self.parse_term()
            if op in ("+", "-"):
                term = term if op == "+" else self.node("neg", (term,))
                acc = self.node("add", (acc.args if acc.kind == "add" else (acc,)) + (term,))  # flat: 1+1+...+1
            else:
                acc = self.node("pm", (acc, term if op == "\\pm" else self.node("neg", (term,))))
        return acc

    def starts_primary(self) -> bool:
        """Can the next token begin a factor multiplied by juxtaposition ("2x", "(a)(b)", "3\\sqrt2")?"""
        kind, text = self.peek()
        if kind in ("num", "id"):
            return True
        if kind == "cmd":
            return text not in _REL_OPS and text not in _MUL_OPS and text not in _DIV_OPS and text not in (
                "\\pm", "\\mp", "\\cup", "\\}", "\\end", "\\\\")
        if text == "|":
            return self.abs_depth == 0
        return text in ("(", "{")

    def parse_term(self) -> Node:
        factors = [self.parse_factor()]
        while True:
            if self.at(*_MUL_OPS) and self.peek()[0] in ("op", "cmd"):
                self.take()
                factors.append(self.parse_factor())
            elif self.at(*_DIV_OPS) and self.peek()[0] in ("op", "cmd"):
                self.take()
                left = factors[0] if len(factors) == 1 else self.node("mul", tuple(factors))
                factors = [self.node("div", (left, self.parse_factor()))]
            elif self.starts_primary():
                last = factors[-1]
                if last.kind in ("num", "dec") and self.peek()[0] == "num":
                    raise _ParseError("two numbers side by side")  # "12 13" is no product
                factor = self.parse_factor()
                if _is_integer_literal(last) and factor.kind == "div" and all(map(_is_integer_literal, factor.args)):
                    factors[-1] = self.node("add", (last, factor))  # mixed number 918\frac{1}{2}
                else:
                    factors.append(factor)
            else:
                break
        return factors[0] if len(factors) == 1 else self.node("mul", tuple(factors))

    def parse_factor(self) -> Node:
        return self.signed(self.parse_power)  # "2 \cdot -3"

    def parse_power(self) -> Node:
        base = self.parse_postfix()
        if self.at("^"):
            self.take()
            return self.node("pow", (base, self.parse_exponent()))
        return base

    def parse_exponent(self) -> Node:
        return self.signed(self.parse_postfix)  # 2^-1, 2^{-1}

    def parse_postfix(self) -> Node:
        """A primary and its factorials: 5!, (n+1)!!."""
        node = self.parse_primary()
        while self.at("!"):
            self.take()
            node = self.node("fact", (node,))
        return node

    def signed(self, parse: Callable[[], Node]) -> Node:
        """What `parse` reads, after any number of signs: "--3" is neg(neg(3))."""
        signs = []
        while self.at("-", "+"):
            signs.append(self.take()[1])
        node = parse()
        for sign in reversed(signs):
            if sign == "-":
                node = self.node("neg", (node,))
        return node

    # -- primaries ----------------------------------------------------------------------------------------------------
    def parse_group(self, closer: str) -> Node:
        """One item and its closer (the opener already taken), e.g. the TeX argument {x+1}."""
        item = self.parse_item()
        self.expect(closer)
        return item

    def parse_arg(self) -> Node:
        """A TeX macro argument: {group}, or a single token (one digit of a number: \\frac13 is 1/3)."""
        kind, text = self.peek()
        if text == "{" and kind == "op":
            self.take()
            return self.parse_group("}")
        if kind == "num":
            self.take()
            if len(text) > 1 and text[0] != ".":
                self.tokens.insert(self.pos, ("num", text[1:]))
                text = text[0]
            return self.number(text)
        if kind == "id" or text in ("\\pi", "\\infty"):
            return self.parse_primary()
        raise _ParseError("bad macro argument")

    def number(self, text: str) -> Node:
        return self.node("dec" if "." in text else "num", value=Fraction(text))

    def parse_subscript(self) -> Node:
        self.expect("_")
        if self.at("{"):
            self.take()
            index = self.parse_list(closers=("}",))
            self.expect("}")
            return index.args[0] if len(index.args) == 1 else self.node("bracket", index.args, "()")
        return self.parse_arg()

    def parse_primary(self) -> Node:
        """One level of nesting (every cycle of the grammar passes through here), then read_primary."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _ParseError("nesting too deep")
        node = self.read_primary()
        self.depth -= 1  # (after a _ParseError the whole parse is abandoned, so no `finally` is needed)
        return node

    def read_primary(self) -> Node:
        kind, text = self.take()
        if kind == "num":
            if self.at("_"):
                base = self.parse_subscript()
                if base.kind != "num":
                    raise _ParseError("a numeral's base must be a number")
                return self.node("basen", value=f"{text}_{base.value}")
            return self.number(text)
        if kind == "id":
            return self.parse_letter(text)
        if kind == "cmd":
            return self.parse_command(text)
        if text == "(" or text == "[":
            return self.parse_bracket(text)
        if text == "{":
            inner = self.parse_list(closers=("}",))
            self.expect("}")
            if len(inner.args) == 1:
                return inner.args[0]
            return self.node("set", inner.args)
        if text == "|" and self.abs_depth == 0:
            self.abs_depth += 1
            inner = self.parse_sum()
            self.abs_depth -= 1
            self.expect("|")
            return self.node("abs", (inner,))
        raise _ParseError(f"unexpected {text!r}")

    def parse_bracket(self, opener: str) -> Node:
        """( ... ) or [ ... ] or a half-open interval; one item in round brackets is just grouping."""
        inner = self.parse_list(closers=(")", "]"), separators=(",", ";"))
        closer = self.take()[1]
        if closer not in (")", "]"):
            raise _ParseError("unclosed bracket")
        if len(inner.args) == 1 and opener + closer in ("()", "[]"):
            return inner.args[0]
        if not inner.args:
            raise _ParseError("empty brackets")
        return self.node("bracket", inner.args, opener + closer)

    def parse_letter(self, letter: str) -> Node:
        name = letter
        while self.at("'"):
            self.take()
            name += "'"
        if self.at("_"):
            index = self.parse_subscript()
            node = self.node("sub", (index,), name)
        elif letter in _FUNCTION_LETTERS and self.at("("):
            self.take()
            args = self.parse_list(closers=(")",))
            self.expect(")")
            node = self.node("apply", args.args, name)
        else:
            node = self.node("sym", value=name)
        return node

    def parse_command(self, cmd: str) -> Node:
        if cmd == "\\frac":
            return self.node("div", (self.parse_arg(), self.parse_arg()))
        if cmd == "\\binom":
            return self.node("binom", (self.parse_arg(), self.parse_arg()))
        if cmd == "\\sqrt":
            index = None
            if self.at("["):
                self.take()
                index = self.parse_group("]")
            radicand = self.parse_arg()
            if index is None:
                return self.node("func", (radicand,), "\\sqrt")
            return self.node("root", (radicand, index))
        if cmd in _FUNCTIONS:
            return self.parse_function(cmd)
        if cmd == "\\pi":
            return self.node("const", value="pi")
        if cmd == "\\infty":
            return self.node("const", value="inf")
        if cmd == "\\sum":
            return self.parse_sum_operator()
        if cmd == "\\begin":
            return self.parse_matrix()
        if cmd == "\\{":
            inner = self.parse_list(closers=("\\}",))
            self.expect("\\}")
            return self.node("set", inner.args)
        if cmd == "\\angle":  # \angle ABC names a quantity, like ABC
            return self.node("sym", value=cmd)
        raise _ParseError(f"unsupported command {cmd}")

    def parse_function(self, cmd: str) -> Node:
        """\\sin x, \\sin(x), \\sin^2 x, \\log_2 8, \\ln|x|; an unbracketed argument is a product like `2x`."""
        power = None
        base = None
        if self.at("_") and cmd == "\\log":
            self.take()
            base = self.parse_arg()
        if self.at("^"):
            self.take()
            power = self.parse_exponent()
            if cmd in _INVERSE and power == Node("neg", (Node("num", value=Fraction(1)),)):
                cmd, power = _INVERSE[cmd], None
        if self.at("("):
            self.take()
            arg = self.parse_group(")")
        elif self.at("{"):
            self.take()
            arg = self.parse_group("}")
        else:
            factors = [self.parse_power()]
            while self.peek()[0] in ("num", "id") or self.at("\\pi"):
                factors.append(self.parse_power())
            arg = factors[0] if len(factors) == 1 else self.node("mul", tuple(factors))
        node = self.node("func", (arg,), cmd)
        if base is not None:
            node = self.node("div", (node, self.node("func", (base,), "\\ln")))
        return node if power is None else self.node("pow", (node, power))

    def parse_sum_operator(self) -> Node:
        """\\sum_{k=a}^{b} body (body: the following term)."""
        self.expect("_")
        self.expect("{")
        var_kind, var = self.take()
        if var_kind != "id":
            raise _ParseError("bad summation variable")
        self.expect("=")
        low = self.parse_group("}")
        self.expect("^")
        high = self.parse_arg()
        body = self.parse_term()
        return self.node("sum", (low, high, body), var)

    def parse_matrix(self) -> Node:
        """\\begin{pmatrix} a & b \\\\ c & d \\end{pmatrix} (also bmatrix, vmatrix, array{cc}, ...)."""
        env = self.read_braced_name()
        if env == "array" and self.at("{"):
            self.read_braced_name()
        rows: list[list[Node]] = [[]]
        while True:
            if self.at("\\end"):
                self.take()
                if self.read_braced_name() != env:
                    raise _ParseError("mismatched \\end")
                break
            if self.at("&"):
                self.take()
                continue
            if self.at("\\\\"):
                self.take()
                rows.append([])
                continue
            rows[-1].append(self.parse_item())
        rows = [r for r in rows if r]
        if not rows or len({len(r) for r in rows}) != 1:
            raise _ParseError("ragged matrix")
        return self.node("matrix", tuple(tuple(r) for r in rows))

    def read_braced_name(self) -> str:
        self.expect("{")
        name = ""
        while not self.at("}"):
            name += self.take()[1]
        self.take()
        return name


def _children(node: Node) -> tuple[Node, ...]:
    """The child nodes (a matrix holds them in rows)."""
    return tuple(c for row in node.args for c in row) if node.kind == "matrix" else node.args


def _tree_depth(root: Node) -> int:
    """Depth of a tree, computed without recursion (it is not yet known to be shallow)."""
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _children(node))
    return deepest


def _is_integer_literal(node: Node) -> bool:
    return node.kind == "num" and node.value.denominator == 1


def _key(node: Node) -> str:
    """A canonical string of a scalar or a label; sums and products are sorted, so `ab` and `ba` share a key."""
    if node.kind in ("num", "dec"):
        return str(node.value)
    if node.kind in ("sym", "const", "basen", "text"):
        return f"{node.kind}:{node.value}"
    parts = [_key(a) for a in node.args]
    if node.kind in ("add", "mul", "set", "list"):
        parts.sort()
    return f"{node.kind}:{node.value}(" + ",".join(parts) + ")"


# =====================================================================================================================
# 4. The answer's structure: labels (x = 2), relations, lists, +-
# =====================================================================================================================
_SCALAR_KINDS = {"num", "dec", "sym", "const", "add", "mul", "neg", "div", "pow", "func", "root", "apply", "sub",
                 "fact", "abs", "binom", "pm", "sum", "basen"}


def _is_label(node: Node) -> bool:
    """Does this name a quantity (x, a_3, f(x), |AB|, A:B, NO/BO, (p, q)) rather than state a value?"""
    if node.kind == "sym":
        return node.value not in ("e", "i")
    if node.kind in ("sub", "apply"):
        return True
    if node.kind in ("mul", "div", "ratio", "abs", "bracket"):
        return all(_is_label(a) for a in node.args)
    return False


def _expand_pm(node: Node) -> list[Node]:
    """The alternatives of a scalar with \\pm/\\mp: `1 \\pm \\sqrt5` -> [1 + sqrt5, 1 - sqrt5]; at most 8."""
    if node.kind not in _SCALAR_KINDS or not _contains_pm(node):
        return [node]
    if node.kind == "pm":
        lefts, rights = _expand_pm(node.args[0]), _expand_pm(node.args[1])
        out = [Node("add", (a, b)) for a in lefts for b in rights]
        out += [Node("add", (a, Node("neg", (b,)))) for a in lefts for b in rights]
    else:
        out = [Node(node.kind, (), node.value)]
        for child in node.args:
            out = [Node(o.kind, o.args + (c,), o.value) for o in out for c in _expand_pm(child)]
            if len(out) > MAX_PM_ALTERNATIVES:
                raise _ParseError("too many \\pm")
    if len(out) > MAX_PM_ALTERNATIVES:
        raise _ParseError("too many \\pm")
    return out


def _contains_pm(node: Node) -> bool:
    return node.kind == "pm" or any(isinstance(a, Node) and _contains_pm(a) for a in node.args)


def _orient(node: Node) -> Node:
    """A relation chain written with > / >= is reversed to read with < / <= (5 >= x becomes x <= 5)."""
    ops = node.value
    if all(op in (">", ">=") for op in ops):
        flipped = tuple({">": "<", ">=": "<="}[op] for op in reversed(ops))
        return Node("rel", tuple(reversed(node.args)), flipped)
    return node


def _canon_item(node: Node) -> list[Node]:
    """One list item in comparable form; several when it contains \\pm."""
    if node.kind == "rel":
        canon = _canon_relation(node)
        if canon.kind == "labeled" and canon.args[1].kind in _SCALAR_KINDS:  # x = 1 \pm \sqrt2: two labeled values
            return [Node("labeled", (canon.args[0], v)) for v in _expand_pm(canon.args[1])]
        return [canon]
    if node.kind in _SCALAR_KINDS:
        return _expand_pm(node)
    return [_canon_structure(node)]


def _canon_relation(node: Node) -> Node:
    """`x = 2` -> labeled(x, 2); `x \\approx 2.1` -> labeled; `\\sqrt3/3 \\approx 0.577` -> the exact side;
    `x \\in S` -> labeled(x, S); a chain of equal constants `2 + 3 = 5` -> its last value; other relations stay."""
    parts, ops = node.args, node.value
    if all(op in ("=", "~") for op in ops):
        if _is_label(parts[0]):
            return Node("labeled", (parts[0], _canon_value(parts[-1])))
        if "~" in ops:
            return _canon_value(parts[0])
        if len(parts) >= 2 and all(p.kind in _SCALAR_KINDS and not _free_symbols(p) for p in parts):
            values = [_constant_value(p) for p in parts]
            if None not in values and all(_close(v, values[-1], REL_TOL, None) for v in values):
                return _canon_value(parts[-1])
    if ops == ("in",) and _is_label(parts[0]):
        return Node("labeled", (parts[0], _canon_structure(parts[1])))
    return _orient(Node("rel", parts, ops))


def _canon_value(node: Node) -> Node:
    """The value side of a label: a scalar (kept with its \\pm), or a structure."""
    return node if node.kind in _SCALAR_KINDS else _canon_structure(node)


def _canon_structure(node: Node) -> Node:
    """Brackets, sets, unions, ratios and matrices with their elements in comparable form."""
    if node.kind in ("set", "list"):
        return Node(node.kind, tuple(_canon_items(node.args)))
    if node.kind in ("bracket", "ratio", "union"):
        return Node(node.kind, tuple(_single(_canon_item(a)) for a in node.args), node.value)
    if node.kind == "matrix":
        return Node("matrix", tuple(tuple(_single(_canon_item(c)) for c in row) for row in node.args))
    return node


def _single(items: list[Node]) -> Node:
    """An element that must stay one element (inside a tuple); \\pm inside it is kept as a `pm` scalar."""
    return items[0] if len(items) == 1 else Node("set", tuple(items))


def _canon_items(nodes: tuple[Node, ...]) -> list[Node]:
    """List items in comparable form; a run of labeled items repeating a label pattern becomes tuples:
    `p = 5, q = 2, p = 7, q = 2` -> (p=5, q=2), (p=7, q=2)."""
    items = [c for n in nodes for c in _canon_item(n)]
    if len(items) > MAX_ITEMS:
        raise _ParseError("too many items")
    if len(items) >= 4 and all(i.kind == "labeled" for i in items):
        labels = [_key(i.args[0]) for i in items]
        period = next((p for p in range(1, len(labels)) if labels[p] == labels[0]), 0)
        if period >= 2 and len(labels) % period == 0 and all(labels[i] == labels[i % period]
                                                                for i in range(len(labels))):
            items = [Node("bracket", tuple(items[i : i + period]), "()") for i in range(0, len(items), period)]
    return items


def _answer_items(tree: Node) -> tuple[Node, ...]:
    """The top-level elements of an answer (a set when there are several)."""
    if tree.kind == "groups":  # "p=5, q=2; p=7, q=2": each group with several items is a tuple
        if any(len(g.args) > 1 for g in tree.args):
            return tuple(_canon_items(tuple(Node("bracket", g.args, "()") if len(g.args) > 1 else g.args[0]
                                            for g in tree.args)))
        return tuple(_canon_items(tuple(g.args[0] for g in tree.args)))
    if tree.kind == "list" and len(tree.args) == 1:
        tree = tree.args[0]
    return tuple(_canon_items(tree.args if tree.kind in ("list", "set") else (tree,)))


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
        tree = _Parser(normalized).parse_answer()
        if _tree_depth(tree) > MAX_DEPTH:  # 1/2/.../n, 1!!!...! and ---1 nest without recursion in the parser
            raise _ParseError("tree too deep")
        items = _answer_items(tree)
    except _ParseError:
        items = (Node("text", value=compact),)
    return _Answer(items, percent, compact)


# =====================================================================================================================
# 5. Numbers: evaluation at points, comparison
# =====================================================================================================================
class _EvalError(Exception):
    pass


def _free_symbols(node: Node, bound: frozenset = frozenset()) -> set[str]:
    """Names of the free symbols (e, i and summation variables excluded)."""
    if node.kind == "sym":
        return set() if node.value in ("e", "i") or node.value in bound else {node.value}
    if node.kind == "sum":
        low, high, body = node.args
        return _free_symbols(low, bound) | _free_symbols(high, bound) | _free_symbols(body, bound | {node.value})
    out: set[str] = set()
    for a in node.args:
        if isinstance(a, Node):
            out |= _free_symbols(a, bound)
        elif isinstance(a, tuple):  # matrix rows
            for c in a:
                out |= _free_symbols(c, bound)
    return out


def _bound_symbols(node: Node) -> set[str]:
    """Symbols used in the bounds of a \\sum: they get integer values at the evaluation points."""
    out: set[str] = set()
    if node.kind == "sum":
        out |= _free_symbols(node.args[0]) | _free_symbols(node.args[1])
    for a in node.args:
        if isinstance(a, Node):
            out |= _bound_symbols(a)
    return out


def _is_symbolic(node: Node) -> bool:
    """Does the value vary between evaluation points (free symbols, f(x), a_n)?"""
    return bool(_free_symbols(node)) or _has_unknown_function(node)


def _has_unknown_function(node: Node) -> bool:
    return node.kind in ("apply", "sub", "basen") or any(
        isinstance(a, Node) and _has_unknown_function(a) for a in node.args)


def _decimal_places(node: Node) -> int | None:
    """Most digits after the point among the decimal literals in the tree (None: no decimal literal)."""
    places = None
    if node.kind == "dec":
        places = _decimal_digits(node.value)
    for a in node.args:
        if isinstance(a, Node):
            p = _decimal_places(a)
            if p is not None:
                places = p if places is None else max(places, p)
    return places


def _decimal_digits(value: Fraction) -> int:
    """Digits after the decimal point of a terminating decimal (its denominator is 2^a 5^b)."""
    d = value.denominator
    twos = fives = 0
    while d % 2 == 0:
        d //= 2
        twos += 1
    while d % 5 == 0:
        d //= 5
        fives += 1
    return max(twos, fives)


def _hash_unit(*parts: object) -> float:
    """A deterministic pseudo-random number in [0, 1) from the parts (same in every process, unlike hash())."""
    return zlib.crc32(repr(parts).encode()) / 2**32


class _Evaluator:
    """Evaluates scalar trees to exact Fractions where possible, else to complex floats; raises _EvalError."""

    def __init__(self, env: dict[str, Fraction | complex], point: int):
        self.env = env
        self.point = point
        self.budget = EVAL_BUDGET

    def ev(self, node: Node) -> Fraction | complex:
        self.budget -= 1
        if self.budget < 0:
            raise _EvalError("evaluation budget exhausted")
        try:
            value = getattr(self, "ev_" + node.kind)(node)
        except (ZeroDivisionError, OverflowError, ValueError, TypeError, AttributeError) as exc:
            raise _EvalError(str(exc)) from None
        if isinstance(value, Fraction):
            if value.numerator.bit_length() + value.denominator.bit_length() > MAX_EXACT_BITS:
                value = complex(float(value))  # OverflowError for a really huge one -> caught by the caller
            return value
        if cmath.isnan(value):
            raise _EvalError("nan")
        return value

    def ev_num(self, node):
        return node.value

    ev_dec = ev_num

    def ev_sym(self, node):
        name = node.value
        if name in self.env:
            return self.env[name]
        if name == "e":
            return complex(math.e)
        if name == "i":
            return 1j
        raise _EvalError(f"unbound symbol {name}")

    def ev_const(self, node):
        return complex(math.pi) if node.value == "pi" else complex(math.inf)

    def ev_add(self, node):
        total = Fraction(0)
        for a in node.args:
            total = total + self.ev(a)
        return total

    def ev_mul(self, node):
        product = Fraction(1)
        for a in node.args:
            product = product * self.ev(a)
        return product

    def ev_neg(self, node):
        return -self.ev(node.args[0])

    def ev_div(self, node):
        return self.ev(node.args[0]) / self.ev(node.args[1])

    def ev_pow(self, node):
        return _power(self.ev(node.args[0]), self.ev(node.args[1]))

    def ev_root(self, node):
        radicand, index = self.ev(node.args[0]), self.ev(node.args[1])
        if isinstance(index, Fraction) and index.denominator == 1 and index.numerator % 2 == 1 and \
                isinstance(radicand, Fraction) and radicand < 0:
            return -_power(-radicand, 1 / index)  # the real cube root of a negative number: \sqrt[3]{-8} = -2
        return _power(radicand, 1 / index)

    def ev_func(self, node):
        x = self.ev(node.args[0])
        name = node.value
        if name == "\\sqrt":
            return _power(x, Fraction(1, 2))
        z = complex(x)
        if name in ("\\ln", "\\log"):
            return cmath.log(z)  # \log is the natural logarithm; both sides are read the same way
        functions = {
            "\\sin": cmath.sin, "\\cos": cmath.cos, "\\tan": cmath.tan, "\\arcsin": cmath.asin,
            "\\arccos": cmath.acos, "\\arctan": cmath.atan, "\\sinh": cmath.sinh, "\\cosh": cmath.cosh,
            "\\tanh": cmath.tanh, "\\exp": cmath.exp,
            "\\sec": lambda v: 1 / cmath.cos(v), "\\csc": lambda v: 1 / cmath.sin(v),
            "\\cot": lambda v: cmath.cos(v) / cmath.sin(v),
        }
        return functions[name](z)

    def ev_abs(self, node):
        x = self.ev(node.args[0])
        return abs(x) if isinstance(x, Fraction) else complex(abs(x))

    def ev_fact(self, node):
        x = self.ev(node.args[0])
        if not (isinstance(x, Fraction) and x.denominator == 1 and 0 <= x <= MAX_FACTORIAL):
            raise _EvalError("factorial out of range")
        return Fraction(math.factorial(int(x)))

    def ev_binom(self, node):
        n, k = self.ev(node.args[0]), self.ev(node.args[1])
        if not all(isinstance(v, Fraction) and v.denominator == 1 for v in (n, k)) or not 0 <= n <= MAX_FACTORIAL:
            raise _EvalError("binomial out of range")
        return Fraction(math.comb(int(n), int(k)) if k >= 0 else 0)

    def ev_pm(self, node):
        raise _EvalError("\\pm has two values")

    def ev_apply(self, node):
        return self.random_function(node.value, [self.ev(a) for a in node.args])

    def ev_sub(self, node):
        return self.random_function("_" + node.value, [self.ev(node.args[0])])

    def ev_basen(self, node):
        return complex(1 + _hash_unit(node.value, self.point))

    def random_function(self, name: str, args: list) -> complex:
        """f(z1, z2, ..) = c0 + sum_j (c1 z_j + c2 z_j^2 + c3 z_j^3): the same unknown function on both sides."""
        value = complex(1 + _hash_unit(name, self.point, "c0"))
        for j, z in enumerate(args):
            z = complex(z)
            c1, c2, c3 = (0.5 + _hash_unit(name, self.point, j, c) for c in (1, 2, 3))
            value += c1 * z + c2 * z * z + c3 * z * z * z / 7
        return value

    def ev_sum(self, node):
        low, high = self.ev(node.args[0]), self.ev(node.args[1])
        if not all(isinstance(v, Fraction) and v.denominator == 1 for v in (low, high)):
            raise _EvalError("non-integer summation bounds")
        if high - low + 1 > MAX_SUM_TERMS:
            raise _EvalError("too many terms")
        saved = self.env.get(node.value)
        total = Fraction(0)
        for k in range(int(low), int(high) + 1):
            self.env[node.value] = Fraction(k)
            total = total + self.ev(node.args[2])
        if saved is None:
            self.env.pop(node.value, None)
        else:
            self.env[node.value] = saved
        return total


def _integer_root(n: int, k: int) -> int | None:
    """The exact k-th root of a non-negative integer, or None."""
    if n < 2:
        return n
    r = round(n ** (1.0 / k)) if n.bit_length() < 1000 else None
    if r is None:
        return None
    for candidate in (r - 1, r, r + 1):
        if candidate >= 0 and candidate**k == n:
            return candidate
    return None


def _power(base: Fraction | complex, exponent: Fraction | complex) -> Fraction | complex:
    """base ** exponent, exact when the result is a modest rational (8^{2/3} = 4), else complex (principal branch)."""
    if isinstance(base, Fraction) and isinstance(exponent, Fraction):
        bits = base.numerator.bit_length() + base.denominator.bit_length()
        if exponent.denominator == 1:
            if abs(exponent.numerator) * max(bits, 1) <= MAX_EXACT_BITS:
                return base**exponent.numerator
        elif base > 0 and exponent.denominator <= 12 and abs(exponent.numerator) * bits <= MAX_EXACT_BITS:
            num = _integer_root(base.numerator, exponent.denominator)
            den = _integer_root(base.denominator, exponent.denominator)
            if num is not None and den is not None:
                return Fraction(num, den) ** exponent.numerator
        if base > 0:
            return complex(float(base) ** float(exponent))  # OverflowError when huge -> inconclusive
    return complex(base) ** complex(exponent)


def _as_complex(value: Fraction | complex) -> complex | None:
    """The value as a complex float; None for a rational too large for a float (171! is)."""
    try:
        return complex(value)
    except OverflowError:
        return None


def _close(a: Fraction | complex, b: Fraction | complex, rel_tol: float, places: int | None) -> bool:
    """Equal values: exactly for two rationals; with a decimal literal involved (`places` digits), within rel_tol
    and within the last written digit; otherwise (float evaluations of exact forms) within FLOAT_REL_TOL."""
    if isinstance(a, Fraction) and isinstance(b, Fraction) and a == b:
        return True
    if isinstance(a, Fraction) and isinstance(b, Fraction) and places is None:
        return False
    a, b = _as_complex(a), _as_complex(b)
    if a is None or b is None:  # a rational beyond float range against a different value
        return False
    if not (cmath.isfinite(a) and cmath.isfinite(b)):
        return a == b
    diff = abs(a - b)
    if places is not None and diff >= 10.0**-places:
        return False
    tolerance = rel_tol if places is not None else FLOAT_REL_TOL
    return diff <= tolerance * max(abs(a), abs(b)) or diff <= ABS_TOL


def _constant_value(node: Node) -> Fraction | complex | None:
    """The value of a tree without free symbols, or None."""
    try:
        return _Evaluator({}, 0).ev(node)
    except (_EvalError, OverflowError):
        return None


# Magnitudes of the symbol values at the evaluation points: one point near 1 (where x^{50} + 1 and x^{50} differ
# visibly and nothing overflows), one larger, one anywhere; signs are random except at the first point.
_POINT_RANGES = ((0.5, 1.2), (1.2, 2.5), (0.3, 2.5))


class _Context:
    """One comparison: the evaluation points for the free symbols of both answers, and memoised results."""

    def __init__(self, answers: list[_Answer], rel_tol: float):
        self.rel_tol = rel_tol
        symbols: set[str] = set()
        integers: set[str] = set()
        for answer in answers:
            for item in answer.items:
                for node in _scalars_in(item):
                    symbols |= _free_symbols(node)
                    integers |= _bound_symbols(node)
        self.points = []
        for j in range(N_POINTS):
            env: dict[str, Fraction | complex] = {}
            low, high = _POINT_RANGES[j % len(_POINT_RANGES)]
            for name in sorted(symbols):
                if name in integers:
                    env[name] = Fraction(3 + int(7 * _hash_unit(name, j)))
                else:
                    sign = 1 if j == 0 or _hash_unit(name, j, "sign") < 0.5 else -1  # point 0 all positive
                    env[name] = complex(sign * (low + (high - low) * _hash_unit(name, j)))
            self.points.append(env)
        self.values: dict[int, list] = {}
        self.keep: list[Node] = []  # nodes built during the comparison, kept alive so their id() stays unique
        self.equal_memo: dict[tuple[int, int], bool] = {}

    def evaluate(self, node: Node) -> list:
        """Values of a scalar at the points (one value for a constant); None where evaluation failed."""
        key = id(node)
        if key not in self.values:
            points = self.points if _is_symbolic(node) else self.points[:1]
            out = []
            for j, env in enumerate(points):
                try:
                    out.append(_Evaluator(dict(env), j).ev(node))
                except (_EvalError, OverflowError):
                    out.append(None)
            self.values[key] = out
            self.keep.append(node)
        return self.values[key]


def _scalars_in(node: Node):
    """The scalar subtrees at the leaves of an answer structure."""
    if node.kind in _SCALAR_KINDS:
        yield node
        return
    for a in node.args:
        if isinstance(a, Node):
            yield from _scalars_in(a)
        elif isinstance(a, tuple):
            for c in a:
                yield from _scalars_in(c)


def _scalar_equal(a: Node, b: Node, ctx: _Context) -> bool:
    """Two scalar expressions denote the same number/function (see the module docstring, step 4)."""
    if _key(a) == _key(b):
        return True
    va, vb = ctx.evaluate(a), ctx.evaluate(b)
    if len(va) != len(vb):  # one side constant, the other not: compare the constant at every point
        va, vb = (va * N_POINTS)[:N_POINTS], (vb * N_POINTS)[:N_POINTS]
    places = _combined_places(a, b)
    resolved = False  # some point where they agree convincingly: exactly, to the written decimals, or where floats
    for x, y in zip(va, vb):  # would show a difference of 1
        if x is None and y is None:
            continue
        if x is None or y is None or not _close(x, y, ctx.rel_tol, places):
            return False
        exact = isinstance(x, Fraction) and isinstance(y, Fraction)
        same_infinity = x == y and not exact and not cmath.isfinite(_as_complex(x) or 0)
        resolved = resolved or exact or places is not None or same_infinity or _magnitude(x, y) <= LARGE_FLOAT
    return resolved


def _magnitude(x: Fraction | complex, y: Fraction | complex) -> float:
    x, y = _as_complex(x), _as_complex(y)
    return math.inf if x is None or y is None else max(abs(x), abs(y))


def _combined_places(a: Node, b: Node) -> int | None:
    """The decimal precision to hold a comparison to: that of the less precise side that wrote decimals."""
    pa, pb = _decimal_places(a), _decimal_places(b)
    if _is_symbolic(a) or _is_symbolic(b):
        return None
    if pa is None:
        return pb
    return pa if pb is None else min(pa, pb)


def _equations_equal(d1: Node, d2: Node, ctx: _Context, sign: str) -> bool:
    """d1 = c * d2 for one constant c at all points (c > 0 for inequalities: sign "+"; c != 0 for equations)."""
    if not (_is_symbolic(d1) and _is_symbolic(d2)):
        return False
    v1, v2 = ctx.evaluate(d1), ctx.evaluate(d2)
    if len(v1) != len(v2):
        return False
    ratios = []
    for x, y in zip(v1, v2):
        x, y = (None if v is None else _as_complex(v) for v in (x, y))
        if x is None or y is None:
            return False
        if abs(x) <= ABS_TOL and abs(y) <= ABS_TOL:
            continue
        if abs(x) <= ABS_TOL or abs(y) <= ABS_TOL:
            return False
        ratios.append(x / y)
    if len(ratios) < 2:
        return False
    c = ratios[0]
    if any(abs(r - c) > RATIO_REL_TOL * abs(c) for r in ratios):
        return False
    return sign != "+" or (abs(c.imag) <= RATIO_REL_TOL * abs(c) and c.real > 0)


# =====================================================================================================================
# 6. Equivalence of structures
# =====================================================================================================================
def _sets_equal(xs: list[Node] | tuple[Node, ...], ys: list[Node] | tuple[Node, ...], ctx: _Context) -> bool:
    """Every element of each side equals some element of the other (duplicates do not matter)."""
    if not xs or not ys or len(xs) > MAX_ITEMS or len(ys) > MAX_ITEMS:
        return False
    return all(any(_equal(x, y, ctx) for y in ys) for x in xs) and all(any(_equal(x, y, ctx) for x in xs) for y in ys)


def _is_infinite(node: Node) -> bool:
    if node.kind == "neg":
        return _is_infinite(node.args[0])
    return node.kind == "const" and node.value == "inf"


def _bracket_shape(node: Node) -> str:
    """Brackets of a tuple/interval; an infinite endpoint counts as open: [2, \\infty] is [2, \\infty)."""
    opener, closer = node.value
    if _is_infinite(node.args[0]):
        opener = "("
    if _is_infinite(node.args[-1]):
        closer = ")"
    return opener + closer


def _relation_as_interval(rel: Node) -> Node | None:
    """`x < 3` -> labeled(x, (-inf, 3)); `-2 <= x <= 7` -> labeled(x, [-2, 7]); else None."""
    ops, parts = rel.value, rel.args
    if not all(op in ("<", "<=") for op in ops) or len(parts) not in (2, 3):
        return None
    inf = Node("const", value="inf")
    if len(parts) == 3 and _is_label(parts[1]) and not _is_symbolic(parts[0]) and not _is_symbolic(parts[2]):
        label, low, high, lo_op, hi_op = parts[1], parts[0], parts[2], ops[0], ops[1]
    elif len(parts) == 2 and _is_label(parts[0]) and not _is_symbolic(parts[1]):
        label, low, high, lo_op, hi_op = parts[0], Node("neg", (inf,)), parts[1], "<", ops[0]
    elif len(parts) == 2 and _is_label(parts[1]) and not _is_symbolic(parts[0]):
        label, low, high, lo_op, hi_op = parts[1], parts[0], inf, ops[0], "<"
    else:
        return None
    shape = ("[" if lo_op == "<=" else "(") + ("]" if hi_op == "<=" else ")")
    return Node("labeled", (label, Node("bracket", (low, high), shape)))


def _relations_equal(a: Node, b: Node, ctx: _Context) -> bool:
    """Same chain element by element, or (two-sided) the same relation up to a constant factor."""
    if a.value == b.value and len(a.args) == len(b.args) and all(
            _equal(x, y, ctx) for x, y in zip(a.args, b.args)):
        return True
    if len(a.args) == 2 and len(b.args) == 2 and a.value == b.value:
        if all(p.kind in _SCALAR_KINDS for p in a.args + b.args):
            d1 = Node("add", (a.args[1], Node("neg", (a.args[0],))))
            d2 = Node("add", (b.args[1], Node("neg", (b.args[0],))))
            ctx.keep.extend((d1, d2))
            return _equations_equal(d1, d2, ctx, "+" if a.value[0] in ("<", "<=") else "any")
    ia, ib = _relation_as_interval(a), _relation_as_interval(b)
    if ia is not None and ib is not None:
        ctx.keep.extend((ia, ib))
        return _equal(ia, ib, ctx)
    return False


def _as_equation(labeled: Node) -> Node:
    return Node("rel", (labeled.args[0], labeled.args[1]), ("=",))


def _equal(a: Node, b: Node, ctx: _Context) -> bool:
    """Structural equivalence of two comparable answer elements (memoised per comparison)."""
    key = (id(a), id(b))
    if key not in ctx.equal_memo:
        ctx.equal_memo[key] = _equal_uncached(a, b, ctx)
    return ctx.equal_memo[key]


def _equal_uncached(a: Node, b: Node, ctx: _Context) -> bool:
    ka, kb = a.kind, b.kind
    if ka == "labeled" and kb == "labeled":
        if _key(a.args[0]) == _key(b.args[0]):
            return _equal(a.args[1], b.args[1], ctx)
        ea, eb = _as_equation(a), _as_equation(b)
        ctx.keep.extend((ea, eb))
        return _relations_equal(ea, eb, ctx)
    if ka == "labeled" or kb == "labeled":
        labeled, other = (a, b) if ka == "labeled" else (b, a)
        if other.kind == "rel" and other.value == ("=",):
            equation = _as_equation(labeled)
            ctx.keep.append(equation)
            return _relations_equal(equation, other, ctx)
        return _equal(labeled.args[1], other, ctx)
    if ka == "rel" and kb == "rel":
        return _relations_equal(a, b, ctx)
    if ka == "rel" or kb == "rel":
        rel, other = (a, b) if ka == "rel" else (b, a)
        interval = _relation_as_interval(rel)
        if interval is None:
            return False
        ctx.keep.append(interval)
        return _equal(interval, other, ctx)
    if ka == "text" or kb == "text":
        return ka == kb and a.value == b.value
    if ka in ("set", "list") or kb in ("set", "list"):
        xs = a.args if ka in ("set", "list") else (a,)
        ys = b.args if kb in ("set", "list") else (b,)
        return _sets_equal(xs, ys, ctx)
    if ka == "union" and kb == "union":
        return _sets_equal(a.args, b.args, ctx)
    if ka == "bracket" and kb == "bracket":
        return (len(a.args) == len(b.args) and _bracket_shape(a) == _bracket_shape(b)
                and all(_equal(x, y, ctx) for x, y in zip(a.args, b.args)))
    if ka == "matrix" and kb == "matrix":
        return (len(a.args) == len(b.args) and len(a.args[0]) == len(b.args[0]) and all(
            _equal(x, y, ctx) for ra, rb in zip(a.args, b.args) for x, y in zip(ra, rb)))
    if {ka, kb} == {"matrix", "bracket"}:  # a column/row vector written as a tuple
        matrix, bracket = (a, b) if ka == "matrix" else (b, a)
        cells = [c for row in matrix.args for c in row]
        flat = len(matrix.args) == 1 or len(matrix.args[0]) == 1
        return flat and bracket.value == "()" and len(cells) == len(bracket.args) and all(
            _equal(x, y, ctx) for x, y in zip(cells, bracket.args))
    if ka == "ratio" and kb == "ratio":
        return len(a.args) == len(b.args) and all(_equal(x, y, ctx) for x, y in zip(a.args, b.args))
    if ka in _SCALAR_KINDS and kb in _SCALAR_KINDS:
        return _scalar_equal(a, b, ctx)
    return False


def _scaled_percent(answer: _Answer) -> _Answer | None:
    """'28%' read as 0.28 (only for a single scalar)."""
    if len(answer.items) != 1 or answer.items[0].kind not in _SCALAR_KINDS:
        return None
    hundred = Node("num", value=Fraction(100))
    return _Answer((Node("div", (answer.items[0], hundred)),), False, "")


def is_equiv(pred: str | None, gold: str | None, *, rel_tol: float = REL_TOL) -> bool:
    """Whether an extracted answer equals a gold answer (bare LaTeX or plain text). See the module docstring."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    a, b = _analyse(pred), _analyse(gold)
    if not a.items or not b.items:
        return False
    if a.compact == b.compact:
        return True
    ctx = _Context([a, b], rel_tol)
    if _sets_equal(a.items, b.items, ctx):
        return True
    if a.percent != b.percent:  # "28%" against "0.28"
        scaled_a, scaled_b = (_scaled_percent(a), b) if a.percent else (a, _scaled_percent(b))
        if scaled_a is not None and scaled_b is not None:
            ctx = _Context([scaled_a, scaled_b], rel_tol)
            return _sets_equal(scaled_a.items, scaled_b.items, ctx)
    return False


# =====================================================================================================================
# 7. The reward, and time limits
# =====================================================================================================================
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


def _score(response: str, gold: str, box_policy: str, no_box_policy: str, rel_tol: float) -> float:
    answer = extract_answer(response, box_policy=box_policy, no_box_policy=no_box_policy)
    return 1.0 if answer is not None and is_equiv(answer, gold, rel_tol=rel_tol) else 0.0


def math_reward(response: str, gold: str, *, box_policy: str = "last_group", no_box_policy: str = "zero",
                rel_tol: float = REL_TOL) -> float:
    """1.0 if the response's final answer equals `gold`, else 0.0. Never raises on any text: an internal error or a
    call past CALL_TIME_LIMIT_S scores 0.0 and is counted in STATS. (An unknown policy name is a ValueError.)"""
    if box_policy not in BOX_POLICIES or no_box_policy not in NO_BOX_POLICIES:
        raise ValueError(f"unknown policy: box_policy={box_policy!r}, no_box_policy={no_box_policy!r}")
    if isinstance(gold, (int, float, Fraction)):
        gold = str(gold)
    score, failure = _guarded_call(_score, (response, gold, box_policy, no_box_policy, rel_tol), CALL_TIME_LIMIT_S)
    STATS.failures += failure is not None
    STATS.timeouts += failure == "timeout"
    return score


def prompt_reward(text: str, prompt) -> float:
    """The trainer's default reward for a `data.Prompt`: `math_reward` against its problem's gold answer. It lives
    here, in a module that imports no torch or vLLM, so `RewardPool` workers start in a fraction of a second."""
    return math_reward(text, prompt.problem.answer)


# =====================================================================================================================
# 8. RewardPool: scoring in worker processes
# =====================================================================================================================
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
