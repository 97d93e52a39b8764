"""`randsparse plan`: per-layer densities and the random mask of a model, without training."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from randsparse.cli.common import add_model_args, build_model_from_args, fraction
from randsparse.errors import ConfigError
from randsparse.sparsity import (
    PrunableSelector,
    SparsityPlan,
    available_distributions,
    load_custom_densities,
    plan_sparsity,
    prunable_shapes,
)
from randsparse.sparsity.masks import SAMPLING_MODES, load_masks, save_masks
from randsparse.sparsity.plan import plan_from_masks


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `plan` to the subcommands."""
    parser = commands.add_parser(
        "plan",
        help="per-layer densities and random mask of a model, without training",
        description="Print the per-layer sparsity plan (name, shape, params, density, kept) of a model.",
    )
    add_model_args(parser)
    rule = parser.add_argument_group("sparsity")
    rule.add_argument("--sparsity", type=fraction, help="global fraction of prunable weights zeroed, in [0, 1)")
    rule.add_argument(
        "--distribution",
        default="erk",
        help=f"layer-wise rule; one of: {', '.join(available_distributions())}",
    )
    rule.add_argument("--seed", type=int, default=0, help="mask seed (default 0)")
    rule.add_argument("--sampling", choices=SAMPLING_MODES, default="exact", help="exact count or Bernoulli")
    rule.add_argument("--erk-power-scale", type=float, help="erk/erk_plus: exponent of the ERK ratio")
    rule.add_argument("--classifier-density", type=float, help="erk_plus: density of the classifier (default 1)")
    rule.add_argument("--custom", metavar="FILE", help="custom: YAML/JSON with 'density:' or 'sparsity:' per layer")
    rule.add_argument("--include", metavar="REGEX", help="only prune weights whose name matches")
    rule.add_argument("--exclude", metavar="REGEX", help="never prune weights whose name matches")
    io = parser.add_argument_group("mask files")
    io.add_argument("--masks", metavar="FILE", help="describe a saved mask file instead of drawing masks")
    io.add_argument("--save-masks", metavar="FILE", help="write the drawn masks to FILE (atomically)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    parser.set_defaults(handler=_run_plan)


def _rule_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.erk_power_scale is not None:
        options["erk_power_scale"] = args.erk_power_scale
    if args.classifier_density is not None:
        options["classifier_density"] = args.classifier_density
    if args.custom is not None:
        options["densities"] = load_custom_densities(args.custom)
    elif args.distribution == "custom":
        raise ConfigError("distribution 'custom' needs --custom FILE")
    return options


def _run_plan(args: argparse.Namespace, console: Console) -> int:
    # Plans need shapes only: build on the meta device, so even huge models cost no memory.
    model = build_model_from_args(args, device="meta")
    if args.masks is not None:
        if args.save_masks is not None or args.sparsity is not None:
            raise ConfigError("--masks describes a saved mask file; --sparsity and --save-masks do not apply")
        masks, metadata = load_masks(args.masks)
        saved = PrunableSelector(include=metadata.get("include"), exclude=metadata.get("exclude"))
        masks.validate(model, expected=prunable_shapes(model, saved))
        sparsity = 1.0 - masks.density()
        plan = plan_from_masks(masks, sparsity, str(metadata.get("distribution", "file")))
    else:
        if args.sparsity is None:
            raise ConfigError("--sparsity is required (or --masks FILE to describe saved masks)")
        selector = PrunableSelector(include=args.include, exclude=args.exclude)
        plan = plan_sparsity(
            model, args.sparsity, args.distribution, args.seed, args.sampling, selector, **_rule_options(args)
        )
        if args.save_masks is not None:
            save_masks(
                plan.masks,
                args.save_masks,
                model=args.model,
                sparsity=args.sparsity,
                distribution=args.distribution,
                seed=args.seed,
                sampling=args.sampling,
                include=args.include,
                exclude=args.exclude,
            )
    if args.format == "json":
        print(json.dumps({"model": args.model, **plan.to_dict()}, indent=2))
    else:
        console.print(_plan_table(args.model, plan))
    return 0


def _plan_table(model: str, plan: SparsityPlan) -> Table:
    table = Table(
        title=f"{model}: sparsity {plan.sparsity:g}, distribution {plan.distribution}",
        show_footer=True,
        title_justify="left",
    )
    table.add_column("layer", footer="total")
    table.add_column("shape")
    table.add_column("params", justify="right", footer=f"{plan.params:,}")
    table.add_column("density", justify="right", footer=f"{plan.density:.4f}")
    table.add_column("kept", justify="right", footer=f"{plan.kept:,}")
    for layer in plan.layers:
        shape = "×".join(str(d) for d in layer.shape)
        table.add_row(layer.name, shape, f"{layer.params:,}", f"{layer.density:.4f}", f"{layer.kept:,}")
    return table
