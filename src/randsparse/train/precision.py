"""Mixed precision of a training run: the autocast dtype and the gradient scaler that goes with it."""

from __future__ import annotations

import torch

from randsparse.errors import ConfigError
from randsparse.train.config import TrainConfig

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the run (None: full precision).

    `amp_dtype` ``auto`` is bfloat16 where the GPU supports it, else float16. On the CPU only an
    explicit ``amp_dtype: bf16`` runs (CPU autocast to bfloat16, no loss scaling). Raises
    `ConfigError` when `amp` is on with fp16 or auto and `device` is not CUDA (the CPU has no fp16
    autocast worth training with).
    """
    if not config.amp:
        return None
    if device.type == "cpu" and config.amp_dtype == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        raise ConfigError(
            f"amp needs a CUDA device, but this run is on {device.type}; set amp=false (or amp_dtype=bf16 on the CPU)"
        )
    if config.amp_dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _DTYPES[config.amp_dtype]


class StaticGradScaler(torch.amp.GradScaler):
    """A gradient scaler whose scale never changes: the loss is always multiplied by `scale`.

    Steps whose gradients overflow are still skipped (apex's static scaler, which the paper's
    ImageNet code used through ``--static-loss-scale``, would apply them).
    """

    def __init__(self, device: str, scale: float) -> None:
        super().__init__(device, init_scale=scale, growth_interval=2**30)
        self.static_scale = float(scale)

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        """Ends the step; the scale stays `static_scale` whatever the gradients held."""
        super().update(self.static_scale if new_scale is None else new_scale)


def build_scaler(config: TrainConfig, device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The run's gradient scaler: enabled for float16 only, dynamic or static per `loss_scale`."""
    if dtype == torch.float16 and config.loss_scale != "dynamic":
        return StaticGradScaler(device.type, config.loss_scale)
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
