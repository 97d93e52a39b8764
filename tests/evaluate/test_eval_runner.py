"""`evaluate.run` end to end on tiny synthetic sets, the logit cache, and the model left untouched."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from randsparse.errors import ConfigError
from randsparse.evaluate import (
    EvalConfig,
    LogitCache,
    RawPixels,
    cached_logits,
    collect_logits,
    model_fingerprint,
    run,
    topk_accuracy,
)

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def _model(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, classes),
    )  # fmt: skip


def _raw(count: int, seed: int, classes: int = 10) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(count, 3, 8, 8, generator=generator), torch.randint(0, classes, (count,)))


def _normalized(raw: TensorDataset) -> TensorDataset:
    images, labels = raw.tensors
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    return TensorDataset((images - mean) / std, labels)


class _CountingModel(nn.Module):
    """Wraps a model and counts the images it has seen, to tell cached passes from fresh ones."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.model(x)


def test_run_reports_every_asked_metric_under_the_documented_keys(tmp_path) -> None:
    model = _model()
    test = _normalized(_raw(48, 0))
    options = EvalConfig(ood=["noise", "shifted"], fgsm=[0.01, 0.03], pgd="8/255", pgd_steps=2, batch_size=16)
    ood = {"noise": _normalized(_raw(32, 1)), "shifted": _normalized(_raw(24, 2)), "unused": _raw(4, 3)}
    result = run(model, test, options=options, ood_data=ood, mean=MEAN, std=STD, out_dir=tmp_path)
    assert {"accuracy", "top5", "test_images", "ece", "mce", "nll", "brier"} <= set(result)
    for name in ["noise", "shifted"]:
        for score in ["msp", "max_logit", "energy"]:
            for metric in ["auroc", "aupr_in", "aupr_out", "fpr95"]:
                assert 0.0 <= result[f"ood.{name}.{score}.{metric}"] <= 1.0
    assert not any(key.startswith("ood.unused") for key in result)
    assert {"adv.images", "adv.clean", "adv.fgsm.0.01", "adv.fgsm.0.03", "adv.pgd.0.0313725"} <= set(result)
    assert result["adv.images"] == 48
    assert result["adv.fgsm.0.03"] <= result["adv.clean"]
    assert {"seconds.test", "seconds.calibration", "seconds.ood.noise", "seconds.adv"} <= set(result)
    assert (tmp_path / "reliability.png").is_file()
    json.dumps(result, allow_nan=False)


def test_run_accuracy_equals_the_logits_of_one_pass() -> None:
    model = _model()
    test = _normalized(_raw(40, 0))
    logits, labels = collect_logits(model, test)
    result = run(model, DataLoader(test, batch_size=7), options=EvalConfig(calibration=False))
    assert result["accuracy"] == topk_accuracy(logits, labels)
    assert result["test_images"] == 40
    assert "ece" not in result and not any(key.startswith(("ood.", "adv.")) for key in result)


def test_run_without_ood_names_evaluates_every_given_set() -> None:
    result = run(_model(), _normalized(_raw(16, 0)), ood_data={"a": _raw(8, 1)}, options=EvalConfig(ood_scores="msp"))
    assert sorted(k for k in result if k.startswith("ood.")) == [
        "ood.a.images",
        "ood.a.msp.aupr_in",
        "ood.a.msp.aupr_out",
        "ood.a.msp.auroc",
        "ood.a.msp.fpr95",
    ]


def test_run_refuses_an_ood_set_it_was_not_given_before_any_pass() -> None:
    model = _CountingModel(_model())
    with pytest.raises(ConfigError, match="svhn"):
        run(model, _normalized(_raw(8, 0)), options=EvalConfig(ood=["svhn"]), ood_data={"mnist": _raw(8, 1)})
    assert model.seen == 0


def test_run_refuses_a_mean_without_a_std() -> None:
    with pytest.raises(ConfigError, match="both mean and std"):
        run(_model(), _normalized(_raw(8, 0)), mean=MEAN)


def test_a_second_run_reuses_cached_logits_and_only_passes_new_sets(tmp_path) -> None:
    model = _CountingModel(_model())
    test, ood_a, ood_b = _normalized(_raw(30, 0)), _raw(20, 1), _raw(10, 2)
    first = run(model, test, options=EvalConfig(ood=["a"]), ood_data={"a": ood_a}, cache_dir=tmp_path)
    assert model.seen == 50
    second = run(model, test, options=EvalConfig(ood=["a", "b"]), ood_data={"a": ood_a, "b": ood_b}, cache_dir=tmp_path)
    assert model.seen == 60  # only set b was passed
    assert second["ood.a.energy.auroc"] == first["ood.a.energy.auroc"]
    assert second["ece"] == first["ece"]


def test_changed_weights_or_a_changed_set_size_invalidate_the_cache(tmp_path) -> None:
    model = _CountingModel(_model())
    test = _normalized(_raw(30, 0))
    run(model, test, cache_dir=tmp_path)
    with torch.no_grad():
        model.model[-1].weight.mul_(2)
    run(model, test, cache_dir=tmp_path)
    assert model.seen == 60
    run(model, _normalized(_raw(12, 0)), cache_dir=tmp_path)
    assert model.seen == 72
    run(model, test, cache_dir=tmp_path, identity="checkpoint-abc")
    run(model, test, cache_dir=tmp_path, identity="checkpoint-abc")
    assert model.seen == 102


def test_an_unreadable_cache_entry_is_recomputed(tmp_path) -> None:
    model = _model()
    cache = LogitCache(tmp_path, "id")
    cache.path("test").write_bytes(b"not a torch file")
    logits, labels = cached_logits(model, _raw(6, 0), "test", cache)
    assert cache.load("test", 6) is not None
    assert torch.equal(cache.load("test")[0], logits) and labels.shape == (6,)


def test_model_fingerprint_follows_the_weights() -> None:
    model = _model()
    first = model_fingerprint(model)
    assert model_fingerprint(model) == first
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1
    assert model_fingerprint(model) != first


def test_unlabelled_sets_get_label_minus_one() -> None:
    _, labels = collect_logits(_model(), TensorDataset(torch.rand(5, 3, 8, 8)))
    assert labels.tolist() == [-1] * 5


def test_attacks_on_the_unnormalised_test_set_equal_attacks_on_raw_pixels() -> None:
    model = _model()
    raw = _raw(40, 0)
    options = EvalConfig(calibration=False, fgsm=[0.02], pgd=[0.02], pgd_steps=2, batch_size=16)
    derived = run(model, _normalized(raw), options=options, mean=MEAN, std=STD)
    given = run(model, _normalized(raw), options=options, mean=MEAN, std=STD, attack_data=raw)
    for key in ["adv.clean", "adv.fgsm.0.02", "adv.pgd.0.02"]:
        assert derived[key] == pytest.approx(given[key], abs=1 / 40)  # float rounding may flip one image


def test_raw_pixels_undo_the_normalisation() -> None:
    raw = _raw(4, 0)
    pixels = RawPixels(_normalized(raw), MEAN, STD)
    assert len(pixels) == 4
    image, label = pixels[2]
    assert torch.allclose(image, raw[2][0], atol=1e-6) and label == raw[2][1]


def test_attacks_use_a_seeded_subset_of_at_most_the_asked_size() -> None:
    model = _model()
    test = _normalized(_raw(50, 0))
    options = EvalConfig(calibration=False, fgsm=[0.05], attack_max_images=20, seed=3)
    first = run(model, test, options=options, mean=MEAN, std=STD)
    assert first["adv.images"] == 20
    assert run(model, test, options=options, mean=MEAN, std=STD)["adv.fgsm.0.05"] == first["adv.fgsm.0.05"]


def test_ood_sets_are_scored_on_a_seeded_subset_of_at_most_ood_max_images(tmp_path) -> None:
    model = _CountingModel(_model())
    test, ood = _normalized(_raw(30, 0)), {"big": _raw(40, 1), "small": _raw(6, 2)}
    options = EvalConfig(calibration=False, ood=["big", "small"], ood_max_images=10, seed=3)
    first = run(model, test, options=options, ood_data=ood, cache_dir=tmp_path)
    assert (first["ood.big.images"], first["ood.small.images"]) == (10, 6)  # a smaller set is scored whole
    assert model.seen == 30 + 10 + 6
    assert run(model, test, options=options, ood_data=ood)["ood.big.energy.auroc"] == first["ood.big.energy.auroc"]
    # The cache tells a subset from the whole set: asking for all of it passes the 40 images.
    everything = options.model_copy(update={"ood_max_images": None})
    whole = run(model, test, options=everything, ood_data=ood, cache_dir=tmp_path)
    assert whole["ood.big.images"] == 40
    other_seed = run(model, test, options=options.model_copy(update={"seed": 4}), ood_data=ood)
    assert other_seed["ood.big.images"] == 10


def test_ood_max_images_must_be_a_positive_integer() -> None:
    with pytest.raises(ValueError, match="ood_max_images"):
        EvalConfig(ood_max_images=0)


def test_run_leaves_the_model_as_it_was() -> None:
    model = _model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = EvalConfig(fgsm=[0.03], pgd=[0.03], pgd_steps=2, ood=["x"])
    run(model, _normalized(_raw(16, 0)), options=options, ood_data={"x": _raw(8, 1)}, mean=MEAN, std=STD)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_run_takes_the_data_registrys_test_and_noise_sets() -> None:
    from randsparse import data

    options = {"channels": 3, "image_size": 8, "test_size": 40, "num_classes": 10}
    test = data.build("synthetic", split="test", **options)
    raw = data.build("synthetic", split="test", normalize=False, **options)
    ood = {name: data.build_ood(test.info, name, size=16) for name in ["gaussian", "uniform"]}
    config = EvalConfig(ood=["gaussian", "uniform"], fgsm=[0.03], batch_size=16)
    mean, std = test.info.mean, test.info.std
    result = run(_model(), test, options=config, ood_data=ood, mean=mean, std=std, attack_data=raw)
    derived = run(_model(), test, options=config, ood_data=ood, mean=mean, std=std)
    assert result["test_images"] == 40 and result["adv.images"] == 40
    assert 0.0 <= result["ood.uniform.energy.auroc"] <= 1.0
    assert result["adv.fgsm.0.03"] == pytest.approx(derived["adv.fgsm.0.03"], abs=1 / 40)


def test_collected_logits_equal_a_plain_forward() -> None:
    model = _model().eval()
    images = _normalized(_raw(20, 0)).tensors[0]
    logits, _ = collect_logits(model, TensorDataset(images), batch_size=8)
    with torch.no_grad():
        assert torch.allclose(logits, model(images), atol=1e-5)
