"""Errors a user can cause: each says what was asked, why it cannot be, and what would work.

The CLI turns any `RandsparseError` into one line on stderr and exit code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any, TypeGuard


class RandsparseError(Exception):
    """Base class of every error caused by user input (flags, configs, files)."""


class ConfigError(RandsparseError, ValueError):
    """A flag or config value is out of range or malformed."""


class UnknownNameError(RandsparseError, KeyError):
    """A registry lookup (distribution, model, ...) asked for a name that is not registered."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class InfeasibleBudgetError(RandsparseError, ValueError):
    """A layer-wise rule cannot meet the requested global sparsity."""


class MaskMismatchError(RandsparseError, ValueError):
    """A mask set does not fit a model (missing layer, extra layer or wrong shape)."""


class FileFormatError(RandsparseError, ValueError):
    """A file randsparse should read is missing, unreadable, or not in the expected format."""


class PluginError(ConfigError):
    """A plugin (import path ``pkg.module:object`` or entry point) cannot be loaded, or is not what it should be."""


class MissingExtraError(RandsparseError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class DatasetNotFoundError(RandsparseError, FileNotFoundError):
    """A dataset's files are in none of the places looked; the message lists them and how to get the data."""


def first_line(exc: BaseException, empty: str = "") -> str:
    """The first non-blank line of `exc`'s message, for one-line errors; `empty` (or its type) if none.

    Third-party exceptions (torch, pickle, YAML) often carry long multi-line messages; the CLI shows
    one line.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return f"{type(exc).__name__}{f' ({empty})' if empty else ''}"


def parse_error_text(exc: BaseException, path: str) -> str:
    """One line locating a YAML or JSON syntax error: ``FILE:LINE:COLUMN: problem`` (1-based, as compilers print).

    `exc` is a `yaml.MarkedYAMLError` or a `json.JSONDecodeError`; any other error gives
    ``FILE: first line of its message``.
    """
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)  # YAML
    if mark is not None:
        problem = " ".join(str(p) for p in (getattr(exc, "problem", None), getattr(exc, "context", None)) if p)
        start = getattr(exc, "context_mark", None)
        if start is not None and (start.line, start.column) != (mark.line, mark.column):
            problem += f" (which starts at {path}:{start.line + 1}:{start.column + 1})"
        return f"{path}:{mark.line + 1}:{mark.column + 1}: {problem or first_line(exc)}"
    if isinstance(getattr(exc, "lineno", None), int) and isinstance(getattr(exc, "colno", None), int):  # JSON
        return f"{path}:{exc.lineno}:{exc.colno}: {getattr(exc, 'msg', first_line(exc))}"
    return f"{path}: {first_line(exc)}"


def validation_message(error: Any, what: str) -> str:
    """One line naming every problem of a pydantic `ValidationError`: ``invalid <what>: key: problem; ...``."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(
            item["type"], item["msg"].removeprefix("Value error, ")
        )
        if item["type"].endswith(("_type", "_parsing")) or item["type"] in ("finite_number", "bool_type"):
            message += f", got {str(repr(item.get('input')))[:60]}"
        problems.append(f"{key}: {message}")
    return f"invalid {what}: " + "; ".join(problems)


def is_integer(value: object) -> TypeGuard[int]:
    """True for a Python int that is not a bool: what a count, seed or size in a config must be."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[int | float]:
    """True for an int or float that is not a bool: what a rate, fraction or scale in a config must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
