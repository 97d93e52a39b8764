"""The paper's numbers: the data file, its match with the paper presets, and the report's overlay."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from randsparse.errors import FileFormatError
from randsparse.experiments import ResultsStore, runs_frame
from randsparse.experiments.paper import against_paper, paper_results, paper_section

ROOT = Path(__file__).resolve().parents[2]


def test_the_data_file_holds_the_cifar10_depth_figure_with_its_source() -> None:
    paper = paper_results()
    depth = paper[paper["table"] == "cifar10-depth"].set_index(["model", "distribution", "sparsity"])
    assert len(depth) == 5 * 7
    assert depth.loc[("resnet20", "dense", 0.0), "paper"] == 92.38
    assert depth.loc[("resnet44", "erk", 0.9), "paper"] == 90.65
    assert depth.loc[("resnet110", "snip_ratio", 0.9), "paper"] == 91.4
    assert depth.loc[("resnet56", "uniform_plus", 0.9), "paper"] == 90.0
    assert depth.loc[("resnet32", "erk", 0.5), "paper"] == 92.5
    assert (paper["source"].str.len() > 20).all() and (paper["dataset"] == "cifar10").all()


def test_the_data_file_ships_in_the_wheel() -> None:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "paper_results.yaml" in config["tool"]["setuptools"]["package-data"]["randsparse.experiments"]


def test_every_paper_value_is_a_cell_of_the_paper_preset_study() -> None:
    from randsparse.experiments import load_study

    study, base = load_study(ROOT / "configs/studies/paper/cifar10-depth.yaml")
    paper = paper_results()
    paper = paper[paper["table"] == "cifar10-depth"]
    assert set(paper["dataset"]) == {base["data"]["name"]}
    assert set(paper["width"]) == {float(base["model"]["width"])}
    assert set(paper["model"]) <= set(study.grid["model.name"])
    assert set(paper["sparsity"]) - {0.0} <= set(study.grid["sparsity"])
    assert set(paper["distribution"]) - {"dense"} <= set(study.grid["sparsity.distribution"])
    assert study.dense_baselines


def _store(tmp_path: Path, dataset: str = "cifar10") -> ResultsStore:
    store = ResultsStore(tmp_path / "results.sqlite")
    accuracy = {(0.0, 0): 0.92, (0.0, 1): 0.93, (0.9, 0): 0.87, (0.9, 1): 0.88, (0.7, 0): 0.9}
    specs = []
    for sparsity, seed in accuracy:
        spec = {
            "data": {"name": dataset},
            "model": {"name": "resnet20", "width": 1.0},
            "sparsity": {"sparsity": sparsity, "distribution": "erk"},
            "seed": seed,
        }
        specs.append((f"{sparsity}-{seed}", spec, {}))
    store.sync(specs, {"name": "paper"})
    while (row := store.claim("h:1")) is not None:
        sparsity, seed = row.id.split("-")
        store.finish(row.id, "done", {"test_accuracy": accuracy[(float(sparsity), int(seed))]})
    return store


def test_matched_cells_show_ours_the_paper_and_the_distance(tmp_path) -> None:
    done = runs_frame(_store(tmp_path).rows())
    matched = against_paper(done).set_index(["distribution", "sparsity"])
    assert len(matched) == 2  # sparsity 0.7 is not in the paper's table
    assert matched.loc[("erk", 0.9), "mean"] == pytest.approx(87.5)
    assert matched.loc[("erk", 0.9), "difference"] == pytest.approx(87.5 - 87.8)
    assert matched.loc[("dense", 0.0), "difference"] == pytest.approx(92.5 - 92.38)
    assert matched.loc[("erk", 0.9), "seeds"] == 2
    lines, files = paper_section(done, tmp_path, "paper", plots=False)
    text = "\n".join(lines)
    assert "## Against the paper's numbers" in text and "Figure 1" in text
    assert "87.50 ± 0.71" in text and "87.80" in text and "−0.30" in text
    assert [f.name for f in files] == ["paper_comparison.csv"]
    assert len(pd.read_csv(files[0])) == 2


def test_a_study_the_paper_has_no_numbers_for_gets_no_section(tmp_path) -> None:
    done = runs_frame(_store(tmp_path, dataset="fashion_mnist").rows())
    assert against_paper(done).empty
    assert paper_section(done, tmp_path, "x") == ([], [])


def test_a_malformed_data_file_is_a_file_format_error(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables:\n  - name: t\n    columns: [dense, erk 0.9]\n    rows: {resnet20: [1.0]}\n")
    with pytest.raises(FileFormatError, match="malformed"):
        paper_results(str(bad))
