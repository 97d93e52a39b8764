"""Where a dataset's files are: the offline-first lookup order, and the error that says how to get them.

Order: the `root` argument (`--data-dir`), itself and its sub-folders named after the dataset; the
folders in `$RANDSPARSE_DATA` (separated by ':'); the system location `/usr/share/datasets` that
Debian's `dataset-*` packages install to; the download cache; and only when asked, torchvision's
downloader, into the first of `root`, `$RANDSPARSE_DATA` and the cache.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from randsparse.data.registry import DatasetEntry, get_entry
from randsparse.errors import DatasetNotFoundError

log = logging.getLogger(__name__)

ENV_VAR = "RANDSPARSE_DATA"
# Where Debian's dataset packages put their files (dataset-fashion-mnist -> fashion-mnist/).
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)


def cache_dir() -> Path:
    """Where `download=True` puts a dataset when neither `root` nor `$RANDSPARSE_DATA` is given."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "randsparse" / "data"


@dataclass(frozen=True)
class Location:
    """Where a dataset was found (`path`, `origin`), or not, and every folder looked at, in order.

    `origin` is "root", "$RANDSPARSE_DATA", "system" or "cache" for files found there, "bundled"
    for data shipped inside an installed package, "generated" for data made from a seed, "plugin"
    for a factory given by import path or entry point, and
    "missing" when nothing was found.
    """

    name: str
    path: Path | None
    origin: str
    looked: tuple[Path, ...] = ()

    @property
    def found(self) -> bool:
        """True when the dataset can be built without a download."""
        return self.origin != "missing"


def _env_dirs() -> list[Path]:
    value = os.environ.get(ENV_VAR, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def candidate_dirs(entry: DatasetEntry, root: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    """Every (origin, folder) that could hold `entry`'s files, in lookup order."""
    candidates: list[tuple[str, Path]] = []
    if root is not None:
        base = Path(root).expanduser()
        candidates.append(("root", base))  # root may be the dataset's own folder ...
        candidates += [("root", base / d) for d in entry.dirnames]  # ... or a folder of datasets
    for base in _env_dirs():
        candidates += [(f"${ENV_VAR}", base / d) for d in entry.dirnames]
    for base in SYSTEM_DATA_DIRS:
        candidates += [("system", base / d) for d in entry.dirnames]
    candidates += [("cache", cache_dir() / d) for d in entry.dirnames]
    return candidates


def find_file(directory: Path, spellings: tuple[str, ...]) -> Path | None:
    """The first of `spellings` that exists inside `directory`, or None."""
    for spelling in spellings:
        path = directory / spelling
        if path.exists():
            return path
    return None


def holds(entry: DatasetEntry, directory: Path) -> bool:
    """Whether `directory` holds every file `entry` requires."""
    return directory.is_dir() and all(find_file(directory, spellings) for spellings in entry.files)


def locate(name: str, root: str | os.PathLike[str] | None = None) -> Location:
    """Where dataset `name` is, looking in `root`, `$RANDSPARSE_DATA`, the system and cache folders."""
    entry = get_entry(name)
    if entry.origin == "generated":
        return Location(name, None, "generated")
    if entry.origin == "plugin":  # a plugin factory finds its own data (under root, if given)
        return Location(name, None if root is None else Path(root).expanduser(), "plugin")
    if entry.origin == "bundled":
        return Location(name, entry.bundled_path() if entry.bundled_path else None, "bundled")
    looked: list[Path] = []
    for origin, directory in candidate_dirs(entry, root):
        if directory in looked:
            continue
        looked.append(directory)
        if holds(entry, directory):
            return Location(name, directory, origin, tuple(looked))
    return Location(name, None, "missing", tuple(looked))


def download_base(root: str | os.PathLike[str] | None) -> Path:
    """The data folder `download=True` writes into: `root`, else the first `$RANDSPARSE_DATA` folder, else the cache."""
    if root is not None:
        return Path(root).expanduser()
    env = _env_dirs()
    return env[0] if env else cache_dir()


def required_files_text(entry: DatasetEntry) -> str:
    """The files a dataset folder must hold, for messages."""
    names = []
    for spellings in entry.files:
        first = spellings[0]
        if first.endswith(".gz") and first[: -len(".gz")] in spellings:
            first = f"{first[: -len('.gz')]}[.gz]"
        names.append(first)
    return ", ".join(names)


def ways_to_get(entry: DatasetEntry, root: str | os.PathLike[str] | None = None) -> str:
    """Each way to get a dataset's files, as one clause (package, --download, by hand, a data folder)."""
    ways = []
    if entry.package:
        ways.append(f"install Debian's package (apt-get install {entry.package})")
    if entry.download is not None:
        ways.append(f"pass --download (download=True) to fetch it with torchvision into {download_base(root)}")
    if entry.how_to_get:
        ways.append(entry.how_to_get)
    if entry.files and entry.dirnames:
        ways.append(f"point --data-dir (root=) or ${ENV_VAR} at a folder holding {required_files_text(entry)}")
    return ", or ".join(ways)


def not_found_message(entry: DatasetEntry, location: Location, root: str | os.PathLike[str] | None) -> str:
    """One line: what was looked for, every place looked, and each way to get the data."""
    looked = ", ".join(str(p) for p in location.looked) or "nowhere"
    notes = []
    if root is None:
        notes.append("no root/--data-dir given")
    if entry.dirnames and not _env_dirs():
        notes.append(f"${ENV_VAR} not set")
    where = f"looked in {looked}" + (f" ({'; '.join(notes)})" if notes else "")
    return f"dataset {entry.name!r} not found; {where}. To get it: {ways_to_get(entry, root)}"


def find_directory(name: str, root: str | os.PathLike[str] | None = None, download: bool = False) -> Path:
    """The folder holding dataset `name`'s files, downloading it first if allowed and needed.

    Raises `DatasetNotFoundError` naming every place looked and how to get the data.
    """
    entry = get_entry(name)
    location = locate(name, root)
    if location.found and location.path is not None:
        return location.path
    if not download or entry.download is None:
        raise DatasetNotFoundError(not_found_message(entry, location, root))
    base = download_base(root)
    log.info("downloading %s into %s with torchvision", name, base)
    try:
        base.mkdir(parents=True, exist_ok=True)
        entry.download(base)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DatasetNotFoundError(f"dataset {name!r}: download into {base} failed: {exc}") from exc
    for directory in [base / d for d in entry.dirnames]:
        if holds(entry, directory):
            return directory
    raise DatasetNotFoundError(
        f"dataset {name!r}: the download into {base} finished but none of"
        f" {', '.join(str(base / d) for d in entry.dirnames)} holds {required_files_text(entry)}"
    )
