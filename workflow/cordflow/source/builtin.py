"""Built-in question families: offline, deterministic by seed, sized for the tiny model.

Each family enumerates every distinct question it can ask (operands 0..max_operand times a
few short phrasings), shuffles them with a seed of its own and deals them out to the
splits in order. So splits never share a question. A later split takes first the items
whose fact (say 3 + 4) the first split (train) already holds under another phrasing: a
test item is a new question of the train distribution, which the tiny model can learn
to >= 95 % held-out text accuracy.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from cordflow.source.rows import Candidate

SOURCE = "builtin"

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
_CHOICE = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b}


def _pairs(m: int) -> Iterator[tuple[int, int]]:
    return ((a, b) for a in range(m + 1) for b in range(m + 1))


def addition(m: int, rng: random.Random) -> list[Item]:
    return [(t.format(a=a, b=b), str(a + b), None, "number", ("plus", a, b))
            for a, b in _pairs(m) for t in _ADDITION]


def subtraction(m: int, rng: random.Random) -> list[Item]:
    return [(t.format(a=a, b=b), str(a - b), None, "number", ("minus", a, b))
            for a, b in _pairs(m) for t in _SUBTRACTION]


def comparison(m: int, rng: random.Random) -> list[Item]:
    items = []
    for a, b in _pairs(m):
        if a == b:
            continue
        pair = (min(a, b), max(a, b))
        items += [(t.format(a=a, b=b), str(max(a, b)), None, "number", ("larger", *pair))
                  for t in _LARGER]
        items += [(t.format(a=a, b=b), str(min(a, b)), None, "number", ("smaller", *pair))
                  for t in _SMALLER]
    return items


def choice(m: int, rng: random.Random) -> list[Item]:
    """ "What is 3 plus 4?" with four ascending options; the answer's position is A-D."""
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


FAMILIES: dict[str, Callable[[int, random.Random], list[Item]]] = {
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


def family_items(family: str, seed: int, max_operand: int) -> list[Item]:
    """Every distinct question of ``family``, in a seeded order."""
    rng = random.Random(f"cordflow.builtin:{seed}:{family}")
    items = FAMILIES[family](max_operand, rng)
    rng.shuffle(items)
    return items


def deal(items: list[Item], plan: list[tuple[str, int]]) -> list[tuple[str, int, Item]]:
    """(split, index in the family, item) for each split's share. The first split takes
    the first items; each later split prefers items whose fact an earlier split holds."""
    out: list[tuple[str, int, Item]] = []
    rest = list(enumerate(items))
    facts: set[tuple] = set()
    for k, (split, n) in enumerate(plan):
        if k > 0:
            rest.sort(key=lambda entry: entry[1][4] not in facts)  # stable: seeded order kept
        share, rest = rest[:n], rest[n:]
        out += [(split, i, item) for i, item in share]
        facts |= {item[4] for _, item in share}
    return out


def candidates(cfg: dict, splits: list[str], seed: int) -> Iterator[Candidate]:
    plan = _plan(cfg, splits)
    wanted = sum(n for _, n in plan)
    for family in cfg["families"]:
        items = family_items(family, seed, cfg["max_operand"])
        if wanted > len(items):
            raise ValueError(
                f"source.builtin: family '{family}' has only {len(items)} distinct questions "
                f"with max_operand={cfg['max_operand']}, but n_per_family asks for {wanted}; "
                "lower n_per_family or raise max_operand"
            )
        for split, i, (stem, answer, options, answer_type, _fact) in deal(items, plan):
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
