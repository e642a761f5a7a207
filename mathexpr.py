"""Safe maths for the reward checker: parse an answer into a tree, evaluate trees, and decide whether two answers
are the same maths.

    >>> equal(parse("x = 3, x = -3"), parse("\\\\pm 3")), equal(parse("\\\\sqrt{8}"), parse("2\\\\sqrt2"))
    (True, True)
    >>> equal(parse("(1, 2]"), parse("(1, 2)")), equal(parse("\\\\pi"), parse("\\\\frac{355}{113}"))
    (False, False)

`reward.py` works on text (extraction, normalisation) and hands this module an answer it has already cleaned (no `$`,
`\\left`, `\\dfrac`, units or `\\text{}`). Model output is untrusted text: it is never given to `eval`, to Python's
compiler or to any library's string parser. The tree comes from a fixed grammar and only then becomes numbers.

1. Parsing (`parse`): a recursive-descent parser (`_Parser`; grammar in its docstring) builds a tree of `Node`s:
   numbers (exact fractions), one-letter symbols and Greek letters (`\\alpha`), `\\pi`, `\\infty`, `\\frac`
   `\\sqrt[n]` `^` `!` (of a non-integer: Gamma) `\\binom`, `\\sin`-like functions, `\\lg`, `\\log_b` (also
   `\\log^2_{b}`), `|x|` `\\lvert x\\rvert` `\\vert x\\vert` `\\|x\\|`, `\\lfloor` `\\lceil`, primes (`f(x)'`), `\\pm`,
   relations (`= < \\le \\ne \\approx \\in`), tuples and intervals, sets `\\{..\\}`, `\\cup`, ratios `a:b`, matrices,
   `\\sum` and `\\prod`, lists separated by ",", ";", "and", "or". A base-n numeral (`204_5`), a decorated name
   (`\\overline{AB}`, `\\vec v`), `\\angle`, `\\triangle`, `\\prime` and `\\dots` are kept as opaque names.
2. Canonical form: `x = 2` and `k \\in [1, 2]` become a labeled value (a letter, `a_3`, `f(x)`, `|AB|` on the left of
   the relation, as Math-Verify reads it; also on the right, `5 = x`; `7 = 11a + c` is an equation, not a value);
   `x \\in \\{1, 2\\}` becomes the list 1, 2; `a \\pm b` becomes the two values (also inside a relation's side);
   `5 \\ge x` reads `x \\le 5`; `p = 5, q = 2, p = 7, q = 2` becomes the tuples (5, 2), (7, 2).
3. Comparison (`equal`): lists and sets match as sets (every element on each side equals one on the other), tuples
   and intervals element by element with the same brackets (an infinite end counts as open), a labeled value against
   a bare value, equations up to a nonzero factor (`2x + 4y = 3` equals `y = -x/2 + 3/4`), inequalities up to a
   positive factor, chains like `-2 \\le x \\le 7` as intervals. Scalars: exact rational arithmetic when both sides
   are rational; otherwise complex floats (principal branches) at N_POINTS pseudo-random points for the free symbols
   (symbols in sum bounds get integers; `f(x)` and `a_n` are the same pseudo-random function on both sides). Two exact
   forms must agree to FLOAT_REL_TOL (float rounding only); a decimal answer to REL_TOL and to its last written
   digit (0.0833333333333333 is 1/12, 0.0833 is not; 11111111100.5 is not 11111111100). Numbers that cannot decide
   (evaluation failed, or the sides agree only at magnitudes above LARGE_FLOAT, where a float cannot show a
   difference of 1) count as different: a false negative, never a false positive.

Bounds, each named below and none reached by a real answer: answer size (MAX_NODES, MAX_ITEMS,
MAX_PM_ALTERNATIVES), nesting (MAX_DEPTH), number size (MAX_EXACT_BITS, MAX_FACTORIAL; beyond them floats, which
overflow to "cannot decide" at once: `9^{9^{9^9}}` costs microseconds) and work (MAX_SUM_TERMS, EVAL_BUDGET).
MAX_DEPTH bounds every recursion in this module, the parser's (~12 Python frames per level) and the tree walks' (a
few), so a call needs at most ~350 frames of Python's default 1000 and no result depends on `sys.getrecursionlimit()`.

Deliberately left out: a computer algebra system (sympy, the old fallback for what floats cannot decide, decided
none of the peer cases; such answers now count as different); commands outside the grammar above (reward.py compares
such an answer as text); integrals, limits and derivatives; set-builder notation; merging overlapping intervals; unit
conversion; degrees vs radians; the real cube root of a symbolic negative radicand; rounding (a gold `7.78` is not
matched by `70/9`); `\\log^2_3 x` with an unbraced base after the power (read as the numeral `2_3`; `\\log^{2}_3 x`
and `\\log_3^2 x` work).
"""

from __future__ import annotations

import cmath
import math
import re
import zlib
from fractions import Fraction
from typing import Callable, NamedTuple

MAX_NODES = 2000  # parse-tree nodes per answer: keeps parsing and each evaluation linear and small
MAX_DEPTH = 30  # nesting while parsing (brackets, arguments) and depth of the finished tree (1/2/.../n, ---1)
MAX_ITEMS = 40  # elements in a list/set; set comparison is quadratic in this
MAX_PM_ALTERNATIVES = 8  # a \pm b expands to 2 values; three \pm signs at most
MAX_EXACT_BITS = 20_000  # exact rationals up to ~6000 digits; beyond, floats (which overflow quickly and safely)
MAX_FACTORIAL = 1000  # 1000! has 2568 digits; larger factorials and binomials cannot be decided
MAX_SUM_TERMS = 1000  # terms of one \sum with numeric bounds
EVAL_BUDGET = 200_000  # evaluation steps per comparison (nested sums multiply)
REL_TOL = 1e-9  # how close a decimal answer must be to the value it approximates (~9 significant digits)
FLOAT_REL_TOL = 1e-12  # two exact forms evaluated in floats agree to ~1e-15; this leaves room for rounding only
ABS_TOL = 1e-12  # absolute tolerance for float values near zero (sin(pi) evaluates to 1.2e-16)
LARGE_FLOAT = 1e6  # agreement only above this magnitude proves nothing (x + 1 == x in floats at 1e16)
RATIO_REL_TOL = 1e-7  # equations: (lhs - rhs) of one side over the other's must be the same constant at every point
N_POINTS = 3  # evaluation points for expressions with free symbols; a wrong identity survives 3 random points ~never

SEPARATOR_WORDS = ("and", "or")  # words that separate list items ("6 and 8"); reward.py's text rules know them too


class Node(NamedTuple):
    """A parse-tree node: `kind` names it, `args` holds the child nodes, `value` a number, a name or operators.

    Scalars (SCALAR_KINDS): num / dec (value: a Fraction; "dec" marks a decimal literal), sym (value: the name),
    const (pi, inf), add, mul, neg, div, pow, func (value: \\sin, \\sqrt, ...), root (args: radicand, index), apply
    (f(x); value: f), sub (a_{n}; value: a; args: (index,)), fact, abs, binom, pm (a \\pm b), sum (value: the bound
    variable; args: low, high, body), basen (204_5). Structures: list, set, groups (";"-separated lists), bracket
    (value: the brackets, e.g. "[)"), union, ratio, matrix (args: rows, each a tuple of nodes), rel (value: the
    operators), labeled (args: label, value), text (value: the text; made by reward.py for answers read as text).
    """

    kind: str
    args: tuple = ()
    value: object = None


SCALAR_KINDS = {"num", "dec", "sym", "const", "add", "mul", "neg", "div", "pow", "func", "root", "apply", "sub",
                "fact", "abs", "binom", "pm", "sum", "prod", "basen"}


class ParseError(Exception):
    """The text is not in the grammar, or it exceeds one of the limits."""


def parse(text: str) -> tuple[Node, ...]:
    """The elements of a normalised answer in canonical form: one, or several for a list or set."""
    parser = _Parser(text)
    tree = parser.parse_answer()
    # 1/2/.../n, 1!!!...! and ---1 nest without recursion in the parser. (No tree is deeper than its node count, so
    # most answers skip the walk.)
    if parser.nodes > MAX_DEPTH and _tree_depth(tree) > MAX_DEPTH:
        raise ParseError("tree too deep")
    return _answer_items(tree)


def equal(xs: tuple[Node, ...], ys: tuple[Node, ...]) -> bool:
    """Whether two parsed answers (from `parse`) are the same: as sets of elements, each compared as in step 3."""
    return _sets_equal(xs, ys, _Context(xs + ys))


# =====================================================================================================================
# 1. Parsing
# =====================================================================================================================
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
    "\\tanh", "\\ln", "\\log", "\\lg", "\\exp",
}
_INVERSE = {"\\sin": "\\arcsin", "\\cos": "\\arccos", "\\tan": "\\arctan"}
# Greek letters are symbols like x (\pi is the constant); \epsilon and \varepsilon stay two names.
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma",
    "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega",
}
# A decorated name (\overline{AB}, \vec{v}) is one symbol: the decoration and what it decorates.
_DECORATIONS = {"\\overline", "\\bar", "\\vec", "\\hat", "\\widehat", "\\tilde", "\\overrightarrow", "\\dot",
                "\\underline", "\\overarc"}
_NAMED_SYMBOLS = {"\\angle", "\\triangle", "\\prime"}  # \angle ABC names a quantity, like ABC
_DOTS = {"\\dots", "\\ldots", "\\cdots"}  # one element "...": "1, 2, \dots" is not the list 1, 2
# Bracket pairs read as functions: \lfloor x \rfloor, \lceil x \rceil, \lvert x \rvert, \vert x \vert, \| v \|.
_PAIRED = {"\\lfloor": ("\\rfloor", "\\floor"), "\\lceil": ("\\rceil", "\\ceil"), "\\lvert": ("\\rvert", "abs"),
           "\\vert": ("\\vert", "abs"), "\\|": ("\\|", "abs")}
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
            raise ParseError(f"unexpected character {s[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        text = m.group()
        if kind == "ws":
            continue
        if kind == "word":
            if text.lower() in SEPARATOR_WORDS:
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
            raise ParseError("too many nodes")
        return Node(kind, args, value)

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def at(self, *texts: str) -> bool:
        kind, text = self.peek()
        return text in texts and kind != "end"

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token[0] == "end":
            raise ParseError("unexpected end")
        self.pos += 1
        return token

    def expect(self, text: str) -> None:
        if self.take()[1] != text:
            raise ParseError(f"expected {text!r}")

    # -- lists and relations ------------------------------------------------------------------------------------------
    def parse_answer(self) -> Node:
        groups = [self.parse_list(closers=(";",))]
        while self.at(";"):
            self.take()
            groups.append(self.parse_list(closers=(";",)))
        if self.peek()[0] != "end":
            raise ParseError(f"unexpected {self.peek()[1]!r}")
        groups = [g for g in groups if g.args]
        if not groups:
            raise ParseError("empty answer")
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
                raise ParseError("too many items")
            if not (self.at(*separators) or self.at(*closers) or self.peek()[0] == "end"):
                raise ParseError(f"unexpected {self.peek()[1]!r}")
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
                "\\pm", "\\mp", "\\cup", "\\}", "\\end", "\\\\", "\\rfloor", "\\rceil", "\\rvert") and not (
                text in ("\\vert", "\\|") and self.abs_depth > 0)
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
                    raise ParseError("two numbers side by side")  # "12 13" is no product
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
        """A primary and its factorials and primes: 5!, (n+1)!!, f(x)', y''."""
        node = self.parse_primary()
        while self.at("!") or (self.at("'") and node.kind in ("sym", "apply")):
            if self.take()[1] == "!":
                node = self.node("fact", (node,))
            else:
                node = self.node(node.kind, node.args, str(node.value) + "'")
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
    def parse_primary(self) -> Node:
        """One level of nesting (every cycle of the grammar passes through here), then read_primary."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("nesting too deep")
        node = self.read_primary()
        self.depth -= 1  # (after a ParseError the whole parse is abandoned, so no `finally` is needed)
        return node

    def read_primary(self) -> Node:
        kind, text = self.take()
        if kind == "num":
            if self.at("_"):
                base = self.parse_subscript()
                if base.kind != "num":
                    raise ParseError("a numeral's base must be a number")
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
            return inner.args[0] if len(inner.args) == 1 else self.node("set", inner.args)
        if text == "|" and self.abs_depth == 0:
            self.abs_depth += 1
            inner = self.parse_sum()
            self.abs_depth -= 1
            self.expect("|")
            return self.node("abs", (inner,))
        raise ParseError(f"unexpected {text!r}")

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
        if kind == "id" or text in ("\\pi", "\\infty") or (kind == "cmd" and text[1:] in _GREEK):
            return self.parse_primary()
        raise ParseError("bad macro argument")

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

    def parse_bracket(self, opener: str) -> Node:
        """( ... ) or [ ... ] or a half-open interval; one item in round brackets is just grouping."""
        inner = self.parse_list(closers=(")", "]"), separators=(",", ";"))
        closer = self.take()[1]
        if closer not in (")", "]"):
            raise ParseError("unclosed bracket")
        if len(inner.args) == 1 and opener + closer in ("()", "[]"):
            return inner.args[0]
        if not inner.args:
            raise ParseError("empty brackets")
        return self.node("bracket", inner.args, opener + closer)

    def parse_letter(self, letter: str) -> Node:
        name = letter
        while self.at("'"):
            self.take()
            name += "'"
        if self.at("_"):
            return self.node("sub", (self.parse_subscript(),), name)
        if letter in _FUNCTION_LETTERS and self.at("("):
            self.take()
            args = self.parse_list(closers=(")",))
            self.expect(")")
            return self.node("apply", args.args, name)
        return self.node("sym", value=name)

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
            return self.node("func", (radicand,), "\\sqrt") if index is None else self.node("root", (radicand, index))
        if cmd in _FUNCTIONS:
            return self.parse_function(cmd)
        if cmd == "\\pi":
            return self.node("const", value="pi")
        if cmd == "\\infty":
            return self.node("const", value="inf")
        if cmd[1:] in _GREEK:
            return self.parse_letter(cmd)
        if cmd in ("\\sum", "\\prod"):
            return self.parse_big_operator(cmd[1:])
        if cmd == "\\begin":
            return self.parse_matrix()
        if cmd == "\\{":
            inner = self.parse_list(closers=("\\}",))
            self.expect("\\}")
            return self.node("set", inner.args)
        if cmd in _PAIRED:
            closer, name = _PAIRED[cmd]
            self.abs_depth += closer == cmd  # inside \vert x \vert the next \vert closes, it does not open
            inner = self.parse_group(closer)
            self.abs_depth -= closer == cmd
            return self.node("abs", (inner,)) if name == "abs" else self.node("func", (inner,), name)
        if cmd in _DECORATIONS:
            return self.node("sym", value=f"{cmd}({_key(self.parse_arg())})")
        if cmd in _DOTS:
            return self.node("sym", value="...")
        if cmd in _NAMED_SYMBOLS:
            return self.node("sym", value=cmd)
        raise ParseError(f"unsupported command {cmd}")

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
        if self.at("_") and cmd == "\\log" and base is None:  # the base after the power: \log^2_3 x
            self.take()
            base = self.parse_arg()
        if self.at("(", "{"):
            arg = self.parse_group(")" if self.take()[1] == "(" else "}")
        else:  # \sin 2x is sin(2x), not (sin 2) x
            factors = [self.parse_power()]
            while self.peek()[0] in ("num", "id") or self.at("\\pi") or (
                    self.peek()[0] == "cmd" and self.peek()[1][1:] in _GREEK):
                factors.append(self.parse_power())
            arg = factors[0] if len(factors) == 1 else self.node("mul", tuple(factors))
        node = self.node("func", (arg,), cmd)
        if base is not None:
            node = self.node("div", (node, self.node("func", (base,), "\\ln")))
        return node if power is None else self.node("pow", (node, power))

    def parse_big_operator(self, kind: str) -> Node:
        """\\sum_{k=a}^{b} body or \\prod_{k=a}^{b} body (body: the following term)."""
        self.expect("_")
        self.expect("{")
        var_kind, var = self.take()
        if var_kind != "id":
            raise ParseError("bad summation variable")
        self.expect("=")
        low = self.parse_group("}")
        self.expect("^")
        high = self.parse_arg()
        body = self.parse_term()
        return self.node(kind, (low, high, body), var)

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
                    raise ParseError("mismatched \\end")
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
            raise ParseError("ragged matrix")
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
# 2. Canonical form: labels (x = 2), relations, lists, \pm
# =====================================================================================================================
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
    if node.kind not in SCALAR_KINDS or not _contains_pm(node):
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
                raise ParseError("too many \\pm")
    if len(out) > MAX_PM_ALTERNATIVES:
        raise ParseError("too many \\pm")
    return out


def _contains_pm(node: Node) -> bool:
    return node.kind == "pm" or any(_contains_pm(a) for a in node.args)


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
        if canon.kind == "labeled" and canon.args[1].kind in SCALAR_KINDS:  # x = 1 \pm \sqrt2: two labeled values
            return [Node("labeled", (canon.args[0], v)) for v in _expand_pm(canon.args[1])]
        return [canon]
    if node.kind in SCALAR_KINDS:
        return _expand_pm(node)
    return [_canon_structure(node)]


def _canon_relation(node: Node) -> Node:
    """`x = 2` -> labeled(x, 2); `x \\approx 2.1` -> labeled; `\\sqrt3/3 \\approx 0.577` -> the exact side;
    `x \\in S` -> labeled(x, S); a chain of equal constants `2 + 3 = 5` -> its last value; other relations stay."""
    parts, ops = node.args, node.value
    if all(op in ("=", "~") for op in ops):
        if _is_label(parts[0]):
            return Node("labeled", (parts[0], _canon_value(parts[-1])))
        if len(parts) == 2 and _is_label(parts[1]) and not _is_symbolic(parts[0]):  # 5 = x reads x = 5
            return Node("labeled", (parts[1], _canon_value(parts[0])))
        if "~" in ops:
            return _canon_value(parts[0])
        if all(p.kind in SCALAR_KINDS and not _free_symbols(p) for p in parts):
            values = [_constant_value(p) for p in parts]
            if None not in values and all(_close(v, values[-1], None) for v in values):
                return _canon_value(parts[-1])
    if ops == ("in",) and _is_label(parts[0]):
        return Node("labeled", (parts[0], _canon_structure(parts[1])))
    return _orient(Node("rel", parts, ops))


def _canon_value(node: Node) -> Node:
    """The value side of a label: a scalar (kept with its \\pm), or a structure."""
    return node if node.kind in SCALAR_KINDS else _canon_structure(node)


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
    """An element that must stay one element (inside a tuple); \\pm inside it makes it the set of alternatives."""
    return items[0] if len(items) == 1 else Node("set", tuple(items))


def _canon_items(nodes: tuple[Node, ...]) -> list[Node]:
    """List items in comparable form; a run of labeled items repeating a label pattern becomes tuples:
    `p = 5, q = 2, p = 7, q = 2` -> (p=5, q=2), (p=7, q=2)."""
    items = [c for n in nodes for c in _canon_item(n)]
    if len(items) > MAX_ITEMS:
        raise ParseError("too many items")
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
    items = _canon_items(tree.args if tree.kind in ("list", "set") else (tree,))
    if len(items) == 1 and items[0].kind == "labeled" and items[0].args[1].kind == "set":  # x \in \{1, 2\}: 1, 2
        items = list(items[0].args[1].args)
    return tuple(items)


# =====================================================================================================================
# 3. Numbers: evaluation at points
# =====================================================================================================================
class _EvalError(Exception):
    pass


def _free_symbols(node: Node, bound: frozenset = frozenset()) -> set[str]:
    """Names of the free symbols (e, i and summation variables excluded)."""
    if node.kind == "sym":
        return set() if node.value in ("e", "i") or node.value in bound else {node.value}
    if node.kind in ("sum", "prod"):
        low, high, body = node.args
        return _free_symbols(low, bound) | _free_symbols(high, bound) | _free_symbols(body, bound | {node.value})
    out: set[str] = set()
    for child in _children(node):
        out |= _free_symbols(child, bound)
    return out


def _bound_symbols(node: Node) -> set[str]:
    """Symbols used in the bounds of a \\sum: they get integer values at the evaluation points."""
    out: set[str] = set()
    if node.kind in ("sum", "prod"):
        out |= _free_symbols(node.args[0]) | _free_symbols(node.args[1])
    for a in node.args:
        out |= _bound_symbols(a)
    return out


def _is_symbolic(node: Node) -> bool:
    """Does the value vary between evaluation points (free symbols, f(x), a_n)?"""
    return bool(_free_symbols(node)) or _has_unknown_function(node)


def _has_unknown_function(node: Node) -> bool:
    return node.kind in ("apply", "sub", "basen") or any(_has_unknown_function(c) for c in _children(node))


def _decimal_places(node: Node) -> int | None:
    """Most digits after the point among the decimal literals in the tree (None: no decimal literal)."""
    places = _decimal_digits(node.value) if node.kind == "dec" else None
    for a in node.args:
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
        method = getattr(self, "ev_" + node.kind, None)
        if method is None:  # a structure inside a scalar: 2(1, 2), f(x = 1), 2^{1, 2}
            raise _EvalError(f"a {node.kind} has no value")
        try:
            value = method(node)
        except (ZeroDivisionError, OverflowError, ValueError) as exc:
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
        if name in ("\\floor", "\\ceil"):
            if isinstance(x, complex):
                if x.imag or not math.isfinite(x.real):
                    raise _EvalError("floor of a non-real number")
                x = Fraction(x.real)
            return Fraction(math.floor(x) if name == "\\floor" else math.ceil(x))
        z = complex(x)
        if name == "\\lg":
            return cmath.log10(z)
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
        """n! exactly for an integer n; x! = Gamma(x + 1) for a real x (floats, up to 170!)."""
        x = self.ev(node.args[0])
        if isinstance(x, Fraction) and x.denominator == 1 and 0 <= x <= MAX_FACTORIAL:
            return Fraction(math.factorial(int(x)))
        z = complex(x)
        if z.imag or z.real > 170:
            raise _EvalError("factorial out of range")
        return complex(math.gamma(z.real + 1))  # ValueError at a pole (-1, -2, ...) -> cannot decide

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
        return self.big_operator(node, Fraction(0), lambda total, term: total + term)

    def ev_prod(self, node):
        return self.big_operator(node, Fraction(1), lambda product, factor: product * factor)

    def big_operator(self, node, start, combine):
        """\\sum or \\prod over integer bounds, at most MAX_SUM_TERMS terms."""
        low, high = self.ev(node.args[0]), self.ev(node.args[1])
        if not all(isinstance(v, Fraction) and v.denominator == 1 for v in (low, high)):
            raise _EvalError("non-integer summation bounds")
        if high - low + 1 > MAX_SUM_TERMS:
            raise _EvalError("too many terms")
        saved = self.env.get(node.value)
        acc = start
        for k in range(int(low), int(high) + 1):
            self.env[node.value] = Fraction(k)
            acc = combine(acc, self.ev(node.args[2]))
        if saved is None:
            self.env.pop(node.value, None)
        else:
            self.env[node.value] = saved
        return acc


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
            return complex(float(base) ** float(exponent))  # OverflowError when huge -> cannot decide
    return complex(base) ** complex(exponent)


def _as_complex(value: Fraction | complex) -> complex | None:
    """The value as a complex float; None for a rational too large for a float (171! is)."""
    try:
        return complex(value)
    except OverflowError:
        return None


def _close(a: Fraction | complex, b: Fraction | complex, places: int | None) -> bool:
    """Equal values: exactly for two rationals; with a decimal literal involved (`places` digits), within REL_TOL
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
    tolerance = REL_TOL if places is not None else FLOAT_REL_TOL
    return diff <= tolerance * max(abs(a), abs(b)) or diff <= ABS_TOL


def _magnitude(x: Fraction | complex, y: Fraction | complex) -> float:
    x, y = _as_complex(x), _as_complex(y)
    return math.inf if x is None or y is None else max(abs(x), abs(y))


def _constant_value(node: Node) -> Fraction | complex | None:
    """The value of a scalar without free symbols, or None."""
    try:
        return _Evaluator({}, 0).ev(node)
    except (_EvalError, OverflowError):
        return None


# Magnitudes of the symbol values at the evaluation points: one point near 1 (where x^{50} + 1 and x^{50} differ
# visibly and nothing overflows), one larger, one anywhere; signs are random except at the first point.
_POINT_RANGES = ((0.5, 1.2), (1.2, 2.5), (0.3, 2.5))


class _Context:
    """One comparison: the evaluation points for the free symbols of both answers, and memoised results."""

    def __init__(self, items: tuple[Node, ...]):
        symbols: set[str] = set()
        integers: set[str] = set()
        for item in items:
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
    if node.kind in SCALAR_KINDS:
        yield node
        return
    for child in _children(node):
        yield from _scalars_in(child)


def _scalar_equal(a: Node, b: Node, ctx: _Context) -> bool:
    """Two scalar expressions denote the same number or function (module docstring, step 3)."""
    if _key(a) == _key(b):
        return True
    try:  # \pm left inside a relation's side
        alternatives_a, alternatives_b = _expand_pm(a), _expand_pm(b)
    except ParseError:  # more than MAX_PM_ALTERNATIVES
        return False
    if len(alternatives_a) > 1 or len(alternatives_b) > 1:
        ctx.keep.extend(alternatives_a + alternatives_b)
        return _sets_equal(alternatives_a, alternatives_b, ctx)
    va, vb = ctx.evaluate(a), ctx.evaluate(b)
    if len(va) != len(vb):  # one side constant, the other not: compare the constant at every point
        va, vb = (va * N_POINTS)[:N_POINTS], (vb * N_POINTS)[:N_POINTS]
    places = _combined_places(a, b)
    resolved = False  # some point where they agree convincingly: exactly, to the written decimals, or where floats
    for x, y in zip(va, vb):  # would show a difference of 1
        if x is None and y is None:
            continue
        if x is None or y is None or not _close(x, y, places):
            return False
        exact = isinstance(x, Fraction) and isinstance(y, Fraction)
        same_infinity = x == y and not exact and not cmath.isfinite(_as_complex(x) or 0)
        resolved = resolved or exact or places is not None or same_infinity or _magnitude(x, y) <= LARGE_FLOAT
    return resolved


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
# 4. Equivalence of structures
# =====================================================================================================================
def _sets_equal(xs: tuple[Node, ...] | list[Node], ys: tuple[Node, ...] | list[Node], ctx: _Context) -> bool:
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
        if all(p.kind in SCALAR_KINDS for p in a.args + b.args):
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
        cells = _children(matrix)
        flat = len(matrix.args) == 1 or len(matrix.args[0]) == 1
        return flat and bracket.value == "()" and len(cells) == len(bracket.args) and all(
            _equal(x, y, ctx) for x, y in zip(cells, bracket.args))
    if ka == "ratio" and kb == "ratio":
        return len(a.args) == len(b.args) and all(_equal(x, y, ctx) for x, y in zip(a.args, b.args))
    if ka in SCALAR_KINDS and kb in SCALAR_KINDS:
        return _scalar_equal(a, b, ctx)
    return False
