"""`run`: every evaluation an `EvalConfig` asks for, from one logits pass per set, as a flat dict.

Result keys (all values are numbers, so the dict goes straight into ``summary.json`` and the
results store; dotted names group them):

=================================  ==========================================================
``accuracy``, ``top5``             top-1 and (with more than 5 classes) top-5 accuracy
``test_images``                    examples in the test set
``ece``, ``mce``, ``nll``,         calibration (with ``calibration``); ECE/MCE over ``bins``
``brier``                          equal-width bins
``ood.<set>.<score>.<metric>``     metric ∈ auroc, aupr_in, aupr_out, fpr95; score ∈ msp,
                                   max_logit, energy; in-distribution = the test set
``ood.<set>.images``               OOD examples scored (all, or ``ood_max_images``)
``adv.images``, ``adv.clean``      attacked examples and their clean accuracy
``adv.fgsm.<eps>``,                robust accuracy at each ε (``format_eps``: ``0.03``,
``adv.pgd.<eps>``                  ``0.0313725`` for 8/255)
``seconds.<part>``                 wall time of each part (``test``, ``calibration``,
                                   ``ood.<set>``, ``adv``)
=================================  ==========================================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from randsparse.errors import ConfigError
from randsparse.evaluate.adversarial import Normalize, robust_accuracy, with_normalization
from randsparse.evaluate.calibration import calibration_metrics, reliability_diagram, topk_accuracy
from randsparse.evaluate.config import EvalConfig, format_eps
from randsparse.evaluate.inference import Data, LogitCache, cached_logits, model_fingerprint
from randsparse.evaluate.ood import ood_metrics, ood_score
from randsparse.seeding import seeded_generator

log = logging.getLogger(__name__)

RELIABILITY_FILE = "reliability.png"


class RawPixels(Dataset):
    """A normalised dataset seen as raw [0, 1] pixels: ``clamp(x · std + mean, 0, 1)`` per item."""

    def __init__(self, dataset: Dataset, mean: Sequence[float], std: Sequence[float]) -> None:
        self.dataset = dataset
        self.normalize = Normalize(mean, std)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, label, *_ = self.dataset[index]
        return self.normalize.inverse(image[None])[0].clamp(0.0, 1.0), label


def _dataset(data: Data) -> Dataset:
    return data.dataset if isinstance(data, DataLoader) else data


def seeded_subset(dataset: Dataset, max_images: int | None, generator: torch.Generator) -> Dataset:
    """A random subset of `max_images` examples drawn by `generator` (in index order), or the whole set."""
    size = len(dataset)  # type: ignore[arg-type]
    if max_images is None or max_images >= size:
        return dataset
    indices = torch.randperm(size, generator=generator)[:max_images].sort().values
    return Subset(dataset, indices.tolist())


def run(
    model: nn.Module,
    test_data: Data,
    *,
    options: EvalConfig | None = None,
    ood_data: Mapping[str, Data] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    attack_data: Data | None = None,
    cache_dir: str | Path | None = None,
    identity: str | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, float]:
    """Evaluate `model` on `test_data` (what the model consumes, i.e. normalised) as `options` says.

    - `ood_data`: OOD sets by name, preprocessed like the test set (``data.build_ood(in_dist, name)``);
      evaluated are ``options.ood``, or every given set when that list is empty.
    - `mean`, `std`: the normalisation `test_data` carries. Attacks run on raw pixels through
      ``Normalize(mean, std) → model``; the raw images are `attack_data` when given (e.g.
      ``data.build(..., normalize=False)``), else `test_data` un-normalised. Without mean/std the
      test data are taken to be raw pixels already.
    - `cache_dir`: where logits are cached, keyed by set name and `identity` (default: a hash of
      the model's state), so a later call with more options reuses every pass already made.
    - `out_dir`: where the reliability diagram (``reliability.png``) is written.

    The model runs on its own device, in eval mode; its state is left as it was.
    """
    options = options or EvalConfig()
    ood_data = dict(ood_data or {})
    names = options.ood or list(ood_data)
    missing = [name for name in names if name not in ood_data]
    if missing:  # checked before any pass, so a typo costs nothing
        raise ConfigError(f"OOD set(s) {', '.join(missing)} asked for but not provided (given: {sorted(ood_data)})")
    if (mean is None) != (std is None):
        raise ConfigError("give both mean and std, or neither")
    cache = LogitCache(cache_dir, identity or model_fingerprint(model)) if cache_dir is not None else None
    result: dict[str, float] = {}
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    logits, labels = cached_logits(model, test_data, "test", cache, options.batch_size)
    if (labels < 0).any():
        raise ConfigError("the test set must be labelled")
    seconds["test"] = time.perf_counter() - start
    result["test_images"] = labels.numel()
    result["accuracy"] = topk_accuracy(logits, labels, 1)
    if logits.shape[1] > 5:
        result["top5"] = topk_accuracy(logits, labels, 5)

    if options.calibration:
        start = time.perf_counter()
        result.update(calibration_metrics(logits, labels, options.bins).to_dict())
        if out_dir is not None and options.reliability_diagram:
            path = reliability_diagram(logits, labels, Path(out_dir) / RELIABILITY_FILE, options.bins)
            log.info("reliability diagram written to %s", path)
        seconds["calibration"] = time.perf_counter() - start

    if names:
        score_options = {"temperature": options.energy_temperature}
        scores_in = {score: ood_score(score, logits, **score_options) for score in options.ood_scores}
        for name in names:
            start = time.perf_counter()
            data, key = ood_data[name], f"ood-{name}"
            if options.ood_max_images is not None and options.ood_max_images < len(_dataset(data)):  # type: ignore[arg-type]
                generator = seeded_generator(options.seed, f"ood subset {name}")
                data = seeded_subset(_dataset(data), options.ood_max_images, generator)
                key = f"{key}-{options.ood_max_images}-seed{options.seed}"
            ood_logits, _ = cached_logits(model, data, key, cache, options.batch_size)
            result[f"ood.{name}.images"] = ood_logits.shape[0]
            for score in options.ood_scores:
                metrics = ood_metrics(scores_in[score], ood_score(score, ood_logits, **score_options))
                for metric, value in metrics.to_dict().items():
                    result[f"ood.{name}.{score}.{metric}"] = value
            seconds[f"ood.{name}"] = time.perf_counter() - start

    if options.attacks:
        start = time.perf_counter()
        result.update(_attacks(model, test_data, options, mean, std, attack_data))
        seconds["adv"] = time.perf_counter() - start

    result.update({f"seconds.{part}": value for part, value in seconds.items()})
    return result


def _attacks(
    model: nn.Module,
    test_data: Data,
    options: EvalConfig,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    attack_data: Data | None,
) -> dict[str, float]:
    """Robust accuracy under the configured attacks, on a seeded subset of raw-pixel test images."""
    if attack_data is not None:
        raw = _dataset(attack_data)
    elif mean is not None and std is not None:
        raw = RawPixels(_dataset(test_data), mean, std)
    else:
        raw = _dataset(test_data)
    generator = torch.Generator().manual_seed(options.seed)
    subset = seeded_subset(raw, options.attack_max_images, generator)
    attacked = with_normalization(model, mean, std)
    robust = robust_accuracy(
        attacked,
        subset,
        fgsm_eps=options.fgsm,
        pgd_eps=options.pgd,
        pgd_steps=options.pgd_steps,
        pgd_step_size=options.step_size,
        pgd_random_start=options.pgd_random_start,
        generator=generator,
        batch_size=options.batch_size,
    )
    result: dict[str, float] = {"adv.images": robust.images, "adv.clean": robust.clean}
    result.update({f"adv.fgsm.{format_eps(eps)}": acc for eps, acc in robust.fgsm.items()})
    result.update({f"adv.pgd.{format_eps(eps)}": acc for eps, acc in robust.pgd.items()})
    return result
