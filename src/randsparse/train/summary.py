"""A run's static summary: what the run is, known before training (sizes, FLOPs, identity, processes)."""

from __future__ import annotations

import socket
from typing import Any

import torch

from randsparse import __version__
from randsparse.evaluate.complexity import count_flops, count_params
from randsparse.models import ModelSpec
from randsparse.sparsity import prunable_shapes
from randsparse.train.setup import Datasets
from randsparse.train.state import Run


def static_summary(run: Run, data: Datasets, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """What a run is, known before training: sizes, FLOPs, identity, how many processes share the batch."""
    masks = run.plan if run.plan is not None else run.masks  # a moving method ends at the plan's counts
    params = count_params(run.model, masks)
    flops = count_flops(run.model, input_shape, masks)
    config = run.config
    return {
        "config_hash": run.identity,
        "model": config.model.name,
        "architecture": ModelSpec.from_config(config.model).architecture(),  # family, depth, width
        "dataset": config.data.name,
        "sparsity": config.sparsity.sparsity,
        "distribution": None if config.is_dense else config.sparsity.distribution,
        "method": config.sparsity.method,
        "params_total": params.total,
        "params_prunable": params.prunable,
        "params_nonzero": params.nonzero,
        "density": params.density,
        "prunable_layers": len(run.masks) if run.masks is not None else len(prunable_shapes(run.model)),
        "flops_dense": flops.dense,
        "flops_sparse": flops.sparse,
        "train_size": len(data.train),
        "val_size": len(data.val) if data.val is not None else 0,
        "test_size": len(data.test),
        "world_size": run.dist.world_size,
        "batch_size": config.data.batch_size,
        "global_batch_size": config.global_batch_size,
        "device": str(run.device),
        "host": socket.gethostname(),
        "torch_version": torch.__version__,
        "randsparse_version": __version__,
    }
