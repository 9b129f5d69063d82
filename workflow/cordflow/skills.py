"""Audio skills: questions whose answer is in the SOUND of a clip, not in its words.

The built-in audio-skill benchmark (kind ``audio_skill``, :mod:`cordflow.evaluate.kinds`)
and the base stage's skill training (``base.skills``, :mod:`cordflow.base`) ask these
questions about the clips the TTS stage made, each WITH its clip (there is no text-only
form: the words of the clip do not hold the answer):

``pitch``
    "Is the speaker's voice high or low?" (options high, low)
``rate``
    "Is the speaker talking fast or slow?" (options fast, slow)

The answer comes from the voice the manifest records for the clip (``voice``, e.g.
``en-gb-x-rp,pitch=60,rate=160``, :attr:`cordflow.tts.backends.Voice.spec`): the first option
when the value is above the MIDPOINT of the lowest and highest value among the manifest's
main-voicing clips (with ``tts.voices`` pitch [40, 60]: 60 is high, 40 low; rate [160,
190]: 190 words a minute is fast), the second when below. Clips without the value (a Piper
or Coqui voice, the other voicings), clips at the midpoint, clips the TTS quality checks
rejected, and every clip of a skill whose value never varies in the manifest, are not
asked about.

:func:`label` gives one row per (clip, skill) it can ask about:

    id          "<clip id>:<take>:<skill>" (unique)
    clip_id, take, split, voice, path, duration
    skill, question, choices (the option texts), answer_type ("choice"), answer (the
    option's letter: A, B), target (the option's text: what a model is trained to say)

:func:`training_items` picks the base stage's items from it (a seeded choice). Importing this
module is light; pandas is imported by the functions that need it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Skill:
    """One audio-skill question: its text, its two options (the first one for a value
    above the midpoint), and the voice setting that answers it."""

    name: str
    question: str
    choices: tuple[str, str]
    setting: str  # the key of Voice.spec: pitch | rate


SKILLS: dict[str, Skill] = {s.name: s for s in (
    Skill("pitch", "Is the speaker's voice high or low?", ("high", "low"), "pitch"),
    Skill("rate", "Is the speaker talking fast or slow?", ("fast", "slow"), "rate"),
)}
# What the default trains (base.skills.skills) and an audio_skill benchmark asks unless its
# entry says: the tiny base learns rate after its audio alignment, pitch only when fresh.
DEFAULT = ("rate",)
MAIN_VOICING = "main"  # = cordflow.tts.backends.MAIN_VOICING (not imported: it is heavy)


def setting(voice: str, key: str) -> int | None:
    """The value of ``key`` (pitch, rate) in a voice spec, None when it has none."""
    m = re.search(rf"(?:^|,){key}=(\d+)(?:,|$)", voice)
    return int(m.group(1)) if m else None


def corpus() -> list[str]:
    """Every question and option text (for the tiny model's tokenizer)."""
    return [t for s in SKILLS.values() for t in (s.question, *s.choices)]


def label(manifest: pd.DataFrame | str | Path, skills: list[str] | None = None
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows, excluded)``: one row per usable (clip, skill) of the manifest's main voicing,
    sorted by clip id, take and skill (the module docstring gives the columns and which
    clips are asked), and ``{id, split, reason}`` per clip and skill that is not asked
    (``tts_rejected``, ``no_setting``: its voice has no such value, ``at_midpoint``)."""
    import pandas as pd

    if not isinstance(manifest, pd.DataFrame):
        from cordflow.tts.schema import read_manifest

        manifest = read_manifest(manifest)
    names = list(SKILLS) if skills is None else list(skills)
    unknown = sorted(set(names) - set(SKILLS))
    if unknown:
        raise ValueError(f"unknown audio skill(s) {unknown}; choose from {list(SKILLS)}")
    clips = manifest[manifest["voicing"] == MAIN_VOICING]
    keys = clips["id"] + ":" + clips["take"].astype(str) + ":"
    frames, excluded = [], []
    for name in names:
        skill = SKILLS[name]
        value = clips["voice"].map(lambda v, key=skill.setting: setting(v, key))
        known = value.notna()
        mid = (value[known].min() + value[known].max()) / 2 if known.any() else None
        rejected = clips["status"] == "rejected"
        at_mid = known & (value == mid)
        why = {
            "tts_rejected": rejected,
            "no_setting": ~rejected & ~known,
            "at_midpoint": ~rejected & at_mid,
        }
        for code, mask in why.items():
            for key, split, voice in zip(keys[mask], clips.loc[mask, "split"],
                                         clips.loc[mask, "voice"]):
                detail = {"no_setting": f"the voice {voice} has no {skill.setting}",
                          "at_midpoint": f"the voice {voice}: {skill.setting} at the midpoint "
                                         f"of the manifest's lowest and highest",
                          "tts_rejected": "the TTS quality checks rejected the clip"}[code]
                excluded.append({"id": key + name, "split": split, "reason": f"{code}: {detail}"})
        usable = known & ~at_mid & ~rejected
        part = clips.loc[usable, ["id", "take", "split", "voice", "path", "duration"]]
        high = (value[usable] > mid).to_numpy()
        frames.append(part.rename(columns={"id": "clip_id"}).assign(
            skill=name, question=skill.question,
            choices=[list(skill.choices)] * len(part), answer_type="choice",
            answer=["A" if h else "B" for h in high],
            target=[skill.choices[0] if h else skill.choices[1] for h in high]))
    columns = ["id", "clip_id", "take", "split", "voice", "path", "duration", "skill",
               "question", "choices", "answer_type", "answer", "target"]
    rows = pd.concat([pd.DataFrame(columns=columns), *frames], ignore_index=True)
    rows["id"] = rows["clip_id"] + ":" + rows["take"].astype(str) + ":" + rows["skill"]
    rows = rows.sort_values(["clip_id", "take", "skill"]).reset_index(drop=True)[columns]
    excluded = pd.DataFrame(excluded, columns=["id", "split", "reason"])
    return rows, excluded.sort_values("id").reset_index(drop=True)


def training_items(manifest: pd.DataFrame | str | Path, split: str, n: int, seed: int,
                   skills: list[str] | None = None) -> pd.DataFrame:
    """``n`` (clip, skill) rows of ``split``'s clips (all when fewer), a seeded choice in a
    seeded order: the same manifest and seed give the same rows. Columns of
    :func:`label`, plus ``audio_path`` and ``audio_text`` (the question, asked with the
    clip) as the model stages' item frames have them."""
    import numpy as np

    rows, _ = label(manifest, skills)
    rows = rows[rows["split"] == split].reset_index(drop=True)
    order = np.random.default_rng([seed, 13]).permutation(len(rows))[:n]
    return rows.iloc[order].reset_index(drop=True).assign(
        audio_path=lambda d: d["path"], audio_text=lambda d: d["question"])
