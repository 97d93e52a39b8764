"""The report's claim sections: per claim its sentence, the table and plot that test it, and the computed verdict.

Each section is built from the finished runs alone (`randsparse.experiments.claims` computes the
numbers); the data behind every table and error bar go to ``claims.csv`` (one row per claim ×
metric × cell, in shown units: points for fractions).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from randsparse.experiments.claims import (
    ACCURACY,
    CLAIMS,
    Metric,
    Verdict,
    cell_keys,
    claim1_verdict,
    claim2_verdict,
    claim3_metrics,
    claim3_verdict,
    erk_minus_uniform,
    gaps_to_dense,
    size_axis,
)
from randsparse.experiments.report import _panel_grid, _save
from randsparse.storage import atomic_write_bytes

CLAIMS_CSV = "claims.csv"
ACCURACY_METRIC = Metric(ACCURACY, "test accuracy")


def _cell(mean: float, std: float, scale: float) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    digits = 2 if scale != 1 else 3
    text = f"{mean * scale:+.{digits}f}".replace("-", "−")
    if std is not None and not math.isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def _long(claim: int, metric: Metric, cells: pd.DataFrame) -> pd.DataFrame:
    """`cells` in shown units, tagged with the claim and the metric: rows of ``claims.csv``."""
    if cells.empty:
        return pd.DataFrame()
    out = cells.drop(columns=["subject_mean", "reference_mean"], errors="ignore").copy()
    for column in ("mean", "std"):
        out[column] = out[column] * metric.scale
    out.insert(0, "metric", metric.label)
    out.insert(0, "claim", claim)
    return out


def _size_rows(cells: pd.DataFrame) -> list[str]:
    keys = cells.drop_duplicates("size").assign(depth=lambda f: f["depth"].fillna(0))
    return list(keys.sort_values(["depth", "width", "size"])["size"])


def _pivot(cells: pd.DataFrame, scale: float, column_of: Callable[[pd.Series], str]) -> str:
    """A Markdown table: one row per model size, one column per `column_of(row)`, cells mean ± std."""
    columns: list[str] = []
    table: dict[str, dict[str, str]] = {}
    seeds: dict[str, int] = {}
    for _, row in cells.iterrows():
        column = column_of(row)
        if column not in columns:
            columns.append(column)
        table.setdefault(row["size"], {})[column] = _cell(row["mean"], row["std"], scale)
        seeds[row["size"]] = min(seeds.get(row["size"], 10**9), int(row["seeds"]))
    records = [
        {"model size": size, **{c: table[size].get(c, "—") for c in columns}, "seeds": seeds[size]}
        for size in _size_rows(cells)
    ]
    return pd.DataFrame(records).to_markdown(index=False, disable_numparse=True)


def _sparsity_label(row: pd.Series) -> str:
    method = f" {row['method']}" if "method" in row and isinstance(row["method"], str) and row["method"] else ""
    return f"{row['distribution']}{method} {row['sparsity'] * 100:g} %"


def plot_differences(
    panels: dict[str, pd.DataFrame],
    x: str,
    line_of: Callable[[pd.Series], str],
    ylabel: str,
    path: Path,
    title: str,
    scale: dict[str, float],
) -> Path | None:
    """One panel per entry of `panels`: mean ± std (error bars) of each line's cells against `x`.

    `line_of(row)` names the line a cell belongs to; `scale[panel]` turns stored into shown units.
    """
    panels = {name: cells for name, cells in panels.items() if not cells.empty and cells[x].notna().any()}
    if not panels:
        return None
    figure, axes = _panel_grid(len(panels), sharey=False)
    names = sorted({line_of(row) for cells in panels.values() for _, row in cells.iterrows()})
    colours = {label: f"C{i % 10}" for i, label in enumerate(names)}  # one colour per line in every panel
    for ax, (name, cells) in zip(axes, panels.items(), strict=True):
        factor = scale[name]
        labels = cells.apply(line_of, axis=1)
        for label, line in cells.groupby(labels, sort=True):
            line = line.sort_values(x)
            ax.errorbar(
                line[x],
                line["mean"] * factor,
                yerr=line["std"].fillna(0.0) * factor,
                marker="o",
                capsize=3,
                color=colours[label],
                label=label,
            )
        ax.axhline(0, color="grey", ls="--", lw=1)
        if x == "width":
            ax.set_xscale("log", base=2)
        ticks = sorted(cells[x].dropna().unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_title(name)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize="x-small")
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def claim_sections(
    done: pd.DataFrame, out: Path, title: str, plots: bool = True, write: bool = True
) -> tuple[list[str], list[Path], list[Verdict]]:
    """The three claim sections of ``report.md``, the files written for them, and the verdicts.

    `done` is the report's frame of finished runs; ``claims.csv`` (with `write`) and the PNGs (with
    `plots`) go to `out`.
    """
    axis = size_axis(done)
    x = axis or "sparsity"
    lines: list[str] = []
    files: list[Path] = []
    verdicts: list[Verdict] = []
    rows: list[pd.DataFrame] = []

    def picture(draw: Callable[[], Path | None]) -> None:
        path = draw() if plots else None
        if path is not None:
            files.append(path)
            lines.extend([f"![{path.stem}]({path.name})", ""])

    # Claim 1: the accuracy gap against model size.
    gaps = gaps_to_dense(done, ACCURACY)
    verdict = claim1_verdict(gaps, axis)
    verdicts.append(verdict)
    rows.append(_long(1, ACCURACY_METRIC, gaps))
    lines += ["## Claim 1: larger random sparse networks close the gap to dense", "", CLAIMS[1], ""]
    if not gaps.empty:
        lines += ["Sparse − dense test accuracy in points (mean ± std over seeds, paired by seed).", ""]
        lines += [_pivot(gaps, 100.0, _sparsity_label), ""]
        panels = {d: part for d, part in gaps.groupby("distribution")}
        picture(
            lambda: plot_differences(
                panels, x, lambda r: f"sparsity {r['sparsity']:g}" + (f" [{r['variant']}]" if r["variant"] else ""),
                "test accuracy − dense (points)", out / f"claim1_gap_vs_{x}.png",
                f"{title}: claim 1, gap to dense vs {x}", {d: 100.0 for d in panels},
            )
        )  # fmt: skip
    lines += [verdict.line, ""]

    # Claim 2: ERK against uniform.
    differences = erk_minus_uniform(done, ACCURACY)
    verdict = claim2_verdict(differences)
    verdicts.append(verdict)
    rows.append(_long(2, Metric(ACCURACY, "ERK − uniform accuracy"), differences))
    lines += ["## Claim 2: the layer-wise ratio matters (ERK vs uniform)", "", CLAIMS[2], ""]
    if not differences.empty:
        lines += ["ERK − uniform test accuracy in points (mean ± std over seeds, paired by seed).", ""]
        lines += [_pivot(differences, 100.0, lambda r: f"{r['sparsity'] * 100:g} %"), ""]
        picture(
            lambda: plot_differences(
                {"ERK − uniform": differences}, "sparsity", lambda r: r["size"], "ERK − uniform accuracy (points)",
                out / "claim2_erk_minus_uniform.png", f"{title}: claim 2, ERK − uniform", {"ERK − uniform": 100.0},
            )
        )  # fmt: skip
    lines += [verdict.line, ""]

    # Claim 3: OOD detection, calibration and robustness, sparse − dense.
    metrics = claim3_metrics(done)
    tables = {metric: gaps_to_dense(done, metric.column) for metric in metrics}
    verdict = claim3_verdict(tables, axis)
    verdicts.append(verdict)
    lines += ["## Claim 3: OOD detection, calibration and adversarial robustness", "", CLAIMS[3], ""]
    if tables:
        rows += [_long(3, metric, cells) for metric, cells in tables.items()]
        lines += [
            "Sparse − dense per metric (mean ± std over seeds, paired by seed); AUROC, ECE and FGSM robust"
            " accuracy in points, NLL in nats. Higher is better for AUROC and robust accuracy, lower for ECE"
            " and NLL.",
            "",
            _claim3_table(tables, done),
            "",
        ]
        picture(
            lambda: plot_differences(
                {_panel(m): cells for m, cells in tables.items()}, x,
                lambda r: _sparsity_label(r) + (f" [{r['variant']}]" if r["variant"] else ""), "sparse − dense",
                out / f"claim3_sparse_minus_dense_vs_{x}.png", f"{title}: claim 3, sparse − dense",
                {_panel(m): m.scale for m in tables},
            )
        )  # fmt: skip
    lines += [verdict.line, ""]

    frames = [r for r in rows if not r.empty]
    if frames and write:
        table = pd.concat(frames, ignore_index=True)
        path = out / CLAIMS_CSV
        atomic_write_bytes(path, table.to_csv(index=False).encode())
        files.append(path)
    return lines, files, verdicts


def _panel(metric: Metric) -> str:
    """A claim-3 panel title: the metric, its unit and which way is better."""
    unit = "nats" if metric.scale == 1 else "points"
    return f"{metric.label} ({unit}, {'higher' if metric.better > 0 else 'lower'} is better)"


def _claim3_table(tables: dict[Metric, pd.DataFrame], done: pd.DataFrame) -> str:
    """One row per sparse cell, one column per metric (mean ± std), and the fewest seeds of the row."""
    keys = [k for k in cell_keys(done) if k not in ("width", "depth")]
    merged: pd.DataFrame | None = None
    for metric, cells in tables.items():
        if cells.empty:
            continue
        part = cells[keys].copy()
        part[metric.label] = [_cell(m, s, metric.scale) for m, s in zip(cells["mean"], cells["std"], strict=True)]
        part[f"seeds {metric.label}"] = cells["seeds"].to_numpy()
        merged = part if merged is None else merged.merge(part, on=keys, how="outer")
    if merged is None:
        return "_no evaluation metrics_"
    seed_columns = [c for c in merged.columns if c.startswith("seeds ")]
    seeds = merged[seed_columns].min(axis=1).astype(int)
    merged = merged.drop(columns=[*seed_columns, "variant"]).assign(seeds=seeds)
    merged["sparsity"] = merged["sparsity"].map(lambda s: f"{s:g}")
    merged = merged.rename(columns={"size": "model size"})
    return merged.fillna("—").to_markdown(index=False, disable_numparse=True)
