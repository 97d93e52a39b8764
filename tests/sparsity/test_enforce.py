"""Fixed-mask training (`randsparse.sparsity.enforce`): pruned weights stay pruned.

After every optimizer step every pruned weight is exactly 0.0, and neither weight decay nor
optimizer state (momentum, Adam moments) can bring it back; masks travel with the model.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from randsparse.errors import MaskMismatchError
from randsparse.sparsity import MaskSet, attach, layer_densities, masks_from_model, prunable_shapes
from randsparse.sparsity.enforce import BUFFER_SUFFIX

DENSITY = 0.2  # ~80% sparsity
STEPS = 50

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def make_net(seed: int = 0) -> nn.Sequential:
    """Conv2d → BN → ReLU → Conv2d → pool → Linear on 3×8×8 inputs; every prunable layer sparse under ERK."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 16, 3, padding=1),
            bn1=nn.BatchNorm2d(16),
            relu=nn.ReLU(),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            pool=nn.AdaptiveAvgPool2d(2),
            flatten=nn.Flatten(),
            fc=nn.Linear(128, 10),
        )
    )


def make_masks(model: nn.Module, density: float = DENSITY, seed: int = 0) -> MaskSet:
    shapes = prunable_shapes(model)
    densities = layer_densities(shapes, density, "erk")
    return MaskSet.random(shapes, densities, torch.Generator().manual_seed(seed))


def make_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)


def weights(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


def pruned_nonzero(model: nn.Module, masks: MaskSet) -> int:
    params = weights(model)
    return sum(int(params[name].detach()[~mask].count_nonzero()) for name, mask in masks.items())


def assert_masks_hold(
    model: nn.Module, masks: MaskSet, optimizer: torch.optim.Optimizer | None = None, expect_state: tuple[str, ...] = ()
) -> None:
    """Every pruned weight exactly 0.0, masks unchanged, weight-shaped optimizer state 0 where pruned."""
    attached = masks_from_model(model)
    assert attached.equal(masks), "the attached masks changed"
    assert attached.num_kept() == masks.num_kept()
    params = weights(model)
    for name, mask in masks.items():
        weight = params[name].detach()
        pruned = ~mask.to(weight.device)
        n_pruned = int(pruned.sum())
        assert n_pruned > 0, f"{name} has no pruned weight; the test would be vacuous"
        assert torch.all(weight[pruned] == 0.0), f"{name}: a pruned weight is nonzero"
        assert int((weight[pruned] == 0.0).sum()) == n_pruned
        if optimizer is None:
            continue
        state = optimizer.state.get(params[name], {})
        for key in expect_state:
            assert key in state, f"{name}: optimizer state has no {key!r}; the check would be vacuous"
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                assert torch.all(value[pruned] == 0), f"{name}: optimizer state {key!r} nonzero at a pruned position"


OPTIMIZERS: dict[str, tuple[OptimizerFactory, tuple[str, ...]]] = {
    "sgd_momentum_wd": (
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
        ("momentum_buffer",),
    ),
    "sgd_nesterov_wd": (
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        ("momentum_buffer",),
    ),
    "adam_wd": (lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4), ("exp_avg", "exp_avg_sq")),
    "adam_amsgrad_wd": (
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4, amsgrad=True),
        ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    ),
    "adamw_wd": (lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2), ("exp_avg", "exp_avg_sq")),
}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_pruned_weights_and_optimizer_state_stay_zero_after_every_step(opt_name: str) -> None:
    factory, expect_state = OPTIMIZERS[opt_name]
    model = make_net()
    masks = make_masks(model)
    optimizer = factory(list(model.parameters()))
    attach(model, masks, optimizer)
    assert_masks_hold(model, masks)
    before = {n: p.detach().clone() for n, p in weights(model).items()}
    x, y = make_batch()
    losses = []
    for _ in range(STEPS):
        losses.append(train_step(model, optimizer, x, y))
        assert_masks_hold(model, masks, optimizer, expect_state)
    after = weights(model)
    for name, mask in masks.items():
        assert not torch.equal(before[name][mask], after[name].detach()[mask]), f"{name}: kept weights never moved"
    assert losses[-1] < 0.8 * losses[0], f"loss did not go down: {losses[0]:.4f} → {losses[-1]:.4f}"


def test_pruned_weights_stay_zero_under_grad_scaler_and_bf16_autocast_on_cpu() -> None:
    model = make_net()
    masks = make_masks(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=True)
    assert scaler.is_enabled()
    attach(model, masks, optimizer)
    before = {n: p.detach().clone() for n, p in weights(model).items()}
    x, y = make_batch()
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            assert out.dtype == torch.bfloat16  # autocast really ran the convs / linear in bf16
            loss = F.cross_entropy(out, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
        assert_masks_hold(model, masks, optimizer, ("momentum_buffer",))
    assert scaler.get_scale() > 1.0, "the scaler skipped every step"
    for name, mask in masks.items():
        assert not torch.equal(before[name][mask], weights(model)[name].detach()[mask])
    assert losses[-1] < 0.8 * losses[0]


def test_without_attach_momentum_and_weight_decay_revive_pruned_weights() -> None:
    """The enforcement is necessary: masking once and training plainly does not keep weights at zero."""
    model = make_net()
    masks = make_masks(model)
    masks.apply_(model)
    assert pruned_nonzero(model, masks) == 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = make_batch()
    train_step(model, optimizer, x, y)
    assert pruned_nonzero(model, masks) > 0


def test_gradients_of_pruned_weights_are_zero_right_after_backward() -> None:
    model = make_net()
    masks = make_masks(model)
    attach(model, masks)  # no optimizer: the gradient hook alone
    x, y = make_batch()
    for _ in range(2):  # accumulation over two backward passes too
        F.cross_entropy(model(x), y).backward()
        params = weights(model)
        for name, mask in masks.items():
            grad = params[name].grad
            assert grad is not None
            assert torch.all(grad[~mask] == 0.0), f"{name}: gradient of a pruned weight is nonzero"
            assert grad[mask].count_nonzero() > 0, f"{name}: kept weights got no gradient"


def test_gradients_are_masked_before_gradient_clipping_sees_them() -> None:
    model, reference = make_net(), make_net()
    masks = make_masks(model)
    attach(model, masks)
    x, y = make_batch()
    F.cross_entropy(model(x), y).backward()
    masks.apply_(reference)
    F.cross_entropy(reference(x), y).backward()
    norm = nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    ref_grads = [p.grad * masks[n] if n in masks else p.grad for n, p in reference.named_parameters()]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in ref_grads]))
    torch.testing.assert_close(norm, expected)


@pytest.mark.parametrize("opt_name", ["sgd_momentum_wd", "adam_wd"])
def test_attach_zeroes_stale_optimizer_state_at_once_and_keeps_it_zero(opt_name: str) -> None:
    factory, expect_state = OPTIMIZERS[opt_name]
    model = make_net()
    masks = make_masks(model)
    optimizer = factory(list(model.parameters()))
    x, y = make_batch()
    for _ in range(3):  # dense steps: state nonzero everywhere
        train_step(model, optimizer, x, y)
    params = weights(model)
    for name, mask in masks.items():
        for key in expect_state:
            assert optimizer.state[params[name]][key][~mask].count_nonzero() > 0
    attach(model, masks, optimizer)
    assert_masks_hold(model, masks, optimizer, expect_state)  # immediately, before any step
    for _ in range(5):
        train_step(model, optimizer, x, y)
        assert_masks_hold(model, masks, optimizer, expect_state)


def test_watch_adds_a_second_optimizer_after_attach() -> None:
    model = make_net()
    masks = make_masks(model)
    handle = attach(model, masks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    handle.watch(optimizer)
    handle.watch(optimizer)  # idempotent
    x, y = make_batch()
    for _ in range(3):
        train_step(model, optimizer, x, y)
        assert_masks_hold(model, masks, optimizer, ("momentum_buffer",))


def test_remove_drops_hooks_and_mask_buffers() -> None:
    model = make_net()
    masks = make_masks(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    handle = attach(model, masks, optimizer)
    x, y = make_batch()
    train_step(model, optimizer, x, y)
    assert_masks_hold(model, masks, optimizer)
    handle.remove()
    assert len(masks_from_model(model)) == 0
    for module in model.modules():
        assert not any(b.endswith(BUFFER_SUFFIX) for b in module._buffers)
    # No gradient hook: pruned positions get a gradient. No step hook: the step revives them.
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    params = weights(model)
    assert all(params[n].grad[~m].count_nonzero() > 0 for n, m in masks.items())
    optimizer.step()
    assert pruned_nonzero(model, masks) > 0


def test_remove_keep_buffers_keeps_masks_but_stops_enforcing() -> None:
    model = make_net()
    masks = make_masks(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    handle = attach(model, masks, optimizer)
    handle.remove(keep_buffers=True)
    assert masks_from_model(model).equal(masks)
    x, y = make_batch()
    train_step(model, optimizer, x, y)
    assert pruned_nonzero(model, masks) > 0


def test_attach_does_not_change_state_dict_keys() -> None:
    model = make_net()
    keys = list(model.state_dict())
    attach(model, make_masks(model))
    assert list(model.state_dict()) == keys


def test_attached_masks_property_reads_the_model_buffers() -> None:
    model = make_net()
    masks = make_masks(model)
    handle = attach(model, masks)
    assert handle.masks.equal(masks)


def _deepcopy(model: nn.Module, tmp_path) -> nn.Module:
    return copy.deepcopy(model)


def _save_load(model: nn.Module, tmp_path) -> nn.Module:
    path = tmp_path / "model.pt"
    torch.save(model, path)
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("make_copy", [_deepcopy, _save_load], ids=["deepcopy", "torch_save_load"])
def test_masks_survive_copy_and_reattach_enforces_on_the_copy(make_copy, tmp_path) -> None:
    model = make_net()
    masks = make_masks(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    keys = list(model.state_dict())
    attach(model, masks, optimizer)
    x, y = make_batch()
    train_step(model, optimizer, x, y)

    clone = make_copy(model, tmp_path)
    assert clone is not model
    assert list(clone.state_dict()) == keys
    copied = masks_from_model(clone)
    assert copied.equal(masks)
    assert pruned_nonzero(clone, masks) == 0

    new_optimizer = torch.optim.SGD(clone.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    attach(clone, copied, new_optimizer)
    for _ in range(3):
        train_step(clone, new_optimizer, x, y)
        assert_masks_hold(clone, masks, new_optimizer, ("momentum_buffer",))


@pytest.mark.parametrize(
    "convert",
    [lambda m: m.to("cpu"), lambda m: m.double(), lambda m: m.to(torch.float64)],
    ids=["to_cpu", "double", "to_float64"],
)
def test_masks_survive_to_and_dtype_change_and_still_enforce(convert) -> None:
    model = make_net()
    masks = make_masks(model)
    keys = list(model.state_dict())
    handle = attach(model, masks)
    model = convert(model)
    assert list(model.state_dict()) == keys
    found = masks_from_model(model)
    assert found.equal(masks)
    assert all(m.dtype == torch.bool for m in found.values())
    assert pruned_nonzero(model, masks) == 0
    dtype = next(model.parameters()).dtype
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    handle.watch(optimizer)
    x, y = make_batch()
    for _ in range(3):
        train_step(model, optimizer, x.to(dtype), y)
        assert_masks_hold(model, masks, optimizer, ("momentum_buffer",))


def test_attach_rejects_a_mask_of_the_wrong_shape_naming_the_layer() -> None:
    model = make_net()
    masks = dict(make_masks(model))
    masks["conv2.weight"] = torch.ones(32, 16, 1, 1, dtype=torch.bool)
    with pytest.raises(MaskMismatchError, match=r"conv2\.weight"):
        attach(model, masks)
    assert len(masks_from_model(model)) == 0  # validation happens before anything is attached


def test_attach_rejects_a_mask_for_a_missing_parameter_naming_it() -> None:
    model = make_net()
    masks = dict(make_masks(model))
    masks["conv3.weight"] = torch.ones(4, 4, dtype=torch.bool)
    with pytest.raises(MaskMismatchError, match=r"conv3\.weight"):
        attach(model, masks)


def test_attaching_twice_to_the_same_layer_is_refused() -> None:
    model = make_net()
    masks = make_masks(model)
    attach(model, masks)
    with pytest.raises(MaskMismatchError, match=r"conv1\.weight"):
        attach(model, masks)


def test_a_refused_attach_leaves_nothing_attached() -> None:
    model = make_net()
    masks = make_masks(model)
    attach(model, {"fc.weight": masks["fc.weight"]})
    with pytest.raises(MaskMismatchError, match=r"fc\.weight"):
        attach(model, masks)  # conv1 and conv2 come before the already-masked fc
    assert list(masks_from_model(model)) == ["fc.weight"]
    x, y = make_batch()
    F.cross_entropy(model(x), y).backward()
    assert model.conv1.weight.grad[~masks["conv1.weight"]].count_nonzero() > 0, "a gradient hook was left behind"


def test_frozen_bn_in_a_param_group_without_weight_decay() -> None:
    model = make_net()
    masks = make_masks(model)
    bn_params = list(model.bn1.parameters())
    for p in bn_params:
        p.requires_grad_(False)
    bn_before = [p.detach().clone() for p in bn_params]
    other = [p for n, p in model.named_parameters() if not n.startswith("bn1.")]
    optimizer = torch.optim.SGD(
        [{"params": other, "weight_decay": 5e-4}, {"params": bn_params, "weight_decay": 0.0}],
        lr=0.05,
        momentum=0.9,
    )
    attach(model, masks, optimizer)
    x, y = make_batch()
    losses = [train_step(model, optimizer, x, y) for _ in range(10)]
    assert_masks_hold(model, masks, optimizer, ("momentum_buffer",))
    assert all(torch.equal(a, b) for a, b in zip(bn_before, bn_params, strict=True))
    assert losses[-1] < losses[0]


def test_trainable_bn_in_a_param_group_without_weight_decay() -> None:
    model = make_net()
    masks = make_masks(model)
    bn_params = list(model.bn1.parameters())
    other = [p for n, p in model.named_parameters() if not n.startswith("bn1.")]
    optimizer = torch.optim.AdamW(
        [{"params": other, "weight_decay": 1e-2}, {"params": bn_params, "weight_decay": 0.0}], lr=1e-2
    )
    attach(model, masks, optimizer)
    x, y = make_batch()
    for _ in range(10):
        train_step(model, optimizer, x, y)
        assert_masks_hold(model, masks, optimizer, ("exp_avg", "exp_avg_sq"))


def test_frozen_prunable_layer_can_be_masked() -> None:
    """A masked weight that is frozen (requires_grad=False, e.g. a fixed stem) is still masked."""
    model = make_net()
    masks = make_masks(model)
    model.conv1.weight.requires_grad_(False)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9, weight_decay=5e-4
    )
    attach(model, masks, optimizer)
    assert pruned_nonzero(model, masks) == 0
    x, y = make_batch()
    for _ in range(3):
        train_step(model, optimizer, x, y)
        assert_masks_hold(model, masks, optimizer)


def test_weight_unfrozen_after_attach_has_its_gradient_masked_before_clipping_sees_it() -> None:
    """The README's promise, "masks gradients as they are computed", holds for a weight frozen at attach."""
    model = make_net()
    masks = make_masks(model)
    model.conv1.weight.requires_grad_(False)
    attach(model, masks)
    model.conv1.weight.requires_grad_(True)  # e.g. a stem unfrozen after warm-up
    x, y = make_batch()
    F.cross_entropy(model(x), y).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if name in masks}
    for name, grad in grads.items():
        assert not grad[~masks[name]].any(), name
    # Clipping measures only the kept entries' gradients.
    kept_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9) == pytest.approx(kept_norm.item())


def test_masked_weight_outside_the_optimizer_keeps_its_gradient_masked() -> None:
    model = make_net()
    masks = make_masks(model)
    optimizer = torch.optim.SGD(
        [p for n, p in model.named_parameters() if n != "conv1.weight"], lr=0.05, momentum=0.9, weight_decay=5e-4
    )
    attach(model, masks, optimizer)
    x, y = make_batch()
    for _ in range(3):
        train_step(model, optimizer, x, y)
        assert_masks_hold(model, masks, optimizer)
    assert torch.all(model.conv1.weight.grad[~masks["conv1.weight"]] == 0)


def test_zero_pruned_converts_a_mask_once_per_mask_state() -> None:
    from randsparse.sparsity.enforce import _multiplier, without_pruned, zero_pruned_

    mask = torch.tensor([True, False, True, False])
    first = _multiplier(mask, torch.float32)
    assert _multiplier(mask, torch.float32) is first  # cached: no conversion per call
    assert zero_pruned_(torch.ones(4), mask).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert zero_pruned_(torch.ones(4, dtype=torch.float64), mask).dtype == torch.float64
    mask[1] = True  # changed in place (as `update_masks` does): the cache follows
    assert zero_pruned_(torch.ones(4), mask).tolist() == [1.0, 1.0, 1.0, 0.0]
    grad = torch.tensor([float("nan"), 2.0, 3.0, float("inf")])
    assert without_pruned(grad, mask)[1:].tolist() == [2.0, 3.0, 0.0]
