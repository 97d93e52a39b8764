"""``torchvision/<name>`` and ``timm/<name>``: random init, fitted to the data, through plan, train, resume, export."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
import torch
import yaml

from randsparse.accel import load
from randsparse.errors import MissingExtraError, UnknownNameError
from randsparse.models import ModelSpec, build
from randsparse.sparsity import plan_sparsity, prunable_shapes
from randsparse.train import RunDir, fit, load_run
from randsparse.train import loop as train_loop
from randsparse.train.checkpoint import load_checkpoint
from randsparse.train.signals import Interrupted
from tests._cli import run as cli
from tests.train._runs import tiny_config

timm = pytest.importorskip("timm")


def test_unknown_torchvision_and_timm_names_list_close_matches_in_one_line() -> None:
    with pytest.raises(UnknownNameError) as caught:
        build("torchvision/mobilenet_v3_smal")
    message = str(caught.value)
    assert "torchvision/mobilenet_v3_small" in message and "randsparse models --source torchvision" in message
    assert "\n" not in message
    with pytest.raises(UnknownNameError, match="timm/vit_tiny_patch16_224"):
        build("timm/vit_tiny_patch16_22")


def test_missing_timm_is_one_line_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(MissingExtraError, match=r"install randsparse\[timm\]"):
        build("timm/deit_tiny_patch16_224")


def test_weights_are_never_downloaded() -> None:
    with pytest.raises(Exception, match="never downloaded"):
        build("torchvision/resnet18", weights="DEFAULT")
    with pytest.raises(Exception, match="never downloaded"):
        build("timm/resnet18", pretrained=True)


@pytest.mark.parametrize(
    "name", ["alexnet", "vgg11", "densenet121", "inception_v3", "regnet_x_400mf", "swin_t", "vit_b_16"]
)
def test_torchvision_models_take_one_channel_28_pixel_images(name) -> None:
    """The stem takes 1 channel, and models declaring a larger minimum (or fixed) size resize to it."""
    model = ModelSpec(f"torchvision/{name}", 10, 1, {"image_size": 28}).build("meta").eval()
    with torch.device("meta"):
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "name", ["deit_tiny_patch16_224", "convnext_atto", "mobilenetv3_small_100", "efficientnet_b0", "resnet18"]
)
def test_timm_models_take_one_channel_28_pixel_images(name) -> None:
    """ConvNeXt's last 2×2 downsampling needs 32 pixels: models resize inputs below their total stride."""
    model = ModelSpec(f"timm/{name}", 10, 1, {"image_size": 28}).build("meta").eval()
    with torch.device("meta"):
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_torchvision_vit_is_built_small_with_prunable_attention() -> None:
    model = ModelSpec("torchvision/vit_b_16", 10, 1, {"image_size": 28}).build("meta")
    assert model.image_size == 32  # 28 rounded up to the patch: 2 × 2 patches, not 224²
    shapes = prunable_shapes(model)
    attention = [name for name in shapes if name.endswith("in_proj_weight")]
    assert len(attention) == 12 and all(shapes[n].geometry.blocks == 3 for n in attention)
    assert "class_token" not in shapes and "encoder.pos_embedding" not in shapes


def test_stem_of_a_torchvision_model_is_adapted_from_its_rgb_filters() -> None:
    torch.manual_seed(0)
    rgb = build("torchvision/mobilenet_v3_small", in_channels=3)
    torch.manual_seed(0)
    grey = build("torchvision/mobilenet_v3_small", in_channels=1)
    assert grey.features[0][0].in_channels == 1
    assert torch.allclose(grey.features[0][0].weight, rgb.features[0][0].weight.sum(1, keepdim=True))
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(grey.eval()(x), rgb.eval()(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_timm_vit_takes_the_small_input_its_options_allow() -> None:
    spec = ModelSpec("timm/vit_tiny_patch16_224", 10, 1, {"image_size": 28, "patch_size": 4, "depth": 1})
    model = spec.build()
    assert tuple(model.patch_embed.img_size) == (28, 28)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    resized = ModelSpec("timm/vit_tiny_patch16_224", 10, 1, {"image_size": 28, "depth": 1}).build()
    assert tuple(resized.patch_embed.img_size) == (32, 32)  # 28 rounded up to 16-pixel patches
    assert resized(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


# One batch of 32 per epoch, three epochs: a stop asked at the end of the first epoch is honoured
# after the next step, so two steps are trained, then the resumed run trains the third.
_MODELS = {
    "torchvision": ("torchvision/mobilenet_v3_small", {}),
    "timm_vit": ("timm/vit_tiny_patch16_224", {"patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}),
}


@pytest.mark.integration
@pytest.mark.parametrize("kind", sorted(_MODELS))
def test_plan_train_two_steps_resume_and_export_hold_the_masks(kind, tmp_path, monkeypatch, capsys) -> None:
    name, options = _MODELS[kind]
    plan = ["plan", "--model", name, "--in-channels", "1", "--sparsity", "0.9", "--format", "json"]
    code, out, err = cli(plan, capsys)
    assert code == 0, err
    layers = [layer["name"] for layer in json.loads(out)["layers"]]
    if kind == "timm_vit":
        assert "blocks.0.attn.qkv.weight" in layers and "pos_embed" not in layers
    config = tiny_config(
        "epochs=3",
        "sparsity=0.9",
        "eval=false",
        "data.batch_size=32",
        "data.val_fraction=0.2",
        "data.options={num_classes: 10, channels: 1, image_size: 16, train_size: 40, test_size: 32}",
        "optim.name=adamw",
        "optim.lr=0.01",
        model={"name": name, "options": options},
    )
    original = train_loop._finish_epoch

    def stop_after_the_first_step(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_loop, "_finish_epoch", stop_after_the_first_step)
    with pytest.raises(Interrupted):
        fit(config, tmp_path / "run")
    monkeypatch.undo()
    checkpoint = RunDir(tmp_path / "run").last_checkpoint
    assert load_checkpoint(checkpoint)["progress"]["global_step"] == 2
    assert fit(config, tmp_path / "run", resume=True)["status"] == "completed"
    assert load_checkpoint(checkpoint)["progress"]["global_step"] == 3

    loaded = load_run(tmp_path / "run", "last")
    spec = ModelSpec.from_config(config.model, loaded.info)
    planned = plan_sparsity(spec.build("meta"), 0.9, "erk", seed=config.seed).masks
    assert loaded.masks is not None and loaded.masks.equal(planned)  # the draw at init, held to the end
    for weight_name, mask in loaded.masks.items():
        assert bool((loaded.model.get_parameter(weight_name)[~mask] == 0).all())
    code, _, err = cli(["export", str(tmp_path / "run"), "--which", "last", "--out", str(tmp_path / "m.rsp")], capsys)
    assert code == 0, err
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(load(tmp_path / "m.rsp")(x), loaded.model(x), rtol=1e-4, atol=1e-5)
    assert yaml.safe_load((tmp_path / "run/config.yaml").read_text())["model"]["name"] == name
