"""Evaluating a trained model on its own dataset, the named OOD sets and attacks, as a run's config says.

The glue between a run's data section and `evaluate.run`: builds the test set, the OOD sets
(converted to look like the training data) and the raw-pixel copy the attacks need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from randsparse import data as datasets
from randsparse.evaluate.config import EvalConfig
from randsparse.evaluate.runner import run


def evaluate_trained(
    model: nn.Module,
    data_config: Any,
    info: Any,
    options: EvalConfig,
    *,
    out_dir: str | Path,
    identity: str,
    test: Dataset | None = None,
) -> dict[str, float]:
    """`evaluate.run` on the test split of the run's dataset (a `DataConfig`), its OOD sets and attacks.

    `test` is that split when the caller has it already (training does). Logits are cached under
    ``out_dir/eval-cache`` keyed by `identity` (e.g. the checkpoint), the reliability diagram goes to
    ``out_dir/reliability.png``.
    """
    common = {"root": data_config.root, "download": data_config.download}
    if test is None:
        test = datasets.build(data_config.name, split="test", augment=False, **common, **data_config.options)
    ood = {name: datasets.build_ood(info, name, **common) for name in options.ood}
    raw = None
    if options.attacks:
        raw = datasets.build(
            data_config.name, split="test", augment=False, normalize=False, **common, **data_config.options
        )
    return run(
        model,
        test,
        options=options,
        ood_data=ood,
        mean=info.mean,
        std=info.std,
        attack_data=raw,
        cache_dir=Path(out_dir) / "eval-cache",
        identity=identity,
        out_dir=out_dir,
    )
