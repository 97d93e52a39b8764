"""Files randsparse wrote and then finds damaged, crafted or in the way: one line, exit 2, nothing overwritten."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from randsparse.accel import load
from randsparse.errors import FileFormatError
from randsparse.sparsity.masks import load_masks
from randsparse.train import fit
from randsparse.train.checkpoint import load_checkpoint
from tests._cli import run
from tests.train._runs import tiny_config

MLP = ("epochs=1", "sparsity=0.9", "model.name=mlp", "model.options={depth: 2, hidden: 32}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("integrity") / "run"
    fit(tiny_config(*MLP), path)
    return path


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    """A private copy of the trained run, free to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _flip(path: Path, at: float = 0.5, count: int = 64) -> None:
    """Invert `count` bytes of `path` starting `at` (a fraction of its length)."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _unsealed(path: Path) -> None:
    """Rewrite `path` as the previous release wrote it: the same contents, plain `torch.save`, no checksum."""
    content = torch.load(path, weights_only=True)
    path.unlink()
    torch.save(content, path)


def _one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


# --- fault 11: silent corruption --------------------------------------------------------------------
def test_checkpoint_with_flipped_weight_bytes_is_refused(run_dir, tmp_path, capsys) -> None:
    best = run_dir / "checkpoints" / "best.pt"
    _flip(best)
    code, _, err = run(["export", str(run_dir), "--out", str(tmp_path / "m.rsp")], capsys)
    _one_line(code, err, "best.pt", "checksum")
    assert not (tmp_path / "m.rsp").exists()


def test_mask_file_with_one_flipped_bit_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "masks.pt"
    code, _, err = run(["plan", "--model", "mlp", "--sparsity", "0.9", "--save-masks", str(path)], capsys)
    assert code == 0, err
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, _, err = run(["plan", "--model", "mlp", "--masks", str(path)], capsys)
    _one_line(code, err, "masks.pt", "checksum")


def test_exported_model_with_flipped_bytes_is_refused(run_dir, tmp_path, capsys) -> None:
    out = tmp_path / "m.rsp"
    assert run(["export", str(run_dir), "--out", str(out)], capsys)[0] == 0
    _flip(out, at=0.4)
    with pytest.raises(FileFormatError, match="checksum"):
        load(out)
    with pytest.raises(FileFormatError, match="checksum"):
        load(out.read_bytes())


def test_files_of_the_previous_release_without_a_checksum_still_load(run_dir, tmp_path, capsys) -> None:
    best = run_dir / "checkpoints" / "best.pt"
    _unsealed(best)
    assert load_checkpoint(best)["config_hash"]
    out = tmp_path / "m.rsp"
    assert run(["export", str(run_dir), "--out", str(out)], capsys)[0] == 0
    _unsealed(out)
    load(out)
    masks = tmp_path / "masks.pt"
    assert run(["plan", "--model", "mlp", "--sparsity", "0.9", "--save-masks", str(masks)], capsys)[0] == 0
    _unsealed(masks)
    assert len(load_masks(masks)[0]) > 0


# --- fault 11: never write over a file the command did not create ----------------------------------
@pytest.mark.parametrize("target", ["checkpoints/best.pt", "checkpoints/last.pt", "config.yaml", "summary.json"])
def test_export_onto_the_runs_own_files_is_refused_and_they_are_unchanged(run_dir, target, capsys) -> None:
    path = run_dir / target
    before = path.read_bytes()
    code, _, err = run(["export", str(run_dir), "--out", str(path)], capsys)
    _one_line(code, err, "--out", target.rpartition("/")[2])
    assert path.read_bytes() == before


def test_export_refuses_a_foreign_file_but_replaces_its_own_output(run_dir, tmp_path, capsys) -> None:
    foreign = tmp_path / "notes.txt"
    foreign.write_text("keep me\n")
    code, _, err = run(["export", str(run_dir), "--out", str(foreign)], capsys)
    _one_line(code, err, "refusing to overwrite")
    assert foreign.read_text() == "keep me\n"
    masks = tmp_path / "masks.pt"
    assert run(["plan", "--model", "mlp", "--sparsity", "0.9", "--save-masks", str(masks)], capsys)[0] == 0
    before = masks.read_bytes()
    code, _, err = run(["export", str(run_dir), "--out", str(masks)], capsys)
    _one_line(code, err, "randsparse masks file")
    assert masks.read_bytes() == before
    out = tmp_path / "m.rsp"
    assert run(["export", str(run_dir), "--out", str(out)], capsys)[0] == 0
    assert run(["export", str(run_dir), "--which", "last", "--out", str(out)], capsys)[0] == 0


def test_plan_save_masks_and_report_out_follow_the_same_rule(run_dir, tmp_path, capsys) -> None:
    best = run_dir / "checkpoints" / "best.pt"
    before = best.read_bytes()
    code, _, err = run(["plan", "--model", "mlp", "--sparsity", "0.9", "--save-masks", str(best)], capsys)
    _one_line(code, err, "--save-masks")
    assert best.read_bytes() == before
    masks = tmp_path / "masks.pt"
    for _ in range(2):  # its own earlier output: replaced
        assert run(["plan", "--model", "mlp", "--sparsity", "0.9", "--save-masks", str(masks)], capsys)[0] == 0
    study = tmp_path / "study"
    study.mkdir()
    (study / "results.sqlite").write_bytes(b"")
    code, _, err = run(["report", str(study), "--out", str(run_dir)], capsys)
    _one_line(code, err, "run directory")


# --- fault 10: crafted contents ----------------------------------------------------------------------
def _write_plain(content: dict, path: Path) -> None:
    """Crafted contents as a plain `torch.save` file: no checksum (as the previous release wrote), so
    only the structural checks stand between them and the model."""
    path.unlink()
    torch.save(content, path)


def _first(entries: dict) -> dict:
    return next(iter(entries.values()))


def _scale_shape(content: dict, factor: float) -> None:
    """Multiply every dimension of the first mask's (2-D) shape: -1 keeps the size, 1.0 makes floats."""
    entry = _first(content["randsparse_masks"]["masks"])
    entry["shape"] = [d * factor for d in entry["shape"]]


def _craft_checkpoint(path: Path, **changes) -> None:
    content = torch.load(path, weights_only=True)
    content.update(changes)
    _write_plain(content, path)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"model": [1, 2, 3]}, "'model'"),
        ({"progress": {"epoch": "three"}}, "epoch"),
        ({"progress": {"epoch": -1}}, "epoch"),
        ({"config_hash": 7}, "config_hash"),
        (
            {"masks": {"format": "randsparse.maskset/packbits-v1", "masks": {"x": {"shape": [-8, -1], "bits": 1}}}},
            "mask",
        ),
    ],
    ids=["list_state_dict", "string_epoch", "negative_epoch", "int_hash", "negative_mask_shape"],
)
def test_crafted_checkpoint_contents_are_one_line_errors(run_dir, tmp_path, changes, fragment, capsys) -> None:
    best = run_dir / "checkpoints" / "best.pt"
    _craft_checkpoint(best, **changes)
    code, _, err = run(["export", str(run_dir), "--out", str(tmp_path / "m.rsp")], capsys)
    _one_line(code, err, "best.pt", fragment)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda c: _scale_shape(c, -1), "non-negative"),
        (lambda c: _scale_shape(c, 1.0), "non-negative"),
        (lambda c: c["metadata"].update(include=["features"]), "include"),
        (lambda c: c["metadata"].update(sparsity="ninety"), "sparsity"),
        (lambda c: c.update(metadata="a string"), "metadata"),
        (lambda c: c["randsparse_masks"].update(masks=[1, 2]), "corrupt"),
    ],
    ids=["negative_shape", "float_shape", "list_include", "string_sparsity", "string_metadata", "list_masks"],
)
def test_crafted_mask_files_are_one_line_errors(tmp_path, edit, fragment, capsys) -> None:
    path = tmp_path / "masks.pt"
    assert run(["plan", "--model", "mlp", "--sparsity", "0.9", "--save-masks", str(path)], capsys)[0] == 0
    content = torch.load(path, weights_only=True)
    edit(content)
    _write_plain(content, path)
    code, _, err = run(["plan", "--model", "mlp", "--masks", str(path)], capsys)
    _one_line(code, err, "masks.pt", fragment)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda c: c["dense"].update({name: torch.zeros(3) for name in c["dense"] if name.endswith("bias")}), "shape"),
        (lambda c: c.update(dense=[1]), "dense"),
        (lambda c: _first(c["sparse"]).update(shape=[-1, 5]), "shape"),
        (lambda c: _first(c["sparse"]).update(kept="many"), "kept"),
    ],
    ids=["wrong_bias_shape", "list_dense", "negative_shape", "string_kept"],
)
def test_crafted_export_files_are_file_format_errors(run_dir, tmp_path, edit, fragment, capsys) -> None:
    out = tmp_path / "m.rsp"
    assert run(["export", str(run_dir), "--out", str(out)], capsys)[0] == 0
    content = torch.load(out, weights_only=True)
    edit(content)
    _write_plain(content, out)
    with pytest.raises(FileFormatError, match=fragment):
        load(out)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty file"),
        (b"SQLite format 3\x00" + b"\xff" * 2000, "results store"),
        (b"\x00" * 4096, "results store"),
    ],
    ids=["empty", "damaged_header", "zeros"],
)
def test_report_on_a_store_that_is_not_ours_exits_2_and_writes_nothing(tmp_path, content, fragment, capsys) -> None:
    study = tmp_path / "study"
    study.mkdir()
    (study / "results.sqlite").write_bytes(content)
    code, _, err = run(["report", str(study)], capsys)
    _one_line(code, err, "results.sqlite", fragment)
    assert sorted(p.name for p in study.iterdir()) == ["results.sqlite"]
    assert (study / "results.sqlite").read_bytes() == content
