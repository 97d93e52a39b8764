"""Moving methods (SET, RigL, GMP) keep the count of each projection of a fused q/k/v weight."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from randsparse.sparsity.layers import prunable_shapes, weight_geometry
from randsparse.sparsity.methods import GMP, SET, LotteryTicket, RigL
from randsparse.sparsity.methods.lth import layerwise_magnitude_masks
from randsparse.sparsity.methods.topology import block_counts, drop_and_grow, split_blocks

E = 4
NAME = "attn.in_proj_weight"


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, 2, batch_first=True)


def _setup() -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """An (3E, E) in_proj_weight with half of each block active; q's active weights are the smallest.

    A per-layer drop would take every active q weight first; the dense gradient is largest on k's
    inactive positions, so a per-layer RigL growth would put them all in k.
    """
    model = Attention()
    rows = torch.arange(3 * E)
    mask = ((torch.arange(E * E).reshape(E, E) % 2) == 0).repeat(3, 1)  # 8 of 16 in every block
    weight = torch.arange(1, 3 * E * E + 1, dtype=torch.float32).reshape(3 * E, E) / 10
    weight[rows < E] /= 1000  # q: the smallest magnitudes of the layer
    grad = torch.full((3 * E, E), 0.01)
    grad[(rows >= E) & (rows < 2 * E)] = 5.0  # k: the largest gradients
    with torch.no_grad():
        model.attn.in_proj_weight.copy_(weight * mask)
    return model, {NAME: mask}, {NAME: weight * mask}, {NAME: grad}


def _blocks(model: nn.Module, masks) -> dict[str, int]:
    return {name: weight_geometry(model, name).blocks for name in masks}


def test_in_proj_weight_reads_as_three_blocks_and_splits_into_q_k_v() -> None:
    model, masks, _, _ = _setup()
    assert _blocks(model, masks) == {NAME: 3}
    assert prunable_shapes(model)[NAME].geometry == weight_geometry(model, NAME)  # one home for both
    q, _, v = split_blocks(torch.arange(3 * E * E).reshape(3 * E, E), 3)
    assert q.tolist() == list(range(E * E)) and v[0] == 2 * E * E
    with pytest.raises(ValueError, match="3 blocks"):
        split_blocks(torch.zeros(4, 2), 3)


@pytest.mark.parametrize("method", [SET, RigL])
def test_set_and_rigl_keep_each_projection_count(method) -> None:
    model, masks, weights, grads = _setup()
    dst = method(total_steps=10, update_every=1, drop_fraction=0.5, end_fraction=1.0)
    dst.blocks = _blocks(model, masks)
    current = dst.start(masks, weights)
    for step in range(1, 4):
        new = dst.update(step, weights, current, grads, torch.Generator().manual_seed(step))
        assert block_counts(new[NAME], 3) == [8, 8, 8]
        assert int(new[NAME].sum()) == dst.target_counts(step)[NAME] == 24
        if step == 1:
            assert not torch.equal(new[NAME], current[NAME])  # the mask did move, within each block
        current = new


def test_rigl_drops_and_grows_within_each_block() -> None:
    model, masks, weights, grads = _setup()
    dst = RigL(total_steps=10, update_every=1, drop_fraction=0.5, end_fraction=1.0)
    dst.blocks = _blocks(model, masks)
    new = dst.update(1, weights, dst.start(masks, weights), grads, torch.Generator())
    fraction = dst.drop_fraction_at(1)
    for b, (old, now) in enumerate(zip(split_blocks(masks[NAME], 3), split_blocks(new[NAME], 3), strict=True)):
        moved = round(fraction * 8)
        assert int((old & ~now).sum()) <= moved, b
        # The lowest-magnitude active weights of the block are gone unless regrown by gradient.
        expected = drop_and_grow(old, split_blocks(weights[NAME], 3)[b], split_blocks(grads[NAME], 3)[b], fraction)
        assert torch.equal(now, expected)


def test_gmp_keeps_each_projection_on_its_own_schedule() -> None:
    model, masks, weights, _ = _setup()
    gmp = GMP(total_steps=10, update_every=1, begin_fraction=0.0, end_fraction=0.5)
    gmp.blocks = _blocks(model, masks)
    current = gmp.start(masks, weights)
    assert block_counts(current[NAME], 3) == [16, 16, 16]
    for step in range(1, 6):
        current = gmp.update(step, weights, current, None, torch.Generator())
        q, k, v = block_counts(current[NAME], 3)
        assert q == k == v and 3 * q == gmp.target_counts(step)[NAME]
    assert block_counts(current[NAME], 3) == [8, 8, 8]  # each projection ends at its planned density
    # q kept its own largest weights, though all of them are smaller than k's and v's.
    q_weight = split_blocks(weights[NAME].abs(), 3)[0]
    assert bool((q_weight[split_blocks(current[NAME], 3)[0]] > 0).all())


def test_gmp_initial_sparsity_prunes_each_block() -> None:
    model, masks, weights, _ = _setup()
    gmp = GMP(total_steps=10, update_every=1, end_fraction=0.5, initial_sparsity=0.25)
    gmp.blocks = _blocks(model, masks)
    assert block_counts(gmp.start(masks, weights)[NAME], 3) == [12, 12, 12]


def test_lth_layerwise_pruning_keeps_each_projection_density() -> None:
    model, masks, weights, _ = _setup()
    lth = LotteryTicket(10, scope="layerwise")
    lth.blocks = _blocks(model, masks)
    new = lth.next_masks(weights, masks, 0.75, {NAME: 0.25})
    assert block_counts(new[NAME], 3) == [4, 4, 4]  # not q's 0 of a per-layer magnitude cut
    assert bool((new[NAME] <= masks[NAME]).all())  # pruning never revives a weight
    per_layer = layerwise_magnitude_masks(weights, masks, {NAME: 0.25})  # one block: the layer's count
    assert block_counts(per_layer[NAME], 3) == [0, 4, 8]
