"""The model factory and the prompt/forward helpers every model stage uses.

One code path from the embedded default to Qwen2-Audio-7B-Instruct:

- preset ``tiny``: the real transformers ``Qwen2AudioForConditionalGeneration`` with a small
  config, a byte-level BPE tokenizer trained offline on the QA corpus (chat and audio special
  tokens included), ``WhisperFeatureExtractor`` + ``Qwen2AudioProcessor`` with a short audio
  window (``max_source_positions = chunk_length * 50``). Built by :func:`build_tiny`.
- preset ``qwen2-audio-7b``: Qwen2-Audio-7B-Instruct from a staged local folder
  (``model.path``); bf16 on GPU; nothing is downloaded; a missing folder fails at once naming
  what to stage where (:func:`require_staged`).

Both are saved and loaded with ``save_pretrained`` / ``from_pretrained`` (safetensors only,
``local_files_only``). The helpers never look at the preset: the chunk length comes from the
processor, logits are computed only on the completion slice (:func:`completion_hidden` +
:func:`lm_head`; the model's forward has no ``logits_to_keep``), audio and control tokens are
suppressed in generation, and LoRA targets the language model by regex. Clips are read
as float32 mono at 16 kHz by :func:`read_audio` (:mod:`cordflow.audio`, shared with the
benchmark loaders).
"""

from __future__ import annotations

import contextlib
import logging
import math
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
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tokenizer = train_tokenizer(corpus, tiny["vocab_size"])
    chunk = int(tiny["chunk_length"])
    fe = WhisperFeatureExtractor(feature_size=tiny["num_mel_bins"], sampling_rate=SAMPLE_RATE,
                                 chunk_length=chunk, hop_length=160, n_fft=400)
    processor = Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tokenizer,
                                    chat_template=CHAT_TEMPLATE)
    vocab = 64 * math.ceil(len(tokenizer) / 64)
    config = Qwen2AudioConfig(
        audio_config=dict(
            model_type="qwen2_audio_encoder",
            num_mel_bins=tiny["num_mel_bins"],
            encoder_layers=tiny["encoder_layers"],
            encoder_attention_heads=tiny["encoder_heads"],
            encoder_ffn_dim=4 * tiny["encoder_dim"],
            d_model=tiny["encoder_dim"],
            max_source_positions=chunk * 50,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=vocab,
            hidden_size=tiny["hidden_size"],
            intermediate_size=4 * tiny["hidden_size"],
            num_hidden_layers=tiny["layers"],
            num_attention_heads=tiny["heads"],
            num_key_value_heads=tiny["kv_heads"],
            max_position_embeddings=tiny["max_positions"],
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
    log.info("tiny Qwen2-Audio: %.2f M parameters, vocab %d, audio window %d s",
             sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer), chunk)
    return model, processor


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


def save(model: torch.nn.Module, processor, out_dir: str | Path) -> None:
    """save_pretrained (safetensors) of model and processor into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
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
    out = {k: batch[k].to(loaded.device)
           for k in ("input_ids", "attention_mask", "input_features", "feature_attention_mask")}
    out["input_features"] = out["input_features"].to(dtype)
    return out


def repeat_batch(batch: dict, n: int) -> dict:
    """Each prompt ``n`` times in a row (prompt i -> rows i*n .. i*n+n-1)."""
    return {k: v.repeat_interleave(n, dim=0) for k, v in batch.items()}


def token_ids(tokenizer, tokens: Iterable[str]) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


# ------------------------------------------------------------------------------ generation

@dataclass
class Completions:
    """Generated completions, right-padded: ``ids`` [B, T] (stop token included), ``mask``."""

    ids: torch.Tensor
    mask: torch.Tensor

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


@torch.no_grad()
def generate(loaded: Loaded, batch: dict, max_new_tokens: int, temperature: float = 0.0,
             num_return_sequences: int = 1, model: torch.nn.Module | None = None) -> Completions:
    """Greedy (temperature 0) or sampled completions of a prompt batch; audio/control tokens
    suppressed. Rows are grouped per prompt (prompt i -> rows i*n .. i*n+n-1)."""
    model = model or loaded.model
    tok = loaded.tokenizer
    stop = token_ids(tok, STOP_TOKENS)
    sample = temperature > 0
    kwargs = dict(do_sample=sample, temperature=temperature, top_k=0, top_p=1.0) if sample \
        else dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    was_training = model.training
    model.eval()
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_return_sequences,
        suppress_tokens=token_ids(tok, SUPPRESSED_TOKENS),
        eos_token_id=stop,
        pad_token_id=tok.pad_token_id,
        **kwargs,
    )
    model.train(was_training)
    ids = out[:, batch["input_ids"].shape[1]:]
    mask = completion_mask(ids, stop)
    ids = ids.masked_fill(mask == 0, tok.pad_token_id)
    return Completions(ids.contiguous(), mask)


def decode(loaded: Loaded, completions: Completions) -> list[str]:
    return [s.strip() for s in loaded.tokenizer.batch_decode(
        completions.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)]


def encode_targets(loaded: Loaded, answers: Sequence[str]) -> Completions:
    """Off-policy target completions (text + stop token), right-padded."""
    tok = loaded.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rows = [tok(a, add_special_tokens=False)["input_ids"] + [eos] for a in answers]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return Completions(ids.to(loaded.device), mask.to(loaded.device))


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


def lm_head(model: torch.nn.Module) -> torch.nn.Module:
    return core(model).lm_head


# ------------------------------------------------------------------------------ audio

def read_audio(path: str | Path) -> np.ndarray:
    """A clip file as float32 mono at 16 kHz (:func:`cordflow.audio.load_mono`)."""
    return load_mono(str(path))
