"""The tiny `vit`: its size and width, timm's initialisation, what is prunable, images its patches do not tile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from randsparse.models import ModelSpec, build
from randsparse.sparsity import prunable_shapes


def test_width_scales_the_embedding_and_depth_counts_blocks() -> None:
    narrow, wide = build("vit", 10, 1, image_size=28, width=0.5), build("vit", 10, 1, image_size=28, width=2.0, depth=2)
    assert narrow.head.in_features == 32 and wide.head.in_features == 128 and len(wide.blocks) == 2
    assert ModelSpec("vit", 10, 1, {"image_size": 28, "width": 2.0}).architecture() == {
        "family": "vit",
        "depth": 4,
        "width": 2.0,
    }
    assert sum(p.numel() for p in build("vit", 10, 1, image_size=28).parameters()) == 139_018


def test_starts_as_timm_initialises_a_vision_transformer() -> None:
    torch.manual_seed(0)
    model = build("vit", 10, 3, image_size=32, width=2.0)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.1)
            assert torch.count_nonzero(module.bias) == 0
        if isinstance(module, nn.MultiheadAttention):
            assert module.in_proj_weight.std().item() == pytest.approx(0.02, rel=0.1)
            assert torch.count_nonzero(module.in_proj_bias) == 0
        if isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight.detach(), torch.ones_like(module.weight))
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.cls_token.abs().max() < 1e-4


def test_attention_and_mlp_are_prunable_tokens_and_norms_are_not() -> None:
    shapes = prunable_shapes(build("vit", 10, 1, image_size=28, depth=1))
    assert list(shapes) == [
        "patch_embed.weight",
        "blocks.0.attn.in_proj_weight",
        "blocks.0.attn.out_proj.weight",
        "blocks.0.mlp.0.weight",
        "blocks.0.mlp.3.weight",
        "head.weight",
    ]
    assert shapes["blocks.0.attn.in_proj_weight"].geometry.blocks == 3


def test_an_image_the_patches_do_not_tile_is_zero_padded() -> None:
    model = build("vit", 10, 1, image_size=30, patch_size=4)
    assert model.pos_embed.shape[1] == 8 * 8 + 1
    assert model(torch.zeros(2, 1, 30, 30)).shape == (2, 10)
