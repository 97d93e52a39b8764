"""Reading and writing randsparse's files: atomic writes, checksums, and strict decoding of what is read.

Everything randsparse persists goes through `atomic_write_bytes`: write to a temporary file in the
same directory, fsync it, rename it over the target, fsync the directory. A reader sees the old
file or the new one, never a torn one.

Every binary file randsparse writes (checkpoints, mask files, exported sparse models, logit caches)
is sealed by `seal`: the `torch.save` bytes followed by a one-line footer naming the file's kind and
the SHA-256 of those bytes. `torch.load` ignores the footer, so the file stays a plain torch
archive; `read_torch` verifies it, so a flipped bit is a `FileFormatError` instead of silently
wrong weights. Files of the previous release (no footer, ending with the archive's own end record)
still load, unverified. Text files (``config.yaml``, ``summary.json``, ``metrics.jsonl``, reports)
carry no checksum: people read and edit them, and a run's config is already bound to its
checkpoints by the config hash. The results store is SQLite, which has its own integrity checks.

`read_mapping` is the one reader of YAML/JSON mappings: non-UTF-8 bytes, duplicate keys, nesting
deeper than `MAX_DEPTH`, alias bombs larger than `MAX_NODES` and non-mapping tops are refused with
one line naming the file. `check_output_path` is the rule every ``--out``-like flag follows: write a
new file, or replace a file of the same kind that randsparse sealed, never anything else.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from randsparse.errors import ConfigError, FileFormatError, first_line, parse_error_text

MAX_DEPTH = 64  # nesting of a YAML/JSON file randsparse reads (configs need about 5)
MAX_NODES = 1_000_000  # values in one YAML/JSON file once aliases are expanded

_FOOTER = b"\n#randsparse-sealed/v1 "  # then b"<kind> sha256=<64 hex>\n"
_FOOTER_MAX = 200  # bytes: the footer is always shorter
_ZIP_END = b"PK\x05\x06"  # end-of-central-directory record: a torch archive of the previous release ends with it


class MappingFileError(FileFormatError, ConfigError):
    """A YAML/JSON file of settings that cannot be decoded: a bad file, and so a bad config."""


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


def seal(payload: bytes, kind: str) -> bytes:
    """`payload` followed by the footer naming `kind` (e.g. ``"checkpoint"``) and the payload's SHA-256."""
    if not kind.replace("-", "").isalnum():
        raise ValueError(f"file kind {kind!r} must be letters, digits and dashes")
    digest = hashlib.sha256(payload).hexdigest()
    return payload + _FOOTER + f"{kind} sha256={digest}\n".encode()


def _split_footer(data: bytes) -> tuple[bytes, str, str] | None:
    """(payload, kind, recorded digest) of sealed bytes; None when `data` has no footer."""
    at = data.rfind(_FOOTER, max(0, len(data) - _FOOTER_MAX))
    if at < 0:
        return None
    line = data[at + len(_FOOTER) :].decode("ascii", errors="replace")
    kind, _, digest = line.rstrip("\n").partition(" sha256=")
    return data[:at], kind, digest


def unseal(data: bytes, label: str) -> tuple[bytes, str | None]:
    """(payload, kind) of bytes written by `seal`, checked; kind None for an unsealed file of the previous release.

    Raises `FileFormatError` naming `label` when the checksum does not match, or when the bytes have
    neither a footer nor the end record of a complete torch archive (truncated, empty or foreign).
    """
    split = _split_footer(data)
    if split is None:
        if len(data) >= 22 and data[-22:-18] == _ZIP_END:
            return data, None
        reason = "empty file" if not data else "no checksum footer and not a complete archive (truncated or damaged?)"
        raise FileFormatError(f"cannot read {label}: corrupt or unreadable ({reason})")
    payload, kind, digest = split
    if hashlib.sha256(payload).hexdigest() != digest:
        raise FileFormatError(
            f"{label} is corrupt: its contents do not match the checksum written with them"
            " (damaged on disk or in transfer?)"
        )
    return payload, kind


def sealed_kind(path: str | Path) -> str | None:
    """The kind named in the footer of file `path`, or None when it has none (or cannot be read)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _FOOTER_MAX))
            split = _split_footer(handle.read())
    except OSError:
        return None
    return split[1] if split else None


def torch_bytes(obj: Any, kind: str) -> bytes:
    """`torch.save(obj)` as sealed bytes of `kind`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return seal(buffer.getvalue(), kind)


def atomic_torch_save(obj: Any, path: str | Path, kind: str = "data") -> None:
    """`torch.save(obj, path)`, sealed as `kind` and written atomically."""
    atomic_write_bytes(path, torch_bytes(obj, kind))


def read_torch(source: str | Path | bytes, what: str) -> tuple[Any, str | None]:
    """(object, kind) of a sealed `torch.save` file (a path, or its bytes), checked and loaded with ``weights_only``.

    Every failure (missing, unreadable, damaged, checksum mismatch, not a torch archive) is a
    `FileFormatError` that names `what` (e.g. ``"checkpoint"``) and the file.
    """
    if isinstance(source, bytes):
        label, data = f"{what} (given bytes)", source
    else:
        label = f"{what} {str(source)!r}"
        if not Path(source).is_file():
            raise FileFormatError(f"{label} does not exist")
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise FileFormatError(f"cannot read {label}: {exc.strerror}") from None
    payload, kind = unseal(data, label)
    try:
        content = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a torn or foreign file
        reason = first_line(exc, "not a torch archive")
        raise FileFormatError(f"cannot read {label}: corrupt or unreadable ({reason})") from None
    return content, kind


def check_output_path(path: str | Path, kind: str, flag: str = "--out") -> Path:
    """`path` if a command may write a file of `kind` there; else a `ConfigError` naming `flag`.

    The rule: a path that does not exist yet, or an existing file of the same `kind` that
    randsparse sealed (an earlier output of the same command). Anything else (a directory, a run's
    config, checkpoint or summary, a file of another kind, a file randsparse did not write) is refused,
    so a command never writes over a file it did not create for that purpose.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a directory; give a file name")
    if path.exists() or path.is_symlink():
        found = sealed_kind(path)
        if found != kind:
            what = f"a randsparse {found} file" if found else "a file randsparse did not write as a " + kind
            raise ConfigError(
                f"{flag} {str(path)!r} already exists and is {what}; refusing to overwrite it (choose a new path)"
            )
    return path


class _StrictLoader(yaml.SafeLoader):
    """YAML `SafeLoader` that refuses duplicate keys and nesting deeper than `MAX_DEPTH`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: list[Any] = []
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise yaml.YAMLError(f"duplicate key {key!r} (line {line})")
                seen.append(key)
        return super().construct_mapping(node, deep=deep)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"duplicate key {key!r}")
    return dict(pairs)


def _check_shape(data: Any) -> str | None:
    """Why `data` is too deep or too large once aliases are expanded, or None (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            return f"more than {MAX_NODES:,} values (an alias bomb?)"
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return None


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in YAML (or, for ``.json``, JSON) file `path`; an empty YAML file is ``{}``.

    The one reader of YAML/JSON settings files. A file that cannot be read, is not UTF-8 text, does
    not parse, repeats a key, nests deeper than `MAX_DEPTH`, expands to more than `MAX_NODES` values
    or does not hold a mapping is a `MappingFileError` (a `FileFormatError` and a `ConfigError`)
    naming `what` it should have been (e.g. ``"config"``) and the file.
    """
    path = Path(path)
    label = f"{what} {str(path)!r}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MappingFileError(f"cannot read {label}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MappingFileError(
            f"cannot parse {label}: not UTF-8 text (byte {exc.start}); is it a binary file?"
        ) from None
    try:
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_no_duplicates)  # an empty JSON file is malformed
        else:
            data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except (ValueError, yaml.YAMLError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else parse_error_text(exc, str(path))
        raise MappingFileError(f"cannot parse {label}: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MappingFileError(f"{label} must be a mapping, got {type(data).__name__}")
    problem = _check_shape(data)
    if problem:
        raise MappingFileError(f"cannot parse {label}: {problem}")
    return data
