"""OOD scores and detection metrics: hand-computed cases, rank-only behaviour, the score registry."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from randsparse.errors import ConfigError, UnknownNameError
from randsparse.evaluate import available_ood_scores, ood_metrics, ood_score, register_ood_score
from randsparse.evaluate import ood as ood_module


def _pairwise_auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """AUROC as P(in > out) + ½ P(in = out), from every pair: an independent oracle."""
    diff = scores_in[:, None] - scores_out[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def test_perfectly_separated_scores_give_auroc_one_and_no_false_positives() -> None:
    metrics = ood_metrics(torch.arange(10.0, 20.0), torch.arange(0.0, 10.0))
    assert metrics.auroc == 1.0
    assert metrics.aupr_in == 1.0
    assert metrics.aupr_out == 1.0
    assert metrics.fpr95 == 0.0


def test_reversed_scores_give_auroc_zero_and_every_ood_example_accepted() -> None:
    metrics = ood_metrics(torch.arange(0.0, 10.0), torch.arange(10.0, 20.0))
    assert metrics.auroc == 0.0
    assert metrics.fpr95 == 1.0


def test_identical_distributions_give_auroc_near_one_half() -> None:
    generator = torch.Generator().manual_seed(0)
    metrics = ood_metrics(torch.randn(5000, generator=generator), torch.randn(5000, generator=generator))
    assert metrics.auroc == pytest.approx(0.5, abs=0.02)
    assert metrics.fpr95 == pytest.approx(0.95, abs=0.02)


def test_all_tied_scores_give_auroc_exactly_one_half() -> None:
    metrics = ood_metrics(torch.ones(7), torch.ones(5))
    assert metrics.auroc == 0.5
    assert metrics.fpr95 == 1.0


def test_fpr_at_95_tpr_of_a_hand_computed_case() -> None:
    # 95 % of the 20 in-distribution scores 1..20 are >= 2; of the OOD scores 2.5, 10.5 and 30 are too.
    scores_in = torch.arange(1.0, 21.0)
    scores_out = torch.tensor([0.5, 1.5, 2.5, 10.5, 30.0])
    assert ood_metrics(scores_in, scores_out).fpr95 == pytest.approx(3 / 5)


def test_aupr_in_and_out_of_a_hand_computed_case() -> None:
    # Ranked by score: 5 (out), 4 (in), 3 (in), 2.5 (out), 1 (out).
    metrics = ood_metrics(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.5, 5.0]))
    assert metrics.aupr_in == pytest.approx((1 / 2 + 2 / 3) / 2)  # precision at each in-distribution hit
    assert metrics.aupr_out == pytest.approx((1 + 1 + 3 / 5) / 3)  # OOD first, by negated score
    assert metrics.auroc == pytest.approx(4 / 6)


@settings(max_examples=30, deadline=None)
@given(
    scores_in=st.lists(st.integers(-5, 5), min_size=1, max_size=40),
    scores_out=st.lists(st.integers(-5, 5), min_size=1, max_size=40),
)
def test_auroc_equals_the_pairwise_probability_with_ties(scores_in: list[int], scores_out: list[int]) -> None:
    s_in, s_out = torch.tensor(scores_in, dtype=torch.float64), torch.tensor(scores_out, dtype=torch.float64)
    assert ood_metrics(s_in, s_out).auroc == pytest.approx(
        _pairwise_auroc(s_in, s_out), abs=1e-6
    )  # torchmetrics: float32


def test_metrics_depend_only_on_the_order_of_scores_even_when_large() -> None:
    # Energy scores of tens: a sigmoid would squash them all to 1.0 in float32 and tie them.
    generator = torch.Generator().manual_seed(1)
    scores_in = 30 + torch.rand(200, generator=generator)
    scores_out = 29.5 + torch.rand(200, generator=generator)
    shifted = ood_metrics(scores_in, scores_out)
    reference = ood_metrics(scores_in - 30, scores_out - 30)
    assert shifted == reference
    assert shifted.auroc == pytest.approx(_pairwise_auroc(scores_in, scores_out), abs=1e-6)
    assert 0.7 < shifted.auroc < 0.95


def test_ood_metrics_refuse_empty_or_non_finite_scores() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        ood_metrics(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ConfigError, match="finite"):
        ood_metrics(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_scores_are_msp_max_logit_and_negative_energy() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(ood_score("msp", logits), torch.softmax(logits.double(), 1).max(1).values)
    assert ood_score("max_logit", logits).tolist() == [2.0, 0.0]
    assert torch.allclose(ood_score("energy", logits), torch.logsumexp(logits.double(), 1))
    assert torch.allclose(ood_score("energy", logits, temperature=2.0), 2 * torch.logsumexp(logits.double() / 2, 1))
    assert ood_score("msp", logits)[1] == pytest.approx(1 / 3)


def test_confident_logits_score_higher_than_flat_ones_for_every_score() -> None:
    confident, flat = torch.tensor([[8.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    for name in available_ood_scores():
        assert ood_score(name, confident) > ood_score(name, flat), name


def test_unknown_score_names_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="energy"):
        ood_score("odin", torch.zeros(2, 3))


def test_a_registered_score_is_available_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ood_module, "_SCORES", ood_module._SCORES.copy())

    @register_ood_score("min_logit")
    def min_logit(logits: torch.Tensor, **_: float) -> torch.Tensor:
        return logits.min(dim=1).values

    assert "min_logit" in available_ood_scores()
    assert ood_score("min_logit", torch.tensor([[1.0, -2.0]])).item() == -2.0
    with pytest.raises(ValueError, match="already registered"):
        register_ood_score("min_logit")(min_logit)
