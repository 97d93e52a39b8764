"""The report's claim sections: the claim, its table and plot, error bars' data, verdicts that follow the numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from randsparse.experiments import runs_frame, write_report
from randsparse.experiments.claims import (
    CLAIMS,
    CONSISTENT,
    CONTRADICTS,
    INCONCLUSIVE,
    MIXED,
    UNTESTED,
    Metric,
    claim1_verdict,
    claim3_verdict,
    gaps_to_dense,
)
from randsparse.experiments.claims_report import claim_sections
from tests.experiments._claims_store import SEED_NOISE, claims_store, gap


def _report(tmp_path, **kwargs):
    return write_report(claims_store(tmp_path / "results.sqlite", **kwargs), tmp_path / "report")


# Reports draw a dozen plots each: the two the tests read are written once per module.
@pytest.fixture(scope="module")
def supporting(tmp_path_factory):
    return _report(tmp_path_factory.mktemp("supporting"))


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    return _report(tmp_path_factory.mktemp("flipped"), flip=True)


def _sections(text: str) -> dict[int, str]:
    parts = {}
    for claim in (1, 2, 3):
        start = text.index(f"## Claim {claim}:")
        end = text.find("\n## ", start + 1)
        parts[claim] = text[start : end if end > 0 else None]
    return parts


def test_each_claim_has_its_sentence_table_plot_and_a_verdict_line(supporting) -> None:
    report = supporting
    text = (report.out_dir / "report.md").read_text()
    sections = _sections(text)
    for claim, section in sections.items():
        body = section.split("\n\n")
        assert body[1] == CLAIMS[claim]  # opens with the claim in one sentence
        assert "| model size" in section and "seeds" in section  # the table, with the number of seeds
        assert "![claim" in section  # the plot
        assert section.rstrip().splitlines()[-1].startswith("**Verdict:** ")
        assert "(3 seeds)" in section
    names = {p.name for p in report.files}
    assert {"claims.csv", "claim1_gap_vs_width.png", "claim2_erk_minus_uniform.png"} <= names
    assert "claim3_sparse_minus_dense_vs_width.png" in names
    for png in (p for p in report.files if p.name.startswith("claim") and p.suffix == ".png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [v.claim for v in report.verdicts] == [1, 2, 3]


def test_error_bars_are_mean_and_std_over_seeds_of_the_paired_difference(supporting) -> None:
    data = pd.read_csv(supporting.out_dir / "claims.csv")
    claim1 = data[data["claim"] == 1]
    row = claim1[(claim1["width"] == 0.5) & (claim1["sparsity"] == 0.9) & (claim1["distribution"] == "erk")]
    assert len(row) == 1
    spread = [0.001 * seed for seed in SEED_NOISE]  # the sparse runs' seed-dependent part (dense: none)
    assert row["mean"].iloc[0] == pytest.approx((gap(0.5, 0.9, "erk") + sum(spread) / 3) * 100)
    assert row["std"].iloc[0] == pytest.approx(pd.Series(spread).std() * 100)
    assert row["seeds"].iloc[0] == 3
    # claim 2 pairs ERK with uniform of the same seed: the seed spread cancels, std 0
    erk_uniform = data[(data["claim"] == 2) & (data["width"] == 1.0) & (data["sparsity"] == 0.5)]
    assert erk_uniform["mean"].iloc[0] == pytest.approx((gap(1.0, 0.5, "erk") - gap(1.0, 0.5, "uniform")) * 100)
    assert erk_uniform["std"].iloc[0] == pytest.approx(0.0, abs=1e-9)
    # claim 3 has one row per metric and sparse cell, in shown units
    ece = data[(data["claim"] == 3) & (data["metric"] == "ECE")]
    assert len(ece) == 3 * 2 * 2 and ece["mean"].to_numpy() == pytest.approx(-2.0)
    nll = data[(data["claim"] == 3) & (data["metric"] == "NLL")]
    assert nll["mean"].to_numpy() == pytest.approx(-0.05)


def test_verdicts_follow_the_numbers_and_flip_when_the_numbers_do(supporting, flipped) -> None:
    text = (flipped.out_dir / "report.md").read_text()
    supports, flipped = supporting.verdicts, flipped.verdicts
    assert [v.outcome for v in supports] == [CONSISTENT] * 3
    assert [v.outcome for v in flipped] == [CONTRADICTS] * 3
    assert "shrinks from −7.1 to −1.7" in supports[0].text and "width grows ×4" in supports[0].text
    assert "widens" in flipped[0].text and "contradicts claim 1" in flipped[0].text
    assert "ERK beats uniform" in supports[1].text and "uniform beats ERK" in flipped[1].text
    assert "ECE −2.0 (better)" in supports[2].text and "ECE +2.0 (worse)" in flipped[2].text
    assert "**Verdict:** " + flipped[0].text in text


def test_one_seed_has_no_error_estimate_and_says_so(tmp_path) -> None:
    frame = runs_frame(claims_store(tmp_path / "results.sqlite", seeds=(0,)).rows())
    lines, _, verdicts = claim_sections(frame, tmp_path, "one seed", plots=False)
    assert all("1 seed, no error estimate" in v.text for v in verdicts)
    data = pd.read_csv(tmp_path / "claims.csv")
    assert data["std"].isna().all() and (data["seeds"] == 1).all()
    assert sum(line.startswith("**Verdict:**") for line in lines) == 3


def _gaps(means: dict[float, float], std: float) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"size": f"m ×{w}", "width": w, "depth": None, "variant": "", "sparsity": 0.9, "distribution": "erk",
             "mean": m, "std": std, "seeds": 3}
            for w, m in means.items()
        ]
    )  # fmt: skip


def test_a_change_within_the_noise_is_inconclusive_and_outside_it_counts() -> None:
    noisy = claim1_verdict(_gaps({1.0: -0.05, 4.0: -0.02}, std=0.05), "width")  # 3 points ± 4 (2 SE)
    assert noisy.outcome == INCONCLUSIVE and "within noise" in noisy.text
    clear = claim1_verdict(_gaps({1.0: -0.05, 4.0: -0.02}, std=0.005), "width")
    assert clear.outcome == CONSISTENT
    assert claim1_verdict(_gaps({1.0: -0.05}, std=0.005), "width").outcome == UNTESTED
    assert claim1_verdict(_gaps({1.0: -0.05, 4.0: -0.02}, std=0.005), None).outcome == UNTESTED


def test_claim3_is_mixed_when_sparse_is_worse_on_some_metrics_only() -> None:
    better = _gaps({1.0: 0.03}, std=0.001)
    worse = _gaps({1.0: -0.03}, std=0.001)
    verdict = claim3_verdict({Metric("a", "AUROC"): better, Metric("b", "FGSM"): worse}, "width")
    assert verdict.outcome == MIXED and "worse on 1 of 2 metrics" in verdict.text
    lower_is_better = claim3_verdict({Metric("e", "ECE", better=-1): worse}, "width")
    assert lower_is_better.outcome == CONSISTENT and "(better)" in lower_is_better.text


def test_gaps_pair_each_run_with_the_dense_run_of_its_seed(tmp_path) -> None:
    store = claims_store(tmp_path / "results.sqlite")
    frame = runs_frame(store.rows())
    done = frame[frame["status"] == "done"]
    gaps = gaps_to_dense(done, "test_accuracy")
    row = gaps[(gaps["width"] == 2.0) & (gaps["sparsity"] == 0.5) & (gaps["distribution"] == "uniform")].iloc[0]
    assert row["mean"] == pytest.approx(gap(2.0, 0.5, "uniform") + 0.001)
    assert not math.isnan(row["std"])
    # without a dense twin of the same seed, the mean of the size's dense runs is the reference
    partial = done[~((done["sparsity"] == 0) & (done["seed"] == 2))]
    assert len(gaps_to_dense(partial, "test_accuracy")) == len(gaps)


def test_a_partial_highest_sparsity_does_not_decide_the_verdict() -> None:
    complete = _gaps({1.0: -0.05, 4.0: -0.02}, std=0.005)
    partial = _gaps({1.0: -0.20}, std=float("nan")).assign(sparsity=0.95, seeds=1)
    verdict = claim1_verdict(pd.concat([complete, partial], ignore_index=True), "width")
    assert "at 90 % sparsity" in verdict.text and verdict.outcome == CONSISTENT
    both = pd.concat([complete, partial.assign(width=4.0, size="m ×4.0", seeds=3, std=0.005)], ignore_index=True)
    assert "at 95 % sparsity" in claim1_verdict(pd.concat([both, partial.assign(seeds=3, std=0.005)]), "width").text
