"""Method specs: each method reads exactly the settings it uses (its job's params)."""

import pytest

from cordflow.config import load_config
from cordflow.train.methods import BASE_METHODS, method_params, resolve


@pytest.fixture(scope="module")
def config(repo):
    return load_config(repo / "config" / "config.yaml")


def spec(config, name, **train):
    cfg = load_config(config_path(), {"train": train}) if train else config
    return method_params(cfg, name)["method"]


def config_path():
    from cordflow.config import REPO_DIR

    return REPO_DIR / "config" / "config.yaml"


def test_terms_of_each_method(config):
    s = {name: spec(config, name) for name in BASE_METHODS}
    assert s["sft"]["offpolicy"]["loss"] == "nll" and "token" not in s["sft"]
    assert s["forward_kl"]["offpolicy"]["loss"] == "forward_kl"
    assert (s["opd"]["token"]["alpha"], s["opd"]["token"]["beta"]) == (1.0, 1.0)
    assert "sequence" not in s["opd"] and "token" not in s["grpo"]
    assert "sequence" in s["opd_grpo"] and s["opd_grpo"]["token"]["alpha"] == 1.0
    assert (s["cord"]["token"]["alpha"], s["cord"]["token"]["beta"]) == (2.0, 2.0)
    assert s["cord"]["token"]["k"] == 20 and s["cord"]["sequence"]["n"] == 4
    assert s["cord"]["sequence"]["temperature"] == 1.5
    assert s["cord"]["weights"] == {"token": 1.0, "sequence": 1.0}
    assert s["grpo"]["weights"] == {"token": 0.0, "sequence": 1.0}
    # every method: same start, data budget and trainable parts (a fair table)
    assert len({(x["init"], str(x["loop"]), str(x["trainable"])) for x in s.values()}) == 1


def test_sweep_names_set_alpha_and_beta(config):
    s = resolve("cord_a1.5_b2", config["train"])
    assert (s["token"]["alpha"], s["token"]["beta"]) == (1.5, 2.0)
    with pytest.raises(ValueError, match="unknown method 'cordx'"):
        resolve("cordx", config["train"])


@pytest.mark.parametrize("knob, changed, unchanged", [
    ({"sequence": {"temperature": 1.2}}, {"grpo", "opd_grpo", "cord"},
     {"sft", "forward_kl", "opd"}),
    ({"token": {"alpha": 2.5}}, {"cord"}, {"sft", "forward_kl", "opd", "grpo", "opd_grpo"}),
    ({"token": {"k": 5}}, {"opd", "opd_grpo", "cord"}, {"sft", "forward_kl", "grpo"}),
    ({"offpolicy": {"temperature": 0.5}}, {"sft", "forward_kl"}, {"opd", "grpo", "cord"}),
    ({"teacher": {"kind": "live"}}, {"forward_kl", "opd", "grpo", "cord"}, {"sft"}),
    ({"lr": 0.0003}, set(BASE_METHODS), set()),
    # knowledge distillation (train.kd): only the kd methods that use the knob
    ({"kd": {"lambda_text": 0.5}}, {"kd_source", "kd_source_layer"},
     {"sft", "forward_kl", "opd", "grpo", "cord", "kd_layer"}),
    ({"kd": {"distance": "mse"}}, {"kd_layer", "kd_source_layer"},
     {"sft", "forward_kl", "cord", "kd_source"}),
    ({"kd": {"acoustic_split": "dev"}}, {"kd_source", "kd_source_layer"},
     {"sft", "forward_kl", "cord", "kd_layer"}),
    ({"kd": {"acoustic_skills": True}}, {"kd_source", "kd_source_layer"},
     {"sft", "forward_kl", "cord", "kd_layer"}),
    ({"kd": {"text_teacher": "/models/text-lm"}}, {"kd_source", "kd_layer", "kd_source_layer"},
     {"sft", "forward_kl", "opd", "grpo", "cord"}),
    ({"offpolicy": {"temperature": 0.5}}, {"kd_source", "kd_layer", "kd_source_layer"},
     {"opd", "grpo", "cord"}),
])
def test_a_knob_changes_only_the_specs_that_read_it(config, knob, changed, unchanged):
    for name in changed:
        assert spec(config, name) != spec(config, name, **knob), name
    for name in unchanged:
        assert spec(config, name) == spec(config, name, **knob), name


def test_acoustic_skills_take_the_base_skills_list_and_count(config):
    """train.kd.acoustic_skills: the acoustic items are base.skills' items (its skills and
    count, the spec's only base keys), alone or beside an acoustic split."""
    scfg = config["base"]["skills"]
    skills = spec(config, "kd_source", kd={"acoustic_skills": True})["kd_acoustic"]
    assert skills == {"skills": list(scfg["skills"]), "items": scfg["items"],
                      "batch_size": config["train"]["batch_size"], "kl": "forward",
                      "temperature": 1.0}
    both = spec(config, "kd_source_layer", kd={"acoustic_skills": True,
                                                "acoustic_split": "dev"})["kd_acoustic"]
    assert (both["split"], both["skills"], both["items"]) == ("dev", scfg["skills"],
                                                             scfg["items"])
    split = spec(config, "kd_source", kd={"acoustic_split": "dev"})["kd_acoustic"]
    assert "skills" not in split and "items" not in split  # as before: a split alone
    no_ac = spec(config, "kd_source", kd={"acoustic_skills": True, "lambda_ac": 0.0})
    assert "kd_acoustic" not in no_ac and "kd_acoustic" not in no_ac["weights"]
    with pytest.raises(ValueError, match="acoustic_skills takes its items from base.skills"):
        resolve("kd_source", {**config["train"], "kd": {**config["train"]["kd"],
                                                         "acoustic_skills": True}})


@pytest.mark.parametrize("skills, changed", [
    ({"items": 7}, True), ({"skills": ["pitch", "rate"]}, True), ({"steps": 9}, False),
    ({"batch_size": 3}, False),
])
def test_base_skills_rerun_only_the_kd_methods_on_skill_items(skills, changed):
    """A base.skills knob changes the params of the kd methods whose acoustic items are the
    skill items when it is their list or count, and no other method's."""
    def specs(**base_skills):
        cfg = load_config(config_path(), {"train": {"kd": {"acoustic_skills": True}},
                                          "base": {"skills": base_skills}})
        return {name: method_params(cfg, name) for name in BASE_METHODS}

    before, after = specs(), specs(**skills)
    for name in BASE_METHODS:
        reads = name in ("kd_source", "kd_source_layer")
        assert (before[name] != after[name]) == (changed and reads), name
