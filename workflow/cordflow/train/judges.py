"""Judges: the sequence-level reward of CORD (method.md section 3), ``r_i = J(y_i, y_hat)``.

A judge is called with three aligned lists, one entry per rollout: the rollout texts (the
audio-prompt answers ``y_i``), the reference texts (``y_hat``: the same model's answer to
the TEXT prompt; repeat it for the rollouts of one question) and the items (QA rows as
dicts with ``answer``, ``answer_type``, ``choices`` and, for the LLM judge's prompt,
``question``). It returns one :class:`Verdict` per rollout: a reward in {0, 1} and a short
reason (what was read or replied) for the training log.

- ``rule`` (default, :class:`RuleJudge`): the final number / option letter / normalised
  text of the rollout and of the reference, read by :func:`cordflow.scoring.extract`,
  must be equal; nothing read never agrees.
- ``gold`` (:class:`GoldJudge`): the rollout must give the gold answer (an oracle
  baseline; the paper compares with the model's own text answer instead).
- ``llm`` (:class:`LocalLMJudge`, :class:`EndpointJudge`): a language model asked, with
  the ``prompt`` template, whether the two answers agree. Local: a staged transformers
  causal LM, scored by its next-token probabilities of "yes" against "no" (deterministic,
  no sampling). Endpoint: an OpenAI-compatible chat-completions server (such as vLLM) at
  temperature 0; its reply is parsed for yes/no and a reply that is neither is a 0 with
  that reason, never a crash. A server that cannot be reached (after ``retries``) or
  refuses the request (4xx) is an error: silent zero rewards would corrupt training.
  ``engine: vllm`` (:class:`VLLMJudge`): the local model folder served by a vLLM engine
  process of its own venv (cordflow.vllm_engine), a greedy reply read as the endpoint's.

:func:`make_judge` builds a judge from the ``train.judge`` config section
(:data:`JUDGE_DEFAULTS` lists its keys and defaults).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import string
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cordflow.scoring import extract

log = logging.getLogger("cordflow.train.judges")

__all__ = ["Verdict", "RuleJudge", "GoldJudge", "LocalLMJudge", "EndpointJudge", "VLLMJudge",
           "JudgeError", "make_judge", "parse_yes_no", "render_prompt", "DEFAULT_PROMPT",
           "JUDGE_DEFAULTS"]

DEFAULT_PROMPT = (
    "You check whether two answers to the same question give the same final answer.\n"
    "Question: {question}\n"
    "Answer 1: {reference}\n"
    "Answer 2: {rollout}\n"
    "Ignore wording, explanations and formatting; compare only the final answers "
    "(the same number, the same option, the same fact). "
    "Do the two answers agree? Reply with one word: yes or no."
)
PROMPT_FIELDS = ("question", "reference", "rollout", "answer", "answer_type", "choices")

# train.judge.*: every key a judge reads, with its default.
JUDGE_DEFAULTS: dict[str, Any] = {
    "kind": "rule",          # rule | gold | llm
    "prompt": DEFAULT_PROMPT,  # llm: str.format template over PROMPT_FIELDS
    "model_path": None,      # llm, local: staged transformers causal LM folder
    "batch_size": 8,         # llm, local: prompts per forward pass
    "device": "auto",        # llm, local: auto | cpu | cuda
    "dtype": "auto",         # llm, local: auto | float32 | bfloat16 | float16
    "base_url": None,        # llm, endpoint: e.g. http://127.0.0.1:8000/v1
    "model": None,           # llm, endpoint: the served model name
    "api_key_env": None,     # llm, endpoint: env var holding the API key (null: none)
    "timeout_s": 60.0,       # llm, endpoint: per request
    "retries": 3,            # llm, endpoint: extra tries on timeout / 429 / 5xx
    "backoff_s": 1.0,        # llm, endpoint: first wait between tries (doubles)
    "max_workers": 8,        # llm, endpoint: requests in flight
    "max_tokens": 16,        # llm, endpoint and vllm: reply length limit
    "engine": "transformers",  # llm, local: transformers (p(yes) vs p(no)) | vllm (served)
    "vllm": None,            # llm, local on vllm: the engine settings (schema $defs/vllm)
}



def chat_text(tokenizer, prompt: str) -> str:
    """The judge prompt as the judge model's chat turn (its template), or plain text."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    return prompt + "\nAnswer:"

class JudgeError(RuntimeError):
    """A judge that cannot work (bad config, unreachable server); names the fix."""


@dataclass(frozen=True)
class Verdict:
    reward: int  # 1: the rollout agrees, 0: it does not (or nothing could be read)
    reason: str  # what was extracted / replied, for the log


def _aligned(rollouts: Sequence[str], references: Sequence[str] | None,
             items: Sequence[Mapping]) -> None:
    n = len(rollouts)
    if len(items) != n or (references is not None and len(references) != n):
        raise ValueError(f"judge: {n} rollouts, {len(items)} items and "
                         f"{'no' if references is None else len(references)} references; "
                         "give one item (and reference) per rollout")


def _read(text: str | None, item: Mapping) -> str | None:
    choices = item.get("choices")
    choices = None if choices is None else [str(c) for c in choices]
    return extract(text, item["answer_type"], choices=choices)


# ----------------------------------------------------------------------------- rule, gold

class RuleJudge:
    """Agreement of the rollout's answer with the reference's, as :mod:`cordflow.scoring`
    reads them (the final number, the option letter, the normalised text)."""

    name = "rule"

    def __call__(self, rollouts: Sequence[str], references: Sequence[str],
                 items: Sequence[Mapping]) -> list[Verdict]:
        _aligned(rollouts, references, items)
        out = []
        for rollout, reference, item in zip(rollouts, references, items):
            got, want = _read(rollout, item), _read(reference, item)
            out.append(Verdict(int(got is not None and got == want),
                               f"rollout {got!r} reference {want!r}"))
        return out


class GoldJudge:
    """Whether the rollout gives the item's gold ``answer`` (references are ignored)."""

    name = "gold"

    def __call__(self, rollouts: Sequence[str], references: Sequence[str] | None,
                 items: Sequence[Mapping]) -> list[Verdict]:
        _aligned(rollouts, None, items)
        out = []
        for rollout, item in zip(rollouts, items):
            got, want = _read(rollout, item), _read(str(item["answer"]), item)
            out.append(Verdict(int(got is not None and got == want),
                               f"rollout {got!r} gold {want!r}"))
        return out


# ----------------------------------------------------------------------------- prompts

def check_prompt(template: str) -> str:
    """Fail fast on a template with unknown fields or without ``{rollout}``. Literal
    braces are written ``{{`` and ``}}``."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise JudgeError(f"train.judge.prompt is not a valid template ({e}); write "
                         "literal braces as {{ and }}") from None
    unknown = sorted(fields - set(PROMPT_FIELDS))
    if unknown:
        raise JudgeError(f"train.judge.prompt uses unknown field(s) {unknown}; the fields "
                         f"are {list(PROMPT_FIELDS)}")
    if "rollout" not in fields:
        raise JudgeError("train.judge.prompt must contain {rollout} (the answer judged)")
    return template


def render_prompt(template: str, rollout: str, reference: str | None, item: Mapping) -> str:
    """The judge prompt for one rollout (options as "A: ..., B: ...")."""
    choices = item.get("choices")
    options = "" if choices is None else ", ".join(
        f"{chr(65 + i)}: {c}" for i, c in enumerate(choices))
    return template.format(
        question=item.get("question", ""), reference=reference or "", rollout=rollout,
        answer=item.get("answer", ""), answer_type=item.get("answer_type", ""),
        choices=options,
    )


_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)


def render_prompts(template: str, rollouts: Sequence[str], references: Sequence[str] | None,
                   items: Sequence[Mapping]) -> list[str]:
    """One judge prompt per rollout (references may be None: the gold-only prompts)."""
    _aligned(rollouts, references, items)
    refs = references if references is not None else [None] * len(rollouts)
    return [render_prompt(template, r, ref, it) for r, ref, it in zip(rollouts, refs, items)]


def parse_yes_no(reply: str) -> int | None:
    """1 for yes, 0 for no, None if the reply says neither (or both). The first word
    decides ("Yes.", "**No**, they differ"); else a reply with only one of the two words
    anywhere ("They agree, so: yes"). A ``<think>...</think>`` block is skipped."""
    words = re.findall(r"[a-z]+", _THINK.sub(" ", reply).casefold())
    if not words:
        return None
    if words[0] in ("yes", "no"):
        return int(words[0] == "yes")
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes != has_no:
        return int(has_yes)
    return None


# ----------------------------------------------------------------------------- local LM

class LocalLMJudge:
    """A staged transformers causal LM (offline) asked whether the answers agree.

    The verdict is 1 when the model's next-token probability of "yes" (summed over the
    first tokens of "yes", "Yes", " yes", " Yes") beats that of "no": a deterministic
    score, no generation. With a chat template the prompt is a user turn and the
    assistant turn is opened; without one, "\\nAnswer:" is appended. Weights load with
    safetensors only.
    """

    name = "llm"
    YES = ("yes", "Yes", " yes", " Yes", "YES")
    NO = ("no", "No", " no", " No", "NO")

    def __init__(self, model_path: str | Path, prompt: str = DEFAULT_PROMPT,
                 batch_size: int = 8, device: str = "auto", dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.prompt = check_prompt(prompt)
        self.batch_size = int(batch_size)
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise JudgeError(f"train.judge.model_path: no transformers model at {path} "
                             "(config.json missing); stage the judge model there with "
                             "save_pretrained (nothing is downloaded)")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype=torch_dtype,
        ).to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise JudgeError(f"train.judge.model_path: the tokenizer at {path} has "
                                 "neither a pad nor an eos token; set pad_token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        yes, no = self._first_ids(self.YES), self._first_ids(self.NO)
        self.yes_ids, self.no_ids = sorted(yes - no), sorted(no - yes)  # shared: neither
        if not self.yes_ids or not self.no_ids:
            raise JudgeError(f"train.judge.model_path: the tokenizer at {path} does not "
                             "give distinct first tokens for 'yes' and 'no'")

    def _first_ids(self, words: Sequence[str]) -> set[int]:
        """The first token of each spelling (a spelling that starts with a token shared
        by the other word, such as a lone space, counts for neither)."""
        ids = set()
        unk = self.tokenizer.unk_token_id
        for w in words:
            enc = self.tokenizer.encode(w, add_special_tokens=False)
            if enc and enc[0] != unk:
                ids.add(enc[0])
        return ids

    def _text(self, prompt: str) -> str:
        return chat_text(self.tokenizer, prompt)

    def p_yes(self, prompts: Sequence[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) of the next token, per prompt."""
        import torch

        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [self._text(p) for p in prompts[start:start + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(input_ids=enc["input_ids"],
                                    attention_mask=enc["attention_mask"],
                                    position_ids=positions).logits[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            yes = torch.logsumexp(logp[:, self.yes_ids], dim=-1)
            no = torch.logsumexp(logp[:, self.no_ids], dim=-1)
            out.extend(torch.sigmoid(yes - no).tolist())
        return out

    def __call__(self, rollouts: Sequence[str], references: Sequence[str] | None,
                 items: Sequence[Mapping]) -> list[Verdict]:
        prompts = render_prompts(self.prompt, rollouts, references, items)
        return [Verdict(int(p > 0.5), f"p(yes) {p:.3f}") for p in self.p_yes(prompts)]


# ----------------------------------------------------------------------------- endpoint

class EndpointJudge:
    """An OpenAI-compatible chat-completions server (vLLM, ...) asked whether the answers
    agree, at temperature 0. Requests run ``max_workers`` at a time; a timeout, a 429 or
    a 5xx is retried ``retries`` times with doubling waits; other HTTP errors fail at once.
    The API key is read from the environment variable ``api_key_env`` (never logged)."""

    name = "llm"

    def __init__(self, base_url: str, model: str, prompt: str = DEFAULT_PROMPT,
                 api_key_env: str | None = None, timeout_s: float = 60.0, retries: int = 3,
                 backoff_s: float = 1.0, max_workers: int = 8, max_tokens: int = 16):
        if not base_url or not re.match(r"^https?://", base_url):
            raise JudgeError(f"train.judge.base_url '{base_url}' must be an http(s) URL "
                             "such as http://127.0.0.1:8000/v1")
        if not model:
            raise JudgeError("train.judge.model: name the served model (as the server "
                             "lists it under /v1/models)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.prompt = check_prompt(prompt)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_workers = max(1, int(max_workers))
        self.max_tokens = int(max_tokens)
        self._headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise JudgeError(f"train.judge.api_key_env: the environment variable "
                                 f"{api_key_env} is not set; export the API key there")
            self._headers["Authorization"] = f"Bearer {key}"

    def _post(self, prompt: str) -> bytes:
        body = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=self._headers,
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return response.read()
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    detail = e.read()[:200].decode("utf-8", "replace")
                    raise JudgeError(f"train.judge: {self.url} refused the request "
                                     f"(HTTP {e.code}: {detail}); check base_url, model "
                                     "and api_key_env") from None
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                last = str(getattr(e, "reason", e)) or type(e).__name__
            log.warning("judge request to %s failed (%s), try %d of %d", self.url, last,
                        attempt + 1, self.retries + 1)
        raise JudgeError(f"train.judge: {self.url} failed {self.retries + 1} times "
                         f"(last: {last}); is the server up? (timeout_s {self.timeout_s})")

    def _verdict(self, prompt: str) -> Verdict:
        raw = self._post(prompt)
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError(type(content).__name__)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return Verdict(0, f"unparseable reply ({type(e).__name__}): "
                              f"{raw[:60].decode('utf-8', 'replace')!r}")
        value = parse_yes_no(content)
        if value is None:
            return Verdict(0, f"unparseable reply: {content[:60]!r}")
        return Verdict(value, f"reply {content.strip()[:40]!r}")

    def __call__(self, rollouts: Sequence[str], references: Sequence[str] | None,
                 items: Sequence[Mapping]) -> list[Verdict]:
        prompts = render_prompts(self.prompt, rollouts, references, items)
        with ThreadPoolExecutor(self.max_workers) as pool:
            return list(pool.map(self._verdict, prompts))


# ----------------------------------------------------------------------------- vLLM

class VLLMJudge:
    """A local model folder (``model_path``) served by a vLLM engine process
    (:mod:`cordflow.vllm_engine`, started on first use, stopped by :meth:`close`), asked
    whether the answers agree: the chat prompt as token ids, a greedy reply of at most
    ``max_tokens`` tokens (seeded engine, every sampling setting explicit), read as yes/no
    as the endpoint judge reads a server's reply."""

    name = "llm"

    def __init__(self, model_path: str | Path, prompt: str = DEFAULT_PROMPT,
                 settings: Mapping | None = None, max_tokens: int = 16, seed: int = 0,
                 dtype: str = "auto"):
        from transformers import AutoTokenizer

        self.prompt = check_prompt(prompt)
        self.path = Path(model_path)
        if not (self.path / "config.json").is_file():
            raise JudgeError(f"train.judge.model_path: no model at {self.path} (config.json "
                             "missing); stage the judge model there (nothing is downloaded)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.settings = {**dict(settings or {}), **({"dtype": dtype} if dtype != "auto" else {})}
        self.max_tokens, self.seed = int(max_tokens), int(seed)
        self.proc = None

    def _text(self, prompt: str) -> str:
        return chat_text(self.tokenizer, prompt)

    def _start(self):
        from cordflow.vllm_engine.engine import launch

        if self.proc is None:
            tok = self.tokenizer
            stop = [i for i in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
                    if isinstance(i, int) and i != tok.unk_token_id]
            settings = {k: v for k, v in self.settings.items() if k != "dtype"}
            self.proc = launch(self.path, settings, self.seed,
                               self.settings.get("dtype", "auto"), on_cpu=not _cuda(),
                               stop_ids=stop, suppressed_ids=[])
        return self.proc

    def replies(self, prompts: Sequence[str]) -> list[str]:
        proc = self._start()
        reqs = [{"ids": self.tokenizer(self._text(p), add_special_tokens=False)["input_ids"]}
                for p in prompts]
        out = proc.request({"op": "generate", "prompts": reqs, "n": 1, "temperature": 0.0,
                            "max_new": self.max_tokens, "logprobs": False}, what="judge")
        return self.tokenizer.batch_decode(out["ids"], skip_special_tokens=True)

    def __call__(self, rollouts: Sequence[str], references: Sequence[str] | None,
                 items: Sequence[Mapping]) -> list[Verdict]:
        prompts = render_prompts(self.prompt, rollouts, references, items)
        verdicts = []
        for reply in self.replies(prompts):
            value = parse_yes_no(reply)
            verdicts.append(Verdict(0, f"unparseable reply: {reply[:60]!r}") if value is None
                            else Verdict(value, f"reply {reply.strip()[:40]!r}"))
        return verdicts

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()
            self.proc = None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------- factory

def make_judge(cfg: Mapping | None, seed: int = 0):
    """The judge of the ``train.judge`` section (keys and defaults: :data:`JUDGE_DEFAULTS`).

    ``kind: llm`` needs exactly one of ``model_path`` (a local model: scored by
    transformers, or served by vLLM with ``engine: vllm``, seeded with ``seed``) and
    ``base_url`` (a server, with ``model``).
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(JUDGE_DEFAULTS))
    if unknown:
        raise JudgeError(f"train.judge: unknown key(s) {unknown}; the keys are "
                         f"{sorted(JUDGE_DEFAULTS)}")
    c = {**JUDGE_DEFAULTS, **cfg}
    if c["prompt"] is None:  # the schema's default: the built-in prompt
        c["prompt"] = DEFAULT_PROMPT
    if c["kind"] == "rule":
        return RuleJudge()
    if c["kind"] == "gold":
        return GoldJudge()
    if c["kind"] != "llm":
        raise JudgeError(f"train.judge.kind '{c['kind']}' is not one of rule, gold, llm")
    if (c["model_path"] is None) == (c["base_url"] is None):
        raise JudgeError("train.judge: kind llm needs exactly one of model_path (a staged "
                         "local model) and base_url (an OpenAI-compatible server)")
    if c["model_path"] is not None and c["engine"] == "vllm":
        return VLLMJudge(c["model_path"], c["prompt"], c["vllm"], c["max_tokens"], seed,
                         c["dtype"])
    if c["model_path"] is not None:
        return LocalLMJudge(c["model_path"], c["prompt"], c["batch_size"], c["device"],
                            c["dtype"])
    return EndpointJudge(c["base_url"], c["model"], c["prompt"], c["api_key_env"],
                         c["timeout_s"], c["retries"], c["backoff_s"], c["max_workers"],
                         c["max_tokens"])
