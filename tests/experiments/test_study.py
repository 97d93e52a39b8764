"""Study files and their expansion into run specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from randsparse.errors import ConfigError
from randsparse.experiments import expand, load_study
from tests.experiments._studies import TINY_BASE, unregistered_methods, write_study

ROOT = Path(__file__).resolve().parents[2]


def test_grid_expands_to_the_product_plus_one_dense_baseline_per_size(tmp_path) -> None:
    study, base = load_study(write_study(tmp_path / "s.yaml"))
    specs = expand(study, base)
    sparse = [s for s in specs if not s.is_dense]
    dense = [s for s in specs if s.is_dense]
    assert len(sparse) == 2 * 2 * 2
    assert sorted(s.config.model.width for s in dense) == [0.5, 1.0]
    assert len({s.id for s in specs}) == len(specs) == 10
    assert specs[0].is_dense, "a size's dense baseline comes before its sparse runs"
    first = sparse[0]
    assert first.point == {"model.width": 0.5, "sparsity": 0.5, "sparsity.distribution": "erk"}
    assert (first.config.sparsity.sparsity, first.config.sparsity.distribution) == (0.5, "erk")


def test_expansion_is_stable_and_ids_are_config_hashes(tmp_path) -> None:
    path = write_study(tmp_path / "s.yaml")
    once = [s.id for s in expand(*load_study(path))]
    again = [s.id for s in expand(*load_study(path))]
    assert once == again


def test_a_dense_grid_point_is_its_own_baseline(tmp_path) -> None:
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"sparsity": [0.0, 0.9]}))
    specs = expand(study, base)
    assert [s.config.sparsity.sparsity for s in specs] == [0.0, 0.9]


def test_no_baselines_when_turned_off(tmp_path) -> None:
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5]}, dense_baselines=False))
    assert [s.config.sparsity.sparsity for s in expand(study, base)] == [0.5]


def test_base_config_file_is_read_relative_to_the_study_and_overridden(tmp_path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs/base.yaml").write_text(yaml.safe_dump({**TINY_BASE, "epochs": 4}))
    study_file = tmp_path / "studies/s.yaml"
    study_file.parent.mkdir()
    study_file.write_text(
        yaml.safe_dump({"base_config": "../runs/base.yaml", "base": {"optim": {"lr": 0.01}}, "grid": {"seed": [0, 1]}})
    )
    study, base = load_study(study_file, overrides=["epochs=2"])
    specs = expand(study, base)
    assert {s.config.optim.lr for s in specs} == {0.01}
    assert {s.config.optim.momentum for s in specs} == {0.9}, "sections are merged, not replaced"
    assert {s.config.epochs for s in specs} == {2}
    assert sorted(s.config.seed for s in specs) == [0, 1]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grid": {"optim.lrr": [0.1]}}, "optim.lrr: unknown key"),
        ({"grid": {"sparsity": [1.5]}}, "sparsity.sparsity"),
        ({"grid": {"seed": []}}, "no values"),
        ({"gird": {}}, "gird: unknown key"),
    ],
)
def test_invalid_studies_are_config_errors_naming_the_problem(tmp_path, fields, message) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": TINY_BASE, **fields}))
    with pytest.raises(ConfigError, match=message):
        expand(*load_study(path))


@pytest.mark.parametrize("preset", sorted((ROOT / "configs/studies").rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_study_preset_expands(preset: Path) -> None:
    if unregistered_methods(preset):  # fmnist-methods before SET/RigL/GMP are merged in
        pytest.skip(f"{preset.name} names methods not registered in this checkout: {unregistered_methods(preset)}")
    study, base = load_study(preset)
    specs = expand(study, base)
    assert len(specs) == len({s.id for s in specs}) > 1


def test_quickstart_is_three_widths_two_sparsities_two_rules_and_dense_baselines() -> None:
    study, base = load_study(ROOT / "configs/studies/quickstart.yaml")
    specs = expand(study, base)
    assert len(specs) == 3 * 2 * 2 + 3
    assert {s.config.data.name for s in specs} == {"fashion_mnist"}
    assert {s.config.model.width for s in specs} == {0.25, 0.5, 1.0}
    assert {s.config.sparsity.distribution for s in specs if not s.is_dense} == {"erk", "uniform"}


@pytest.mark.parametrize("name", ["quickstart", "fmnist-reproduction"])
def test_the_main_studies_test_all_three_claims(name: str) -> None:
    """Width (claim 1), ERK and uniform at 90 % (claim 2), OOD, calibration and FGSM at two ε (claim 3)."""
    study, base = load_study(ROOT / f"configs/studies/{name}.yaml")
    specs = expand(study, base)
    assert len({s.config.model.width for s in specs}) >= 3
    assert {(s.config.sparsity.sparsity, s.config.sparsity.distribution) for s in specs} >= {
        (0.9, "erk"),
        (0.9, "uniform"),
    }
    for spec in specs:
        assert {"digits", "gaussian", "uniform"} <= set(spec.config.eval.ood) and spec.config.eval.calibration
        assert spec.config.eval.ood_if_present == ["mnist"]
        assert len(spec.config.eval.fgsm) == 2
    if name == "fmnist-reproduction":
        assert {s.config.seed for s in specs} == {0, 1, 2}
        assert {s.config.data.subset for s in specs} == {30000}  # 3x the quickstart's training images
        quickstart = expand(*load_study(ROOT / "configs/studies/quickstart.yaml"))

        def cell(spec):  # a run's grid point, less the seed and the training budget
            return spec.config.model.width, spec.config.sparsity.sparsity, spec.config.sparsity.distribution

        assert {cell(s) for s in quickstart} <= {cell(s) for s in specs}  # the quickstart is a corner of it


@pytest.mark.parametrize(
    ("grid", "message"),
    [({"model.name": ["nonet"]}, "unknown model 'nonet'"), ({"sparsity.distribution": ["bogus"]}, "bogus")],
)
def test_unknown_model_or_distribution_in_a_grid_fails_at_expansion(tmp_path, grid, message) -> None:
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5], **grid}))
    with pytest.raises(ConfigError, match=message):
        expand(study, base)
