"""Out-of-distribution detection: scores from logits (a registry) and the detection metrics.

Every score is "higher = more in-distribution". The metrics treat the in-distribution set as the
positive class unless said otherwise:

- AUROC: area under the ROC curve of in-distribution (positive) vs OOD;
- AUPR-in: average precision with in-distribution positive, ranked by the score;
- AUPR-out: average precision with OOD positive, ranked by the negated score;
- FPR@95: the fraction of OOD examples accepted at the threshold that accepts 95 % of the
  in-distribution examples (score ≥ threshold), the smallest such FPR on the ROC curve.

AUROC, AP and the ROC curve are torchmetrics'. Those functions squash inputs outside [0, 1] with a
sigmoid, which in float32 ties large scores (an energy of 20 and of 25 both become 1.0); the scores
are therefore replaced by their ranks scaled into [0, 1] first, which keeps every order and tie
and so changes none of the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from randsparse.errors import ConfigError
from randsparse.evaluate.record import MetricRecord
from randsparse.registry import Registry

OodScore = Callable[..., torch.Tensor]

_SCORES: Registry[OodScore] = Registry("OOD score")


def register_ood_score(name: str) -> Callable[[OodScore], OodScore]:
    """Decorator adding a score ``f(logits, **options) -> (N,)`` (higher = in-distribution)."""

    return _SCORES.decorator(name)


def available_ood_scores() -> list[str]:
    """Names of every registered OOD score, sorted."""
    return _SCORES.names()


@register_ood_score("msp")
def max_softmax(logits: torch.Tensor, **_: float) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017)."""
    return torch.softmax(logits.double(), dim=1).max(dim=1).values


@register_ood_score("max_logit")
def max_logit(logits: torch.Tensor, **_: float) -> torch.Tensor:
    """Largest logit (Hendrycks et al., 2022)."""
    return logits.double().max(dim=1).values


@register_ood_score("energy")
def negative_energy(logits: torch.Tensor, temperature: float = 1.0, **_: float) -> torch.Tensor:
    """Negative free energy ``T · logsumexp(logits / T)`` (Liu et al., 2020): high in distribution."""
    return temperature * torch.logsumexp(logits.double() / temperature, dim=1)


def ood_score(name: str, logits: torch.Tensor, **options: float) -> torch.Tensor:
    """Score `logits` (N × classes) with the registered score `name`."""
    score = _SCORES[name]
    if logits.ndim != 2:
        raise ConfigError(f"expected (N, classes) logits, got shape {tuple(logits.shape)}")
    return score(logits, **options)


@dataclass(frozen=True)
class OodMetrics(MetricRecord):
    """Detection quality of one score on one in-distribution / OOD pair."""

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr95: float


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Dense ranks of `scores` scaled into [0, 1] (float64): same order, same ties."""
    unique, inverse = torch.unique(scores, sorted=True, return_inverse=True)
    return inverse.double() / max(unique.numel() - 1, 1)


def ood_metrics(scores_in: torch.Tensor, scores_out: torch.Tensor) -> OodMetrics:
    """AUROC, AUPR-in, AUPR-out and FPR@95 of separating `scores_in` (positive) from `scores_out`."""
    scores_in, scores_out = scores_in.reshape(-1), scores_out.reshape(-1)
    if scores_in.numel() == 0 or scores_out.numel() == 0:
        raise ConfigError("OOD metrics need at least one in-distribution and one OOD score")
    if not (torch.isfinite(scores_in).all() and torch.isfinite(scores_out).all()):
        raise ConfigError("OOD scores must be finite (check the model's logits for NaN or inf)")
    ranked = _ranks(torch.cat([scores_in, scores_out]).double())
    is_in = torch.cat([torch.ones(scores_in.numel()), torch.zeros(scores_out.numel())]).long()
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_roc

    fpr, tpr, _ = binary_roc(ranked, is_in)
    # Compare counts, not rates: 0.95 · n need not be exact in floating point.
    true_positives = (tpr.double() * scores_in.numel()).round()
    needed = math.ceil(round(0.95 * scores_in.numel(), 9))
    return OodMetrics(
        auroc=float(binary_auroc(ranked, is_in)),
        aupr_in=float(binary_average_precision(ranked, is_in)),
        aupr_out=float(binary_average_precision(1.0 - ranked, 1 - is_in)),
        fpr95=float(fpr[true_positives >= needed].min()),
    )
