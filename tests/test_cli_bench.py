"""The `randsparse bench` command: JSON rows, the tables, and one-line errors."""

from __future__ import annotations

import json

import pytest

from tests._cli import run

TINY = ["--model", "mlp", "--width", "0.05", "--image-size", "6", "--repeats", "1", "--warmup", "0"]
JSON_KEYS = {"sparsity", "batch", "dense_ms", "masked_ms", "sparse_ms", "speedup", "ideal_speedup"}
JSON_KEYS |= {"dense_bytes", "sparse_bytes"}


def test_bench_json_is_a_list_of_rows_with_the_documented_keys(capsys) -> None:
    code, out, err = run(["bench", *TINY, "--sparsity", "0.5,0.9", "--batch", "1,4", "--format", "json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["sparsity"], r["batch"]) for r in rows] == [(0.5, 1), (0.5, 4), (0.9, 1), (0.9, 4)]
    for row in rows:
        assert set(row) >= JSON_KEYS
        assert row["sparse_bytes"] < row["dense_bytes"]


def test_bench_table_shows_models_and_layer_shapes(capsys) -> None:
    code, out, err = run(["bench", *TINY, "--sparsity", "0.8", "--batch", "2"], capsys)
    assert code == 0, err
    assert "dense, masked and exported" in out
    assert "per layer shape" in out
    assert "36→51" in out  # the MLP's first layer: 1×6×6 inputs, 51 hidden units


@pytest.mark.parametrize(
    "argv",
    [
        ["--sparsity", "1.0"],
        ["--sparsity", "0.5,x"],
        ["--sparsity", "0.5", "--batch", "0"],
        ["--sparsity", "0.5", "--distribution", "nope"],
        ["--sparsity", "0.5", "--threads", "0"],
    ],
)
def test_bench_mistakes_end_in_one_line_with_exit_code_2(capsys, argv: list[str]) -> None:
    code, _out, err = run(["bench", *TINY, *argv], capsys)
    assert code == 2
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err


def test_bench_unknown_model_is_one_line(capsys) -> None:
    code, _, err = run(["bench", "--model", "nope", "--sparsity", "0.5"], capsys)
    assert code == 2 and err.count("\n") == 1 and "nope" in err


def test_bench_train_times_whole_steps_of_every_engine(capsys) -> None:
    argv = ["bench", *TINY, "--train", "--sparsity", "0.9", "--batch", "4", "--format", "json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    (row,) = json.loads(out)
    assert (row["sparsity"], row["batch"]) == (0.9, 4)
    for key in ("dense_ms", "masked_ms", "sparse_ms", "auto_ms"):
        assert row[key] > 0
    assert row["ideal"] > 1 and row["layers"] == 3
    code, out, err = run(["bench", *TINY, "--train", "--sparsity", "0.9", "--batch", "4"], capsys)
    assert code == 0, err
    assert "training step" in out and "auto×" in out
