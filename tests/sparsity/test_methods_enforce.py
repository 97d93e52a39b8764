"""Masks moved through `FixedMask.update_masks`: counts, zeroed weights and reset optimizer state, any optimizer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from randsparse.errors import MaskMismatchError
from randsparse.seeding import mix, seeded_generator
from randsparse.sparsity import attach
from randsparse.sparsity.masks import MaskSet
from randsparse.sparsity.methods import get_method

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _plan(model: nn.Module, density: float, seed: int) -> MaskSet:
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            keep = max(1, round(density * p.numel()))
            flat = torch.zeros(p.numel(), dtype=torch.bool)
            flat[torch.randperm(p.numel(), generator=gen)[:keep]] = True
            masks[name] = flat.reshape(p.shape)
    return MaskSet(masks)


def _weights(model: nn.Module, names) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name] for name in names}


@settings(max_examples=12, deadline=None)
@given(
    method_name=st.sampled_from(["set", "rigl", "gmp"]),
    optimizer_name=st.sampled_from(sorted(OPTIMIZERS)),
    density=st.sampled_from([0.1, 0.3, 0.6]),
    seed=st.integers(0, 1000),
)
def test_after_every_update_counts_match_and_dropped_weights_and_state_are_zero(
    method_name, optimizer_name, density, seed
):
    model = _model(seed)
    plan = _plan(model, density, seed)
    total = 12
    method = get_method(method_name)(total, update_every=2)
    start = MaskSet(method.start(plan, _weights(model, plan)))
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    handle = attach(model, start, optimizer)
    data = torch.randn(16, 6, generator=torch.Generator().manual_seed(seed))
    target = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(seed + 1))
    updates = 0
    for step in range(1, total + 1):
        handle.capture_dense_gradients(method.needs_dense_gradients(step))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data), target).backward()
        optimizer.step()
        if not method.is_update_step(step):
            continue
        grads = handle.dense_gradients() if method.needs_dense_gradients(step) else None
        old = {k: v.clone() for k, v in handle.masks.items()}
        new = method.update(step, _weights(model, plan), handle.masks, grads, seeded_generator(mix(seed, step), "u"))
        handle.update_masks(new, method.target_counts(step))
        updates += 1
        params = _weights(model, plan)
        for name, mask in handle.masks.items():
            assert int(mask.sum()) == method.target_counts(step)[name]
            assert torch.equal(mask, new[name])
            changed = mask != old[name]
            weight = params[name].detach()
            assert torch.all(weight[~mask] == 0)
            assert torch.all(weight[changed] == 0)  # dropped and regrown alike
            for value in optimizer.state[params[name]].values():
                if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                    assert torch.all(value[~mask] == 0) and torch.all(value[changed] == 0)
        # the next steps train the new masks and keep the inactive weights at zero
    assert updates > 0
    for name, mask in handle.masks.items():
        assert torch.all(_weights(model, plan)[name].detach()[~mask] == 0)


def test_dense_gradients_are_unmasked_while_the_optimizer_sees_masked_ones():
    model = _model(0)
    plan = _plan(model, 0.3, 0)
    handle = attach(model, plan)
    handle.capture_dense_gradients(True)
    model(torch.randn(4, 6)).sum().backward()
    dense = handle.dense_gradients()
    params = _weights(model, plan)
    for name, mask in plan.items():
        assert torch.count_nonzero(dense[name][~mask]) > 0
        assert torch.equal(params[name].grad, dense[name] * mask)
    with pytest.raises(MaskMismatchError):
        handle.dense_gradients()  # capturing stopped


def test_update_masks_refuses_before_changing_anything():
    model = _model(0)
    plan = _plan(model, 0.3, 0)
    handle = attach(model, plan)
    before = {k: v.clone() for k, v in handle.masks.items()}
    names = list(plan)
    good = plan[names[0]].clone()
    with pytest.raises(MaskMismatchError, match="keeps"):
        handle.update_masks({names[0]: good, names[1]: torch.ones_like(plan[names[1]])}, plan_counts(plan))
    with pytest.raises(MaskMismatchError, match="shape"):
        handle.update_masks({names[0]: good.reshape(-1)})
    with pytest.raises(MaskMismatchError, match="no mask"):
        handle.update_masks({"nope.weight": good})
    assert all(torch.equal(before[k], v) for k, v in handle.masks.items())


def plan_counts(plan: MaskSet) -> dict[str, int]:
    return {k: int(v.sum()) for k, v in plan.items()}
