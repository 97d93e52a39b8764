"""Saliency scorers against known answers: SNIP by hand, GraSP by finite differences, SynFlow's conservation law."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from randsparse.errors import ConfigError, UnknownNameError
from randsparse.models import build
from randsparse.sparsity import compute_scores, masks_from_scores, prunable_parameters
from randsparse.sparsity.masks import kept_count
from randsparse.sparsity.saliency import available_scorers, balanced_sample, scorer_options


def _init_(model: nn.Module, seed: int) -> nn.Module:
    """Redraw every parameter from a private generator (tests never rely on the global RNG)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.5)
    return model


def _labelled(count: int, shape: tuple[int, ...], classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn((count, *shape), generator=generator)
    labels = torch.arange(count) % classes
    return inputs, labels[torch.randperm(count, generator=generator)]


# ---------------------------------------------------------------------------------------------
# SNIP


def _snip_by_hand(layer: nn.Linear, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """|dL/dW * W| for softmax cross-entropy: dL/dW = (softmax(Wx + b) - onehot)^T x / N, averaged over batches."""
    total = torch.zeros_like(layer.weight)
    for x, y in batches:
        probs = torch.softmax(x @ layer.weight.T + layer.bias, dim=1)
        total += (probs - F.one_hot(y, layer.out_features).to(x.dtype)).T @ x / x.shape[0]
    return (total / len(batches) * layer.weight).abs().detach()


def test_snip_on_a_linear_model_is_gradient_times_weight_by_hand() -> None:
    layer = _init_(nn.Linear(4, 3).double(), 0)
    x, y = _labelled(5, (4,), 3)
    scores = compute_scores("snip", layer, (x.double(), y))
    assert list(scores) == ["weight"]
    torch.testing.assert_close(scores["weight"], _snip_by_hand(layer, [(x.double(), y)]), rtol=1e-12, atol=1e-14)


def test_snip_averages_the_gradient_over_the_requested_number_of_batches() -> None:
    layer = _init_(nn.Linear(4, 3).double(), 1)
    batches = [
        tuple(t.double() if t.is_floating_point() else t for t in _labelled(6, (4,), 3, seed)) for seed in range(3)
    ]
    scores = compute_scores("snip", layer, batches, num_batches=2)
    torch.testing.assert_close(scores["weight"], _snip_by_hand(layer, batches[:2]), rtol=1e-12, atol=1e-14)


def test_snip_reinit_xavier_normal_scores_a_redrawn_copy_reproducibly() -> None:
    """The paper's SNIP code redraws the scoring copy from Xavier-normal: the scores then depend on
    the seed, not on the model's own weights, and the model itself is left untouched."""
    x, y = _labelled(8, (4,), 3)
    first, second = _init_(nn.Linear(4, 3), 0), _init_(nn.Linear(4, 3), 1)
    with torch.no_grad():
        second.bias.copy_(first.bias)
    before = first.weight.detach().clone()
    redrawn = compute_scores("snip", first, (x, y), seed=5, reinit="xavier_normal")
    torch.testing.assert_close(redrawn, compute_scores("snip", second, (x, y), seed=5, reinit="xavier_normal"))
    assert torch.equal(first.weight, before)
    assert not torch.equal(redrawn["weight"], compute_scores("snip", first, (x, y), seed=5)["weight"])
    assert not torch.equal(
        redrawn["weight"], compute_scores("snip", first, (x, y), seed=6, reinit="xavier_normal")["weight"]
    )
    assert compute_scores("snip", first, (x, y), reinit="none")["weight"].equal(
        compute_scores("snip", first, (x, y))["weight"]
    )
    with pytest.raises(ConfigError, match="reinit must be one of none, xavier_normal"):
        compute_scores("snip", first, (x, y), reinit="kaiming")


def test_snip_warns_when_the_data_holds_fewer_batches_than_asked(caplog) -> None:
    layer = _init_(nn.Linear(4, 3), 2)
    with caplog.at_level(logging.WARNING):
        compute_scores("snip", layer, [_labelled(6, (4,), 3)], num_batches=3)
    assert "1 batch(es), fewer than the 3" in caplog.text


# ---------------------------------------------------------------------------------------------
# GraSP


def _tiny_tanh_net(seed: int) -> nn.Module:
    return _init_(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double(), seed)


def _loss_gradient(model: nn.Module, weights: dict[str, torch.Tensor], x, y, temperature: float) -> dict:
    """Gradient of the tempered cross-entropy with respect to `weights` (the other parameters fixed)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    leaves = {n: w.detach().requires_grad_(True) for n, w in weights.items()}
    logits = torch.func.functional_call(model, {**params, **leaves}, (x,))
    loss = F.cross_entropy(logits / temperature, y)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


@pytest.mark.parametrize("temperature", [200.0, 1.0])
def test_grasp_is_weight_times_a_finite_difference_hessian_gradient_product(temperature: float) -> None:
    model = _tiny_tanh_net(3)
    x, y = _labelled(6, (3,), 3, seed=4)
    x = x.double()
    weights = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    g = _loss_gradient(model, weights, x, y, temperature)
    norm = math.sqrt(sum(float((v**2).sum()) for v in g.values()))
    eps = 1e-4 / norm
    plus = _loss_gradient(model, {n: w + eps * g[n] for n, w in weights.items()}, x, y, temperature)
    minus = _loss_gradient(model, {n: w - eps * g[n] for n, w in weights.items()}, x, y, temperature)
    hessian_gradient = {n: (plus[n] - minus[n]) / (2 * eps) for n in weights}

    scores = compute_scores("grasp", model, (x, y), temperature=temperature, samples_per_class=2)
    for name, weight in weights.items():
        expected = weight * hessian_gradient[name]  # = -(GraSP's score -w * Hg)
        scale = float(expected.abs().max())
        torch.testing.assert_close(scores[name], expected, rtol=1e-5, atol=1e-6 * scale)


def test_grasp_removes_the_weights_with_the_highest_grasp_score() -> None:
    model = _tiny_tanh_net(5)
    x, y = _labelled(6, (3,), 3, seed=6)
    scores = compute_scores("grasp", model, (x.double(), y), temperature=1.0, samples_per_class=2)
    grasp_score = torch.cat([-s.reshape(-1) for s in scores.values()])  # S = -w * Hg, as in the paper
    keep = 10
    masks = masks_from_scores(scores, keep / grasp_score.numel(), allow_collapse=True)
    kept = torch.cat([m.reshape(-1) for m in masks.values()])
    order = torch.argsort(grasp_score, descending=True)
    assert not kept[order[: grasp_score.numel() - keep]].any()  # the highest S are removed
    assert kept[order[grasp_score.numel() - keep :]].all()


def test_grasp_in_chunks_equals_grasp_in_one_pass_without_batch_norm() -> None:
    model = _tiny_tanh_net(7)
    x, y = _labelled(9, (3,), 3, seed=8)
    data = (x.double(), y)
    whole = compute_scores("grasp", model, data, samples_per_class=3, temperature=1.0, batch_size=64)
    chunked = compute_scores("grasp", model, data, samples_per_class=3, temperature=1.0, batch_size=2)
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-9, atol=1e-14)


def test_grasp_reads_100_classes_from_the_model_on_cifar100_shaped_data() -> None:
    model = _init_(build("small_cnn", num_classes=100, width=0.25), 9)
    x, y = _labelled(200, (3, 32, 32), 100, seed=10)
    dataset = TensorDataset(x, y)
    scores = compute_scores("grasp", model, dataset, samples_per_class=1, seed=1)
    assert set(scores) == set(prunable_parameters(model))
    assert all(bool(torch.isfinite(s).all()) for s in scores.values())
    assert all(bool((s != 0).any()) for s in scores.values())
    with pytest.raises(ConfigError, match="outside the 10 classes"):
        compute_scores("grasp", model, dataset, samples_per_class=1, num_classes=10)


def test_grasp_runs_on_imagenet_shaped_input(caplog) -> None:
    model = _init_(build("small_cnn", num_classes=1000, width=0.25), 11)
    x, y = _labelled(3, (3, 224, 224), 1000, seed=12)
    with caplog.at_level(logging.WARNING):
        scores = compute_scores("grasp", model, (x, y), samples_per_class=1)
    assert "997 of 1000 classes" in caplog.text  # it looked for all 1000 classes, not ten
    assert scores["classifier.weight"].shape == (1000, 16)
    assert all(bool(torch.isfinite(s).all()) for s in scores.values())


def test_balanced_sample_takes_the_same_number_of_each_class() -> None:
    x, y = _labelled(200, (2,), 7, seed=13)
    sample_x, sample_y = balanced_sample(TensorDataset(x, y), num_classes=7, per_class=5, seed=0)
    assert torch.bincount(sample_y, minlength=7).tolist() == [5] * 7
    assert sample_x.shape == (35, 2)
    for row, label in zip(sample_x, sample_y, strict=True):  # every input travels with its own label
        assert bool(((x == row).all(dim=1) & (y == label)).any())


def test_balanced_sample_of_a_dataset_depends_on_the_seed_only() -> None:
    dataset = TensorDataset(*_labelled(200, (2,), 4, seed=14))
    first = balanced_sample(dataset, 4, 3, seed=1)[0]
    assert torch.equal(first, balanced_sample(dataset, 4, 3, seed=1)[0])
    assert not torch.equal(first, balanced_sample(dataset, 4, 3, seed=2)[0])


# ---------------------------------------------------------------------------------------------
# SynFlow


def _positive_linear_net(seed: int, relu: bool) -> nn.Module:
    layers: list[nn.Module] = []
    for fan_in, fan_out in [(5, 7), (7, 4), (4, 3)]:
        layers += [nn.Linear(fan_in, fan_out, bias=False)] + ([nn.ReLU()] if relu else [])
    return _init_(nn.Sequential(*layers[: -1 if relu else None]), seed)


@pytest.mark.parametrize("relu", [False, True])
def test_synflow_conserves_the_flow_every_layer_scores_the_same_total(relu: bool) -> None:
    model = _positive_linear_net(15, relu)
    scores = compute_scores("synflow", model, input_shape=(5,), density=1.0, rounds=1)
    sums = [float(s.sum()) for s in scores.values()]
    weights = [w.detach().double().abs() for w in prunable_parameters(model).values()]
    flow = float(
        torch.ones(1, 5, dtype=torch.float64)
        @ weights[0].T
        @ weights[1].T
        @ weights[2].T
        @ torch.ones(3, 1, dtype=torch.float64)
    )
    assert sums == pytest.approx([flow] * 3, rel=1e-12)


def test_synflow_scores_in_float64_where_float32_overflows() -> None:
    generator = torch.Generator().manual_seed(16)
    model = nn.Sequential(*[nn.Linear(32, 32, bias=False) for _ in range(60)])
    with torch.no_grad():
        for layer in model:
            layer.weight.copy_(torch.randn(32, 32, generator=generator) * math.sqrt(2 / 32))
    flow32 = torch.ones(1, 32)
    for layer in model:
        flow32 = flow32 @ layer.weight.detach().abs().T
    assert math.isinf(float(flow32.sum()))  # the same flow in float32 overflows
    scores = compute_scores("synflow", model, input_shape=(32,), density=0.5, rounds=2)
    assert all(s.dtype == torch.float64 and bool(torch.isfinite(s).all()) for s in scores.values())


def test_synflow_prunes_iteratively_on_an_exponential_schedule() -> None:
    model = _init_(build("mlp", depth=2, hidden=32, image_size=4, in_channels=1), 17)
    total = sum(p.numel() for p in prunable_parameters(model).values())
    density, rounds = 0.05, 4
    scores = compute_scores("synflow", model, input_shape=(1, 4, 4), density=density, rounds=rounds)
    alive = sum(int((s > 0).sum()) for s in scores.values())
    before_last = kept_count(density ** ((rounds - 1) / rounds), total)
    assert kept_count(density, total) < alive <= before_last  # only the last round's survivors score > 0
    masks = masks_from_scores(scores, density, allow_collapse=True)
    assert masks.num_kept() == kept_count(density, total)


def test_synflow_keeps_a_layer_of_small_weights_that_magnitude_pruning_removes() -> None:
    model = _positive_linear_net(18, relu=True)
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    magnitude = masks_from_scores(compute_scores("magnitude", model), 0.3, allow_collapse=True)
    assert int(magnitude["2.weight"].sum()) == 0
    synflow = compute_scores("synflow", model, input_shape=(5,), density=0.3, rounds=10)
    assert all(int(m.sum()) > 0 for m in masks_from_scores(synflow, 0.3, allow_collapse=True).values())


def test_synflow_takes_the_input_shape_from_the_data_when_not_given() -> None:
    model = _init_(build("mlp", depth=1, hidden=8, image_size=4, in_channels=1), 19)
    data = TensorDataset(*_labelled(3, (1, 4, 4), 2))
    from_data = compute_scores("synflow", model, data, density=0.5, rounds=3)
    explicit = compute_scores("synflow", model, input_shape=(1, 4, 4), density=0.5, rounds=3)
    for name in explicit:
        assert torch.equal(from_data[name], explicit[name])


# ---------------------------------------------------------------------------------------------
# Every scorer


def test_magnitude_is_the_absolute_weight() -> None:
    model = _init_(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)), 20)
    scores = compute_scores("magnitude", model)
    assert torch.equal(scores["0.weight"], model[0].weight.detach().abs())
    assert list(scores) == ["0.weight", "1.weight"]


class _DropoutCNN(nn.Module):
    """Conv-BN-ReLU, dropout, linear: batch statistics and a random layer, to catch any state change."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


_OPTIONS = {"snip": {}, "grasp": {"samples_per_class": 2}, "synflow": {"density": 0.3, "rounds": 3}, "magnitude": {}}


@pytest.mark.parametrize("method", sorted(_OPTIONS))
def test_scoring_leaves_the_model_and_the_global_rng_as_they_were(method: str) -> None:
    model = _init_(_DropoutCNN(), 21)
    model.fc.weight.requires_grad_(False)
    dataset = TensorDataset(*_labelled(20, (3, 8, 8), 5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    scores = compute_scores(method, model, dataset, input_shape=(3, 8, 8), seed=4, **_OPTIONS[method])
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    assert set(scores) == {"conv.weight", "fc.weight"}
    again = compute_scores(method, model, dataset, input_shape=(3, 8, 8), seed=4, **_OPTIONS[method])
    assert all(torch.equal(scores[n], again[n]) for n in scores)  # deterministic: no dropout, own generator


def test_scores_are_on_the_cpu_with_the_weights_shapes() -> None:
    model = _init_(build("small_cnn", width=0.25), 22)
    for method in available_scorers():
        scores = compute_scores(method, model, _labelled(8, (3, 8, 8), 10), **_OPTIONS[method])
        for name, weight in prunable_parameters(model).items():
            assert scores[name].shape == weight.shape and scores[name].device.type == "cpu", (method, name)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unknown_scorer_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="snip") as info:
        compute_scores("snipp", nn.Linear(2, 2))
    assert info.value.known == available_scorers()


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        ("snip", {}, "snip scores need labelled data"),
        ("grasp", {}, "grasp scores need labelled data"),
        ("snip", {"data": "x", "temperature": 2.0}, r"scorer 'snip' does not take option\(s\) temperature"),
        ("synflow", {}, "needs option\\(s\\) density"),
        ("synflow", {"density": 0.5}, "input shape"),
        ("synflow", {"density": 0.5, "input_shape": (3, 0)}, "input_shape"),
        ("synflow", {"density": 0.0, "input_shape": (3,)}, "density"),
        ("snip", {"data": [(torch.ones(2, 3), torch.tensor([0.5, 1.0]))]}, "integer class indices"),
        ("snip", {"data": [(torch.ones(2, 3), torch.tensor([0, 7]))]}, "label 7 lies outside"),
        ("snip", {"data": [torch.ones(2, 3)]}, "\\(inputs, labels\\) pairs"),
        ("snip", {"data": [], "num_batches": 1}, "no batch"),
        ("snip", {"data": [(torch.ones(2, 3), torch.tensor([0, 1]))], "num_batches": 0}, "num_batches"),
        ("grasp", {"data": (torch.ones(2, 3), torch.tensor([0, 1])), "temperature": -1.0}, "temperature"),
    ],
)
def test_bad_scorer_input_is_a_config_error(method: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compute_scores(method, nn.Linear(3, 3), **kwargs)


def test_a_model_on_the_meta_device_cannot_be_scored() -> None:
    with torch.device("meta"):
        model = nn.Linear(3, 3)
    with pytest.raises(ConfigError, match="meta device"):
        compute_scores("magnitude", model)


def test_a_model_without_logits_cannot_be_scored_by_snip() -> None:
    with pytest.raises(ConfigError, match="logits"):
        compute_scores("snip", nn.Conv2d(1, 2, 1), (torch.ones(2, 1, 3, 3), torch.tensor([0, 1])))


def test_scorer_options_list_what_each_scorer_takes() -> None:
    assert scorer_options("snip") == ["num_batches", "batch_size", "reinit"]
    assert scorer_options("grasp") == ["temperature", "samples_per_class", "num_classes", "batch_size"]
    assert scorer_options("synflow") == ["density", "rounds"]
    assert scorer_options("magnitude") == []
