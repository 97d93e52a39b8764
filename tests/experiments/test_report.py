"""The study report: tables, plots and the missing-runs section, on complete and partial stores."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from PIL import Image

from randsparse.experiments import ResultsStore, summary_table, write_report

BASE_SPEC = {"data": {"name": "synthetic"}, "seed": 0}


def _spec(width: float, sparsity: float, distribution: str, seed: int) -> dict:
    return {
        **BASE_SPEC,
        "model": {"name": "small_cnn", "width": width, "depth": None},
        "sparsity": {"sparsity": sparsity, "distribution": distribution},
        "seed": seed,
    }


def _store(tmp_path, finish_all: bool = True) -> ResultsStore:
    """Two widths x (dense + 2 rules x 2 sparsities) x 2 seeds with known accuracies."""
    store = ResultsStore(tmp_path / "results.sqlite")
    specs, accuracy = [], {}
    for width in (0.5, 1.0):
        for seed in (0, 1):
            points = [(0.0, "erk")] + [(s, d) for s in (0.5, 0.9) for d in ("erk", "uniform")]
            for sparsity, distribution in points:
                run_id = f"w{width}-s{sparsity}-{distribution}-{seed}"
                specs.append((run_id, _spec(width, sparsity, distribution, seed), {}))
                gap = 0.0 if sparsity == 0 else -sparsity * (0.1 if distribution == "uniform" else 0.05) / width
                accuracy[run_id] = 0.9 + gap + 0.01 * seed
    store.sync(specs, {"name": "toy", "description": "a toy study"})
    while (row := store.claim("h:1")) is not None:
        if not finish_all and row.id.startswith("w1.0-s0.9-uniform"):
            store.finish(row.id, "failed", error="ValueError: boom")
            continue
        store.finish(row.id, "done", {"test_accuracy": accuracy[row.id], "eval": {"ece": 0.05, "nll": 0.3}})
    return store


def test_summary_table_means_stds_and_gaps(tmp_path) -> None:
    report = write_report(_store(tmp_path), tmp_path / "report")
    table = report.table
    row = table[(table["width"] == 0.5) & (table["sparsity"] == 0.9) & (table["distribution"] == "uniform")].iloc[0]
    assert row["mean"] == pytest.approx(0.9 - 0.18 + 0.005)
    assert row["std"] == pytest.approx(math.sqrt(2 * 0.005**2))
    assert row["seeds"] == 2
    assert row["dense_mean"] == pytest.approx(0.905)
    assert row["gap_to_dense"] == pytest.approx(-0.18)
    assert set(table["distribution"]) == {"dense", "erk", "uniform"}


def test_report_writes_markdown_csv_and_readable_plots(tmp_path) -> None:
    report = write_report(_store(tmp_path), tmp_path / "report")
    names = {p.name for p in report.files}
    assert {"report.md", "runs.csv", "summary.csv", "accuracy_vs_sparsity.png", "gap_vs_width.png"} <= names
    assert {"ece_vs_sparsity.png", "nll_vs_sparsity.png"} <= names
    for png in (p for p in report.files if p.suffix == ".png"):
        with Image.open(png) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    text = (tmp_path / "report/report.md").read_text()
    assert text.startswith("# toy")
    assert "| small_cnn ×0.5" in text
    assert "-18.00" in text  # the uniform gap at 90 % sparsity, width 0.5, in points
    assert "None: every run of the study is done." in text
    assert len(pd.read_csv(tmp_path / "report/runs.csv")) == 20


def test_partial_store_still_reports_and_names_what_is_missing(tmp_path) -> None:
    store = _store(tmp_path, finish_all=False)
    store.sync([(r.id, r.spec, r.point) for r in store.rows()] + [("later", _spec(2.0, 0.5, "erk", 0), {})], {})
    text_path = write_report(store, tmp_path / "report").out_dir / "report.md"
    text = text_path.read_text()
    assert "## Missing or failed runs" in text
    assert "ValueError: boom" in text
    assert "| later" in text and "pending" in text
    assert (tmp_path / "report/accuracy_vs_sparsity.png").is_file()


def test_empty_store_reports_that_there_is_nothing_yet(tmp_path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    report = write_report(store, tmp_path / "report")
    assert "no runs yet" in (report.out_dir / "report.md").read_text()


def test_summary_table_without_dense_baseline_has_no_gap() -> None:
    frame = pd.DataFrame(
        {
            "size": ["m"],
            "width": [1.0],
            "depth": [None],
            "sparsity": [0.5],
            "distribution": ["erk"],
            "test_accuracy": [0.8],
        }
    )
    table = summary_table(frame)
    assert math.isnan(table["gap_to_dense"].iloc[0])


def test_runs_that_differ_in_another_grid_key_are_not_averaged_together(tmp_path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    specs = []
    for lr in (0.05, 0.0001):
        for sparsity in (0.0, 0.5):
            spec = {**_spec(1.0, sparsity, "erk", 0), "optim": {"lr": lr}}
            specs.append((f"lr{lr}-s{sparsity}", spec, {"optim.lr": lr, "sparsity": sparsity}))
    store.sync(specs, {"name": "lr"})
    while (row := store.claim("h:1")) is not None:
        store.finish(row.id, "done", {"test_accuracy": 0.9 if "lr0.05" in row.id else 0.3})
    table = write_report(store, tmp_path / "report").table
    sparse = table[table["sparsity"] == 0.5].set_index("variant")
    assert sparse.loc["optim.lr=0.05", "mean"] == pytest.approx(0.9)
    assert sparse.loc["optim.lr=0.0001", "mean"] == pytest.approx(0.3)
    assert (sparse["seeds"] == 1).all()
    assert sparse["gap_to_dense"].abs().max() == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("model", "depth", "width"),
    [
        ({"name": "wrn28_10"}, 28, 10.0),
        ({"name": "wide_resnet50_2"}, 50, 2.0),
        ({"name": "resnet56", "width": 2.0}, 56, 2.0),
        ({"name": "cifar_resnet", "depth": 32, "width": 0.5}, 32, 0.5),
        ({"name": "small_cnn"}, None, 1.0),
    ],
)
def test_model_size_is_read_from_knobs_or_the_registry(model, depth, width) -> None:
    from randsparse.experiments.report import _architecture

    architecture = _architecture(model)
    assert (architecture["depth"], architecture["width"]) == (depth, width)


def test_mask_mode_runs_are_labelled_apart_from_random_ratio_runs(tmp_path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    spec_random = _spec(1.0, 0.5, "snip_ratio", 0)
    spec_pruned = {**spec_random, "sparsity": {"sparsity": 0.5, "distribution": "snip_ratio", "prune": "snip"}}
    store.sync([("random", spec_random, {}), ("pruned", spec_pruned, {})], {})
    while (row := store.claim("h:1")) is not None:
        store.finish(row.id, "done", {"test_accuracy": 0.5})
    assert set(write_report(store, tmp_path / "r").table["distribution"]) == {"snip_ratio", "snip (pruned)"}


def test_the_report_reads_the_architecture_a_run_recorded_and_resolves_old_rows_from_the_registry(
    tmp_path,
) -> None:
    from randsparse.experiments import open_store, runs_frame
    from tests.train._fixtures import V0_RUN_ID, copy_fixture

    study_dir = copy_fixture("study_v0_1_0", tmp_path)  # rows of 0.1.0: no architecture recorded
    frame = runs_frame(open_store(study_dir).rows()).set_index("id")
    assert (frame.loc[V0_RUN_ID, "family"], frame.loc[V0_RUN_ID, "depth"]) == ("mlp", 1)
    store = ResultsStore(tmp_path / "new.sqlite")
    spec = {**_spec(1.0, 0.5, "erk", 0), "model": {"name": "no_longer_registered", "width": 2.0}}
    store.sync([("r", spec, {})], {"name": "toy"})
    store.claim("h:1")
    store.finish("r", "done", {"architecture": {"family": "resnet", "depth": 56, "width": 2.0}})
    row = runs_frame(store.rows()).iloc[0]
    assert (row["family"], row["depth"], row["width"]) == ("resnet", 56, 2.0)


# Run in a fresh interpreter: the backend the caller chose (here "svg", as a notebook would choose
# its inline backend) must survive writing a report and a reliability diagram, and pyplot (the
# global figure manager) must never be loaded by randsparse.
_KEEPS_BACKEND = """
import sys
import matplotlib
matplotlib.use("svg")
import torch
from randsparse.evaluate import reliability_diagram
from randsparse.experiments import ResultsStore, write_report
out = sys.argv[1]
report = write_report(ResultsStore(out + "/results.sqlite"), out + "/report")
generator = torch.Generator().manual_seed(0)
reliability_diagram(torch.randn(50, 3, generator=generator), torch.randint(0, 3, (50,)), out + "/reliability.png")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_report_and_diagram_leave_the_callers_matplotlib_backend_alone(tmp_path) -> None:
    import subprocess
    import sys

    _store(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _KEEPS_BACKEND, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "False"]
    for png in ("report/accuracy_vs_sparsity.png", "report/gap_vs_width.png", "reliability.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
