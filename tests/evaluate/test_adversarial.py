"""FGSM and PGD: analytic perturbation on a linear model, valid pixel range, ε-ball, untouched model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from randsparse.errors import ConfigError
from randsparse.evaluate import Normalize, fgsm, pgd, robust_accuracy, with_normalization
from randsparse.sparsity import attach, plan_sparsity


def _linear(seed: int = 0, features: int = 12, classes: int = 3) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(features, classes)


def _images(count: int = 16, features: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, features, generator=generator), torch.randint(0, 3, (count,), generator=generator)


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(32, 4),
    )


def test_normalize_is_per_channel_and_inverts() -> None:
    layer = Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor([0.5, 0.25, 0.0])[:, None, None]) / torch.tensor([0.5, 0.25, 2.0])[:, None, None]
    assert torch.allclose(layer(x), expected)
    assert torch.allclose(layer.inverse(layer(x)), x, atol=1e-6)


def test_with_normalization_puts_the_normalisation_inside_the_model() -> None:
    model = _small_cnn().eval()
    wrapped = with_normalization(model, [0.4, 0.5, 0.6], [0.2, 0.3, 0.4])
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(wrapped(x), model(Normalize([0.4, 0.5, 0.6], [0.2, 0.3, 0.4])(x)))
    assert with_normalization(model, None, None) is model
    with pytest.raises(ConfigError, match="both"):
        with_normalization(model, [0.5], None)
    with pytest.raises(ConfigError, match="positive"):
        Normalize([0.5], [0.0])


def test_fgsm_on_a_linear_model_equals_the_analytic_perturbation() -> None:
    model = _linear()
    images, labels = _images()
    eps = 0.05
    # d/dx CE(Wx + b, y) = Wᵀ (softmax(Wx + b) − onehot(y))
    probs = torch.softmax(model(images), dim=1).detach()
    grad = (probs - F.one_hot(labels, 3).float()) @ model.weight.detach()
    expected = (images + eps * grad.sign()).clamp(0, 1)
    assert torch.equal(fgsm(model, images, labels, eps), expected)


def test_fgsm_through_normalisation_perturbs_raw_pixels_in_the_same_direction() -> None:
    model = _linear()
    images, labels = _images()
    mean, std = [0.3] * 12, [0.2] * 12
    attacked = with_normalization(model, mean, std)
    normalized = (images - 0.3) / 0.2
    probs = torch.softmax(model(normalized), dim=1).detach()
    grad = (probs - F.one_hot(labels, 3).float()) @ model.weight.detach() / 0.2  # chain rule through 1/std
    expected = (images + 0.1 * grad.sign()).clamp(0, 1)
    assert torch.equal(fgsm(attacked, images, labels, 0.1), expected)


@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0.0, 1.0), seed=st.integers(0, 100))
def test_attacks_stay_in_the_pixel_range_and_the_eps_ball(eps: float, seed: int) -> None:
    model = _linear(seed)
    images, labels = _images(seed=seed)
    images[0] = 0.0  # pixels on the bounds must stay inside them
    images[1] = 1.0
    generator = torch.Generator().manual_seed(seed)
    for adv in [fgsm(model, images, labels, eps), pgd(model, images, labels, eps, steps=3, generator=generator)]:
        assert adv.min() >= 0.0 and adv.max() <= 1.0
        assert (adv - images).abs().max() <= eps + 1e-6


def test_pgd_is_reproducible_with_a_seeded_generator_and_needs_one_for_a_random_start() -> None:
    model = _linear()
    images, labels = _images()
    first = pgd(model, images, labels, 0.1, steps=5, generator=torch.Generator().manual_seed(3))
    second = pgd(model, images, labels, 0.1, steps=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    with pytest.raises(ConfigError, match="Generator"):
        pgd(model, images, labels, 0.1)
    no_start = pgd(model, images, labels, 0.1, random_start=False)
    assert torch.equal(no_start, pgd(model, images, labels, 0.1, random_start=False))


def test_one_pgd_step_without_random_start_is_fgsm() -> None:
    model = _linear()
    images, labels = _images()
    one_step = pgd(model, images, labels, 0.07, steps=1, step_size=0.07, random_start=False)
    assert torch.equal(one_step, fgsm(model, images, labels, 0.07))


def test_pgd_raises_the_loss_at_least_as_much_as_fgsm_on_average() -> None:
    model = _small_cnn().eval()
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(32, 3, 8, 8, generator=generator), torch.randint(0, 4, (32,), generator=generator)
    loss = lambda x: F.cross_entropy(model(x), labels).item()  # noqa: E731
    strong = pgd(model, images, labels, 0.05, steps=20, generator=generator)
    assert loss(strong) >= loss(fgsm(model, images, labels, 0.05)) > loss(images)


def test_attack_parameters_out_of_range_are_refused() -> None:
    model = _linear()
    images, labels = _images()
    with pytest.raises(ConfigError, match="ε"):
        fgsm(model, images, labels, 1.5)
    with pytest.raises(ConfigError, match="step"):
        pgd(model, images, labels, 0.1, steps=0, random_start=False)


def _separable_task(count: int = 200) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A linear model that is right on every image, with margins an ε of 0.2 can cross."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 12, generator=generator)
    model = nn.Linear(12, 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.ones(12), -torch.ones(12)]))
        model.bias.copy_(torch.tensor([-6.0, 6.0]))  # class 0 iff sum(x) > 6
    labels = (images.sum(1) < 6).long()
    return model, images, labels


def test_robust_accuracy_drops_with_eps_and_never_exceeds_clean_accuracy() -> None:
    model, images, labels = _separable_task()
    data = torch.utils.data.TensorDataset(images, labels)
    result = robust_accuracy(
        model, data, fgsm_eps=[0.0, 0.02, 0.2], pgd_eps=[0.02, 0.2], generator=torch.Generator().manual_seed(0)
    )
    assert result.images == 200 and result.clean == 1.0
    assert result.fgsm[0.0] == result.clean
    assert result.fgsm[0.2] < result.fgsm[0.02] <= result.clean
    assert result.pgd[0.2] <= result.pgd[0.02] <= result.clean
    assert result.pgd[0.2] < 0.5


class _Periodic(nn.Module):
    """Logits (cos 20x, 0) of a scalar pixel x: a large FGSM step can overshoot into a right answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.cos(20 * x[:, 0]), torch.zeros(x.shape[0])], dim=1)


def test_robust_accuracy_counts_an_example_only_when_it_is_right_clean_too() -> None:
    model = _Periodic()
    images, labels = torch.tensor([[0.1]]), torch.tensor([0])  # cos(2) < 0: wrong when clean
    adversarial = fgsm(model, images, labels, 0.25)  # the loss rises with x: x → 0.35, cos(7) > 0
    assert model(images).argmax(1).item() == 1 and model(adversarial).argmax(1).item() == 0
    result = robust_accuracy(model, torch.utils.data.TensorDataset(images, labels), fgsm_eps=[0.25])
    assert result.clean == 0.0 and result.fgsm[0.25] == 0.0


def test_attacks_leave_the_model_bn_statistics_masks_and_gradients_untouched() -> None:
    model = _small_cnn()
    plan = plan_sparsity(model, 0.8, "uniform", seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    attach(model, plan.masks, optimizer)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(20, 3, 8, 8, generator=generator), torch.randint(0, 4, (20,)))
    robust_accuracy(model, data, fgsm_eps=[0.03], pgd_eps=[0.03], pgd_steps=3, generator=generator, batch_size=8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for name, mask in plan.masks.items():
        assert (model.get_parameter(name)[~mask] == 0).all()


def test_robust_accuracy_needs_labels_and_a_generator_for_random_starts() -> None:
    model, images, labels = _separable_task(8)
    with pytest.raises(ConfigError, match="labelled"):
        robust_accuracy(model, torch.utils.data.TensorDataset(images), fgsm_eps=[0.1])
    with pytest.raises(ConfigError, match="Generator"):
        robust_accuracy(model, torch.utils.data.TensorDataset(images, labels), pgd_eps=[0.1])
