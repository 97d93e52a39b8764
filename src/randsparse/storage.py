"""Reading and writing randsparse's files: atomic writes, and YAML/JSON mappings read with clear errors.

Everything randsparse persists goes through `atomic_write_bytes`: write to a temporary file in the
same directory, fsync it, rename it over the target, fsync the directory. A reader sees the old
file or the new one, never a torn one.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from randsparse.errors import ConfigError, parse_error_text


def _new_file_mode() -> int:
    """Permissions of a new file under the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file, fsync, rename, fsync of the directory)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _new_file_mode())  # as `open` would have made it, not mkstemp's 0600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj, path)`, atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in YAML (or, for ``.json``, JSON) file `path`; an empty file is ``{}``.

    A file that cannot be read, does not parse or does not hold a mapping is a `ConfigError` naming
    `what` it should have been (e.g. ``"config"``).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse {what} {parse_error_text(exc, str(path))}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must be a mapping, got {type(data).__name__}")
    return data
