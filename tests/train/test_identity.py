"""Run identity: pinned ids, defaults and execution-only options left out, ids of older releases kept."""

from __future__ import annotations

import pytest

from randsparse.errors import FileFormatError
from randsparse.train import RunDir, apply_overrides, build_config, identity
from randsparse.train.config import TrainConfig
from randsparse.train.identity import (
    IDENTITY_VERSION,
    canonical_form,
    checkpoint_identity_version,
    checkpoint_matches,
    config_hash,
    legacy_hash_v0,
    run_ids,
)
from tests.train._fixtures import FIXTURES, V0_DENSE_ID, V0_RUN_ID

BASE = {"model": {"name": "small_cnn"}, "data": {"name": "synthetic"}}
STUDY_LIKE = [
    "model.name=resnet20",
    "data.name=cifar10",
    "sparsity=0.95",
    "sparsity.distribution=er",
    "optim.lr=0.1",
    "schedule.name=multistep",
    "schedule.milestones=[80, 120]",
    "epochs=160",
    "seed=2",
]


def _config(*overrides: str) -> TrainConfig:
    return build_config(apply_overrides(BASE, list(overrides)))


# Changing any of these ids breaks every existing run, study and default run directory: bump
# IDENTITY_VERSION instead, and keep the previous algorithm in identity._HASHES.
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), "02a6daeff324f83f"),
        (("sparsity=0.9", "sparsity.distribution=erk"), "35e5779ca8673b6f"),
        (tuple(STUDY_LIKE), "df0c19261252d737"),
    ],
)
def test_ids_of_fixed_configs_are_pinned(overrides, expected) -> None:
    assert config_hash(_config(*overrides)) == expected


# The defaults of the identity options as of identity version 1. Options at their defaults are
# left out of the id, so changing one of these changes what an id means: bump IDENTITY_VERSION.
PINNED_DEFAULTS = {
    "model": {"width": None, "depth": None, "options": {}},
    "data": {"batch_size": 128, "val_fraction": 0.1, "split_seed": 0, "augment": True, "subset": None, "options": {}},
    "sparsity": {
        "sparsity": 0.0, "distribution": "erk", "options": {}, "custom_file": None, "sampling": "exact", "seed": None,
        "include": None, "exclude": None, "prune": None, "score_options": {},
    },
    "optim": {
        "name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0005,
        "no_decay_norm_and_bias": False, "betas": (0.9, 0.999), "label_smoothing": 0.0, "grad_clip": None,
    },
    "schedule": {
        "name": "cosine", "milestones": [], "gamma": 0.1, "warmup_epochs": 0.0, "min_lr": 0.0, "pct_start": 0.3,
    },
    "epochs": 10,
    "seed": 0,
    "amp": False,
    "deterministic": False,
}  # fmt: skip


def test_the_defaults_of_identity_options_are_pinned() -> None:
    for key, expected in PINNED_DEFAULTS.items():
        field = TrainConfig.model_fields[key]
        if isinstance(expected, dict):
            section = field.annotation
            for name, value in expected.items():
                default = section.model_fields[name].get_default(call_default_factory=True)
                assert default == value, f"the default of {key}.{name} changed: bump IDENTITY_VERSION"
        else:
            assert field.get_default() == expected, f"the default of {key} changed: bump IDENTITY_VERSION"


def test_the_canonical_form_holds_only_what_is_not_default() -> None:
    assert canonical_form(_config()) == {"model": {"name": "small_cnn"}, "data": {"name": "synthetic"}, "identity": 1}
    assert canonical_form(_config("optim.lr=0.1", "epochs=10", "data.batch_size=128")) == canonical_form(_config())
    assert canonical_form(_config("sparsity=0.9"))["sparsity"] == {"sparsity": 0.9}


def test_execution_only_options_are_not_identity() -> None:
    execution = [
        "device=cpu",
        "engine=sparse",
        "checkpoint_every_steps=5",
        "tensorboard=true",
        "eval=false",
        "data.workers=2",
    ]
    execution += ["data.root=/x", "data.download=true", "data.eval_batch_size=64", "distributed.timeout_s=5"]
    assert config_hash(_config(*execution)) == config_hash(_config())


def test_the_global_batch_is_the_experiment() -> None:
    assert config_hash(_config("data.batch_size=64", "distributed.world_size=2")) == config_hash(_config())
    assert config_hash(_config("data.batch_size=64")) != config_hash(_config())


def test_ids_of_release_0_1_0_are_reproduced() -> None:
    config = RunDir(FIXTURES / "run_v0_1_0").read_config()
    assert legacy_hash_v0(config) == V0_RUN_ID
    assert run_ids(config) == [config_hash(config), V0_RUN_ID]
    dense = build_config(apply_overrides(config.model_dump(mode="json"), ["sparsity=0"]))
    assert legacy_hash_v0(dense) == V0_DENSE_ID


def test_a_config_using_an_option_0_1_0_did_not_have_has_no_legacy_id(monkeypatch) -> None:
    known = tuple(o for o in identity._V0_OPTIONS["optim"] if o != "grad_clip")
    monkeypatch.setitem(identity._V0_OPTIONS, "optim", known)  # as if grad_clip were new
    assert legacy_hash_v0(_config("optim.grad_clip=1.0")) is None
    assert legacy_hash_v0(_config()) is not None  # left at its default, it is no obstacle


def test_checkpoints_of_either_identity_version_match_their_config() -> None:
    config = _config("sparsity=0.5")
    current = {"config_hash": config_hash(config), "identity_version": IDENTITY_VERSION}
    old = {"config_hash": legacy_hash_v0(config), "randsparse_version": "0.1.0"}
    assert checkpoint_matches(current, config, "x.pt")
    assert checkpoint_matches(old, config, "x.pt")
    assert not checkpoint_matches({**old, "identity_version": IDENTITY_VERSION}, config, "x.pt")
    assert not checkpoint_matches(current, _config("sparsity=0.6"), "x.pt")


def test_a_checkpoint_of_a_newer_identity_version_is_refused_with_what_to_do() -> None:
    state = {"config_hash": "0" * 16, "identity_version": IDENTITY_VERSION + 1, "randsparse_version": "9.0.0"}
    with pytest.raises(FileFormatError, match=r"randsparse 9\.0\.0 .* upgrade randsparse") as info:
        checkpoint_identity_version(state, "'x.pt'")
    assert "\n" not in str(info.value)
    for corrupt in (True, -1, "1"):
        with pytest.raises(FileFormatError, match="corrupt identity_version"):
            checkpoint_identity_version({"identity_version": corrupt}, "'x.pt'")
