"""The Lightning callback: masks drawn at fit start, held under Lightning's optimizers and AMP, saved, resumed."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch", reason="Lightning is an optional extra: randsparse[lightning]")

from randsparse.integrations import lightning as integration  # noqa: E402
from randsparse.integrations.lightning import RandomPruning  # noqa: E402
from randsparse.sparsity import MaskSet  # noqa: E402


class TinyModule(pl.LightningModule):
    """A small conv net on 1x8x8 inputs, trained with Adam (state shaped like the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 32),
            nn.ReLU(), nn.Linear(32, 4),
        )  # fmt: skip

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2, weight_decay=1e-3)


def _loader() -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8, generator=generator), torch.arange(64) % 4)
    return torch.utils.data.DataLoader(data, batch_size=16)


def _trainer(tmp_path, steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip


def _assert_pruned(module: nn.Module, masks: MaskSet, optimizer: torch.optim.Optimizer | None = None) -> None:
    params = dict(module.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name].detach()[~mask] == 0), name
        if optimizer is not None:
            for value in optimizer.state[params[name]].values():
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    assert torch.all(value[~mask] == 0), name


def test_the_callback_trains_sparse_checkpoints_and_resumes_with_its_masks(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    module, callback = TinyModule(), RandomPruning(sparsity=0.8, distribution="erk", seed=1)
    trainer = _trainer(tmp_path, 3, callbacks=[callback])
    trainer.fit(module, _loader())
    masks = callback.masks
    assert masks is not None and set(masks) == {"model.0.weight", "model.4.weight", "model.6.weight"}
    assert abs(masks.density() - 0.2) < 0.01
    _assert_pruned(module, masks, trainer.optimizers[0])
    assert any(p.grad is not None and torch.any(p.grad != 0) for p in module.parameters())

    trainer.save_checkpoint(tmp_path / "a.ckpt")
    checkpoint = torch.load(tmp_path / "a.ckpt", weights_only=False)
    saved = MaskSet.from_state_dict(checkpoint["callbacks"][callback.state_key]["masks"])
    assert saved.equal(masks)
    plain = TinyModule()  # the checkpoint's weights are already pruned: a plain module loads them
    plain.load_state_dict(checkpoint["state_dict"])
    _assert_pruned(plain, masks)

    # Resume into a fresh module (other initial weights) under bf16 autocast: the masks come from the
    # checkpoint, not from a new draw.
    def no_draw(*args, **kwargs):
        raise AssertionError("a resumed fit must not draw new masks")

    monkeypatch.setattr(integration, "plan_sparsity", no_draw)
    torch.manual_seed(1)
    resumed, again = TinyModule(), RandomPruning(sparsity=0.8, distribution="erk", seed=1)
    trainer = _trainer(tmp_path, 7, callbacks=[again], precision="bf16-mixed")
    trainer.fit(resumed, _loader(), ckpt_path=tmp_path / "a.ckpt")
    assert trainer.global_step == 7
    assert again.masks is not None and again.masks.equal(masks)
    _assert_pruned(resumed, masks, trainer.optimizers[0])
    changed = dict(resumed.named_parameters())["model.6.weight"].detach()
    assert not torch.equal(changed, checkpoint["state_dict"]["model.6.weight"]), "training went on"


def test_sparsity_zero_leaves_the_module_dense(tmp_path) -> None:
    module, callback = TinyModule(), RandomPruning(sparsity=0.0)
    _trainer(tmp_path, 1, callbacks=[callback]).fit(module, _loader())
    assert callback.masks is None and callback.state_dict() == {}


def test_bad_arguments_fail_when_the_callback_is_made() -> None:
    from randsparse.errors import ConfigError, UnknownNameError

    with pytest.raises(UnknownNameError, match="erk"):
        RandomPruning(distribution="nope")
    with pytest.raises(ConfigError, match="sparsity must be in"):
        RandomPruning(sparsity=1.0)
    with pytest.raises(ConfigError, match="unknown sampling"):
        RandomPruning(sampling="nope")


def test_without_lightning_the_import_is_one_line_naming_the_extra(monkeypatch) -> None:
    for name in [n for n in sys.modules if n == "lightning" or n.startswith("lightning.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "randsparse.integrations.lightning")
    with pytest.raises(ImportError) as caught:
        importlib.import_module("randsparse.integrations.lightning")
    assert str(caught.value) == "randsparse.integrations.lightning needs Lightning: pip install 'randsparse[lightning]'"
