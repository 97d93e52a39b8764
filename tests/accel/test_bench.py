"""The benchmark helpers: specs and input shapes, row contents, per-shape summary, pinned threads."""

from __future__ import annotations

import pytest
import torch

from randsparse.accel.bench import (
    BenchRow,
    bench_model,
    bench_spec,
    default_input_shape,
    shape_summary,
    time_interleaved,
)
from randsparse.errors import ConfigError
from randsparse.models import build

JSON_KEYS = {"sparsity", "batch", "dense_ms", "masked_ms", "sparse_ms", "speedup", "ideal_speedup"}
JSON_KEYS |= {"dense_bytes", "sparse_bytes"}


def test_bench_spec_gives_image_size_models_one_28x28_channel_and_others_three() -> None:
    mlp = bench_spec("mlp")
    assert mlp["in_channels"] == 1 and mlp["options"]["image_size"] == 28
    resnet = bench_spec("resnet20", width=2.0)
    assert resnet["in_channels"] == 3 and resnet["options"] == {"width": 2.0}
    with pytest.raises(ConfigError, match="image_size"):
        bench_spec("resnet20", image_size=28)


def test_default_input_shape_is_224_for_torchvision_models_and_32_otherwise() -> None:
    with torch.device("meta"):
        imagenet = build("resnet18")
        cifar = build("resnet20")
    assert default_input_shape(imagenet, bench_spec("resnet18")) == (3, 224, 224)
    assert default_input_shape(cifar, bench_spec("resnet20")) == (3, 32, 32)
    assert default_input_shape(cifar, bench_spec("mlp", image_size=8)) == (1, 8, 8)


def test_time_interleaved_calls_each_function_warmup_plus_repeats_times() -> None:
    calls = {"a": 0, "b": 0}

    def bump(name: str):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    timings = time_interleaved({"a": bump("a"), "b": bump("b")}, repeats=5, warmup=2)
    assert calls == {"a": 7, "b": 7}
    assert set(timings) == {"a", "b"} and all(t >= 0 for t in timings.values())


@pytest.fixture(scope="module")
def rows() -> list[BenchRow]:
    spec = bench_spec("small_cnn", width=0.5)
    return bench_model(spec, [0.5, 0.9], [1, 3], repeats=2, warmup=1, threads=1)


def test_bench_rows_hold_the_issue_keys_and_consistent_numbers(rows: list[BenchRow]) -> None:
    assert [(r.sparsity, r.batch) for r in rows] == [(0.5, 1), (0.5, 3), (0.9, 1), (0.9, 3)]
    for row in rows:
        data = row.to_dict()
        assert set(data) >= JSON_KEYS
        assert row.speedup == pytest.approx(row.dense_ms / row.sparse_ms)
        assert row.sparse_per_s == pytest.approx(1e3 * row.batch / row.sparse_ms)
        assert row.max_rel_error < 1e-5
        assert row.ideal_speedup > 1.0
        assert row.density == pytest.approx(1 - row.sparsity, abs=0.01)
        assert {layer["kind"] for layer in row.layers} == {"conv2d", "linear"}
        assert all(layer["input"][0] == row.batch for layer in row.layers)
    assert rows[2].ideal_speedup > rows[0].ideal_speedup
    assert rows[2].sparse_bytes < rows[0].sparse_bytes < rows[0].dense_bytes


def test_shape_summary_groups_layers_by_shape_and_input(rows: list[BenchRow]) -> None:
    summary = shape_summary(rows)
    first = [s for s in summary if s.sparsity == 0.5 and s.batch == 1]
    assert sum(s.layers for s in first) == len(rows[0].layers)
    convs = [s for s in first if s.kind == "conv2d"]
    assert {s.input for s in convs} == {"32×32", "16×16", "8×8"}
    for item in summary:
        assert 0 <= item.chosen_sparse <= item.layers
        assert item.kernel_speedup > 0


def test_bench_model_puts_the_thread_count_back() -> None:
    before = torch.get_num_threads()
    bench_model(bench_spec("mlp", width=0.05, image_size=4), [0.5], [2], repeats=1, warmup=0, threads=2)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("sparsities", "batches", "match"),
    [([1.0], [1], "sparsity"), ([], [1], "sparsity"), ([0.5], [0], "batch"), ([0.5], ["a"], "batch")],
)
def test_bad_bench_arguments_are_config_errors(sparsities: list, batches: list, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        bench_model(bench_spec("mlp", width=0.05, image_size=4), sparsities, batches)


def test_bench_layer_masks_each_masked_gradient_once_and_shares_no_leaves(monkeypatch) -> None:
    """One masking hook on the masked layer's own weight: a hook per call would pile up over the
    repeats, and a weight shared by the candidates would slow them all (SparseProp's layer aside)."""
    from randsparse.accel import train_bench

    calls = []
    real = train_bench.without_pruned
    monkeypatch.setattr(train_bench, "without_pruned", lambda g, m: calls.append(1) or real(g, m))
    monkeypatch.setattr(train_bench, "sparseprop_module", lambda: None)
    row = train_bench.bench_layer(train_bench.LayerShape("linear", 16, 8, 4), 0.5, repeats=3, warmup=1)
    assert len(calls) == 4  # warm-up + repeats of the masked candidate only
    assert row.sparseprop_ms is None and row.sparse_ms > 0
