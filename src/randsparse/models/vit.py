"""`vit`: a small Vision Transformer for 28–32 pixel images, with a width multiplier and a depth knob.

The architecture of Dosovitskiy et al. (ICLR 2021) with pre-norm blocks: a ``patch_size``-strided
conv cuts the image into patches, a class token and learned positional embeddings join them,
``depth`` blocks of (LayerNorm → `nn.MultiheadAttention` → residual, LayerNorm → MLP (GELU) →
residual) follow, and the class token's final LayerNorm feeds a Linear classifier. The attention is
PyTorch's `nn.MultiheadAttention`, so its ``in_proj_weight`` (q, k, v) and ``out_proj.weight`` are
prunable like any Linear (see `randsparse.sparsity.layers`); tokens, embeddings and norms are not.

Width: the embedding dimension is ``64 × width`` rounded to a multiple of ``heads`` (at least one
per head); the MLP has ``mlp_ratio ×`` that many hidden units. Initialisation follows timm's
``VisionTransformer`` default: Linear weights (and the attention's q/k/v) truncated-normal with
std 0.02 and zero biases, positional embeddings truncated-normal 0.02, the class token N(0, 1e-6),
the patch conv at PyTorch's default, LayerNorms 1 and 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from randsparse.errors import ConfigError, is_integer, is_real
from randsparse.models.registry import register_model, scaled_channels

BASE_DIM = 64


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x)); tokens (N, T, dim)."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, class token, positional embedding, `depth` blocks, classifier on the class token.

    Input (N, in_channels, image_size, image_size) float, zero-padded to a multiple of the patch
    if needed; output (N, num_classes) logits.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
    ) -> None:
        super().__init__()
        grid = -(-image_size // patch_size)  # ceil: an image that patches do not tile is zero-padded
        self.pad = grid * patch_size - image_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, max(1, round(dim * mlp_ratio)), dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.trunc_normal_(module.in_proj_weight, std=0.02)
                nn.init.zeros_(module.in_proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (0, self.pad, 0, self.pad))
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, grid², dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


@register_model("vit", family="vit")
def vit(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    patch_size: int = 4,
    width: float = 1.0,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
) -> nn.Module:
    """Small ViT: embedding dim 64 × `width` (a multiple of `heads`), `depth` blocks, `patch_size` patches.

    `image_size` (filled in from the data) is best a multiple of `patch_size` (28 and 32 take 4);
    otherwise images are zero-padded on the right and bottom to the next multiple. Raises
    `ConfigError` for a non-positive depth, heads, patch or image size.
    """
    for name, value in (("depth", depth), ("heads", heads), ("patch_size", patch_size), ("image_size", image_size)):
        if not is_integer(value) or value < 1:
            raise ConfigError(f"vit: {name} must be a positive integer, got {value!r}")
    if not is_real(mlp_ratio) or mlp_ratio <= 0 or not is_real(dropout) or not 0 <= dropout < 1:
        raise ConfigError(f"vit: mlp_ratio must be > 0 and dropout in [0, 1), got {mlp_ratio!r}, {dropout!r}")
    dim = max(heads, round(scaled_channels(BASE_DIM, width) / heads) * heads)
    return ViT(num_classes, in_channels, image_size, patch_size, dim, depth, heads, mlp_ratio, dropout)
