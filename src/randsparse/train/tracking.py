"""Experiment tracking beyond the run directory: TensorBoard (per step and per epoch) and MLflow (per epoch).

`open_tracker` opens what a config asks for (``tensorboard: true``, ``logging.mlflow: true``); the
training loop reports to the returned `Tracker`, never to a library directly. TensorBoard gets the
loss, learning rate and loss scale of every optimizer step (``step/...``, by global step) and every
epoch's metrics (by epoch). MLflow gets the config as parameters (dotted keys), every epoch's
metrics (step = epoch), the summary's numbers as metrics and ``summary.json`` and ``masks.json``
(per-layer kept counts and densities) as artifacts; by default into a SQLite store ``mlflow.db``
beside the run (``sqlite:///<out>/mlflow.db``, artifacts under ``<out>/mlartifacts``). A resumed
run continues its MLflow run (found by its run directory), and a study's runs are children of the
study's run (`study_parent_run`). Tracking is execution-only: it never changes a run's identity.

A tracking store that fails while training is logged once as a warning and then left alone: a run
is never lost to its tracker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from randsparse.errors import ConfigError, first_line
from randsparse.sparsity import MaskSet
from randsparse.train.config import LoggingConfig, TrainConfig

log = logging.getLogger(__name__)

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
_RUN_DIR_TAG = "randsparse.run_dir"
_STUDY_DIR_TAG = "randsparse.study_dir"
_STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}  # anything else: FAILED
_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """The global Python, NumPy and torch (CPU) RNG states as they were: a tracker never moves a run's streams."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError("logging.mlflow=true needs MLflow: pip install 'randsparse[mlflow]'") from None
    return mlflow


def default_tracking_uri(directory: str | Path) -> str:
    """The SQLite store `mlflow.db` in `directory` (absolute), as an MLflow tracking URI."""
    return f"sqlite:///{(Path(directory).resolve() / STORE_FILE).as_posix()}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside its file (MLflow's default is the working directory)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / ARTIFACTS_DIR).as_uri()
    return None  # a tracking server decides where artifacts go


def _experiment_id(client: Any, config: LoggingConfig, uri: str) -> str:
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(config.experiment, artifact_location=_artifact_location(uri))


def _client(config: LoggingConfig, directory: Path) -> tuple[Any, str]:
    """(MlflowClient, experiment id); any failure to reach the store is a one-line `ConfigError`."""
    mlflow = _mlflow()
    uri = config.tracking_uri or default_tracking_uri(directory)
    try:
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        return client, _experiment_id(client, config, uri)
    except Exception as exc:  # MLflow raises many kinds for an unreachable or broken store
        raise ConfigError(f"cannot open the MLflow store {uri!r}: {first_line(exc)}") from None


def _find_run(client: Any, experiment: str, tag: str, value: str) -> str | None:
    """The id of the latest run of `experiment` whose tag `tag` is `value`, or None."""
    for run in client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=1000):
        if run.data.tags.get(tag) == value:
            return run.info.run_id
    return None


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`data` as MLflow parameters: dotted keys, values as JSON text (cut to MLflow's length limit)."""
    result: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            result.update(flat_params(value, name + "."))
        else:
            result[name] = json.dumps(value)[:_PARAM_LENGTH]
    return result


def _metric_name(name: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", name)


def _numbers(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The real-number entries of `data` (nested mappings flattened with dots), booleans left out."""
    result: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            result.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            result[_metric_name(f"{prefix}{key}")] = float(value)
    return result


def masks_summary(masks: MaskSet | None) -> dict[str, Any]:
    """Per-layer shape, size, kept count and density of `masks`, and the totals (a dense run: none)."""
    if masks is None:
        return {"dense": True, "layers": []}
    layers = [
        {"name": s.name, "shape": list(s.shape), "params": s.params, "kept": s.kept, "density": s.density}
        for s in masks.summary()
    ]
    totals = {"params": masks.num_params(), "kept": masks.num_kept(), "density": masks.density()}
    return {"dense": False, **totals, "layers": layers}


class MlflowRun:
    """One run's MLflow run: opened (or reopened on resume) at the start, terminated at the end."""

    def __init__(self, config: TrainConfig, run_dir: Path, masks: MaskSet | None) -> None:
        self.client, experiment = _client(config.logging, run_dir)
        key = str(run_dir.resolve())
        try:
            self.run_id = _find_run(self.client, experiment, _RUN_DIR_TAG, key)
            if self.run_id is None:
                tags = {_RUN_DIR_TAG: key, "randsparse.config_hash": _identity(config)}
                if config.logging.parent_run_id:
                    tags["mlflow.parentRunId"] = config.logging.parent_run_id
                self.run_id = self.client.create_run(experiment, tags=tags, run_name=run_dir.name).info.run_id
                dumped = config.model_dump(mode="json")
                dumped.pop("logging", None)
                self._log(params=flat_params(dumped))
                self.client.log_dict(self.run_id, masks_summary(masks), "masks.json")
            else:
                self.client.update_run(self.run_id, status="RUNNING")
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"cannot start the MLflow run: {first_line(exc)}") from None

    def _log(
        self, metrics: dict[str, float] | None = None, params: dict[str, str] | None = None, step: int = 0
    ) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        items = [Param(k, v) for k, v in (params or {}).items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])
        if metrics:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        self._log({k: v for k, v in _numbers(record).items() if k not in ("epoch", "step")}, step=epoch)

    def finish(self, summary: dict[str, Any]) -> None:
        self._log(_numbers({k: v for k, v in summary.items() if k not in ("sparsity", "world_size")}))
        if len(summary) > 1:
            self.client.log_dict(self.run_id, summary, "summary.json")
        self.client.set_terminated(self.run_id, status=_STATUS.get(summary.get("status", ""), "FAILED"))


def _identity(config: TrainConfig) -> str:
    from randsparse.train.identity import config_hash

    return config_hash(config)


def step_values(optimizer: Any, scaler: Any, loss: float) -> dict[str, float]:
    """What TensorBoard gets every optimizer step: its mean loss, learning rate(s) and (fp16) loss scale."""
    values = {"train_loss": loss, "lr": optimizer.param_groups[0]["lr"]}
    for index, group in enumerate(optimizer.param_groups[1:], start=1):
        values[f"lr_group{index}"] = group["lr"]
    if scaler.is_enabled():
        values["loss_scale"] = float(scaler.get_scale())
    return values


class Tracker:
    """Where a run reports beyond its directory; every sink is optional and never stops training."""

    def __init__(self, tensorboard: Any = None, mlflow: MlflowRun | None = None) -> None:
        self.tensorboard = tensorboard
        self.mlflow = mlflow

    def _guard(self, sink: str, action: Any) -> None:
        try:
            with _rng_kept():
                action()
        except Exception as exc:  # a tracker must never lose the run it tracks
            log.warning("%s logging failed, and is off for the rest of this run: %s", sink, first_line(exc))
            setattr(self, sink, None)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Per-step values (TensorBoard only, under ``step/``), by global optimizer step."""
        if self.tensorboard is not None:
            writer = self.tensorboard
            self._guard("tensorboard", lambda: [writer.add_scalar(f"step/{k}", v, step) for k, v in values.items()])

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """An epoch's metrics row (as in metrics.jsonl), by epoch number."""
        if self.tensorboard is not None:
            writer = self.tensorboard

            def write() -> None:
                for key, value in record.items():
                    if key not in ("epoch", "step") and isinstance(value, (int, float)):
                        writer.add_scalar(key, value, epoch)
                writer.flush()

            self._guard("tensorboard", write)
        if self.mlflow is not None:
            run = self.mlflow
            self._guard("mlflow", lambda: run.log_epoch(epoch, record))

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """End every sink; `summary` (the run's, with its status) goes to MLflow (none: the run failed)."""
        if self.tensorboard is not None:
            self._guard("tensorboard", self.tensorboard.close)
        if self.mlflow is not None:
            run = self.mlflow
            self._guard("mlflow", lambda: run.finish(summary or {"status": "failed"}))


def open_tracker(config: TrainConfig, run_dir: Path, masks: MaskSet | None) -> Tracker | None:
    """The sinks `config` asks for (None when none); a missing package or unreachable store is a `ConfigError`."""
    if not config.tensorboard and not config.logging.mlflow:
        return None
    writer = None
    if config.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("tensorboard=true needs TensorBoard: pip install 'randsparse[tensorboard]'") from None
        writer = SummaryWriter(str(run_dir / "tensorboard"))
    with _rng_kept():
        mlflow_run = MlflowRun(config, run_dir, masks) if config.logging.mlflow else None
    return Tracker(writer, mlflow_run)


def study_parent_run(config: LoggingConfig, study_dir: str | Path, name: str) -> tuple[str, str]:
    """(tracking URI, run id) of a study's MLflow run in `study_dir`'s store (or `config.tracking_uri`).

    Created on the first call and found again on later ones (a resumed study), by its directory.
    """
    directory = Path(study_dir)
    client, experiment = _client(config, directory)
    key = str(directory.resolve())
    try:
        run_id = _find_run(client, experiment, _STUDY_DIR_TAG, key)
        if run_id is None:
            run_id = client.create_run(experiment, tags={_STUDY_DIR_TAG: key}, run_name=name).info.run_id
    except Exception as exc:
        raise ConfigError(f"cannot start the study's MLflow run: {first_line(exc)}") from None
    return config.tracking_uri or default_tracking_uri(directory), run_id


def finish_study_run(uri: str, run_id: str, status: str) -> None:
    """Mark a study's MLflow run ended (FINISHED, FAILED or KILLED); a failure is only a warning."""
    try:
        _mlflow().tracking.MlflowClient(tracking_uri=uri).set_terminated(run_id, status=status)
    except Exception as exc:
        log.warning("could not end the study's MLflow run: %s", first_line(exc))
