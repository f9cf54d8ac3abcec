"""Config: every refusal names the key; overlays and overrides merge as Snakemake's do; resolution gives typed,
frozen job specs whose field names are the libraries' own."""

import copy
import dataclasses
import json
import re
import subprocess
import sys

import pytest
import yaml

from kdsum.config.catalog import spec_for, spec_names
from kdsum.config.files import ConfigError, merged_config
from kdsum.config.resolve import grid, load_config, load_schema, resolve, rule_resources, validate_config
from kdsum.config.spec import (
    GenerationArgs,
    Job,
    LoraArgs,
    QuantizationArgs,
    TrainArgs,
    from_dict,
    read_spec,
    to_json,
)
from kdsum.workflow.specs import PREVIEW_DIR, SPEC_DIR


@pytest.fixture()
def cfg(repo_root):
    with open(repo_root / "config.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def refused(config) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(copy.deepcopy(config), source="my.yaml")
    return str(err.value)


def write(tmp_path, name, text) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_shipped_config_is_valid(repo_root):
    config = load_config(repo_root / "config.yaml")
    assert config["run"]["models"] == ["tiny-bart", "tiny-llama"]
    assert config["evaluation"]["aggregate"] == "mean"


def test_a_validated_config_is_cached_and_any_change_is_checked_again(cfg, tmp_path):
    cache = tmp_path / "accepted.json"
    first = validate_config(copy.deepcopy(cfg), cache=cache)
    assert first == validate_config(copy.deepcopy(cfg))  # the same defaults as without a cache
    entry = json.loads(cache.read_text(encoding="utf-8"))
    entry["config"]["evaluation"]["aggregate"] = "from-the-cache"  # marks what a hit returns
    cache.write_text(json.dumps(entry), encoding="utf-8")
    assert validate_config(copy.deepcopy(cfg), cache=cache)["evaluation"]["aggregate"] == "from-the-cache"
    changed = copy.deepcopy(cfg)
    changed["models"]["tiny-llama"]["train"]["epochs"] = 3
    with pytest.raises(ConfigError, match="'epochs'"):
        validate_config(changed, cache=cache)
    cache.write_text("{not json", encoding="utf-8")
    assert validate_config(copy.deepcopy(cfg), cache=cache) == first


def test_a_cached_config_still_has_its_local_paths_checked(cfg, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    cfg["models"]["kobart-base"]["source"] = str(model)
    validate_config(copy.deepcopy(cfg), cache=tmp_path / "accepted.json")
    (model / "config.json").unlink()
    with pytest.raises(ConfigError, match="without config.json"):
        validate_config(copy.deepcopy(cfg), cache=tmp_path / "accepted.json")


def test_unknown_key_is_named_with_a_suggestion(cfg):
    cfg["models"]["tiny-llama"]["train"]["epochs"] = 3
    msg = refused(cfg)
    assert "my.yaml" in msg and "models.tiny-llama.train" in msg and "'epochs'" in msg
    assert "did you mean 'num_train_epochs'" in msg


def test_unknown_top_level_key(cfg):
    cfg["trainer"] = {}
    assert "trainer" in refused(cfg)


def test_wrong_type_is_named(cfg):
    cfg["defaults"]["train"]["per_device_train_batch_size"] = "four"
    msg = refused(cfg)
    assert "defaults.train.per_device_train_batch_size" in msg and "'four'" in msg


@pytest.mark.parametrize(
    "section,key",
    [
        ("train", "learning_rate"),
        ("lora", "lora_alpha"),
        ("generation", "max_new_tokens"),
        ("quantization", "bnb_4bit_quant_type"),
    ],
)
def test_every_default_leaf_is_required(cfg, section, key):
    """A setting deleted from `defaults` is refused at load, naming it; never a KeyError after training."""
    del cfg["defaults"][section][key]
    assert f"key 'defaults.{section}.{key}'" in refused(cfg) and "is required" in refused(cfg)


def test_schema_and_spec_types_name_the_same_settings():
    """One definition of each setting: the schema's properties are the typed spec's fields."""
    schema = load_schema()["$defs"]
    for section, cls in (
        ("train", TrainArgs),
        ("lora", LoraArgs),
        ("quantization", QuantizationArgs),
        ("generation", GenerationArgs),
    ):
        assert set(schema[section]["properties"]) == {f.name for f in dataclasses.fields(cls)}, section


def _passed_as_is(cls, to) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata["to"] == to}


def test_training_keys_are_the_library_fields():
    """A field marked as a library's own is that library config's field of the same name."""
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, GenerationConfig, Seq2SeqTrainingArguments, TrainingArguments
    from trl import SFTConfig

    ta, sft = {f.name for f in dataclasses.fields(TrainingArguments)}, {f.name for f in dataclasses.fields(SFTConfig)}
    trainer, sft_only = _passed_as_is(TrainArgs, "trainer"), _passed_as_is(TrainArgs, "sft")
    assert "learning_rate" in trainer and trainer <= ta and sft_only == {"max_length", "packing"} <= sft - ta
    assert not sft_only & {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}
    assert "gradient_checkpointing" in ta and "bf16" in ta  # own only because the stage maps them
    assert _passed_as_is(LoraArgs, "peft") == {f.name for f in dataclasses.fields(LoraArgs)}
    assert _passed_as_is(LoraArgs, "peft") <= {f.name for f in dataclasses.fields(LoraConfig)}
    bnb = BitsAndBytesConfig()
    assert (
        all(hasattr(bnb, k) for k in _passed_as_is(QuantizationArgs, "bnb"))
        and len(dataclasses.fields(QuantizationArgs)) == 3
    )
    gen = GenerationConfig()
    assert len(_passed_as_is(GenerationArgs, "generation")) == 8
    assert all(hasattr(gen, k) for k in _passed_as_is(GenerationArgs, "generation"))
    assert not any(hasattr(gen, k) for k in ("batch_size", "block_foreign_scripts", "engine"))


def test_trainer_kwargs_are_the_fields_marked_for_the_library(repo_root):
    job = resolve(load_config(repo_root / "config.yaml"), "tiny-llama")
    kwargs, sft = job.train.trainer_kwargs(), job.train.trainer_kwargs(sft=True)
    assert (
        kwargs["learning_rate"] == job.train.learning_rate and "max_length" not in kwargs and "attention" not in kwargs
    )
    assert sft == {**kwargs, "max_length": job.train.max_length, "packing": job.train.packing}


def test_learning_rate_reaches_the_trainer_arguments_through_the_spec_file(repo_root, tmp_path):
    """The short path: config (+ override) -> spec file -> the job the stage reads -> SFTConfig, field for field."""
    from kdsum.training.trainer import arguments_class, trainer_arguments

    config = load_config(repo_root / "config.yaml", {"models__tiny-llama__train__learning_rate": 0.0123})
    path = tmp_path / "default.json"
    path.write_text(to_json(spec_for(config, "model/tiny-llama/default")), encoding="utf-8")
    job = read_spec(path, Job)
    args = arguments_class(job.family)(**trainer_arguments(job, None, str(tmp_path)))
    assert type(args).__name__ == "SFTConfig" and args.learning_rate == 0.0123
    t = job.train
    assert (args.max_length, args.packing, args.warmup_steps) == (t.max_length, t.packing, t.warmup_steps)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (
        t.per_device_train_batch_size,
        t.gradient_accumulation_steps,
    )
    bart = resolve(config, "tiny-bart")
    s2s = arguments_class(bart.family)(**trainer_arguments(bart, None, str(tmp_path)))
    assert type(s2s).__name__ == "Seq2SeqTrainingArguments" and s2s.learning_rate == bart.train.learning_rate != 0.0123


def test_committed_schema_is_written_from_the_spec_fields(monkeypatch, tmp_path):
    """The settings sections of the schema file are generated (kdsum.config.schema); a stale file fails the check."""
    from kdsum.config import schema

    text = schema.SCHEMA_PATH.read_text(encoding="utf-8")
    assert schema.render(text) == text, "run `python3 -m kdsum.config.schema`"
    done = subprocess.run([sys.executable, "-m", "kdsum.config.schema", "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lr = load_schema()["$defs"]["train"]["properties"]["learning_rate"]
    assert lr == {"type": "number", "exclusiveMinimum": 0, "description": "the peak learning rate (AdamW)"}
    stale = tmp_path / "config.schema.yaml"
    stale.write_text(text.replace("description: the peak learning rate (AdamW)", "description: old"), encoding="utf-8")
    monkeypatch.setattr(schema, "SCHEMA_PATH", stale)
    with pytest.raises(SystemExit, match="stale"):
        schema.main(["--check"])
    schema.main([])  # rewrites the block, and only the block
    assert stale.read_text(encoding="utf-8") == text


def test_every_setting_has_a_description_and_its_bounds(cfg):
    """The schema entries carry each field's bounds: one past a bound is refused, naming the key."""
    for cls in (TrainArgs, LoraArgs, QuantizationArgs, GenerationArgs):
        for f in dataclasses.fields(cls):
            assert "\n" not in f.metadata["description"] and len(f.metadata["description"]) > 8, f.name
    cfg["defaults"]["train"]["learning_rate"] = 0
    assert "defaults.train.learning_rate" in refused(cfg) and "less than or equal to the minimum of 0" in refused(cfg)
    cfg["defaults"]["train"]["learning_rate"] = 1e-4
    cfg["defaults"]["lora"]["lora_dropout"] = 1.5
    assert "defaults.lora.lora_dropout" in refused(cfg)


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


def test_a_real_tokenizer_replaces_the_vocab_size_of_a_causal_build_only(cfg):
    build = cfg["models"]["tiny-llama"]["build"]
    del build["vocab_size"]
    assert "models.tiny-llama.build.vocab_size" in refused(cfg)
    build["tokenizer"] = "../shared/tokenizers/llama3"
    validate_config(copy.deepcopy(cfg), source="my.yaml")
    cfg["models"]["tiny-bart"]["build"]["tokenizer"] = "../shared/tokenizers/llama3"
    assert "models.tiny-bart.build.tokenizer" in refused(cfg)


def test_reserved_names(cfg):
    cfg["variants"]["zeroshot"] = {}
    assert "zeroshot" in refused(cfg)


def test_inconsistent_values_are_refused_at_load(cfg):
    cfg["models"]["tiny-llama"]["generation"]["max_new_tokens"] = 900  # above its train.max_length (768)
    msg = refused(cfg)
    assert "max_length" in msg and "max_new_tokens" in msg and "tiny-llama" in msg
    cfg["models"]["tiny-llama"]["generation"]["max_new_tokens"] = 64
    cfg["defaults"]["train"]["warmup_steps"] = 1.5  # a share must be below 1; whole steps are integers
    assert "defaults.train.warmup_steps" in refused(cfg)


def test_duplicate_yaml_keys_are_refused(tmp_path, repo_root):
    text = (repo_root / "config.yaml").read_text(encoding="utf-8")
    dup = write(
        tmp_path,
        "dup.yaml",
        text.replace("  train: data/sample/train.csv\n", "  train: data/sample/train.csv\n  train: other.csv\n", 1),
    )
    with pytest.raises(ConfigError, match=r"dup.yaml: not valid YAML: duplicate key 'train'.*line"):
        load_config(dup)


def test_overlay_files_and_dotted_overrides_merge_in_order(tmp_path, repo_root):
    overlay = write(tmp_path, "overlay.yaml", "models:\n  tiny-llama:\n    train: {learning_rate: 0.05}\n")
    config = load_config(
        [repo_root / "config.yaml", overlay], {"run.models": ["tiny-llama"], "models__tiny-llama__lora__r": 4}
    )
    assert config["run"]["models"] == ["tiny-llama"] and config["run"]["variants"] == ["default"]
    job = resolve(config, "tiny-llama", "default")
    assert job.train.learning_rate == 0.05 and job.lora.r == 4
    assert job.train.num_train_epochs == 5 and job.lora.lora_alpha == 32  # the rest from config.yaml
    with pytest.raises(ConfigError, match="run.models"):
        load_config(repo_root / "config.yaml", {"run": {"models": ["nope"]}})
    assert merged_config([repo_root / "config.yaml"], {"evaluation": {"seed": 3}})["evaluation"]["seed"] == 3


def test_resolve_merges_defaults_model_and_variant(repo_root):
    config = load_config(repo_root / "config.yaml")
    job = resolve(config, "tiny-llama", "lr-1e-4")
    assert isinstance(job, Job) and job.name == "tiny-llama/lr-1e-4"
    assert job.train.learning_rate == 1e-4  # variant wins
    assert job.train.num_train_epochs == config["models"]["tiny-llama"]["train"]["num_train_epochs"]
    assert job.train.max_grad_norm == 1.0  # defaults fill the rest
    assert job.lora == LoraArgs(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    qwen = resolve(config, "qwen2-5-7b", "default")
    assert qwen.method == "qlora" and qwen.quantization.bnb_4bit_quant_type == "nf4"
    assert qwen.train.learning_rate == 2e-5 and qwen.train.lr_scheduler_type == "cosine"
    # hub chat models train on packed rows: 8 bins x accumulation 2 of 1,024 tokens (~64 dialogues) per step
    assert qwen.train.packing is True and qwen.train.attention == "auto"
    assert qwen.train.per_device_train_batch_size * qwen.train.gradient_accumulation_steps == 16
    with pytest.raises(dataclasses.FrozenInstanceError):  # the YAML anchor's shared mapping cannot leak
        qwen.train.packing = False
    assert resolve(config, "tiny-bart", "default").prompt is None and job.prompt_set == "chat-plain"
    with pytest.raises(ConfigError, match="does not apply"):
        resolve(config, "tiny-bart", "packed")


def test_grid_expands_models_by_variants(repo_root):
    config = load_config(repo_root / "config.yaml")
    config["run"]["variants"] = ["default", "packed", "lr-1e-4"]
    assert grid(config) == [
        ("tiny-bart", "default"),
        ("tiny-bart", "lr-1e-4"),
        ("tiny-llama", "default"),
        ("tiny-llama", "packed"),
        ("tiny-llama", "lr-1e-4"),
    ]


def test_every_spec_round_trips_through_its_file(repo_root, tmp_path):
    config = load_config(repo_root / "config.yaml")
    for name in spec_names(config):
        spec = spec_for(config, name)
        path = tmp_path / f"{name.replace('/', '_')}.json"
        path.write_text(to_json(spec), encoding="utf-8")
        assert read_spec(path, type(spec)) == spec, name
    assert from_dict(json.loads(to_json(resolve(config, "tiny-llama", "zeroshot")))).variant == "zeroshot"


def test_spec_stage_writes_the_same_file_under_both_engines(repo_root, tmp_path):
    """The spec files the Snakemake workflow writes when it loads (write_specs) and those of `kdsum spec`, DVC's
    command, are the same bytes, the spec resolved from the config."""
    from kdsum.workflow.specs import spec_path, write_specs

    config = load_config(repo_root / "config.yaml")
    written = write_specs(config, tmp_path)
    assert sorted(written) == sorted(spec_names(config))
    for name in ("model/tiny-llama/default", "data", "summary"):
        out = tmp_path / "one.json"
        proc = subprocess.run(
            [sys.executable, "-m", "kdsum", "spec", name, "--configfile", "config.yaml", "--out", str(out)],
            cwd=repo_root,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == (tmp_path / spec_path(name)).read_bytes() == to_json(spec_for(config, name)).encode()
    assert write_specs(config, tmp_path) == {}  # unchanged content: nothing rewritten


def test_snakemake_refuses_bad_config(repo_root, tmp_path, cfg):
    cfg["models"]["tiny-llama"]["train"]["learning_rat"] = 1e-4
    bad = write(tmp_path, "bad.yaml", yaml.safe_dump(cfg, allow_unicode=True))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", bad],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    out = proc.stderr + proc.stdout
    assert "models.tiny-llama.train" in out and "learning_rat" in out and "learning_rate" in out


def _dry_run(repo_root, *args) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "1", "results/summary.csv", *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_snakemake_config_override_narrows_the_run(repo_root):
    """`--config`: Snakemake users' first habit. Its keys cannot hold dots, so `__` separates nested keys; the
    nested YAML form works too, with its numbers kept numbers."""
    for override in ("run__models=[tiny-llama]", "run={models: [tiny-llama]}"):
        plan = _dry_run(repo_root, "--config", override)
        assert "tiny-llama" in plan and "tiny-bart" not in plan, override
    assert "tiny-bart" in _dry_run(repo_root)
    _dry_run(
        repo_root,
        "--config",
        "models={tiny-llama: {train: {learning_rate: 0.05}}}",
        "models__tiny-bart__lora__r=4",
    )
    # the spec the planned train job reads (a preview's own copy where results/specs holds another): a number
    spec = [repo_root / d / "model/tiny-llama/default.json" for d in (PREVIEW_DIR, SPEC_DIR)]
    newest = max((f for f in spec if f.is_file()), key=lambda f: f.stat().st_mtime_ns)
    assert json.loads(newest.read_text(encoding="utf-8"))["train"]["learning_rate"] == 0.05
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "1",
            "--config",
            "models__tiny-llama__train__learning_rate=fast",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "models.tiny-llama.train.learning_rate" in bad.stdout + bad.stderr


def test_rule_resources_come_from_config_and_change_no_spec(repo_root, tmp_path):
    """The heavy rules' scheduler resources (config `resources`, profiles/slurm): an overlay changes them, the
    rules hand them to Snakemake, and no spec moves (resources are no rerun trigger: a cluster change reruns
    nothing)."""
    overlay = write(tmp_path, "big.yaml", "resources:\n  train: {threads: 4, mem_mb: 64000}\n")
    base, big = load_config(repo_root / "config.yaml"), load_config([repo_root / "config.yaml", overlay])
    assert rule_resources(big, "train") == (4, {"mem_mb": 64000, "runtime": 720, "gpu": 1})
    assert rule_resources(big, "predict") == rule_resources(base, "predict")
    assert all(to_json(spec_for(base, n)) == to_json(spec_for(big, n)) for n in spec_names(base))
    with pytest.raises(ConfigError, match="resources.train"):
        rule_resources({"resources": {}}, "train")
    plan = _dry_run(repo_root, "--config", "resources__train__mem_mb=1234", "resources__predict__runtime=7")
    train_jobs = re.findall(r"^rule train:.*?^\s+resources: ([^\n]*)$", plan, re.M | re.S)
    assert train_jobs and all("mem_mb=1234" in r and "gpu=1" in r for r in train_jobs)
    assert re.search(r"^rule predict:.*?^\s+resources: .*runtime=7\b", plan, re.M | re.S)


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path, node


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return None


def test_dvc_params_of_each_spec_cover_every_key_it_reads(repo_root):
    """No drift between the engines: a config leaf outside a spec's DVC params (spec_keys) never changes that
    spec, so DVC, which reruns a spec stage only when its params change, can never keep a stale spec file."""
    from kdsum.config.catalog import spec_keys

    raw = yaml.safe_load((repo_root / "config.yaml").read_text(encoding="utf-8"))
    base = load_config(repo_root / "config.yaml")
    names = spec_names(base)
    before = {n: to_json(spec_for(base, n)) for n in names}
    keys = {n: spec_keys(base, n) for n in names}
    checked = 0
    for path, value in _leaves(raw):
        new = _changed(value)
        if new is None:
            continue
        edited = copy.deepcopy(raw)
        node = edited
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = new
        try:
            config = validate_config(edited)
        except ConfigError:
            continue  # a value the schema refuses changes no spec
        dotted = ".".join(map(str, path))
        for n in names:
            covered = any(dotted == k or dotted.startswith(k + ".") for k in keys[n])
            if not covered:
                assert to_json(spec_for(config, n)) == before[n], (n, dotted)
                checked += 1
    assert checked > 500
