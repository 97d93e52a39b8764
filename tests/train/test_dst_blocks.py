"""Dynamic sparse training of a model with attention keeps q, k and v at their planned counts after every update."""

from __future__ import annotations

import pytest

from randsparse.sparsity.methods.topology import block_counts
from randsparse.train import fit
from randsparse.train.dynamic import SparseTraining
from tests.train._runs import tiny_config

# A one-block ViT (dim 16, 4 heads) on the tiny synthetic task: 7 steps, masks moved after 2, 4, 6.
VIT = {"name": "vit", "width": 0.25, "depth": 1, "options": {"patch_size": 4}}


@pytest.mark.parametrize(
    ("method", "options"),
    [("rigl", "{update_every: 2, end_fraction: 1.0, drop_fraction: 0.5}"), ("gmp", "{update_every: 2}")],
)
def test_attention_projections_keep_their_counts_through_training(tmp_path, monkeypatch, method, options):
    seen: list[dict[str, list[int]]] = []
    planned: dict[str, list[int]] = {}
    plan_totals: dict[str, int] = {}
    update = SparseTraining._update

    def update_then_count(self, step):
        if not planned:
            planned.update({n: block_counts(self.handle.masks[n], b) for n, b in self.method.blocks.items() if b > 1})
        plan_totals.update(self.method.plan_counts)
        update(self, step)
        seen.append({name: block_counts(self.handle.masks[name], 3) for name in planned})
        targets = self.method.target_counts(step)
        assert all(sum(seen[-1][name]) == targets[name] for name in planned)

    monkeypatch.setattr(SparseTraining, "_update", update_then_count)
    config = tiny_config("epochs=1", f"sparsity.method={method}", f"sparsity.method_options={options}", model=VIT)
    fit(config, tmp_path / "run")
    assert list(planned) == ["blocks.0.attn.in_proj_weight"]
    assert len(seen) >= 3
    for counts in seen:
        q, k, v = counts["blocks.0.attn.in_proj_weight"]
        assert q == k == v  # the plan draws every projection at the same density
    if method == "rigl":  # the masks at the first update are the plan's
        assert all(counts == planned for counts in seen)
    else:  # GMP starts dense and ends every projection at the plan's count (a third of the layer's)
        assert planned == {name: [16 * 16] * 3 for name in planned}
        assert seen[-1] == {name: [plan_totals[name] // 3] * 3 for name in planned}
