"""`randsparse data list`: every registered dataset, whether its files were found, and where."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from randsparse import data
from randsparse.data.lookup import ENV_VAR, ways_to_get
from randsparse.data.registry import get_entry
from randsparse.errors import RandsparseError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `data` (with its `list` action) to the subcommands."""
    parser = commands.add_parser(
        "data",
        help="datasets: which are available, and where their files are",
        description="Inspect the dataset registry and the offline-first lookup of dataset files.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser), required=True)
    listing = actions.add_parser(
        "list",
        help="each dataset, whether it was found and where",
        description=(
            "List every dataset with where its files were found: --data-dir, then $"
            f"{ENV_VAR}, then /usr/share/datasets (Debian's dataset-* packages), then the download cache."
        ),
    )
    listing.add_argument("--data-dir", metavar="DIR", help="a data folder to look in first (the `root` argument)")
    listing.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    listing.set_defaults(handler=_run_list)


def _row(name: str, data_dir: str | None) -> dict[str, Any]:
    location = data.locate(name, data_dir)
    entry = get_entry(name)
    try:
        info = data.dataset_info(name, root=data_dir)
    except RandsparseError:  # noise sets need like=; an image folder needs its files
        info = None
    hint = None if location.found else ways_to_get(entry, data_dir)
    return {
        "name": name,
        "found": location.found,
        "origin": location.origin,
        "path": str(location.path) if location.path is not None else None,
        "looked": [str(p) for p in location.looked],
        "how_to_get": hint,
        "description": entry.description,
        "num_classes": info.num_classes if info else None,
        "shape": list(info.shape) if info else None,
        "train_size": info.train_size if info else None,
        "test_size": info.test_size if info else None,
        "ood_sets": data.ood_sets(name),
    }


def _short_hint(name: str) -> str:
    """The ways to get a missing dataset, in a few words (the JSON output has the full sentence)."""
    entry = get_entry(name)
    if entry.origin != "files":
        return ""
    ways = [f"apt-get install {entry.package}"] if entry.package else []
    if entry.download is not None:
        ways.append("--download (train, plan, eval, study)")
    if not ways:
        ways.append(entry.how_to_get)
    return "not found: " + " or ".join(ways)


def _run_list(args: argparse.Namespace, console: Console) -> int:
    rows = [_row(name, args.data_dir) for name in data.available_datasets()]
    if args.format == "json":
        print(json.dumps({"data_dir": args.data_dir, "datasets": rows}, indent=2))
        return 0
    table = Table(title="datasets", title_justify="left")
    table.add_column("dataset")
    table.add_column("status")
    table.add_column("where / how to get it", overflow="fold")
    table.add_column("classes", justify="right")
    table.add_column("shape")
    for row in rows:
        status = {"missing": "[red]missing[/]", "generated": "generated", "bundled": "bundled"}.get(
            row["origin"], f"[green]found[/] ({row['origin']})"
        )
        where = (
            row["path"] or _short_hint(row["name"]) or ("needs like=<dataset>" if row["shape"] is None else "seeded")
        )
        shape = "×".join(str(d) for d in row["shape"]) if row["shape"] else "-"
        table.add_row(row["name"], status, where, str(row["num_classes"] or "-"), shape)
    console.print(table)
    return 0
