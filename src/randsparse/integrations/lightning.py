"""`RandomPruning`: the Lightning callback that trains a LightningModule sparse from a random mask drawn at fit start.

Needs Lightning (``pip install 'randsparse[lightning]'``); importing this module without it is an
`ImportError` whose one line names the extra. It follows the conventions of Lightning's own
``ModelPruning`` callback: the prunable parameters are found on the LightningModule itself
(``model.conv1.weight`` for a module held as ``self.model``), the callback's state lives in
Lightning checkpoints under its `state_key` (``checkpoint["callbacks"][state_key]``), and the
weights a checkpoint holds are already pruned (zeros), so they load into a plain, unpruned module.

Hook order (Lightning 2.x ``Trainer._run``): ``setup`` → the checkpoint's module and callback states
are restored (``ckpt_path``) → the strategy wraps the module and builds the optimizers →
``on_fit_start`` → the optimizers' states are restored. `on_fit_start` is therefore where the
masks are drawn (or taken from the restored state) and attached (`randsparse.sparsity.attach`) to
the module and every optimizer: gradient hooks zero pruned gradients before clipping, AMP's
GradScaler and DDP's all-reduce see them, and optimizer step hooks re-zero the weights and every
optimizer state after each step. A strategy that restores after setup (``restore_checkpoint_after_setup``)
calls `load_state_dict` after `on_fit_start`; the restored masks then replace the drawn ones.
Strategies that shard parameters (FSDP, DeepSpeed) are refused in `setup` with one line: the masks
need each process to hold whole weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - exercised in an environment without Lightning
    raise ImportError(
        "randsparse.integrations.lightning needs Lightning: pip install 'randsparse[lightning]'"
    ) from None

from randsparse.errors import ConfigError, MaskMismatchError
from randsparse.sparsity import FixedMask, MaskSet, PrunableSelector, attach, plan_sparsity
from randsparse.sparsity.distributions import get_distribution
from randsparse.sparsity.masks import SAMPLING_MODES

__all__ = ["RandomPruning"]

log = logging.getLogger(__name__)

# Strategies whose processes hold shards of a weight, not whole weights.
_SHARDING = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


class RandomPruning(pl.Callback):
    """Prune a LightningModule at random when fit starts and keep the masks fixed through training.

    Args:
        sparsity: fraction of the prunable weights set to zero, in [0, 1) (density = 1 - sparsity).
        distribution: the layer-wise density rule (``erk``, ``er``, ``uniform``, ``uniform_plus``,
            ``erk_plus``, ...; any registered one; Liu et al., ICLR 2022).
        seed: the mask seed (an int); a layer's mask depends only on it, the layer's name and its
            density, so every process of a multi-process run draws the same masks.
        sampling: ``exact`` (exactly the kept count per layer) or ``bernoulli``.
        include, exclude: regular expressions on parameter names selecting what may be pruned
            (norms and biases never are).
        allow_empty_layers: accept masks that leave a layer without weights.
        verbose: log the density of each layer when the masks are attached.
        **options: options of the density rule (e.g. ``erk_power_scale``).

    Raises `UnknownNameError` (at once) for an unknown `distribution`, `ConfigError` for a sparsity
    outside [0, 1) or an unknown `sampling`, `InfeasibleBudgetError` (at fit start) when the masks would empty a layer,
    `MaskMismatchError` when restored masks do not fit the module, `ConfigError` for a strategy
    that shards parameters. `masks` holds the masks (a `MaskSet`, bool tensors shaped like the
    weights) once drawn or restored.
    """

    def __init__(
        self,
        sparsity: float = 0.9,
        distribution: str = "erk",
        *,
        seed: int = 0,
        sampling: str = "exact",
        include: str | None = None,
        exclude: str | None = None,
        allow_empty_layers: bool = False,
        verbose: bool = False,
        **options: Any,
    ) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
        get_distribution(distribution)  # an unknown rule fails here, listing the known ones
        if sampling not in SAMPLING_MODES:
            raise ConfigError(f"unknown sampling {sampling!r}; known: {', '.join(SAMPLING_MODES)}")
        self.sparsity = float(sparsity)
        self.distribution = distribution
        self.seed = seed
        self.sampling = sampling
        self.selector = PrunableSelector(include=include, exclude=exclude)
        self.allow_empty_layers = allow_empty_layers
        self.verbose = verbose
        self.options = options
        self.masks: MaskSet | None = None
        self._handle: FixedMask | None = None
        self._trainer: pl.Trainer | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(sparsity=self.sparsity, distribution=self.distribution, seed=self.seed)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and type(trainer.strategy).__name__ in _SHARDING:
            raise ConfigError(
                f"RandomPruning needs whole weights in every process; {type(trainer.strategy).__name__} shards"
                " them: use the ddp strategy"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.masks is None and self.sparsity > 0:
            plan = plan_sparsity(
                pl_module,
                self.sparsity,
                self.distribution,
                self.seed,
                self.sampling,  # type: ignore[arg-type]
                self.selector,
                allow_empty_layers=self.allow_empty_layers,
                **self.options,
            )
            self.masks = plan.masks
        self._trainer = trainer
        self._attach(pl_module)

    def _attach(self, pl_module: pl.LightningModule) -> None:
        if self.masks is None or self._trainer is None:
            return
        if self._handle is not None:
            self._handle.remove()
        self._handle = attach(pl_module, self.masks, list(self._trainer.optimizers))
        if self.verbose:
            for row in self.masks.summary():
                log.info("RandomPruning: %s kept %d of %d (density %.4f)", row.name, row.kept, row.params, row.density)
        log.info("RandomPruning: density %.4f over %d layers", self.masks.density(), len(self.masks))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """After fit the module is plain again (pruned weights stay zero); `masks` keeps the masks."""
        if stage == "fit" and self._handle is not None:
            self._handle.remove()
            self._handle = None
            self._trainer = None

    def state_dict(self) -> dict[str, Any]:
        """The masks (bit-packed, `MaskSet.state_dict`) and what drew them: what a checkpoint stores."""
        if self.masks is None:
            return {}
        return {
            "masks": self.masks.state_dict(),
            "sparsity": self.sparsity,
            "distribution": self.distribution,
            "seed": self.seed,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Take the masks of a checkpoint (resume): they replace any drawn ones, and are attached if training runs."""
        if not state_dict.get("masks"):
            return
        try:
            self.masks = MaskSet.from_state_dict(state_dict["masks"])
        except MaskMismatchError as exc:
            raise MaskMismatchError(f"the checkpoint's RandomPruning masks are corrupt: {exc}") from None
        if self._handle is not None and self._trainer is not None:
            self._attach(self._trainer.lightning_module)
