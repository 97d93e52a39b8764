"""Sparse-training methods: how (and whether) the masks change during training.

``static`` (the default) keeps the masks drawn at initialisation; dynamic methods (SET, RigL, GMP)
and lottery-ticket rewinding (LTH) are registered here under their names from the literature.
"""

from randsparse.sparsity.methods.base import (
    SparsityMethod,
    available_methods,
    get_method,
    method_options,
    register_method,
)
from randsparse.sparsity.methods.gmp import GMP
from randsparse.sparsity.methods.lth import LotteryTicket
from randsparse.sparsity.methods.rigl import RigL
from randsparse.sparsity.methods.set import SET
from randsparse.sparsity.methods.static import Static

__all__ = [
    "GMP",
    "SET",
    "LotteryTicket",
    "RigL",
    "SparsityMethod",
    "Static",
    "available_methods",
    "get_method",
    "method_options",
    "register_method",
]
