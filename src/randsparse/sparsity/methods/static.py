"""``static``: the masks drawn at initialisation stay fixed for the whole run (the paper's setting)."""

from __future__ import annotations

from randsparse.sparsity.methods.base import SparsityMethod, register_method


@register_method("static")
class Static(SparsityMethod):
    """Random pruning at initialisation, then training with the masks fixed (Liu et al., ICLR 2022)."""
