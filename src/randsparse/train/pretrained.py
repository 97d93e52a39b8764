"""Starting weights from a user's file (`model.init_from`): prune-then-finetune instead of training from scratch.

The file may be a plain state dict (``torch.save(model.state_dict(), path)``), a randsparse
checkpoint (its ``model``) or a checkpoint holding a ``state_dict`` entry (Lightning's); keys that
all carry one extra leading component (a LightningModule's ``model.`` attribute) are matched
without it. The weights are loaded after the model is built and before the masks are drawn, so a
score-based rule (``prune: magnitude``) ranks the loaded weights and a random mask prunes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from randsparse.errors import FileFormatError, first_line
from randsparse.storage import read_torch


def _state_dict_of(content: Any) -> Mapping[str, Any] | None:
    if isinstance(content, Mapping):
        for key in ("model", "state_dict"):
            inner = content.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if content and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()):
            return content
    return None


def _matching_keys(state: Mapping[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """`state` as is, or without a leading component every key shares, whichever names `wanted`."""
    if set(state) == wanted:
        return dict(state)
    heads = {key.split(".", 1)[0] for key in state}
    if len(heads) == 1 and all("." in key for key in state):
        stripped = {key.split(".", 1)[1]: value for key, value in state.items()}
        if set(stripped) == wanted:
            return stripped
    return dict(state)


@torch.no_grad()
def load_initial_weights(model: nn.Module, path: str | Path) -> None:
    """Load the weights in `path` into `model` in place (every key, every shape must match).

    Raises `FileFormatError` (one line) when the file is missing, unreadable, holds no state dict,
    or does not fit the model (naming the first missing, unexpected or mis-shaped entry).
    """
    where = f"model.init_from {str(path)!r}"
    content, _ = read_torch(Path(path), "model.init_from file")
    state = _state_dict_of(content)
    if state is None:
        raise FileFormatError(f"{where} holds no state dict (a mapping of names to tensors)")
    own = model.state_dict()
    state = _matching_keys(state, set(own))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        first = f"no entry {missing[0]!r}" if missing else f"an entry {unexpected[0]!r} the model does not have"
        raise FileFormatError(
            f"{where} does not fit the model: {first} ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for name, value in state.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise FileFormatError(
                f"{where} does not fit the model: {name!r} has shape {tuple(value.shape)}, the model's"
                f" {tuple(own[name].shape)}"
            )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise FileFormatError(f"{where} does not fit the model: {first_line(exc)}") from None
