"""Engine ``auto``'s whole-model check: the layers' sparse choices, timed together against the masked dense model.

Per-layer timings miss what only the whole training step shows (the hand-offs between the sparse
kernels' thread pool and PyTorch's, what each layer leaves in the caches): on ResNet-20 at 95 %
ERK, 2 threads, 15 of 22 layers measured faster sparse on their own, and the step with all 15
sparse ran at 0.83× the dense step. So before ``auto`` trains on a batch shape for the first time
(and again after a mask change re-packs layers), `check_auto` times forward+backward of the whole
model three ways on that very batch, interleaved, medians (`measure_candidates`):

- ``dense``: every layer masked dense;
- ``auto``: the layers that chose sparse on their own, sparse;
- ``strong``: only the layers whose own speed-up is at least `STRONG`, sparse (when that is a
  different set).

The fastest of ``auto`` and ``strong`` is kept if it beats ``dense`` by `dispatch.SPARSE_MARGIN`; every other
layer is forced dense (`LayerEngine.forced_dense`, until its next re-pack). The check leaves the run
as it found it: no parameter changes, gradients cleared, BatchNorm statistics and the CPU RNG
restored, so a run trains the same model with or without it. `engine_report` lists each check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from randsparse.accel.dispatch import measure_candidates
from randsparse.accel.engine import WHOLE_MODEL_CHECKS, LayerEngine, engines
from randsparse.sparsity.enforce import BUFFER_SUFFIX

log = logging.getLogger(__name__)

STRONG = 1.5
"""Own forward+backward speed-up (dense ms / sparse ms) of the layers in the ``strong`` candidate."""

_DONE = "_randsparse_auto_checked"


def _own_speedup(state: LayerEngine) -> float:
    """The layer's own dense/sparse time ratio at its latest measurement (0 when unmeasured)."""
    decision = next(reversed(state.decisions.values()), None)
    return (decision.speedup or 0.0) if decision is not None else 0.0


def check_auto(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: Callable[..., torch.Tensor]
) -> dict[str, Any] | None:
    """Check ``auto``'s choices on the whole of `model` for this batch (see the module doc); None when not needed.

    `model` is the plain model (not its DDP wrapper: the check's backward passes must not
    all-reduce), `inputs` and `targets` one training (micro-)batch. Runs once per batch shape and
    set of packs; returns the check's record (also kept for `engine_report`).
    """
    states = [state for state in engines(model) if state.mode == "auto"]  # cached list: runs every step
    if not states or not torch.is_grad_enabled():
        return None

    def key() -> tuple[Any, ...]:  # a layer's first forward packs it: the key after the check counts
        return (tuple(inputs.shape), tuple(state.repacks for state in states))

    done = model.__dict__.setdefault(_DONE, set())
    if key() in done:
        return None
    rng = torch.get_rng_state()
    buffers = {n: b.clone() for n, b in model.named_buffers() if not n.endswith(BUFFER_SUFFIX)}
    was_training = model.training
    model.train()

    def step(_: torch.Tensor) -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(inputs).float(), targets).backward()

    try:
        for state in states:
            state.forced_dense = False
        step(inputs)  # each layer measures itself on this shape and chooses
        chosen = [state for state in states if state.last_choice == "sparse"]
        record: dict[str, Any] = {"input": list(inputs.shape), "sparse_layers": [s.name for s in chosen]}
        if chosen:
            strong = [state for state in chosen if _own_speedup(state) >= STRONG]
            sets = {"dense": [], "auto": chosen}
            if strong and len(strong) < len(chosen):
                sets["strong"] = strong

            def only(layers: list[LayerEngine]) -> Callable[[torch.Tensor], None]:
                def run(x: torch.Tensor) -> None:
                    for state in states:
                        state.forced_dense = all(state is not s for s in layers)
                    step(x)

                return run

            decision, _ = measure_candidates({name: only(layers) for name, layers in sets.items()}, inputs)
            kept = sets[decision.choice]
            for state in states:
                state.forced_dense = all(state is not s for s in kept)
            record.update(
                choice=decision.choice, fwd_bwd_ms=dict(decision.timings_ms), kept_sparse=[s.name for s in kept]
            )
            log.info(
                "engine auto, whole model on %s: %s (%s)", list(inputs.shape), decision.choice,
                ", ".join(f"{k} {v:.1f} ms" for k, v in decision.timings_ms.items()),
            )  # fmt: skip
        model.__dict__.setdefault(WHOLE_MODEL_CHECKS, []).append(record)
        return record
    finally:
        done.add(key())
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
        torch.set_rng_state(rng)
        model.train(was_training)
