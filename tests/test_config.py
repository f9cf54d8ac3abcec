"""Config validation: every refusal names the key; resolution merges defaults <- model <- variant."""
import copy
import subprocess
import sys

import pytest
import yaml

from kdsum.config import ConfigError, grid, load_config, resolve, validate_config


@pytest.fixture()
def cfg(repo_root):
    with open(repo_root / "config.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def refused(config) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(copy.deepcopy(config), source="my.yaml")
    return str(err.value)


def test_shipped_config_is_valid(repo_root):
    config = load_config(repo_root / "config.yaml")
    assert config["run"]["models"] == ["tiny-bart", "tiny-llama"]
    assert config["evaluation"]["aggregate"] == "mean"


def test_unknown_key_is_named(cfg):
    cfg["models"]["tiny-llama"]["train"]["learning_rat"] = 1e-4
    msg = refused(cfg)
    assert "my.yaml" in msg and "models.tiny-llama.train" in msg and "learning_rat" in msg


def test_unknown_top_level_key(cfg):
    cfg["trainer"] = {}
    assert "trainer" in refused(cfg)


def test_wrong_type_is_named(cfg):
    cfg["defaults"]["train"]["per_device_batch_size"] = "four"
    msg = refused(cfg)
    assert "defaults.train.per_device_batch_size" in msg and "'four'" in msg


def test_model_name_must_be_a_slug(cfg):
    cfg["models"]["Qwen2.5_7B"] = {"source": "Qwen/Qwen2.5-7B-Instruct", "family": "causal", "method": "qlora"}
    msg = refused(cfg)
    assert "Qwen2.5_7B" in msg and "slug" in msg


def test_unknown_model_in_run(cfg):
    cfg["run"]["models"] = ["tiny-llama", "gpt-9"]
    msg = refused(cfg)
    assert "run.models[1]" in msg and "gpt-9" in msg


def test_unknown_variant_and_prompt_format(cfg):
    cfg["run"]["variants"] = ["default", "nope"]
    assert "run.variants[1]" in refused(cfg)
    cfg["run"]["variants"] = ["default"]
    cfg["variants"]["brief-prompt"]["prompt_format"] = "fancy"
    assert "variants.brief-prompt.prompt_format" in refused(cfg)


def test_model_needs_source_or_build(cfg):
    del cfg["models"]["kobart-base"]["source"]
    assert "models.kobart-base" in refused(cfg)


def test_method_family_mismatch(cfg):
    cfg["models"]["kobart-base"]["method"] = "lora"
    assert "models.kobart-base.method" in refused(cfg)


def test_reserved_names(cfg):
    cfg["variants"]["zeroshot"] = {}
    assert "zeroshot" in refused(cfg)


def test_resolve_merges_defaults_model_and_variant(repo_root):
    config = load_config(repo_root / "config.yaml")
    spec = resolve(config, "tiny-llama", "lr-1e-4")
    assert spec["train"]["learning_rate"] == 1e-4            # variant wins
    assert spec["train"]["epochs"] == config["models"]["tiny-llama"]["train"]["epochs"]   # model over defaults
    assert spec["train"]["max_grad_norm"] == 1.0             # defaults fill the rest
    assert spec["lora"] == {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
    qwen = resolve(config, "qwen2-5-7b", "default")
    assert qwen["method"] == "qlora" and qwen["quantization"]["quant_type"] == "nf4"
    assert qwen["train"]["learning_rate"] == 2e-5 and qwen["train"]["lr_scheduler_type"] == "cosine"
    # hub chat models train on packed rows: 8 bins x accumulation 2 of 1,024 tokens (~64 dialogues) per step
    assert qwen["train"]["packing"] is True and qwen["train"]["attention"] == "auto"
    assert qwen["train"]["per_device_batch_size"] * qwen["train"]["gradient_accumulation_steps"] == 16
    llama = resolve(config, "llama-ko-3b", "default")
    llama["train"]["packing"] = False  # the YAML anchor shares one mapping: a resolved spec must be a copy
    assert resolve(config, "qwen2-5-7b", "default")["train"]["packing"] is True
    with pytest.raises(ConfigError, match="does not apply"):
        resolve(config, "tiny-bart", "packed")


def test_grid_expands_models_by_variants(repo_root):
    config = load_config(repo_root / "config.yaml")
    config["run"]["variants"] = ["default", "packed", "lr-1e-4"]
    assert grid(config) == [("tiny-bart", "default"), ("tiny-bart", "lr-1e-4"), ("tiny-llama", "default"),
                            ("tiny-llama", "packed"), ("tiny-llama", "lr-1e-4")]


def test_snakemake_refuses_bad_config(repo_root, tmp_path, cfg):
    cfg["models"]["tiny-llama"]["train"]["learning_rat"] = 1e-4
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad)],
                          cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "models.tiny-llama.train" in proc.stderr + proc.stdout and "learning_rat" in proc.stderr + proc.stdout
