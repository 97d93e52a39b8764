"""Attention layers: nn.MultiheadAttention's projections are prunable, drawn per projection, enforced and counted."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from randsparse.evaluate.complexity import count_flops, count_params
from randsparse.sparsity import PrunableSelector, attach, layer_densities, plan_sparsity, prunable_shapes
from randsparse.sparsity.layer_types import shape_outputs

E = 16


class Encoder(nn.Module):
    """Tokens from an embedding table plus positions, one attention, a norm and a classifier."""

    def __init__(self, kdim: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, E)
        self.pos = nn.Parameter(torch.zeros(1, 5, E))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        self.attn = nn.MultiheadAttention(E, 4, batch_first=True, kdim=kdim, vdim=kdim)
        self.norm = nn.LayerNorm(E)
        self.head = nn.Linear(E, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos
        kv = h if self.attn._qkv_same_embed_dim else h[..., : self.attn.kdim]
        return self.head(self.norm(self.attn(h, kv, kv, need_weights=False)[0]).mean(1))


class FloatEncoder(nn.Module):
    """The same attention on float inputs (N, 5, E), so complexity counting can feed it zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, 4, batch_first=True)
        self.head = nn.Linear(E, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


def test_projections_are_prunable_and_embeddings_tokens_norms_are_not() -> None:
    shapes = prunable_shapes(Encoder())
    assert list(shapes) == ["attn.in_proj_weight", "attn.out_proj.weight", "head.weight"]
    assert shapes["attn.in_proj_weight"] == (3 * E, E)
    assert shapes["attn.in_proj_weight"].geometry.blocks == 3
    assert shape_outputs(shapes["attn.in_proj_weight"]) == 3 * E
    admitted = prunable_shapes(Encoder(), PrunableSelector(embeddings=True))
    assert list(admitted) == ["embed.weight", "attn.in_proj_weight", "attn.out_proj.weight", "head.weight"]


def test_separate_q_k_v_weights_when_kdim_differs() -> None:
    shapes = prunable_shapes(Encoder(kdim=8))
    assert {n: tuple(s) for n, s in shapes.items()} == {
        "attn.q_proj_weight": (E, E),
        "attn.k_proj_weight": (E, 8),
        "attn.v_proj_weight": (E, 8),
        "attn.out_proj.weight": (E, E),
        "head.weight": (3, E),
    }


@pytest.mark.parametrize("rule", ["er", "erk"])
def test_er_and_erk_see_in_proj_as_three_projections(rule) -> None:
    fused = layer_densities(prunable_shapes(Encoder()), 0.2, rule)
    separate = layer_densities({"q": (E, E), "k": (E, E), "v": (E, E), "out": (E, E), "head": (3, E)}, 0.2, rule)
    assert fused["attn.in_proj_weight"] == pytest.approx(separate["q"])
    assert separate["q"] == pytest.approx(separate["k"]) == pytest.approx(separate["v"])
    assert fused["head.weight"] == pytest.approx(separate["head"])
    # Read as one (3E, E) layer, ER would give it a lower density than its projections get.
    single = layer_densities({"qkv": (3 * E, E), "out": (E, E), "head": (3, E)}, 0.2, rule)
    assert single["qkv"] < fused["attn.in_proj_weight"]


def test_each_projection_of_in_proj_keeps_its_exact_count() -> None:
    plan = plan_sparsity(Encoder(), 0.7, "uniform", seed=3)
    per_block = plan.masks["attn.in_proj_weight"].view(3, E, E).sum(dim=(1, 2))
    assert per_block.tolist() == [round(0.3 * E * E)] * 3


def test_pruned_projections_stay_zero_through_training_steps() -> None:
    torch.manual_seed(0)
    model = Encoder()
    plan = plan_sparsity(model, 0.8, "erk", seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    attach(model, plan.masks, optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randint(0, 40, (8, 5))).logsumexp(1).sum().backward()
        optimizer.step()
    for name in ("attn.in_proj_weight", "attn.out_proj.weight"):
        weight, mask = model.get_parameter(name), plan.masks[name]
        assert bool((weight[~mask] == 0).all()) and bool((weight[mask] != 0).any())


def test_projections_are_counted_in_params_and_macs() -> None:
    model = FloatEncoder()
    plan = plan_sparsity(model, 0.75, "uniform", seed=0)
    flops = {row.name: row for row in count_flops(model, (5, E), plan.masks).layers}
    assert flops["attn.in_proj_weight"].dense_macs == 5 * 3 * E * E
    assert flops["attn.in_proj_weight"].sparse_macs == 5 * 3 * E * E // 4
    assert flops["attn.out_proj.weight"].dense_macs == 5 * E * E
    assert flops["attn.out_proj.weight"].sparse_macs == 5 * E * E // 4
    counts = count_params(model, plan.masks)
    assert counts.prunable == 3 * E * E + E * E + 3 * E
    assert counts.kept == plan.kept


def test_timm_style_fused_qkv_linear_reads_as_three_projections() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(E, 3 * E)
            self.proj = nn.Linear(E, E)

    shapes = prunable_shapes(nn.Sequential(Attention()))
    assert shapes["0.qkv.weight"].geometry.blocks == 3
    assert shapes["0.qkv.weight"].geometry.layout == (E, E)
    assert math.prod(shapes["0.qkv.weight"]) == 3 * E * E


@pytest.mark.parametrize("rule", ["snip_ratio", "grasp_ratio", "synflow_ratio"])
def test_score_rules_score_attention_projections(rule) -> None:
    """GraSP's double backward through attention needs the math kernel (the fused one has none)."""
    from randsparse.data import build as build_data
    from randsparse.models import build

    model = build("vit", 10, 1, image_size=8, depth=1, width=0.25)
    data = build_data("synthetic", channels=1, image_size=8, train_size=40, test_size=10)
    plan = plan_sparsity(model, 0.9, rule, seed=0, data=data, input_shape=(1, 8, 8))
    densities = {layer.name: layer.density for layer in plan.layers}
    assert 0 < densities["blocks.0.attn.in_proj_weight"] < 1
    assert plan.kept == pytest.approx(0.1 * plan.params, abs=2)
