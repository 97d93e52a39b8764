"""Lottery-ticket levels as runs: a run with ``sparsity.method: lth`` trains one child run per level.

Layout of such a run directory ``RUN``::

    RUN/config.yaml                 the config (method lth): the run's identity in a study
    RUN/summary.json                the last finished level's summary, plus ``levels`` (one row per level)
    RUN/checkpoints/rewind.pt       the full training state at step ``rewind_step`` of level 0
    RUN/levels/<L>/                 level L: a normal run directory (config, checkpoints, metrics, summary)

Level 0 trains the dense network (Frankle & Carbin's first round) and saves the rewind state at
step k (``rewind_step``; 0 = the initialisation). Level L >= 1 prunes its parent's (level L - 1)
final weights by magnitude (`randsparse.sparsity.methods.lth`), rewinds the survivors to the step-k
weights, and trains from step k to the end with the mask fixed: the learning-rate schedule, the
data order and every RNG state continue from step k, the optimizer state starts afresh (as
open_lth does). Each level's summary records ``level``, its ``sparsity`` and its ``parent`` (the
previous level's directory relative to ``RUN``, e.g. ``levels/0``; none for level 0).

``--resume`` skips the finished levels and resumes the unfinished one from its own last checkpoint,
so a run killed anywhere ends bit-identical to an uninterrupted one (CPU, ``deterministic: true``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from torch import nn

from randsparse.errors import ConfigError, FileFormatError, InfeasibleBudgetError
from randsparse.sparsity import MaskSet, PrunableSelector, layer_densities, prunable_parameters, prunable_shapes
from randsparse.sparsity.layers import weight_geometry
from randsparse.sparsity.methods.lth import LotteryTicket
from randsparse.train.checkpoint import Progress, load_checkpoint
from randsparse.train.config import TrainConfig
from randsparse.train.distributed import Distributed
from randsparse.train.identity import config_hash
from randsparse.train.rundir import RunDir
from randsparse.train.signals import Interrupted
from randsparse.train.state import Run, RunHooks, restore_rank_rng

log = logging.getLogger(__name__)

# Per-level numbers copied into the top summary's ``levels`` rows.
_ROW_KEYS = ("status", "test_accuracy", "test_accuracy_last", "best_val_accuracy", "best_epoch", "density")


def level_dir(top: RunDir, level: int) -> RunDir:
    """The run directory of level `level` of the lottery run `top`."""
    return RunDir(top.path / "levels" / str(level))


def rewind_checkpoint(top: RunDir) -> Path:
    """Where the lottery run `top` keeps the training state every level >= 1 rewinds to."""
    return top.path / "checkpoints" / "rewind.pt"


def method_of(config: TrainConfig) -> LotteryTicket:
    """The config's `LotteryTicket` (options checked; the rewind step is checked once steps are known).

    Raises `ConfigError` for a dense config (lth needs a target sparsity) or a bad option.
    """
    if config.is_dense:
        raise ConfigError("sparsity.method lth needs a target sparsity above 0 (sparsity.sparsity)")
    return LotteryTicket(0, **config.sparsity.method_options)


def check_top(top: RunDir, resume: bool, config: TrainConfig) -> None:
    """Refuse, before anything is written, a lottery run directory that does not fit `config` and `resume`."""
    method_of(config)
    levels = top.path.resolve().parent
    if levels.name == "levels" and (levels.parent / "config.yaml").is_file():
        raise ConfigError(
            f"{str(top.path)!r} is level {top.path.name} of the lottery-ticket run {str(levels.parent)!r}:"
            " resume that run instead"
        )
    top.check_files()
    if top.config_file.is_file():
        if config_hash(top.read_config()) != config_hash(config):
            raise ConfigError(f"{str(top.path)!r} holds another run (a different config.yaml); choose another --out")
        if not resume:
            raise ConfigError(
                f"{str(top.path)!r} already holds a run; resume it with --resume, or choose another --out"
            )
    elif resume:
        raise FileFormatError(f"nothing to resume in {str(top.path)!r}: no config.yaml")


def _selector(config: TrainConfig) -> PrunableSelector:
    return PrunableSelector(include=config.sparsity.include, exclude=config.sparsity.exclude)


def prune_parent(
    config: TrainConfig, method: LotteryTicket, parent: RunDir, sparsity: float, model: nn.Module
) -> MaskSet:
    """The masks of a level at `sparsity`: magnitude pruning of `parent`'s final weights within its masks.

    Raises `FileFormatError` when the parent's last checkpoint is missing or damaged, and
    `InfeasibleBudgetError` when a layer would keep no weights (unless
    ``sparsity.options.allow_empty_layers``).
    """
    state = load_checkpoint(parent.last_checkpoint)
    names = list(prunable_parameters(model, _selector(config)))
    try:
        weights = {name: state["model"][name] for name in names}
    except KeyError as exc:
        raise FileFormatError(f"{str(parent.last_checkpoint)!r} has no weight {exc}") from None
    masks = MaskSet.from_state_dict(state["masks"]) if state.get("masks") is not None else None
    densities = None
    if method.scope == "layerwise":
        method.blocks = {name: weight_geometry(model, name).blocks for name in names}
        shapes = prunable_shapes(model, _selector(config))  # geometry-carrying: ERK sees q, k, v
        options = {k: v for k, v in config.sparsity.options.items() if k != "allow_empty_layers"}
        densities = layer_densities(shapes, 1.0 - sparsity, config.sparsity.distribution, **options)
    new = method.next_masks(weights, masks, sparsity, densities)
    empty = [name for name, mask in new.items() if not bool(mask.any())]
    if empty and not config.sparsity.options.get("allow_empty_layers", False):
        raise InfeasibleBudgetError(
            f"lottery-ticket pruning to sparsity {sparsity:.4g} empties layer {empty[0]!r}"
            f" ({len(empty)} layer(s) in all); use fewer levels' sparsity, scope layerwise, or"
            " sparsity.options.allow_empty_layers=true"
        )
    return new


class _Level:
    """The hooks of one level's run (`randsparse.train.loop.RunHooks`)."""

    def __init__(self, config: TrainConfig, top: RunDir, level: int, sparsity: float, method: LotteryTicket) -> None:
        self.config, self.top, self.level, self.sparsity, self.method = config, top, level, sparsity, method

    def as_run_hooks(self) -> RunHooks:
        """These hooks as the `RunHooks` of the level's run."""
        return RunHooks(masks=self.masks, start=self.start, after_step=self.after_step)

    def masks(self, model: nn.Module) -> MaskSet | None:
        if self.level == 0:
            return None  # level 0 trains the dense network
        return prune_parent(self.config, self.method, level_dir(self.top, self.level - 1), self.sparsity, model)

    def start(self, run: Run, steps_per_epoch: int) -> None:
        self.method.check_steps(steps_per_epoch * self.config.epochs)
        if run.dist.is_main and not self.top.config_file.is_file():  # the run exists once level 0 can start
            self.top.write_config(self.config)
            self.top.write_summary({"status": "running", "method": "lth", "level": 0, "levels": []})
        if self.level == 0:
            if self.method.rewind_step == 0:
                self._save_rewind(run)
            return
        self._rewind(run, steps_per_epoch)

    def after_step(self, run: Run) -> None:
        if self.level == 0 and run.progress.global_step == self.method.rewind_step:
            self._save_rewind(run)

    def _save_rewind(self, run: Run) -> None:
        """Save the full training state at step k (rank 0 writes; every rank gathers its RNG states)."""
        run.save(rewind_checkpoint(self.top))

    def _rewind(self, run: Run, steps_per_epoch: int) -> None:
        """Start a fresh level >= 1 at the step-k state: weights (masked), schedule, position, RNG; optimizer anew."""
        state = load_checkpoint(rewind_checkpoint(self.top))
        try:
            run.model.load_state_dict(state["model"])
            run.optimizer.load_state_dict(state["optimizer"])  # its learning rates and group settings ...
            run.optimizer.state.clear()  # ... but no momentum or moments: a fresh optimizer, as open_lth
            run.scheduler.load_state_dict(state["scheduler"])
            saved = Progress.from_dict(state["progress"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise FileFormatError(f"{str(rewind_checkpoint(self.top))!r} does not fit this run: {exc}") from None
        if run.masks is not None:
            run.masks.apply_(run.model)
        if run.ema is not None:  # the weight average rewinds with the weights, to its step-k value
            if state.get("ema") is None:
                raise FileFormatError(f"{str(rewind_checkpoint(self.top))!r} holds no weight average (optim.ema_decay)")
            run.ema.load_state_dict(state["ema"])
            run.ema.apply_masks(run.model)
        epoch, batch = saved.epoch, saved.batch_in_epoch
        if batch >= steps_per_epoch:  # step k ended an epoch: this level's first epoch is the next one
            epoch, batch = epoch + 1, 0
        run.progress = Progress(epoch=epoch, batch_in_epoch=batch, global_step=saved.global_step)
        restore_rank_rng(run, state)


def _row(level: int, sparsity: float, parent: str | None, summary: dict[str, Any]) -> dict[str, Any]:
    return {"level": level, "sparsity": sparsity, "parent": parent, **{k: summary.get(k) for k in _ROW_KEYS}}


def fit_levels(
    config: TrainConfig, top: RunDir, dist: Distributed, resume: bool, show_progress: bool | None
) -> dict[str, Any]:
    """Train (or resume) every level of a lottery-ticket run into `top`; returns the top summary.

    Finished levels are skipped; the first unfinished one is resumed from its checkpoint. The
    top summary is the last finished level's, plus ``method``, ``levels`` (one row per level:
    level, sparsity, parent, status, accuracies, density) and ``itop_rate`` (1.0: level 0 is dense).
    A level that diverges stops the run with that status; an interrupted one raises `Interrupted`.
    """
    from randsparse.train.loop import _fit

    method = method_of(config)
    dist.from_main(lambda: check_top(top, resume, config), "reading the run directory")
    sparsities = method.sparsities(config.sparsity.sparsity)
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for level, sparsity in enumerate(sparsities):
        run_dir = level_dir(top, level)
        parent = f"levels/{level - 1}" if level else None  # relative to `top`: the run may move
        summary = run_dir.read_summary()
        if summary.get("status") != "completed":
            if dist.is_main and top.config_file.is_file():  # else level 0's start writes it
                top.update_summary(status="running", method="lth", level=level, levels=rows)
            hooks = _Level(config, top, level, sparsity, method)
            try:
                summary = _fit(config, run_dir, dist, run_dir.has_run(), show_progress, hooks.as_run_hooks())
            except Interrupted:
                if dist.is_main and top.config_file.is_file():
                    top.update_summary(status="interrupted", level=level, levels=rows)
                raise
            except BaseException as exc:
                if dist.is_main and top.config_file.is_file():
                    top.update_summary(status="failed", level=level, levels=rows, error=f"{type(exc).__name__}: {exc}")
                raise
        if dist.is_main:
            summary = run_dir.update_summary(level=level, sparsity=sparsity, parent=parent, method="lth")
        rows.append(_row(level, sparsity, parent, summary))
        summaries.append(summary)
        if summary.get("status") != "completed":
            break
    final = {**summary, "method": "lth", "levels": rows, "level": rows[-1]["level"], "parent": None}
    final["itop_rate"] = 1.0  # every prunable weight is active in the dense level 0
    final["sparsity"] = config.sparsity.sparsity
    final["config_hash"] = config_hash(config)
    flops = [s.get("train_flops") for s in summaries]
    if all(isinstance(f, (int, float)) for f in flops):
        final["train_flops"] = math.fsum(flops)
    if dist.is_main:
        top.write_summary(final)
    return final


__all__ = ["check_top", "fit_levels", "level_dir", "method_of", "prune_parent", "rewind_checkpoint"]
