"""`EvalConfig`: defaults, list and fraction parsing, validated ranges, unknown keys refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from randsparse.errors import ConfigError
from randsparse.evaluate import EvalConfig, eval_config, format_eps


def test_defaults_compute_calibration_only() -> None:
    config = EvalConfig()
    assert config.calibration and config.bins == 15
    assert config.ood == [] and config.fgsm == [] and config.pgd == []
    assert not config.attacks


def test_lists_accept_comma_separated_strings_and_fractions() -> None:
    config = EvalConfig(ood="mnist, gaussian", fgsm="0.01,8/255", pgd=0.03, ood_scores="energy")
    assert config.ood == ["mnist", "gaussian"]
    assert config.fgsm == [0.01, 8 / 255]
    assert config.pgd == [0.03]
    assert config.ood_scores == ["energy"]
    assert config.attacks


def test_repeated_values_are_kept_once() -> None:
    config = EvalConfig(ood=["mnist", "mnist"], fgsm=["0.5", 0.5, "1/2"])
    assert config.ood == ["mnist"]
    assert config.fgsm == [0.5]


@pytest.mark.parametrize(
    "options",
    [
        {"fgsm": [1.5]},
        {"pgd": "-0.1"},
        {"fgsm": "abc"},
        {"fgsm": "1/0"},
        {"bins": 0},
        {"pgd_steps": 0},
        {"pgd_step_size": 0},
        {"attack_max_images": 0},
        {"batch_size": 0},
        {"energy_temperature": 0},
        {"ood_scores": ["odin"]},
        {"ood_scores": []},
        {"ood": ["cifar.10"]},
        {"unknown_option": 1},
    ],
)
def test_out_of_range_or_unknown_options_are_refused(options: dict) -> None:
    with pytest.raises(ValidationError):
        EvalConfig(**options)
    with pytest.raises(ConfigError, match="invalid eval options"):
        eval_config(options)


def test_eval_config_names_the_offending_key_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        eval_config({"fgsm": [2.0], "colour": "red"})
    message = str(info.value)
    assert "fgsm" in message and "colour: unknown key" in message and "\n" not in message


def test_eval_config_applies_overrides_to_a_section() -> None:
    config = eval_config({"fgsm": [0.01]}, pgd="0.03", calibration=False)
    assert config.fgsm == [0.01] and config.pgd == [0.03] and not config.calibration
    assert eval_config(config, bins=10).bins == 10


def test_pgd_step_size_defaults_to_two_and_a_half_eps_over_steps() -> None:
    assert EvalConfig(pgd_steps=10).step_size(0.04) == pytest.approx(0.01)
    assert EvalConfig(pgd_step_size=0.002).step_size(0.04) == 0.002


def test_eps_keys_are_short_and_stable() -> None:
    assert format_eps(0.03) == "0.03"
    assert format_eps(8 / 255) == "0.0313725"
    assert format_eps(0.0) == "0"
