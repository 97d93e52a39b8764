"""The report's method dimension: test accuracy and ITOP rate vs sparsity per sparse-training method.

Each run's method is its summary's ``method`` (written by training), else its config's
``sparsity.method``, else ``static`` (runs of releases before methods existed). Its ITOP rate (the
fraction of prunable weights ever active, Liu et al. 2021) is the summary's ``itop_rate``, else its
density (a static mask keeps the same weights active the whole run). The section appears only when
the study holds a method other than ``static``, so reports of older studies are unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from randsparse.experiments.store import RunRow
from randsparse.storage import atomic_write_bytes

ACCURACY = "test_accuracy"
STATIC = "static"


def run_method(row: RunRow) -> str:
    """The sparse-training method of a stored run (``dense`` for a dense run)."""
    sparsity = row.spec.get("sparsity") or {}
    if not sparsity.get("sparsity"):
        return "dense"
    recorded = (row.metrics or {}).get("method")
    if isinstance(recorded, str) and recorded:
        return recorded
    return str(sparsity.get("method") or STATIC)


def run_itop_rate(row: RunRow) -> float | None:
    """A stored run's ITOP rate: its summary's ``itop_rate``, else its density (static masks), else None."""
    metrics = row.metrics or {}
    for key in ("itop_rate", "density"):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    sparsity = (row.spec.get("sparsity") or {}).get("sparsity")
    return 1.0 - float(sparsity) if isinstance(sparsity, (int, float)) else None


def with_methods(frame: pd.DataFrame, rows: list[RunRow]) -> pd.DataFrame:
    """`frame` (one row per run, column ``id``) with ``method`` and ``itop_rate`` columns from `rows`."""
    by_id = {row.id: row for row in rows}
    methods = frame["id"].map(lambda run_id: run_method(by_id[run_id]))
    itop = frame["id"].map(lambda run_id: run_itop_rate(by_id[run_id]))
    # The main table labels a moving-mask run's rule "erk + rigl"; here the method has its own column.
    rules = [d.removesuffix(f" + {m}") for d, m in zip(frame["distribution"], methods, strict=True)]
    return frame.assign(method=methods, itop_rate=itop.astype(float), distribution=rules)


def method_table(done: pd.DataFrame, metric: str = ACCURACY) -> pd.DataFrame:
    """Mean ± std over seeds of `metric` and the mean ITOP rate per size × distribution × sparsity × method.

    `done` holds finished runs with columns size, distribution, sparsity, method, itop_rate and
    `metric`; the result has columns mean, std, seeds, itop_rate and (when runs record it)
    train_flops, plus the dense baseline of each size (dense_mean, dense_std, gap_to_dense).
    """
    columns = ["size", "distribution", "sparsity", "method"]
    aggregations: dict[str, Any] = {
        "mean": (metric, "mean"),
        "std": (metric, "std"),
        "seeds": (metric, "count"),
        "itop_rate": ("itop_rate", "mean"),
    }
    if "train_flops" in done:
        aggregations["train_flops"] = ("train_flops", "mean")
    table = done.groupby(columns, dropna=False).agg(**aggregations).reset_index()
    dense = table[table["sparsity"] == 0].groupby("size")[["mean", "std"]].first()
    table["dense_mean"] = table["size"].map(dense["mean"])
    table["dense_std"] = table["size"].map(dense["std"])
    table["gap_to_dense"] = table["mean"] - table["dense_mean"]
    return table.sort_values(["size", "distribution", "sparsity", "method"]).reset_index(drop=True)


def _percent(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    text = f"{mean * 100:.2f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std * 100:.2f}"
    return text


def method_markdown(table: pd.DataFrame) -> str:
    """The method table as Markdown: one row per size × distribution × sparsity × method (sparse runs)."""
    rows = []
    for _, r in table[table["sparsity"] > 0].iterrows():
        row = {
            "model size": r["size"],
            "distribution": r["distribution"],
            "sparsity": f"{r['sparsity']:g}",
            "method": r["method"],
            "test accuracy %": _percent(r["mean"], r["std"]),
            "seeds": int(r["seeds"]),
            "ITOP rate": "—" if math.isnan(r["itop_rate"]) else f"{r['itop_rate']:.3f}",
            "gap to dense (points)": "—" if math.isnan(r["gap_to_dense"]) else f"{r['gap_to_dense'] * 100:+.2f}",
        }
        if "train_flops" in table and not math.isnan(r["train_flops"]):
            row["train FLOPs"] = f"{r['train_flops']:.3g}"
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows else "_no sparse runs yet_"


def method_section(
    done: pd.DataFrame, rows: list[RunRow], out: Path, title: str
) -> tuple[list[str], list[Path], pd.DataFrame | None]:
    """The report's method section: Markdown lines, the files written (methods.csv, a plot), the table.

    Empty (and nothing written) when every finished sparse run is ``static``. The plot has one panel
    per model size and one line per method (mean ± std over seeds), the dense model as a band.
    """
    from randsparse.experiments.report import plot_metric_vs_sparsity  # the one accuracy-vs-sparsity plot

    if done.empty:
        return [], [], None
    done = with_methods(done, rows)
    if set(done["method"]) <= {STATIC, "dense"}:
        return [], [], None
    table = method_table(done)
    files = [out / "methods.csv"]
    atomic_write_bytes(files[0], table.to_csv(index=False).encode())
    several_rules = done.loc[done["method"] != "dense", "distribution"].nunique() > 1
    label = done["method"] + (" (" + done["distribution"] + ")" if several_rules else "")
    lines = [
        "## Methods",
        "",
        "Test accuracy (mean ± std over seeds, in %) and ITOP rate (the fraction of prunable weights ever"
        " active; a static mask's is its density) per sparse-training method; the gap is sparse − dense.",
        "",
        method_markdown(table),
        "",
    ]
    plot = plot_metric_vs_sparsity(
        done.assign(distribution=label.where(done["method"] != "dense", "dense")),
        ACCURACY,
        "test accuracy",
        out / "accuracy_vs_sparsity_by_method.png",
        f"{title}: methods",
    )
    if plot is not None:
        files.append(plot)
        lines += [f"![{plot.stem}]({plot.name})", ""]
    return lines, files, table
