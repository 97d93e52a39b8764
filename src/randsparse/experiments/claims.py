"""The paper's three claims as numbers: paired differences over seeds and the verdict each claim gets.

Liu et al., *The Unreasonable Effectiveness of Random Pruning* (ICLR 2022) claim that

1. the gap between a randomly pruned network and its dense twin shrinks as the network grows
   (wider or deeper), until sparse matches dense even at high sparsity;
2. the layer-wise ratio matters: ERK beats uniform, most at high sparsity;
3. sparse random networks match or beat their dense twins on out-of-distribution detection,
   calibration (uncertainty) and adversarial robustness.

Everything here is a pure function of the report's frame of finished runs (one row per run,
``runs_frame``). A difference is taken per seed against the twin run of the same seed (the dense
model of the same size, or the uniform run of the same size and sparsity) and then averaged, so its
std over seeds is the error bar of the paired difference. A verdict compares a change with its
noise: a change counts when it exceeds twice its standard error (std / √seeds) and a per-metric
floor (`Metric.floor`, which alone decides with one seed, where there is no error estimate).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

ACCURACY = "test_accuracy"
CONSISTENT, CONTRADICTS, INCONCLUSIVE, MIXED, UNTESTED = (
    "consistent",
    "contradicts",
    "inconclusive",
    "mixed",
    "not tested",
)
CLAIMS = {
    1: "The gap between a randomly pruned network and its dense twin shrinks as the network grows"
    " (wider or deeper), so large sparse random networks match dense ones even at high sparsity.",
    2: "The layer-wise sparsity ratio matters: ERK ratios beat uniform ones, and most at high sparsity.",
    3: "Sparse random networks match or beat their dense twins on out-of-distribution detection,"
    " calibration and adversarial robustness.",
}


@dataclass(frozen=True)
class Metric:
    """A metric column of the runs frame, how it is shown, and which way is better.

    `scale` turns stored values into shown units (100: fractions shown in points); `better` is +1
    when higher is better, -1 when lower is; `floor` (in shown units) is the least difference a
    verdict counts, whatever the seeds say.
    """

    column: str
    label: str
    scale: float = 100.0
    better: int = 1
    floor: float = 0.5


@dataclass(frozen=True)
class Verdict:
    """The computed verdict of one claim: its outcome (`CONSISTENT`, `CONTRADICTS`, ...) and its line."""

    claim: int
    outcome: str
    text: str

    @property
    def line(self) -> str:
        """The one line the report prints: ``**Verdict:** <text>``."""
        return f"**Verdict:** {self.text}"


def cell_keys(done: pd.DataFrame) -> list[str]:
    """The columns naming one cell of the study (a `method` column counts when the frame has one)."""
    keys = ["size", "width", "depth", "variant", "sparsity", "distribution"]
    return [*keys, "method"] if "method" in done else keys


def paired_difference(
    done: pd.DataFrame, metric: str, subject: pd.Series, reference: pd.Series, match: list[str]
) -> pd.DataFrame:
    """Per cell of the `subject` runs: mean, std and count over seeds of (subject − its reference twin).

    The twin of a run is the `reference` run with equal `match` columns and the same seed; without
    one, the mean of the reference runs with equal `match` columns. Cells without any reference
    are left out. Columns: the cell keys, ``mean``, ``std`` (NaN for one seed), ``seeds``,
    ``subject_mean``, ``reference_mean`` (all in the metric's stored units).
    """
    keys = cell_keys(done)
    columns = [*keys, "seed", metric]
    if metric not in done:
        return pd.DataFrame(columns=[*keys, "mean", "std", "seeds", "subject_mean", "reference_mean"])
    runs = done.loc[subject & done[metric].notna(), columns].copy()
    twins = done.loc[reference & done[metric].notna()]
    by_seed = twins.groupby([*match, "seed"])[metric].mean()
    by_cell = twins.groupby(match)[metric].mean()
    same_seed = by_seed.reindex(pd.MultiIndex.from_frame(runs[[*match, "seed"]])).to_numpy()
    any_seed = by_cell.reindex(pd.MultiIndex.from_frame(runs[match]) if len(match) > 1 else runs[match[0]])
    runs["reference"] = np.where(np.isnan(same_seed), any_seed.to_numpy(), same_seed)
    runs = runs[runs["reference"].notna()]
    runs["difference"] = runs[metric] - runs["reference"]
    grouped = runs.groupby(keys, dropna=False).agg(
        mean=("difference", "mean"),
        std=("difference", "std"),
        seeds=("difference", "count"),
        subject_mean=(metric, "mean"),
        reference_mean=("reference", "mean"),
    )
    return grouped.reset_index().sort_values(["size", "sparsity", "distribution"], ignore_index=True)


def gaps_to_dense(done: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Sparse − dense of `metric` per sparse cell, paired by seed with the dense model of the same size."""
    return paired_difference(done, metric, done["sparsity"] > 0, done["sparsity"] == 0, ["size"])


def erk_minus_uniform(done: pd.DataFrame, metric: str = ACCURACY) -> pd.DataFrame:
    """ERK − uniform of `metric` per size × sparsity (rows carry the ERK cell's keys), paired by seed."""
    match = ["size", "sparsity", *(["method"] if "method" in done else [])]
    return paired_difference(done, metric, done["distribution"] == "erk", done["distribution"] == "uniform", match)


def size_axis(done: pd.DataFrame) -> str | None:
    """``width`` or ``depth``: the model-size knob that varies among the finished runs (None if neither)."""
    for axis in ("width", "depth"):
        if axis in done and done[axis].nunique(dropna=True) >= 2:
            return axis
    return None


def claim3_metrics(done: pd.DataFrame) -> list[Metric]:
    """The claim-3 metrics the runs have: OOD AUROC per set (MSP score), ECE, NLL, FGSM robust accuracy per ε."""
    found: list[Metric] = []
    present = [c for c in done.columns if done[c].notna().any()]
    for column in present:
        if match := re.match(r"^eval\.ood\.([^.]+)\.msp\.auroc$", column):
            found.append(Metric(column, f"OOD AUROC {match.group(1)}"))
    if "eval.ece" in present:
        found.append(Metric("eval.ece", "ECE", better=-1))
    if "eval.nll" in present:
        found.append(Metric("eval.nll", "NLL", scale=1.0, better=-1, floor=0.01))
    fgsm = [(float(m.group(1)), c) for c in present if (m := re.match(r"^eval\.adv\.fgsm\.([0-9.e-]+)$", c))]
    found += [Metric(column, f"FGSM ε={eps:g}") for eps, column in sorted(fgsm)]
    return found


# --------------------------------------------------------------------------------------- verdicts


def _noise(std: float, seeds: int) -> float:
    """Standard error of a mean over `seeds` (0 when there is no estimate: one seed)."""
    return 0.0 if seeds < 2 or std is None or math.isnan(std) else std / math.sqrt(seeds)


def _decide(change: float, noise: float, floor: float) -> int:
    """+1 when `change` exceeds max(2 × noise, floor), −1 when below its negative, else 0."""
    tolerance = max(2.0 * noise, floor)
    return 1 if change > tolerance else -1 if change < -tolerance else 0


def _combine(signs: list[int]) -> str:
    if not signs:
        return UNTESTED
    if all(s == 1 for s in signs):
        return CONSISTENT
    if all(s == -1 for s in signs):
        return CONTRADICTS
    if all(s == 0 for s in signs):
        return INCONCLUSIVE
    return MIXED


_WORDING = {
    CONSISTENT: "consistent with claim {0}",
    CONTRADICTS: "contradicts claim {0}",
    INCONCLUSIVE: "inconclusive for claim {0} (differences within noise)",
    MIXED: "mixed evidence for claim {0}",
}


def _seeds_note(seeds: int) -> str:
    return "1 seed, no error estimate" if seeds < 2 else f"{seeds} seeds"


def _points(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def _shown(value: float, metric: Metric) -> str:
    """A difference in shown units: one decimal for points, three for unscaled metrics (NLL)."""
    return (f"{value:+.1f}" if metric.scale != 1 else f"{value:+.3f}").replace("-", "−")


def verdict_sparsity(cells: pd.DataFrame, by: str) -> float:
    """The sparsity a verdict reads: the most `by` values (sizes) covered, then the most seeds, then the highest.

    So a study still running, whose highest sparsity has fewer seeds or sizes so far, is judged
    where its evidence is complete.
    """
    coverage = cells.groupby("sparsity").agg(covered=(by, "nunique"), seeds=("seeds", "min"))
    return max(coverage.itertuples(), key=lambda r: (r.covered, r.seeds, r.Index)).Index


def claim1_verdict(gaps: pd.DataFrame, axis: str | None, metric: Metric = Metric(ACCURACY, "accuracy")) -> Verdict:
    """Claim 1 from the accuracy gaps: at the highest sparsity, does the gap shrink from smallest to largest size?

    One comparison per distribution (and variant); the claim is consistent when every one shrinks
    beyond its noise, contradicted when every one widens, inconclusive when none moves.
    """
    if axis is None or gaps.empty:
        return Verdict(1, UNTESTED, "not tested: the study varies neither width nor depth.")
    top = verdict_sparsity(gaps, axis)
    parts, signs, ratios = [], [], []
    for (distribution, variant), line in gaps[gaps["sparsity"] == top].groupby(["distribution", "variant"]):
        line = line.dropna(subset=[axis]).sort_values(axis)
        if line[axis].nunique() < 2:
            continue
        small, large = line.iloc[0], line.iloc[-1]
        ratios.append(large[axis] / small[axis])
        change = (large["mean"] - small["mean"]) * metric.scale  # > 0: the gap closes
        noise = math.hypot(_noise(small["std"], small["seeds"]), _noise(large["std"], large["seeds"])) * metric.scale
        sign = _decide(change, noise, metric.floor)
        signs.append(sign)
        verb = {1: "shrinks", -1: "widens", 0: "stays within noise"}[sign]
        name = distribution + (f" [{variant}]" if variant else "")
        parts.append(
            f"{name}: {verb} from {_points(small['mean'] * metric.scale)} to {_points(large['mean'] * metric.scale)}"
        )
    if not parts:
        return Verdict(1, UNTESTED, f"not tested: no distribution was run at two {axis}s at {top * 100:g} % sparsity.")
    ratio = max(ratios)
    seeds = int(gaps[gaps["sparsity"] == top]["seeds"].min())
    outcome = _combine(signs)
    text = (
        f"gap to dense at {top * 100:g} % sparsity ({'; '.join(parts)} points) as {axis} grows ×{ratio:g}"
        f" ({_seeds_note(seeds)}): {_WORDING[outcome].format(1)}."
    )
    return Verdict(1, outcome, text)


def claim2_verdict(differences: pd.DataFrame, scale: float = 100.0, floor: float = 0.5) -> Verdict:
    """Claim 2 from ERK − uniform accuracy: at the highest sparsity with both, pooled over sizes."""
    if differences.empty:
        return Verdict(2, UNTESTED, "not tested: the study has no ERK and uniform runs of the same size and sparsity.")
    top = verdict_sparsity(differences, "size")
    rows = differences[differences["sparsity"] == top]
    mean = float(np.average(rows["mean"], weights=rows["seeds"])) * scale
    noise = math.sqrt(sum(_noise(r["std"], r["seeds"]) ** 2 for _, r in rows.iterrows())) / len(rows) * scale
    seeds = int(rows["seeds"].min())
    sign = _decide(mean, noise, floor)
    outcome = {1: CONSISTENT, -1: CONTRADICTS, 0: INCONCLUSIVE}[sign]
    low, high = rows["mean"].min() * scale, rows["mean"].max() * scale
    who = {1: "ERK beats uniform", -1: "uniform beats ERK", 0: "ERK and uniform tie"}[sign]
    error = f" ± {noise:.1f}" if seeds > 1 else ""
    text = (
        f"at {top * 100:g} % sparsity {who}: ERK − uniform = {_points(mean)}{error} points on average"
        f" over {len(rows)} model size(s), from {_points(low)} to {_points(high)} ({_seeds_note(seeds)}):"
        f" {_WORDING[outcome].format(2)}."
    )
    return Verdict(2, outcome, text)


def claim3_verdict(tables: dict[Metric, pd.DataFrame], axis: str | None) -> Verdict:
    """Claim 3 per metric: sparse − dense at the largest size (ERK runs when there are), pooled over sparsities.

    A metric supports the claim when sparse matches (within noise) or beats dense; the claim is
    consistent when every metric does, contradicted when every metric is worse, else mixed.
    """
    parts, signs, seeds = [], [], []
    scope = ""
    for metric, gaps in tables.items():
        if gaps.empty:
            continue
        rows = gaps[gaps[axis] == gaps[axis].max()] if axis else gaps
        if (rows["distribution"] == "erk").any():
            rows = rows[rows["distribution"] == "erk"]
        mean = float(np.average(rows["mean"], weights=rows["seeds"])) * metric.scale
        noise = math.sqrt(sum(_noise(r["std"], r["seeds"]) ** 2 for _, r in rows.iterrows())) / len(rows)
        sign = _decide(mean * metric.better, noise * metric.scale, metric.floor)
        signs.append(-1 if sign < 0 else 1)  # matching counts for the claim ("match or beat")
        word = {1: "better", 0: "matches", -1: "worse"}[sign]
        parts.append(f"{metric.label} {_shown(mean, metric)} ({word})")
        seeds.append(int(rows["seeds"].min()))
        sizes = ", ".join(sorted(set(rows["size"])))
        distributions = ", ".join(sorted(set(rows["distribution"])))
        sparsities = ", ".join(f"{s * 100:g}" for s in sorted(set(rows["sparsity"])))
        scope = f"{distributions} at {sizes}, sparsity {sparsities} %"
    if not parts:
        return Verdict(3, UNTESTED, "not tested: the runs were evaluated for neither OOD, calibration nor FGSM.")
    outcome = _combine(signs)
    if outcome == MIXED:
        worse = sum(s < 0 for s in signs)
        wording = f"partly consistent with claim 3 (sparse is worse on {worse} of {len(signs)} metrics)"
    else:
        wording = _WORDING[outcome].format(3)
    text = f"sparse − dense, {scope}: {'; '.join(parts)} ({_seeds_note(min(seeds))}): {wording}."
    return Verdict(3, outcome, text)


def claim_verdicts(done: pd.DataFrame) -> list[Verdict]:
    """The three verdicts from a frame of finished runs (what the report's claim sections print)."""
    axis = size_axis(done)
    tables = {metric: gaps_to_dense(done, metric.column) for metric in claim3_metrics(done)}
    return [
        claim1_verdict(gaps_to_dense(done, ACCURACY), axis),
        claim2_verdict(erk_minus_uniform(done, ACCURACY)),
        claim3_verdict(tables, axis),
    ]
