import pytest

from cordflow.config import code_version, load_config, rule_params


def test_default_config_validates_and_fills_defaults(repo):
    config = load_config(repo / "config" / "config.yaml")
    assert config["tts"]["post"]["sample_rate"] == 16000
    assert config["source"]["max_chars"] == 1000


def test_invalid_value_names_the_key_path(repo):
    with pytest.raises(ValueError) as e:
        load_config(repo / "config" / "config.yaml", {"tts": {"n_shards": 0}})
    assert "tts/n_shards" in str(e.value)
    assert "minimum" in str(e.value) or "less than" in str(e.value)


def test_unknown_key_is_rejected(repo):
    with pytest.raises(ValueError, match="tts"):
        load_config(repo / "config" / "config.yaml", {"tts": {"nshards": 3}})


def test_rule_params_carry_only_their_slice(repo):
    config = load_config(repo / "config" / "config.yaml")
    plan = rule_params("tts_plan", config)
    assert plan == {"tts": {"n_shards": config["tts"]["n_shards"]}}
    shard = rule_params("tts_shard", config)
    assert "n_shards" not in shard["tts"] and "source" not in shard


def test_code_version_changes_with_the_stage_code(tmp_path, monkeypatch):
    from cordflow import config as cfg

    (tmp_path / "stage.py").write_text("x = 1\n")
    monkeypatch.setattr(cfg, "PKG_DIR", tmp_path)
    monkeypatch.setitem(cfg.RULE_CODE, "source", ["stage.py"])
    before = code_version("source")
    (tmp_path / "stage.py").write_text("x = 2\n")
    assert code_version("source") != before
