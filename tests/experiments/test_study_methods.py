"""The method axis of a study: a plain grid over ``sparsity.method``, and linked axes setting several keys together."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from randsparse.errors import ConfigError
from randsparse.experiments import expand, load_study, open_store, run_study, write_report
from tests.experiments._studies import TINY_BASE, unregistered_methods, write_study

ROOT = Path(__file__).resolve().parents[2]
_LTH = {"sparsity.method": "lth", "sparsity.method_options": {"levels": 2, "rewind_step": 1}}


def test_a_plain_grid_over_methods_shares_one_dense_baseline(tmp_path) -> None:
    study, base = load_study(
        write_study(tmp_path / "s.yaml", grid={"sparsity.method": ["static", "lth"], "sparsity": [0.9]})
    )
    specs = expand(study, base)
    assert [(s.is_dense, s.config.sparsity.method) for s in specs] == [
        (True, "static"),
        (False, "static"),
        (False, "lth"),
    ]


def test_a_linked_axis_sets_each_method_with_its_own_options(tmp_path) -> None:
    grid = {"method": [{"sparsity.method": "static"}, _LTH], "sparsity": [0.8, 0.9], "seed": [0, 1]}
    study, base = load_study(write_study(tmp_path / "s.yaml", grid=grid))
    specs = expand(study, base)
    sparse = [s for s in specs if not s.is_dense]
    assert len(sparse) == 2 * 2 * 2 and len([s for s in specs if s.is_dense]) == 2, "one dense run per seed"
    lth = [s for s in sparse if s.config.sparsity.method == "lth"]
    assert len(lth) == 4 and all(s.config.sparsity.method_options == _LTH["sparsity.method_options"] for s in lth)
    static = [s for s in sparse if s.config.sparsity.method == "static"]
    assert all(s.config.sparsity.method_options == {} for s in static), "static gets no lth options"
    assert lth[0].point == {**_LTH, "sparsity": 0.8, "seed": 0}, "the point records the keys the axis set"
    assert len({s.id for s in specs}) == len(specs)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"method": [{"sparsity.method": "nosuch"}]}, "nosuch"),
        ({"method": [{"sparsity.method": "lth", "sparsity.method_options": {"levels": 0}}]}, "levels"),
        ({"method": [{"sparsity.method": "lth", "sparsity.method_options": {"levelz": 2}}]}, "levelz"),
        ({"method": [{"sparsty.method": "lth"}]}, "dotted run-config keys"),
        ({"method": [{}]}, "dotted run-config keys"),
        ({"method": [{"sparsity": 0.5}], "sparsity": [0.9]}, "grid key of its own"),
        ({"method": ["static"]}, "method: unknown key"),
    ],
)
def test_bad_linked_axes_are_one_line_config_errors(tmp_path, grid, message) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": {**TINY_BASE, "sparsity": {"sparsity": 0.9}}, "grid": grid}))
    with pytest.raises(ConfigError, match=message):
        expand(*load_study(path))


def test_the_fmnist_methods_study_is_four_methods_three_sparsities_three_seeds() -> None:
    path = ROOT / "configs/studies/fmnist-methods.yaml"
    missing = unregistered_methods(path)
    if missing:
        pytest.skip(f"methods {missing} are not registered in this checkout (they come with issue 14's dst part)")
    specs = expand(*load_study(path))
    sparse = [s for s in specs if not s.is_dense]
    assert len(sparse) == 4 * 3 * 3 and len(specs) == 4 * 3 * 3 + 3
    assert {s.config.sparsity.method for s in sparse} == {"static", "set", "rigl", "gmp"}
    assert {s.config.sparsity.sparsity for s in sparse} == {0.9, 0.95, 0.98}
    assert {s.config.sparsity.distribution for s in sparse} == {"erk"}
    assert {s.config.seed for s in specs} == {0, 1, 2}
    assert {s.config.data.name for s in specs} == {"fashion_mnist"}
    assert all(
        s.config.sparsity.method_options.get("update_every") == 50
        for s in sparse
        if s.config.sparsity.method != "static"
    )


def test_a_lottery_run_is_one_run_of_a_study_and_the_report_shows_its_method(tmp_path) -> None:
    grid = {"method": [{"sparsity.method": "static"}, _LTH], "sparsity": [0.8]}
    base = {**TINY_BASE, "eval": {"calibration": False, "reliability_diagram": False}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "m", "base": base, "grid": grid, "dense_baselines": False}))
    study, base = load_study(path)
    specs = expand(study, base)
    run_study(study, base, tmp_path / "study", executor="sequential")
    rows = {row.id: row for row in open_store(tmp_path / "study").rows()}
    assert set(rows) == {s.id for s in specs} and {r.status for r in rows.values()} == {"done"}
    lth = next(s for s in specs if s.config.sparsity.method == "lth")
    metrics = rows[lth.id].metrics
    assert metrics["method"] == "lth" and [r["level"] for r in metrics["levels"]] == [0, 1, 2]
    assert (tmp_path / "study/runs" / lth.id / "levels/2/checkpoints/last.pt").is_file()
    write_report(open_store(tmp_path / "study"), tmp_path / "report")
    text = (tmp_path / "report/report.md").read_text()
    assert "## Methods" in text and "| lth" in text
