"""The sparse training engine: masked dense training, auto decisions recorded, re-pack on mask change, fallbacks."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from randsparse.accel.engine import dense_gradients, engaged, engine_report, remove_engine, repack, use_engine
from randsparse.accel.kept_optim import use_kept_optimizer
from randsparse.errors import ConfigError
from randsparse.sparsity import attach, plan_sparsity


class _Net(nn.Module):
    """A strided conv, a grouped dilated conv, then two Linears: every kind the engine covers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2, bias=False)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def _masked_net(sparsity: float = 0.8, seed: int = 0) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    net = _Net()
    masks = plan_sparsity(net, sparsity=sparsity, distribution="uniform", seed=seed).masks
    return net, masks


def _data(steps: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)) for _ in range(steps)]


def _train(net: nn.Module, masks, mode: str, optimizer: str, steps: int, kept: bool = False) -> nn.Module:
    net = copy.deepcopy(net)
    params = net.parameters()
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    attach(net, masks, opt)
    use_engine(net, mode)
    if kept:
        assert use_kept_optimizer(net, opt) is not None
    for x, y in _data(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_sparse_engine_trains_the_masked_dense_trajectory(optimizer: str) -> None:
    net, masks = _masked_net()
    dense = _train(net, masks, "dense", optimizer, 50)
    for kept in (False, True):  # the optimizer over dense weights, or over kept values only
        sparse = _train(net, masks, "sparse", optimizer, 50, kept)
        assert len(list(engaged(sparse))) == 4
        for (name, a), b in zip(dense.state_dict().items(), sparse.state_dict().values(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
        for name, mask in masks.items():  # pruned weights: exactly zero
            assert bool((sparse.get_parameter(name)[~mask] == 0).all())


def test_auto_measures_each_training_shape_once_and_records_it() -> None:
    net, masks = _masked_net()
    attach(net, masks)
    assert use_engine(net, "auto") == ["conv1", "conv2", "fc1", "fc2"]
    x = torch.randn(4, 3, 8, 8)
    net(x).sum().backward()
    net(x).sum().backward()
    with torch.no_grad():
        net(torch.randn(3, 3, 8, 8))  # evaluation of an unseen shape: dense, nothing measured
    report = engine_report(net)
    assert [layer["name"] for layer in report["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    for layer in report["layers"]:
        (decision,) = layer["decisions"]
        assert decision["choice"] in ("dense", "sparse")
        assert set(decision["fwd_bwd_ms"]) == {"dense", "sparse"}
        assert all(t > 0 for t in decision["fwd_bwd_ms"].values())
    assert report["layers"][0]["decisions"][0]["input"] == [4, 3, 8, 8]


def test_a_mask_change_repacks_the_layer() -> None:
    net, masks = _masked_net(0.5)
    attach(net, masks)
    use_engine(net, "sparse")
    x = torch.randn(2, 3, 8, 8)
    net(x).sum().backward()
    (state,) = [s for name, _, s in engaged(net) if name == "fc1"]
    assert state.repacks == 1
    # a dynamic method drops half of fc1's kept weights, in place
    mask = net.fc1.weight_randsparse_mask
    kept = mask.nonzero()
    dropped = kept[: len(kept) // 2]
    with torch.no_grad():
        mask[dropped[:, 0], dropped[:, 1]] = False
        net.fc1.weight.mul_(mask)
    net.zero_grad()
    net(x).sum().backward()
    assert state.repacks == 2
    assert state.pack.nnz == int(mask.sum())
    assert bool((net.fc1.weight.grad[~mask] == 0).all())
    assert repack(net) == 4


def test_fallbacks_are_reported_and_compute_dense() -> None:
    net, masks = _masked_net()
    attach(net, masks)
    use_engine(net, "sparse")
    double = copy.deepcopy(net).double()
    out = double(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert any("dtype" in reason for layer in engine_report(double)["layers"] for reason in layer["fallbacks"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(torch.randn(2, 3, 8, 8))
    assert any("autocast" in reason for layer in engine_report(net)["layers"] for reason in layer["fallbacks"])


def test_a_model_off_the_cpu_computes_masked_dense_and_says_so() -> None:
    """Tensors on another device (the meta device here, CUDA below) take the masked dense path."""
    net, masks = _masked_net()
    attach(net, masks)
    assert use_engine(copy.deepcopy(net).to("meta"), "auto") == []  # off the CPU when engaged: nothing engaged
    assert use_engine(net, "sparse")
    net.to("meta")  # moved after it was engaged
    out = net(torch.randn(2, 3, 8, 8, device="meta"))
    assert out.device.type == "meta" and out.shape[0] == 2
    reasons = [reason for _, _, state in engaged(net) for reason in state.fallbacks]  # meta has no report numbers
    assert reasons and all(reason.startswith("device meta") for reason in reasons)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["sparse", "auto"])
def test_on_cuda_the_engine_trains_the_masked_dense_model(mode: str) -> None:
    net, masks = _masked_net()
    attach(net, masks)
    reference = copy.deepcopy(net).cuda()
    use_engine(net, mode)
    net.cuda()
    x, y = (t.cuda() for t in _data(1)[0])
    for model in (net, reference):
        F.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(net.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)  # cuDNN may sum in another order
    reasons = [reason for layer in engine_report(net)["layers"] for reason in layer["fallbacks"]]
    assert reasons and all(reason.startswith("device cuda") for reason in reasons)


def test_uncovered_layers_stay_dense_and_are_listed() -> None:
    net, masks = _masked_net()
    net.conv2.padding_mode = "reflect"
    attach(net, masks)
    assert "conv2" not in use_engine(net, "sparse")
    (skipped,) = engine_report(net)["not_engaged"]
    assert skipped["name"] == "conv2" and "padding" in skipped["reason"]


def test_the_engine_leaves_the_model_a_plain_masked_model() -> None:
    net, masks = _masked_net()
    attach(net, masks)
    keys = list(net.state_dict())
    use_engine(net, "sparse")
    assert list(net.state_dict()) == keys
    assert isinstance(net.fc1, nn.Linear) and isinstance(net.conv1, nn.Conv2d)
    x = torch.randn(2, 3, 8, 8)
    expected = net(x)
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        torch.testing.assert_close(twin(x), expected)
    remove_engine(net)
    assert type(net.fc1) is nn.Linear and type(net.conv1) is nn.Conv2d
    assert not list(engaged(net))
    with pytest.raises(ConfigError, match="unknown engine"):
        use_engine(net, "fast")


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_kept_optimizer_saves_and_loads_dense_shaped_state(optimizer: str) -> None:
    net, masks = _masked_net()
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), "adamw": lambda p: torch.optim.AdamW(p)}
    plain = copy.deepcopy(net)
    plain_opt = make[optimizer](plain.parameters())
    attach(plain, masks, plain_opt)
    kept_net = copy.deepcopy(net)
    kept_opt = make[optimizer](kept_net.parameters())
    attach(kept_net, masks, kept_opt)
    handle = use_kept_optimizer(kept_net, kept_opt)
    assert handle is not None and len(handle.entries) == 4
    for x, y in _data(3):
        for model, opt in ((plain, plain_opt), (kept_net, kept_opt)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    dense_state, kept_state = plain_opt.state_dict(), kept_opt.state_dict()
    assert dense_state["param_groups"] == kept_state["param_groups"]
    for position, state in dense_state["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(kept_state["state"][position][key], value, rtol=1e-5, atol=1e-6)
    # a dense-shaped state loads back into the kept optimizer, and steps go on alike
    kept_opt.load_state_dict(copy.deepcopy(dense_state))  # state_dict() holds live tensors
    kept_net.load_state_dict(plain.state_dict())
    for model, opt in ((plain, plain_opt), (kept_net, kept_opt)):
        x, y = _data(1, seed=7)[0]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for (name, a), b in zip(plain.state_dict().items(), kept_net.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_dense_gradients_runs_the_masked_dense_layers_inside_the_block() -> None:
    net, masks = _masked_net()
    attach(net, masks)
    use_engine(net, "sparse")
    x = torch.randn(2, 128)
    assert "SparseLinear" in type(net.fc1(x).grad_fn).__name__
    with dense_gradients(net):
        assert "SparseLinear" not in type(net.fc1(x).grad_fn).__name__  # autograd of the dense op
    assert all(state.mode == "sparse" for _, _, state in engaged(net))


def _pruned_gradient_is_zero(net: nn.Module, masks) -> bool:
    return all(bool((net.get_parameter(name).grad[~mask] == 0).all()) for name, mask in masks.items())


def test_a_dense_forward_in_the_same_step_keeps_the_pruned_gradient_masked() -> None:
    """The sparse path's gradient skips FixedMask's masking only when no dense forward joined it."""
    net, masks = _masked_net()
    attach(net, masks)
    use_engine(net, "sparse")
    x = torch.randn(4, 128)
    with dense_gradients(net):
        dense_part = net.fc1(x)  # the masked dense op: its gradient has pruned entries to mask
    (net.fc1(x).sum() + dense_part.sum()).backward()
    assert _pruned_gradient_is_zero(net, {"fc1.weight": masks["fc1.weight"]})
    # Sparse only: the gradient comes straight from the kept entries, zero elsewhere all the same.
    net.zero_grad(set_to_none=True)
    net.fc1(x).sum().backward()
    assert _pruned_gradient_is_zero(net, {"fc1.weight": masks["fc1.weight"]})


def test_a_layer_put_back_to_dense_masks_its_gradient_again() -> None:
    net, masks = _masked_net()
    attach(net, masks)
    use_engine(net, "sparse")
    x = torch.randn(4, 128)
    with torch.no_grad():
        net.fc1(x)  # a forward without backward leaves the layer's "sparse gradient" note behind
    remove_engine(net)
    net.fc1(x).sum().backward()
    assert _pruned_gradient_is_zero(net, {"fc1.weight": masks["fc1.weight"]})


def test_the_kept_optimizer_picks_up_weights_written_between_steps() -> None:
    net, masks = _masked_net()
    plain, kept = copy.deepcopy(net), copy.deepcopy(net)
    opts = []
    for model, use_kept in ((plain, False), (kept, True)):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        attach(model, masks, opt)
        if use_kept:
            use_kept_optimizer(model, opt)
        opts.append(opt)
    for step, (x, y) in enumerate(_data(3)):
        for model, opt in zip((plain, kept), opts, strict=True):
            if step == 1:
                with torch.no_grad():
                    model.fc1.weight.mul_(0.5)  # e.g. a rewind or a loaded checkpoint
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    torch.testing.assert_close(kept.fc1.weight, plain.fc1.weight, rtol=1e-5, atol=1e-6)


def test_the_kept_optimizer_write_back_counts_as_a_write_to_the_weight() -> None:
    """The write-back goes through NumPy; autograd's in-place check and version-keyed caches must still see it."""
    net, masks = _masked_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    attach(net, masks, opt)
    use_kept_optimizer(net, opt)
    x, y = next(iter(_data(1)))
    F.cross_entropy(net(x), y).backward()
    before = net.fc1.weight._version
    opt.step()
    assert net.fc1.weight._version > before
    loss = F.cross_entropy(net(x), y)  # saves the weight for backward ...
    opt.step()  # ... then an (odd) step writes it before that backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_kept_optimizer_steps_weights_of_other_dtypes(dtype: torch.dtype) -> None:
    """float64 takes the numba gathers, bfloat16 torch's own ops: both match the plain optimizer."""
    net, masks = _masked_net()
    net = net.to(dtype)
    plain, kept = copy.deepcopy(net), copy.deepcopy(net)
    opts = []
    for model, use_kept in ((plain, False), (kept, True)):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        attach(model, masks, opt)
        if use_kept:
            assert use_kept_optimizer(model, opt) is not None
        opts.append(opt)
    for x, y in _data(3):
        for model, opt in zip((plain, kept), opts, strict=True):
            opt.zero_grad()
            F.cross_entropy(model(x.to(dtype)).float(), y).backward()
            opt.step()
    torch.testing.assert_close(kept.fc1.weight, plain.fc1.weight)


def test_auto_measures_each_path_with_one_masking_hook_and_its_own_leaves(monkeypatch) -> None:
    """A hook added per repeat would slow the dense path more at every repeat and bias the choice."""
    from randsparse.accel import engine
    from randsparse.accel.dispatch import Decision

    masked_calls = []
    real = engine.without_pruned
    monkeypatch.setattr(engine, "without_pruned", lambda g, m: masked_calls.append(1) or real(g, m))

    def five_each(candidates, x):
        for _ in range(5):
            for run in candidates.values():
                run(x)
        return Decision((), "dense"), None

    monkeypatch.setattr(engine, "measure_candidates", five_each)
    net, masks = _masked_net()
    attach(net, masks)
    use_engine(net, "auto")
    net.fc1(torch.randn(4, 128, requires_grad=True))
    assert len(masked_calls) == 5  # one masking per dense backward, none on the sparse path
