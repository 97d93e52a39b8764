"""The magnitude scorer: ``|w|`` at initialization."""

from __future__ import annotations

from randsparse.sparsity.saliency.inputs import Scores, ScoringInput
from randsparse.sparsity.saliency.registry import register_scorer


@register_scorer("magnitude", needs_data=False)
def magnitude(inp: ScoringInput) -> Scores:
    """Magnitude at initialization: ``|w|``."""
    return {n: w.detach().abs() for n, w in inp.weights.items()}
