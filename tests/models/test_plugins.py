"""Models and datasets of the user's own: import paths (``pkg.mod:build``) and entry points, through every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from randsparse.accel import load
from randsparse.data import build as build_dataset
from randsparse.data import dataset_info
from randsparse.errors import PluginError, UnknownNameError
from randsparse.models import ModelSpec, available_models, build
from randsparse.train import load_run
from tests._cli import run as cli

# A plugin module: a model builder and a dataset factory (three classes of bright/dark 8×8 blobs).
PLUGIN = textwrap.dedent(
    '''
    import torch
    from torch import nn

    from randsparse.data import DatasetInfo, Recipe
    from randsparse.data.registry import ImageTensor


    def build_net(num_classes, in_channels, hidden=8):
        """A conv, pooling and a classifier."""
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(4 * hidden, num_classes),
        )


    def build_dataset(train_size=96, test_size=48, image_size=8):
        """Blobs: three classes told apart by brightness."""
        info = DatasetInfo("blobs", 3, 1, image_size, (0.5,), (0.3,), train_size, test_size)

        def read(directory, split):
            n = train_size if split == "train" else test_size
            generator = torch.Generator().manual_seed(0 if split == "train" else 1)
            labels = torch.arange(n) % 3
            noise = torch.rand(n, 1, image_size, image_size, generator=generator) * 60
            return ImageTensor((noise + labels.view(-1, 1, 1, 1) * 90).to(torch.uint8), labels)

        return Recipe(info, read)


    NOT_A_BUILDER = 3


    def not_a_module(num_classes, in_channels):
        return num_classes
    '''
)


def _write_plugin(root: Path, module: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(PLUGIN)
    return root


def _install_distribution(root: Path, module: str) -> None:
    """A package installed the way pip leaves it: a ``*.dist-info`` with METADATA and entry_points.txt."""
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[randsparse.models]\n{module}_net = {module}:build_net\n\n"
        f"[randsparse.data]\n{module}_blobs = {module}:build_dataset\n"
    )


def _config(model: str, dataset: str) -> dict:
    return {
        "model": {"name": model, "options": {"hidden": 6}},
        "data": {"name": dataset, "batch_size": 32, "val_fraction": 0.25},
        "sparsity": {"sparsity": 0.5, "distribution": "erk"},
        "optim": {"name": "sgd", "lr": 0.05},
        "epochs": 1,
        "seed": 0,
        "device": "cpu",
        "eval": False,
    }


def test_import_path_model_and_dataset_build_and_their_failures_are_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(_write_plugin(tmp_path, "rsplug_unit")))
    spec = ModelSpec.from_config({"name": "rsplug_unit:build_net"}, dataset_info("rsplug_unit:build_dataset"))
    model = spec.build(seed=0)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert spec.architecture()["family"] == "rsplug_unit:build_net"
    data = build_dataset("rsplug_unit:build_dataset", split="val", val_fraction=0.25)
    assert len(data) == 24 and data.info.num_classes == 3
    with pytest.raises(PluginError, match=r"'nowhere_pkg:build'.*No module named 'nowhere_pkg'"):
        build("nowhere_pkg:build")
    with pytest.raises(PluginError, match="no attribute 'missing'"):
        build("rsplug_unit:missing")
    with pytest.raises(PluginError, match="not a builder"):
        build("rsplug_unit:NOT_A_BUILDER")
    with pytest.raises(PluginError, match="does not take num_classes and in_channels"):
        build("rsplug_unit:build_dataset")
    with pytest.raises(PluginError, match=r"not a torch\.nn\.Module"):
        build("rsplug_unit:not_a_module")
    with pytest.raises(UnknownNameError, match="import path"):
        build("no_such_model")


@pytest.mark.integration
@pytest.mark.parametrize("form", ["import_path", "entry_point"])
def test_plugin_model_and_dataset_run_through_plan_train_eval_export(form, tmp_path, monkeypatch, capsys) -> None:
    module = f"rsplug_{form}"
    root = _write_plugin(tmp_path / "site", module)
    if form == "entry_point":
        _install_distribution(root, module)
        model, dataset = f"{module}_net", f"{module}_blobs"
    else:
        model, dataset = f"{module}:build_net", f"{module}:build_dataset"
    monkeypatch.syspath_prepend(str(root))
    if form == "entry_point":
        assert model in available_models()

    code, out, err = cli(
        ["plan", "--model", model, "--in-channels", "1", "--sparsity", "0.5", "--format", "json"], capsys
    )
    assert code == 0, err
    assert [layer["name"] for layer in json.loads(out)["layers"]] == ["0.weight", "4.weight"]

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(model, dataset)))
    run = tmp_path / "run"
    code, _, err = cli(["train", "--config", str(config), "--out", str(run), "--quiet"], capsys)
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["name"] == model  # the run records it

    code, out, err = cli(["eval", str(run), "--format", "json"], capsys)
    assert code == 0, err
    code, _, err = cli(["export", str(run), "--out", str(tmp_path / "net.rsp")], capsys)
    assert code == 0, err
    loaded = load_run(run, "best")
    assert loaded.masks is not None and loaded.masks.density() == pytest.approx(0.5, abs=0.02)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(load(tmp_path / "net.rsp")(x), loaded.model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_a_run_whose_plugin_is_gone_fails_in_one_line_naming_it(tmp_path, monkeypatch) -> None:
    from randsparse.train import build_config, fit

    root = _write_plugin(tmp_path / "site", "rsplug_gone")
    monkeypatch.syspath_prepend(str(root))
    fit(build_config(_config("rsplug_gone:build_net", "synthetic")), tmp_path / "run")
    (root / "rsplug_gone.py").unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    for command in (("eval", str(tmp_path / "run")), ("export", str(tmp_path / "run"))):
        result = subprocess.run(
            [sys.executable, "-m", "randsparse", *command], capture_output=True, text=True, env=env, timeout=300
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert "'rsplug_gone:build_net' cannot be imported" in result.stderr


def test_plugin_names_give_one_default_run_folder_and_serve_as_ood_sets(tmp_path, monkeypatch) -> None:
    from randsparse.cli.train import _default_out
    from randsparse.evaluate.config import EvalConfig
    from tests.train._runs import tiny_config

    monkeypatch.syspath_prepend(str(_write_plugin(tmp_path, "rsplug_names")))
    for name in ("rsplug_names:build_net", "torchvision/mobilenet_v3_small"):
        out = _default_out(tiny_config(model={"name": name}))
        assert out.parent == Path("runs") and "/" not in out.name and ":" not in out.name
    assert EvalConfig(ood=["rsplug_names:build_dataset"]).ood == ["rsplug_names:build_dataset"]
