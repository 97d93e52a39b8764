"""Two studies side by side (``randsparse report --compare A B``): per-cell means, their difference, both verdicts.

A cell is one model size × sparsity × distribution (and grid variant); the cells both studies
finished are compared on test accuracy and on every evaluation metric both have (e.g. two library
versions, or CPU and GPU runs of one study). Studies of different datasets, or without a finished
cell in common, are refused with a `ConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from randsparse.errors import ConfigError
from randsparse.experiments.claims import ACCURACY, Metric, claim3_metrics
from randsparse.experiments.claims_report import claim_sections
from randsparse.experiments.report import runs_frame
from randsparse.experiments.store import ResultsStore
from randsparse.storage import atomic_write_bytes

KEYS = ["dataset", "size", "variant", "sparsity", "distribution"]


@dataclass
class Comparison:
    """What `compare_studies` wrote, and the per-cell table (one row per metric × common cell)."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    table: pd.DataFrame | None = None


def _finished(store: ResultsStore) -> pd.DataFrame:
    frame = runs_frame(store.rows())
    if frame.empty or ACCURACY not in frame:
        return frame.iloc[0:0]
    return frame[(frame["status"] == "done") & frame[ACCURACY].notna()]


def _cells(done: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    rows = done[done[metric.column].notna()] if metric.column in done else done.iloc[0:0]
    grouped = rows.groupby(KEYS)[metric.column].agg(mean="mean", std="std", seeds="count").reset_index()
    grouped[["mean", "std"]] *= metric.scale
    return grouped


def cell_differences(done_a: pd.DataFrame, done_b: pd.DataFrame) -> pd.DataFrame:
    """Per metric and cell both have: mean ± std and seeds of A and of B, and B − A (in shown units)."""
    metrics = [Metric(ACCURACY, "test accuracy")]
    labels_b = {m.column for m in claim3_metrics(done_b)}
    metrics += [m for m in claim3_metrics(done_a) if m.column in labels_b]
    parts = []
    for metric in metrics:
        both = _cells(done_a, metric).merge(_cells(done_b, metric), on=KEYS, suffixes=("_a", "_b"))
        if both.empty:
            continue
        both.insert(0, "metric", metric.label)
        both["difference"] = both["mean_b"] - both["mean_a"]
        parts.append(both)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _text(mean: float, std: float, seeds: int) -> str:
    text = f"{mean:.2f}"
    if not math.isnan(std):
        text += f" ± {std:.2f}"
    return f"{text} ({seeds})"


def compare_studies(
    store_a: ResultsStore, store_b: ResultsStore, out_dir: str | Path, names: tuple[str, str] = ("A", "B")
) -> Comparison:
    """Write ``compare.md`` and ``compare.csv`` for the cells studies A and B share; raises `ConfigError` if none."""
    done_a, done_b = _finished(store_a), _finished(store_b)
    for name, done in zip(names, (done_a, done_b), strict=True):
        if done.empty:
            raise ConfigError(f"study {name!r} has no finished run to compare")
    datasets_a, datasets_b = set(done_a["dataset"]), set(done_b["dataset"])
    if datasets_a != datasets_b:
        raise ConfigError(
            f"cannot compare studies of different datasets: {names[0]!r} has {', '.join(sorted(datasets_a))},"
            f" {names[1]!r} has {', '.join(sorted(datasets_b))}"
        )
    table = cell_differences(done_a, done_b)
    if table.empty:
        raise ConfigError(
            f"studies {names[0]!r} and {names[1]!r} have no finished cell (model size × sparsity × distribution)"
            " in common"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    comparison = Comparison(out, table=table)
    lines = [
        f"# {names[0]} vs {names[1]}",
        "",
        f"A = `{names[0]}`, B = `{names[1]}`. Per cell both finished: mean ± std over seeds (seeds in"
        " brackets) and B − A, in points (NLL in nats).",
        "",
    ]
    for metric, part in table.groupby("metric", sort=False):
        records = [
            {
                "model size": r["size"] + (f" [{r['variant']}]" if r["variant"] else ""),
                "sparsity": f"{r['sparsity']:g}",
                "distribution": r["distribution"],
                "A": _text(r["mean_a"], r["std_a"], int(r["seeds_a"])),
                "B": _text(r["mean_b"], r["std_b"], int(r["seeds_b"])),
                "B − A": f"{r['difference']:+.2f}".replace("-", "−"),
            }
            for _, r in part.iterrows()
        ]
        lines += [f"## {metric}", "", pd.DataFrame(records).to_markdown(index=False, disable_numparse=True), ""]
        lines += [f"Mean |B − A| over {len(part)} cells: {part['difference'].abs().mean():.2f}.", ""]
    only_a = len(_cells(done_a, Metric(ACCURACY, ""))) - len(table[table["metric"] == "test accuracy"])
    only_b = len(_cells(done_b, Metric(ACCURACY, ""))) - len(table[table["metric"] == "test accuracy"])
    if only_a or only_b:
        lines += [f"Cells in only one study (not compared): {only_a} in A, {only_b} in B.", ""]
    lines += ["## Claim verdicts", "", "| claim | A | B |", "|---|---|---|"]
    verdicts_a = claim_sections(done_a, out, names[0], plots=False, write=False)[2]
    verdicts_b = claim_sections(done_b, out, names[1], plots=False, write=False)[2]
    for a, b in zip(verdicts_a, verdicts_b, strict=True):
        lines.append(f"| {a.claim} | {a.outcome} | {b.outcome} |")
    lines.append("")
    csv = out / "compare.csv"
    atomic_write_bytes(csv, table.to_csv(index=False).encode())
    markdown = out / "compare.md"
    atomic_write_bytes(markdown, "\n".join(lines).encode())
    comparison.files += [markdown, csv]
    return comparison
