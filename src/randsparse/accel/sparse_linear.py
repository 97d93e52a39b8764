"""`SparseLinear`: an `nn.Linear` stored as padded CSR rows, computed by numba or `torch.sparse` kernels."""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from randsparse.accel import kernels
from randsparse.accel.dispatch import DispatchMode, SparseModule, kept_entries
from randsparse.errors import ConfigError


class SparseLinear(SparseModule):
    """`nn.Linear` whose weight is stored as padded CSR rows; dispatch as in `randsparse.accel.dispatch`.

    Inputs: (..., in_features) tensors; output (..., out_features), possibly a transposed view (as
    `torch.sparse.mm` returns). Raises `ConfigError` for a weight that is not 2-D or a mask that
    does not fit it.
    """

    _CANDIDATES: ClassVar[dict[str, str]] = {"dense": "_dense", "sparse": "_sparse", "torch_csr": "_torch_sparse"}

    cols: torch.Tensor

    def __init__(
        self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None, mode: DispatchMode = "auto"
    ) -> None:
        if weight.dim() != 2:
            raise ConfigError(f"SparseLinear needs a 2-D weight, got shape {tuple(weight.shape)}")
        super().__init__(mode, bias, int(weight.shape[0]))
        self.out_features, self.in_features = (int(d) for d in weight.shape)
        row, col, values = kept_entries(weight, mask)
        counts = np.bincount(row, minlength=self.out_features)
        rowptr, cols, vals = kernels.pad_rows(counts, col.astype(np.int32), values)
        self.register_buffer("rowptr", torch.from_numpy(rowptr))
        self.register_buffer("cols", torch.from_numpy(cols))
        self.register_buffer("values", torch.from_numpy(vals))
        self.nnz = len(values)
        self.numel = self.out_features * self.in_features
        self._torch_csr: torch.Tensor | None = None

    @classmethod
    def from_dense(cls, layer: nn.Linear, mask: torch.Tensor, mode: DispatchMode = "auto") -> SparseLinear:
        """The sparse equivalent of `layer` with `mask` applied."""
        return cls(layer.weight, mask, layer.bias, mode)

    def to_plain(self) -> nn.Linear:
        """The plain `nn.Linear` with the masked weight (float32, on the CPU)."""
        with torch.device("meta"):
            plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        plain.weight = nn.Parameter(self._dense_weight_copy())
        if self.bias is not None:
            plain.bias = nn.Parameter(self.bias.detach().clone())
        return plain.train(self.training)

    def describe(self) -> tuple[str, str]:
        return "linear", f"{self.in_features}→{self.out_features}"

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, density={self.density:.4f}"

    def _rows(self) -> torch.Tensor:
        counts = self.rowptr[1:] - self.rowptr[:-1]
        return torch.repeat_interleave(torch.arange(self.out_features), counts)

    def _build_dense_weight(self) -> torch.Tensor:
        weight = torch.zeros(self.out_features, self.in_features, dtype=torch.float32)
        weight.index_put_((self._rows(), self.cols.long()), self.values, accumulate=True)  # padding adds 0
        return weight

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._dense_args(x)
        return F.linear(x, weight, bias)

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        kernels.sync_threads()
        args = (self.rowptr.numpy(), self.cols.numpy(), self.values.numpy(), self._bias_array())
        if x.shape[0] == 1:
            y = torch.empty(1, self.out_features, dtype=torch.float32)
            kernels.csr_matvec(*args, x[0].contiguous().numpy(), y[0].numpy())
            return y
        # Feature-major in and out: the input of a previous SparseLinear (or its ReLU) is already
        # laid out so, and the output is handed back as a transposed view, as torch's CSR matmul does.
        xt = x.t()
        if not xt.is_contiguous():
            xt = torch.empty(x.shape[1], x.shape[0], dtype=torch.float32)
            kernels.transpose(x.contiguous().numpy(), xt.numpy())
        yt = torch.empty(self.out_features, x.shape[0], dtype=torch.float32)
        kernels.csr_matmat(*args, xt.numpy(), yt.numpy())
        return yt.t()

    def _torch_sparse(self, x: torch.Tensor) -> torch.Tensor:
        if self._torch_csr is None:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what we measure
                warnings.simplefilter("ignore", UserWarning)
                self._torch_csr = self.dense_weight().to_sparse_csr()
        y = torch.sparse.mm(self._torch_csr, x.t()).t()
        return y if self.bias is None else y + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise RuntimeError(f"expected inputs with {self.in_features} features, got shape {tuple(x.shape)}")
        if not self._sparse_ok(x):
            return self._dense(x)
        if x.dim() == 2:
            return self._dispatch((x.shape[0],), x)
        flat = x.reshape(-1, self.in_features)
        return self._dispatch((flat.shape[0],), flat).reshape(*x.shape[:-1], self.out_features)
