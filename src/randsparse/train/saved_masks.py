"""A saved draw as a run's masks: `sparsity.masks_file` (a mask file) or `sparsity.masks_from_run` (a run's).

Training a saved draw instead of drawing one lets two runs share exactly the same masks (another
seed of the weights, another optimizer, a longer schedule) and lets a user train masks made
elsewhere. The masks must name parameters of the model with their shapes, and only prunable ones
(weights of the layer types `prunable_shapes` lists); they need not cover every prunable layer
(the others stay dense). A run takes the masks of another run's last checkpoint (for a static
run, the masks it drew).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from randsparse.errors import FileFormatError, MaskMismatchError
from randsparse.sparsity import MaskSet, load_masks, prunable_shapes
from randsparse.train.checkpoint import load_checkpoint
from randsparse.train.rundir import RunDir


def _checked(masks: MaskSet, model: nn.Module, where: str) -> MaskSet:
    try:
        masks.validate(model)
    except MaskMismatchError as exc:
        raise MaskMismatchError(f"the masks of {where} do not fit the model: {exc}") from None
    unknown = sorted(set(masks) - set(prunable_shapes(model)))
    if unknown:
        raise MaskMismatchError(f"the masks of {where} cover {unknown[0]!r}, not a prunable weight of the model")
    if len(masks) == 0:
        raise MaskMismatchError(f"{where} holds no masks")
    return masks


def masks_of_file(path: str | Path, model: nn.Module) -> MaskSet:
    """The masks in mask file `path` (`save_masks`), checked against `model`.

    Raises `FileFormatError` for a missing or damaged file and `MaskMismatchError` for masks whose
    names or shapes do not fit `model`.
    """
    masks, _ = load_masks(path)
    return _checked(masks, model, f"sparsity.masks_file {str(path)!r}")


def masks_of_run(run_dir: str | Path, model: nn.Module) -> MaskSet:
    """The masks of run directory `run_dir`'s last checkpoint, checked against `model`.

    Raises `FileFormatError` when it holds no checkpoint or a dense one, `MaskMismatchError` when
    the masks do not fit `model`.
    """
    where = f"sparsity.masks_from_run {str(run_dir)!r}"
    checkpoint = RunDir(run_dir).last_checkpoint
    if not checkpoint.is_file():
        raise FileFormatError(f"{where} holds no checkpoint (no checkpoints/last.pt)")
    state = load_checkpoint(checkpoint)
    if state.get("masks") is None:
        raise FileFormatError(f"{where} is a dense run: it has no masks")
    return _checked(MaskSet.from_state_dict(state["masks"]), model, where)
