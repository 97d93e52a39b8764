"""Atomic writes (a reader sees the old file or the new one, never a torn one) and config file reading."""

from __future__ import annotations

import pytest
import torch

from randsparse.errors import ConfigError, FileFormatError
from randsparse.storage import atomic_torch_save, atomic_write_bytes, check_output_path, read_mapping, seal, unseal


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


# --- the one reader of YAML/JSON mappings ------------------------------------------------------------
BAD_MAPPINGS = {
    "yaml_depth_bomb": ("c.yaml", "a: " + "[" * 5000 + "]" * 5000, "deeper"),
    "yaml_block_depth_bomb": ("c.yaml", "".join(f"{'  ' * i}k{i}:\n" for i in range(3000)), "deeper"),
    "yaml_duplicate_key": ("c.yaml", "epochs: 1\nseed: 0\nepochs: 2\n", "duplicate key 'epochs'"),
    "yaml_nested_duplicate": ("c.yaml", "optim:\n  lr: 0.1\n  lr: 0.2\n", "duplicate key 'lr'"),
    "yaml_alias_bomb": (
        "c.yaml",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(6)),
        "alias bomb",
    ),
    "yaml_not_a_mapping": ("c.yaml", "- a\n- b\n", "must be a mapping"),
    "json_depth_bomb": ("c.json", "[" * 100_000 + "]" * 100_000, "cannot parse"),
    "json_duplicate_key": ("c.json", '{"a": 1, "a": 2}', "duplicate key 'a'"),
    "json_empty": ("c.json", "", "cannot parse"),
}


@pytest.mark.parametrize(("name", "text", "fragment"), BAD_MAPPINGS.values(), ids=BAD_MAPPINGS.keys())
def test_read_mapping_refuses_bombs_duplicates_and_non_mappings(tmp_path, name, text, fragment) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(FileFormatError, match=fragment) as caught:
        read_mapping(path, "config")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # what config readers have always raised


@pytest.mark.parametrize("data", [bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n\x00\x00", "é".encode("latin-1")])
def test_read_mapping_refuses_binary_files(tmp_path, data) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    with pytest.raises(FileFormatError, match="UTF-8"):
        read_mapping(path, "config")


def test_read_mapping_keeps_merge_keys_and_ordinary_anchors(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {lr: 0.1, momentum: 0.9}\noptim:\n  <<: *b\n  lr: 0.2\n")
    assert read_mapping(path, "config")["optim"] == {"lr": 0.2, "momentum": 0.9}


@pytest.mark.parametrize("argv", [["train", "--config"], ["study"]], ids=["train", "study"])
@pytest.mark.parametrize("bad", ["depth", "binary", "duplicate"])
def test_cli_reads_bad_config_files_as_one_line(tmp_path, capsys, argv, bad) -> None:
    from tests._cli import run

    path = tmp_path / "bad.yaml"
    content = {
        "depth": ("a: " + "[" * 5000 + "]" * 5000).encode(),
        "binary": bytes(range(256)),
        "duplicate": b"a: 1\na: 2\n",
    }
    path.write_bytes(content[bad])
    code, _, err = run([*argv, str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and "bad.yaml" in err, err
    assert not (tmp_path / "out").exists()


# --- sealed files --------------------------------------------------------------------------------------
def test_sealed_bytes_round_trip_and_any_changed_byte_is_caught() -> None:
    payload = bytes(range(200)) * 3
    sealed = seal(payload, "masks")
    assert unseal(sealed, "f") == (payload, "masks")
    for at in (0, 17, len(payload) - 1, len(sealed) - 5):
        damaged = bytearray(sealed)
        damaged[at] ^= 0x01
        with pytest.raises(FileFormatError):
            unseal(bytes(damaged), "f")


def test_check_output_path_allows_new_files_and_same_kind_only(tmp_path) -> None:
    assert check_output_path(tmp_path / "new.pt", "masks") == tmp_path / "new.pt"
    atomic_torch_save({"x": 1}, tmp_path / "m.pt", kind="masks")
    check_output_path(tmp_path / "m.pt", "masks")
    with pytest.raises(ConfigError, match="randsparse masks file"):
        check_output_path(tmp_path / "m.pt", "checkpoint")
    torch.save({"x": 1}, tmp_path / "plain.pt")
    with pytest.raises(ConfigError, match="did not write"):
        check_output_path(tmp_path / "plain.pt", "masks")
    with pytest.raises(ConfigError, match="directory"):
        check_output_path(tmp_path, "masks")


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
