"""Reading a trained run back: its config, the model of a checkpoint with its masks, its data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from randsparse import data as datasets
from randsparse.errors import FileFormatError, MaskMismatchError, first_line
from randsparse.models import ModelSpec
from randsparse.sparsity import MaskSet, PrunableSelector, prunable_shapes
from randsparse.train.checkpoint import load_checkpoint
from randsparse.train.config import TrainConfig
from randsparse.train.ema import evaluated_weights
from randsparse.train.identity import checkpoint_matches
from randsparse.train.rundir import RunDir


@dataclass
class LoadedRun:
    """A run's config, the model of one checkpoint (masks applied, eval mode, CPU) and its data info."""

    run_dir: RunDir
    config: TrainConfig
    model: nn.Module
    masks: MaskSet | None
    info: Any  # randsparse.data.DatasetInfo
    checkpoint: Path
    epoch: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) the model takes."""
        return self.info.shape

    @property
    def spec(self) -> ModelSpec:
        """What rebuilds the run's architecture (and says what it is)."""
        return ModelSpec.from_config(self.config.model, self.info)

    def model_spec(self) -> dict[str, Any]:
        """The JSON form of `spec`."""
        return self.spec.to_dict()


def load_run(run_dir: str | Path, which: Literal["best", "last"] = "best") -> LoadedRun:
    """The model of `run_dir`'s best (or last) checkpoint, with its masks applied, ready to evaluate."""
    run = RunDir(run_dir)
    config = run.read_config()
    path = run.best_checkpoint if which == "best" else run.last_checkpoint
    state = load_checkpoint(path)
    if not checkpoint_matches(state, config, repr(str(path))):
        raise FileFormatError(f"{str(path)!r} was not written by the config in {str(run.config_file)!r}")
    info = datasets.dataset_info(config.data.name, root=config.data.root, **config.data.options)
    with torch.random.fork_rng(devices=[]):  # initial weights are overwritten: leave the global RNG alone
        model = ModelSpec.from_config(config.model, info).build()
    try:
        model.load_state_dict(evaluated_weights(state))  # with optim.ema_decay: the weight average
    except RuntimeError as exc:
        raise FileFormatError(f"{str(path)!r} does not fit the model: {first_line(exc)}") from None
    masks = None
    if state.get("masks") is not None:
        try:
            masks = MaskSet.from_state_dict(state["masks"])
        except MaskMismatchError as exc:
            raise FileFormatError(f"masks in {str(path)!r} are corrupt: {exc}") from None
        masks.validate(model, expected=list(masks))
        widest = PrunableSelector(embeddings=config.sparsity.prune_embeddings)  # include/exclude only narrow it
        unknown = set(masks) - set(prunable_shapes(model, widest))
        if unknown:
            raise MaskMismatchError(f"masks in {str(path)!r} cover non-prunable weights: {sorted(unknown)[0]}")
        masks.apply_(model)
    model.eval()
    return LoadedRun(run, config, model, masks, info, path, int(state["progress"]["epoch"]))
