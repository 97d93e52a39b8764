"""MLflow tracking of runs and studies, read back from a temporary local store with the MLflow client."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from randsparse.errors import ConfigError
from randsparse.train import Interrupted, config_hash, fit
from randsparse.train.checkpoint import load_checkpoint
from randsparse.train.tracking import default_tracking_uri, flat_params
from tests.train._runs import signal_after_first_epoch, tiny_config

mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional extra: randsparse[mlflow]")


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An empty MLflow SQLite store, made once: creating one runs MLflow's migrations (seconds)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def _store_in(directory, empty_store) -> None:
    directory.mkdir(parents=True)
    shutil.copy(empty_store, directory / "mlflow.db")


def _client(directory):
    return mlflow.tracking.MlflowClient(tracking_uri=default_tracking_uri(directory))


def _runs(client):
    experiment = client.get_experiment_by_name("randsparse")
    return client.search_runs([experiment.experiment_id])


def test_logging_is_execution_only() -> None:
    logged = tiny_config("logging.mlflow=true", "logging.tracking_uri=sqlite:///x.db", "logging.experiment=e")
    assert config_hash(logged) == config_hash(tiny_config())


def test_a_run_logs_config_metrics_summary_and_masks_and_a_resume_continues_it(
    tmp_path, monkeypatch, empty_store
) -> None:
    out = tmp_path / "run"
    _store_in(out, empty_store)  # the default store: mlflow.db in the output directory
    config = tiny_config("logging.mlflow=true", "eval=false")
    with monkeypatch.context() as patch:
        signal_after_first_epoch(patch)
        with pytest.raises(Interrupted):
            fit(config, out)
    client = _client(out)
    (stopped,) = _runs(client)
    assert stopped.info.status == "KILLED"
    summary = fit(config, out, resume=True)

    (run,) = _runs(client)  # the resumed run continued the same MLflow run
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    params = run.data.params
    assert params["optim.lr"] == "0.05" and params["sparsity.sparsity"] == "0.8"
    assert params["model.name"] == '"small_cnn"'
    assert not any(key.startswith("logging.") for key in params)
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted({m.step for m in history}) == [1, 2]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {m.step: m.value for m in history} == {r["epoch"]: r["train_loss"] for r in rows}
    assert run.data.metrics["test_accuracy"] == summary["test_accuracy"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"masks.json", "summary.json"} <= artifacts
    path = client.download_artifacts(run.info.run_id, "masks.json", str(tmp_path))
    with open(path) as handle:
        masks = json.load(handle)
    assert not masks["dense"] and abs(masks["density"] - 0.2) < 0.01 and masks["layers"]
    assert (out / "mlartifacts").is_dir(), "artifacts stay beside the run, never in the working directory"
    # Tracking is execution-only in effect too: the same weights as a run without it.
    fit(tiny_config("eval=false"), tmp_path / "plain")
    tracked, plain = (load_checkpoint(d / "checkpoints/last.pt")["model"] for d in (out, tmp_path / "plain"))
    assert all(torch.equal(tracked[k], plain[k]) for k in plain)


def test_a_study_logs_a_parent_run_with_its_runs_as_children(tmp_path, empty_store) -> None:
    from randsparse.experiments import load_study, run_study
    from tests.experiments._studies import write_study

    path = write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5]})
    study, base = load_study(path, ["logging.mlflow=true", "eval=false"])
    _store_in(tmp_path / "study", empty_store)
    final = run_study(study, base, tmp_path / "study", executor="sequential")
    assert final.counts["done"] == 2
    runs = _runs(_client(tmp_path / "study"))
    parents = [r for r in runs if "randsparse.study_dir" in r.data.tags]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].info.run_name == "tiny" and parents[0].info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" and "val_accuracy" in r.data.metrics for r in children)


def test_without_mlflow_a_run_asking_for_it_is_one_line_before_anything_is_written(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"needs MLflow: pip install 'randsparse\[mlflow\]'"):
        fit(tiny_config("logging.mlflow=true"), tmp_path / "run")
    assert not (tmp_path / "run/config.yaml").exists()


def test_params_are_dotted_json_values() -> None:
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "null",
        "e": "{}",
    }
