"""Benchmark kinds: one adapter per ``kind`` of an ``evaluate.benchmarks`` entry, in KINDS.

:data:`KINDS` maps a kind's name to its adapter (a :class:`BenchmarkKind`); nothing else
names a kind. config/schema.yaml's ``kind`` enum and its if/then rules are checked against
it (tests/test_registries.py), rules/common.smk asks it for the rule's inputs and
:func:`cordflow.evaluate.items.load` for the items. An adapter carries:

``requires``
    The entry keys the kind requires (the schema's if/then; a key that only other kinds
    require is forbidden).
``has_text``
    Whether its items have a text-only prompt. False (audio only): no text accuracy and no
    gap, the benchmark shows the audio skills kept.
``mapping``
    Dataset kinds: the column each item field is read from (an entry's ``mapping``
    overrides it). ``audio: None`` means "audio" if the dataset has it, else "audio_id".
``stage_hint``
    What to stage where when the data is not on this machine (a format string with
    ``{subset}``, ``{path}`` and ``{where}``); None for data the workflow makes.
``inputs(entry)``
    ``{name: path}`` of the workflow files it reads: inputs of rule evaluate, passed on as
    ``--<name> PATH`` options of ``cordflow evaluate`` and back to ``items`` by name.
``items(entry, inputs, where)``
    ``(rows, excluded)``: one dict per usable item (the fields of
    :data:`cordflow.evaluate.items.ITEM_COLUMNS`) and one ``{id, reason}`` per excluded
    one (reason ``"<code>: <detail>"``), in the data's order; ``where`` names the entry in
    messages.

The kinds:

``qa_split``
    Our own held-out QA: ``results/qa/{split}.parquet`` joined on id with the audio manifest
    (``cordflow.tts.read_manifest``). Questions whose clip the TTS quality checks rejected
    are excluded and counted (``tts_rejected: <its reason>``), as are questions without a
    clip (``no_clip``); flagged clips are used. ``voicing`` (default ``main``) picks the
    clips: the main voicing's first take, or the one clip of a ``tts.voicings`` entry
    (the same questions spoken by another backend, e.g. a neural voice: a paired
    benchmark). Spoken GSM8K is this kind: GSM8K sourced through ``source.hf`` (preset
    gsm8k) into its own split and spoken by the TTS stage (config/README.md, "Benchmarks").
``voicebench``
    VoiceBench's multiple-choice subsets (``mmsu``, ``openbookqa``) from a staged copy of
    ``hlt-lab/voicebench``: columns ``audio`` (the spoken question), ``prompt`` (its text,
    options inline as "A. ..." lines) and ``reference`` (the answer letter). The options
    are read out of the prompt unless ``mapping.choices`` names a column.
``mmau``
    MMAU (the official ``mmau-test-mini.json`` with its audio folder, or a staged HF copy):
    ``audio_id`` or ``audio`` (a sound, music or speech clip), ``question``, ``choices``
    and ``answer`` (the text of the right option), ``task`` (sound | music | speech). The
    question is asked WITH the clip; there is no text-only counterpart.
``audio_skill``
    Built in, audio only (like mmau): questions whose answer is in the sound of a clip,
    not its words (:mod:`cordflow.skills`: "Is the speaker's voice high or low?", "Is the
    speaker talking fast or slow?"), asked with each main-voicing clip of ``split`` (the
    held-out ``test`` split: questions and voices never trained on), answered from the
    pitch and rate the manifest records for its voice. ``skills`` (default ``[rate]``, what
    the default base learns) picks the questions. Items are
    ``"<question id>:<take>:<skill>"`` in id order, category the skill. The base stage
    trains the same questions on train-split clips (``base.skills``); later stages never
    do, so its row shows the audio skill kept.

Importing this module is light (the Snakefile imports it to plan jobs;
tests/test_dag_import.py checks it): pandas, pandera, soundfile, datasets and torch are
imported inside ``items``, when a benchmark is loaded.

Adding a kind:

1. an adapter class here (a :class:`DatasetKind` for a multiple-choice dataset read offline
   by :mod:`cordflow.evaluate.staged`, else a :class:`BenchmarkKind` with its own
   ``items``) and its entry in :data:`KINDS`;
2. config/schema.yaml, ``evaluate.benchmarks.items``: its name in the ``kind`` enum (in
   the order of KINDS), and an if/then block requiring its ``requires`` keys and
   forbidding the other kinds' (plus the description of any new entry key);
3. only if ``inputs`` names a file no kind read before: that ``--<name>`` option of
   ``cordflow evaluate`` (cli.py); only if ``items`` imports a module no kind imported
   before: that file in ``RULE_CODE["evaluate"]`` (cordflow/config.py);
4. an audio-only kind (``has_text`` False): its name in the audio-only set of
   tests/test_registries.py.

tests/test_registries.py ("benchmark kinds") fails until 2 to 4 agree with the adapter
(tests/test_reruns.py checks RULE_CODE).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

QA_TABLE = "results/qa/{split}.parquet"
MANIFEST = "results/audio/manifest.parquet"  # the TTS stage's output (rules/common.smk uses it)


class BenchmarkKind:
    """One kind of benchmark entry (see the module docstring for each attribute)."""

    name: str = ""
    requires: tuple[str, ...] = ()
    has_text: bool = True
    mapping: dict[str, str | None] = {}
    stage_hint: str | None = None

    def inputs(self, entry: dict) -> dict[str, str]:
        """{input name: workflow path} of the files this kind reads (none by default)."""
        return {}

    def items(self, entry: dict, inputs: dict[str, Any], where: str
              ) -> tuple[list[dict], list[dict]]:
        """(rows, excluded) of one validated entry; ``inputs`` holds every input named."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class QaSplit(BenchmarkKind):
    """A QA split of this workflow with its clips from the audio manifest."""

    name = "qa_split"
    requires = ("split",)

    def inputs(self, entry: dict) -> dict[str, str]:
        return {"qa": QA_TABLE.format(split=entry["split"]), "manifest": MANIFEST}

    def items(self, entry: dict, inputs: dict[str, Any], where: str
              ) -> tuple[list[dict], list[dict]]:
        """Items of the QA table with a usable clip (status ok or flagged): the first take
        of the entry's voicing (take 0 of the main voicing by default)."""
        from tqdm import tqdm

        from cordflow.evaluate.items import AudioClip, BenchmarkError, probe
        from cordflow.source import read_qa
        from cordflow.tts.schema import read_manifest

        qa, manifest = inputs["qa"], inputs["manifest"]
        table = read_qa(qa)
        other = sorted(set(table["split"]) - {entry["split"]})
        if other:
            raise BenchmarkError(f"{where}: split is '{entry['split']}' but {qa} holds "
                                 f"split(s) {other}; pass results/qa/{entry['split']}.parquet")
        # A row per question: the first take of its voicing (the train split may have more
        # takes; a voicing of tts.voicings one), rejected or not.
        voicing = entry.get("voicing") or "main"
        clips = read_manifest(manifest)
        clips = clips[clips["voicing"] == voicing]
        if voicing != "main" and not clips["id"].isin(table["id"]).any():
            raise BenchmarkError(f"{where}: {manifest} has no clip of voicing '{voicing}' for "
                                 f"split '{entry['split']}'; speak it: tts.voicings.{voicing} "
                                 f"with '{entry['split']}' in its splits")
        clips = clips[~clips["id"].duplicated()].set_index("id")  # sorted by id and take
        rows, excluded = [], []
        for r in tqdm(table.itertuples(), total=len(table), desc=f"{entry['name']} audio",
                      unit="clip", mininterval=2.0, ncols=100):
            clip = clips.loc[r.id] if r.id in clips.index else None
            if clip is None:
                excluded.append({"id": r.id, "reason": f"no_clip: {manifest} has no clip for "
                                 f"it in voicing '{voicing}'"})
                continue
            if clip["status"] == "rejected":
                excluded.append({"id": r.id, "reason": f"tts_rejected: {clip['reason']}"})
                continue
            try:
                duration = probe(clip["path"])
            except Exception as e:
                excluded.append({"id": r.id, "reason": f"bad_audio: {e}"})
                continue
            rows.append({"id": r.id, "question": r.question, "audio_text": None,
                         "answer": r.answer, "answer_type": r.answer_type,
                         "choices": r.choices,
                         "audio": AudioClip(_constant(clip["path"]), None, f"{where} {r.id}"),
                         "duration": duration, "category": clip["voice"]})
        return rows, excluded


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


class DatasetKind(BenchmarkKind):
    """A multiple-choice dataset staged on this machine (``path``), read offline and turned
    into items by :func:`cordflow.evaluate.staged.dataset_rows`, split by split."""

    requires = ("path",)
    # Whether the answer column holds an option's TEXT (tried before a letter) rather
    # than its letter (tried first).
    answer_text_first: bool = False

    def items(self, entry: dict, inputs: dict[str, Any], where: str
              ) -> tuple[list[dict], list[dict]]:
        from cordflow.evaluate.staged import dataset_rows

        return dataset_rows(self, entry, where)


class VoiceBench(DatasetKind):
    """hlt-lab/voicebench's multiple-choice subsets (mmsu, openbookqa)."""

    name = "voicebench"
    mapping = {"audio": "audio", "question": "prompt", "answer": "reference",
               "choices": None, "id": None, "category": None}
    stage_hint = (
        "on a machine with network run\n"
        "    python -c \"import datasets; datasets.load_dataset('hlt-lab/voicebench', "
        "'{subset}').save_to_disk('{path}/{subset}')\"\n"
        "(or: huggingface-cli download hlt-lab/voicebench --repo-type dataset "
        "--include '{subset}/*' --local-dir {path}) and copy what it writes to '{path}' here"
    )


class Mmau(DatasetKind):
    """MMAU test-mini: audio only (the question goes with the clip), answers as text."""

    name = "mmau"
    has_text = False
    answer_text_first = True
    mapping = {"audio": None, "question": "question", "answer": "answer",
               "choices": "choices", "id": "id", "category": "task"}
    stage_hint = (
        "download mmau-test-mini.json and the test-mini audios from "
        "https://github.com/Sakshi113/MMAU, unpack both in one folder here and set "
        "{where}.path to the JSON file (its audio_id paths are read relative to it)"
    )


class AudioSkill(BenchmarkKind):
    """Built-in audio skills (pitch, rate) asked about the clips of a split."""

    name = "audio_skill"
    requires = ("split",)
    has_text = False

    def inputs(self, entry: dict) -> dict[str, str]:
        return {"manifest": MANIFEST}

    def items(self, entry: dict, inputs: dict[str, Any], where: str
              ) -> tuple[list[dict], list[dict]]:
        """One item per (main-voicing clip of the split, skill), in id order; a clip that
        cannot be asked about (rejected, no such setting) or read is excluded."""
        from cordflow import skills
        from cordflow.evaluate.items import AudioClip, BenchmarkError, probe
        from cordflow.tts.schema import read_manifest

        manifest, split = inputs["manifest"], entry["split"]
        clips = read_manifest(manifest)
        if not ((clips["split"] == split) & (clips["voicing"] == skills.MAIN_VOICING)).any():
            raise BenchmarkError(f"{where}: {manifest} has no clip of split '{split}' (the "
                                 "split's questions must be spoken by tts.backend)")
        labelled, excluded = skills.label(clips, entry.get("skills") or list(skills.DEFAULT))
        labelled = labelled[labelled["split"] == split]
        excluded = excluded[excluded["split"] == split]
        rows, out = [], [{"id": r.id, "reason": r.reason} for r in excluded.itertuples()]
        for r in labelled.itertuples():
            try:
                duration = probe(r.path)
            except Exception as e:
                out.append({"id": r.id, "reason": f"bad_audio: {e}"})
                continue
            rows.append({"id": r.id, "question": None, "audio_text": r.question,
                         "answer": r.answer, "answer_type": "choice",
                         "choices": list(r.choices),
                         "audio": AudioClip(_constant(r.path), None, f"{where} {r.id}"),
                         "duration": duration, "category": r.skill})
        return rows, out


KINDS: dict[str, BenchmarkKind] = {k.name: k for k in (QaSplit(), VoiceBench(), Mmau(),
                                                       AudioSkill())}


def requires_hint() -> str:
    """Which keys each kind takes, e.g. "qa_split and audio_skill take split, not path;
    voicebench and mmau take path, not split" (for a message about an invalid entry)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for kind in KINDS.values():
        groups.setdefault(kind.requires, []).append(kind.name)
    every = {key for keys in groups for key in keys}
    return "; ".join(
        f"{' and '.join(names)} take{'s' if len(names) == 1 else ''} {', '.join(keys)}"
        + (f", not {', '.join(sorted(every - set(keys)))}" if every - set(keys) else "")
        for keys, names in groups.items())

