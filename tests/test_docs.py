"""Executable claims: every Python example in README.md and docs/*.md runs, every name they use imports.

Each ```python block runs in a fresh namespace and its own empty working directory, in one child
interpreter, against tiny Fashion-MNIST and MNIST files (no network, no real dataset). A block that
cannot run here (a GPU, a real dataset) is marked by ``<!-- example: skip REASON -->`` on the line
before it; the test reports the reason, and such marks stay rare.

Names are checked as written, whatever the modules are called when the docs are read: every
``randsparse.a.b`` reference, every ``from randsparse... import x`` and every ``python -m``
module anywhere in the Markdown (prose, inline code, bash and Python blocks), and every inline
code span written as a call (`` `save_masks(masks, path)` ``) against the public packages.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.data.writers import write_mnist_dir

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"<!--\s*example:\s*skip\b\s*(.*?)\s*-->")
MAX_SKIPS = 3


@dataclass(frozen=True)
class Example:
    doc: str
    line: int
    code: str
    skip: str | None  # the reason, when the block is marked not to run

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _examples() -> list[Example]:
    examples = []
    for path in _docs():
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```python":
                start = i + 1
                end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
                before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                mark = SKIP.search(before)
                skip = (mark.group(1) or "no reason given") if mark else None
                rel = path.relative_to(ROOT).as_posix()
                examples.append(Example(rel, start + 1, "\n".join(lines[start:end]) + "\n", skip))
                i = end
            i += 1
    return examples


EXAMPLES = _examples()

# Runs in the child: each example in a fresh namespace and directory; one JSON line of outcomes.
_RUNNER = """
import json, os, sys, traceback
import torch
torch.set_num_threads(1)
from randsparse.data import lookup
lookup.SYSTEM_DATA_DIRS = ()  # only the tiny files in $RANDSPARSE_DATA
examples, work = json.load(sys.stdin), sys.argv[1]
outcomes = {}
for number, (name, code) in enumerate(examples):
    here = os.path.join(work, str(number))
    os.makedirs(here)
    os.chdir(here)
    try:
        exec(compile(code, name, "exec"), {"__name__": "__example__"})
        outcomes[name] = None
    except BaseException:
        outcomes[name] = traceback.format_exc()
print(json.dumps(outcomes))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """Run every unmarked example once; the traceback of each that failed (None: it ran)."""
    base = tmp_path_factory.mktemp("examples")
    data = base / "data"
    write_mnist_dir(data / "fashion-mnist", n_train=64, n_test=16)
    write_mnist_dir(data / "mnist", n_train=64, n_test=16, seed=1)
    env = {
        **os.environ,
        "RANDSPARSE_DATA": str(data),
        "XDG_CACHE_HOME": str(base / "cache"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    runnable = [(e.id, e.code) for e in EXAMPLES if e.skip is None]
    (base / "work").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(base / "work")],
        input=json.dumps(runnable),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_python_example_runs(example: Example, outcomes: dict[str, str | None]) -> None:
    if example.skip is not None:
        pytest.skip(f"{example.id} is marked not to run here: {example.skip}")
    failure = outcomes[example.id]
    assert failure is None, f"the example at {example.id} fails:\n{failure}"


def test_examples_exist_and_skips_stay_rare() -> None:
    assert len(EXAMPLES) >= 5
    skipped = [e for e in EXAMPLES if e.skip is not None]
    assert len(skipped) <= MAX_SKIPS, [e.id for e in skipped]
    assert all(e.skip != "no reason given" for e in skipped), [e.id for e in skipped]


# --- names -------------------------------------------------------------------------------------

DOTTED = re.compile(r"(?<![\w.])(randsparse(?:\.[A-Za-z_]\w*)+)(?![\w-])")  # not `randsparse.sparse-model/v1`
FROM_IMPORT = re.compile(r"from\s+(randsparse(?:\.\w+)*)\s+import\s+\(?([\w\s,]+)")
RUN_MODULE = re.compile(r"python\d?\s+-m\s+(randsparse(?:\.\w+)*)")
INLINE_CALL = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\(")
PUBLIC_PACKAGES = (
    "randsparse",
    "randsparse.sparsity",
    "randsparse.models",
    "randsparse.data",
    "randsparse.train",
    "randsparse.evaluate",
    "randsparse.experiments",
    "randsparse.accel",
)


def _resolve(dotted: str) -> bool:
    """Whether ``a.b.c`` names something: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def _references() -> list[tuple[str, str]]:
    """(where, dotted name) for every randsparse name the Markdown files use."""
    found = []
    for path in _docs():
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            where = f"{rel}:{number}"
            found += [(where, m) for m in DOTTED.findall(line)]
            found += [(where, m) for m in RUN_MODULE.findall(line)]
            for module, names in FROM_IMPORT.findall(line):
                found += [(where, f"{module}.{n.strip()}") for n in names.split(",") if n.strip()]
    return found


def _inline_calls() -> list[tuple[str, str]]:
    """(where, name) for inline code written as a call of a function or class of this package."""
    calls = []
    for path in _docs():
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(_prose(path).splitlines(), start=1):
            calls += [(f"{rel}:{number}", m) for m in INLINE_CALL.findall(line) if not m.startswith("randsparse.")]
    return calls


def test_every_randsparse_name_in_the_docs_imports_as_written() -> None:
    references = _references()
    assert any(name.startswith("randsparse.sparsity") for _, name in references)
    missing = sorted({f"{where}: {name}" for where, name in references if not _resolve(name)})
    assert not missing, "names the docs use that do not exist:\n" + "\n".join(missing)


# Inline calls that are not randsparse names: notation and methods the prose spells as calls.
NOT_OURS = {"fixed.remove", "read", "clamp", "SeedSequence"}


def _all_modules() -> list[str]:
    import randsparse

    walked = pkgutil.walk_packages(randsparse.__path__, "randsparse.")
    return ["randsparse"] + [m.name for m in walked if not m.name.endswith("__main__")]  # that one runs the CLI


def test_every_call_in_inline_code_names_a_function_that_exists() -> None:
    """README calls must be public (a package's namespace); a docs page may name any module's function."""
    modules = _all_modules()
    missing = []
    for where, name in _inline_calls():
        homes = PUBLIC_PACKAGES if where.startswith("README.md") else modules
        if name in NOT_OURS or hasattr(builtins, name) or ("." in name and _resolve(name)):
            continue
        if not any(_resolve(f"{home}.{name}") for home in homes):
            missing.append(f"{where}: {name}")
    assert not missing, "inline calls that randsparse does not provide:\n" + "\n".join(missing)


def test_save_masks_imports_from_the_sparsity_package_as_the_readme_says() -> None:
    from randsparse.sparsity import load_masks, save_masks  # issue 13, fault 14

    assert callable(save_masks) and callable(load_masks)


# --- paths -------------------------------------------------------------------------------------

RELATIVE_UP = re.compile(r"(?<![\w./-])((?:\.\./)+[\w./-]*)")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".txt", ".ini", ".sh"}


def _repo_text_files() -> list[Path]:
    skip = {"venv", "build", "dist", "__pycache__", "node_modules"}
    outputs = {"runs", "results", "report", "data"}  # what the README's commands write at the root
    files = []
    for directory, dirnames, filenames in os.walk(ROOT):
        top = Path(directory) == ROOT
        dirnames[:] = [
            d
            for d in dirnames
            if d not in skip and not (top and d in outputs) and not d.startswith(".") and not d.endswith(".egg-info")
        ]
        files += [Path(directory, f) for f in filenames if Path(f).suffix in TEXT_SUFFIXES]
    ci = ROOT / ".ci"
    return files + ([p for p in ci.iterdir() if p.is_file()] if ci.is_dir() else [])


def _prose(path: Path) -> str:
    """The text of a Markdown file with its fenced blocks blanked (line numbers kept)."""
    return re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), path.read_text(), flags=re.S)


def test_no_file_refers_to_a_path_outside_the_repository() -> None:
    """No ``../`` path leaves the repository; in configs and Markdown prose it names a file that is there."""
    outside = []
    for path in _repo_text_files():
        text = path.read_text(errors="replace")
        checked = _prose(path) if path.suffix == ".md" else text if path.suffix in {".yaml", ".yml"} else ""
        for number, line in enumerate(text.splitlines(), start=1):
            where = f"{path.relative_to(ROOT)}:{number}"
            for reference in RELATIVE_UP.findall(line):
                if not Path(os.path.normpath(path.parent / reference)).is_relative_to(ROOT):
                    outside.append(f"{where}: {reference}")
            if re.search(r"\bDESIGN\.md\b|(?<![\w/])shared/|/work/", line) and path.name != "test_docs.py":
                outside.append(f"{where}: {line.strip()[:80]}")
        for number, line in enumerate(checked.splitlines(), start=1):
            for reference in RELATIVE_UP.findall(line):
                if not (path.parent / reference.rstrip(".,;:")).exists():
                    outside.append(f"{path.relative_to(ROOT)}:{number}: {reference} (not in the repository)")
    assert not outside, "references to files outside the repository:\n" + "\n".join(outside)


# --- results ------------------------------------------------------------------------------------


def _results_script():
    spec = importlib.util.spec_from_file_location("make_readme_table", ROOT / "docs/results/make_readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_results_table_is_generated_from_the_committed_csv() -> None:
    from randsparse.experiments import expand, load_study

    script = _results_script()
    readme = (ROOT / "README.md").read_text()
    assert script.with_table(readme, script.results_block()) == readme, "run docs/results/make_readme_table.py"
    runs = pd.read_csv(script.CSV)
    assert set(runs["id"]) == {spec.id for spec in expand(*load_study(script.STUDY))}  # every run of the study
    assert len(script.finished_runs()) == (runs["status"] == "done").sum() > 0
    for figure in script.FIGURES.values():
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for verdict in script.verdicts():  # the README states each claim's computed verdict, contradicting or not
        assert f"**{verdict.outcome}**: {verdict.text}" in readme


def test_a_hand_edit_of_the_readme_table_is_caught(tmp_path) -> None:
    script = _results_script()
    readme = (ROOT / "README.md").read_text()
    edited = readme.replace(script.END, "| made up | 99.9 % |\n" + script.END)
    assert script.with_table(edited, script.results_block()) != edited
    assert script.with_table(edited, script.results_block()) == readme


def test_no_doc_repeats_a_table_row() -> None:
    """A merged page must not keep two versions of a row (the union of two edits of one table).

    Rows are keyed by their first cell within one table and, in a table split by bold group rows
    (the module map), within one group.
    """
    repeated = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        seen: set[str] = set()
        for line in page.read_text().splitlines():
            if not line.startswith("|"):
                seen = set()  # a new table
                continue
            key = line.split("|")[1].strip()
            if key.startswith("**"):
                seen = set()  # a new group of the same table
            elif key.startswith("`"):
                if key in seen:
                    repeated.append(f"{page.relative_to(ROOT)}: {key}")
                seen.add(key)
    assert not repeated, "table rows repeated:\n  " + "\n  ".join(repeated)
