"""`compile`: the training module run through `torch.compile` (execution only: the same steps, compiled).

``compile: true`` uses torch's default backend (Inductor, which needs a C++ compiler on the CPU);
a string names another registered backend (``aot_eager`` compiles the graph without generating
code). Only the module that trains is compiled: checkpoints, evaluation and export use the model
itself, so their state-dict keys never carry ``_orig_mod.``. The masks' gradient hooks and
optimizer hooks run outside the compiled graph, so pruned weights stay exactly zero.
"""

from __future__ import annotations

import torch
from torch import nn

from randsparse.errors import ConfigError


def compiled(net: nn.Module, setting: bool | str) -> nn.Module:
    """`net` under `torch.compile` as `setting` asks (False: `net` itself).

    Raises `ConfigError` (one line) where torch.compile does not run (this Python or platform) or
    the backend is unknown.
    """
    if setting is False:
        return net
    return torch.compile(net, backend=check_backend(setting))


def check_backend(setting: bool | str) -> str:
    """The torch.compile backend `setting` names (True: Inductor); `ConfigError` where it cannot run."""
    try:
        import torch._dynamo as dynamo
    except ImportError:
        raise ConfigError("compile needs torch.compile, which this torch build lacks; set compile=false") from None
    if not dynamo.is_dynamo_supported():
        raise ConfigError("torch.compile is not supported on this Python/platform; set compile=false")
    backend = "inductor" if setting is True else setting
    known = dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ConfigError(f"unknown torch.compile backend {backend!r}; known: {', '.join(sorted(known))}")
    if backend == "inductor" and not dynamo.is_inductor_supported():
        raise ConfigError("torch.compile's inductor backend is not supported here; set compile=aot_eager or false")
    return backend
