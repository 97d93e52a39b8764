"""Moving methods and lottery levels on a model with attention keep q, k and v at their own counts."""

from __future__ import annotations

import pytest

from randsparse.models import build
from randsparse.sparsity import MaskSet, layer_densities, prunable_shapes
from randsparse.sparsity.masks import kept_count
from randsparse.sparsity.methods.topology import block_counts
from randsparse.train import RunDir, fit
from randsparse.train.checkpoint import load_checkpoint
from randsparse.train.dynamic import SparseTraining
from randsparse.train.lottery import level_dir
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


def test_layerwise_lottery_level_keeps_each_projection_at_the_rule_s_density(tmp_path):
    """ERK at the level sees q, k, v as three (E, E) projections, and each keeps its own count."""
    options = "{levels: 1, rewind_step: 0, scope: layerwise}"
    fast = ("eval.calibration=false", "eval.reliability_diagram=false")
    config = tiny_config("epochs=1", *fast, "sparsity.method=lth", f"sparsity.method_options={options}", model=VIT)
    fit(config, tmp_path / "run")
    saved = load_checkpoint(level_dir(RunDir(tmp_path / "run"), 1).last_checkpoint)["masks"]
    masks = MaskSet.from_state_dict(saved)
    shapes = prunable_shapes(build("vit", 10, 1, image_size=12, patch_size=4, width=0.25, depth=1))
    density = layer_densities(shapes, 0.2, "erk")["blocks.0.attn.in_proj_weight"]
    expected = kept_count(density, 16 * 16)
    assert block_counts(masks["blocks.0.attn.in_proj_weight"], 3) == [expected] * 3
