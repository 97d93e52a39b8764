"""`randsparse report --compare A B`: two studies side by side, per-cell differences, incompatible inputs refused."""

from __future__ import annotations

import pandas as pd
import pytest

from randsparse.errors import ConfigError
from randsparse.experiments import ResultsStore
from randsparse.experiments.compare import compare_studies
from tests._cli import run
from tests.experiments._claims_store import claims_store, gap


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for name, flip in (("a", False), ("b", True)):
        (root / name).mkdir()
        claims_store(root / name / "results.sqlite", flip=flip, seeds=(0, 1))
    return root


def test_compare_gives_both_means_and_b_minus_a_per_cell(studies, tmp_path) -> None:
    store_a, store_b = (ResultsStore(studies / n / "results.sqlite", create=False) for n in "ab")
    comparison = compare_studies(store_a, store_b, tmp_path / "out", names=("a", "b"))
    table = comparison.table
    accuracy = table[table["metric"] == "test accuracy"]
    assert len(accuracy) == 3 * 5  # every cell of the two studies: 3 widths x (dense + 4 sparse)
    row = accuracy[(accuracy["size"] == "small_cnn ×0.5") & (accuracy["sparsity"] == 0.9)]
    row = row[row["distribution"] == "uniform"].iloc[0]
    expected = (gap(0.5, 0.9, "uniform", flip=True) - gap(0.5, 0.9, "uniform")) * 100
    assert row["difference"] == pytest.approx(expected)
    assert row["seeds_a"] == row["seeds_b"] == 2
    assert set(table["metric"]) >= {"test accuracy", "ECE", "NLL", "OOD AUROC digits", "FGSM ε=0.05"}
    text = (tmp_path / "out/compare.md").read_text()
    assert text.startswith("# a vs b")
    assert "| 1       | consistent | contradicts |" in text or "| 1 | consistent | contradicts |" in text
    assert len(pd.read_csv(tmp_path / "out/compare.csv")) == len(table)


def test_compare_on_the_command_line(studies, capsys) -> None:
    out = studies / "cli-out"
    code, stdout, _ = run(["report", "--compare", str(studies / "a"), str(studies / "b"), "--out", str(out)], capsys)
    assert code == 0 and "compare.md" in stdout
    assert (out / "compare.md").is_file()


def test_incompatible_or_missing_inputs_are_one_line_and_exit_2(studies, tmp_path, capsys) -> None:
    other = tmp_path / "other"
    other.mkdir()
    store = ResultsStore(other / "results.sqlite")
    spec = {
        "data": {"name": "cifar10"},
        "model": {"name": "resnet20"},
        "sparsity": {"sparsity": 0.0, "distribution": "erk"},
    }
    store.sync([("r", {**spec, "seed": 0}, {})], {"name": "other"})
    store.claim("h:1")
    store.finish("r", "done", {"test_accuracy": 0.9})
    cases = [
        (["report", "--compare", str(studies / "a"), str(other)], "different datasets"),
        (["report", "--compare", str(studies / "a"), str(tmp_path)], "not a study directory"),
        (["report", str(studies / "a"), "--compare", str(studies / "a"), str(studies / "b")], "not both"),
        (["report"], "--compare A B"),
    ]
    for argv, message in cases:
        code, _, err = run(argv, capsys)
        assert code == 2, argv
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_studies_without_a_common_cell_are_refused(studies, tmp_path) -> None:
    lone = ResultsStore(tmp_path / "results.sqlite")
    spec = {
        "data": {"name": "synthetic"},
        "model": {"name": "mlp"},
        "sparsity": {"sparsity": 0.0, "distribution": "erk"},
    }
    lone.sync([("r", {**spec, "seed": 0}, {})], {"name": "lone"})
    lone.claim("h:1")
    lone.finish("r", "done", {"test_accuracy": 0.5})
    with pytest.raises(ConfigError, match="no finished cell"):
        compare_studies(ResultsStore(studies / "a/results.sqlite", create=False), lone, tmp_path / "out")
