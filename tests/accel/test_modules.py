"""Sparse modules: equal to the masked dense layers in every dispatch mode, and the dispatch rule."""

from __future__ import annotations

import copy
import pickle
import time

import pytest
import torch
from torch import nn

from randsparse.accel import SparseConv2d, SparseLinear, calibrate, dispatch_report, set_dispatch
from randsparse.accel import dispatch as accel_dispatch
from randsparse.errors import ConfigError

TOLERANCE = 1e-5


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _masked(layer: nn.Module, density: float, seed: int = 0) -> torch.Tensor:
    mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(seed)) < density
    with torch.no_grad():
        layer.weight.mul_(mask)
    return mask


@pytest.mark.parametrize("mode", ["dense", "sparse", "auto"])
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_equals_masked_linear(mode: str, batch: int, bias: bool) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(50, 33, bias=bias)
    mask = _masked(layer, 0.2)
    sparse = SparseLinear.from_dense(layer, mask, mode=mode)
    x = torch.randn(batch, 50)
    with torch.no_grad():
        assert _rel(sparse(x), layer(x)) < TOLERANCE
        assert _rel(sparse._torch_sparse(x), layer(x)) < TOLERANCE


def test_sparse_linear_takes_any_leading_dims_and_transposed_inputs() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(20, 7)
    sparse = SparseLinear.from_dense(layer, _masked(layer, 0.3), mode="sparse")
    x = torch.randn(2, 5, 20)
    xt = torch.randn(20, 6).t()  # as a previous SparseLinear hands it over
    with torch.no_grad():
        assert sparse(x).shape == (2, 5, 7)
        assert _rel(sparse(x), layer(x)) < TOLERANCE
        assert _rel(sparse(xt), layer(xt)) < TOLERANCE


def test_an_all_pruned_row_outputs_its_bias() -> None:
    layer = nn.Linear(8, 3)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1] = False
    with torch.no_grad():
        layer.weight.mul_(mask)
    sparse = SparseLinear.from_dense(layer, mask, mode="sparse")
    with torch.no_grad():
        out = sparse(torch.randn(4, 8))
    assert torch.allclose(out[:, 1], layer.bias[1].expand(4))


CONVS = [
    dict(in_channels=3, out_channels=16, kernel_size=3, padding=1),
    dict(in_channels=16, out_channels=32, kernel_size=3, stride=2, padding=1),
    dict(in_channels=16, out_channels=32, kernel_size=1, stride=2),
    dict(in_channels=8, out_channels=8, kernel_size=3, padding=2, dilation=2, groups=2),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), bias=True),
    dict(in_channels=64, out_channels=16, kernel_size=3, padding=1),
    dict(in_channels=8, out_channels=8, kernel_size=7, stride=3, padding=3),
]


@pytest.mark.parametrize("config", CONVS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("mode", ["dense", "sparse"])
@pytest.mark.parametrize(("batch", "size"), [(1, 9), (5, 16), (2, 2)])
def test_sparse_conv_equals_masked_conv(config: dict, mode: str, batch: int, size: int) -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(**{"bias": False, **config})
    mask = _masked(layer, 0.3)
    sparse = SparseConv2d.from_dense(layer, mask, mode=mode)
    x = torch.randn(batch, config["in_channels"], size, size + 3)
    with torch.no_grad():
        assert _rel(sparse(x), layer(x)) < TOLERANCE


def test_sparse_conv_accepts_unbatched_input_and_many_images_per_tile() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(5, 4, 3, padding=1)
    sparse = SparseConv2d.from_dense(layer, _masked(layer, 0.5), mode="sparse")
    with torch.no_grad():
        x = torch.randn(5, 4, 4)
        assert _rel(sparse(x), layer(x)) < TOLERANCE
        x = torch.randn(70, 5, 3, 3)  # whole images share a tile
        assert _rel(sparse(x), layer(x)) < TOLERANCE


def test_sparse_conv_refuses_non_zero_padding_modes() -> None:
    layer = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ConfigError, match="reflect"):
        SparseConv2d.from_dense(layer, torch.ones_like(layer.weight, dtype=torch.bool))


def test_autograd_inputs_take_the_dense_path_and_get_gradients() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3, padding=1)
    sparse = SparseConv2d.from_dense(layer, _masked(layer, 0.5), mode="sparse")
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    sparse(x).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    layer(reference).sum().backward()
    assert torch.allclose(x.grad, reference.grad, atol=1e-6)
    assert sparse.decisions == {}


def test_auto_measures_once_per_input_shape_and_reports_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5))
    conv_mask = _masked(model[0], 0.1)
    linear_mask = _masked(model[3], 0.1)
    model[0] = SparseConv2d.from_dense(model[0], conv_mask)
    model[3] = SparseLinear.from_dense(model[3], linear_mask)
    x = torch.randn(4, 3, 6, 6)
    report = calibrate(model, x)
    assert [(r.name, r.kind, r.key) for r in report] == [("0", "conv2d", (4, 6, 6)), ("3", "linear", (4,))]
    for record in report:
        assert record.choice in record.timings_ms
        assert set(record.timings_ms) >= {"dense", "sparse"}
    calibrate(model, x)
    assert len(dispatch_report(model)) == 2  # same shape: no new measurement
    calibrate(model, torch.randn(1, 3, 6, 6))
    assert len(dispatch_report(model)) == 4


class _FakeClock:
    """perf_counter stand-in advanced by the fake candidates, so the dispatch rule is tested exactly."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def candidate(self, cost: float):
        def run(x: torch.Tensor) -> torch.Tensor:
            self.now += cost
            return x

        return run


@pytest.mark.parametrize(
    ("dense", "sparse", "expected"),
    [(1.0, 0.5, "sparse"), (1.0, 0.96, "dense"), (1.0, 1.5, "dense"), (1.0, 0.94, "sparse")],
)
def test_a_sparse_kernel_must_beat_dense_by_the_margin_to_be_chosen(
    monkeypatch: pytest.MonkeyPatch, dense: float, sparse: float, expected: str
) -> None:
    clock = _FakeClock()
    monkeypatch.setattr(accel_dispatch.time, "perf_counter", clock.perf_counter)
    decision, _ = accel_dispatch.measure_candidates(
        {"dense": clock.candidate(dense), "sparse": clock.candidate(sparse)}, torch.zeros(1)
    )
    assert decision.choice == expected
    assert decision.timings_ms == pytest.approx({"dense": 1e3 * dense, "sparse": 1e3 * sparse})


def test_set_dispatch_switches_every_layer_and_refuses_unknown_modes() -> None:
    layer = nn.Linear(4, 4)
    model = nn.Sequential(SparseLinear.from_dense(layer, torch.ones(4, 4, dtype=torch.bool)))
    set_dispatch(model, "dense")
    assert model[0].mode == "dense"
    with pytest.raises(ConfigError, match="fast"):
        set_dispatch(model, "fast")


def test_sparse_modules_survive_deepcopy_and_pickle() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3, padding=1)
    sparse = SparseConv2d.from_dense(layer, _masked(layer, 0.4), mode="sparse")
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        expected = sparse(x)
        for clone in (copy.deepcopy(sparse), pickle.loads(pickle.dumps(sparse))):
            assert torch.equal(clone(x), expected)


def test_sparse_modules_store_only_the_kept_weights() -> None:
    layer = nn.Conv2d(16, 16, 3)
    mask = _masked(layer, 0.1)
    sparse = SparseConv2d.from_dense(layer, mask)
    assert sparse.nnz == int(mask.sum())
    assert sparse.density == pytest.approx(int(mask.sum()) / mask.numel())
    assert torch.equal(sparse.dense_weight(), layer.weight.detach())


def test_calibrate_falls_back_to_dense_when_the_chosen_layers_slow_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = nn.Linear(8, 4)
    model = nn.Sequential(SparseLinear.from_dense(layer, torch.ones(4, 8, dtype=torch.bool)))
    sparse = model[0]

    def always_sparse(candidates: dict, x: torch.Tensor) -> tuple:
        return accel_dispatch.Decision((), "sparse", {"dense": 1.0, "sparse": 0.1}), candidates["sparse"](x)

    def slow_sparse(x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.003)
        return sparse._dense(x)

    monkeypatch.setattr(accel_dispatch, "measure_candidates", always_sparse)
    monkeypatch.setattr(sparse, "_sparse", slow_sparse)
    x = torch.randn(2, 8)
    assert [r.choice for r in calibrate(model, x, check_model=False)] == ["sparse"]
    sparse.set_mode("auto")
    assert [r.choice for r in calibrate(model, x)] == ["dense"]
