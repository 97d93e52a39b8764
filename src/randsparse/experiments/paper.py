"""The paper's published numbers (``paper_results.yaml``, package data) and their overlay on a study's report.

Each table of the data file names its source in the paper; a row is one model of one dataset and
width, its columns ``dense`` or ``<distribution> <sparsity>``. A study cell matches a paper value
when dataset, model name, width, sparsity and distribution agree; the report then shows our mean ±
std over seeds beside the paper's value and the distance (ours − paper, in points).
"""

from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from randsparse.errors import FileFormatError
from randsparse.experiments.report import ACCURACY, _panel_grid, _save
from randsparse.storage import atomic_write_bytes

DATA_FILE = "paper_results.yaml"
KEYS = ["dataset", "model", "width", "sparsity", "distribution"]


def _column(text: str) -> tuple[str, float]:
    """``dense`` → (dense, 0); ``erk 0.9`` → (erk, 0.9)."""
    if text == "dense":
        return "dense", 0.0
    distribution, _, sparsity = text.partition(" ")
    return distribution, float(sparsity)


@lru_cache(maxsize=4)
def paper_results(path: str | None = None) -> pd.DataFrame:
    """Every published value as one row: table, source, dataset, model, width, sparsity, distribution, accuracy (%).

    `path` defaults to the package's ``paper_results.yaml``. A malformed file is a `FileFormatError`.
    """
    text = Path(path).read_text() if path else resources.files(__package__).joinpath(DATA_FILE).read_text()
    try:
        data = yaml.safe_load(text)
        rows = []
        for table in data["tables"]:
            columns = [_column(c) for c in table["columns"]]
            for model, values in table["rows"].items():
                if len(values) != len(columns):
                    raise ValueError(f"{table['name']}: {model} has {len(values)} values for {len(columns)} columns")
                for (distribution, sparsity), value in zip(columns, values, strict=True):
                    if value is None:
                        continue
                    rows.append(
                        {
                            "table": table["name"],
                            "source": table["source"],
                            "dataset": table["dataset"],
                            "model": model,
                            "width": float(table.get("width", 1.0)),
                            "sparsity": sparsity,
                            "distribution": distribution,
                            "paper": float(value),
                        }
                    )
    except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FileFormatError(f"paper results {path or DATA_FILE!r} are malformed: {exc}") from None
    return pd.DataFrame(rows)


def against_paper(done: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our mean ± std (%) over seeds per matched cell, the paper's value and ours − paper (points).

    Only runs without a grid variant are compared (another optimiser or schedule is not the paper's
    recipe). Empty when nothing matches.
    """
    paper = paper_results() if paper is None else paper
    runs = done[(done.get("variant", "") == "") & done[ACCURACY].notna()] if not done.empty else done
    if runs.empty or paper.empty:
        return pd.DataFrame()
    ours = (
        runs.assign(width=runs["width"].astype(float))
        .groupby(KEYS)[ACCURACY]
        .agg(mean="mean", std="std", seeds="count")
        .reset_index()
    )
    ours["mean"] *= 100
    ours["std"] *= 100
    matched = ours.merge(paper, on=KEYS, how="inner")
    matched["difference"] = matched["mean"] - matched["paper"]
    return matched.sort_values(["table", "model", "sparsity", "distribution"], ignore_index=True)


def _text(value: float, digits: int = 2, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "—"
    return (f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}").replace("-", "−")


def plot_against_paper(matched: pd.DataFrame, path: Path, title: str) -> Path | None:
    """One panel per model: ours (mean ± std) and the paper's value at each distribution × sparsity."""
    if matched.empty:
        return None
    models = list(dict.fromkeys(matched["model"]))
    figure, axes = _panel_grid(len(models))
    labels = [f"{d} {s:g}" if s else "dense" for d, s in zip(matched["distribution"], matched["sparsity"], strict=True)]
    matched = matched.assign(label=labels)
    order = list(dict.fromkeys(matched.sort_values(["sparsity", "distribution"])["label"]))
    for ax, model in zip(axes, models, strict=True):
        part = matched[matched["model"] == model].set_index("label").reindex(order).dropna(subset=["paper"])
        positions = [order.index(label) for label in part.index]
        ax.errorbar(positions, part["mean"], yerr=part["std"].fillna(0.0), fmt="o", capsize=3, label="ours")
        ax.plot(positions, part["paper"], "x", color="C3", markersize=8, label="paper")
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize="small")
        ax.set_title(model)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy %")
    axes[0].legend(fontsize="small")
    figure.suptitle(f"{title}: ours vs the paper")
    figure.tight_layout()
    return _save(figure, path)


def paper_section(done: pd.DataFrame, out: Path, title: str, plots: bool = True) -> tuple[list[str], list[Path]]:
    """The report's "Against the paper" section (empty when no cell of the study is in the data file)."""
    matched = against_paper(done)
    if matched.empty:
        return [], []
    records = [
        {
            "model": r["model"] + (f" ×{r['width']:g}" if r["width"] != 1 else ""),
            "sparsity": f"{r['sparsity']:g}",
            "distribution": r["distribution"],
            "ours %": _text(r["mean"]) + ("" if math.isnan(r["std"]) else f" ± {_text(r['std'])}"),
            "seeds": int(r["seeds"]),
            "paper %": _text(r["paper"]),
            "ours − paper": _text(r["difference"], sign=True),
        }
        for _, r in matched.iterrows()
    ]
    sources = "; ".join(sorted(set(matched["table"] + ": " + matched["source"])))
    mean_distance = matched["difference"].mean()
    lines = [
        "## Against the paper's numbers",
        "",
        f"The paper's published test accuracy where this study has the same cell ({sources}).",
        "",
        pd.DataFrame(records).to_markdown(index=False, disable_numparse=True),
        "",
        f"Over {len(matched)} matched cells ours − paper is {_text(mean_distance, sign=True)} points on average"
        f" (from {_text(matched['difference'].min(), sign=True)} to {_text(matched['difference'].max(), sign=True)}).",
        "",
    ]
    files: list[Path] = []
    csv = out / "paper_comparison.csv"
    atomic_write_bytes(csv, matched.to_csv(index=False).encode())
    files.append(csv)
    if plots and (plot := plot_against_paper(matched, out / "against_paper.png", title)) is not None:
        files.append(plot)
        lines += [f"![{plot.stem}]({plot.name})", ""]
    return lines, files
