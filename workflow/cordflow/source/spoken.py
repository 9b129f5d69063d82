"""The spoken form of a question: what the TTS reads.

Numbers become words, symbols become their names, simple LaTeX is verbalised in the
style of ClearSpeak ("the fraction with numerator ... and denominator ...", "end root")
and markup is stripped. Anything that cannot be spoken without ambiguity raises
:class:`Unspeakable`, which the sourcing stage turns into a rejected row.

It works in three small steps, each easy to reason about on its own:

1. :func:`_segments` strips markup and splits the text into text and math segments
   (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``);
2. :func:`_tokenize` turns a segment into tokens (numbers, words, commands, braces,
   symbols); in math mode letters are single variables and spaces are dropped;
3. :class:`_Parser` builds a small tree (groups, parentheses, fractions, roots,
   scripts) and :class:`_Speaker` walks it, emitting words and punctuation.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from functools import lru_cache

from num2words import num2words


class Unspeakable(ValueError):
    """The text cannot be spoken unambiguously. ``code`` is the rejection reason code."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _latex(detail: str) -> Unspeakable:
    return Unspeakable("unspeakable_latex", detail)


# ----------------------------------------------------------------------------- numbers

_NUMBER_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")
_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_MAX_INT_DIGITS = 30  # beyond this num2words gives up; digits are read one by one


@lru_cache(maxsize=1 << 16)
def number_words(text: str) -> str:
    """``"1,234.05"`` -> ``"one thousand, two hundred and thirty-four point zero five"``."""
    text = text.replace(",", "")
    whole, _, frac = text.partition(".")
    if len(whole) > 1 and whole.startswith("0") or len(whole) > _MAX_INT_DIGITS:
        spoken = " ".join(_DIGITS[int(d)] for d in whole)
    else:
        spoken = num2words(int(whole or "0"))
    if frac:
        spoken += " point " + " ".join(_DIGITS[int(d)] for d in frac)
    return spoken


def _denominator_word(den: int, plural: bool) -> str:
    if den == 2:
        return "halves" if plural else "half"
    if den == 4:
        return "quarters" if plural else "quarter"
    word = num2words(den, to="ordinal")
    return word + "s" if plural else word


@lru_cache(maxsize=1 << 16)
def fraction_words(num: str, den: str) -> str | None:
    """``3/4`` -> ``"three quarters"`` for denominators 2..10; else None."""
    if not (num.isdigit() and den.isdigit()):
        return None
    n, d = int(num), int(den)
    if not 2 <= d <= 10 or len(num) > 1 and num.startswith("0"):
        return None
    return f"{number_words(num)} {_denominator_word(d, plural=n != 1)}"


@lru_cache(maxsize=1 << 16)
def ordinal_words(num: str) -> str:
    return num2words(int(num), to="ordinal")


# ----------------------------------------------------------------------------- tables

PUNCT = set(",.;:?!")

# Shared by text and math mode: single characters with a name.
_SYMBOL_WORDS = {
    "+": "plus",
    "*": "times",
    "×": "times",
    "·": "times",
    "÷": "divided by",
    "=": "equals",
    "<": "is less than",
    ">": "is greater than",
    "≤": "is less than or equal to",
    "≥": "is greater than or equal to",
    "≠": "is not equal to",
    "≈": "is approximately equal to",
    "±": "plus or minus",
    "%": "percent",
    "°": "degrees",
    "π": "pi",
    "∞": "infinity",
}
_OPERATORS = {"+", "*", "×", "·", "÷", "=", "<", ">", "≤", "≥", "≠", "≈", "±", "-", "−", "/"}
_TEXT_ONLY_WORDS = {"&": "and", "@": "at", "~": "about"}
_SILENT_IN_TEXT = set("\"“”‘’`'()[]…")
_DASHES = {"-", "−", "–", "—"}

# LaTeX commands without arguments: (words, kind). kind: op (binary operator or
# relation: a following minus is unary), const (an operand), func (a named function).
_COMMAND_WORDS = {
    "times": ("times", "op"),
    "cdot": ("times", "op"),
    "div": ("divided by", "op"),
    "pm": ("plus or minus", "op"),
    "mp": ("minus or plus", "op"),
    "neq": ("is not equal to", "op"),
    "ne": ("is not equal to", "op"),
    "leq": ("is less than or equal to", "op"),
    "le": ("is less than or equal to", "op"),
    "leqslant": ("is less than or equal to", "op"),
    "geq": ("is greater than or equal to", "op"),
    "ge": ("is greater than or equal to", "op"),
    "geqslant": ("is greater than or equal to", "op"),
    "lt": ("is less than", "op"),
    "gt": ("is greater than", "op"),
    "approx": ("is approximately equal to", "op"),
    "perp": ("is perpendicular to", "op"),
    "parallel": ("is parallel to", "op"),
    "in": ("is an element of", "op"),
    "infty": ("infinity", "const"),
    "circ": ("degrees", "const"),
    "degree": ("degrees", "const"),
    "%": ("percent", "const"),
    "angle": ("angle", "const"),
    "triangle": ("triangle", "const"),
    "ldots": ("dot dot dot", "const"),
    "cdots": ("dot dot dot", "const"),
    "dots": ("dot dot dot", "const"),
    "sin": ("sine", "func"),
    "cos": ("cosine", "func"),
    "tan": ("tangent", "func"),
    "log": ("log", "func"),
    "ln": ("natural log", "func"),
}
_GREEK = {
    g: g
    for g in ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota",
              "kappa", "lambda", "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi",
              "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma",
              "Phi", "Psi", "Omega"]
}
_GREEK.update(varepsilon="epsilon", varphi="phi", vartheta="theta")
for _name, _word in _GREEK.items():
    _COMMAND_WORDS[_name] = (_word.lower(), "const")

_SPACE_COMMANDS = {",", ";", ":", "!", " ", "quad", "qquad", "displaystyle", "limits"}
_DELIMITER_SIZES = {"left", "right", "big", "Big", "bigl", "bigr", "Bigl", "Bigr"}
_TEXT_COMMANDS = {"text", "textbf", "textit", "textrm", "mathrm", "mathbf", "mathit",
                  "mbox", "operatorname"}
_FRAC_COMMANDS = {"frac", "dfrac", "tfrac", "cfrac"}
_FUNCTION_LETTERS = {"f", "g", "h"}

# Markup: HTML tags by element name, attributes only as name=value (so "a < b > c" and
# "3<a and a>2" are not taken for tags), comments, and script/style elements with their
# content (code, never part of the question); markdown emphasis.
_HTML_ELEMENTS = (
    "a|abbr|address|article|aside|audio|b|big|blockquote|body|br|button|canvas|caption|"
    "center|cite|code|col|colgroup|dd|del|details|dfn|div|dl|dt|em|embed|fieldset|figcaption|"
    "figure|font|footer|form|h[1-6]|head|header|hr|html|i|iframe|img|input|ins|kbd|label|"
    "legend|li|link|main|mark|meta|nav|noscript|object|ol|option|p|param|pre|q|s|samp|"
    "script|section|select|small|source|span|strike|strong|style|sub|summary|sup|svg|table|"
    "tbody|td|template|textarea|tfoot|th|thead|title|tr|tt|u|ul|var|video|wbr"
)
_HTML_TAG = re.compile(
    rf"<!--.*?-->|</?(?:{_HTML_ELEMENTS})(?:\s+[^<>]*=[^<>]*)?\s*/?>",
    re.IGNORECASE | re.DOTALL,
)
_HTML_CODE = re.compile(r"<(script|style)\b[^<>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_MARKDOWN = [
    (re.compile(r"\*\*(.+?)\*\*"), r"\1"),
    (re.compile(r"__(\S(?:.*?\S)?)__"), r"\1"),
    (re.compile(r"`+"), ""),
    (re.compile(r"^[ \t]*#{1,6}[ \t]+", re.MULTILINE), ""),
]


# ----------------------------------------------------------------------------- tokens

@dataclass(frozen=True)
class _Tok:
    kind: str  # num word cmd text lb rb sym space blank
    value: str


def _skip_braced(s: str, i: int) -> tuple[str, int]:
    """``s[i]`` is ``{``: return (content, index after the matching ``}``)."""
    depth, j = 0, i
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1 : j], j + 1
        j += 1
    raise _latex("unbalanced braces")


_COMMAND_NAME = re.compile(r"[A-Za-z]+")
_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")


def _tokenize(s: str, math: bool) -> list[_Tok]:
    out: list[_Tok] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c.isspace():
            j = i
            while j < n and s[j].isspace():
                j += 1
            if not math:
                out.append(_Tok("space", " "))
            i = j
        elif c == "\\":
            m = _COMMAND_NAME.match(s, i + 1)
            if m is None:
                if i + 1 >= n:
                    raise _latex("a lone backslash at the end")
                out.append(_Tok("cmd", s[i + 1]))
                i += 2
                continue
            name, i = m.group(), m.end()
            if name in _TEXT_COMMANDS:
                while i < n and s[i].isspace():
                    i += 1
                if i >= n or s[i] != "{":
                    raise _latex(f"\\{name} without a braced argument")
                content, i = _skip_braced(s, i)
                out.append(_Tok("text", content))
            else:
                out.append(_Tok("cmd", name))
        elif c == "{":
            out.append(_Tok("lb", c))
            i += 1
        elif c == "}":
            out.append(_Tok("rb", c))
            i += 1
        elif m := _NUMBER_RE.match(s, i):
            out.append(_Tok("num", m.group()))
            i = m.end()
        elif c.isalpha():
            if math:
                out.append(_Tok("word", c))
                i += 1
            else:
                m = _WORD.match(s, i)
                out.append(_Tok("word", m.group()))
                i = m.end()
        elif c == "_" and not math and s.startswith("__", i):
            j = i
            while j < n and s[j] == "_":
                j += 1
            out.append(_Tok("blank", "blank"))
            i = j
        else:
            out.append(_Tok("sym", c))
            i += 1
    return out


# ----------------------------------------------------------------------------- tree

@dataclass
class Node:
    kind: str  # num word text group paren frac sqrt sup sub postfix op sym space blank ordinal
    value: str = ""
    children: list[Node] = field(default_factory=list)  # group/paren content
    args: list[list[Node]] = field(default_factory=list)  # frac: [num, den]; sqrt: [x, index]
    base: Node | None = None  # sup/sub/postfix
    op_kind: str = ""  # for op: op const func


_OPENER = {"}": "{", ")": "(", "]": "["}


class _Parser:
    MAX_DEPTH = 32  # nesting deeper than this is not something a listener can follow

    def __init__(self, tokens: list[_Tok], math: bool):
        self.toks = tokens
        self.i = 0
        self.math = math
        self.depth = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def skip_delimiter_sizes(self) -> None:
        while (t := self.peek()) is not None and t.kind == "cmd" and t.value in _DELIMITER_SIZES:
            self.i += 1
            if (d := self.peek()) is not None and d.kind == "sym" and d.value == ".":
                self.i += 1  # \left. is an invisible delimiter

    def sequence(self, closer: str | None) -> list[Node]:
        """Nodes up to ``closer`` ("}" ")" "]"), which is consumed; None: to the end."""
        self.depth += 1
        if self.depth > self.MAX_DEPTH:
            raise _latex(f"nested more than {self.MAX_DEPTH} levels deep")
        try:
            return self._sequence(closer)
        finally:
            self.depth -= 1

    def _sequence(self, closer: str | None) -> list[Node]:
        nodes: list[Node] = []
        while True:
            self.skip_delimiter_sizes()
            t = self.peek()
            if t is None:
                if closer is None:
                    return nodes
                if closer == "}" or self.math:
                    raise _latex(f"'{_OPENER[closer]}' is never closed")
                return nodes  # text: an unclosed parenthesis is just dropped
            if t.kind == "rb" or (t.kind == "sym" and t.value in ")]"):
                if t.value == closer:
                    self.i += 1
                    return nodes
                if self.math or t.kind == "rb":
                    raise _latex(f"unbalanced '{t.value}'")
                self.i += 1  # text: a stray closing parenthesis is dropped
                continue
            nodes.append(self.postfix(self.atom()))

    def atom(self) -> Node:
        t = self.next()
        if t.kind == "num":
            nxt = self.peek()
            if not self.math and nxt is not None and nxt.kind == "word" and (
                nxt.value.lower() in ("st", "nd", "rd", "th") and "." not in t.value
            ):
                self.i += 1
                return Node("ordinal", t.value.replace(",", ""))
            return Node("num", t.value)
        if t.kind in ("word", "text", "space", "blank"):
            return Node(t.kind, t.value)
        if t.kind == "lb":
            return Node("group", children=self.sequence("}"))
        if t.kind == "cmd":
            return self.command(t.value)
        if t.value in "([":
            return Node("paren", t.value, children=self.sequence(")" if t.value == "(" else "]"))
        if t.value == "√":
            return Node("sqrt", args=[[self.argument(script=False)], []])
        if t.value in "&|" and (self.math or t.value == "|"):
            raise _latex(f"'{t.value}' (alignment or absolute value) cannot be spoken")
        return Node("sym", t.value)

    def postfix(self, node: Node) -> Node:
        chained = 0
        while (t := self.peek()) is not None and t.kind == "sym":
            if chained == 4:
                if t.value in "^_²³" or (self.math and t.value in "'!"):
                    raise _latex("more than four scripts or marks on one term")
                break
            chained += 1
            if t.value in "^_":
                self.i += 1
                kind = "sup" if t.value == "^" else "sub"
                node = Node(kind, base=node, args=[[self.argument(script=True)]])
            elif t.value in "²³":
                self.i += 1
                node = Node("sup", base=node, args=[[Node("num", "2" if t.value == "²" else "3")]])
            elif self.math and t.value in "'!":
                self.i += 1
                node = Node("postfix", "prime" if t.value == "'" else "factorial", base=node)
            else:
                break
        return node

    def argument(self, script: bool) -> Node:
        """One argument of ^, _ or a command: a braced group or a single token."""
        self.depth += 1
        try:
            if self.depth > self.MAX_DEPTH:
                raise _latex(f"nested more than {self.MAX_DEPTH} levels deep")
            return self._argument(script)
        finally:
            self.depth -= 1

    def _argument(self, script: bool) -> Node:
        if self.math is False:
            while (t := self.peek()) is not None and t.kind == "space":
                self.i += 1
        t = self.peek()
        if t is None:
            raise _latex("a command or script without its argument")
        if t.kind == "num" and len(t.value) > 1 and (self.math or not script):
            if script:
                raise _latex(f"ambiguous script '{t.value}' (write ^{{{t.value}}})")
            # \frac12: TeX takes one digit per argument.
            self.toks[self.i] = _Tok("num", t.value[1:])
            return Node("num", t.value[0])
        if t.kind == "sym" and t.value in "-−" and not self.math:
            self.i += 1
            nxt = self.peek()
            if nxt is None or nxt.kind != "num":
                raise _latex("a minus sign without a number in a script")
            self.i += 1
            return Node("group", children=[Node("sym", "-"), Node("num", nxt.value)])
        if t.kind in ("num", "word", "lb", "cmd", "text"):
            return self.atom()
        raise _latex(f"'{t.value}' cannot be a script or command argument")

    def command(self, name: str) -> Node:
        if name in _FRAC_COMMANDS:
            num = self.argument(script=False)
            den = self.argument(script=False)
            return Node("frac", args=[[num], [den]])
        if name == "sqrt":
            index: list[Node] = []
            t = self.peek()
            if t is not None and t.kind == "sym" and t.value == "[":
                self.i += 1
                index = self.sequence("]")
            return Node("sqrt", args=[[self.argument(script=False)], index])
        if name in _SPACE_COMMANDS:
            return Node("space", " ")
        if name in _COMMAND_WORDS:
            words, kind = _COMMAND_WORDS[name]
            return Node("op", words, op_kind=kind)
        if name == "$":
            return Node("sym", "$")
        if name == "\\":
            raise _latex("line breaks (\\\\: matrices, aligned equations) cannot be spoken")
        if name == "begin":
            raise _latex("environments (\\begin...) cannot be spoken")
        raise _latex(f"unknown command \\{name}")


# ----------------------------------------------------------------------------- speech

def _is_simple(nodes: list[Node]) -> bool:
    """A single number, letter, constant or text, possibly negative: no brackets needed."""
    nodes = [n for n in nodes if n.kind != "space"]
    if len(nodes) == 2 and nodes[0].kind == "sym" and nodes[0].value in "-−":
        nodes = nodes[1:]
    if len(nodes) != 1:
        return False
    n = nodes[0]
    if n.kind == "group":
        return _is_simple(n.children)
    return n.kind in ("num", "word", "text") or (n.kind == "op" and n.op_kind == "const")


def _integer(nodes: list[Node]) -> str | None:
    nodes = [n for n in nodes if n.kind != "space"]
    if len(nodes) == 1 and nodes[0].kind == "group":
        return _integer(nodes[0].children)
    if len(nodes) == 1 and nodes[0].kind == "num" and nodes[0].value.isdigit():
        return nodes[0].value
    return None


class _Speaker:
    def __init__(self, math: bool, dollars: str):
        self.math = math
        self.dollars = dollars

    # A sequence: handles what depends on neighbours (unary minus, a/b, $5, f(x)).
    def seq(self, nodes: list[Node]) -> list[str]:
        nodes = _inline_fractions(nodes, self.math)
        out: list[str] = []
        prev: Node | None = None  # previous non-space node
        i = 0
        while i < len(nodes):
            node = nodes[i]
            nxt = nodes[i + 1] if i + 1 < len(nodes) else None
            if node.kind == "space":
                i += 1
                continue
            if node.kind == "sym" and node.value == "/":
                out.append("divided by" if self.math else "slash")
            elif node.kind == "sym" and node.value in _DASHES:
                out += self.dash(prev, nodes, i)
            elif node.kind == "sym" and node.value == "$" and nxt is not None and (
                nxt.kind == "num"
            ):
                out += self.money(nxt.value)
                node = nxt
                i += 1
            elif node.kind == "sym" and node.value == "$":
                out.append("dollars")
            else:
                out += self.node(node)
                if (
                    node.kind == "word" and self.math and node.value in _FUNCTION_LETTERS
                    and nxt is not None and nxt.kind == "paren" and nxt.value == "("
                ):
                    out.append("of")
            prev = node
            i += 1
        return out

    def dash(self, prev: Node | None, nodes: list[Node], i: int) -> list[str]:
        nxt = nodes[i + 1] if i + 1 < len(nodes) else None
        prev_is_operand = prev is not None and _is_operand(prev)
        if self.math:
            return ["minus" if prev_is_operand else "negative"]
        if nodes[i].value in "–—":
            return [","]
        following = _next_solid(nodes, i)
        if following is None or following.kind != "num":
            return [","]  # a dash between words: a pause
        if prev_is_operand and (
            prev.kind in ("num", "ordinal", "paren", "sup", "frac")
            or (prev.kind == "word" and len(prev.value) == 1)
        ):
            return ["minus"]
        if nxt is following:
            return ["negative"]  # "-5" with nothing to subtract from
        return [","]

    def money(self, amount: str) -> list[str]:
        whole, _, cents = amount.replace(",", "").partition(".")
        unit = "dollar" if whole == "1" and not cents else "dollars"
        if len(cents) == 2:
            words = f"{number_words(whole)} {'dollar' if whole == '1' else 'dollars'}"
            if int(cents):
                words += f" and {number_words(cents.lstrip('0') or '0')} "
                words += "cent" if int(cents) == 1 else "cents"
            return [words]
        return [number_words(amount), unit]

    def frac(self, num: list[Node], den: list[Node]) -> list[str]:
        n, d = _integer(num), _integer(den)
        if n is not None and d is not None and (words := fraction_words(n, d)):
            return [words]
        if _is_simple(num) and _is_simple(den):
            return [*self.seq(num), "over", *self.seq(den)]
        return ["the fraction with numerator", *self.seq(num), "and denominator",
                *self.seq(den)]

    def node(self, node: Node) -> list[str]:
        k = node.kind
        if k == "num":
            return [number_words(node.value)]
        if k == "ordinal":
            return [ordinal_words(node.value)]
        if k == "word":
            return [node.value]
        if k == "blank":
            return ["blank"]
        if k == "text":
            return _speak_text(node.value, self.dollars)
        if k == "group":
            return self.seq(node.children)
        if k == "paren":
            inner = self.seq(node.children)
            if _is_simple(node.children) or not (self.math or _has_operator(node.children)):
                return inner
            name = "paren" if node.value == "(" else "bracket"
            return [f"open {name}", *inner, f"close {name}"]
        if k == "frac":
            return self.frac(*node.args)
        if k == "sqrt":
            return self.sqrt(*node.args)
        if k == "sup":
            return self.sup(node)
        if k == "sub":
            return self.sub(node)
        if k == "postfix":
            return [*self.node(node.base), node.value]
        if k == "op":
            return [node.value]
        return self.sym(node.value)

    def base(self, node: Node) -> list[str]:
        if node.kind == "group" and not _is_simple(node.children):
            return ["open paren", *self.seq(node.children), "close paren"]
        return self.node(node)

    def sup(self, node: Node) -> list[str]:
        (exp,) = node.args
        base = self.base(node.base)
        n = _integer(exp)
        if n in ("2", "3"):
            return [*base, "squared" if n == "2" else "cubed"]
        solid = [e for e in exp if e.kind != "space"]
        if len(solid) == 1 and solid[0].kind == "group":
            solid = [e for e in solid[0].children if e.kind != "space"]
        if len(solid) == 1 and solid[0].kind == "op" and solid[0].value == "degrees":
            return [*base, "degrees"]
        if _is_simple(exp):
            return [*base, "to the power of", *self.seq(exp)]
        return [*base, "raised to the exponent", *self.seq(exp), "end exponent"]

    def sub(self, node: Node) -> list[str]:
        (index,) = node.args
        base = self.base(node.base)
        if node.base.kind == "op" and node.base.value == "log":
            return [*base, "base", *self.seq(index)]
        if _is_simple(index):
            return [*base, "sub", *self.seq(index)]
        return [*base, "sub", *self.seq(index), "end sub"]

    def sqrt(self, x: list[Node], index: list[Node]) -> list[str]:
        if not index:
            root = "the square root of"
        else:
            n = _integer(index)
            if n is None:
                raise _latex("a root whose index is not a whole number")
            root = "the cube root of" if n == "3" else f"the {ordinal_words(n)} root of"
        if _is_simple(x):
            return [root, *self.seq(x)]
        return [root, *self.seq(x), "end root"]

    def sym(self, c: str) -> list[str]:
        if c in PUNCT:
            return [c]
        if c in _SYMBOL_WORDS:
            return [_SYMBOL_WORDS[c]]
        if not self.math:
            if c in _TEXT_ONLY_WORDS:
                return [_TEXT_ONLY_WORDS[c]]
            if c in _SILENT_IN_TEXT:
                return []
            if c == "#":
                return ["number"]
        elif c in "~":
            return []
        if c in "^_":
            raise _latex(f"'{c}' without a base")
        raise Unspeakable(
            "unspeakable_latex" if self.math else "unspeakable_symbol",
            f"no spoken form for '{c}' (U+{ord(c):04X})",
        )


def _inline_fractions(nodes: list[Node], math: bool) -> list[Node]:
    """``a/b`` written inline (no spaces) becomes a fraction node: simple operands in math,
    numbers in text (where "km/h" stays a slash)."""
    fits = _is_simple if math else (lambda ns: all(n.kind == "num" for n in ns))
    out: list[Node] = []
    i = 0
    while i < len(nodes):
        node = nodes[i]
        if (
            node.kind == "sym" and node.value == "/" and out and i + 1 < len(nodes)
            and out[-1].kind != "space" and fits([out[-1]]) and fits([nodes[i + 1]])
        ):
            out[-1] = Node("frac", args=[[out[-1]], [nodes[i + 1]]])
            i += 2
            continue
        out.append(node)
        i += 1
    return out


def _has_operator(nodes: list[Node]) -> bool:
    return any(
        (n.kind == "sym" and n.value in _OPERATORS) or n.kind in ("sup", "sub", "frac")
        or (n.kind == "op" and n.op_kind == "op")
        for n in nodes
    )


def _is_operand(node: Node) -> bool:
    """Can a following minus subtract from this? (Text such as "\\textbf{(A)}" cannot.)"""
    if node.kind == "op":
        return node.op_kind == "const"
    return node.kind not in ("sym", "space", "text", "blank")


def _next_solid(nodes: list[Node], i: int) -> Node | None:
    for n in nodes[i + 1 :]:
        if n.kind != "space":
            return n
    return None


# ----------------------------------------------------------------------------- segments

def _strip_markup(text: str) -> str:
    """Without HTML (also HTML that was escaped: "&lt;b&gt;") and markdown emphasis."""
    for _ in range(2):  # the markup, then what unescaping reveals
        text = _HTML_TAG.sub(" ", _HTML_CODE.sub(" ", text))
        text = html.unescape(text)
    for pattern, repl in _MARKDOWN:
        text = pattern.sub(repl, text)
    return text


_MATH_OPEN = re.compile(r"\$\$|\$|\\\(|\\\[")
_MATH_CLOSE = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}


def _segments(text: str, dollars: str) -> list[tuple[bool, str]]:
    """Split into (is_math, text) segments at math delimiters."""
    out: list[tuple[bool, str]] = []
    i = 0
    while True:
        m = _MATH_OPEN.search(text, i)
        while m is not None and (
            _escaped(text, m.start()) or (m.group().startswith("$") and dollars != "math")
        ):
            m = _MATH_OPEN.search(text, m.start() + 1)
        if m is None:
            out.append((False, text[i:]))
            return out
        out.append((False, text[i : m.start()]))
        close = _MATH_CLOSE[m.group()]
        j = m.end()
        while True:
            end = text.find(close, j)
            if end < 0:
                raise _latex(f"'{m.group()}' opens math that is never closed")
            if not _escaped(text, end):
                break
            j = end + 1
        out.append((True, text[m.end() : end]))
        i = end + len(close)


def _escaped(text: str, i: int) -> bool:
    n = 0
    while i - n - 1 >= 0 and text[i - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def _speak_text(text: str, dollars: str) -> list[str]:
    pieces: list[str] = []
    for math, seg in _segments(text, dollars):
        tokens = _tokenize(seg, math)
        nodes = _Parser(tokens, math).sequence(None)
        pieces += _Speaker(math, dollars).seq(nodes)
    return pieces


def _join(pieces: list[str]) -> str:
    out: list[str] = []
    for p in pieces:
        if p in PUNCT:
            if out and out[-1][-1] not in PUNCT:
                out[-1] += p
            elif out and p in "?!.":
                out[-1] = out[-1][:-1] + p
        elif p:
            out.append(p)
    return " ".join(out)


def speak(text: str, dollars: str = "math") -> str:
    """The spoken form of ``text``. ``dollars``: "math" ($...$ is LaTeX math) or "currency"
    ($5 is five dollars). Raises :class:`Unspeakable` when it cannot be said unambiguously."""
    if dollars not in ("math", "currency"):
        raise ValueError(f"dollars must be 'math' or 'currency', not {dollars!r}")
    spoken = _join(_speak_text(_strip_markup(text), dollars))
    if not any(ch.isalnum() for ch in spoken):
        raise Unspeakable("unspeakable_symbol", "nothing left to speak")
    return spoken
