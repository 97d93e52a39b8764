"""Accuracy and calibration: hand-computed ECE/MCE/NLL/Brier, agreement with torchmetrics, the diagram."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error

from randsparse.errors import ConfigError
from randsparse.evaluate import (
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    reliability_diagram,
    topk_accuracy,
)

# Confidences 0.9 (twice, one right), 0.7 (right), 0.62 (right): with 15 bins of width 1/15 they
# fall in bins 13, 13, 10 and 9, away from every bin edge.
HAND_PROBS = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.62, 0.38]], dtype=torch.float64)
HAND_LABELS = torch.tensor([0, 1, 1, 0])


def test_ece_of_a_hand_built_set() -> None:
    expected = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.7) + 1 / 4 * abs(1 - 0.62)
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS) == pytest.approx(expected)
    assert expected == pytest.approx(0.37)


def test_mce_of_a_hand_built_set_is_the_worst_bin_gap() -> None:
    assert maximum_calibration_error(HAND_PROBS, HAND_LABELS) == pytest.approx(0.4)


def test_brier_score_of_a_hand_built_set() -> None:
    per_example = [0.1**2 * 2, 0.9**2 * 2, 0.3**2 * 2, 0.38**2 * 2]
    assert brier_score(HAND_PROBS, HAND_LABELS) == pytest.approx(sum(per_example) / 4)


def test_nll_is_the_mean_negative_log_probability_of_the_label() -> None:
    expected = -(math.log(0.9) + math.log(0.1) + math.log(0.7) + math.log(0.62)) / 4
    assert negative_log_likelihood(HAND_PROBS.log(), HAND_LABELS) == pytest.approx(expected)


def test_a_calibrated_set_has_zero_ece_and_mce() -> None:
    probs = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert maximum_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_fewer_bins_can_only_hide_miscalibration() -> None:
    # One bin pools 0.9-confident errors with 0.62-confident hits: the gaps partly cancel.
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, bins=1) < expected_calibration_error(
        HAND_PROBS, HAND_LABELS
    )


@pytest.mark.parametrize("bins", [1, 10, 15, 30])
def test_ece_and_mce_equal_torchmetrics(bins: int) -> None:
    generator = torch.Generator().manual_seed(bins)
    logits = 3 * torch.randn(2000, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (2000,), generator=generator)
    probs = torch.softmax(logits, dim=1)
    assert probs.max() < 1.0  # torchmetrics bins a confidence of exactly 1 apart; not at stake here
    for norm, ours in [("l1", expected_calibration_error), ("max", maximum_calibration_error)]:
        reference = float(multiclass_calibration_error(probs, labels, num_classes=10, n_bins=bins, norm=norm))
        assert ours(probs, labels, bins) == pytest.approx(reference, abs=1e-6)  # torchmetrics is float32
    result = calibration_metrics(logits, labels, bins)
    assert result.ece == pytest.approx(expected_calibration_error(probs, labels, bins), abs=1e-12)


def test_calibration_metrics_bundle_the_four_numbers() -> None:
    result = calibration_metrics(HAND_PROBS.log(), HAND_LABELS)
    assert result.ece == pytest.approx(0.37)
    assert result.mce == pytest.approx(0.4)
    assert set(result.to_dict()) == {"ece", "mce", "nll", "brier"}


def test_reliability_bins_count_every_example_once_with_confidence_one_in_the_last_bin() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.6, 0.4], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    binned = reliability_bins(probs, labels, bins=4)
    assert binned.count.tolist() == [0, 0, 1, 2]
    assert binned.accuracy[3] == 1.0 and binned.confidence[3] == 1.0
    assert binned.accuracy[2] == 0.0 and binned.confidence[2] == pytest.approx(0.6)
    assert binned.edges[0] == 0.0 and binned.edges[-1] == 1.0


@pytest.mark.parametrize("k", [1, 3, 5])
def test_topk_accuracy_equals_torchmetrics(k: int) -> None:
    generator = torch.Generator().manual_seed(k)
    logits = torch.randn(300, 10, generator=generator)
    labels = torch.randint(0, 10, (300,), generator=generator)
    expected = float(multiclass_accuracy(logits, labels, num_classes=10, average="micro", top_k=k))
    assert topk_accuracy(logits, labels, k) == pytest.approx(expected)


def test_top1_accuracy_of_a_hand_built_set() -> None:
    assert topk_accuracy(HAND_PROBS, HAND_LABELS) == 0.75


def test_malformed_predictions_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="labels must lie"):
        expected_calibration_error(HAND_PROBS, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ConfigError, match="expected"):
        brier_score(HAND_PROBS[:, 0], HAND_LABELS)
    with pytest.raises(ConfigError, match="empty"):
        calibration_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ConfigError, match="bins"):
        expected_calibration_error(HAND_PROBS, HAND_LABELS, bins=0)


def test_reliability_diagram_writes_a_png(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 10, generator=generator)
    labels = torch.randint(0, 10, (200,), generator=generator)
    path = reliability_diagram(logits, labels, tmp_path / "plots" / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
