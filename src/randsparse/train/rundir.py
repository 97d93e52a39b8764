"""A run directory: its files, written atomically, and reading a finished run back.

Layout::

    RUN_DIR/config.yaml            fully resolved config
    RUN_DIR/metrics.jsonl          one JSON line per finished epoch
    RUN_DIR/summary.json           status and final numbers (updated as the run goes)
    RUN_DIR/engine.json            engine auto/sparse: per-layer decisions and measured times
    RUN_DIR/checkpoints/last.pt    latest state (every epoch, and every N steps if asked)
    RUN_DIR/checkpoints/best.pt    state of the epoch with the best validation accuracy
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

from randsparse import __version__
from randsparse.errors import ConfigError, FileFormatError
from randsparse.storage import atomic_write_bytes, read_mapping
from randsparse.train.config import TrainConfig, build_config, dump_config, read_yaml

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "engine.json")  # plus everything under checkpoints/


def owning_run(path: str | Path) -> Path | None:
    """The run directory whose own file `path` is (its config, metrics, summary or a checkpoint), or None.

    A run directory is one holding a ``config.yaml``; symlinks are followed, so a link to a run's
    file is that file. Commands refuse to write their outputs there (see `randsparse.storage`).
    """
    path = Path(path).resolve()
    parent = path.parent
    if path.name in RUN_FILES and (parent / "config.yaml").is_file():
        return parent
    if parent.name == "checkpoints" and (parent.parent / "config.yaml").is_file():
        return parent.parent
    return None


def _json_safe(value: Any) -> Any:
    """NaN and infinities as strings, so every file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class RunDir:
    """Paths and atomic writers of one run's directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_file(self) -> Path:
        """The resolved config."""
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        """Per-epoch metrics, JSON lines."""
        return self.path / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        """Status and final numbers."""
        return self.path / "summary.json"

    @property
    def last_checkpoint(self) -> Path:
        """Latest training state."""
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        """Training state at the best validation accuracy."""
        return self.path / "checkpoints" / "best.pt"

    def check_files(self) -> None:
        """Refuse a run directory whose own files are not plain files (e.g. a directory named ``last.pt``).

        Called before anything is written, so such a directory is never retrained or overwritten.
        Raises `FileFormatError` naming the first odd path.
        """
        checkpoints = self.path / "checkpoints"
        if checkpoints.exists() and not checkpoints.is_dir():
            raise FileFormatError(f"{str(checkpoints)!r} is not a directory; this run directory is damaged")
        for path in (
            self.config_file,
            self.metrics_file,
            self.summary_file,
            self.engine_file,
            self.last_checkpoint,
            self.best_checkpoint,
        ):
            if path.exists() and not path.is_file():
                raise FileFormatError(f"{str(path)!r} is not a file; this run directory is damaged")

    def has_run(self) -> bool:
        """True when the directory already holds a run (a config or a checkpoint)."""
        return self.config_file.exists() or self.last_checkpoint.exists()

    def write_config(self, config: TrainConfig) -> None:
        """Write ``config.yaml``."""
        atomic_write_bytes(self.config_file, dump_config(config).encode())

    def read_config(self) -> TrainConfig:
        """The run's config; a missing or invalid file is a `ConfigError`."""
        if not self.config_file.is_file():
            raise ConfigError(f"{str(self.path)!r} is not a run directory (no config.yaml)")
        try:
            return build_config(read_yaml(self.config_file), str(self.config_file))
        except ConfigError as exc:
            with contextlib.suppress(FileFormatError):
                made_by = self.read_summary().get("randsparse_version")
                if made_by is not None and made_by != __version__:
                    raise ConfigError(
                        f"{exc} (the run was made by randsparse {made_by}, this is {__version__}: read it with"
                        " that release, or bring config.yaml up to date)"
                    ) from None
            raise

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` from the history (kept in the checkpoint, so never torn or duplicated)."""
        text = "".join(json.dumps(_json_safe(row)) + "\n" for row in history)
        atomic_write_bytes(self.metrics_file, text.encode())

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` (empty when absent); a malformed file, or a directory in its place, is a
        `FileFormatError`."""
        if not self.summary_file.exists():
            return {}
        return read_mapping(self.summary_file, "run summary")

    @property
    def engine_file(self) -> Path:
        """The training engine's per-layer decisions (`randsparse.accel.engine.engine_report`)."""
        return self.path / "engine.json"

    def write_engine(self, report: dict[str, Any]) -> None:
        """Write ``engine.json`` atomically."""
        atomic_write_bytes(self.engine_file, (json.dumps(_json_safe(report), indent=2) + "\n").encode())

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` atomically."""
        text = json.dumps(_json_safe(summary), indent=2) + "\n"
        atomic_write_bytes(self.summary_file, text.encode())

    def update_summary(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into ``summary.json`` and return the result."""
        summary = {**self.read_summary(), **fields}
        self.write_summary(summary)
        return summary
