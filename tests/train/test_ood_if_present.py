"""`eval.ood_if_present`: OOD sets evaluated when their files are found, skipped (never downloaded) when not."""

from __future__ import annotations

import pytest

from randsparse import data as datasets
from randsparse.data.lookup import Location
from randsparse.errors import ConfigError
from randsparse.evaluate.config import RunEvalConfig, eval_config
from randsparse.models import build
from randsparse.train.evaluation import evaluate_trained
from tests.train._runs import tiny_config


def test_present_sets_are_evaluated_and_missing_ones_skipped(tmp_path, monkeypatch) -> None:
    real_locate = datasets.locate

    def locate(name, root=None):  # MNIST's files are absent on this "machine"
        return Location(name, None, "missing") if name == "mnist" else real_locate(name, root)

    monkeypatch.setattr(datasets, "locate", locate)
    config = tiny_config()
    info = datasets.dataset_info(config.data.name, **config.data.options)
    model = build("small_cnn", num_classes=10, in_channels=1, width=0.5)
    options = RunEvalConfig(ood=["gaussian"], ood_if_present=["mnist", "uniform"], calibration=False)
    result = evaluate_trained(model, config.data, info, options, out_dir=tmp_path, identity="x")
    assert "ood.gaussian.msp.auroc" in result and "ood.uniform.msp.auroc" in result
    assert not any(key.startswith("ood.mnist.") for key in result)


def test_ood_if_present_names_are_checked_against_the_registry() -> None:
    assert eval_config(RunEvalConfig(), ood_if_present="mnist, uniform").ood_if_present == ["mnist", "uniform"]
    with pytest.raises(ConfigError, match="nosuchset"):
        eval_config(RunEvalConfig(), ood_if_present=["nosuchset"])
