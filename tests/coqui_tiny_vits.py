"""A tiny multi-speaker VITS with random weights, built from Coqui's own config classes and
saved the way Coqui saves a trained model (``model.pth`` = ``{"model": state_dict}``,
``config.json``, ``speaker_ids.json``), so tests load it through Coqui's public local-path
API exactly like a real staged model. ~0.35 M parameters, 1.4 MB, built in about a second.

Runs only where coqui-tts is installed (``.venv-coqui``). Like a model trained elsewhere,
``config.json`` names the speakers file by a path that does not exist on this machine.

    python tests/coqui_tiny_vits.py OUT_DIR [--seed N] [--speakers a b c]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STALE = "/trained/elsewhere/speaker_ids.json"


def build(out_dir: str | Path, speakers: list[str], seed: int = 0) -> Path:
    """Write the model into ``out_dir``; returns it. Same seed and speakers, same weights."""
    import torch
    from TTS.tts.configs.shared_configs import CharactersConfig
    from TTS.tts.configs.vits_config import VitsArgs, VitsConfig
    from TTS.tts.models import setup_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = out / "speaker_ids.json"
    ids.write_text(json.dumps({name: i for i, name in enumerate(speakers)}))
    args = VitsArgs(
        hidden_channels=32, hidden_channels_ffn_text_encoder=64, num_heads_text_encoder=2,
        num_layers_text_encoder=1, num_layers_posterior_encoder=1, num_layers_flow=1,
        upsample_initial_channel_decoder=32, upsample_rates_decoder=[8, 8, 2],
        upsample_kernel_sizes_decoder=[16, 16, 4], resblock_kernel_sizes_decoder=[3],
        resblock_dilation_sizes_decoder=[[1, 3, 5]], out_channels=257, use_sdp=False,
        init_discriminator=False, use_speaker_embedding=True, speaker_embedding_channels=16,
        speakers_file=str(ids),
    )
    config = VitsConfig(
        model_args=args, use_phonemes=False, text_cleaner="basic_cleaners",
        use_speaker_embedding=True, speakers_file=str(ids),
        characters=CharactersConfig(
            characters_class="TTS.tts.models.vits.VitsCharacters", pad="<PAD>", eos="<EOS>",
            bos="<BOS>", blank="<BLNK>", characters="abcdefghijklmnopqrstuvwxyz",
            punctuations=" !',.?-", phonemes=None),
    )
    # 16 kHz; hop 128 = the decoder's upsampling 8 * 8 * 2
    config.audio.sample_rate, config.audio.num_mels = 16000, 40
    config.audio.fft_size, config.audio.win_length, config.audio.hop_length = 512, 512, 128
    torch.manual_seed(seed)
    model = setup_model(config)
    torch.save({"model": model.state_dict()}, out / "model.pth")
    config.speakers_file = config.model_args.speakers_file = STALE
    config.save_json(str(out / "config.json"))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speakers", nargs="+", default=["alice", "bob", "carol", "dave"])
    a = ap.parse_args()
    print(build(a.out_dir, a.speakers, a.seed))
