"""The model factory: the tiny preset is the real Qwen2-Audio class, saved and reloaded
offline; prompts, generation and the completion slice behave as the stages rely on."""

import json

import pytest
import tiny
import torch

from cordflow import models


@pytest.fixture(scope="module")
def loaded():
    return tiny.loaded()


def test_tiny_is_the_real_class_and_round_trips_offline(tmp_path, loaded):
    from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    assert type(loaded.model) is Qwen2AudioForConditionalGeneration
    models.save(loaded.model, loaded.processor, tmp_path / "m")
    assert list((tmp_path / "m").glob("*.safetensors"))
    assert not list((tmp_path / "m").glob("*.bin"))
    again = models.load(tmp_path / "m", tiny.model_cfg())
    assert isinstance(again.processor, Qwen2AudioProcessor)
    assert again.chunk_seconds == 2
    # max_source_positions follows the short audio window
    assert again.model.config.audio_config.max_source_positions == 2 * 50
    batch = models.encode_text(loaded, ["What is 1 plus 2?"])
    with torch.no_grad():
        a = loaded.model(**batch).logits
        b = again.model(**models.encode_text(again, ["What is 1 plus 2?"])).logits
    assert torch.equal(a, b)


def test_audio_prompt_expands_one_audio_token_per_encoder_frame(loaded):
    clips = [tiny.tone(0.5, 300), tiny.tone(1.5, 300)]
    batch = models.encode_audio(loaded, clips)
    audio_id = loaded.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    n_tokens = (batch["input_ids"] == audio_id).sum(-1).tolist()
    frames = batch["feature_attention_mask"].sum(-1)
    expected = (((frames - 1) // 2 + 1 - 2) // 2 + 1).tolist()
    assert n_tokens == expected and n_tokens[1] > n_tokens[0]
    # left padding: every prompt ends at the same index with the assistant turn
    assert (batch["attention_mask"][:, -1] == 1).all()
    with torch.no_grad():
        loaded.model(**batch)  # the audio forward accepts it


def test_audio_prompt_with_words_keeps_the_words(loaded):
    text = models.prompt_text(loaded, "Which sound is it?", audio=True)
    assert "<|audio_bos|><|AUDIO|><|audio_eos|>" in text and "Which sound is it?" in text
    assert "<|AUDIO|>" not in models.prompt_text(loaded, "What is 1 plus 2?")


def test_generation_never_samples_audio_or_control_tokens(loaded):
    torch.manual_seed(0)
    batch = models.encode_audio(loaded, [tiny.tone(1.0, 250)] * 4)
    # make the suppressed tokens the most likely ones: they must still never appear
    head = models.lm_head(loaded.model)
    banned = models.token_ids(loaded.tokenizer, models.SUPPRESSED_TOKENS)
    saved = head.weight.data.clone()
    try:
        head.weight.data[banned] *= 50.0
        comp = models.generate(loaded, batch, 6, temperature=1.5, num_return_sequences=3)
    finally:
        head.weight.data.copy_(saved)
    assert comp.ids.shape[0] == 12
    assert not torch.isin(comp.ids[comp.mask.bool()], torch.tensor(banned)).any()


def test_completion_mask_stops_after_the_first_stop_token():
    ids = torch.tensor([[5, 6, 9, 7, 9], [9, 5, 5, 5, 5], [5, 5, 5, 5, 5]])
    mask = models.completion_mask(ids, [9])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_completion_slice_matches_the_full_forward(loaded):
    """The training path (completion_hidden + lm_head through losses.completion_terms)
    gives the log-probs of the model's own full forward."""
    from cordflow.train.losses import completion_terms

    batch = models.repeat_batch(models.encode_audio(loaded, [tiny.tone(0.7, 330),
                                                            tiny.tone(1.2, 440)]), 2)
    comp = models.encode_targets(loaded, ["12", "3", "7", "10"])
    with torch.no_grad():
        hidden = models.completion_hidden(loaded.model, batch, comp)
        lp = completion_terms(hidden, models.lm_head(loaded.model), comp.ids, comp.mask,
                              kl=None)["logp"]
        full = loaded.model(
            input_ids=torch.cat([batch["input_ids"], comp.ids], 1),
            attention_mask=torch.cat([batch["attention_mask"], comp.mask], 1),
            input_features=batch["input_features"],
            feature_attention_mask=batch["feature_attention_mask"]).logits
    p = batch["input_ids"].shape[1]
    ref = torch.log_softmax(full[:, p - 1:p - 1 + comp.ids.shape[1]], -1)
    ref = ref.gather(-1, comp.ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(lp[comp.mask.bool()], ref[comp.mask.bool()], atol=1e-5)


def test_lora_targets_the_language_model_only():
    model, _ = tiny.build()
    peft_model = models.add_lora(model, tiny.model_cfg()["lora"])
    names = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert names and all("language_model" in n for n in names)
    assert not any("audio_tower" in n for n in names)
    params = models.set_trainable(peft_model, ["lora"])
    assert sum(p.numel() for p in params) == sum(
        p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert not models.lm_trainable(peft_model)
    models.set_trainable(peft_model, ["audio"])
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("audio_tower" in n or "multi_modal_projector" in n
                             for n in trainable)


def test_disabled_adapters_give_the_starting_model():
    model, processor = tiny.build()
    loaded = tiny.loaded()
    batch = models.encode_text(loaded, ["What is 2 plus 2?"])
    with torch.no_grad():
        before = model(**batch).logits.clone()
    peft_model = models.add_lora(model, tiny.model_cfg()["lora"])
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            p.data.normal_()  # adapters that change the output
    with torch.no_grad():
        changed = peft_model(**batch).logits
        with models.adapters_disabled(peft_model):
            off = peft_model(**batch).logits
    assert not torch.allclose(changed, before)
    assert torch.equal(off, before)


def test_real_preset_fails_fast_naming_what_to_stage(tmp_path):
    with pytest.raises(SystemExit, match="model.path is not set.*Qwen/Qwen2-Audio-7B-Instruct"):
        models.require_staged(None, "qwen2-audio-7b")
    with pytest.raises(SystemExit, match="no such folder"):
        models.require_staged(str(tmp_path / "nope"), "qwen2-audio-7b")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"lacks preprocessor_config.json.*\*.safetensors"):
        models.require_staged(str(tmp_path / "w"), "qwen2-audio-7b")


def test_a_base_pointer_resolves_to_the_staged_folder(tmp_path, loaded):
    staged = tmp_path / "staged"
    models.save(loaded.model, loaded.processor, staged)
    base = tmp_path / "base"
    base.mkdir()
    files = sorted(str(f.relative_to(staged)) for f in staged.rglob("*") if f.is_file())
    (base / models.POINTER).write_text(json.dumps({"path": str(staged),
                                                   "files": {f: "x" for f in files}}))
    assert models.resolve_folder(base) == staged
    assert type(models.load(base, tiny.model_cfg()).model) is type(loaded.model)
    (staged / "config.json").unlink()
    with pytest.raises(SystemExit, match="no longer holds.*config.json"):
        models.resolve_folder(base)


def test_a_clip_read_again_comes_from_memory_unchanged_and_the_memory_is_bounded(
        tmp_path, monkeypatch):
    """Training reads every clip once per epoch: the second read is the kept array (same
    samples as the file, read-only so no reader can change what the next one gets), and
    the clips kept never exceed CLIP_CACHE_BYTES (least recently read out first)."""
    import soundfile as sf

    from cordflow.audio import load_mono

    monkeypatch.setattr(models, "_clips", type(models._clips)())
    monkeypatch.setattr(models, "_clip_bytes", 0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.flac")
        sf.write(paths[-1], tiny.tone(0.5, 200 + 100 * i), 16000)
    first = models.read_audio(paths[0])
    assert models.read_audio(str(paths[0])) is first
    assert (first == load_mono(str(paths[0]))).all()
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 1.0
    monkeypatch.setattr(models, "CLIP_CACHE_BYTES", 2 * first.nbytes)  # room for two clips
    models.read_audio(paths[1])
    models.read_audio(paths[0])  # read again: now the most recent
    models.read_audio(paths[2])  # pushes out clip 1, the least recently read
    assert list(models._clips) == [str(paths[0]), str(paths[2])]
    assert models._clip_bytes == 2 * first.nbytes
    assert models.read_audio(paths[0]) is first
    assert (models.read_audio(paths[1]) == load_mono(str(paths[1]))).all()  # from the file
