"""Saliency scores of pruning at initialization (SNIP, GraSP, SynFlow, magnitude): the package's public names.

`registry` owns `register_scorer` and `compute_scores`; `inputs` the scorers' `ScoringInput`
and data helpers; one module per scorer registers it on import (here, in this order).
"""

from randsparse.sparsity.saliency import grasp, magnitude, snip, synflow  # noqa: F401  (registers the scorers)
from randsparse.sparsity.saliency.inputs import ScoringInput, balanced_sample, iter_batches
from randsparse.sparsity.saliency.registry import (
    RATIO_SUFFIX,
    available_scorers,
    compute_scores,
    ratio_method,
    register_scorer,
    scorer_needs_data,
    scorer_options,
)
from randsparse.sparsity.selection import masks_from_scores

__all__ = [
    "RATIO_SUFFIX",
    "ScoringInput",
    "available_scorers",
    "balanced_sample",
    "compute_scores",
    "iter_batches",
    "masks_from_scores",
    "ratio_method",
    "register_scorer",
    "scorer_needs_data",
    "scorer_options",
]
