"""Knowledge distillation (arXiv 2509.18579): the teachers and the layer map of the kd methods.

The ``kd_source``, ``kd_layer`` and ``kd_source_layer`` methods (:mod:`cordflow.train.methods`)
train the student on the SFT term (``offpolicy``, loss ``nll``) with the text teacher's
answers as its targets, plus the distillation terms of :mod:`cordflow.train.step`::

    L = L_sft + lambda_text * L_kd_text + lambda_layer * L_kd_layer + lambda_ac * L_kd_acoustic

- **text teacher** (:class:`SelfTextTeacher` or :class:`TextLM`): the model itself under the
  TEXT prompt (``train.teacher``: kind ``init`` = this run's starting weights), or a separate
  text LM (``train.kd.text_teacher``: a local transformers causal-LM folder, safetensors,
  offline). It answers the text prompt (the SFT targets); ``kd_text`` is the per-token KL
  between the student under the audio prompt and the text teacher under the text prompt on
  those answer tokens (``losses.distill_loss``); ``kd_layer`` matches its hidden states.
- **acoustic teacher** (:class:`AcousticTeacher`): the student BEFORE distillation (the
  starting weights, frozen), under the AUDIO prompt, on the acoustic items: the spoken
  questions of the QA split marked acoustic (``train.kd.acoustic_split``) and/or the
  audio-skill items the base learned (``train.kd.acoustic_skills``: base.skills' questions,
  e.g. "Is the speaker talking fast or slow?", asked with train clips;
  :func:`cordflow.train.run.acoustic_items`): ``kd_acoustic`` is the per-token KL between
  student and acoustic teacher, both under the audio prompt, on the acoustic teacher's
  greedy answers. Built (and run) only when the spec has that term, i.e. lambda_ac > 0 and
  there are acoustic items.
- **layer map** (:class:`LayerMap`): (teacher layer, student layer) pairs
  (``train.kd.layers``: ``top``, ``every_k`` with ``k``, or a hand list); layer 0 is the
  embeddings, layer L the final normed state. When the text teacher is the model itself
  (same depth and width) the presets give the identity over the chosen layers and there is
  no projection. Where the widths differ (a separate text teacher), each pair has a learned
  linear projection student width -> teacher width (no bias), trained with the student and
  saved in the method's output folder as ``kd_projection.safetensors`` (the map itself in
  ``kd_layers.json``); the saved model itself stays a plain Qwen2-Audio.

A separate text teacher with ANOTHER tokenizer (``TextLM.same_vocab`` False): its answers
are decoded to text and re-tokenized by the student (the SFT targets: distillation on the
text of its answers); the token-level KL has no common vocabulary, so ``kd_text`` is 0
(logged as ``kd_text_skipped``); ``kd_layer`` runs it on its own tokenization of the same
answer text and takes, for each student answer token, the teacher token that holds the last
character of that token's text (:func:`char_alignment`); stop token to stop token.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cordflow import models
from cordflow.train.step import StepInputs, Teacher

log = logging.getLogger("cordflow.train.kd")

KD_TERMS = ("kd_text", "kd_layer", "kd_acoustic")


# ----------------------------------------------------------------------------- layer map

def layer_pairs(layers: str | Sequence[Sequence[int]], k: int, n_teacher: int,
                n_student: int) -> list[tuple[int, int]]:
    """The layer map as (teacher layer, student layer) pairs, layers counted 1..L (0 = the
    embeddings, L = the final normed state):

    - ``top``: [(L_t, L_s)], the last layer only;
    - ``every_k``: student layers k, 2k, ... <= L_s, each with teacher layer
      round(s * L_t / L_s) (the identity when the depths are equal);
    - a list of [teacher, student] pairs, as given (an empty list: no layer term).
    """
    if layers == "top":
        return [(n_teacher, n_student)]
    if layers == "every_k":
        chosen = list(range(k, n_student + 1, k))
        if not chosen:
            raise ValueError(f"train.kd.layers every_k with k = {k} selects no layer of a "
                             f"{n_student}-layer student: lower train.kd.k")
        return [(math.floor(s * n_teacher / n_student + 0.5), s) for s in chosen]
    if isinstance(layers, str):
        raise ValueError(f"train.kd.layers: '{layers}' is not top, every_k or a list of "
                         "[teacher, student] pairs")
    pairs = [(int(t), int(s)) for t, s in layers]
    for t, s in pairs:
        if not (0 <= t <= n_teacher and 0 <= s <= n_student):
            raise ValueError(f"train.kd.layers: pair [{t}, {s}] is outside the teacher's "
                             f"0..{n_teacher} or the student's 0..{n_student} layers")
    return pairs


class LayerMap(nn.Module):
    """The layer map and, where the widths differ, one learned linear projection per pair
    (student width -> teacher width, no bias; float32, trained with the student)."""

    def __init__(self, pairs: Sequence[tuple[int, int]], student_width: int,
                 teacher_width: int, distance: str = "cosine"):
        super().__init__()
        self.pairs = [tuple(p) for p in pairs]
        self.student_width, self.teacher_width, self.distance = (
            student_width, teacher_width, distance)
        self.projections = (nn.ModuleList(nn.Linear(student_width, teacher_width, bias=False)
                                          for _ in self.pairs)
                            if student_width != teacher_width and self.pairs else None)

    def projection_list(self) -> list[nn.Module] | None:
        return list(self.projections) if self.projections is not None else None

    def describe(self) -> dict:
        return {"pairs": [list(p) for p in self.pairs], "distance": self.distance,
                "student_width": self.student_width, "teacher_width": self.teacher_width,
                "projection": self.projections is not None}


# ----------------------------------------------------------------------------- alignment

def char_alignment(student_ends: Sequence[int], teacher_ends: Sequence[int]) -> list[int]:
    """For each student token (the end offset of its text in the answer), the index of the
    teacher token holding its last character: the first teacher token whose end offset
    reaches it (the last teacher token when none does). Offsets of the same answer text."""
    if not teacher_ends:
        return [0] * len(student_ends)
    out, j = [], 0
    for end in student_ends:
        while j < len(teacher_ends) - 1 and teacher_ends[j] < end:
            j += 1
        out.append(j)
    return out


def _prefix_ends(tokenizer, ids: Sequence[int]) -> list[int]:
    """The end offset of each token's text: len(decode(ids[:k+1]))."""
    return [len(tokenizer.decode(list(ids[:k + 1]), skip_special_tokens=True,
                                 clean_up_tokenization_spaces=False)) for k in range(len(ids))]


# ----------------------------------------------------------------------------- teachers

class SelfTextTeacher:
    """The text teacher that is the model itself under the TEXT prompt (``train.teacher``:
    kind ``init`` = this run's starting weights, ``live`` or ``ema``): the same answers as
    the ``sft`` method's targets, the same vocabulary, depth and width."""

    same_vocab = True

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        text = models.core(teacher.model).config.get_text_config()
        self.n_layers, self.width = text.num_hidden_layers, text.hidden_size

    def answers(self, batch: StepInputs, max_new: int, temperature: float,
                seeds: list[int] | None = None) -> models.Completions:
        return self.teacher.generate(batch.text, max_new, temperature, seeds=seeds)

    def hidden_states(self, batch: StepInputs,
                      comp: models.Completions) -> tuple[torch.Tensor, ...]:
        return self.teacher.hidden_states(batch.text, comp)

    def heads(self, student_head: nn.Module) -> tuple[nn.Module, nn.Module]:
        return student_head, self.teacher.lm_head


class _Sliced(nn.Module):
    """An output layer restricted to the first ``n`` rows (the shared vocabulary)."""

    def __init__(self, head: nn.Module, n: int):
        super().__init__()
        self.head, self.n = head, n

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)[..., :self.n]


class TextLM:
    """A separate text LM as the text teacher (``train.kd.text_teacher``): a local
    transformers causal-LM folder, loaded frozen with safetensors only, offline, in the
    student's dtype and device. It reads the student's TEXT prompt (the same system prompt,
    question and instruction) through its own chat template (ours when it has none).

    Same vocabulary as the student (``same_vocab``; e.g. Qwen3 and Qwen2-Audio): its
    generated token ids are the student's targets, the KL is over the shared vocabulary
    (both output layers cut to the student tokenizer's size). Another tokenizer: see the
    module docstring (the text of its answers; hidden states aligned by characters)."""

    def __init__(self, path: str | Path, student: models.Loaded, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(path)
        if not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
            raise SystemExit(f"train.kd.text_teacher = {path}: not a transformers model folder "
                             "with config.json and *.safetensors (nothing is downloaded: stage "
                             "the causal LM there, e.g. `huggingface-cli download Qwen/Qwen3-8B "
                             "--local-dir /models/Qwen3-8B`)")
        self.student = student
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, local_files_only=True, use_safetensors=True).to(student.device)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        text = self.model.config.get_text_config()
        self.n_layers, self.width = text.num_hidden_layers, text.hidden_size
        self.same_vocab = self.tokenizer.get_vocab() == student.tokenizer.get_vocab()
        tok = self.tokenizer
        self.stop = list(dict.fromkeys(
            models.token_ids(tok, models.STOP_TOKENS)
            + ([tok.eos_token_id] if tok.eos_token_id is not None else [])))
        if not self.stop:
            raise SystemExit(f"train.kd.text_teacher = {path}: its tokenizer has no stop token")
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.stop[0]
        log.info("text teacher %s: %d layers, width %d, %s vocabulary", folder, self.n_layers,
                 self.width, "the student's" if self.same_vocab else "ANOTHER")

    def prompts(self, questions: Sequence[str]) -> dict:
        """The student's text prompt of each question, in the teacher's chat template."""
        texts = [self._prompt(q) for q in questions]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True,
                               add_special_tokens=False)
        return {k: v.to(self.student.device) for k, v in batch.items()}

    def _prompt(self, question: str) -> str:
        s = self.student
        msgs = [{"role": "system", "content": s.system_prompt}] if s.system_prompt else []
        msgs.append({"role": "user", "content": question + s.instruction})
        template = None if self.tokenizer.chat_template else models.CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True,
                                                  tokenize=False, chat_template=template)

    @torch.no_grad()
    def answers(self, batch: StepInputs, max_new: int, temperature: float,
                seeds: list[int] | None = None) -> models.Completions:
        """Its answers to the text prompts, as student-token completions (by the same
        explicit generation config and keyed sampling as the student's,
        ``models.generate_ids``)."""
        prompt = self.prompts(list(batch.rows["question"]))
        suppress = models.token_ids(self.tokenizer, models.SUPPRESSED_TOKENS)
        ids, mask = models.generate_ids(self.model, prompt, self.stop, self.pad, suppress,
                                        max_new, temperature, seeds=seeds)
        if self.same_vocab:
            ids = ids.masked_fill(mask == 0, self.student.tokenizer.pad_token_id)
            return models.Completions(ids.contiguous(), mask)
        texts = [t.strip() for t in self.tokenizer.batch_decode(
            ids.masked_fill(mask == 0, self.pad), skip_special_tokens=True,
            clean_up_tokenization_spaces=False)]
        return models.encode_targets(self.student, texts)

    def _own_tokens(self, comp: models.Completions) -> tuple[models.Completions, torch.Tensor]:
        """The teacher's tokenization of each answer's text (+ its stop token) and, for each
        student position, the teacher position it is aligned with ([B, T_s])."""
        s_tok, t_tok = self.student.tokenizer, self.tokenizer
        rows, index = [], []
        for ids, mask in zip(comp.ids.tolist(), comp.mask.tolist(), strict=True):
            real = [i for i, m in zip(ids, mask, strict=True) if m]
            stop = bool(real) and real[-1] in models.token_ids(s_tok, models.STOP_TOKENS)
            words = real[:-1] if stop else real
            text = s_tok.decode(words, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            own = t_tok(text, add_special_tokens=False)["input_ids"]
            align = char_alignment(_prefix_ends(s_tok, words), _prefix_ends(t_tok, own))
            if stop:
                align.append(len(own))
            rows.append(own + [self.stop[0]])
            index.append(align + [0] * (len(ids) - len(align)))
        t_ids, t_mask = models.right_pad(rows, self.pad)
        device = self.student.device
        return (models.Completions(t_ids.to(device), t_mask.to(device)),
                torch.tensor(index, dtype=torch.long, device=device))

    @torch.no_grad()
    def hidden_states(self, batch: StepInputs,
                      comp: models.Completions) -> tuple[torch.Tensor, ...]:
        """Its hidden states (every layer, [B, T, H_t]) at the student's answer positions."""
        prompt = self.prompts(list(batch.rows["question"]))
        if self.same_vocab:
            return models.completion_hidden_states(self.model, prompt, comp)
        own, index = self._own_tokens(comp)
        states = models.completion_hidden_states(self.model, prompt, own)
        at = index.unsqueeze(-1).expand(-1, -1, self.width)
        return tuple(h.gather(1, at) for h in states)

    def heads(self, student_head: nn.Module) -> tuple[nn.Module, nn.Module]:
        n = len(self.student.tokenizer)
        return _Sliced(student_head, n), _Sliced(self.model.get_output_embeddings(), n)


class AcousticTeacher(Teacher):
    """The student BEFORE distillation (this run's starting weights), frozen, run under the
    AUDIO prompt: LoRA adapters disabled when only adapters train, else a frozen copy made
    at the start of the run (by default the audio encoder trains too, and disabling the
    adapters would leave it live)."""

    def __init__(self, loaded: models.Loaded):
        super().__init__("init", loaded)
        if self.copy is None and any(p.requires_grad for n, p in loaded.model.named_parameters()
                                     if "lora_" not in n):
            self.copy = copy.deepcopy(loaded.model).eval()
            for p in self.copy.parameters():
                p.requires_grad_(False)


# ----------------------------------------------------------------------------- set-up

@dataclass
class KDParts:
    """What a kd method's steps use beyond the model: its text teacher (None for every
    other method), its layer map (with ``kd_layer``) and its acoustic teacher (with
    ``kd_acoustic``)."""

    text_teacher: SelfTextTeacher | TextLM | None = None
    layer_map: LayerMap | None = None
    acoustic_teacher: AcousticTeacher | None = None

    def trainable(self) -> list[nn.Parameter]:
        """The method's own trainable weights (the projections of the layer map)."""
        return list(self.layer_map.parameters()) if self.layer_map is not None else []


def prepare(spec: dict, loaded: models.Loaded, teacher: Teacher, mcfg: dict) -> KDParts:
    """The KD parts of method ``spec`` (nothing for a method that is not a kd method)."""
    if "text_teacher" not in spec:
        return KDParts()
    if spec["text_teacher"]:
        text = TextLM(spec["text_teacher"], loaded, models.resolve_dtype(mcfg, loaded.device))
    else:
        text = SelfTextTeacher(teacher)
    parts = KDParts(text_teacher=text)
    if spec.get("kd_text") is not None and not text.same_vocab:
        log.warning("the text teacher's tokenizer is not the student's: no token-level KL "
                    "(kd_text is 0); it distils through the text of its answers")
    if spec.get("kd_layer") is not None:
        cfg = spec["kd_layer"]
        student = models.core(loaded.model).config.get_text_config()
        pairs = layer_pairs(cfg["layers"], cfg.get("k", 1), text.n_layers,
                            student.num_hidden_layers)
        parts.layer_map = LayerMap(pairs, student.hidden_size, text.width,
                                   cfg["distance"]).to(loaded.device)
        log.info("kd layer map: %s", parts.layer_map.describe())
    if spec.get("kd_acoustic") is not None:
        parts.acoustic_teacher = AcousticTeacher(loaded)
    return parts


def save(parts: KDParts, out_dir: Path) -> None:
    """The layer map (``kd_layers.json``) and its projections
    (``kd_projection.safetensors``, keys ``projections.<pair>.weight``) in the method's
    output folder."""
    if parts.layer_map is None:
        return
    (out_dir / "kd_layers.json").write_text(json.dumps(parts.layer_map.describe(), indent=1))
    if parts.layer_map.projections is not None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous()
                   for k, v in parts.layer_map.state_dict().items()},
                  str(out_dir / "kd_projection.safetensors"))
