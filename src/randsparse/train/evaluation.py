"""Evaluating a run: accuracy over a loader, the final test of the best and last models, the eval suite.

`evaluate_trained` is the glue between a run's data section and `evaluate.run`: it builds the test
set, the OOD sets (converted to look like the training data) and the raw-pixel copy the attacks need.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from randsparse import data as datasets
from randsparse.data import DatasetInfo
from randsparse.errors import RandsparseError
from randsparse.evaluate.calibration import topk_accuracy
from randsparse.evaluate.config import EvalConfig
from randsparse.evaluate.inference import LogitCache, cached_logits
from randsparse.evaluate.runner import run as run_suite
from randsparse.train.checkpoint import load_checkpoint
from randsparse.train.config import DataConfig, TrainConfig
from randsparse.train.distributed import Distributed, model_state_tensors
from randsparse.train.ema import evaluated_weights, swap_in
from randsparse.train.setup import Datasets
from randsparse.train.state import Run

log = logging.getLogger(__name__)

EVAL_CACHE = "eval-cache"
"""Subdirectory of a run directory holding the evaluation suite's cached logits."""


def eval_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device, **kwargs: Any) -> DataLoader:
    """A plain, in-order loader over an evaluation set (pinned memory on CUDA)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        **kwargs,
    )


def shard(dataset: Dataset, dist: Distributed) -> Dataset:
    """This process's share of an evaluation set (every `world_size`-th item), or the whole set in one process."""
    if not dist.active:
        return dataset
    return Subset(dataset, range(dist.rank, len(dataset), dist.world_size))  # type: ignore[arg-type]


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    dist: Distributed | None = None,
) -> dict[str, float]:
    """Mean loss and top-1 accuracy of `model` over `loader`, in eval mode.

    With `dist`, each process passes its shard of the set and the sums are taken over all of them.
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(inputs)
        loss_sum += float(loss_fn(logits.float(), targets)) * targets.numel()
        correct += int((logits.argmax(1) == targets).sum())
        count += targets.numel()
    model.train(was_training)
    if dist is not None and dist.active:
        loss_sum, correct, count = dist.sum(torch.tensor([loss_sum, correct, count], dtype=torch.float64))
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}


def _found(name: str, data_config: DataConfig) -> bool:
    """True when OOD set `name` needs no download (files on disk, or generated): an `ood_if_present` set."""
    if datasets.locate(name, data_config.root).found:
        return True
    log.info("OOD set %s not found: not evaluated (it is listed under eval.ood_if_present)", name)
    return False


def check_eval_data(config: TrainConfig, info: DatasetInfo) -> None:
    """The OOD sets the end-of-training evaluation needs, checked before training, not after it."""
    for name in config.eval.ood:
        datasets.build_ood(info, name, root=config.data.root, download=config.data.download)


def evaluate_trained(
    model: nn.Module,
    data_config: DataConfig,
    info: DatasetInfo,
    options: EvalConfig,
    *,
    out_dir: str | Path,
    identity: str,
    test: Dataset | None = None,
) -> dict[str, float]:
    """`evaluate.run` on the test split of the run's dataset (its `data` section), its OOD sets and attacks.

    `test` is that split when the caller has it already (training does). Logits are cached under
    ``out_dir/eval-cache`` (`EVAL_CACHE`) keyed by `identity` (e.g. the checkpoint), the reliability diagram goes to
    ``out_dir/reliability.png``. Returns `evaluate.run`'s flat dict of metrics.
    """
    common = {"root": data_config.root, "download": data_config.download}
    if test is None:
        test = datasets.build(data_config.name, split="test", augment=False, **common, **data_config.options)
    ood = {name: datasets.build_ood(info, name, **common) for name in options.ood}
    present = [n for n in getattr(options, "ood_if_present", []) if n not in ood and _found(n, data_config)]
    if present:
        ood.update({name: datasets.build_ood(info, name, root=data_config.root) for name in present})
        options = options.model_copy(update={"ood": [*options.ood, *present]})
    raw = None
    if options.attacks:
        raw = datasets.build(
            data_config.name, split="test", augment=False, normalize=False, **common, **data_config.options
        )
    return run_suite(
        model,
        test,
        options=options,
        ood_data=ood,
        mean=info.mean,
        std=info.std,
        attack_data=raw,
        cache_dir=Path(out_dir) / EVAL_CACHE,
        identity=identity,
        out_dir=out_dir,
    )


def final_evaluation(run: Run, data: Datasets, batch_size: int) -> dict[str, Any]:
    """Test accuracy of the last model and of the best-on-validation model; the eval suite on the best.

    The test set is split over the processes; the evaluation suite (calibration, OOD, attacks) runs on
    rank 0 alone, which writes its files. In one process without autocast, the best model's test
    pass is the suite's own (its logits are cached for it), so the test set is passed once, not twice.
    """
    dist = run.dist
    options = run.config.eval
    suite = dist.is_main and (options.calibration or options.ood or options.attacks)
    best_epoch = run.progress.best_epoch or run.progress.epoch
    identity = f"{run.identity}-best-epoch{best_epoch}"
    loader = eval_loader(shard(data.test, dist), batch_size, run.config.data.workers, run.device)

    def test_pass() -> dict[str, float]:
        if suite and not dist.active and run.amp_dtype is None:
            cache = LogitCache(Path(run.run_dir.path) / EVAL_CACHE, identity)
            logits, labels = cached_logits(run.model, data.test, "test", cache, options.batch_size, run.device)
            return {"loss": float(run.loss_fn(logits.float(), labels)), "accuracy": topk_accuracy(logits, labels, 1)}
        return evaluate_accuracy(run.model, loader, run.loss_fn, run.device, run.amp_dtype, dist)

    current = None
    if run.ema is not None:  # with optim.ema_decay the average is what is tested
        current = {k: v.clone() for k, v in run.model.state_dict().items()}
        swap_in(run.model, run.ema.average)
    if best_epoch == run.progress.epoch:
        last = best = test_pass()
    else:  # the same decision on every rank: progress is reduced
        last = evaluate_accuracy(run.model, loader, run.loss_fn, run.device, run.amp_dtype, dist)
        if current is None:
            current = {k: v.clone() for k, v in run.model.state_dict().items()}
        if dist.is_main:
            run.model.load_state_dict(evaluated_weights(load_checkpoint(run.run_dir.best_checkpoint)))
        dist.broadcast_from_main(model_state_tensors(run.model), "loading the best model")
        best = test_pass()
    result = {
        "test_accuracy": best["accuracy"],
        "test_loss": best["loss"],
        "test_accuracy_last": last["accuracy"],
        "test_loss_last": last["loss"],
    }
    if suite:
        run.files.update_summary(**result)  # the accuracies stand whatever becomes of the suite
        try:
            result["eval"] = evaluate_trained(
                run.model,
                run.config.data,
                data.info,
                options,
                out_dir=run.run_dir.path,
                identity=identity,
                test=data.test,
            )
        except RandsparseError as exc:
            log.error("the evaluation suite failed: %s (run `randsparse eval %s` to retry)", exc, run.run_dir.path)
            result["eval_error"] = str(exc)
    if current is not None:
        run.model.load_state_dict(current)
    return result
