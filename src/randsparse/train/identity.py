"""A run's identity: the id of the options that change its result, and the ids older releases gave it.

The id (`config_hash`) hashes a canonical form of the config that holds only what changes the
trained model: options left at their defaults are left out (so adding an option with a default
changes no id), and so are the execution-only options (`EXECUTION_ONLY`: where and how a run
computes, not what). The global batch, ``data.batch_size x world_size x optim.accumulate_steps``, stands for
`data.batch_size` (2 x 64, 1 x 128 and 1 x 64 accumulated twice are the same experiment), and a dense run carries no
sparsity section (it is the same run whatever rule it would have pruned with).

The canonical form is versioned (`IDENTITY_VERSION`, folded into the hash and saved in every
checkpoint). A release that changes it, or changes the default of an option in it, bumps the
version and keeps the previous algorithm here as a named function in `_HASHES`, so a run made
by an older release is still recognised (`run_ids`, `checkpoint_matches`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from pydantic import BaseModel

from randsparse import __version__
from randsparse.errors import FileFormatError
from randsparse.train.config import DataConfig, TrainConfig

IDENTITY_VERSION = 1
"""Version of the canonical form `config_hash` hashes (0: releases up to 0.1.0, before versions)."""

# Options that change how a run executes but not what it computes: never part of its identity.
# A new execution-only option (say, the engine that runs the steps) is declared here.
EXECUTION_ONLY: dict[str, Any] = {
    "device": True,
    "engine": True,  # sparse or masked dense kernels compute the same model (float32 rounding aside)
    "checkpoint_every_steps": True,
    "tensorboard": True,
    "logging": True,  # experiment tracking (MLflow): where a run reports, not what it computes
    "compile": True,  # torch.compile runs the same steps
    "eval": True,  # evaluation reads the trained model; it never changes it
    "data": {"root": True, "download": True, "workers": True, "eval_batch_size": True},
    # Micro-batches per optimizer step: the global batch they make up is hashed (as `data.batch_size`).
    "optim": {"accumulate_steps": True},
    # How many processes share the global batch is where a run computes, like `device`; the global
    # batch itself is hashed (as `data.batch_size`), so 2 x 64 and 1 x 128 are the same experiment.
    "distributed": True,
}


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _without(data: dict[str, Any], excluded: dict[str, Any]) -> dict[str, Any]:
    """`data` less the keys `excluded` marks True (nested sections by nested mappings)."""
    result = {}
    for key, value in data.items():
        rule = excluded.get(key)
        if rule is True:
            continue
        result[key] = _without(value, rule) if isinstance(rule, dict) and isinstance(value, dict) else value
    return result


@functools.cache
def _default(section: type[BaseModel], name: str) -> Any:
    """The default of option `name` of `section` (its factory called once; compared with, never handed out)."""
    return section.model_fields[name].get_default(call_default_factory=True)


def _non_default(section: BaseModel) -> dict[str, Any]:
    """The JSON form of the options of `section` that differ from their defaults (empty sections dropped)."""
    dumped = section.model_dump(mode="json")
    result: dict[str, Any] = {}
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            inner = _non_default(value)
            if inner:
                result[name] = inner
        elif field.is_required() or value != _default(type(section), name):
            result[name] = dumped[name]
    return result


def canonical_form(config: TrainConfig) -> dict[str, Any]:
    """The mapping `config_hash` hashes: non-default, result-changing options and the identity version."""
    data = _without(_non_default(config), EXECUTION_ONLY)
    data_section = data.setdefault("data", {})
    data_section.pop("batch_size", None)
    if config.global_batch_size != DataConfig.model_fields["batch_size"].default:
        data_section["batch_size"] = config.global_batch_size
    if config.is_dense:  # a dense run is the same run whatever rule it would have pruned with
        data.pop("sparsity", None)
    data["identity"] = IDENTITY_VERSION
    return data


def config_hash(config: TrainConfig) -> str:
    """Stable 16-hex-digit identity of the options that change a run's result (identity version 1).

    The same experiment gets the same id in every release that keeps `IDENTITY_VERSION`; see the
    module docstring for what is left out.
    """
    return _digest(canonical_form(config))


# --- identity version 0 (randsparse 0.1.0) -------------------------------------------------------
# 0.1.0 hashed every option but the execution-only ones, defaults included. These are the options
# it knew (besides the free-form `options` mappings); a config that sets any other option to a
# non-default value cannot have been made by it.
_V0_OPTIONS: dict[str, tuple[str, ...]] = {
    "": ("model", "data", "sparsity", "optim", "schedule", "epochs", "seed", "amp", "deterministic"),
    "model": ("name", "width", "depth", "options"),
    "data": ("name", "batch_size", "val_fraction", "split_seed", "augment", "subset", "options"),
    "sparsity": (
        "sparsity", "distribution", "options", "custom_file", "sampling", "seed", "include", "exclude", "prune",
        "score_options",
    ),
    "optim": (
        "name", "lr", "momentum", "nesterov", "weight_decay", "no_decay_norm_and_bias", "betas", "label_smoothing",
        "grad_clip",
    ),
    "schedule": ("name", "milestones", "gamma", "warmup_epochs", "min_lr", "pct_start"),
}  # fmt: skip


def legacy_hash_v0(config: TrainConfig) -> str | None:
    """The id randsparse 0.1.0 gave `config`; None when the config uses options 0.1.0 did not have."""
    full = _without(config.model_dump(mode="json"), EXECUTION_ONLY)
    changed = canonical_form(config)
    data: dict[str, Any] = {}
    for key, value in full.items():
        if key not in _V0_OPTIONS[""]:
            if key in changed:
                return None
            continue
        if key in _V0_OPTIONS:
            known = _V0_OPTIONS[key]
            if any(name not in known for name in changed.get(key, {})):
                return None
            value = {name: v for name, v in value.items() if name in known}
        data[key] = value
    data["data"]["batch_size"] = config.global_batch_size
    if config.is_dense:
        data["sparsity"] = {"sparsity": 0.0}
    return _digest(data)


_HASHES = {0: legacy_hash_v0, 1: config_hash}


def run_ids(config: TrainConfig) -> list[str]:
    """Every id `config`'s run may carry: this release's first, then those older releases gave it."""
    ids = [config_hash(config)]
    for version in sorted(_HASHES, reverse=True):
        legacy = _HASHES[version](config)
        if legacy is not None and legacy not in ids:
            ids.append(legacy)
    return ids


def checkpoint_identity_version(state: dict[str, Any], where: str) -> int:
    """The identity version a checkpoint's `config_hash` was computed with.

    Checkpoints of releases before identity versions (0.1.0) hold none: version 0. Raises
    `FileFormatError` for a version this release does not know (a checkpoint of a newer release).
    """
    version = state.get("identity_version", 0)
    made_by = state.get("randsparse_version", "an unknown release")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise FileFormatError(f"{where} holds a corrupt identity_version ({version!r})")
    if version not in _HASHES:
        raise FileFormatError(
            f"{where} was written by randsparse {made_by} with run identity version {version}, newer than this"
            f" release ({__version__}, identity version {IDENTITY_VERSION}) knows; upgrade randsparse to read it"
        )
    return version


def checkpoint_matches(state: dict[str, Any], config: TrainConfig, where: str) -> bool:
    """True when the checkpoint `state` (read from `where`) was written by a run of `config`.

    The checkpoint's id is compared with the id its own release would have given `config`.
    """
    version = checkpoint_identity_version(state, where)
    return state.get("config_hash") == _HASHES[version](config)
