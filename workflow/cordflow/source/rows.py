"""From raw source rows to kept QA rows and rejected rows, with a reason for each.

Every reader (built-in, files, Hugging Face) yields :class:`Candidate` rows; :func:`process`
checks each one in a fixed order and either keeps it (with id, canonical answer and spoken
form) or rejects it with ``"<code>: <what is wrong>"``. Nothing is dropped silently: the
counts per source are checked to add up (rows in = kept + rejected).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from tqdm import tqdm

from cordflow.scoring import canonical_number as canonical_rational
from cordflow.source.schema import ANSWER_TYPES, LETTERS
from cordflow.source.spoken import Unspeakable, speak

log = logging.getLogger("cordflow.source")


@dataclass
class Candidate:
    """One raw row: field values as read (anything), and where it came from."""

    source: str
    origin: str
    raw: Any
    question: Any = None
    answer: Any = None
    choices: Any = None
    answer_type: Any = None
    split: Any = None
    dollars: str = "math"
    error: str | None = None  # set by a reader that could not even read the row


class Reject(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.reason = f"{code}: {detail}"


@dataclass
class Outcome:
    kept: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=dict)


# ----------------------------------------------------------------------------- values

def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # Cc but tab, LF, CR


def has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def clean_text(text: str) -> str:
    """Show undecodable bytes (read with surrogateescape) as U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def jsonable(value: Any) -> Any:
    """Raw row values as plain JSON types (numpy, bytes, NaN, surrogates handled)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return clean_text(value.decode("utf-8", "surrogateescape"))
    if isinstance(value, str):
        return clean_text(value)
    if hasattr(value, "item") and not isinstance(value, (int, float, bool)):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return clean_text(str(value))


def row_json(raw: Any) -> str:
    if isinstance(raw, str):
        raw = clean_text(raw)
    return json.dumps(jsonable(raw), ensure_ascii=False)


def _check_chars(name: str, text: str) -> None:
    if has_surrogates(text):
        raise Reject("invalid_utf8", f"{name} has bytes that are not valid UTF-8")
    if m := _CONTROL.search(text):
        raise Reject("control_chars", f"{name} contains control character U+{ord(m.group()):04X}")


def _text_field(name: str, value: Any, required: bool = True, keep_lines: bool = False
                ) -> str | None:
    """A field as text with its whitespace collapsed (``keep_lines``: only stripped, line
    breaks kept, as for a question). Numbers are accepted as text (a numeric answer)."""
    if _missing(value):
        if required:
            raise Reject("missing_field", f"{name} is missing")
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise Reject("bad_field", f"{name} is a {type(value).__name__}, not text")
    text = value if isinstance(value, str) else str(value)
    _check_chars(name, text)
    if keep_lines:
        text = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n"))
        text = text.strip()
    else:
        text = " ".join(text.split())
    if not text:
        if required:
            raise Reject(f"empty_{name}" if name in ("question", "answer") else "missing_field",
                         f"{name} is empty")
        return None
    return text


# ----------------------------------------------------------------------------- answers

_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


_FRACTION = re.compile(r"(?P<sign>[+-]?)\s*(?P<num>\d+)\s*/\s*(?P<den>\d+)")
_LATEX_FRACTION = re.compile(r"(?P<sign>[+-]?)\s*\\[dt]?frac\s*\{\s*(?P<num>\d+)\s*\}"
                             r"\s*\{\s*(?P<den>\d+)\s*\}")


def canonical_number(text: str) -> str | None:
    """``"1,234.50"`` -> ``"1234.5"``, ``"+3"`` -> ``"3"``, ``"-0"`` -> ``"0"``; a fraction
    (``"3/4"``, ``"\\frac{3}{4}"``) is the same number as its decimal: ``"0.75"``, or, if
    it has no finite decimal, the reduced fraction (``"2/6"`` -> ``"1/3"``), exactly as the
    scorer reads numbers (:func:`cordflow.scoring.canonical_number`); else None."""
    text = text.strip().replace("−", "-")
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    fraction = _FRACTION.fullmatch(text) or _LATEX_FRACTION.fullmatch(text)
    if fraction:
        if int(fraction["den"]) == 0:
            return None
        value = Fraction(int(fraction["num"]), int(fraction["den"]))
        return canonical_rational(-value if fraction["sign"] == "-" else value)
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if value == 0:
        return "0"
    out = format(value.normalize(), "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return out


_LETTER_RE = re.compile(r"\(?([A-Za-z])[).:]?")


def choice_letter(answer: str, choices: list[str], labels: list[str] | None) -> str | None:
    """The answer as a letter A.. for ``choices``: a letter, a label, or a choice's text."""
    if labels is not None:
        for i, label in enumerate(labels):
            if answer.strip() == label.strip():
                return LETTERS[i]
    m = _LETTER_RE.fullmatch(answer.strip())
    if m and m.group(1).upper() in LETTERS[: len(choices)]:
        return m.group(1).upper()
    folded = answer.casefold()
    matches = [i for i, c in enumerate(choices) if c.casefold() == folded]
    if len(matches) == 1:
        return LETTERS[matches[0]]
    return None


def _choices(value: Any) -> tuple[list[str] | None, list[str] | None]:
    """(choices, labels). Accepts a list, a JSON list, "a|b|c", or {"text":[..],"label":[..]}."""
    if _missing(value):
        return None, None
    labels = None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None, None
        if text.startswith(("[", "{")):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise Reject("bad_choices", f"choices are not valid JSON ({e.msg})") from None
        else:
            value = text.split("|")
    if isinstance(value, dict):
        if "text" not in value:
            raise Reject("bad_choices", "choices object has no 'text' list")
        labels = value.get("label")
        value = value["text"]
        if labels is not None:
            labels = [str(x) for x in labels]
    if type(value).__name__ == "ndarray":
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise Reject("bad_choices", f"choices are a {type(value).__name__}, not a list")
    out = []
    for i, c in enumerate(value):
        text = _text_field(f"choice {i + 1}", c, required=False)
        if text is None:
            raise Reject("bad_choices", f"choice {i + 1} is empty")
        out.append(text)
    if not 2 <= len(out) <= len(LETTERS):
        raise Reject("bad_choices", f"{len(out)} choices (need 2 to {len(LETTERS)})")
    if labels is not None and len(labels) != len(out):
        raise Reject("bad_choices", f"{len(labels)} labels for {len(out)} choices")
    return out, labels


def compose_question(stem: str, choices: list[str] | None) -> str:
    """The text prompt: the stem, then the options as "A: ..., B: ..."."""
    if not choices:
        return stem
    options = ", ".join(f"{LETTERS[i]}: {c}" for i, c in enumerate(choices))
    return f"{stem} {options}"


def item_id(source: str, question: str, answer: str) -> str:
    return hashlib.sha256("\x1f".join((source, question, answer)).encode()).hexdigest()[:16]


def dedup_key(spoken: str) -> str:
    """Duplicates are found on the spoken form: case, whitespace and punctuation ignored
    (numbers are words there, so "-3" and "3" stay different)."""
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch
                   for ch in spoken.casefold())
    return " ".join(text.split())


# ----------------------------------------------------------------------------- a row

def check(c: Candidate, splits: list[str], max_chars: int) -> dict:
    """The kept row for ``c`` (without duplicate check), or raise :class:`Reject`."""
    if c.error:
        code, _, detail = c.error.partition(": ")
        raise Reject(code, detail)
    split = _text_field("split", c.split, required=False)
    if split is None:
        raise Reject("missing_field", "split is missing")
    if split not in splits:
        raise Reject("unknown_split", f"split '{split}' is not one of source.splits {splits}")
    stem = _text_field("question", c.question, keep_lines=True)
    answer = _text_field("answer", c.answer)
    choices, labels = _choices(c.choices)
    answer_type = _text_field("answer_type", c.answer_type, required=False)
    if answer_type is not None and answer_type not in ANSWER_TYPES:
        raise Reject("bad_answer_type", f"answer_type '{answer_type}' is not one of "
                                        f"{list(ANSWER_TYPES)}")
    for name, text in [("question", stem), ("answer", answer)] + [
        (f"choice {i + 1}", t) for i, t in enumerate(choices or [])
    ]:
        if len(text) > max_chars:
            raise Reject("too_long", f"{name} has {len(text)} characters (max {max_chars})")

    if answer_type is None:
        answer_type = "choice" if choices else (
            "number" if canonical_number(answer) is not None else "text")
    if answer_type == "choice":
        if not choices:
            raise Reject("unparseable_answer", "a choice answer without choices")
        letter = choice_letter(answer, choices, labels)
        if letter is None:
            raise Reject("unparseable_answer", f"'{answer}' is not one of the options "
                                               f"{LETTERS[0]}-{LETTERS[len(choices) - 1]}")
        answer = letter
    elif choices:
        raise Reject("bad_choices", f"choices given for a {answer_type} answer")
    elif answer_type == "number":
        number = canonical_number(answer)
        if number is None:
            raise Reject("unparseable_answer", f"'{answer}' is not a number")
        answer = number

    question = compose_question(stem, choices)
    if len(question) > max_chars:
        raise Reject("too_long", f"question with options has {len(question)} characters "
                                 f"(max {max_chars})")
    try:
        spoken = speak(question, c.dollars)
    except Unspeakable as e:
        raise Reject(e.code, e.detail) from None
    return {
        "id": item_id(c.source, question, answer),
        "question": question,
        "spoken": spoken,
        "answer": answer,
        "choices": choices,
        "answer_type": answer_type,
        "split": split,
        "source": c.source,
        "origin": c.origin,
    }


# ----------------------------------------------------------------------------- all rows

def process(batches: Iterable[tuple[str, Iterable[Candidate], int | None]],
            splits: list[str], max_chars: int) -> Outcome:
    """Check every candidate of every (label, candidates, total) batch, in order.

    The first of a set of duplicates is kept; later ones are rejected naming its id.
    """
    out = Outcome()
    seen: dict[str, tuple[str, str]] = {}
    for label, candidates, total in batches:
        counts = out.counts.setdefault(label, Counter())
        for c in tqdm(candidates, desc=f"source {label}", unit="rows", total=total,
                      mininterval=1.0, leave=False):
            counts["in"] += 1
            try:
                row = check(c, splits, max_chars)
                key = dedup_key(row["spoken"])
                if key in seen:
                    first_id, first_origin = seen[key]
                    raise Reject("duplicate", f"same question as {first_id} ({first_origin})")
                seen[key] = (row["id"], row["origin"])
            except Reject as e:
                counts["rejected"] += 1
                counts[e.reason.split(":", 1)[0]] += 1
                out.rejected.append({"source": c.source, "origin": c.origin,
                                     "reason": e.reason, "row": row_json(c.raw)})
                continue
            counts["kept"] += 1
            out.kept.append(row)
    check_counts(out)
    return out


def check_counts(out: Outcome) -> None:
    """Log rows in = kept + rejected per source and in total; fail loudly if not."""
    total = Counter()
    for label, counts in out.counts.items():
        reasons = {k: v for k, v in sorted(counts.items())
                   if k not in ("in", "kept", "rejected")}
        log.info("source %s: %d rows in = %d kept + %d rejected %s", label, counts["in"],
                 counts["kept"], counts["rejected"], reasons or "")
        if counts["in"] != counts["kept"] + counts["rejected"]:
            raise RuntimeError(f"source {label}: {counts['in']} rows in but "
                               f"{counts['kept']} kept + {counts['rejected']} rejected")
        total.update({k: counts[k] for k in ("in", "kept", "rejected")})
    log.info("all sources: %d rows in = %d kept + %d rejected", total["in"], total["kept"],
             total["rejected"])
    if (total["in"] != total["kept"] + total["rejected"] or total["kept"] != len(out.kept)
            or total["rejected"] != len(out.rejected)):
        raise RuntimeError(f"row counts do not add up: {total['in']} in, {len(out.kept)} kept, "
                           f"{len(out.rejected)} rejected")
