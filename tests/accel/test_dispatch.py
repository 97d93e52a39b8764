"""Settling: a layer no sparse path wins for is the plain `nn.Linear` / `nn.Conv2d`, never a wrapper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from randsparse.accel import SparseConv2d, SparseLinear, calibrate, dispatch_report, sparse_modules
from randsparse.accel import dispatch as accel_dispatch
from randsparse.accel.bench import build_seeded
from randsparse.accel.export import export_bytes, load, to_sparse
from randsparse.sparsity import plan_sparsity


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    conv, linear = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 25, 5)
    conv_mask = torch.rand(conv.weight.shape) < 0.5
    linear_mask = torch.rand(linear.weight.shape) < 0.5
    with torch.no_grad():
        conv.weight.mul_(conv_mask)
        linear.weight.mul_(linear_mask)
    plain = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear).eval()
    sparse = nn.Sequential(
        SparseConv2d.from_dense(conv, conv_mask), nn.ReLU(), nn.Flatten(), SparseLinear.from_dense(linear, linear_mask)
    )
    return plain, sparse


def _choose(choice: str):
    def measure(candidates: dict, x: torch.Tensor) -> tuple:
        timings = {name: 1.0 for name in candidates}
        return accel_dispatch.Decision((), choice, timings), candidates[choice](x)

    return measure


def test_layers_that_choose_dense_become_the_plain_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    plain, model = _model()
    monkeypatch.setattr(accel_dispatch, "measure_candidates", _choose("dense"))
    x = torch.randn(2, 3, 5, 5)
    report = calibrate(model, x)
    assert type(model[0]) is nn.Conv2d and type(model[3]) is nn.Linear  # no wrapper left
    assert list(sparse_modules(model)) == []
    assert [(r.name, r.choice) for r in report] == [("0", "dense"), ("3", "dense")]
    assert [r.choice for r in dispatch_report(model)] == ["dense", "dense"]
    assert set(model.state_dict()) == set(plain.state_dict())
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-6)


def test_a_settled_layer_is_measured_again_for_a_new_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    _, model = _model()
    monkeypatch.setattr(accel_dispatch, "measure_candidates", _choose("dense"))
    calibrate(model, torch.randn(2, 3, 5, 5))
    monkeypatch.setattr(accel_dispatch, "measure_candidates", _choose("sparse"))
    calibrate(model, torch.randn(7, 3, 5, 5), check_model=False)
    assert isinstance(model[0], SparseConv2d) and isinstance(model[3], SparseLinear)  # sparse at batch 7
    assert sorted(r.key[0] for r in dispatch_report(model)) == [2, 2, 7, 7]


def test_the_whole_model_check_is_against_the_plain_dense_model(monkeypatch: pytest.MonkeyPatch) -> None:
    _, model = _model()
    monkeypatch.setattr(accel_dispatch, "measure_candidates", _choose("sparse"))
    compared: list[nn.Module] = []

    def faster(chosen: nn.Module, example: torch.Tensor) -> bool:
        compared.append(accel_dispatch.plain_copy(chosen))
        return False

    monkeypatch.setattr(accel_dispatch, "_faster_than_plain", faster)
    report = calibrate(model, torch.randn(2, 3, 5, 5))
    assert [type(m) for m in compared[0]] == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]
    assert [r.choice for r in report] == ["dense", "dense"]
    assert type(model[0]) is nn.Conv2d and type(model[3]) is nn.Linear


def test_a_model_loaded_in_dense_mode_has_only_plain_layers() -> None:
    spec = {"name": "mlp", "num_classes": 10, "in_channels": 1, "options": {"image_size": 8, "hidden": 32}}
    model = build_seeded(spec, seed=0)
    masks = plan_sparsity(model, 0.9, "erk", seed=0).masks
    masks.apply_(model)
    loaded = load(export_bytes(model, masks, spec), mode="dense")
    assert list(sparse_modules(loaded)) == []
    assert [type(m) for m in loaded.modules() if isinstance(m, nn.Linear)] == [nn.Linear] * len(masks)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_to_sparse_in_dense_mode_keeps_the_plain_layers_masked() -> None:
    plain, _ = _model()
    masks = {"0.weight": plain[0].weight != 0, "3.weight": plain[3].weight != 0}
    with torch.no_grad():
        plain[0].weight.add_(1.0)  # the copy must be masked again
    dense = to_sparse(plain, masks, mode="dense")
    assert [type(m) for m in dense] == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]
    assert torch.equal(dense[0].weight != 0, masks["0.weight"])
