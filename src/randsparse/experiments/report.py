"""The study report: tables (Markdown, CSV) and paper-style plots from a results store.

Accuracy is aggregated over seeds (mean ± std) for each model size × sparsity × distribution and
compared with the dense baseline of the same size; plots follow the paper's figures: accuracy vs
sparsity per model size with the dense model as a band, and the gap to dense vs width and depth.
A partial study still reports, and names what is missing or failed.
"""

from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from randsparse.errors import UnknownNameError
from randsparse.experiments.report_methods import STATIC, method_section, run_method
from randsparse.experiments.store import ResultsStore, RunRow
from randsparse.models import ModelSpec
from randsparse.storage import atomic_write_bytes

log = logging.getLogger(__name__)

ACCURACY = "test_accuracy"
# Evaluation metrics drawn against sparsity when the runs have them (summary key -> axis label).
EVAL_METRICS = {
    "eval.ece": "ECE (lower is better)",
    "eval.nll": "NLL (lower is better)",
}
EVAL_PATTERNS = {
    r"^eval\.ood\.([^.]+)\.msp\.auroc$": "OOD AUROC vs {0} (MSP)",
    r"^eval\.adv\.(fgsm|pgd)\.([0-9.e-]+)$": "robust accuracy, {0} eps={1}",
}


@dataclass
class Report:
    """What `write_report` produced."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    runs: pd.DataFrame | None = None
    table: pd.DataFrame | None = None
    verdicts: list[Any] = field(default_factory=list)  # claims.Verdict, one per claim


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, into)
    else:
        into[prefix] = value


def _architecture(model: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Family, depth and width of a run's model: as its summary records them, else from the registry.

    Runs of releases up to 0.1.0 recorded none: their stored model config is resolved by
    `ModelSpec.architecture` (a model no longer registered keeps its name as family, and its knobs).
    """
    if metrics and isinstance(metrics.get("architecture"), dict):
        return metrics["architecture"]
    try:
        return ModelSpec.from_config(model).architecture()
    except UnknownNameError:
        depth, width = model.get("depth"), model.get("width")
        return {"family": model["name"], "depth": depth, "width": 1.0 if width is None else float(width)}


# Grid keys that name the model size, the sparsity or the seed; any other grid key makes a variant.
_SIZE_OR_SEED = re.compile(r"^(model\.(name|width|depth)|sparsity(\..*)?|seed)$")


def _variant(point: dict[str, Any]) -> str:
    """The grid values of a run other than size, sparsity and seed, e.g. ``optim.lr=0.05``."""
    return ", ".join(f"{k}={v}" for k, v in point.items() if not _SIZE_OR_SEED.match(k))


def runs_frame(rows: list[RunRow]) -> pd.DataFrame:
    """One row per run: its identity columns, status, and every (flattened) metric."""
    records = []
    for row in rows:
        spec = row.spec
        model = spec["model"]
        sparsity = spec["sparsity"]["sparsity"]
        architecture = _architecture(model, row.metrics)
        rule = spec["sparsity"]["distribution"]
        if spec["sparsity"].get("prune"):
            rule = f"{spec['sparsity']['prune']} (pruned)"  # mask mode: the method's own mask, not random
        if run_method(row) not in (STATIC, "dense"):  # a method that moves the mask is a curve of its own
            rule = f"{rule} + {run_method(row)}"
        record: dict[str, Any] = {
            "id": row.id,
            "status": row.status,
            "model": model["name"],
            "family": architecture["family"],
            "width": architecture["width"],
            "depth": architecture["depth"],
            "variant": _variant(row.point),
            "dataset": spec["data"]["name"],
            "sparsity": sparsity,
            "distribution": "dense" if sparsity == 0 else rule,
            "seed": spec["seed"],
            "error": row.error,
            "seconds": row.seconds,
        }
        if row.metrics:
            flat: dict[str, Any] = {}
            _flatten("", row.metrics, flat)
            record.update({k: v for k, v in flat.items() if k not in record})
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if not frame.empty:
        frame["size"] = frame.apply(_size_label, axis=1)
    return frame


def _size_label(row: pd.Series) -> str:
    """``resnet20 ×2``, ``cifar_resnet-32 ×0.5``, plus the variant in brackets when there is one."""
    label = row["model"]
    if pd.notna(row["depth"]) and str(int(row["depth"])) not in str(row["model"]):
        label += f"-{int(row['depth'])}"
    label = f"{label} ×{row['width']:g}"
    return f"{label} [{row['variant']}]" if row.get("variant") else label


def _size_order(frame: pd.DataFrame) -> list[str]:
    keys = frame.drop_duplicates("size")[["size", "model", "depth", "width"]]
    keys = keys.assign(depth=keys["depth"].fillna(0))
    return list(keys.sort_values(["model", "depth", "width"])["size"])


def summary_table(done: pd.DataFrame, metric: str = ACCURACY) -> pd.DataFrame:
    """Mean ± std over seeds per size × sparsity × distribution, with the dense baseline and the gap."""
    if "variant" not in done:
        done = done.assign(variant="")
    columns = ["size", "width", "depth", "variant", "sparsity", "distribution"]
    grouped = (
        done.groupby(columns, dropna=False)[metric]
        .agg(mean="mean", std="std", seeds="count")
        .reset_index()
        .sort_values(["size", "sparsity", "distribution"])
    )
    dense = grouped[grouped["sparsity"] == 0].set_index("size")
    grouped["dense_mean"] = grouped["size"].map(dense["mean"])
    grouped["dense_std"] = grouped["size"].map(dense["std"])
    grouped["gap_to_dense"] = grouped["mean"] - grouped["dense_mean"]
    return grouped


def _fmt(mean: float, std: float, scale: float = 100.0) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{mean * scale:.2f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std * scale:.2f}"
    return text


def _markdown_table(table: pd.DataFrame, order: list[str]) -> str:
    rows = []
    for size in order:
        part = table[(table["size"] == size) & (table["sparsity"] > 0)]
        dense = table[(table["size"] == size) & (table["sparsity"] == 0)]
        dense_text = _fmt(dense["mean"].iloc[0], dense["std"].iloc[0]) if len(dense) else "—"
        for _, r in part.iterrows():
            gap = "—" if math.isnan(r["gap_to_dense"]) else f"{r['gap_to_dense'] * 100:+.2f}"
            rows.append(
                {
                    "model size": size,
                    "sparsity": f"{r['sparsity']:g}",
                    "distribution": r["distribution"],
                    "test accuracy %": _fmt(r["mean"], r["std"]),
                    "seeds": int(r["seeds"]),
                    "dense %": dense_text,
                    "gap to dense (points)": gap,
                }
            )
        if part.empty and len(dense):
            rows.append(
                {
                    "model size": size,
                    "sparsity": "0",
                    "distribution": "dense",
                    "test accuracy %": dense_text,
                    "seeds": int(dense["seeds"].iloc[0]),
                    "dense %": dense_text,
                    "gap to dense (points)": "0.00",
                }
            )
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) if rows else "_no finished runs yet_"


def _panel_grid(count: int, sharey: bool = True) -> tuple[Figure, list[Axes]]:
    """A figure of `count` panels, three a row, on its own Agg canvas.

    The figure is built with matplotlib's object API, not pyplot: reporting never switches the
    process's backend (a notebook keeps its own) and leaves no figure registered anywhere.
    """
    cols = min(count, 3)
    lines = math.ceil(count / cols)
    figure = Figure(figsize=(4.6 * cols, 3.6 * lines))
    FigureCanvasAgg(figure)
    axes = figure.subplots(lines, cols, squeeze=False, sharey=sharey)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return figure, flat[:count]


def plot_metric_vs_sparsity(done: pd.DataFrame, metric: str, label: str, path: Path, title: str) -> Path | None:
    """One panel per model size: a line (mean, ± std band over seeds) per distribution; dense as a band."""
    if metric not in done or done[metric].isna().all():
        return None
    order = _size_order(done)
    figure, axes = _panel_grid(len(order))
    colours = {d: f"C{i}" for i, d in enumerate(sorted(set(done["distribution"]) - {"dense"}))}
    for ax, size in zip(axes, order, strict=True):
        part = done[done["size"] == size]
        dense = part[part["sparsity"] == 0][metric].dropna()
        if len(dense):
            mean, std = dense.mean(), (dense.std() if len(dense) > 1 else 0.0)
            ax.axhspan(mean - std, mean + std, color="grey", alpha=0.2, lw=0)
            ax.axhline(mean, color="grey", ls="--", lw=1.2, label="dense")
        for distribution, colour in colours.items():
            line = part[part["distribution"] == distribution].groupby("sparsity")[metric].agg(["mean", "std"])
            if line.empty:
                continue
            std = line["std"].fillna(0.0)
            ax.plot(line.index, line["mean"], marker="o", color=colour, label=distribution)
            ax.fill_between(line.index, line["mean"] - std, line["mean"] + std, color=colour, alpha=0.2, lw=0)
        ax.set_title(size)
        ax.set_xlabel("sparsity")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    axes[0].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_gap_vs_size(table: pd.DataFrame, axis: str, path: Path, title: str) -> Path | None:
    """Gap to dense at each sparsity against width (or depth), one panel per distribution."""
    sparse = table[(table["sparsity"] > 0) & table["gap_to_dense"].notna()]
    if sparse.empty or sparse[axis].nunique(dropna=True) < 2:
        return None
    distributions = sorted(sparse["distribution"].unique())
    figure, axes = _panel_grid(len(distributions))
    for ax, distribution in zip(axes, distributions, strict=True):
        part = sparse[sparse["distribution"] == distribution]
        for i, ((sparsity, variant), line) in enumerate(part.groupby(["sparsity", "variant"])):
            line = line.groupby(axis)["gap_to_dense"].mean().sort_index()
            label = f"sparsity {sparsity:g}" + (f" [{variant}]" if variant else "")
            ax.plot(line.index, line.values * 100, marker="o", color=f"C{i}", label=label)
        ax.axhline(0, color="grey", ls="--", lw=1)
        if axis == "width":
            ax.set_xscale("log", base=2)
        ax.set_title(distribution)
        ax.set_xlabel(axis)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy − dense (points)")
    axes[0].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    """Write the figure as a PNG, atomically like every file randsparse writes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _eval_metrics(done: pd.DataFrame) -> dict[str, str]:
    found = {k: v for k, v in EVAL_METRICS.items() if k in done and done[k].notna().any()}
    for column in done.columns:
        for pattern, template in EVAL_PATTERNS.items():
            match = re.match(pattern, column)
            if match and done[column].notna().any():
                found[column] = template.format(*match.groups())
    return found


def write_report(store: ResultsStore, out_dir: str | Path, title: str | None = None) -> Report:
    """Write ``report.md``, CSV tables and PNG plots for the study in `store` to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    rows = store.rows()
    study = store.study()
    title = title or study.get("name") or "study"
    frame = runs_frame(rows)
    report.runs = frame
    lines = [f"# {title}", ""]
    if study.get("description"):
        lines += [study["description"].strip(), ""]
    if frame.empty:
        lines += ["_The store holds no runs yet._", ""]
        _write_text(out / "report.md", lines, report)
        return report
    counts = frame["status"].value_counts().to_dict()
    statuses = ("done", "running", "pending", "failed", "diverged")
    lines += [f"{len(frame)} runs: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in statuses), ""]
    _write_csv(frame.drop(columns=["error"]), out / "runs.csv", report)
    done = frame[(frame["status"] == "done") & frame.get(ACCURACY, pd.Series(dtype=float)).notna()]
    if not done.empty:
        table = summary_table(done)
        report.table = table
        _write_csv(table, out / "summary.csv", report)
        order = _size_order(done)
        dataset = ", ".join(sorted(done["dataset"].unique()))
        lines += ["## Test accuracy", "", f"Mean ± std over seeds, in %, on {dataset}; the gap is sparse − dense.", ""]
        lines += [_markdown_table(table, order), ""]
        from randsparse.experiments.claims_report import claim_sections  # the paper's claims, one section each
        from randsparse.experiments.paper import paper_section  # the paper's own numbers beside ours

        claim_lines, claim_files, report.verdicts = claim_sections(done, out, title)
        paper_lines, paper_files = paper_section(done, out, title)
        lines += claim_lines + paper_lines
        report.files += claim_files + paper_files
        method_lines, method_files, _ = method_section(done, rows, out, title)  # only when a study compares methods
        lines += method_lines
        report.files += method_files
        plots = [
            plot_metric_vs_sparsity(done, ACCURACY, "test accuracy", out / "accuracy_vs_sparsity.png", title),
            plot_gap_vs_size(table, "width", out / "gap_vs_width.png", f"{title}: gap to dense vs width"),
            plot_gap_vs_size(table, "depth", out / "gap_vs_depth.png", f"{title}: gap to dense vs depth"),
        ]
        for metric, label in _eval_metrics(done).items():
            name = re.sub(r"[^a-z0-9]+", "_", metric.removeprefix("eval.").lower()).strip("_")
            plots.append(plot_metric_vs_sparsity(done, metric, label, out / f"{name}_vs_sparsity.png", title))
        lines += ["## Plots", ""]
        for plot in filter(None, plots):
            report.files.append(plot)
            lines += [f"![{plot.stem}]({plot.name})", ""]
    lines += _missing_section(frame)
    _write_text(out / "report.md", lines, report)
    return report


def _missing_section(frame: pd.DataFrame) -> list[str]:
    unfinished = frame[frame["status"] != "done"]
    lines = ["## Missing or failed runs", ""]
    if unfinished.empty:
        return [*lines, "None: every run of the study is done.", ""]
    columns = ["id", "status", "size", "sparsity", "distribution", "seed", "error"]
    table = unfinished[columns].fillna("")
    table["error"] = table["error"].astype(str).str.slice(0, 120)
    return [*lines, table.to_markdown(index=False, disable_numparse=True), ""]


def _write_text(path: Path, lines: list[str], report: Report) -> None:
    atomic_write_bytes(path, "\n".join(lines).encode())
    report.files.append(path)


def _write_csv(frame: pd.DataFrame, path: Path, report: Report) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False).encode())
    report.files.append(path)
