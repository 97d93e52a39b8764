"""Real speed and size from sparsity: sparse inference modules, compressed export, benchmarks."""

from randsparse.accel.encoding import available_encodings
from randsparse.accel.export import ExportSummary, export_model, load, to_sparse
from randsparse.accel.modules import (
    DISPATCH_MODES,
    LayerDispatch,
    SparseConv2d,
    SparseLinear,
    calibrate,
    dispatch_report,
    set_dispatch,
    sparse_modules,
)

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
