"""Value kinds every config key and CLI flag shares: strict, finite, machine-sized numbers and registered names.

A config section is a pydantic model with `SECTION` as its config: unknown keys are errors, a
string is never read as a number (``"0.5"``), a bool never as an int or float (``true``), and
``nan``/``inf`` are refused. The bounds below are what one machine can hold; each field that uses
one names it in its description. Free-form option mappings (model, dataset, rule options) are
checked against the signature of the registered function that takes them (`check_call_options`).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import AfterValidator, BaseModel, ConfigDict, TypeAdapter, ValidationError

from randsparse.errors import ConfigError, RandsparseError, UnknownNameError, is_integer, is_real

# Largest integer torch and numpy hold (seeds, counts, steps).
INT64_MAX = 2**63 - 1
# Largest batch of examples one step or evaluation pass may ask for.
MAX_BATCH = 2**20
# Largest width multiplier: a 64-channel layer becomes 65 536 channels, still an int32 size.
MAX_WIDTH = 1024.0
# Largest depth knob (ResNet-1202 is the deepest network of the CIFAR literature).
MAX_DEPTH = 10_000
# A year: what a `datetime.timedelta` holds with room to spare.
MAX_TIMEOUT_S = 365 * 24 * 3600.0
# Longest run in epochs (a bound so that steps = epochs x steps per epoch stays an int64).
MAX_EPOCHS = 10**6
# Largest classifier (outputs), input (channels) and image side a model may be built for.
MAX_CLASSES = 2**20
MAX_CHANNELS = 2**16
MAX_IMAGE_SIZE = 2**14
# Most timed or untimed repetitions a benchmark may ask for.
MAX_REPEATS = 10**6
# Largest number of processes or threads one run may ask for.
MAX_PROCESSES = 4096

SECTION = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


def unknown_name(kind: str, name: object, known: Iterable[str]) -> str:
    """The one-line message of an unknown registered name (what `UnknownNameError` says)."""
    return str(UnknownNameError(kind, str(name), list(known)))


def registered(kind: str, names: Callable[[], Iterable[str]]) -> AfterValidator:
    """A pydantic validator accepting exactly the names `names()` lists at validation time.

    `names` is called on every validation, so an entry registered from Python after import (a
    scorer, a model) is accepted from YAML and the command line alike.
    """

    def check(value: str) -> str:
        known = list(names())
        if value not in known:
            raise ValueError(unknown_name(kind, value, known))
        return value

    return AfterValidator(check)


def resolvable(module: str, lookup: str) -> AfterValidator:
    """A pydantic validator accepting the names ``module.lookup(name)`` resolves at validation time.

    For registries whose names need not be listed in advance (a model or dataset given by import
    path, entry point, ``torchvision/<name>``): the lookup's `RandsparseError` (unknown name,
    plugin that cannot be imported, missing extra) becomes the one-line problem under the key.
    """

    def check(value: str) -> str:
        try:
            getattr(importlib.import_module(module), lookup)(value)
        except RandsparseError as exc:
            raise ValueError(str(exc)) from None
        return value

    return AfterValidator(check)


def names_from(module: str, attribute: str) -> Callable[[], Iterable[str]]:
    """The names a registry lists, read lazily: ``module.attribute()`` (a function) or ``module.attribute``.

    Lazy so that a config module need not import every subsystem (and torch) to be defined.
    """

    def names() -> Iterable[str]:
        found = getattr(importlib.import_module(module), attribute)
        return found() if callable(found) else found

    return names


def refuse_unused(section: BaseModel, what: str, used: Iterable[str]) -> None:
    """Raise `ValueError` for a field of `section` that `what` does not read, unless left at its default.

    A default value is accepted so that a dumped config (which writes every field) reads back.
    """
    used = list(used)
    for name, field in type(section).model_fields.items():
        if name in used or name not in section.model_fields_set:
            continue
        if getattr(section, name) != field.get_default(call_default_factory=True):
            taken = ", ".join(n for n in used if n != "name") or "no options"
            raise ValueError(f"{name}={getattr(section, name)!r} does not apply to {what} (it takes: {taken})")


@functools.lru_cache(maxsize=512)
def _adapter(hint: Any) -> TypeAdapter:
    return TypeAdapter(hint, config=ConfigDict(strict=True, allow_inf_nan=False))


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be resolved is simply not type-checked
        return {}


def check_call_options(
    what: str,
    fn: Callable[..., Any],
    options: Mapping[str, Any],
    skip: Iterable[str] = (),
    error: type[Exception] = ConfigError,
) -> None:
    """Refuse `options` that `fn` does not take, or whose value is not of its annotated type.

    `what` names the taker in the message (e.g. ``"distribution 'erk_plus'"``); `skip` lists the
    parameters the caller passes itself. Types are checked strictly (no ``"0.5"`` for a float,
    no bool for a number, finite floats); ranges stay the function's own checks. Raises `error`
    (`ValueError` inside a pydantic validator, so the problem is reported under its key).
    """
    params = inspect.signature(fn).parameters
    accepted = [name for name, p in params.items() if name not in set(skip) and p.kind != p.VAR_KEYWORD]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = [] if takes_any else sorted(set(options) - set(accepted), key=str)
    if unknown:
        raise error(
            f"{what} does not take option(s) {', '.join(map(str, unknown))}"
            f" (it takes: {', '.join(accepted) or 'no options'})"
        )
    hints = _hints(fn)
    for name, value in options.items():
        hint = hints.get(name)
        if hint is None or hint is Any:
            continue
        try:
            _adapter(hint).validate_python(value)
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"]
            raise error(f"{what}: option {name}={value!r}: {problem}") from None
        except Exception:  # a hint pydantic cannot check (a callable, a tensor type): not type-checked
            continue


def flag_number(
    kind: type, *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> Callable[[str], Any]:
    """argparse type: an int or finite float within bounds, with a one-line message otherwise."""
    if kind is int and le is None:
        le = INT64_MAX

    def parse(text: str) -> Any:
        try:
            value = int(text) if kind is int else float(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        check_number(value, ge=ge, gt=gt, le=le, lt=lt, error=argparse.ArgumentTypeError)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def check_number(
    value: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    integer: bool = False,
    what: str = "value",
    error: type[Exception] = ConfigError,
) -> None:
    """Raise `error` unless `value` is a finite int/float (int if `integer`, never a bool) within bounds."""
    if not (is_integer(value) if integer else is_real(value)) or not (is_integer(value) or math.isfinite(value)):
        raise error(f"{what} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    bounds = [(ge, value >= ge if ge is not None else True, ">="), (gt, value > gt if gt is not None else True, ">")]
    bounds += [(le, value <= le if le is not None else True, "<="), (lt, value < lt if lt is not None else True, "<")]
    for bound, ok, op in bounds:
        if not ok:
            raise error(f"{what} must be {op} {bound:g}, got {value!r}")
