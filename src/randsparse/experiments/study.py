"""Study configs and their expansion into run specs: a grid over run-config keys, plus dense baselines.

A study file names a base run config (inline under ``base:``, and/or a file under ``base_config:``
relative to the study file) and a ``grid`` of dotted run-config keys to lists of values. Expansion
takes the Cartesian product in the order the keys are written, and, with ``dense_baselines: true``
(the default), adds for every grid point its dense twin (the same point with sparsity 0). A spec's
id is the hash of its resolved config, so a point listed twice, or a dense point that is also a
baseline, is trained once.

A grid key that names no run-config section (e.g. ``method``) and whose values are all mappings is
a *linked axis*: each value is one point of the axis and sets several dotted keys together, e.g.
``{sparsity.method: rigl, sparsity.method_options: {update_every: 50}}`` beside
``{sparsity.method: static}``, so each method gets its own options instead of a product of every
method with every method's options. A grid point records the keys a linked value set, not the
axis name.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from randsparse.errors import ConfigError, validation_message
from randsparse.sparsity.distributions import load_custom_densities
from randsparse.sparsity.masks import load_masks
from randsparse.train.config import TrainConfig, apply_overrides, build_config, read_yaml
from randsparse.train.identity import run_ids

# Grid keys that change only what is pruned: dropped from a point to make its dense baseline.
_SPARSITY_KEY = "sparsity"
# Top-level keys of a run config: a grid key starting with none of them may be a linked axis.
_ROOT_KEYS = frozenset(TrainConfig.model_fields)


def is_linked_axis(key: str, values: list[Any]) -> bool:
    """True when grid `key` is a linked axis: it names no run-config key and every value is a mapping."""
    return key.split(".", 1)[0] not in _ROOT_KEYS and all(isinstance(v, dict) for v in values)


class StudyConfig(BaseModel):
    """A study: base run config, grid, and whether dense baselines are added."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="study", description="a short name for the report title")
    description: str = ""
    base_config: str | None = Field(default=None, description="run config file the base starts from")
    base: dict[str, Any] = Field(default_factory=dict, description="run config (or overrides of base_config)")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted run-config key -> values")
    dense_baselines: bool = True
    order: Literal["longest_first", "grid"] = Field(
        default="longest_first",
        description="the order pending runs start in: the longest estimated run first (fewer idle workers at"
        " the end), or the grid's order (the first grid values finish first)",
    )

    @field_validator("grid")
    @classmethod
    def _non_empty_values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
            if is_linked_axis(key, values):
                for value in values:
                    if not value or not all(isinstance(k, str) and k.split(".", 1)[0] in _ROOT_KEYS for k in value):
                        raise ValueError(
                            f"linked axis {key!r}: each value must map dotted run-config keys to values, got {value!r}"
                        )
                    clash = sorted(set(value) & set(grid))
                    if clash:
                        raise ValueError(f"linked axis {key!r} sets {clash[0]!r}, which is a grid key of its own")
        return grid


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: its id, its resolved config, the grid point it came from, and older ids.

    `legacy_ids` are the ids older releases gave the same run (`randsparse.train.identity.run_ids`):
    a store made by one of them knows the run under such an id.
    """

    id: str
    config: TrainConfig
    point: dict[str, Any]
    legacy_ids: tuple[str, ...] = ()

    def known_as(self, ids: set[str]) -> RunSpec:
        """This spec under the first of its legacy ids found in `ids` when its own id is not there."""
        if self.id in ids:
            return self
        for legacy in self.legacy_ids:
            if legacy in ids:
                return replace(self, id=legacy, legacy_ids=(self.id,))
        return self

    @property
    def is_dense(self) -> bool:
        """True for a dense run (a baseline, or a grid point at sparsity 0)."""
        return self.config.is_dense


def _to_override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def load_study(path: str | Path, overrides: list[str] | None = None) -> tuple[StudyConfig, dict[str, Any]]:
    """Read a study file; returns the study and its base run config as a plain mapping.

    `overrides` (``key=value``) apply to the base run config, e.g. ``epochs=1`` for a smoke test.
    """
    path = Path(path)
    raw = read_yaml(path)
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, f"study {str(path)!r}")) from None
    base: dict[str, Any] = {}
    if study.base_config is not None:
        base_path = (path.parent / study.base_config).resolve()
        base = read_yaml(base_path)
    base = _merge(base, study.base)
    base = apply_overrides(base, list(overrides or []))
    return study, base


def _merge(into: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of `update` into a copy of `into` (sections merged, values replaced)."""
    result = dict(into)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def expand(study: StudyConfig, base: dict[str, Any]) -> list[RunSpec]:
    """Every run of the study in grid order, each sparse point preceded by its dense baseline (once)."""
    keys = list(study.grid)
    specs: dict[str, RunSpec] = {}
    for values in itertools.product(*(study.grid[k] for k in keys)):
        point: dict[str, Any] = {}
        for key, value in zip(keys, values, strict=True):
            point.update(value if is_linked_axis(key, study.grid[key]) else {key: value})
        if study.dense_baselines:
            dense_point = {k: v for k, v in point.items() if not _is_sparsity_key(k)}
            _add(specs, base, {**dense_point, _SPARSITY_KEY: 0.0})
        _add(specs, base, point)
    return list(specs.values())


def _is_sparsity_key(key: str) -> bool:
    return key == _SPARSITY_KEY or key.startswith(_SPARSITY_KEY + ".")


def _add(specs: dict[str, RunSpec], base: dict[str, Any], point: dict[str, Any]) -> None:
    overrides = [_to_override(k, v) for k, v in point.items()]
    # The config validates every name and option value; a custom-densities file is read here too,
    # so a value only the run would reject fails the study before any run starts.
    config = build_config(apply_overrides(base, overrides), f"at grid point {point}", what="study run")
    if not config.is_dense and config.sparsity.custom_file is not None:
        load_custom_densities(config.sparsity.custom_file)
    if config.sparsity.masks_file is not None:
        load_masks(config.sparsity.masks_file)  # a missing or damaged mask file fails the study, not its runs
    run_id, *legacy = run_ids(config)
    if run_id not in specs:
        specs[run_id] = RunSpec(run_id, config, point, tuple(legacy))
