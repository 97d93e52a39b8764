"""The sparse-training method during a run: asked on its schedule, ITOP rate, mask change and training FLOPs.

`SparseTraining` is the one bridge between the loop and a `SparsityMethod`: before optimizer step
``t`` (1-based, one per global batch) it turns on the capture of dense gradients when the method
needs them; after the step, when ``method.is_update_step(t)``, it averages those gradients over the
processes (DDP), asks the method for new masks with a generator seeded from (mask seed, ``t``) —
the same on every rank — applies them through `FixedMask.update_masks` and checks, by an all-gathered
checksum, that every rank holds the same masks (`MaskMismatchError` otherwise). Steps are counted
by the loop's ``global_step``, so neither a step the AMP scaler skips nor gradient accumulation
moves an update.

Metrics (Liu et al., 2021, "Do we actually need dense over-parameterization? In-time
over-parameterization in sparse training"): ``itop_rate`` is the fraction of prunable weights that
were active at some point of training; ``mask_change`` is, per update, the fraction of the weights
active before it that are inactive after it (for SET/RigL the fraction moved, for GMP the fraction
pruned), averaged over the epoch's (metrics row) or the run's (summary) updates, 0.0 without any.
``train_flops`` follows the RigL paper's appendix: a training step costs 3 × the forward FLOPs of
its masks (forward 1×, backward 2×, sparse layers at their density) per example, and a step where
RigL reads the dense gradient costs 2 × sparse + 1 × dense forward FLOPs instead; FLOPs = 2 × MACs
(`randsparse.evaluate.complexity.count_flops` counts MACs). Evaluation passes are not counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from randsparse.accel.engine import dense_gradients
from randsparse.evaluate.complexity import count_flops
from randsparse.seeding import mix, seeded_generator
from randsparse.sparsity import FixedMask, MaskSet, attach
from randsparse.sparsity.layers import weight_geometry
from randsparse.sparsity.methods import SparsityMethod, get_method
from randsparse.train.config import TrainConfig
from randsparse.train.distributed import Distributed

CHECKPOINT_KEY = "sparse_training"


class SparseTraining:
    """A run's method, its enforcement handle (None for a dense run) and the DST metrics so far."""

    def __init__(
        self,
        method: SparsityMethod,
        model: nn.Module,
        handle: FixedMask | None,
        mask_seed: int,
        dist: Distributed,
        input_shape: Sequence[int],
    ) -> None:
        self.method = method
        self.model = model
        self.handle = handle
        self.mask_seed = mask_seed
        self.dist = dist
        self.input_shape = tuple(input_shape)
        self.ever_active: dict[str, torch.Tensor] | None = None
        if handle is not None:
            self.ever_active = {name: mask.clone() for name, mask in handle.masks.items()}
        self.train_flops = 0.0
        self.updates = 0
        self.change_sum = 0.0
        self.epoch_updates = 0
        self.epoch_change_sum = 0.0
        self._macs = self._count_macs()
        self._dense_layers = contextlib.ExitStack()  # the engine's layers run dense while it is open

    def _count_macs(self) -> tuple[int, int]:
        """(dense, sparse) MACs of one example's forward pass with the current masks (all dense without)."""
        if self.handle is None:
            dense = count_flops(self.model, self.input_shape).dense
            return (dense, dense)
        report = count_flops(self.model, self.input_shape, self.handle.masks)
        return (report.dense, report.sparse)

    def before_step(self, step: int) -> None:
        """Before optimizer step `step`'s forward and backward: capture dense gradients when the method needs them.

        The sparse training engine computes the gradient of kept weights only, so such a step runs
        every engaged layer masked dense (`randsparse.accel.engine.dense_gradients`) until `after_step`.
        """
        if self.handle is not None:
            needed = self.method.needs_dense_gradients(step)
            self.handle.capture_dense_gradients(needed)
            self._dense_layers.close()
            if needed:
                self._dense_layers.enter_context(dense_gradients(self.model))

    def after_step(self, step: int, examples: float) -> None:
        """After optimizer step `step` (which trained on `examples` examples over all processes).

        A mask update re-packs the sparse engine's layers and re-indexes the kept-entries optimizer
        (both notice the changed masks at their next use).
        """
        self._dense_layers.close()
        dense, sparse = self._macs
        dense_step = self.handle is not None and self.method.needs_dense_gradients(step)
        per_example = 2 * sparse + dense if dense_step else 3 * sparse
        self.train_flops += 2.0 * per_example * examples  # FLOPs = 2 x MACs
        if self.handle is not None and self.method.is_update_step(step):
            self._update(step)

    def _update(self, step: int) -> None:
        handle = self.handle
        assert handle is not None and self.ever_active is not None
        grads = None
        if self.method.needs_dense_gradients(step):
            captured = handle.dense_gradients()
            params = dict(self.model.named_parameters())
            grads = {
                name: captured.get(name, torch.zeros_like(params[name])).float()
                for name in handle.masks  # the plan's order, the same on every rank
            }
            self.dist.average(list(grads.values()), f"averaging the dense gradients of step {step}")
        old = {name: mask.clone() for name, mask in handle.masks.items()}
        params = dict(self.model.named_parameters())
        weights = {name: params[name].detach() for name in old}
        generator = seeded_generator(mix(self.mask_seed, step), "sparse-training update")
        new = self.method.update(step, weights, old, grads, generator)
        handle.update_masks(new, self.method.target_counts(step))
        self.dist.check_masks(handle.masks)  # every rank decided the same
        current = handle.masks
        active_before = sum(int(mask.sum()) for mask in old.values())
        moved = sum(int((old[name] & ~current[name]).sum()) for name in old)
        change = moved / active_before if active_before else 0.0
        for name, mask in current.items():
            self.ever_active[name] |= mask
        self.updates += 1
        self.change_sum += change
        self.epoch_updates += 1
        self.epoch_change_sum += change
        if any(int(old[name].sum()) != int(current[name].sum()) for name in old):
            self._macs = self._count_macs()  # densities moved (GMP)

    def itop_rate(self) -> float:
        """Fraction of prunable weights active at some point so far (1.0 for a dense run)."""
        if self.ever_active is None:
            return 1.0
        total = sum(mask.numel() for mask in self.ever_active.values())
        return sum(int(mask.sum()) for mask in self.ever_active.values()) / total if total else 1.0

    def epoch_metrics(self) -> dict[str, Any]:
        """The metrics row's DST columns for the epoch that just ended; starts the next epoch's count."""
        row = {
            "itop_rate": self.itop_rate(),
            "mask_change": self.epoch_change_sum / self.epoch_updates if self.epoch_updates else 0.0,
            "mask_updates": self.epoch_updates,
        }
        self.epoch_updates, self.epoch_change_sum = 0, 0.0
        return row

    def summary(self) -> dict[str, Any]:
        """The summary's DST fields: ``itop_rate``, ``mask_change`` (per update), ``mask_updates``, ``train_flops``."""
        return {
            "itop_rate": self.itop_rate(),
            "mask_change": self.change_sum / self.updates if self.updates else 0.0,
            "mask_updates": self.updates,
            "train_flops": self.train_flops,
        }

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the method's schedule state, the ITOP masks, the metric sums."""
        return {
            "method": self.method.name,
            "state": self.method.state_dict(),
            "ever_active": MaskSet(self.ever_active).state_dict() if self.ever_active is not None else None,
            "train_flops": self.train_flops,
            "updates": self.updates,
            "change_sum": self.change_sum,
            "epoch_updates": self.epoch_updates,
            "epoch_change_sum": self.epoch_change_sum,
        }

    def load_state_dict(self, state: Mapping[str, Any] | None, examples_seen: float) -> None:
        """Restore `state_dict`'s output; None (a checkpoint of an older release): the metrics of a static run so far.

        Call after the checkpoint's masks are attached. `examples_seen` (training examples of the
        steps done, over all processes) estimates the FLOPs of an older checkpoint.
        """
        if state is None:
            if self.handle is not None:
                self.ever_active = {name: mask.clone() for name, mask in self.handle.masks.items()}
            self.train_flops = 2.0 * 3 * self._macs[1] * examples_seen
            return
        self.method.load_state_dict(dict(state["state"]))
        if state["ever_active"] is not None and self.ever_active is not None:
            ever = MaskSet.from_state_dict(state["ever_active"])
            self.ever_active = {name: ever[name].to(mask.device) for name, mask in self.ever_active.items()}
        self.train_flops = float(state["train_flops"])
        self.updates = int(state["updates"])
        self.change_sum = float(state["change_sum"])
        self.epoch_updates = int(state["epoch_updates"])
        self.epoch_change_sum = float(state["epoch_change_sum"])
        self._macs = self._count_macs()


def start_sparse_training(
    config: TrainConfig,
    model: nn.Module,
    plan: MaskSet | None,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    dist: Distributed,
    input_shape: Sequence[int],
) -> SparseTraining:
    """Build the config's method, attach the masks it starts from (`plan` itself for ``static``) to `model`.

    `plan` is the layer-wise rule's draw (None for a dense run); `total_steps` the run's optimizer
    steps. A moving method's masks are copies, never the plan's tensors. The method learns each
    layer's stacked projections (`SparsityMethod.blocks`) from `model` here, before `start`.
    """
    method = get_method(config.sparsity.method)(total_steps, **config.sparsity.method_options)
    handle = None
    if plan is not None:
        params = dict(model.named_parameters())
        method.blocks = {name: weight_geometry(model, name).blocks for name in plan}
        masks = MaskSet(method.start(plan, {name: params[name].detach() for name in plan}))
        if method.dynamic:
            masks = MaskSet({name: mask.clone() for name, mask in masks.items()})
        handle = attach(model, masks, optimizer)
    return SparseTraining(method, model, handle, config.mask_seed, dist, input_shape)
