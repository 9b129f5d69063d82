"""Cheap checks on every clip; each problem is a ``code: detail`` entry.

Rejected (the clip does not say the question, or cannot be used):
``empty`` (no sound above the trim threshold), ``too_long`` (duration over
``tts.quality.max_duration_s``), ``too_fast`` (speech under ``min_sec_per_char`` seconds
per character: text was skipped). Flagged (kept, but worth a look): ``too_slow`` (over
``max_sec_per_char``), ``silence`` (share of quiet frames within the speech over
``max_silence_ratio``), ``clipped`` (share of raw samples at full scale over
``max_clip_ratio``), ``unintelligible`` (with ``tts.quality.asr.enabled``: an offline
recogniser's word error rate over ``asr.max_wer``, :mod:`cordflow.tts.asr`). A clip with
any rejection is ``rejected``, else with any flag ``flagged``, else ``ok``; ``flags``
lists the codes, ``reason`` joins the entries with "; ".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REJECT = ("empty", "too_long", "too_fast")
FLAG = ("too_slow", "silence", "clipped", "unintelligible")


@dataclass(frozen=True)
class Verdict:
    status: str
    flags: list[str]
    reason: str


def n_chars(text: str) -> int:
    """Characters spoken, whitespace runs counted once."""
    return len(" ".join(text.split()))


def check(m: dict, spoken: str, q: dict) -> Verdict:
    """Judge one clip from its measurements ``m`` (the store's metadata: ``duration``,
    ``speech_duration``, ``silence_ratio``, ``clip_ratio``; with ``q["asr"]["enabled"]``
    also ``asr_wer`` and ``asr_heard``) and ``q`` = ``tts.quality``."""
    problems: list[tuple[str, str]] = []
    key = "tts.quality."
    if m["speech_duration"] <= 0:
        problems.append(("empty", "no sound above the trim threshold"))
    if m["duration"] > q["max_duration_s"]:
        problems.append(("too_long", f"{m['duration']:.2f} s > {key}max_duration_s "
                                     f"{q['max_duration_s']}"))
    if m["speech_duration"] > 0:
        per_char = m["speech_duration"] / max(1, n_chars(spoken))
        if per_char < q["min_sec_per_char"]:
            problems.append(("too_fast", f"{per_char:.3f} s/char < {key}min_sec_per_char "
                                         f"{q['min_sec_per_char']}"))
        if per_char > q["max_sec_per_char"]:
            problems.append(("too_slow", f"{per_char:.3f} s/char > {key}max_sec_per_char "
                                         f"{q['max_sec_per_char']}"))
        if m["silence_ratio"] > q["max_silence_ratio"]:
            problems.append(("silence", f"silence ratio {m['silence_ratio']:.2f} > "
                                        f"{key}max_silence_ratio {q['max_silence_ratio']}"))
    if m["clip_ratio"] > q["max_clip_ratio"]:
        problems.append(("clipped", f"{m['clip_ratio']:.4f} of samples at full scale > "
                                    f"{key}max_clip_ratio {q['max_clip_ratio']}"))
    asr = q.get("asr") or {}
    wer = m.get("asr_wer", math.nan)
    if asr.get("enabled") and not math.isnan(wer) and wer > asr["max_wer"]:
        problems.append(("unintelligible", f"word error rate {wer:.2f} > {key}asr.max_wer "
                                           f"{asr['max_wer']} (heard: '{m['asr_heard']}')"))
    order = {code: i for i, code in enumerate(REJECT + FLAG)}
    problems.sort(key=lambda p: order[p[0]])
    codes = [c for c, _ in problems]
    status = ("rejected" if any(c in REJECT for c in codes)
              else "flagged" if codes else "ok")
    return Verdict(status, codes, "; ".join(f"{c}: {d}" for c, d in problems))
