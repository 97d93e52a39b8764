"""Export and load: round trips equal to the masked model for every model family, sizes, and bad files."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from randsparse.accel import SparseConv2d, SparseLinear, sparse_modules
from randsparse.accel.bench import bench_spec, build_seeded, relative_error, state_dict_bytes
from randsparse.accel.export import FORMAT, export_bytes, export_model, load, to_sparse
from randsparse.errors import ConfigError, FileFormatError, MaskMismatchError
from randsparse.models import available_models, build, model_options
from randsparse.sparsity import plan_sparsity
from randsparse.sparsity.masks import MaskSet

TOLERANCE = 1e-5


def _small_spec(name: str) -> dict:
    options = model_options(name)
    extra = {}
    if "width" in options:
        extra["width"] = 0.25
    if "image_size" in options:
        extra["image_size"] = 8
    return bench_spec(name, **extra)


def _families() -> list[str]:
    """The cheapest registered model of each architecture class (e.g. resnet20 for CifarResNet)."""
    cheapest: dict[type, tuple[int, str]] = {}
    for name in available_models():
        spec = _small_spec(name)
        with torch.device("meta"):
            model = build(spec["name"], num_classes=10, in_channels=spec["in_channels"], **spec["options"])
        size = sum(p.numel() for p in model.parameters())
        if type(model) not in cheapest or size < cheapest[type(model)][0]:
            cheapest[type(model)] = (size, name)
    return sorted(name for _, name in cheapest.values())


def _masked_model(name: str, sparsity: float) -> tuple[nn.Module, MaskSet, dict]:
    spec = _small_spec(name)
    model = build_seeded(spec, seed=0)
    plan = plan_sparsity(model, sparsity, "erk", seed=0)
    plan.masks.apply_(model)
    return model, plan.masks, spec


def _input(spec: dict, batch: int = 2) -> torch.Tensor:
    size = spec["options"].get("image_size", 32)
    return torch.randn(batch, spec["in_channels"], size, size, generator=torch.Generator().manual_seed(1))


def test_every_architecture_class_has_a_family_member() -> None:
    families = _families()
    assert "mlp" in families and "resnet18" in families
    assert len(families) >= 4


@pytest.mark.parametrize("name", _families())
@pytest.mark.parametrize("sparsity", [0.5, 0.95])
def test_loaded_model_equals_masked_model_for_every_family(name: str, sparsity: float) -> None:
    model, masks, spec = _masked_model(name, sparsity)
    loaded = load(export_bytes(model, masks, spec), mode="sparse")
    assert not loaded.training
    x = _input(spec)
    with torch.no_grad():
        assert relative_error(loaded(x), model(x)) < TOLERANCE
    converted = {name for name, _ in sparse_modules(loaded)}
    assert converted, "at least one layer runs sparse"
    for module_name, module in sparse_modules(loaded):
        assert module.nnz == int(masks[f"{module_name}.weight"].sum())


def test_export_writes_a_file_that_load_reads(tmp_path) -> None:
    model, masks, spec = _masked_model("resnet20", 0.9)
    path = tmp_path / "out" / "model.rsp"
    summary = export_model(model, masks, spec, path)
    assert path.is_file() and summary.bytes == path.stat().st_size
    assert [layer.name for layer in summary.layers] == list(masks)
    assert all(layer.kept == int(masks[layer.name].sum()) for layer in summary.layers)
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file
    loaded = load(path)
    x = _input(spec)
    with torch.no_grad():
        assert relative_error(loaded(x), model(x)) < TOLERANCE


@pytest.mark.parametrize("encoding", ["csr", "bitmap", "delta", "auto"])
def test_every_encoding_loads_back_the_same_model(encoding: str) -> None:
    model, masks, spec = _masked_model("small_cnn", 0.8)
    loaded = load(export_bytes(model, masks, spec, encoding=encoding), mode="sparse")
    x = _input(spec)
    with torch.no_grad():
        assert relative_error(loaded(x), model(x)) < TOLERANCE


def test_checkpoint_size_follows_density() -> None:
    spec = bench_spec("resnet20", width=1.0)
    model = build_seeded(spec, seed=0)
    masks = plan_sparsity(model, 0.95, "erk", seed=0).masks
    masks.apply_(model)
    dense = state_dict_bytes(model)
    sparse = len(export_bytes(copy.deepcopy(model), masks, spec))
    kept_values = 4 * masks.num_kept()
    assert sparse < 0.15 * dense
    assert sparse > kept_values  # values are never rounded away


def test_a_kept_weight_that_is_zero_stays_kept() -> None:
    model, masks, spec = _masked_model("mlp", 0.5)
    name = next(iter(masks))
    kept = masks[name].nonzero()[0].tolist()
    with torch.no_grad():
        model.get_parameter(name)[tuple(kept)] = 0.0
    loaded = load(export_bytes(model, masks, spec), mode="sparse")
    module = loaded.get_submodule(name.rpartition(".")[0])
    assert module.nnz == int(masks[name].sum())


def test_spec_of_another_architecture_is_refused() -> None:
    model, masks, spec = _masked_model("resnet20", 0.5)
    with pytest.raises(ConfigError, match="model_spec"):
        export_bytes(model, masks, {**spec, "options": {"width": 0.5}})
    with pytest.raises(ConfigError, match="unknown key"):
        export_bytes(model, masks, {**spec, "depth": 3})


def test_masks_that_do_not_fit_are_refused() -> None:
    model, _masks, spec = _masked_model("resnet20", 0.5)
    wrong = MaskSet({"fc.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(MaskMismatchError):
        export_bytes(model, wrong, spec)


def _saved(content: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


def _tampered(change) -> bytes:
    model, masks, spec = _masked_model("mlp", 0.9)
    content = torch.load(io.BytesIO(export_bytes(model, masks, spec)), weights_only=True)
    change(content)
    return _saved(content)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a torch file at all",
        _saved({"format": "something-else/v9"}),
        _saved([1, 2, 3]),
        _saved({"format": FORMAT, "model_spec": {"name": "mlp"}, "dense": {}}),
    ],
    ids=["empty", "garbage", "foreign-format", "not-a-dict", "no-sparse-entry"],
)
def test_foreign_or_corrupt_files_raise_file_format_error(tmp_path, data: bytes) -> None:
    path = tmp_path / "bad.rsp"
    path.write_bytes(data)
    with pytest.raises(FileFormatError):
        load(path)


def _first_sparse(content: dict) -> dict:
    return next(iter(content["sparse"].values()))


@pytest.mark.parametrize(
    "change",
    [
        lambda c: _first_sparse(c).update(kept=_first_sparse(c)["kept"] + 1),
        lambda c: _first_sparse(c).update(encoding="zip"),
        lambda c: _first_sparse(c)["payload"].clear(),
        lambda c: _first_sparse(c).update(shape=[3, 3]),
        lambda c: c["dense"].update({"extra.weight": torch.zeros(2)}),
        lambda c: c["dense"].pop(next(iter(c["dense"]))),
        lambda c: c["model_spec"].update(name="no-such-model"),
    ],
    ids=["kept-count", "encoding", "payload", "shape", "extra-entry", "missing-entry", "spec"],
)
def test_tampered_files_raise_file_format_error(change) -> None:
    with pytest.raises(FileFormatError):
        load(_tampered(change))


def test_missing_file_is_a_file_format_error(tmp_path) -> None:
    with pytest.raises(FileFormatError, match="does not exist"):
        load(tmp_path / "nope.rsp")


def test_to_sparse_converts_linear_and_conv2d_and_keeps_other_layers_dense() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 6, 5), nn.ReLU(), nn.Unflatten(1, (5, 1, 1)), nn.Conv2d(5, 3, 1)
    )
    masks = MaskSet({n: torch.rand(p.shape) < 0.5 for n, p in model.named_parameters() if n.endswith("weight")})
    masks.apply_(model)
    sparse = to_sparse(model, masks, mode="sparse")
    assert isinstance(sparse[0], nn.Conv1d)
    assert isinstance(sparse[2], SparseLinear) and isinstance(sparse[5], SparseConv2d)
    x = torch.randn(3, 2, 8)
    with torch.no_grad():
        assert relative_error(sparse(x), model(x)) < TOLERANCE
    assert isinstance(model[2], nn.Linear)  # the original is untouched
