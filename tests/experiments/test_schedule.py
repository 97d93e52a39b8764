"""The order a study starts its runs in: the longest estimated run first, or the grid's order."""

from __future__ import annotations

from typing import Any

import pytest

from randsparse.experiments import ResultsStore, schedule
from randsparse.experiments import runner as study_runner
from randsparse.experiments.executors import Outcome
from randsparse.experiments.schedule import estimated_cost, longest_first
from randsparse.experiments.study import expand, load_study
from tests.experiments._studies import write_study


def _specs(tmp_path, grid: dict[str, list[Any]], **fields: Any):
    study, base = load_study(write_study(tmp_path / "s.yaml", grid=grid, **fields))
    return study, base, expand(study, base)


def test_wider_models_start_first_and_equal_costs_keep_the_grid_order(tmp_path) -> None:
    _, _, specs = _specs(tmp_path, {"model.width": [0.5, 1.0, 2.0], "sparsity": [0.5, 0.9]})
    order = longest_first(specs)
    widths = [next(s for s in specs if s.id == i).config.model.width for i in order]
    assert widths == sorted(widths, reverse=True)
    assert order[:3] == [s.id for s in specs if s.config.model.width == 2.0]  # the grid's order among equals


def test_the_cost_grows_with_epochs_images_and_lottery_levels(tmp_path) -> None:
    _, _, specs = _specs(
        tmp_path,
        {"epochs": [1, 2], "sparsity": [0.9], "sparsity.method": ["static", "lth"]},
        dense_baselines=False,
    )
    cost = {(s.config.epochs, s.config.sparsity.method): estimated_cost(s) for s in specs}
    assert cost[(2, "static")] > cost[(1, "static")]
    # lth trains levels + 1 = 4 times (its default 3 levels): 3 more trainings of 1 epoch; one test pass.
    one_epoch = cost[(2, "static")] - cost[(1, "static")]
    assert cost[(1, "lth")] - cost[(1, "static")] == pytest.approx(3 * one_epoch)
    _, _, subset = _specs(tmp_path, {"data.subset": [128, 512]}, dense_baselines=False)
    assert estimated_cost(subset[1]) > 2 * estimated_cost(subset[0])


def test_a_run_whose_cost_cannot_be_estimated_keeps_the_whole_grid_order(tmp_path, monkeypatch) -> None:
    _, _, specs = _specs(tmp_path, {"model.width": [0.5, 1.0]})
    real = schedule.count_flops

    def failing(model, shape, masks=None):
        if sum(p.numel() for p in model.parameters()) > 2000:
            raise RuntimeError("cannot run on meta")
        return real(model, shape, masks)

    monkeypatch.setattr(schedule, "count_flops", failing)
    assert longest_first(specs) == [s.id for s in specs]


def test_claim_takes_the_best_ranked_pending_run(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.sync([(f"run{i}", {}, {}) for i in range(4)], {})
    priority = {"run2": 0, "run0": 1}
    assert [store.claim("h:1", priority).id for _ in range(4)] == ["run2", "run0", "run1", "run3"]
    assert store.claim("h:1", priority) is None


class _RecordingExecutor:
    """Two slots; every run 'finishes' at once; records the order runs were submitted in."""

    slots = 2

    def __init__(self) -> None:
        self.started: list[str] = []
        self._outcomes: dict[int, Outcome] = {}

    def submit(self, run_id: str, config: dict[str, Any], run_dir: str) -> int:
        self.started.append(run_id)
        self._outcomes[len(self.started)] = Outcome(run_id, "done", {"test_accuracy": 0.5}, None, 0.0)
        return len(self.started)

    def wait(self, handles: list[int], timeout: float) -> list[tuple[int, Outcome]]:
        return [(h, self._outcomes.pop(h)) for h in handles]

    def shutdown(self) -> None:
        pass

    def interrupt(self) -> None:
        pass


@pytest.mark.parametrize("order", ["longest_first", "grid"])
def test_the_study_starts_its_runs_in_the_order_it_asks_for(tmp_path, order) -> None:
    study, base, specs = _specs(tmp_path, {"model.width": [0.5, 1.0, 2.0]}, order=order)
    engine = _RecordingExecutor()
    status = study_runner._drive(study, base, tmp_path / "out", specs, engine, False, None, 0.01)
    assert status.counts["done"] == len(specs)
    expected = longest_first(specs) if order == "longest_first" else [s.id for s in specs]
    assert engine.started == expected
    assert longest_first(specs) != [s.id for s in specs]  # the test means something: the two orders differ


def test_an_unknown_order_is_refused_in_one_message(tmp_path) -> None:
    from randsparse.errors import ConfigError

    with pytest.raises(ConfigError, match="order"):
        load_study(write_study(tmp_path / "s.yaml", order="shortest"))
