"""The `randsparse plan` command: output formats, mask files, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from randsparse.cli import main
from randsparse.sparsity.masks import kept_count
from tests._cli import run

RESNET20_CONV1_ERK_095 = 0.4748  # ERK density of resnet20's first conv at sparsity 0.95


def plan_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = run(["plan", *argv, "--format", "json"], capsys)
    assert code == 0, err
    assert err == ""
    return json.loads(out)


def assert_one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"expected one line on stderr, got {err!r}"
    return err


def test_plan_json_has_model_rule_layers_and_totals(capsys) -> None:
    data = plan_json(["--model", "resnet20", "--sparsity", "0.95", "--distribution", "erk"], capsys)
    assert set(data) == {"model", "sparsity", "distribution", "mask_mode", "layers", "total"}
    assert data["mask_mode"] == "random"
    assert data["model"] == "resnet20"
    assert data["sparsity"] == 0.95
    assert data["distribution"] == "erk"
    assert len(data["layers"]) == 22  # conv1, 18 block convs, 2 projection shortcuts, fc
    for layer in data["layers"]:
        assert set(layer) == {"name", "shape", "params", "density", "kept"}
        size = 1
        for d in layer["shape"]:
            size *= d
        assert layer["params"] == size
        assert 0.0 <= layer["density"] <= 1.0
        assert layer["kept"] == round(layer["density"] * layer["params"]) == kept_count(layer["density"], size)
    total = data["total"]
    assert set(total) == {"params", "kept", "density"}
    assert total["params"] == sum(x["params"] for x in data["layers"])
    assert total["kept"] == sum(x["kept"] for x in data["layers"])
    assert total["density"] == pytest.approx(total["kept"] / total["params"])
    assert abs(total["kept"] - 0.05 * total["params"]) <= len(data["layers"])  # exact budget


def test_plan_json_erk_density_of_resnet20_conv1(capsys) -> None:
    data = plan_json(["--model", "resnet20", "--sparsity", "0.95", "--distribution", "erk"], capsys)
    first = data["layers"][0]
    assert first["name"] == "conv1.weight"
    assert first["shape"] == [16, 3, 3, 3]
    assert first["density"] == pytest.approx(RESNET20_CONV1_ERK_095, abs=5e-5)
    assert data["layers"][-1]["name"] == "fc.weight"


def test_plan_table_lists_layers_and_total(capsys) -> None:
    code, out, err = run(["plan", "--model", "resnet20", "--sparsity", "0.9"], capsys)
    assert code == 0 and err == ""
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer2.0.shortcut.0.weight", "fc.weight"):
        assert name in out
    assert "total" in out
    assert "resnet20" in out


def test_saved_masks_are_described_with_the_same_kept_counts(capsys, tmp_path: Path) -> None:
    path = tmp_path / "masks.pt"
    drawn = plan_json(["--model", "resnet20", "--sparsity", "0.95", "--save-masks", str(path)], capsys)
    assert path.is_file()
    described = plan_json(["--model", "resnet20", "--masks", str(path)], capsys)
    assert [(x["name"], x["kept"], x["params"]) for x in described["layers"]] == [
        (x["name"], x["kept"], x["params"]) for x in drawn["layers"]
    ]
    assert described["total"]["kept"] == drawn["total"]["kept"]
    assert described["distribution"] == "erk"
    assert described["sparsity"] == pytest.approx(1 - drawn["total"]["density"])


def test_plans_and_mask_files_leaving_a_layer_empty_exit_2_with_one_line(capsys, tmp_path: Path) -> None:
    narrow = ["--model", "small_cnn", "--width", "0.25", "--in-channels", "1"]
    code, out, err = run(["plan", *narrow, "--sparsity", "0.99", "--distribution", "uniform"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "features.0.weight (0 of 36 kept)" in err and "0.986111" in err
    path = tmp_path / "masks.pt"
    saved = ["--sparsity", "0.99", "--distribution", "uniform", "--save-masks", str(path), "--allow-empty-layers"]
    code, _, err = run(["plan", *narrow, *saved], capsys)
    assert code == 0 and path.is_file(), err
    code, _, err = run(["plan", *narrow, "--masks", str(path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "features.0.weight" in err
    code, _, err = run(["plan", *narrow, "--masks", str(path), "--allow-empty-layers"], capsys)
    assert code == 0, err


def test_saved_masks_with_include_regex_are_described_on_the_same_model(capsys, tmp_path: Path) -> None:
    path = tmp_path / "masks.pt"
    drawn = plan_json(
        ["--model", "resnet20", "--sparsity", "0.8", "--include", "layer3", "--save-masks", str(path)], capsys
    )
    described = plan_json(["--model", "resnet20", "--masks", str(path)], capsys)
    assert [(x["name"], x["kept"]) for x in described["layers"]] == [(x["name"], x["kept"]) for x in drawn["layers"]]


@pytest.mark.parametrize(
    ("saved", "given", "first_mismatch"),
    [
        (["--model", "resnet20"], ["--model", "resnet32"], "layer1.3.conv1.weight"),
        (["--model", "resnet32"], ["--model", "resnet20"], "layer1.3.conv1.weight"),
        (["--model", "resnet20"], ["--model", "resnet20", "--width", "2"], "conv1.weight"),
    ],
    ids=["resnet20_masks_on_resnet32", "resnet32_masks_on_resnet20", "resnet20_masks_on_width_2"],
)
def test_mask_file_of_another_model_is_refused_naming_the_first_mismatching_layer(
    saved: list[str], given: list[str], first_mismatch: str, capsys, tmp_path: Path
) -> None:
    path = tmp_path / "masks.pt"
    code, _, err = run(["plan", *saved, "--sparsity", "0.9", "--save-masks", str(path)], capsys)
    assert code == 0, err
    err = assert_one_line_error(*run(["plan", *given, "--masks", str(path)], capsys))
    assert repr(first_mismatch) in err


def test_masks_and_save_masks_together_are_refused(capsys, tmp_path: Path) -> None:
    path = tmp_path / "masks.pt"
    run(["plan", "--model", "resnet20", "--sparsity", "0.9", "--save-masks", str(path)], capsys)
    assert_one_line_error(
        *run(["plan", "--model", "resnet20", "--masks", str(path), "--save-masks", str(tmp_path / "b.pt")], capsys)
    )


def _custom_missing_layer(tmp_path: Path) -> list[str]:
    path = tmp_path / "custom.yaml"
    path.write_text("density:\n  nonexistent.weight: 0.5\n")
    return ["--distribution", "custom", "--custom", str(path), "--sparsity", "0.9"]


def _corrupt_masks(tmp_path: Path) -> list[str]:
    path = tmp_path / "random.pt"
    path.write_bytes(bytes(range(256)) * 8)
    return ["--masks", str(path)]


def _empty_masks(tmp_path: Path) -> list[str]:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    return ["--masks", str(path)]


def _truncated_masks(tmp_path: Path) -> list[str]:
    path = tmp_path / "truncated.pt"
    assert main(["plan", "--model", "resnet20", "--sparsity", "0.9", "--save-masks", str(path)]) == 0
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return ["--masks", str(path)]


def _not_a_mask_file(tmp_path: Path) -> list[str]:
    path = tmp_path / "other.pt"
    import torch

    torch.save({"weights": torch.zeros(3)}, path)
    return ["--masks", str(path)]


BAD_INPUTS = {
    "sparsity_1": (lambda tmp: ["--sparsity", "1.0"], "sparsity"),
    "sparsity_negative": (lambda tmp: ["--sparsity", "-0.1"], "sparsity"),
    "sparsity_nan": (lambda tmp: ["--sparsity", "nan"], "sparsity"),
    "sparsity_not_a_number": (lambda tmp: ["--sparsity", "abc"], "abc"),
    "sparsity_missing": (lambda tmp: [], "--sparsity"),
    "unknown_distribution": (lambda tmp: ["--sparsity", "0.9", "--distribution", "nope"], "erk_plus"),
    "unknown_model": (lambda tmp: ["--sparsity", "0.9", "--model", "resnet9000"], "resnet9000"),
    "custom_density_for_missing_layer": (_custom_missing_layer, "nonexistent.weight"),
    "infeasible_budget": (lambda tmp: ["--sparsity", "0.9999", "--distribution", "erk_plus"], "fc.weight"),
    "power_scale_with_uniform": (
        lambda tmp: ["--sparsity", "0.9", "--distribution", "uniform", "--erk-power-scale", "0.5"],
        "erk_power_scale",
    ),
    "missing_custom_file": (
        lambda tmp: ["--sparsity", "0.9", "--distribution", "custom", "--custom", str(tmp / "absent.yaml")],
        "absent.yaml",
    ),
    "custom_without_file": (lambda tmp: ["--sparsity", "0.9", "--distribution", "custom"], "--custom"),
    "corrupt_mask_file": (_corrupt_masks, "random.pt"),
    "empty_mask_file": (_empty_masks, "empty.pt"),
    "truncated_mask_file": (_truncated_masks, "truncated.pt"),
    "not_a_mask_file": (_not_a_mask_file, "other.pt"),
    "missing_mask_file": (lambda tmp: ["--masks", str(tmp / "absent.pt")], "absent.pt"),
    "invalid_include_regex": (lambda tmp: ["--sparsity", "0.9", "--include", "("], "include"),
    "unknown_sampling": (lambda tmp: ["--sparsity", "0.9", "--sampling", "poisson"], "poisson"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_on_stderr(case: str, capsys, tmp_path: Path) -> None:
    make_args, mentioned = BAD_INPUTS[case]
    args = make_args(tmp_path)
    capsys.readouterr()
    model = [] if "--model" in args else ["--model", "resnet20"]
    err = assert_one_line_error(*run(["plan", *model, *args], capsys))
    assert err.startswith("randsparse plan: error: ")
    assert mentioned in err


def test_unknown_distribution_message_lists_every_known_distribution(capsys) -> None:
    err = assert_one_line_error(
        *run(["plan", "--model", "resnet20", "--sparsity", "0.9", "--distribution", "nope"], capsys)
    )
    for name in ("custom", "er", "erk", "erk_plus", "uniform", "uniform_plus"):
        assert name in err


def test_unknown_model_message_lists_known_models(capsys) -> None:
    err = assert_one_line_error(*run(["plan", "--model", "resnet9000", "--sparsity", "0.9"], capsys))
    assert "resnet20" in err and "resnet50" in err


def test_bernoulli_sampling_draws_random_counts_that_depend_on_the_seed(capsys) -> None:
    base = ["--model", "resnet20", "--sparsity", "0.9", "--sampling", "bernoulli"]
    seed0 = plan_json([*base, "--seed", "0"], capsys)
    again = plan_json([*base, "--seed", "0"], capsys)
    seed1 = plan_json([*base, "--seed", "1"], capsys)
    kept0 = [x["kept"] for x in seed0["layers"]]
    assert kept0 == [x["kept"] for x in again["layers"]]  # deterministic
    assert kept0 != [x["kept"] for x in seed1["layers"]]
    assert [x["density"] for x in seed0["layers"]] == [x["density"] for x in seed1["layers"]]
    exact = [round(x["density"] * x["params"]) for x in seed0["layers"]]
    assert kept0 != exact  # counts are not forced to the expectation


def test_seed_does_not_change_exact_counts(capsys) -> None:
    base = ["--model", "resnet20", "--sparsity", "0.9"]
    a = plan_json([*base, "--seed", "0"], capsys)
    b = plan_json([*base, "--seed", "5"], capsys)
    assert [x["kept"] for x in a["layers"]] == [x["kept"] for x in b["layers"]]


def test_include_and_exclude_regexes_select_layers(capsys) -> None:
    base = ["--model", "resnet20", "--sparsity", "0.9"]
    all_names = [x["name"] for x in plan_json(base, capsys)["layers"]]
    included = [x["name"] for x in plan_json([*base, "--include", "layer3"], capsys)["layers"]]
    excluded = [x["name"] for x in plan_json([*base, "--exclude", "shortcut|^fc"], capsys)["layers"]]
    assert included == [n for n in all_names if "layer3" in n]
    assert 0 < len(included) < len(all_names)
    assert excluded == [n for n in all_names if "shortcut" not in n and not n.startswith("fc")]
    assert "fc.weight" not in excluded


def test_erk_power_scale_changes_densities(capsys) -> None:
    base = ["--model", "resnet20", "--sparsity", "0.9", "--distribution", "erk"]
    default = plan_json(base, capsys)
    flatter = plan_json([*base, "--erk-power-scale", "0.5"], capsys)
    d1 = [x["density"] for x in default["layers"]]
    d2 = [x["density"] for x in flatter["layers"]]
    assert d1 != d2
    assert max(d2) - min(d2) < max(d1) - min(d1)  # a smaller power spreads density more evenly
    assert abs(flatter["total"]["kept"] - 0.1 * flatter["total"]["params"]) <= len(d2)


def test_python_dash_m_entry_point_prints_one_error_line_and_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "COLUMNS")}
    proc = subprocess.run(
        [sys.executable, "-m", "randsparse", "plan", "--model", "resnet20", "--sparsity", "1.0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    assert proc.stderr.startswith("randsparse plan: error: sparsity must lie in [0, 1)")
    assert proc.stdout == ""


# ---------------------------------------------------------------------------------------------
# Saliency: *_ratio distributions, --prune (mask mode), --data, --allow-collapse

_SMALL = ["--model", "small_cnn", "--width", "0.25"]


def test_plan_magnitude_ratio_meets_the_budget_and_is_reproducible(capsys) -> None:
    argv = [*_SMALL, "--sparsity", "0.9", "--distribution", "magnitude_ratio"]
    data = plan_json(argv, capsys)
    assert data["distribution"] == "magnitude_ratio" and data["mask_mode"] == "random"
    assert abs(data["total"]["kept"] - 0.1 * data["total"]["params"]) <= 1
    assert len({round(x["density"], 6) for x in data["layers"]}) > 1  # not uniform: the scores decide
    assert plan_json(argv, capsys) == data


def test_plan_prune_keeps_the_top_scores_with_the_ratio_modes_counts(capsys, tmp_path: Path) -> None:
    ratio = plan_json([*_SMALL, "--sparsity", "0.9", "--distribution", "magnitude_ratio"], capsys)
    path = tmp_path / "pruned.pt"
    pruned = plan_json([*_SMALL, "--sparsity", "0.9", "--prune", "magnitude", "--save-masks", str(path)], capsys)
    assert pruned["distribution"] == "magnitude_ratio" and pruned["mask_mode"] == "scores"
    assert [x["kept"] for x in pruned["layers"]] == [x["kept"] for x in ratio["layers"]]
    described = plan_json([*_SMALL, "--masks", str(path)], capsys)
    assert described["mask_mode"] == "scores"
    assert [x["kept"] for x in described["layers"]] == [x["kept"] for x in pruned["layers"]]


def test_plan_table_says_when_the_mask_is_the_top_scores(capsys) -> None:
    code, out, err = run(["plan", *_SMALL, "--sparsity", "0.9", "--prune", "magnitude"], capsys)
    assert code == 0, err
    assert "magnitude_ratio, mask: top scores" in " ".join(out.split())  # the title may wrap


@pytest.mark.parametrize(
    "flags",
    [
        ["--distribution", "snip_ratio", "--score-batches", "2", "--batch-size", "16"],
        ["--prune", "grasp", "--batch-size", "64"],
    ],
    ids=["snip_ratio", "prune_grasp"],
)
def test_plan_scores_on_data_taking_classes_and_channels_from_the_dataset(flags: list[str], capsys) -> None:
    data = plan_json([*_SMALL, "--sparsity", "0.8", "--data", "synthetic", *flags], capsys)
    assert data["layers"][0]["shape"][1] == 1  # synthetic images have one channel
    assert data["layers"][-1]["shape"][0] == 10  # and ten classes
    assert abs(data["total"]["kept"] - 0.2 * data["total"]["params"]) <= 1


def test_plan_snip_can_score_a_xavier_normal_redraw_as_the_papers_code(capsys) -> None:
    argv = [*_SMALL, "--sparsity", "0.8", "--data", "synthetic", "--distribution", "snip_ratio", "--batch-size", "16"]
    own = plan_json(argv, capsys)
    redrawn = plan_json([*argv, "--score-reinit", "xavier_normal"], capsys)
    assert plan_json([*argv, "--score-reinit", "xavier_normal"], capsys) == redrawn
    assert [x["kept"] for x in redrawn["layers"]] != [x["kept"] for x in own["layers"]]
    assert plan_json([*argv, "--score-reinit", "none"], capsys) == own


def test_plan_synflow_ratio_needs_only_the_input_size(capsys) -> None:
    data = plan_json([*_SMALL, "--sparsity", "0.9", "--distribution", "synflow_ratio", "--input-size", "8"], capsys)
    assert abs(data["total"]["kept"] - 0.1 * data["total"]["params"]) <= 1


def test_plan_allow_collapse_lets_layers_empty_and_warns_naming_them(capsys, caplog) -> None:
    argv = ["plan", *_SMALL, "--sparsity", "0.999", "--distribution", "magnitude_ratio", "--format", "json"]
    err = assert_one_line_error(*run(argv, capsys))
    assert "--allow-collapse" in err
    with caplog.at_level(logging.WARNING):
        code, out, _ = run([*argv, "--allow-collapse"], capsys)
    assert code == 0
    layers = json.loads(out)["layers"]
    empty = [x["name"] for x in layers if x["kept"] == 0]
    assert empty and "disconnected" in caplog.text and all(name in caplog.text for name in empty)


SCORE_BAD_INPUTS = {
    "snip_without_data": (["--distribution", "snip_ratio"], "--data"),
    "prune_with_another_distribution": (["--prune", "snip", "--distribution", "erk"], "--distribution erk"),
    "score_batches_with_erk": (["--score-batches", "2"], "--score-batches"),
    "allow_collapse_with_erk": (["--allow-collapse"], "--allow-collapse"),
    "score_reinit_with_erk": (["--score-reinit", "xavier_normal"], "--score-reinit"),
    "score_reinit_with_grasp": (["--prune", "grasp", "--data", "synthetic", "--score-reinit", "none"], "grasp"),
    "score_batches_with_grasp": (["--prune", "grasp", "--data", "synthetic", "--score-batches", "2"], "grasp"),
    "synflow_without_input_shape": (["--distribution", "synflow_ratio"], "input shape"),
    "num_classes_against_the_data": (["--data", "synthetic", "--num-classes", "100"], "--num-classes 100"),
    "unknown_dataset": (["--data", "nodata", "--distribution", "snip_ratio"], "nodata"),
    "unknown_prune_method": (["--prune", "random"], "random"),
    "prune_with_bernoulli": (["--prune", "magnitude", "--sampling", "bernoulli"], "exact"),
    "input_size_and_data": (
        ["--distribution", "synflow_ratio", "--data", "synthetic", "--input-size", "8"],
        "--input-size",
    ),
}


@pytest.mark.parametrize("case", list(SCORE_BAD_INPUTS))
def test_bad_score_flags_exit_2_with_one_line_on_stderr(case: str, capsys) -> None:
    flags, mentioned = SCORE_BAD_INPUTS[case]
    err = assert_one_line_error(*run(["plan", *_SMALL, "--sparsity", "0.9", *flags], capsys))
    assert mentioned in err
