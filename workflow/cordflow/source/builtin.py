"""Built-in question families: offline, deterministic by seed, sized for the tiny model.

Each family enumerates every distinct question it can ask (operands 0..max_operand times a
few short phrasings), shuffles them with a seed of its own and deals them out to the
splits in order. So splits never share a question. The first split (train), when it is
large enough, holds every fact (:func:`deal`). A later split takes first the items
whose fact (say 3 + 4) the first split (train) already holds under another phrasing: a
test item is a new question of the train distribution, which the tiny model can learn
to >= 95 % held-out text accuracy.

``source.builtin.phrasings``: ``basic`` (six phrasings per operand pair) or ``extended``
(three times as many for addition, subtraction and comparison: the basic ones, then
more, each as short to say), so the same facts yield >= 500-item dev and test splits at a
small max_operand (:func:`capacity`). The basic questions are the same either way.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator

from cordflow.source.rows import Candidate

SOURCE = "builtin"
log = logging.getLogger("cordflow.source")

# (stem, answer, choices or None, answer_type, fact); the text prompt uses digits, the
# spoken form (made later from it) uses words. The fact is what must be known to answer.
Item = tuple[str, str, "list[str] | None", str, tuple]

_ADDITION = (
    "What is {a} plus {b}?",
    "How much is {a} plus {b}?",
    "What is the sum of {a} and {b}?",
    "Add {a} and {b}.",
    "What do you get if you add {a} and {b}?",
    "Compute {a} plus {b}.",
)
_SUBTRACTION = (
    "What is {a} minus {b}?",
    "How much is {a} minus {b}?",
    "What is {a} take away {b}?",
    "Subtract {b} from {a}.",
    "What do you get if you subtract {b} from {a}?",
    "Compute {a} minus {b}.",
)
_LARGER = (
    "Which is larger, {a} or {b}?",
    "Which number is bigger, {a} or {b}?",
    "What is the larger of {a} and {b}?",
)
_SMALLER = (
    "Which is smaller, {a} or {b}?",
    "Which number is less, {a} or {b}?",
    "What is the smaller of {a} and {b}?",
)
# phrasings: extended adds these (kept short: a spoken question fits a 4 s audio window)
_ADDITION_MORE = (
    "What's {a} plus {b}?",
    "{a} plus {b} is what?",
    "What does {a} plus {b} make?",
    "Tell me {a} plus {b}.",
    "Add up {a} and {b}.",
    "What is {a} added to {b}?",
    "What's the sum of {a} and {b}?",
    "Find {a} plus {b}.",
    "Work out {a} plus {b}.",
    "Sum {a} and {b}.",
    "{a} plus {b} makes what?",
    "What is the total of {a} and {b}?",
)
_SUBTRACTION_MORE = (
    "What's {a} minus {b}?",
    "{a} minus {b} is what?",
    "What does {a} minus {b} make?",
    "Tell me {a} minus {b}.",
    "Take {b} away from {a}.",
    "What's {a} take away {b}?",
    "Find {a} minus {b}.",
    "Work out {a} minus {b}.",
    "Please subtract {b} from {a}.",
    "{a} minus {b} makes what?",
    "What is {a} less {b}?",
    "What's left if you take {b} from {a}?",
)
_LARGER_MORE = (
    "Which is bigger, {a} or {b}?",
    "Which is greater, {a} or {b}?",
    "Which is higher, {a} or {b}?",
    "Which number is larger, {a} or {b}?",
    "Which of {a} and {b} is larger?",
    "Of {a} and {b}, which is bigger?",
    "Name the larger of {a} and {b}.",
    "What is the greater of {a} and {b}?",
)
_SMALLER_MORE = (
    "Which is less, {a} or {b}?",
    "Which is lower, {a} or {b}?",
    "Which number is smaller, {a} or {b}?",
    "Which number is lower, {a} or {b}?",
    "Which of {a} and {b} is smaller?",
    "Of {a} and {b}, which is less?",
    "Name the smaller of {a} and {b}.",
    "What is the lesser of {a} and {b}?",
)
_MORE = {_ADDITION: _ADDITION_MORE, _SUBTRACTION: _SUBTRACTION_MORE, _LARGER: _LARGER_MORE,
         _SMALLER: _SMALLER_MORE}
PHRASINGS = ("basic", "extended")
_CHOICE = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b}


def _phrasings(basic: tuple[str, ...], phrasings: str) -> tuple[str, ...]:
    """The templates of one question kind: the basic ones first, so ``extended`` only
    adds questions (the basic ones, and their seeded order among themselves, stay)."""
    if phrasings not in PHRASINGS:
        raise ValueError(f"source.builtin.phrasings: '{phrasings}' is not one of {PHRASINGS}")
    return basic + _MORE[basic] if phrasings == "extended" else basic


def _pairs(m: int) -> Iterator[tuple[int, int]]:
    return ((a, b) for a in range(m + 1) for b in range(m + 1))


def addition(m: int, rng: random.Random, phrasings: str = "basic") -> list[Item]:
    return [(t.format(a=a, b=b), str(a + b), None, "number", ("plus", a, b))
            for a, b in _pairs(m) for t in _phrasings(_ADDITION, phrasings)]


def subtraction(m: int, rng: random.Random, phrasings: str = "basic") -> list[Item]:
    return [(t.format(a=a, b=b), str(a - b), None, "number", ("minus", a, b))
            for a, b in _pairs(m) for t in _phrasings(_SUBTRACTION, phrasings)]


def comparison(m: int, rng: random.Random, phrasings: str = "basic") -> list[Item]:
    larger, smaller = (_phrasings(t, phrasings) for t in (_LARGER, _SMALLER))
    items = []
    for a, b in _pairs(m):
        if a == b:
            continue
        pair = (min(a, b), max(a, b))
        items += [(t.format(a=a, b=b), str(max(a, b)), None, "number", ("larger", *pair))
                  for t in larger]
        items += [(t.format(a=a, b=b), str(min(a, b)), None, "number", ("smaller", *pair))
                  for t in smaller]
    return items


def choice(m: int, rng: random.Random, phrasings: str = "basic") -> list[Item]:
    """ "What is 3 plus 4?" with four ascending options; the answer's position is A-D
    (one phrasing: ``phrasings`` changes nothing here)."""
    items = []
    for op, fn in _CHOICE.items():
        for a, b in _pairs(m):
            value = fn(a, b)
            for pos in range(4):
                below = sorted(rng.sample(range(value - 4, value), pos))
                above = sorted(rng.sample(range(value + 1, value + 5), 3 - pos))
                options = [str(v) for v in (*below, value, *above)]
                items.append((f"What is {a} {op} {b}?", "ABCD"[pos], options, "choice",
                              (op, a, b)))
    return items


# family(max_operand, rng, phrasings) -> every distinct question, in a fixed order
FAMILIES: dict[str, Callable[[int, random.Random, str], list[Item]]] = {
    "addition": addition,
    "subtraction": subtraction,
    "comparison": comparison,
    "choice": choice,
}


def _plan(cfg: dict, splits: list[str]) -> list[tuple[str, int]]:
    """(split, n) in the order of source.splits; unknown split names are a config error."""
    n_per = cfg["n_per_family"]
    unknown = sorted(set(n_per) - set(splits))
    if unknown:
        raise ValueError(f"source.builtin.n_per_family names splits {unknown} that are not in "
                         f"source.splits {splits}: add them there or remove them here")
    return [(s, int(n_per[s])) for s in splits if s in n_per]


def family_items(family: str, seed: int, max_operand: int, phrasings: str = "basic"
                 ) -> list[Item]:
    """Every distinct question of ``family``, in a seeded order."""
    rng = random.Random(f"cordflow.builtin:{seed}:{family}")
    items = FAMILIES[family](max_operand, rng, phrasings)
    rng.shuffle(items)
    return items


def capacity(family: str, max_operand: int, phrasings: str = "basic") -> int:
    """How many distinct questions ``family`` has: the most n_per_family may ask for in
    all splits together (each split's questions are new to every other split)."""
    return len(FAMILIES[family](max_operand, random.Random(0), phrasings))


def deal(items: list[Item], plan: list[tuple[str, int]]) -> list[tuple[str, int, Item]]:
    """(split, index in the family, item) for each split's share. The first split takes
    the first items, trading some for facts they miss when it is large enough to hold
    every fact (:func:`_cover`); each later split prefers items whose fact an earlier split
    holds."""
    out: list[tuple[str, int, Item]] = []
    rest = list(enumerate(items))
    facts: set[tuple] = set()
    for k, (split, n) in enumerate(plan):
        if k > 0:
            rest.sort(key=lambda entry: entry[1][4] not in facts)  # stable: seeded order kept
        share, rest = rest[:n], rest[n:]
        if k == 0:
            share, rest = _cover(share, rest)
        out += [(split, i, item) for i, item in share]
        facts |= {item[4] for _, item in share}
    return out


def _warn_untaught(family: str, dealt: list[tuple[str, int, Item]],
                   plan: list[tuple[str, int]]) -> None:
    """Log the later splits' items whose fact the first split (train) never asks: when
    the taught facts' questions run out, a split takes new facts, which a tiny model
    cannot answer from what it learned."""
    first = plan[0][0] if plan else None
    taught = {item[4] for split, _, item in dealt if split == first}
    for split, _ in plan[1:]:
        new = sum(item[4] not in taught for s, _, item in dealt if s == split)
        if new:
            log.warning("source.builtin: %d %s question(s) of family '%s' ask a fact the %s "
                        "split never asks (its share left facts out); raise n_per_family."
                        "%s or lower the others", new, split, family, first, first)


def _cover(share: list[tuple[int, Item]], rest: list[tuple[int, Item]]):
    """If ``share`` can hold every fact but misses some, trade its last items of facts it
    holds more than once for the first items of the missing facts (in seeded order), so
    the first split (train) teaches every fact a later split asks. A share that already
    holds every fact, or is too small to, is returned as it is."""
    count: dict[tuple, int] = {}
    for _, item in share:
        count[item[4]] = count.get(item[4], 0) + 1
    missing = list(dict.fromkeys(item[4] for _, item in rest if item[4] not in count))
    if not missing or len(share) < len(count) + len(missing):
        return share, rest
    share, rest = list(share), list(rest)
    for fact in missing:
        out = max(i for i, (_, item) in enumerate(share) if count[item[4]] > 1)
        into = next(i for i, (_, item) in enumerate(rest) if item[4] == fact)
        count[share[out][1][4]] -= 1
        count[fact] = 1
        share[out], rest[into] = rest[into], share[out]
    return sorted(share), sorted(rest)  # by index in the family: seeded order kept


def candidates(cfg: dict, splits: list[str], seed: int) -> Iterator[Candidate]:
    plan = _plan(cfg, splits)
    wanted = sum(n for _, n in plan)
    for family in cfg["families"]:
        phrasings = cfg.get("phrasings", "basic")
        items = family_items(family, seed, cfg["max_operand"], phrasings)
        if wanted > len(items):
            more = "" if phrasings == "extended" or family == "choice" else (
                ", set phrasings: extended")
            raise ValueError(
                f"source.builtin: family '{family}' has only {len(items)} distinct questions "
                f"with max_operand={cfg['max_operand']} and phrasings={phrasings}, but "
                f"n_per_family asks for {wanted}; lower n_per_family or raise "
                f"max_operand{more}"
            )
        dealt = deal(items, plan)
        _warn_untaught(family, dealt, plan)
        for split, i, (stem, answer, options, answer_type, _fact) in dealt:
            yield Candidate(
                source=SOURCE,
                origin=f"builtin:{family}:{i}",
                raw={"family": family, "question": stem, "answer": answer,
                     "choices": options, "answer_type": answer_type, "split": split},
                question=stem,
                answer=answer,
                choices=options,
                answer_type=answer_type,
                split=split,
            )


def count(cfg: dict, splits: list[str]) -> int:
    return len(cfg["families"]) * sum(n for _, n in _plan(cfg, splits))
