"""`randsparse data list`: each dataset, whether it was found and where, as a table or JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from randsparse.data import lookup
from tests._cli import run
from tests.data.writers import write_mnist_dir


@pytest.fixture(autouse=True)
def empty_world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No $RANDSPARSE_DATA, and the system folder and cache inside tmp_path."""
    monkeypatch.delenv(lookup.ENV_VAR, raising=False)
    monkeypatch.setattr(lookup, "SYSTEM_DATA_DIRS", (tmp_path / "system",))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "system"


def listing(argv: list[str], capsys) -> dict[str, dict]:
    code, out, err = run(["data", "list", "--format", "json", *argv], capsys)
    assert code == 0 and err == "", err
    return {row["name"]: row for row in json.loads(out)["datasets"]}


def test_json_lists_every_registered_dataset(capsys) -> None:
    from randsparse import data

    rows = listing([], capsys)
    assert sorted(rows) == data.available_datasets()
    for row in rows.values():
        assert {"name", "found", "origin", "path", "looked", "how_to_get", "num_classes", "shape"} <= set(row)


def test_dataset_in_data_dir_is_found_there(capsys, tmp_path: Path) -> None:
    write_mnist_dir(tmp_path / "data" / "mnist", n_train=3, n_test=2)
    rows = listing(["--data-dir", str(tmp_path / "data")], capsys)
    assert rows["mnist"]["found"] and rows["mnist"]["origin"] == "root"
    assert rows["mnist"]["path"] == str(tmp_path / "data" / "mnist")
    assert rows["mnist"]["shape"] == [1, 28, 28] and rows["mnist"]["num_classes"] == 10


def test_system_dataset_is_found_and_missing_one_says_how_to_get_it(capsys, empty_world: Path) -> None:
    write_mnist_dir(empty_world / "fashion-mnist", n_train=3, n_test=2)
    rows = listing([], capsys)
    assert rows["fashion_mnist"]["origin"] == "system"
    assert rows["fashion_mnist"]["how_to_get"] is None
    cifar = rows["cifar10"]
    assert not cifar["found"] and cifar["origin"] == "missing" and cifar["path"] is None
    assert str(empty_world / "cifar-10-batches-py") in cifar["looked"]
    assert "--download" in cifar["how_to_get"]


def test_missing_fashion_mnist_points_to_the_debian_package(capsys) -> None:
    assert "apt-get install dataset-fashion-mnist" in listing([], capsys)["fashion_mnist"]["how_to_get"]


def test_bundled_and_generated_sets_are_reported_as_such(capsys) -> None:
    rows = listing([], capsys)
    assert rows["digits"]["origin"] == "bundled" and rows["digits"]["found"]
    assert rows["synthetic"]["origin"] == "generated" and rows["synthetic"]["shape"] == [1, 28, 28]
    assert rows["gaussian"]["origin"] == "generated" and rows["gaussian"]["shape"] is None  # shaped by like=


def test_table_shows_names_status_and_where(capsys, empty_world: Path) -> None:
    write_mnist_dir(empty_world / "fashion-mnist", n_train=3, n_test=2)
    code, out, err = run(["data", "list"], capsys)
    assert code == 0 and err == ""
    for text in ("fashion_mnist", "cifar100", "synthetic", "found (system)", "missing", "bundled", "--download"):
        assert text in out
    assert "fashion-mnist" in re.sub(r"\s", "", out)  # the folder found (long paths wrap inside the cell)


def test_bad_format_exits_2_with_one_line(capsys) -> None:
    code, out, err = run(["data", "list", "--format", "yaml"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "yaml" in err


def test_data_without_action_exits_2(capsys) -> None:
    code, _, err = run(["data"], capsys)
    assert code == 2 and err.count("\n") == 1
