"""Tiny synthetic studies shared by the experiments tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from randsparse.sparsity.methods import available_methods
from tests.train._runs import SYNTHETIC

TINY_BASE: dict[str, Any] = {
    "model": {"name": "mlp", "options": {"depth": 1, "hidden": 32}},
    "data": {**SYNTHETIC, "val_fraction": 0.125},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "epochs": 1,
    "device": "cpu",
}


def write_study(path: Path, grid: dict[str, list[Any]] | None = None, **fields: Any) -> Path:
    """A study over MLP widths x sparsity x distribution (6 sparse runs + 2 dense baselines)."""
    study = {
        "name": "tiny",
        "base": TINY_BASE,
        "grid": grid
        or {"model.width": [0.5, 1.0], "sparsity": [0.5, 0.9], "sparsity.distribution": ["erk", "uniform"]},
        **fields,
    }
    path.write_text(yaml.safe_dump(study))
    return path


def unregistered_methods(path: Path) -> list[str]:
    """Methods a study file names that this checkout has not registered (SET/RigL/GMP before the dst merge)."""
    study = yaml.safe_load(path.read_text())
    named = set()
    for key, values in (study.get("grid") or {}).items():
        for value in values:
            if key == "sparsity.method":
                named.add(value)
            elif isinstance(value, dict) and "sparsity.method" in value:
                named.add(value["sparsity.method"])
    return sorted(named - set(available_methods()))
