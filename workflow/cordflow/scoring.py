"""The answer scorer: what a model's reply answers, shared by evaluation and the rule judge.

:func:`extract` reads the answer out of a reply, whether the model answers with the bare
answer (the tiny model: ``"12"``, ``"B"``) or with a sentence (a 7B model: ``"The answer
is 12."``, ``"The correct option is (B) 7."``); :func:`match` says whether a reply gives
the gold answer of a QA row. The same code scores text-prompt and audio-prompt replies.

What is read, per ``answer_type`` (``None`` when nothing can be read):

``number``
    A number written with digits, canonicalised like the QA tables' answers (see
    ``NUMBER_RE`` in :mod:`cordflow.source.schema`): ``"12.0"`` -> ``"12"``, ``"1,000"``
    -> ``"1000"``, ``"+3"`` -> ``"3"``, ``".5"`` -> ``"0.5"``, ``"-0"`` -> ``"0"``, a
    fraction ``"1/2"`` (or ``\\frac{1}{2}``) -> ``"0.5"`` (one that is not a finite decimal
    stays a reduced fraction: ``"2/6"`` -> ``"1/3"``). Where it is looked for, in order: the
    last ``\\boxed{...}``; the text after the last ``####``; the text after the last "answer
    is" / "answer:" (the FIRST number there); else the LAST number of the whole reply.
    Number words ("twelve") are not read; a minus counts only where it cannot be a
    subtraction or a range ("5-3" is 5 and 3, "x = -3" is -3).
``choice``
    The option letter, upper case, within the first ``n_choices`` letters. In order: a
    reply that is just a letter (``"B"``, ``"(b)"``, ``"B."``, any case); a reply that
    starts with a labelled option (``"B. 7"``, ``"(B) 7"``, ``"B: 7"``, unless it goes on to
    label others: ``"A: 6, B: 7"`` is a restated list, not an answer); the last letter
    after "answer", "option" or "choice" (``"The answer is B"``, ``"Answer: (C)"``; lower
    case only where it cannot be the article: ``"the answer is b."`` yes, ``"the answer is
    a number"`` no); the one distinct letter standing alone in the reply (several distinct
    letters: ``None``, it is ambiguous); else, given the ``choices``' texts, the one
    option whose text is the reply (or appears in it as a whole phrase).
``text``
    SQuAD-style normalisation: lower case, punctuation and the articles a/an/the removed,
    whitespace collapsed; a leading "the answer is" / "answer:" is dropped first.
"""

from __future__ import annotations

import re
import string
import unicodedata
from decimal import Decimal, InvalidOperation, localcontext
from fractions import Fraction

from cordflow.source.schema import ANSWER_TYPES, LETTERS

__all__ = ["extract", "match", "canonical_number", "normalize_text"]

# ----------------------------------------------------------------------------- numbers

# A number token: an optional sign only where it cannot be a binary minus, a body with
# optional thousands separators and decimals, and an optional "/denominator".
_NUMBER = re.compile(
    r"(?:(?<![\w.)\]])(?P<sign>[-+\u2212]))?"
    r"(?<![\w.])(?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+)(?!\.?\d))?"
)
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_ANSWER_MARK = re.compile(r"\banswer\s*(?:is\b|:|=)", re.IGNORECASE)


def canonical_number(value: Fraction) -> str:
    """The canonical text of a rational: a finite decimal without trailing zeros
    (``"12"``, ``"-3"``, ``"0.5"``), else a reduced fraction (``"1/3"``)."""
    if value == 0:
        return "0"
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    with localcontext() as ctx:
        ctx.prec = max(28, len(str(value.numerator)) + len(str(value.denominator)) + 2)
        out = format((Decimal(value.numerator) / Decimal(value.denominator)).normalize(), "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return out


def _numbers(text: str) -> list[str]:
    """Every number token of ``text``, canonical, in order."""
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    out = []
    for m in _NUMBER.finditer(text):
        try:
            value = Fraction(Decimal(m.group("body").replace(",", "")))
        except (InvalidOperation, ValueError):
            continue
        if m.group("den") is not None:
            den = int(m.group("den"))
            if den == 0:
                continue
            value /= den
        if m.group("sign") in ("-", "\u2212"):
            value = -value
        out.append(canonical_number(value))
    return out


def _extract_number(text: str) -> str | None:
    boxed = _BOXED.findall(text)
    if boxed:
        found = _numbers(boxed[-1])
        return found[-1] if found else None
    if "####" in text:
        found = _numbers(text.rsplit("####", 1)[1])
        if found:
            return found[0]
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        found = _numbers(text[marks[-1].end():])
        if found:
            return found[0]
    found = _numbers(text)
    return found[-1] if found else None


# ----------------------------------------------------------------------------- text

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_LEADING_ANSWER = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is\b|:|=)\s*",
                             re.IGNORECASE)


def normalize_text(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.casefold()
    text = "".join(" " if ch in string.punctuation or unicodedata.category(ch).startswith("P")
                   else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _extract_text(text: str) -> str | None:
    return normalize_text(_LEADING_ANSWER.sub("", text)) or None


# ----------------------------------------------------------------------------- choices

_STRIP_BARE = " \t\r\n\"'*_,;!?"  # what may surround a bare letter ("B", "'B'", "B!")
_BARE = re.compile(r"\(?([A-Za-z])\)?[.):]?")
_LEADING_OPTION = re.compile(r"(?:\(([A-Za-z])\)|([A-Z])[.):])(?:\s|$)")
_LABEL = re.compile(r"(?<![A-Za-z])(?:\(([A-Za-z])\)|([A-Z])[.):])(?=\s|$)")
_MARKED = re.compile(
    r"\b(?:answer|option|choice)s?\b"
    r"(?:\s*(?:is|would\s+be|should\s+be|will\s+be|:|=|-)\s*|\s+)"
    r"(?:(?:option|choice|letter)\s+)?"
    r"(\()?([A-Za-z])(\))?(?![A-Za-z'])",
    re.IGNORECASE,
)
_LONE = re.compile(r"(?<![A-Za-z'])(?:\(([A-Za-z])\)|([A-Z]))(?![A-Za-z'])")


def _article_like(letter: str, parenthesised: bool, rest: str) -> bool:
    """Whether an unparenthesised letter reads as a word ("a number", "A cat", "I think")."""
    if parenthesised:
        return False
    if letter.islower():
        return re.match(r"\s+[A-Za-z]", rest) is not None
    return letter in "AI" and re.match(r"\s+[a-z]", rest) is not None


def _extract_choice(text: str, letters: str, choices: list[str] | None) -> str | None:
    clean = text.replace("**", "").replace("`", "")
    stripped = clean.strip(" \t\r\n\"'*_")
    if m := _BARE.fullmatch(stripped.strip(_STRIP_BARE)):
        letter = m.group(1).upper()
        return letter if letter in letters else None
    if m := _LEADING_OPTION.match(stripped):
        letter = (m.group(1) or m.group(2)).upper()
        labels = {(x.group(1) or x.group(2)).upper() for x in _LABEL.finditer(stripped)}
        if letter in letters and labels == {letter}:  # not a restated list of options
            return letter
    for m in reversed(list(_MARKED.finditer(clean))):
        opened, letter, closed = m.group(1), m.group(2), m.group(3)
        if _article_like(letter, bool(opened and closed), clean[m.end():]):
            continue
        if letter.upper() in letters:
            return letter.upper()
    lone = set()
    for m in _LONE.finditer(clean):
        letter = m.group(1) or m.group(2)
        if m.group(2) and _article_like(letter, False, clean[m.end():]):
            continue
        if letter.upper() in letters:
            lone.add(letter.upper())
    if len(lone) == 1:
        return lone.pop()
    if lone or not choices:
        return None
    return _choice_by_text(clean, choices)


def _choice_by_text(text: str, choices: list[str]) -> str | None:
    """The one option whose normalised text is the reply (or the text after its last
    "answer is"), else the one option that appears in the reply as a whole phrase."""
    options = [normalize_text(c) for c in choices]
    spans = [text]
    if marks := list(_ANSWER_MARK.finditer(text)):
        spans.append(text[marks[-1].end():])
    for span in spans:
        norm = normalize_text(span)
        hits = [i for i, o in enumerate(options) if o and o == norm]
        if len(hits) == 1:
            return LETTERS[hits[0]]
    words = f" {normalize_text(text)} "
    hits = [i for i, o in enumerate(options) if o and f" {o} " in words]
    return LETTERS[hits[0]] if len(hits) == 1 else None


# ----------------------------------------------------------------------------- api

def extract(text: str | None, answer_type: str, n_choices: int | None = None,
            choices: list[str] | None = None) -> str | None:
    """The answer ``text`` gives, as the QA tables write answers; ``None`` if none is read.

    ``choice`` needs ``n_choices`` or ``choices`` (the options' texts, which also lets an
    answer given by an option's text count).
    """
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type '{answer_type}' is not one of {list(ANSWER_TYPES)}")
    if text is None:
        return None
    text = unicodedata.normalize("NFKC", str(text))
    if answer_type == "number":
        return _extract_number(text)
    if answer_type == "text":
        return _extract_text(text)
    if n_choices is None:
        if choices is None:
            raise ValueError("extract(..., 'choice') needs n_choices or choices")
        n_choices = len(choices)
    if not 2 <= n_choices <= len(LETTERS):
        raise ValueError(f"n_choices is {n_choices}; it must be 2 to {len(LETTERS)}")
    return _extract_choice(text, LETTERS[:n_choices], choices)


def match(pred: str | None, gold: str, answer_type: str, n_choices: int | None = None,
          choices: list[str] | None = None) -> bool:
    """Whether the reply ``pred`` gives the answer ``gold`` (a QA table's answer). Both go
    through :func:`extract`; nothing read never matches."""
    got = extract(pred, answer_type, n_choices, choices)
    want = extract(gold, answer_type, n_choices, choices)
    return got is not None and got == want
