"""Atomic writes (a reader sees the old file or the new one, never a torn one) and config file reading."""

from __future__ import annotations

import pytest
import torch

from randsparse.errors import ConfigError
from randsparse.storage import atomic_torch_save, atomic_write_bytes, read_mapping


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "deep" / "file.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_a_failed_torch_save_leaves_the_old_file_intact(tmp_path) -> None:
    target = tmp_path / "state.pt"
    atomic_torch_save({"x": torch.ones(2)}, target)
    with pytest.raises(Exception):  # noqa: B017  (whatever pickling raises)
        atomic_torch_save({"x": lambda: None}, target)
    assert torch.equal(torch.load(target)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch) -> None:
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"old")

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("randsparse.storage.os.replace", fail)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_written_files_get_the_umask_permissions_not_mkstemps(tmp_path) -> None:
    import os

    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_writing_over_a_directory_is_refused_with_its_name(tmp_path) -> None:
    with pytest.raises(IsADirectoryError) as info:
        atomic_write_bytes(tmp_path, b"x")
    assert info.value.filename == str(tmp_path)


@pytest.mark.parametrize(
    ("name", "text", "where", "problem"),
    [
        ("unclosed.yaml", 'model:\n  name: "small_cnn\n', ":3:1:", "quoted scalar (which starts at {path}:2:9)"),
        ("indent.yaml", "model:\n  name: a\n bad: b\n", ":3:2:", "expected <block end>"),
        ("tab.yaml", "a: 1\n\tb: 2\n", ":2:1:", "found character '\\t'"),
        ("broken.json", '{"a": 1,\n "b": }\n', ":2:7:", "Expecting value"),
    ],
)
def test_a_syntax_error_names_the_file_line_and_column(tmp_path, name, text, where, problem) -> None:
    """The one-line error says where the mistake is (FILE:LINE:COLUMN, 1-based), so the user can go there."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_mapping(path, "config")
    message = str(caught.value)
    assert "\n" not in message
    assert f"{path}{where}" in message and problem.format(path=path) in message, message
    line, column = (int(n) for n in where.strip(":").split(":"))
    assert len(text.split("\n")[line - 1]) >= column - 1, "the location lies inside the file (or at its end)"
