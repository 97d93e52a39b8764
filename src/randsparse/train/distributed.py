"""Multi-process training with torch.distributed: the launch, the process group, and the collectives a run uses.

A run started by torchrun (or any launcher that sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``) trains with DistributedDataParallel: NCCL on CUDA with one GPU
per process (``cuda:LOCAL_RANK``), gloo on the CPU. Rank 0 decides what must be decided once (the
masks, what the run directory holds) and tells the others; every collective waits at most
`distributed.timeout_s`, and a rank that loses the others raises `PeerFailure` instead of hanging.
In a single process every method of `Distributed` is a no-op (or runs its function locally), so
`fit` has one code path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import pickle
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from randsparse.errors import ConfigError, MaskMismatchError, RandsparseError
from randsparse.sparsity.enforce import BUFFER_SUFFIX
from randsparse.train.config import DistributedConfig, TrainConfig
from randsparse.train.setup import resolve_device

log = logging.getLogger(__name__)

T = TypeVar("T")

# Values of `distributed.backend`: auto picks nccl on CUDA and gloo on the CPU (`backend_for`).
BACKENDS: tuple[str, ...] = ("auto", "gloo", "nccl")

# What a failed collective says: gloo's transport errors, NCCL's, and the store's timeouts.
_COMMUNICATION_FAILURE = re.compile(
    r"gloo|nccl|connection (?:closed|reset|refused)|broken pipe|timed out|timeout|socket", re.IGNORECASE
)


# Set once this process has joined a process group; see `exit_worker`.
_joined = False


class PeerFailure(RandsparseError):
    """Another process of a distributed run failed or stopped answering, so this one stopped too."""


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a launch: its rank, the number of processes, its rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch:
    """This process's place in a torchrun launch (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); rank 0 of 1 otherwise."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return Launch()
    try:
        world_size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them), got"
            f" {env.get('WORLD_SIZE')!r}, {env.get('RANK')!r}, {env.get('LOCAL_RANK')!r}"
        ) from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(f"inconsistent launch: RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}")
    return Launch(rank, world_size, local_rank)


def resume_command(run_dir: str | os.PathLike[str], world_size: int, env: Mapping[str, str] | None = None) -> str:
    """The command that continues the run in `run_dir` on as many processes as it ran on.

    One process: ``randsparse train --resume DIR``; several on one machine (``--nproc`` or a
    single-node torchrun): ``... --nproc N``; several machines: the same torchrun launch of it.
    """
    command = f"randsparse train --resume {shlex.quote(str(run_dir))}"
    if world_size <= 1:
        return command
    env = os.environ if env is None else env
    if env.get("LOCAL_WORLD_SIZE", str(world_size)) == str(world_size):
        return f"{command} --nproc {world_size}"
    return f"{command}, launched by torchrun on the same {world_size} processes"


def with_world_size(config: TrainConfig, world_size: int) -> TrainConfig:
    """`config` for a launch of `world_size` processes: fills an empty `distributed.world_size`, refuses another."""
    declared = config.distributed.world_size
    if declared is None:
        if world_size == 1:
            return config
        section = config.distributed.model_copy(update={"world_size": world_size})
        return config.model_copy(update={"distributed": section})
    if declared != world_size:
        batch = config.data.batch_size * declared  # the global batch of one micro-batch per process
        keep = ""
        if batch % world_size == 0:
            keep = (
                f", or keep the global batch on {world_size} with the overrides"
                f" distributed.world_size={world_size} data.batch_size={batch // world_size}"
            )
        raise ConfigError(
            f"this run trains on {declared} processes (distributed.world_size; global batch {batch}), but"
            f" {world_size} started; launch it with `randsparse train --nproc {declared} ...` (or torchrun"
            f" --nproc-per-node {declared}){keep}"
        )
    return config


def process_device(name: str, local_rank: int, world_size: int) -> torch.device:
    """The device of one process: `resolve_device(name)`, and ``cuda:LOCAL_RANK`` for CUDA in a multi-process run."""
    device = resolve_device(name)
    if world_size == 1:
        return device
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"device={name} would put every process on one GPU; use device=cuda (or auto): each process"
                " takes cuda:LOCAL_RANK"
            )
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise ConfigError(
                f"the process with LOCAL_RANK {local_rank} has no GPU ({visible} visible); start at most"
                f" {visible} processes per machine"
            )
        return torch.device("cuda", local_rank)
    if device.type != "cpu":
        raise ConfigError(f"multi-process training runs on CUDA (NCCL) or the CPU (gloo), not on {device.type}")
    return device


def backend_for(choice: str, device: torch.device) -> str:
    """The process-group backend: NCCL for CUDA, gloo for the CPU, unless the config names one."""
    if choice == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if choice == "nccl" and device.type != "cuda":
        raise ConfigError("distributed.backend=nccl needs CUDA devices; use backend=gloo (or auto) on the CPU")
    return choice


def is_communication_failure(exc: BaseException) -> bool:
    """True when `exc` says a collective failed (a peer died, a timeout), not that the computation is wrong."""
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and bool(_COMMUNICATION_FAILURE.search(str(exc)))
    )


def mask_checksum(masks: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of mask names, shapes and bits: two processes agree on it exactly when their masks are equal."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = masks[name].detach().to("cpu", torch.bool)
        digest.update(f"{name}\0{tuple(mask.shape)}\0".encode())
        digest.update(np.packbits(mask.numpy().reshape(-1)).tobytes())
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    """The gist of an error: its first line, without gloo's source location and advice."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])
    return line.split(". This is typically")[0]


def _relayable(exc: RandsparseError) -> RandsparseError:
    """`exc` itself when it survives pickling (to reach the other ranks), else a plain one with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # e.g. an __init__ with other arguments than the message
        return RandsparseError(str(exc))
    return exc


@dataclass
class Distributed:
    """This process's place in a run, and the collectives `fit` needs; all no-ops in a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def active(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that decides once for all and writes the run directory."""
        return self.rank == 0

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn a failed collective inside the block (a peer died, or hung past the timeout) into a `PeerFailure`."""
        if not self.active:
            yield
            return
        try:
            yield
        except RuntimeError as exc:
            if not is_communication_failure(exc):
                raise
            raise PeerFailure(
                f"rank {self.rank} of {self.world_size} stopped during {what}: another process failed or stopped"
                f" answering ({_first_line(exc)}); its log says why"
            ) from exc

    def from_main(self, produce: Callable[[], T], what: str) -> T:
        """`produce()` run on rank 0 only; every rank gets its result, or raises the error it raised."""
        if not self.active:
            return produce()
        message: list[Any] = [None]
        crash: BaseException | None = None
        if self.is_main:
            try:
                message[0] = (True, produce())
            except RandsparseError as exc:
                message[0] = (False, _relayable(exc))
                crash = exc
            except BaseException as exc:  # a bug or an interrupt: rank 0 keeps its traceback, the others stop
                message[0] = (False, PeerFailure(f"rank 0 failed while {what}: {type(exc).__name__}: {exc}"))
                crash = exc
        with self.guard(what):
            dist.broadcast_object_list(message, src=0, device=self._comm_device)
        if crash is not None:
            raise crash
        ok, value = message[0]
        if not ok:
            raise value
        return value

    def sum(self, values: torch.Tensor, what: str = "a metric reduction") -> list[float]:
        """Element-wise sum of `values` over all processes, in float64, as Python numbers."""
        values = values.detach().to(self._comm_device, torch.float64)
        if self.active:
            with self.guard(what):
                dist.all_reduce(values)
        return values.tolist()

    def average(self, tensors: Iterable[torch.Tensor], what: str) -> None:
        """Replace `tensors` (same list, shapes and order on every rank) in place by their mean over the processes."""
        if not self.active:
            return
        with self.guard(what):
            for tensor in tensors:
                dist.all_reduce(tensor)
                tensor.div_(self.world_size)

    def gather_to_main(self, value: T) -> list[T] | None:
        """Every rank's `value`, in rank order, on rank 0; None on the other ranks."""
        if not self.active:
            return [value]
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        with self.guard("gathering the checkpoint"):
            dist.gather_object(value, gathered, dst=0)
        return gathered

    def check_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Refuse to start, on every rank, unless every rank holds exactly rank 0's masks."""
        if not self.active:
            return
        checksums: list[Any] = [None] * self.world_size
        with self.guard("comparing the masks"):
            dist.all_gather_object(checksums, mask_checksum(masks))
        differ = [rank for rank, checksum in enumerate(checksums) if checksum != checksums[0]]
        if differ:
            raise MaskMismatchError(
                f"the masks of rank(s) {', '.join(map(str, differ))} differ from rank 0's (checksum"
                f" {checksums[0][:12]} vs {checksums[differ[0]][:12]}); refusing to train with different masks per"
                " process"
            )
        log.debug("rank %d: masks agree with rank 0 (checksum %s)", self.rank, checksums[0][:12])

    def broadcast_from_main(self, tensors: Iterable[torch.Tensor], what: str) -> None:
        """Overwrite `tensors` (the same list on every rank, in place) with rank 0's."""
        if not self.active:
            return
        with self.guard(what):
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` in DistributedDataParallel, or `model` itself in a single process.

        The mask buffers are left out of DDP's buffer broadcasts: they are equal on every rank
        (`check_masks`) and would otherwise cost one byte per weight on every forward.
        """
        if not self.active:
            return model
        masks = [name for name, _ in model.named_buffers() if name.endswith(BUFFER_SUFFIX)]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, masks)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        with self.guard("wrapping the model in DistributedDataParallel"):
            return DistributedDataParallel(model, device_ids=device_ids)


def persistent_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The buffers a checkpoint holds (BatchNorm statistics ...), not the masks."""
    saved = model.state_dict(keep_vars=True)
    return [buffer for name, buffer in model.named_buffers() if name in saved]


def model_state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every tensor of `model`'s state dict (parameters and persistent buffers), sharing their storage."""
    return list(model.state_dict().values())


@contextlib.contextmanager
def session(config: DistributedConfig, device: str) -> Iterator[Distributed]:
    """The processes of this run: joins the process group of a torchrun launch (and leaves it at the end).

    Without a launch this is a single process on `resolve_device(device)`. A process group the
    caller already set up is used as it is and left open.
    """
    launch = launch_from_env()
    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
        target = process_device(device, launch.local_rank, world_size)
        yield Distributed(dist.get_rank(), world_size, launch.local_rank, target, dist.get_backend())
        return
    if launch.world_size == 1:
        yield Distributed(device=resolve_device(device))
        return
    target = process_device(device, launch.local_rank, launch.world_size)
    backend = backend_for(config.backend, target)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    try:
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=config.timeout_s))
    except (RuntimeError, ValueError) as exc:
        address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise PeerFailure(
            f"rank {launch.rank} of {launch.world_size} could not join the other processes at {address}"
            f" ({_first_line(exc)})"
        ) from None
    global _joined
    _joined = True
    log.info("rank %d of %d on %s (%s)", launch.rank, launch.world_size, target, backend)
    try:
        yield Distributed(launch.rank, launch.world_size, launch.local_rank, target, backend)
    finally:
        dist.destroy_process_group()


def joined_process_group() -> bool:
    """True once `session` has made this process join a multi-process run (even after it left)."""
    return _joined


def exit_worker(code: int) -> NoReturn:
    """End a process of a multi-process run with `code`, flushing logs and output but skipping interpreter teardown.

    DistributedDataParallel's reducer keeps the gloo process group alive past `destroy_process_group`,
    so its worker threads are still there when Python finalizes; one that drops a tensor then needs
    the GIL and aborts the process ("terminate called without an active exception", SIGABRT), which
    torchrun reports as a failed launch although the run finished and its files are written
    (pytorch/pytorch#190489). `os._exit` leaves before that teardown.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
