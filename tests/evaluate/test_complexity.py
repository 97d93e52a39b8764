"""Parameter counts, MACs of every weight use and checkpoint bytes of dense and masked models."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from randsparse.errors import ConfigError, MaskMismatchError
from randsparse.evaluate import complexity_summary, count_flops, count_params, memory_bytes
from randsparse.models import build
from randsparse.sparsity import MaskSet, layer_densities, plan_sparsity, prunable_shapes


def _small_net() -> nn.Sequential:
    # conv 4·3·3·3 = 108 weights + 4 bias, BN 4 + 4, fc 2·4 = 8 weights + 2 bias: 130 parameters.
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


def _reference_macs(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """MACs by PyTorch's own FLOP counter (2 FLOPs per MAC), an independent oracle."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *input_shape))
    return counter.get_total_flops() / 2


# --- parameters -----------------------------------------------------------------------------------


def test_count_params_of_a_dense_model_splits_total_and_prunable() -> None:
    counts = count_params(_small_net())
    assert (counts.total, counts.prunable, counts.nonzero) == (130, 116, 130)
    assert counts.kept == 116
    assert counts.density == 1.0


def test_count_params_with_masks_counts_kept_weights_and_other_parameters_dense() -> None:
    model = _small_net()
    masks = {"0.weight": torch.zeros(4, 3, 3, 3, dtype=torch.bool), "4.weight": torch.ones(2, 4, dtype=torch.bool)}
    masks["0.weight"].view(-1)[:10] = True
    counts = count_params(model, masks)
    assert counts.prunable == 116
    assert counts.kept == 10 + 8
    assert counts.nonzero == 18 + (130 - 116)
    assert counts.sparsity == pytest.approx(1 - 18 / 116)


def test_count_params_without_masks_uses_actual_nonzero_weights_but_keeps_biases_dense() -> None:
    model = _small_net()
    with torch.no_grad():
        model[0].weight.view(-1)[:50] = 0.0
        model[0].bias.zero_()  # not prunable: still counted as stored
    counts = count_params(model)
    assert counts.nonzero == 130 - 50
    assert counts.kept == 116 - 50


def test_count_params_counts_a_shared_weight_once() -> None:
    shared = nn.Linear(5, 5, bias=False)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    counts = count_params(model)
    assert counts.total == counts.prunable == 25


def test_count_params_of_a_meta_model_without_masks_counts_weights_as_dense() -> None:
    with torch.device("meta"):
        model = build("resnet20")
    counts = count_params(model)
    assert counts.total == 272_474  # the well-known ResNet-20 size (0.27 M), with 1x1-conv shortcuts
    assert counts.nonzero == counts.total


def test_count_params_matches_the_mask_summary_of_a_plan() -> None:
    model = build("resnet20")
    plan = plan_sparsity(model, 0.9, "erk", seed=0)
    counts = count_params(model, plan.masks)
    assert counts.prunable == plan.params
    assert counts.kept == plan.kept


def test_count_params_refuses_masks_that_do_not_fit_the_model() -> None:
    with pytest.raises(MaskMismatchError, match=r"0\.weight"):
        count_params(_small_net(), {"0.weight": torch.ones(4, 3, 3, dtype=torch.bool)})
    with pytest.raises(MaskMismatchError, match="no such parameter"):
        count_params(_small_net(), {"9.weight": torch.ones(1, dtype=torch.bool)})


# --- MACs ------------------------------------------------------------------------------------------


def test_resnet20_has_about_41_million_dense_macs() -> None:
    report = count_flops(build("resnet20"), (3, 32, 32))
    assert report.dense == pytest.approx(41e6, rel=0.01)
    assert report.dense == report.sparse


def test_resnet50_has_about_4_1_giga_dense_macs_counted_on_the_meta_device() -> None:
    with torch.device("meta"):
        model = build("resnet50", num_classes=1000)
    report = count_flops(model, (3, 224, 224))
    assert report.dense == pytest.approx(4.1e9, rel=0.01)


@pytest.mark.parametrize("name", ["resnet20", "resnet32"])
def test_dense_macs_equal_pytorchs_flop_counter(name: str) -> None:
    model = build(name)
    assert count_flops(model, (3, 32, 32)).dense == _reference_macs(model, (3, 32, 32))


def test_conv_macs_are_weights_times_output_positions_for_any_groups_and_dims() -> None:
    cases = [
        (nn.Conv1d(4, 6, 3, padding=1), (4, 10), 6 * 4 * 3 * 10),
        (nn.Conv2d(3, 8, 3, stride=2, padding=1), (3, 9, 9), 8 * 3 * 9 * 25),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), (8, 6, 6), 8 * 1 * 9 * 36),  # depthwise
        (nn.Conv2d(8, 4, 1, groups=2), (8, 5, 5), 4 * 4 * 1 * 25),
        (nn.Conv3d(2, 3, (1, 2, 2)), (2, 4, 5, 5), 3 * 2 * 4 * (4 * 4 * 4)),
        (nn.ConvTranspose2d(4, 2, 2, stride=2), (4, 3, 3), 4 * 2 * 4 * 9),  # per input position
        (nn.Linear(7, 5), (3, 7), 5 * 7 * 3),  # a sequence of 3 vectors
    ]
    for layer, shape, expected in cases:
        report = count_flops(layer, shape)
        assert report.dense == expected, layer
        assert report.dense == _reference_macs(layer, shape), layer
        assert [x.name for x in report.layers] == ["weight"]


@settings(max_examples=15, deadline=None)
@given(sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 1000))
def test_sparse_macs_scale_with_each_layers_density(sparsity: float, seed: int) -> None:
    model = build("resnet20")
    plan = plan_sparsity(model, sparsity, "erk", seed=seed)
    report = count_flops(model, (3, 32, 32), plan.masks)
    for layer in report.layers:
        density = plan.masks[layer.name].float().mean().item()
        assert layer.sparse_macs == pytest.approx(layer.dense_macs * density, rel=1e-6, abs=1)
    assert report.sparse == sum(x.sparse_macs for x in report.layers)
    assert report.sparse <= report.dense


def test_uniform_density_scales_total_macs_by_that_density() -> None:
    model = build("resnet20")
    shapes = prunable_shapes(model)
    densities = layer_densities(shapes, 0.25, "uniform")
    masks = MaskSet.random(shapes, densities, seed=0)
    report = count_flops(model, (3, 32, 32), masks)
    assert report.ratio == pytest.approx(0.25, abs=1e-3)


def test_sparse_macs_without_masks_follow_the_weights_nonzeros() -> None:
    model = _small_net()
    with torch.no_grad():
        model[0].weight.view(-1)[:27] = 0.0  # a quarter of the conv weights
    report = count_flops(model, (3, 6, 6))
    conv = report.layers[0]
    assert conv.name == "0.weight"
    assert conv.dense_macs == 108 * 16
    assert conv.sparse_macs == 81 * 16
    assert report.layers[1] == ("4.weight", 8, 8)


def test_unmasked_layers_count_dense_when_masks_are_given() -> None:
    model = _small_net()
    masks = {"0.weight": torch.zeros(4, 3, 3, 3, dtype=torch.bool)}
    report = count_flops(model, (3, 6, 6), masks)
    assert report.layers[0].sparse_macs == 0
    assert report.layers[1].sparse_macs == report.layers[1].dense_macs == 8


def test_a_layer_called_twice_counts_both_calls_once_listed() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    report = count_flops(Twice(), (4,))
    assert report.layers == [("fc.weight", 32, 32)]


def test_counting_leaves_the_model_untouched() -> None:
    model = build("resnet20")
    model.train()
    model.layer1[0].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops(model, (3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not model.layer1[0].training and model.layer2[0].training
    assert all(not m._forward_hooks for m in model.modules())


def test_a_model_that_cannot_run_on_meta_is_counted_with_a_real_forward() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.fc(x) if float(x.sum()) >= 0 else -self.fc(x)  # needs values

    model = DataDependent()
    assert count_flops(model, (3,)).dense == 6
    assert model.calls.item() == 0


def test_count_flops_rejects_a_malformed_input_shape() -> None:
    for bad in [(), (3, 0, 32), (3.0, 32, 32)]:
        with pytest.raises(ConfigError, match="input_shape"):
            count_flops(_small_net(), bad)


# --- memory ----------------------------------------------------------------------------------------


def test_memory_of_a_dense_model_is_its_state_payload() -> None:
    model = _small_net()
    report = memory_bytes(model)
    payload = 4 * (130 + 4 + 4) + 8  # parameters, BN running mean/var (float32), num_batches_tracked (int64)
    assert report.dense == report.bitmap == report.csr == payload


def test_memory_of_a_masked_model_stores_kept_values_with_a_bitmap_or_csr() -> None:
    model = _small_net()
    conv = torch.zeros(4, 3, 3, 3, dtype=torch.bool)
    conv[0, 0] = True  # 9 weights kept, all in the first of 4 rows
    report = memory_bytes(model, {"0.weight": conv})
    rest = report.dense - 108 * 4
    assert report.bitmap == rest + 9 * 4 + math.ceil(108 / 8)
    assert report.csr == rest + 9 * (4 + 4) + 5 * 4


def test_memory_never_stores_a_masked_tensor_larger_than_dense() -> None:
    model = _small_net()
    report = memory_bytes(model, {"0.weight": torch.ones(4, 3, 3, 3, dtype=torch.bool)})
    assert report.bitmap == report.csr == report.dense


def test_memory_shrinks_with_sparsity_on_resnet20() -> None:
    model = build("resnet20")
    plan = plan_sparsity(model, 0.9, "erk", seed=0)
    dense = memory_bytes(model)
    sparse = memory_bytes(model, plan.masks)
    assert sparse.dense == dense.dense
    assert sparse.bitmap < 0.2 * dense.dense
    assert sparse.csr < sparse.dense


def test_complexity_summary_is_json_ready() -> None:
    import json

    model = build("resnet20")
    plan = plan_sparsity(model, 0.5, "uniform", seed=0)
    summary = complexity_summary(model, (3, 32, 32), plan.masks)
    data = json.loads(json.dumps(summary))
    assert set(data) == {"params", "flops", "memory"}
    assert data["flops"]["sparse_macs"] < data["flops"]["dense_macs"]
    assert data["params"]["kept"] == plan.kept


class _Attention(nn.Module):
    """Self-attention over 5 tokens of width 8 (2 heads), mean-pooled, then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attn(x, x, x)
        return self.head(y.mean(1))


def test_a_weight_used_without_calling_its_module_is_counted_with_its_mask() -> None:
    model = _Attention()
    masks = {"attn.out_proj.weight": torch.arange(64).reshape(8, 8) % 2 == 0}  # half kept
    report = count_flops(model, (5, 8), masks)
    rows = {x.name: x for x in report.layers}
    # MultiheadAttention passes out_proj.weight to F.linear itself: out_proj's forward never runs.
    assert rows["attn.out_proj.weight"] == ("attn.out_proj.weight", 8 * 8 * 5, 8 * 8 * 5 // 2)
    assert rows["attn.in_proj_weight"].dense_macs == 3 * 8 * 8 * 5
    assert rows["head.weight"].dense_macs == 8 * 3


def test_every_weight_multiplication_matches_pytorchs_flop_counter_on_attention() -> None:
    model = _Attention().eval()
    with FlopCounterMode(display=False) as counter:  # with gradients on: no fused fast path
        model(torch.zeros(1, 5, 8))
    attention_products = 2 * (5 * 5 * 8)  # q·kᵀ and weights·v: activations only, no weight
    assert count_flops(model, (5, 8)).dense == counter.get_total_flops() / 2 - attention_products


def test_a_weight_a_parent_uses_through_a_function_is_counted_every_time() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(self.fc(x), self.fc.weight.t()) + x @ self.fc.weight

    assert count_flops(Tied(), (4,)).layers == [("fc.weight", 48, 48)]


def test_the_docs_say_these_are_macs_and_how_they_relate_to_the_papers_flops() -> None:
    import randsparse.evaluate.complexity as complexity

    doc = " ".join((complexity.__doc__ or "").split())
    assert "RigL's" not in doc.split("report *FLOPs*")[0]  # not "RigL's convention": RigL counts FLOPs
    assert "report *FLOPs*, a multiply and an add each, so about 2 × these MACs" in doc
    assert "MACs, not FLOPs" in (complexity.FlopReport.__doc__ or "")
