"""`randsparse eval`: calibration, OOD detection and adversarial robustness of a trained run."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from randsparse.evaluate.config import eval_config
from randsparse.schema import MAX_BATCH, flag_number
from randsparse.train import config_hash, load_run
from randsparse.train.evaluation import evaluate_trained
from randsparse.train.setup import resolve_device


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `eval` to the subcommands."""
    parser = commands.add_parser(
        "eval",
        help="evaluate a trained run: calibration, OOD detection, adversarial robustness",
        description=(
            "Evaluate the best (or last) checkpoint of RUN_DIR and add the results to the `eval` (or `eval_last`)"
            " section of its summary.json. Options default to the run config's `eval:` section; flags override them."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="directory a `randsparse train` wrote")
    parser.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint to evaluate")
    calibration = parser.add_mutually_exclusive_group()
    calibration.add_argument("--calibration", dest="calibration", action="store_true", default=None)
    calibration.add_argument("--no-calibration", dest="calibration", action="store_false", help="skip ECE/NLL/...")
    parser.add_argument("--bins", type=flag_number(int, ge=1, le=1000), help="ECE/MCE bins (default 15)")
    parser.add_argument("--ood", metavar="SETS", help="OOD sets, comma-separated (e.g. mnist,gaussian)")
    parser.add_argument("--ood-scores", metavar="SCORES", help="msp,max_logit,energy (default all)")
    parser.add_argument("--fgsm", metavar="EPS", help="FGSM eps list in [0, 1] pixel units (e.g. 0.01,8/255)")
    parser.add_argument("--pgd", metavar="EPS", help="PGD eps list in [0, 1] pixel units")
    parser.add_argument("--pgd-steps", type=flag_number(int, ge=1, le=10_000), help="PGD iterations (default 10)")
    parser.add_argument(
        "--pgd-step-size", type=flag_number(float, gt=0, le=1), help="PGD step in pixel units (default 2.5 eps / steps)"
    )
    parser.add_argument(
        "--attack-images", type=flag_number(int, ge=1), help="attack this many test images (default 1000)"
    )
    parser.add_argument(
        "--ood-images", type=flag_number(int, ge=1), help="score a seeded subset of this many images per OOD set"
    )
    parser.add_argument(
        "--batch-size", type=flag_number(int, ge=1, le=MAX_BATCH), help=f"evaluation batch size (at most {MAX_BATCH})"
    )
    parser.add_argument("--data-dir", metavar="DIR", help="where the dataset files are")
    parser.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, ...")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    parser.set_defaults(handler=_run_eval)


_FLAGS = {
    "calibration": "calibration",
    "bins": "bins",
    "ood": "ood",
    "ood_scores": "ood_scores",
    "fgsm": "fgsm",
    "pgd": "pgd",
    "pgd_steps": "pgd_steps",
    "pgd_step_size": "pgd_step_size",
    "attack_images": "attack_max_images",
    "ood_images": "ood_max_images",
    "batch_size": "batch_size",
}


def _run_eval(args: argparse.Namespace, console: Console) -> int:
    flags: dict[str, Any] = {
        key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag) is not None
    }
    device = resolve_device(args.device)
    loaded = load_run(args.run_dir, args.which)
    options = eval_config(loaded.config.eval, **flags)
    data_config = loaded.config.data.model_copy(
        update={k: v for k, v in (("root", args.data_dir), ("download", args.download or None)) if v is not None}
    )
    identity = f"{config_hash(loaded.config)}-{args.which}-epoch{loaded.epoch}"
    summary = loaded.run_dir.read_summary()  # refuse an unreadable summary before writing anything
    result = evaluate_trained(
        loaded.model.to(device), data_config, loaded.info, options, out_dir=loaded.run_dir.path, identity=identity
    )
    # The best model's results live under `eval` (as training writes them), the last model's under `eval_last`.
    key = "eval" if args.which == "best" else "eval_last"
    summary = {**summary, key: {**(summary.get(key) or {}), **result}}
    loaded.run_dir.write_summary(summary)
    if args.format == "json":
        print(json.dumps(summary[key], indent=2))
        return 0
    table = Table(title=f"{loaded.run_dir.path} ({args.which} checkpoint, epoch {loaded.epoch})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if not key.startswith("seconds."):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    return 0
