"""Regenerate the README's results section (table, claim verdicts) and figures from the committed reproduction CSV.

The CSV is the ``runs.csv`` that ``randsparse report`` wrote for ``configs/studies/fmnist-reproduction.yaml``,
copied unchanged (its report sits beside it in ``docs/results/fmnist-reproduction/``). Nothing in
the README's results section is typed by hand: run this after replacing the CSV, and
``tests/test_docs.py`` fails when the README and the CSV disagree.

    python docs/results/make_readme_table.py           # rewrite README.md's results block and docs/img figures
    python docs/results/make_readme_table.py --check   # exit 1 when README.md's results block is out of date
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import pandas as pd

from randsparse.experiments.claims import ACCURACY, CLAIMS, Verdict, claim_verdicts, gaps_to_dense
from randsparse.experiments.claims_report import plot_differences
from randsparse.experiments.report import plot_metric_vs_sparsity, summary_table

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "configs/studies/fmnist-reproduction.yaml"
CSV = ROOT / "docs/results/fmnist-reproduction.csv"
README = ROOT / "README.md"
FIGURES = {
    "accuracy": ROOT / "docs/img/reproduction_accuracy_vs_sparsity.png",
    "gap": ROOT / "docs/img/reproduction_gap_vs_width.png",
}
START, END = "<!-- results:start -->", "<!-- results:end -->"
NAMES = {"erk": "ERK", "uniform": "uniform", "uniform_plus": "uniform+", "er": "ER", "erk_plus": "ERK+"}


def all_runs(csv: Path = CSV) -> pd.DataFrame:
    """Every run of the CSV, whatever its status (one row per run)."""
    runs = pd.read_csv(csv, dtype={"variant": str})
    runs["variant"] = runs["variant"].fillna("")  # an empty grid variant reads back as NaN
    return runs


def finished_runs(csv: Path = CSV) -> pd.DataFrame:
    """The runs of the CSV that finished with a test accuracy."""
    runs = all_runs(csv)
    return runs[(runs["status"] == "done") & runs[ACCURACY].notna()]


def _percent(mean: float, std: float) -> str:
    text = f"{mean * 100:.1f}"
    return f"{text} ± {std * 100:.1f} %" if not math.isnan(std) else f"{text} %"


def readme_table(csv: Path = CSV) -> str:
    """One row per model size: dense accuracy, then each sparsity × distribution with its gap in points."""
    table = summary_table(finished_runs(csv))
    sparse = table[table["sparsity"] > 0]
    columns = sorted({(s, d) for s, d in zip(sparse["sparsity"], sparse["distribution"], strict=True)})
    header = ["model size", "dense"] + [f"{NAMES.get(d, d)} {s * 100:g} %" for s, d in columns] + ["seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = table.drop_duplicates("size").sort_values(["depth", "width", "size"], na_position="first")["size"]
    for size in order:
        rows = table[table["size"] == size]
        dense = rows[rows["sparsity"] == 0]
        cells = [size, _percent(dense["mean"].iloc[0], dense["std"].iloc[0]) if len(dense) else "—"]
        for sparsity, distribution in columns:
            row = rows[(rows["sparsity"] == sparsity) & (rows["distribution"] == distribution)]
            if row.empty:
                cells.append("—")
                continue
            cell = _percent(row["mean"].iloc[0], row["std"].iloc[0])
            gap = row["gap_to_dense"].iloc[0]
            cells.append(cell if math.isnan(gap) else f"{cell} ({gap * 100:+.1f})".replace("-", "−"))
        seeds = rows["seeds"]
        cells.append(f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(csv: Path = CSV) -> list[Verdict]:
    """The report's three claim verdicts, computed from the CSV's finished runs."""
    return claim_verdicts(finished_runs(csv))


def results_block(csv: Path = CSV) -> str:
    """The README's results block: the table, how many runs it holds, and each claim with its verdict."""
    runs, done = all_runs(csv), finished_runs(csv)
    lines = [readme_table(csv), ""]
    lines.append(
        f"Test accuracy, mean ± std over seeds, with the gap to the dense model of the same width in points;"
        f" {len(done)} of the study's {len(runs)} runs finished."
    )
    lines += ["", "What these runs say about the paper's claims (computed by the report, not typed):", ""]
    for verdict in verdicts(csv):
        lines.append(f"{verdict.claim}. *{CLAIMS[verdict.claim]}* — **{verdict.outcome}**: {verdict.text}")
    return "\n".join(lines)


def with_table(readme: str, block: str) -> str:
    """`readme` with the text between the results markers replaced by `block`."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), flags=re.S)
    if len(pattern.findall(readme)) != 1:
        raise SystemExit(f"README.md must hold exactly one {START} ... {END} block")
    return pattern.sub(lambda _: f"{START}\n{block}\n{END}", readme)


def write_figures(csv: Path = CSV) -> None:
    """Accuracy vs sparsity, and claim 1's gap vs width with error bars, drawn by the report's code."""
    done = finished_runs(csv)
    plot_metric_vs_sparsity(done, ACCURACY, "test accuracy", FIGURES["accuracy"], "fmnist-reproduction")
    gaps = gaps_to_dense(done, ACCURACY)
    panels = {d: part for d, part in gaps.groupby("distribution")}
    plot_differences(
        panels, "width", lambda r: f"sparsity {r['sparsity']:g}", "test accuracy − dense (points)", FIGURES["gap"],
        "fmnist-reproduction: gap to dense vs width (mean ± std over seeds)", {d: 100.0 for d in panels},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md's results are up to date")
    args = parser.parse_args(argv)
    current = README.read_text()
    expected = with_table(current, results_block())
    if args.check:
        if current != expected:
            print(f"README.md's results block differs from {CSV.name}: run {__file__}", file=sys.stderr)
            return 1
        return 0
    README.write_text(expected)
    write_figures()
    return 0


if __name__ == "__main__":
    sys.exit(main())
