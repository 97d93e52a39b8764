"""Accuracy and calibration of a classifier's logits: top-k, ECE, MCE, NLL, Brier, reliability diagram.

ECE and MCE use `bins` equal-width confidence bins ``[i/B, (i+1)/B)``, the last one closed
(``[1 - 1/B, 1]``), computed in float64 from the same bins the reliability diagram draws, so the
number and the picture always agree. They equal torchmetrics' ``multiclass_calibration_error``
(``norm="l1"`` / ``"max"``) to its float32 precision; the one difference is that torchmetrics gives
a confidence of exactly 1.0 (after its float32 cast) a bin of its own. NLL is the mean
cross-entropy; the Brier score is the squared error of the probability vector summed over classes
and averaged over examples (range [0, 2]).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from randsparse.errors import ConfigError, is_integer
from randsparse.evaluate.record import MetricRecord
from randsparse.storage import atomic_write_bytes


@dataclass(frozen=True)
class CalibrationResult(MetricRecord):
    """Calibration numbers of one set of predictions (lower is better for all)."""

    ece: float
    mce: float
    nll: float
    brier: float


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin mean confidence, accuracy and example count over equal-width confidence bins."""

    edges: torch.Tensor  # (bins + 1,)
    confidence: torch.Tensor  # (bins,), 0 where a bin is empty
    accuracy: torch.Tensor  # (bins,), 0 where a bin is empty
    count: torch.Tensor  # (bins,), int64

    @property
    def ece(self) -> float:
        """Count-weighted mean |accuracy − confidence| over the bins."""
        total = int(self.count.sum())
        weights = self.count.double() / max(total, 1)
        return float((weights * (self.accuracy - self.confidence).abs()).sum())

    @property
    def mce(self) -> float:
        """Largest |accuracy − confidence| over the non-empty bins."""
        return float((self.accuracy - self.confidence).abs()[self.count > 0].max())


def _check(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"expected (N, classes) scores and (N,) labels, got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if scores.shape[0] == 0:
        raise ConfigError("cannot evaluate an empty set of predictions")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ConfigError(
            f"labels must lie in [0, {scores.shape[1] - 1}] for {scores.shape[1]} classes,"
            f" got [{int(labels.min())}, {int(labels.max())}]"
        )


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of examples whose label is among the `k` largest logits (ties broken by index)."""
    _check(logits, labels)
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return float(hits.double().mean())


def _check_bins(bins: int) -> None:
    if not is_integer(bins) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE: count-weighted mean |accuracy − confidence| over `bins` equal-width confidence bins."""
    return reliability_bins(probs, labels, bins).ece


def maximum_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """MCE: the largest |accuracy − confidence| over the non-empty confidence bins."""
    return reliability_bins(probs, labels, bins).mce


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over examples of Σ_k (p_k − 1[k = label])², in [0, 2]."""
    _check(probs, labels)
    target = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return float(((probs - target) ** 2).sum(dim=1).mean())


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy of the softmax of `logits` (computed from logits: no log of a rounded 0)."""
    _check(logits, labels)
    return float(F.cross_entropy(logits.double(), labels))


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> CalibrationResult:
    """ECE, MCE, NLL and Brier score of `logits` (N × classes) against `labels` (N)."""
    _check(logits, labels)
    probs = torch.softmax(logits.double(), dim=1)
    return CalibrationResult(
        ece=expected_calibration_error(probs, labels, bins),
        mce=maximum_calibration_error(probs, labels, bins),
        nll=negative_log_likelihood(logits, labels),
        brier=brier_score(probs, labels),
    )


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> ReliabilityBins:
    """Bin the top-1 confidences into `bins` equal-width bins (last one closed) with accuracy and count."""
    _check(probs, labels)
    _check_bins(bins)
    confidence, predicted = probs.double().max(dim=1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, bins - 1)
    count = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, index, confidence)
    acc_sum = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, index, correct)
    denominator = count.clamp(min=1)
    return ReliabilityBins(edges, conf_sum / denominator, acc_sum / denominator, count.long())


def reliability_diagram(
    logits: torch.Tensor, labels: torch.Tensor, path: str | Path, bins: int = 15, title: str | None = None
) -> Path:
    """Write a reliability diagram (accuracy per confidence bin, with a confidence histogram) as a PNG.

    Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display needed);
    the file is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    probs = torch.softmax(logits.double(), dim=1)
    binned = reliability_bins(probs, labels, bins)
    ece = binned.ece
    edges = binned.edges.numpy()
    width = edges[1] - edges[0]
    left = edges[:-1]
    accuracy = binned.accuracy.numpy()
    confidence = binned.confidence.numpy()
    count = binned.count.numpy()
    filled = count > 0

    figure = Figure(figsize=(5, 6), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(left[filled], accuracy[filled], width=width, align="edge", edgecolor="black", label="accuracy")
    gap_low = [min(a, c) for a, c in zip(accuracy[filled], confidence[filled], strict=True)]
    gap = abs(accuracy[filled] - confidence[filled])
    top.bar(left[filled], gap, bottom=gap_low, width=width, align="edge", color="tab:red", alpha=0.3, label="gap")
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(title or f"Reliability diagram (ECE {ece:.4f}, {bins} bins)")
    top.legend(loc="upper left")
    bottom.bar(left, count / max(count.sum(), 1), width=width, align="edge", edgecolor="black", color="tab:gray")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("fraction")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
