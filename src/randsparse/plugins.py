"""Objects from outside randsparse: import paths (``pkg.module:object``) and entry points of installed packages.

Models and datasets can be named either way in a config (``model.name: "mylab.nets:build_net"``)
or registered by an installed package under an entry-point group (``randsparse.models``,
``randsparse.data``). This module only finds and imports the object; what it must be (a model
builder, a dataset factory) is the caller's contract. Every failure is one line (`PluginError`)
naming the plugin and why it could not be had.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import re
from typing import Any

from randsparse.errors import MissingExtraError, PluginError, UnknownNameError, first_line

# ``package.module:attribute`` (dotted on both sides), as in entry points.
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_import_path(name: str) -> bool:
    """Whether `name` reads as an import path ``package.module:object``."""
    return isinstance(name, str) and _IMPORT_PATH.match(name) is not None


def load_import_path(kind: str, path: str) -> Any:
    """The object an import path ``package.module:attr[.attr]`` names.

    The module must be importable (installed, or on ``PYTHONPATH`` / `sys.path`). Raises
    `PluginError` in one line when the path is malformed, the module cannot be imported (whatever
    its import raises), or the attribute does not exist.
    """
    if not is_import_path(path):
        raise PluginError(f"{kind} plugin {path!r} is not an import path of the form package.module:object")
    module_name, _, attributes = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while importing
        raise PluginError(
            f"{kind} plugin {path!r} cannot be imported: {type(exc).__name__}: {first_line(exc)}"
            " (is its package installed or on PYTHONPATH?)"
        ) from None
    for attribute in attributes.split("."):
        if not hasattr(found, attribute):
            raise PluginError(f"{kind} plugin {path!r}: module {module_name!r} has no attribute {attributes!r}")
        found = getattr(found, attribute)
    return found


def entry_point_names(group: str) -> list[str]:
    """Names registered under entry-point `group` by the installed packages, sorted (nothing is imported)."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=group)})


def load_entry_point(kind: str, group: str, name: str) -> Any | None:
    """The object entry point `name` of `group` refers to, or None when no package registers `name`.

    Raises `PluginError` in one line naming the entry point and its package when it cannot be
    loaded.
    """
    found = [ep for ep in importlib.metadata.entry_points(group=group) if ep.name == name]
    if not found:
        return None
    ep = found[0]
    package = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
    try:
        return ep.load()
    except Exception as exc:  # the plugin's import may raise anything
        raise PluginError(
            f"{kind} {name!r} (entry point {ep.value!r} of {package}, group {group}) cannot be loaded:"
            f" {type(exc).__name__}: {first_line(exc)}"
        ) from None


def close_matches(name: str, names: list[str], count: int = 5) -> list[str]:
    """Up to `count` entries of `names` spelled most like `name` (for "did you mean" messages)."""
    return difflib.get_close_matches(name, names, n=count, cutoff=0.5)


def unknown_name(kind: str, name: str, names: list[str], listing: str) -> UnknownNameError:
    """An `UnknownNameError` for a name among too many to list: its close matches and how to list them all."""
    prefix = name.rpartition("/")[0] + "/" if "/" in name else ""  # compare "nope", not "torchvision/nope"
    bare = {n.removeprefix(prefix): n for n in names}
    near = [bare[n] for n in close_matches(name.removeprefix(prefix), list(bare))]
    error = UnknownNameError(kind, name, names)
    shown = f"close matches: {', '.join(near)}; " if near else ""
    error.args = (f"unknown {kind} {name!r}; {shown}{len(names)} exist, listed by {listing}",)
    return error


def require_extra(module: str, extra: str, what: str) -> Any:
    """Import optional dependency `module`, else `MissingExtraError`: "... install randsparse[`extra`]"."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{what} needs {module}, which is not installed: install randsparse[{extra}]") from None
