"""`randsparse plan`: per-layer densities and the mask of a model (random, or top-scored), without training."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from randsparse import data as datasets
from randsparse.cli.common import add_model_args, build_model_from_args, fraction, output_file, seed
from randsparse.errors import ConfigError
from randsparse.schema import MAX_BATCH, MAX_IMAGE_SIZE, MAX_REPEATS, flag_number
from randsparse.sparsity import (
    PrunableSelector,
    SparsityPlan,
    available_distributions,
    available_scorers,
    load_custom_densities,
    plan_sparsity,
    prunable_shapes,
)
from randsparse.sparsity.masks import FILE_KIND as MASKS_FILE_KIND
from randsparse.sparsity.masks import SAMPLING_MODES, load_masks, save_masks
from randsparse.sparsity.plan import plan_from_masks
from randsparse.sparsity.saliency import ratio_method, scorer_needs_data, scorer_options

# The model-flag defaults of `add_model_args`; --data replaces them, and refuses other values that disagree.
_DEFAULT_NUM_CLASSES = 10
_DEFAULT_IN_CHANNELS = 3


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
        help=f"layer-wise rule (default erk); one of: {', '.join(available_distributions())}",
    )
    rule.add_argument("--seed", type=seed, default=0, help="mask seed (default 0)")
    rule.add_argument("--sampling", choices=SAMPLING_MODES, default="exact", help="exact count or Bernoulli")
    rule.add_argument("--erk-power-scale", type=fraction, help="erk/erk_plus: exponent of the ERK ratio")
    rule.add_argument("--classifier-density", type=fraction, help="erk_plus: density of the classifier (default 1)")
    rule.add_argument("--custom", metavar="FILE", help="custom: YAML/JSON with 'density:' or 'sparsity:' per layer")
    rule.add_argument(
        "--allow-empty-layers",
        action="store_true",
        help="accept masks that leave a layer with no weights (default: refused, naming the highest sparsity that"
        " keeps every layer connected)",
    )
    rule.add_argument("--include", metavar="REGEX", help="only prune weights whose name matches")
    rule.add_argument("--exclude", metavar="REGEX", help="never prune weights whose name matches")
    scores = parser.add_argument_group(
        "saliency scores", "for the *_ratio distributions (random masks at the scores' layer densities) and --prune"
    )
    scores.add_argument(
        "--prune",
        choices=available_scorers(),
        metavar="METHOD",
        help="mask mode: keep the top-scored weights of METHOD, the pruning-at-init baseline;"
        f" one of: {', '.join(available_scorers())}",
    )
    scores.add_argument(
        "--allow-collapse",
        action="store_true",
        help="let a layer lose all its weights (default: every layer keeps at least one weight per output unit)",
    )
    scores.add_argument(
        "--data", metavar="NAME", help="dataset to score on (snip, grasp); also sets --num-classes and --in-channels"
    )
    scores.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset's files")
    scores.add_argument("--download", action="store_true", help="let torchvision download a missing --data set")
    scores.add_argument(
        "--score-batches",
        type=flag_number(int, ge=1, le=MAX_REPEATS),
        metavar="N",
        help="snip: batches whose gradients are averaged",
    )
    scores.add_argument(
        "--batch-size",
        type=flag_number(int, ge=1, le=MAX_BATCH),
        metavar="N",
        help=f"snip, grasp: examples per batch (default 128, at most {MAX_BATCH})",
    )
    scores.add_argument(
        "--score-reinit",
        choices=("none", "xavier_normal"),
        help="snip: redraw the scoring copy's weights first (xavier_normal: the paper's SNIP code; default none)",
    )
    scores.add_argument(
        "--input-size",
        type=flag_number(int, ge=1, le=MAX_IMAGE_SIZE),
        metavar="N",
        help="synflow without --data: input height = width",
    )
    io = parser.add_argument_group("mask files")
    io.add_argument("--masks", metavar="FILE", help="describe a saved mask file instead of drawing masks")
    io.add_argument(
        "--save-masks",
        metavar="FILE",
        help="write the drawn masks to FILE (atomically): a new file, or a mask file to replace",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    parser.set_defaults(handler=_run_plan)


def _rule_options(args: argparse.Namespace, distribution: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.erk_power_scale is not None:
        options["erk_power_scale"] = args.erk_power_scale
    if args.classifier_density is not None:
        options["classifier_density"] = args.classifier_density
    if args.custom is not None:
        options["densities"] = load_custom_densities(args.custom)
    elif distribution == "custom":
        raise ConfigError("distribution 'custom' needs --custom FILE")
    return options


def _distribution(args: argparse.Namespace) -> tuple[str, str]:
    """The density rule and the mask mode the flags ask for."""
    if args.prune is None:
        return args.distribution or "erk", "random"
    wanted = f"{args.prune}_ratio"
    if args.distribution not in (None, wanted):
        raise ConfigError(
            f"--prune {args.prune} takes the layer densities from the {args.prune} scores;"
            f" --distribution {args.distribution} does not apply"
        )
    return wanted, "scores"


def _apply_dataset_info(args: argparse.Namespace) -> tuple[int, int, int]:
    """Set --num-classes and --in-channels from --data's dataset; its (channels, height, width)."""
    info = datasets.dataset_info(args.data, root=args.data_dir)
    for flag, attr, default, value in (
        ("--num-classes", "num_classes", _DEFAULT_NUM_CLASSES, info.num_classes),
        ("--in-channels", "in_channels", _DEFAULT_IN_CHANNELS, info.channels),
    ):
        given = getattr(args, attr)
        if given not in (default, value):
            raise ConfigError(f"{flag} {given} disagrees with dataset {args.data!r}, which has {value}; drop {flag}")
        setattr(args, attr, value)
    return info.shape


def _score_inputs(args: argparse.Namespace, method: str | None, shape: tuple[int, ...] | None) -> dict[str, Any]:
    """Keyword arguments of `plan_sparsity` that feed the scorer `method` (none for shape-only rules)."""
    flags = {
        "--score-batches": args.score_batches,
        "--batch-size": args.batch_size,
        "--input-size": args.input_size,
        "--score-reinit": args.score_reinit,
    }
    if method is None:
        given = [flag for flag, value in flags.items() if value is not None]
        if args.allow_collapse:
            given.append("--allow-collapse")
        if given:
            raise ConfigError(f"{', '.join(given)} apply only to the *_ratio distributions and --prune")
        return {}
    options: dict[str, Any] = {}
    for flag, option, value in (
        ("--score-batches", "num_batches", args.score_batches),
        ("--batch-size", "batch_size", args.batch_size),
        ("--score-reinit", "reinit", args.score_reinit),
    ):
        if value is not None:
            if option not in scorer_options(method):
                raise ConfigError(f"{flag} does not apply to {method} scores")
            options[option] = value
    inputs: dict[str, Any] = {"score_options": options}
    if args.data is not None:
        inputs["data"] = datasets.build(
            args.data, root=args.data_dir, split="train", download=args.download, augment=False
        )
    elif scorer_needs_data(method):
        raise ConfigError(f"{method} scores are computed on data: add --data NAME (see `randsparse data list`)")
    if args.input_size is not None:
        if args.data is not None:
            raise ConfigError("--input-size is taken from --data; drop one of them")
        if args.input_size < 1:
            raise ConfigError(f"--input-size must be a positive integer, got {args.input_size}")
        shape = (args.in_channels, args.input_size, args.input_size)
    if shape is not None:
        inputs["input_shape"] = shape
    if args.allow_collapse:
        inputs["allow_collapse"] = True
    return inputs


def _run_plan(args: argparse.Namespace, console: Console) -> int:
    distribution, mask_mode = _distribution(args)
    method = ratio_method(distribution)
    shape = _apply_dataset_info(args) if args.data is not None else None
    if method is None:
        # Shape-only rules: build on the meta device, so even huge models cost no memory.
        model = build_model_from_args(args, device="meta")
    else:
        # Scores need real weights: initialise them from --seed, leaving the process's RNG as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            model = build_model_from_args(args, device="cpu")
    if args.masks is not None:
        if args.save_masks is not None or args.sparsity is not None:
            raise ConfigError("--masks describes a saved mask file; --sparsity and --save-masks do not apply")
        masks, metadata = load_masks(args.masks)
        saved = PrunableSelector(include=metadata.get("include"), exclude=metadata.get("exclude"))
        masks.validate(model, expected=prunable_shapes(model, saved))
        sparsity = 1.0 - masks.density()
        mode = str(metadata.get("mask_mode", "random"))
        distribution = str(metadata.get("distribution", "file"))
        plan = plan_from_masks(
            masks, sparsity, distribution, mask_mode=mode, allow_empty_layers=args.allow_empty_layers
        )
    else:
        if args.sparsity is None:
            raise ConfigError("--sparsity is required (or --masks FILE to describe saved masks)")
        if args.save_masks is not None:
            output_file(args.save_masks, MASKS_FILE_KIND, "--save-masks")
        selector = PrunableSelector(include=args.include, exclude=args.exclude)
        plan = plan_sparsity(
            model,
            args.sparsity,
            distribution,
            args.seed,
            args.sampling,
            selector,
            mask_mode=mask_mode,
            allow_empty_layers=args.allow_empty_layers,
            **_score_inputs(args, method, shape),
            **_rule_options(args, distribution),
        )
        if args.save_masks is not None:
            save_masks(
                plan.masks,
                args.save_masks,
                model=args.model,
                sparsity=args.sparsity,
                distribution=distribution,
                mask_mode=mask_mode,
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
    mode = ", mask: top scores" if plan.mask_mode == "scores" else ""
    table = Table(
        title=f"{model}: sparsity {plan.sparsity:g}, distribution {plan.distribution}{mode}",
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
