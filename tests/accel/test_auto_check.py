"""Engine auto's whole-model check: it keeps the fastest set of sparse layers and leaves the run untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from randsparse.accel import auto_check
from randsparse.accel.auto_check import check_auto
from randsparse.accel.dispatch import Decision
from randsparse.accel.engine import engaged, engine_report, repack, use_engine
from randsparse.sparsity import attach, plan_sparsity


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.5)
        self.fc1 = nn.Linear(16 * 8 * 8, 64)
        self.fc2 = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.flatten(F.relu(self.bn(self.conv(x))), 1))
        return self.fc2(F.relu(self.fc1(x)))


def _auto_net() -> nn.Module:
    torch.manual_seed(0)
    net = _Net()
    attach(net, plan_sparsity(net, sparsity=0.9, distribution="uniform", seed=0).masks)
    use_engine(net, "auto")
    return net


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 5, (8,), generator=gen)


def _fake_timing(monkeypatch, choice: str, own: dict[str, float] | None = None) -> None:
    """Every layer chooses sparse on its own (with speed-up `own[name]`); the whole model says `choice`."""

    def measure(candidates, x):
        for run in candidates.values():
            run(x)
        return Decision((), "sparse", {"dense": 2.0, "sparse": 1.0}), None

    def whole(candidates, x):
        for run in candidates.values():
            run(x)
        return Decision((), choice, {name: 1.0 for name in candidates}), None

    from randsparse.accel import engine

    monkeypatch.setattr(engine, "measure_candidates", measure)
    monkeypatch.setattr(auto_check, "measure_candidates", whole)
    if own is not None:
        monkeypatch.setattr(auto_check, "_own_speedup", lambda state: own[state.name])


@pytest.mark.parametrize(
    ("choice", "sparse_after"), [("dense", set()), ("auto", {"conv", "fc1", "fc2"}), ("strong", {"fc1"})]
)
def test_the_check_keeps_the_fastest_set_of_sparse_layers(monkeypatch, choice: str, sparse_after: set) -> None:
    _fake_timing(monkeypatch, choice, own={"conv": 1.1, "fc1": 3.0, "fc2": 1.2})
    net = _auto_net()
    record = check_auto(net, *_batch(), F.cross_entropy)
    assert record is not None and record["choice"] == choice
    assert {name for name, _, state in engaged(net) if not state.forced_dense} == sparse_after
    assert engine_report(net)["whole_model_checks"] == [record]
    net(_batch()[0]).sum().backward()  # the next training forward follows the check
    assert {name for name, _, state in engaged(net) if state.last_choice == "sparse"} == sparse_after


def test_the_check_runs_once_per_batch_shape_and_again_after_a_repack(monkeypatch) -> None:
    _fake_timing(monkeypatch, "dense")
    net = _auto_net()
    x, y = _batch()
    assert check_auto(net, x, y, F.cross_entropy) is not None
    assert check_auto(net, x, y, F.cross_entropy) is None
    assert check_auto(net, x[:4], y[:4], F.cross_entropy) is not None  # another shape
    repack(net)
    assert not any(state.forced_dense for _, _, state in engaged(net))
    assert check_auto(net, x, y, F.cross_entropy) is not None


def test_the_check_leaves_weights_statistics_gradients_and_the_rng_as_they_were() -> None:
    net = _auto_net()
    before = copy.deepcopy(net.state_dict())
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    check_auto(net, *_batch(), F.cross_entropy)
    assert torch.equal(torch.rand(3), expected_draw)  # dropout's draws did not move the RNG
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name  # BatchNorm statistics restored
    assert all(p.grad is None for p in net.parameters())
    assert net.training


def test_a_repeat_check_does_not_walk_the_model_until_the_engine_changes(monkeypatch) -> None:
    """check_auto runs before every training step: after the first, it finds its layers without a model walk."""
    from randsparse.accel import engine

    net = _auto_net()
    x, y = _batch()
    assert check_auto(net, x, y, F.cross_entropy) is not None
    walks = []
    real = engine.engaged
    counting = lambda model: walks.append(1) or real(model)  # noqa: E731
    monkeypatch.setattr(engine, "engaged", counting)
    monkeypatch.setattr(auto_check, "engaged", counting, raising=False)
    assert check_auto(net, x, y, F.cross_entropy) is None
    assert walks == []
    use_engine(net, "auto")  # re-engaged: a fresh list of layers, found by one walk
    assert check_auto(net, x, y, F.cross_entropy) is not None
    assert walks
