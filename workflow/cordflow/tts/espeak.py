"""espeak-ng in-process, from the ``espeakng-loader`` wheel (library and voice data; no
apt package, no ``espeak-ng`` program, no shell), driven through ctypes.

Determinism. libespeak-ng keeps synthesis state between utterances in C statics (the pitch
flutter position, the roughness cycle counter, the gain control) and draws breath noise
from random generators, so in one process the same text and voice give different samples
depending on what was spoken before. Before every utterance this module seeds both
generators and puts those statics back to their start values (found by name in the
library's ELF symbol table), so a clip depends only on its text and voice: the same bytes
in any order, in any shard, in a fresh process or not. :class:`EspeakBackend` checks this
when it starts (a probe spoken around another utterance must come out identical) and
refuses to run otherwise. Klatt variants keep more state and are refused as voices.
(Text with nothing to say, such as "...", still comes out as silence of a varying length;
post-processing trims it to nothing, so the stored clip is the same.)

Voices: ``tts.voices.train`` / ``heldout`` name espeak voices (an identifier such as
``gmw/en-US``, its last part ``en-US``, or a voice's main language such as ``en-gb``;
case-insensitive); each is combined with every ``variants`` entry (files in
``espeak-ng-data/voices/!v``; "" is the voice's own), ``pitch`` and ``rate``.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import struct
import threading
import unicodedata
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np

from cordflow.tts.backends import Audio, Backend, BackendError, Voice, VoiceError

# speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
CHARS_UTF8 = 1
EE_OK = 0
RATE, VOLUME, PITCH, RANGE, PUNCTUATION, CAPITALS, WORDGAP = 1, 2, 3, 4, 5, 6, 7
BUFFER_MS = 500

# C statics that carry over between utterances -> the value they start with.
RESET_STATICS = {"Flutter_ix": 0, "cycle_count": 0, "agc": 256}
RAND_SEED = 1


class _VoiceStruct(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


def elf_symbols(path: str | Path) -> dict[str, tuple[int, int]]:
    """``name -> (value, size)`` from the ``.symtab`` of a 64-bit little-endian ELF file
    (static symbols included, which the dynamic table lacks). Names like ``agc.6035``
    (function statics) are kept as they are."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BackendError(f"{path}: not a 64-bit little-endian ELF library")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    out: dict[str, tuple[int, int]] = {}
    for _name, sh_type, _f, _a, offset, size, link, _i, _al, entsize in sections:
        if sh_type != 2:  # SHT_SYMTAB
            continue
        str_off = sections[link][4]
        for pos in range(offset, offset + size, entsize):
            st_name, _info, _other, _shndx, value, st_size = struct.unpack_from(
                "<IBBHQQ", data, pos)
            end = data.index(b"\0", str_off + st_name)
            out[data[str_off + st_name:end].decode("ascii", "replace")] = (value, st_size)
    return out


def _static_addresses(lib: ctypes.CDLL, lib_path: str) -> dict[str, int]:
    """Run-time addresses of :data:`RESET_STATICS` (each a 4-byte int)."""
    syms = elf_symbols(lib_path)
    if "espeak_Synth" not in syms:
        raise BackendError(f"{lib_path} has no symbol table: in-process espeak cannot be made "
                           "deterministic with this build; install espeakng-loader==0.2.4")
    base = ctypes.cast(lib.espeak_Synth, ctypes.c_void_p).value - syms["espeak_Synth"][0]
    out = {}
    for name in RESET_STATICS:
        found = [(k, v) for k, v in syms.items() if k == name or k.startswith(name + ".")]
        if len(found) != 1 or found[0][1][1] != 4:
            raise BackendError(f"{lib_path}: cannot find the C static {name!r} to reset "
                               "between utterances; install espeakng-loader==0.2.4")
        out[name] = base + found[0][1][0]
    return out


def _clean_text(text: str) -> str:
    """Control characters become spaces: espeak reads ``\\x01`` as the start of an embedded
    command (pitch, rate, volume), which dataset text must never reach."""
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)


class _Engine:
    """The process-wide libespeak-ng (it is a global-state C library: one per process)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise BackendError("tts.backend 'espeak' needs the espeakng-loader package "
                               "(pip install espeakng-loader==0.2.4, or use envs/tts.yaml)"
                               ) from e
        self.lib_path = espeakng_loader.get_library_path()
        self.data_path = Path(espeakng_loader.get_data_path())
        lib = ctypes.CDLL(self.lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceStruct))
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_VoiceStruct)
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib = lib
        self.libc = ctypes.CDLL(None)
        self.rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS,
                                          str(self.data_path).encode(), INITIALIZE_DONT_EXIT)
        if self.rate <= 0:
            raise BackendError(f"espeak_Initialize failed with data at {self.data_path}")
        self.statics = _static_addresses(lib, self.lib_path)
        self.info = lib.espeak_Info(None).decode()
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()
        self.voices = self._list_voices()

    def _collect(self, wav, n, _events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        return 0

    def _list_voices(self) -> list[tuple[str, str, list[str]]]:
        """(identifier, name, languages by priority) of every installed voice."""
        out = []
        table = self.lib.espeak_ListVoices(None)
        i = 0
        while table[i]:
            v = table[i].contents
            langs, p = [], v.languages
            while ctypes.c_ubyte.from_address(p).value:  # priority byte, then a C string
                s = ctypes.string_at(p + 1)
                langs.append(s.decode())
                p += len(s) + 2
            out.append((v.identifier.decode(), v.name.decode(), langs))
            i += 1
        return out

    def resolve(self, name: str) -> str | None:
        """The identifier a configured voice name means, or None. Tried in order: the
        identifier, its last part, the voice's main language, its display name."""
        want = name.strip().lower()
        tiers = [
            [i for i, _, _ in self.voices if i.lower() == want],
            [i for i, _, _ in self.voices if i.rsplit("/", 1)[-1].lower() == want],
            [i for i, _, langs in self.voices if langs and langs[0].lower() == want],
            [i for i, n, _ in self.voices if n.lower() == want],
        ]
        for tier in tiers:
            if len(tier) == 1:
                return tier[0]
            if len(tier) > 1:
                raise VoiceError(f"espeak voice {name!r} is ambiguous ({', '.join(tier)}): "
                                 "give the identifier")
        return None

    def variant_file(self, variant: str) -> Path:
        return self.data_path / "voices" / "!v" / variant

    def synth(self, text: str, identifier: str, variant: str, pitch: int, rate: int
              ) -> np.ndarray:
        """int16 samples for ``text`` (fixed start state: see the module docstring)."""
        full = identifier + (f"+{variant}" if variant else "")
        data = _clean_text(text).encode("utf-8") + b"\0"
        with self.lock:
            for name, addr in self.statics.items():
                ctypes.c_int.from_address(addr).value = RESET_STATICS[name]
            self.lib.espeak_ng_SetRandSeed(RAND_SEED)
            self.libc.srand(RAND_SEED)
            if self.lib.espeak_SetVoiceByName(full.encode()) != EE_OK:
                raise BackendError(f"espeak cannot load voice {full!r}")
            for param, value in ((RATE, rate), (VOLUME, 100), (PITCH, pitch), (RANGE, 50),
                                 (PUNCTUATION, 0), (CAPITALS, 0), (WORDGAP, 0)):
                self.lib.espeak_SetParameter(param, value, 0)
            self._chunks = []
            err = self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8,
                                        None, None)
            chunks, self._chunks = self._chunks, []
        if err != EE_OK:
            raise BackendError(f"espeak_Synth failed (error {err}) for voice {full!r}")
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


def engine() -> _Engine:
    """The process's espeak engine, started on first use."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


@cache
def _file_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


class EspeakBackend(Backend):
    """espeak-ng voices (accent x variant x pitch x rate); output 22050 Hz."""

    name = "espeak"

    def __init__(self, tts_cfg: dict):
        super().__init__(tts_cfg)
        self.engine = engine()
        self._ids: dict[str, str] = {}
        self._check_determinism()

    @property
    def version(self) -> str:
        try:
            loader = metadata.version("espeakng-loader")
        except metadata.PackageNotFoundError:
            loader = "unknown"
        return (f"espeak-ng {self.engine.info} (espeakng-loader {loader}, "
                f"lib {_file_sha(self.engine.lib_path)})")

    @property
    def sample_rate(self) -> int:
        return self.engine.rate

    def voice_set(self, names: list[str], voices_cfg: dict, key: str) -> list[Voice]:
        if not names:
            raise VoiceError(f"config key '{key}': the voice list is empty")
        for i, name in enumerate(names):
            ident = self.engine.resolve(name)
            if ident is None:
                english = sorted({langs[0] for _, _, langs in self.engine.voices
                                  if langs and langs[0].startswith("en")})
                raise VoiceError(f"config key '{key}[{i}]': espeak has no voice {name!r} "
                                 f"(English ones: {', '.join(english)})")
            self._ids[name] = ident
        for i, variant in enumerate(voices_cfg.get("variants", [""])):
            problem = self._variant_problem(variant) if variant else None
            if problem:
                raise VoiceError(f"config key 'tts.voices.variants[{i}]': {problem}")
        return [Voice(name, variant, pitch, rate)
                for name in names
                for variant in voices_cfg.get("variants", [""])
                for pitch in voices_cfg.get("pitch", [50])
                for rate in voices_cfg.get("rate", [175])]

    def _variant_problem(self, variant: str) -> str | None:
        """Why ``variant`` cannot be used, or None."""
        path = self.engine.variant_file(variant)
        if not re.fullmatch(r"[A-Za-z0-9_ -]+", variant) or not path.is_file():
            known = sorted(p.name for p in path.parent.iterdir())
            return f"espeak has no variant {variant!r} (known: {', '.join(known)})"
        if re.search(r"^\s*klatt\b", path.read_text(errors="replace"), re.MULTILINE):
            return (f"espeak variant {variant!r} uses the Klatt synthesiser, which keeps "
                    "state between utterances (not deterministic in-process); choose another")
        return None

    def synthesize(self, text: str, voice: Voice) -> Audio:
        ident = self._ids.get(voice.name) or self.engine.resolve(voice.name)
        if ident is None:
            raise VoiceError(f"espeak has no voice {voice.name!r}")
        pcm = self.engine.synth(text, ident, voice.variant,
                                50 if voice.pitch is None else voice.pitch,
                                175 if voice.rate is None else voice.rate)
        return Audio(pcm.astype(np.float32) / 32768.0, self.engine.rate)

    def _check_determinism(self) -> None:
        """A probe spoken, then again after another utterance, must be identical."""
        probe = "What is seven plus five?"
        ident = self.engine.resolve("en-us") or self.engine.voices[0][0]
        first = self.engine.synth(probe, ident, "f2", 60, 175)
        self.engine.synth("Something else, to move the state on.", ident, "m3", 40, 200)
        if not np.array_equal(first, self.engine.synth(probe, ident, "f2", 60, 175)):
            raise BackendError(f"{self.engine.lib_path}: espeak output depends on earlier "
                               "utterances despite the state reset; install "
                               "espeakng-loader==0.2.4")
