"""`randsparse eval` on a trained run: every evaluation family, JSON keys, value ranges, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from randsparse.train import fit
from tests._cli import run as run_cli
from tests.train._runs import tiny_config

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "randsparse", "eval", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run trained on real Fashion-MNIST when it is installed, else on synthetic data."""
    out = tmp_path_factory.mktemp("eval") / "run"
    if FMNIST.is_dir():
        config = tiny_config(
            "data.name=fashion_mnist", "data.options={}", "data.subset=2000", "data.val_fraction=0.1", "epochs=1"
        )
    else:
        config = tiny_config("epochs=1")
    fit(config, out)
    return out


def test_eval_runs_all_three_families_and_records_them_in_the_summary(trained) -> None:
    ood = "digits,gaussian" if FMNIST.is_dir() else "gaussian,uniform"
    result = _eval(
        str(trained), "--ood", ood, "--fgsm", "0.01,0.03", "--pgd", "0.01", "--pgd-steps", "3",
        "--attack-images", "100", "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert 0 <= metrics["accuracy"] <= 1
    for key in ("ece", "mce", "brier"):
        assert 0 <= metrics[key] <= 2, key
    assert metrics["nll"] > 0
    for name in ood.split(","):
        for part in ("auroc", "aupr_in", "aupr_out", "fpr95"):
            assert 0 <= metrics[f"ood.{name}.msp.{part}"] <= 1
        assert f"ood.{name}.energy.auroc" in metrics
    for key in ("adv.fgsm.0.01", "adv.fgsm.0.03", "adv.pgd.0.01"):
        assert 0 <= metrics[key] <= metrics["adv.clean"] <= 1
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["eval"]["adv.fgsm.0.03"] == metrics["adv.fgsm.0.03"]
    assert summary["status"] == "completed"


def test_a_second_eval_adds_keys_and_keeps_earlier_ones(trained) -> None:
    first = _eval(str(trained), "--fgsm", "0.02", "--attack-images", "50", "--format", "json")
    assert first.returncode == 0, first.stderr
    second = _eval(str(trained), "--ood", "uniform", "--ood-images", "300", "--format", "json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["ood.uniform.images"] == 300
    summary = json.loads((trained / "summary.json").read_text())
    assert "adv.fgsm.0.02" in summary["eval"] and "ood.uniform.msp.auroc" in summary["eval"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--fgsm", "2"], "[0, 1]"),
        (["--ood-images", "0"], "--ood-images"),
        (["--ood", "nosuchset"], "nosuchset"),
        (["--ood-scores", "bogus"], "ood_scores"),
    ],
)
def test_bad_eval_options_exit_2_with_one_line(trained, capsys, args, fragment) -> None:
    # In-process (the CLI's own error handling); a real process's exit is checked below.
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    code, _, err = run_cli(["eval", str(trained), *args], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and fragment in err
    assert before == {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    assert "Traceback" not in err


def test_eval_of_a_directory_that_is_not_a_run_exits_2(tmp_path) -> None:
    result = _eval(str(tmp_path))
    assert result.returncode == 2 and "not a run directory" in result.stderr


def test_the_last_checkpoint_is_recorded_apart_from_the_best(trained) -> None:
    result = _eval(str(trained), "--which", "last", "--no-calibration", "--format", "json")
    assert result.returncode == 0, result.stderr
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["eval_last"]["accuracy"] == json.loads(result.stdout)["accuracy"]
    assert "ece" in summary["eval"]  # the best model's results stand
