"""The report's method dimension: accuracy and ITOP rate per method, fallbacks for old and static runs."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from randsparse.experiments import ResultsStore, write_report
from randsparse.experiments.report_methods import run_itop_rate, run_method
from randsparse.experiments.store import RunRow
from tests.train._fixtures import copy_fixture

# Accuracy of each (method, sparsity) at seed 0; seed 1 adds 0.02.
ACCURACY = {
    ("static", 0.9): 0.80,
    ("static", 0.95): 0.70,
    ("rigl", 0.9): 0.84,
    ("rigl", 0.95): 0.78,
    ("lth", 0.9): 0.82,
}


def _spec(sparsity: float, method: str | None, seed: int) -> dict:
    section = {"sparsity": sparsity, "distribution": "erk"}
    if method is not None:  # None: a run of a release without methods (no key at all)
        section["method"] = method
    return {"data": {"name": "synthetic"}, "model": {"name": "mlp", "width": 1.0}, "sparsity": section, "seed": seed}


def _store(tmp_path) -> ResultsStore:
    store = ResultsStore(tmp_path / "results.sqlite")
    specs, metrics = [], {}
    for seed in (0, 1):
        specs.append((f"dense-{seed}", _spec(0.0, None, seed), {}))
        metrics[f"dense-{seed}"] = {"test_accuracy": 0.9 + 0.02 * seed, "density": 1.0}
        for (method, sparsity), accuracy in ACCURACY.items():
            run_id = f"{method}-{sparsity}-{seed}"
            specs.append((run_id, _spec(sparsity, None if method == "static" else method, seed), {}))
            row = {"test_accuracy": accuracy + 0.02 * seed, "density": 1 - sparsity}
            if method == "rigl":
                row.update(method="rigl", itop_rate=0.3 + 0.1 * seed, train_flops=1e9)
            if method == "lth":
                row.update(method="lth", itop_rate=1.0)
            metrics[run_id] = row
    store.sync(specs, {"name": "methods"})
    while (row := store.claim("h:1")) is not None:
        store.finish(row.id, "done", metrics[row.id])
    return store


def test_the_method_table_gives_mean_std_and_itop_rate_per_method_and_sparsity(tmp_path) -> None:
    report = write_report(_store(tmp_path), tmp_path / "report")
    names = {p.name for p in report.files}
    assert {"methods.csv", "accuracy_vs_sparsity_by_method.png"} <= names
    table = pd.read_csv(tmp_path / "report/methods.csv")
    rigl = table[(table["method"] == "rigl") & (table["sparsity"] == 0.95)].iloc[0]
    assert rigl["mean"] == pytest.approx(0.79) and rigl["std"] == pytest.approx(0.02 / 2**0.5)
    assert rigl["seeds"] == 2 and rigl["itop_rate"] == pytest.approx(0.35) and rigl["train_flops"] == 1e9
    assert rigl["gap_to_dense"] == pytest.approx(0.79 - 0.91)
    static = table[(table["method"] == "static") & (table["sparsity"] == 0.9)].iloc[0]
    assert static["itop_rate"] == pytest.approx(0.1), "a static run's ITOP rate is its density"
    assert set(table["method"]) == {"dense", "static", "rigl", "lth"}
    assert set(report.table["distribution"]) == {"dense", "erk", "erk + rigl", "erk + lth"}, "methods never pooled"
    assert set(table["distribution"]) == {"dense", "erk"}
    text = (tmp_path / "report/report.md").read_text()
    assert "## Methods" in text and "| rigl" in text and "79.00 ± 1.41" in text
    with Image.open(tmp_path / "report/accuracy_vs_sparsity_by_method.png") as image:
        assert image.size[0] > 100


def test_a_static_only_study_has_no_method_section(tmp_path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    store.sync([("a", _spec(0.9, None, 0), {}), ("b", _spec(0.9, "static", 1), {})], {"name": "static"})
    while (row := store.claim("h:1")) is not None:
        store.finish(row.id, "done", {"test_accuracy": 0.8})
    report = write_report(store, tmp_path / "report")
    assert "methods.csv" not in {p.name for p in report.files}
    assert "## Methods" not in (tmp_path / "report/report.md").read_text()


def test_old_runs_count_as_static_with_their_density_as_itop_rate() -> None:
    row = RunRow("x", 0, _spec(0.9, None, 0), {}, "done", {"test_accuracy": 0.8}, None, None, 1, 1, 1.0)
    assert run_method(row) == "static" and run_itop_rate(row) == pytest.approx(0.1)
    dense = RunRow("d", 0, _spec(0.0, None, 0), {}, "done", {"density": 1.0}, None, None, 1, 1, 1.0)
    assert run_method(dense) == "dense" and run_itop_rate(dense) == 1.0


def test_the_report_of_a_release_0_1_0_store_still_works(tmp_path) -> None:
    study_dir = copy_fixture("study_v0_1_0", tmp_path)
    report = write_report(ResultsStore(study_dir / "results.sqlite", create=False), tmp_path / "report")
    assert "methods.csv" not in {p.name for p in report.files}
    assert "## Test accuracy" in (tmp_path / "report/report.md").read_text()
