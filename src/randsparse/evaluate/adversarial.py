"""Adversarial robustness: FGSM and L∞ PGD in [0, 1] pixel units, and robust accuracy per ε.

The attacked model takes raw pixels: the dataset normalisation is its first layer (`Normalize`,
`with_normalization`), so ε means the same thing for every dataset and adversarial images are
clamped to the valid pixel range before normalisation. Attacks run the model in eval mode (BN
uses its running statistics, which stay untouched) and take gradients with respect to the input
only, so no parameter gradient, mask or optimizer state is touched.

Robust accuracy counts an example as robust when the model classifies it correctly both clean and
under attack: the clean image lies in every ε-ball, so robust accuracy never exceeds clean accuracy
(on a given subset), as it must for a worst case over the ball.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from randsparse.errors import ConfigError
from randsparse.evaluate.inference import Data, as_loader, eval_mode, model_device, split_batch, to_device

Bounds = tuple[float, float]


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel (dimension 1), as the first layer of an attacked model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise ConfigError(f"mean and std need one value per channel, got {list(mean)} and {list(std)}")
        if (std_t <= 0).any():
            raise ConfigError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, *([1] * (x.ndim - 2)))
        return (x - self.mean.reshape(shape).to(x.dtype)) / self.std.reshape(shape).to(x.dtype)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixels of normalised `x`: ``x · std + mean``."""
        shape = (1, -1, *([1] * (x.ndim - 2)))
        return x * self.std.reshape(shape).to(x.dtype) + self.mean.reshape(shape).to(x.dtype)


def with_normalization(model: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None) -> nn.Module:
    """`model` behind a `Normalize` layer (on the model's device); `model` itself when mean/std are None."""
    if mean is None and std is None:
        return model
    if mean is None or std is None:
        raise ConfigError("give both mean and std, or neither")
    return nn.Sequential(Normalize(mean, std).to(model_device(model)), model)


def _check_eps(eps: float, bounds: Bounds) -> None:
    if not 0.0 <= eps <= bounds[1] - bounds[0]:
        raise ConfigError(f"ε must lie in [0, {bounds[1] - bounds[0]:g}] (pixel units), got {eps!r}")


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed cross-entropy with respect to `images`, and the logits at `images`.

    Summed (not averaged) so each example's gradient does not depend on the batch size. Only the
    input's gradient is computed: parameters' ``.grad`` and their hooks are never touched.
    """
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        logits = model(x)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach()


def fgsm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    bounds: Bounds = (0.0, 1.0),
    grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al., 2015): ``clamp(x + ε · sign(∇ₓ loss))``.

    `grad` may pass a precomputed `input_gradient` (the same for every ε, so several ε cost one
    backward pass).
    """
    _check_eps(eps, bounds)
    if grad is None:
        with eval_mode(model):
            grad, _ = input_gradient(model, images, labels)
    return (images.detach() + eps * grad.sign()).clamp(*bounds)


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> torch.Tensor:
    """L∞ projected gradient descent (Madry et al., 2018) within the ε-ball and the pixel bounds.

    `step_size` defaults to 2.5·ε/steps. With `random_start`, the start is uniform in the ε-ball,
    drawn from `generator` (a CPU generator; required then, so results are reproducible).
    """
    _check_eps(eps, bounds)
    if steps < 1:
        raise ConfigError(f"PGD needs at least one step, got {steps!r}")
    step = 2.5 * eps / steps if step_size is None else step_size
    if step <= 0 and eps > 0:
        raise ConfigError(f"PGD step size must be positive, got {step!r}")
    clean = images.detach()
    low, high = (clean - eps).clamp(min=bounds[0]), (clean + eps).clamp(max=bounds[1])
    adv = clean.clone()
    if random_start and eps > 0:
        if generator is None:
            raise ConfigError("PGD with a random start needs a torch.Generator (seeded), for reproducible results")
        noise = torch.rand(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
        adv = torch.minimum(torch.maximum(clean + (2 * noise - 1) * eps, low), high)
    with eval_mode(model):
        for _ in range(steps):
            grad, _ = input_gradient(model, adv, labels)
            adv = torch.minimum(torch.maximum(adv + step * grad.sign(), low), high)
    return adv


@dataclass(frozen=True)
class RobustnessResult:
    """Clean and robust accuracy (fractions) on the attacked images, per attack and ε."""

    images: int
    clean: float
    fgsm: dict[float, float] = field(default_factory=dict)
    pgd: dict[float, float] = field(default_factory=dict)


def robust_accuracy(
    model: nn.Module,
    data: Data,
    fgsm_eps: Sequence[float] = (),
    pgd_eps: Sequence[float] = (),
    pgd_steps: int = 10,
    pgd_step_size: Callable[[float], float] | float | None = None,
    pgd_random_start: bool = True,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    bounds: Bounds = (0.0, 1.0),
) -> RobustnessResult:
    """Clean accuracy and robust accuracy under FGSM and PGD at each ε of `model` on raw-pixel `data`.

    `model` must take raw pixels (see `with_normalization`). Per batch, one forward and backward
    pass gives the clean predictions and the FGSM gradient for every ε; each PGD ε runs its own
    iterations. `pgd_step_size` is a step, a function of ε, or None for 2.5·ε/steps.
    """
    device = model_device(model)
    if pgd_eps and pgd_random_start and generator is None:
        raise ConfigError("PGD with a random start needs a torch.Generator (seeded), for reproducible results")
    total = clean_hits = 0
    fgsm_hits = dict.fromkeys(fgsm_eps, 0)
    pgd_hits = dict.fromkeys(pgd_eps, 0)
    with eval_mode(model):
        for batch in as_loader(data, batch_size):
            images, labels = split_batch(batch)
            if labels is None:
                raise ConfigError("robust accuracy needs labelled data")
            images, labels = to_device(images, device), labels.to(device)
            grad, logits = input_gradient(model, images, labels)
            clean_ok = logits.argmax(dim=1) == labels
            total += labels.numel()
            clean_hits += int(clean_ok.sum())
            with torch.no_grad():
                for eps in fgsm_eps:
                    adv = fgsm(model, images, labels, eps, bounds, grad=grad)
                    fgsm_hits[eps] += int((clean_ok & (model(adv).argmax(dim=1) == labels)).sum())
            for eps in pgd_eps:
                step = pgd_step_size(eps) if callable(pgd_step_size) else pgd_step_size
                adv = pgd(model, images, labels, eps, pgd_steps, step, pgd_random_start, generator, bounds)
                with torch.no_grad():
                    pgd_hits[eps] += int((clean_ok & (model(adv).argmax(dim=1) == labels)).sum())
    if total == 0:
        raise ConfigError("cannot attack an empty dataset")
    return RobustnessResult(
        images=total,
        clean=clean_hits / total,
        fgsm={eps: hits / total for eps, hits in fgsm_hits.items()},
        pgd={eps: hits / total for eps, hits in pgd_hits.items()},
    )
