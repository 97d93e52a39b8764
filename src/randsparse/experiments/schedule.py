"""The order a study starts its pending runs in: the longest first, so that the last runs to end are short ones.

Started in grid order, a study whose widest or deepest models come last ends with one long run
alone while the other workers idle. Starting the longest first (LPT: Graham, "Bounds on
multiprocessing timing anomalies", 1969) finishes within 4/3 of the best possible schedule.

A run's cost is estimated, never measured: dense MACs per sample of its model (counted on the
``meta`` device, so nothing is allocated) × (3 × epochs × training images + test images), times
``levels + 1`` trainings for a lottery-ticket run. Only the order matters, so the estimate ignores
the sparse engine, the evaluation suite and per-run overheads. When some run's cost cannot be
estimated (a plugin model that cannot be built on ``meta``, a dataset whose size is unknown
without its files), the study keeps its grid order.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence

from randsparse.data.build import carve_sizes, dataset_info
from randsparse.evaluate.complexity import count_flops
from randsparse.experiments.study import RunSpec
from randsparse.models import ModelSpec
from randsparse.sparsity.methods import get_method

log = logging.getLogger(__name__)


def _lth_trainings(options: dict) -> int:
    default = inspect.signature(get_method("lth").__init__).parameters["levels"].default
    return int(options.get("levels", default)) + 1


def estimated_cost(spec: RunSpec, macs_cache: dict[str, int] | None = None) -> float:
    """Estimated multiply-accumulates of training and testing `spec` (a relative cost; see the module doc).

    Raises whatever building its model or reading its dataset's description raises; `macs_cache`
    (keyed by model and dataset) saves counting the same architecture twice.
    """
    config = spec.config
    info = dataset_info(config.data.name, config.data.root, **config.data.options)
    model = ModelSpec.from_config(config.model, info)
    key = json.dumps([model.to_dict(), info.shape], sort_keys=True, default=str)
    cache = {} if macs_cache is None else macs_cache
    if key not in cache:
        cache[key] = count_flops(model.build(device="meta"), info.shape).dense
    size = config.data.subset if config.data.subset is not None else info.train_size
    if size is None or info.test_size is None:
        raise ValueError(f"dataset {config.data.name!r} does not declare its size")
    train = carve_sizes(size, config.data.val_fraction)[0]
    trainings = _lth_trainings(config.sparsity.method_options) if config.sparsity.method == "lth" else 1
    return float(cache[key]) * (3 * config.epochs * train * trainings + info.test_size)


def longest_first(specs: Sequence[RunSpec]) -> list[str]:
    """The ids of `specs`, longest estimated run first (ties, and every run when one cost is unknown, in grid order)."""
    cache: dict[str, int] = {}
    costs = []
    for spec in specs:
        try:
            costs.append(estimated_cost(spec, cache))
        except Exception as exc:  # any failure only means "keep the grid order"
            log.debug("no cost estimate for run %s (%s): runs start in grid order", spec.id, exc)
            return [s.id for s in specs]
    order = sorted(range(len(specs)), key=lambda i: -costs[i])  # sorted() is stable: ties keep grid order
    return [specs[i].id for i in order]
