"""randsparse: sparse training from scratch with random pruning at initialization."""

from randsparse.errors import RandsparseError

__version__ = "0.1.0"

__all__ = ["RandsparseError", "__version__"]
