"""Run configs: YAML + key=value overrides, validation errors that name the key, stable identity."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from randsparse.errors import ConfigError
from randsparse.train.config import (
    TrainConfig,
    apply_overrides,
    build_config,
    dump_config,
    load_config,
    parse_override,
)
from randsparse.train.identity import config_hash, legacy_hash_v0

ROOT = Path(__file__).resolve().parents[2]
BASE = {"model": {"name": "small_cnn"}, "data": {"name": "synthetic"}}


def test_minimal_config_gets_defaults() -> None:
    config = build_config(BASE)
    assert config.sparsity.sparsity == 0.0
    assert config.is_dense
    assert config.optim.name == "sgd"
    assert config.mask_seed == config.seed == 0


def test_sparsity_shorthand_is_the_sparsity_of_the_section() -> None:
    config = build_config({**BASE, "sparsity": 0.9})
    assert config.sparsity.sparsity == 0.9
    assert config.sparsity.distribution == "erk"
    assert not config.is_dense


def test_overrides_set_nested_keys_as_yaml_values() -> None:
    data = apply_overrides(
        BASE,
        [
            "optim.lr=0.05",
            "schedule.name=multistep",
            "schedule.milestones=[2, 4]",
            "optim.nesterov=true",
            "sparsity.distribution=er",
        ],
    )
    config = build_config(data)
    assert config.optim.lr == 0.05
    assert config.schedule.milestones == [2, 4]
    assert config.optim.nesterov is True
    assert config.sparsity.distribution == "er"


def test_top_level_sparsity_override_keeps_the_rest_of_the_section() -> None:
    data = apply_overrides({**BASE, "sparsity": {"sparsity": 0.5, "distribution": "uniform"}}, ["sparsity=0.8"])
    config = build_config(data)
    assert (config.sparsity.sparsity, config.sparsity.distribution) == (0.8, "uniform")
    shorthand_then_key = apply_overrides({**BASE, "sparsity": 0.5}, ["sparsity.distribution=er"])
    assert build_config(shorthand_then_key).sparsity.sparsity == 0.5


def test_overrides_do_not_change_the_input_mapping() -> None:
    original = {"model": {"name": "small_cnn"}, "data": {"name": "synthetic"}}
    apply_overrides(original, ["model.width=2"])
    assert original == {"model": {"name": "small_cnn"}, "data": {"name": "synthetic"}}


@pytest.mark.parametrize("text", ["lr", "=3", "optim..lr=1", "optim.=1"])
def test_malformed_override_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_override(text)


def test_override_into_a_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({**BASE, "epochs": 3}, ["epochs.x=1"])


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("optim.lrr=0.1", "optim.lrr: unknown key"),
        ("bogus=1", "bogus: unknown key"),
        ("sparsity=1.0", "sparsity.sparsity"),
        ("sparsity=-0.1", "sparsity.sparsity"),
        ("optim.name=rmsprop", "optim.name"),
        ("epochs=0", "epochs"),
        ("data.batch_size=abc", "data.batch_size"),
        ("schedule.milestones=[5, 3]", "schedule.milestones"),
        ("device=gpu7", "device"),
        ("optim.momentum=0", None),  # valid without nesterov
    ],
)
def test_invalid_values_are_named_in_one_config_error(override: str, named: str | None) -> None:
    data = apply_overrides(BASE, [override])
    if named is None:
        build_config(data)
        return
    with pytest.raises(ConfigError) as info:
        build_config(data, "x.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("invalid config x.yaml: ")
    assert named in message


def test_missing_sections_are_named() -> None:
    with pytest.raises(ConfigError, match=r"model: required key is missing.*data: required key is missing"):
        build_config({})


def test_nesterov_without_momentum_is_refused() -> None:
    with pytest.raises(ConfigError, match="nesterov needs momentum"):
        build_config(apply_overrides(BASE, ["optim.nesterov=true", "optim.momentum=0"]))


def test_config_hash_ignores_execution_only_options_but_not_the_experiment() -> None:
    config = build_config(BASE)
    same = build_config(apply_overrides(BASE, ["device=cpu", "data.workers=4", "data.root=/elsewhere"]))
    assert config_hash(config) == config_hash(same)
    for change in ["seed=1", "sparsity=0.5", "model.width=2", "optim.lr=0.3", "epochs=3", "data.subset=100"]:
        assert config_hash(build_config(apply_overrides(BASE, [change]))) != config_hash(config), change


def test_dumped_config_reloads_to_the_same_config(tmp_path) -> None:
    overrides = ["sparsity=0.9", "schedule.name=multistep", "schedule.milestones=[1.5, 3]"]
    config = build_config(apply_overrides(BASE, overrides))
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    again = load_config(path)
    assert again == config
    assert config_hash(again) == config_hash(config)


def test_load_config_errors_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(scalar)


RUN_PRESETS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "studies" not in p.parts)


def test_the_run_presets_are_found() -> None:
    assert {p.name for p in RUN_PRESETS} >= {"fmnist-quick.yaml", "cifar10-resnet.yaml", "imagenet-wrn50.yaml"}


@pytest.mark.parametrize("preset", RUN_PRESETS, ids=lambda p: p.stem)
def test_every_run_preset_is_a_valid_config(preset: Path) -> None:
    config = load_config(preset)
    assert isinstance(config, TrainConfig)
    assert yaml.safe_load(dump_config(config))["model"]["name"] == config.model.name


def test_paper_cifar_preset_has_the_papers_recipe() -> None:
    config = load_config(ROOT / "configs/paper/cifar10-resnet.yaml")
    assert (config.epochs, config.data.batch_size, config.optim.lr) == (160, 128, 0.1)
    assert (config.optim.momentum, config.optim.nesterov, config.optim.weight_decay) == (0.9, True, 5e-4)
    assert (config.schedule.name, config.schedule.milestones, config.schedule.gamma) == ("multistep", [80, 120], 0.1)


def test_paper_imagenet_preset_has_the_papers_recipe() -> None:
    config = load_config(ROOT / "configs/paper/imagenet-wrn50.yaml")
    assert config.model.name == "wide_resnet50_2"
    assert config.sparsity.distribution == "erk_plus"
    assert config.sparsity.options == {"classifier_density": 1.0}
    assert (config.epochs, config.data.batch_size, config.optim.lr) == (100, 192, 0.4)
    assert (config.schedule.warmup_epochs, config.optim.label_smoothing, config.optim.weight_decay) == (5, 0.1, 1e-4)
    assert config.schedule.milestones == [30, 60, 90]
    # Table 1 is silent on these; the paper's ImageNet code sets them (and the preset's header says so)
    assert (config.optim.momentum, config.optim.nesterov, config.schedule.warmup_per) == (0.9, False, "epoch")
    assert (config.optim.no_decay_norm, config.optim.no_decay_norm_and_bias, config.amp) == (True, False, False)
    header = (ROOT / "configs/paper/imagenet-wrn50.yaml").read_text().split("\nmodel:")[0]
    for advice in ("schedule.milestones=[30,60,80]", "amp=true", "amp_dtype=fp16", "loss_scale=1"):
        assert advice in header
    code_run = load_config(
        ROOT / "configs/paper/imagenet-wrn50.yaml",
        ["schedule.milestones=[30,60,80]", "amp=true", "amp_dtype=fp16", "loss_scale=1"],
    )
    assert (code_run.amp_dtype, code_run.loss_scale, code_run.schedule.milestones) == ("fp16", 1.0, [30, 60, 80])
    assert config_hash(code_run) != config_hash(config)


def test_options_added_later_leave_identities_unchanged_at_their_default() -> None:
    """optim.no_decay_norm, schedule.warmup_per, amp_dtype and loss_scale came after runs were stored:
    at their defaults a config keeps the identity it had before them: its 0.1.0 id (hash computed
    then) is still recognised, and the current id is the one without them."""
    base = build_config(BASE)
    assert legacy_hash_v0(base) == "0211678173b0721f"
    assert legacy_hash_v0(load_config(ROOT / "configs/paper/cifar10-resnet.yaml")) == "ede4d50506583d6f"
    for changed in ("optim.no_decay_norm=true", "schedule.warmup_per=epoch"):
        other = build_config(apply_overrides(BASE, [changed]))
        assert config_hash(other) != config_hash(base), changed
        assert legacy_hash_v0(other) is None, changed  # 0.1.0 could not have made this run


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["amp_dtype=fp16"], "amp_dtype=fp16 needs amp=true"),
        (["amp=true", "loss_scale=128"], "a static loss_scale needs amp=true amp_dtype=fp16"),
        (["amp=true", "amp_dtype=bf16", "loss_scale=128"], "a static loss_scale needs"),
        (["amp=true", "amp_dtype=fp16", "loss_scale=0"], "loss_scale"),
        (["amp=true", "amp_dtype=fp8"], "amp_dtype"),
        (["schedule.warmup_per=epoch", "schedule.warmup_epochs=1.5"], "warmup_per=epoch needs whole warmup_epochs"),
        (["schedule.warmup_per=batch"], "warmup_per"),
    ],
)
def test_precision_and_warmup_options_are_validated(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(apply_overrides(BASE, overrides))


def test_dense_runs_share_one_identity_whatever_their_rule() -> None:
    dense = build_config(apply_overrides(BASE, ["sparsity=0", "sparsity.distribution=uniform"]))
    assert config_hash(dense) == config_hash(build_config(apply_overrides(BASE, ["sparsity.distribution=er"])))
    sparse = [
        build_config(apply_overrides(BASE, ["sparsity=0.5", f"sparsity.distribution={d}"])) for d in ("er", "erk")
    ]
    assert config_hash(sparse[0]) != config_hash(sparse[1])


def test_prune_is_the_ratio_rule_in_mask_mode() -> None:
    config = build_config(apply_overrides(BASE, ["sparsity=0.9", "sparsity.prune=snip"]))
    assert config.sparsity.distribution == "snip_ratio"
    with pytest.raises(ConfigError, match="drop distribution=er"):
        build_config(apply_overrides(BASE, ["sparsity=0.9", "sparsity.prune=snip", "sparsity.distribution=er"]))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("optim.betas=[2, 0.9]", "optim.betas"),
        ("schedule.milestones=[.nan]", "milestones"),
        ("schedule.warmup_epochs=20", "warmup_epochs"),
        ("schedule.min_lr=1.0", "min_lr"),
    ],
)
def test_inconsistent_optimizer_and_schedule_values_are_refused(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        build_config(apply_overrides(BASE, [override]))
