"""Real speed and size from sparsity: sparse inference modules, compressed export, benchmarks."""

from randsparse.accel.dispatch import (
    DISPATCH_MODES,
    LayerDispatch,
    calibrate,
    dispatch_report,
    set_dispatch,
    sparse_modules,
)
from randsparse.accel.encoding import available_encodings
from randsparse.accel.export import ExportSummary, export_model, load, to_sparse
from randsparse.accel.sparse_conv import SparseConv2d
from randsparse.accel.sparse_linear import SparseLinear

__all__ = [
    "DISPATCH_MODES",
    "ExportSummary",
    "LayerDispatch",
    "SparseConv2d",
    "SparseLinear",
    "available_encodings",
    "calibrate",
    "dispatch_report",
    "export_model",
    "load",
    "set_dispatch",
    "sparse_modules",
    "to_sparse",
]
