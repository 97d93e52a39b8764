"""Config schema: names checked against their registries, strict machine-sized values, options that apply."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from torch import nn

from randsparse.cli import build_parser
from randsparse.errors import ConfigError
from randsparse.models import registry as model_registry
from randsparse.sparsity import distributions, saliency
from randsparse.sparsity.saliency import registry as scorer_registry
from randsparse.train import optim
from randsparse.train.config import TrainConfig, apply_overrides, build_config, load_config
from tests._cli import run
from tests.train._runs import SYNTHETIC

BASE: dict[str, Any] = {"model": {"name": "small_cnn", "width": 0.25}, "data": dict(SYNTHETIC), "device": "cpu"}


def _one_config_error(overrides: list[str], base: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(apply_overrides(base or BASE, overrides))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- names: whatever is registered from Python is accepted from YAML and the command line ---------


@pytest.fixture
def private_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registries whose additions vanish after the test."""
    monkeypatch.setattr(scorer_registry, "_SCORERS", scorer_registry._SCORERS.copy())
    monkeypatch.setattr(distributions, "_RULES", distributions._RULES.copy())
    monkeypatch.setattr(model_registry, "_BUILDERS", model_registry._BUILDERS.copy())
    monkeypatch.setattr(optim, "_OPTIMIZERS", optim._OPTIMIZERS.copy())
    monkeypatch.setattr(optim, "_SCHEDULES", optim._SCHEDULES.copy())


def _register_extensions() -> None:
    @saliency.register_scorer("py_weight", needs_data=False)
    def py_weight(inputs: saliency.ScoringInput) -> dict[str, torch.Tensor]:
        return {name: w.detach().abs() for name, w in inputs.weights.items()}

    @model_registry.register_model("py_net")
    def py_net(num_classes: int = 10, in_channels: int = 3, hidden: int = 8) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    @optim.register_optimizer("py_sgd", options=("momentum",))
    def py_sgd(groups: list[dict], config: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)

    optim.register_schedule("py_constant", options=("warmup_epochs",))(optim._lambda_schedule)


def test_entries_registered_from_python_are_accepted_in_yaml(private_registries, tmp_path: Path) -> None:
    _register_extensions()
    path = tmp_path / "run.yaml"
    data = {
        **BASE,
        "model": {"name": "py_net", "options": {"hidden": 4}},
        "sparsity": {"sparsity": 0.5, "prune": "py_weight"},
        "optim": {"name": "py_sgd", "momentum": 0.5},
        "schedule": {"name": "py_constant"},
    }
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    assert (config.model.name, config.sparsity.distribution, config.optim.name) == (
        "py_net",
        "py_weight_ratio",
        "py_sgd",
    )
    assert isinstance(optim.build_optimizer(nn.Linear(2, 2), config.optim), torch.optim.SGD)


def test_entries_registered_from_python_are_accepted_on_the_command_line(
    private_registries, tmp_path: Path, capsys
) -> None:
    _register_extensions()
    code, _, err = run(
        ["plan", "--model", "small_cnn", "--width", "0.25", "--sparsity", "0.5", "--prune", "py_weight"], capsys
    )
    assert code == 0, err
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**BASE, "epochs": 0}))  # epochs=0: fails after the names were accepted
    code, _, err = run(
        ["train", "--config", str(config), "--out", str(tmp_path / "o"), "sparsity=0.5", "sparsity.prune=py_weight"],
        capsys,
    )
    assert code == 2 and "epochs" in err and "py_weight" not in err


@pytest.mark.parametrize(
    ("override", "kind"),
    [
        ("model.name=nonet", "model"),
        ("data.name=nodata", "dataset"),
        ("sparsity.distribution=nope", "distribution"),
        ("sparsity.prune=nope", "scorer"),
        ("sparsity.sampling=nope", "sampling mode"),
        ("optim.name=rmsprop", "optimizer"),
        ("schedule.name=linear", "schedule"),
        ("distributed.backend=mpi", "distributed backend"),
        ("eval.ood_scores=[odin]", "OOD score"),
        ("eval.ood=[nodata]", "dataset"),
    ],
)
def test_unknown_names_are_one_line_listing_the_known_ones(override: str, kind: str) -> None:
    message = _one_config_error([override])
    assert f"unknown {kind} " in message and "; known: " in message


# --- options that do not apply are refused ------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        ["schedule.name=onecycle", "schedule.milestones=[1]"],
        ["schedule.name=onecycle", "schedule.warmup_epochs=1"],
        ["schedule.name=cosine", "schedule.gamma=0.5"],
        ["schedule.name=multistep", "schedule.min_lr=0.01"],
        ["schedule.name=constant", "schedule.pct_start=0.5"],
        ["optim.name=adam", "optim.momentum=0.5"],
        ["optim.name=adamw", "optim.nesterov=true"],
        ["optim.name=sgd", "optim.betas=[0.5, 0.5]"],
        ["sparsity.distribution=erk", "sparsity.custom_file=x.yaml"],
        ["sparsity.distribution=erk", "sparsity.options.classifier_density=0.5"],
        ["sparsity.distribution=snip_ratio", "sparsity.score_options.bogus=1"],
        ["model.options.bogus=1"],
        ["data.options.bogus=1"],
    ],
)
def test_options_that_do_not_apply_are_refused(overrides: list[str]) -> None:
    message = _one_config_error(overrides)
    assert "does not" in message or "applies to" in message


def test_options_at_their_defaults_are_accepted_so_dumped_configs_reload() -> None:
    config = build_config(apply_overrides(BASE, ["optim.name=adam", "schedule.name=onecycle"]))
    again = build_config(config.model_dump(mode="json"))
    assert again == config


# --- value kinds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        'sparsity.options.classifier_density="0.5"',  # issue 13 fault 8: was a TypeError traceback
        "sparsity.options.densities=[0.5, 0.5]",
        "sparsity.options.erk_power_scale=true",
        "epochs=true",
        "seed=true",
        "optim.lr=true",
        'optim.lr="0.1"',
        "data.eval_batch_size=99999999999999999999",  # issue 13 fault 10
        "data.batch_size=100000000",
        "model.width=1.0e308",
        "seed=9223372036854775808",
        "optim.lr=.inf",
        "schedule.min_lr=.nan",
        "distributed.timeout_s=1.0e300",
        "optim.betas=[true, 0.9]",
    ],
)
def test_wrong_kinds_and_huge_values_are_one_config_error(override: str) -> None:
    base = {**BASE, "sparsity": {"sparsity": 0.5, "distribution": "erk_plus"}}
    if "densities" in override:
        base = {**BASE, "sparsity": {"sparsity": 0.5, "distribution": "custom"}}
    _one_config_error([override], base)


def _leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf key of a config model, dotted, with its annotation (nested sections walked)."""
    out: list[tuple[str, Any]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _leaves(annotation, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", annotation))
    return out


def _kinds(annotation: Any) -> set[type]:
    """The plain Python types an annotation admits (None dropped)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(arg) for arg in typing.get_args(annotation) if arg is not type(None)))
    if origin is typing.Literal:
        return {type(typing.get_args(annotation)[0])}
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    return {origin or annotation}


# YAML texts of values that are wrong for a key of each kind (every number field is >= 0; the
# int fields are bounded by what the machine holds).
_HUGE = "9" * 30
_WRONG: dict[type, list[str]] = {
    int: ["true", '"3"', "0.5", ".nan", ".inf", _HUGE, f"-{_HUGE}", "{a: 1}", "[1]"],
    float: ["true", '"0.5"', ".nan", ".inf", "-.inf", f"-{_HUGE}", "{a: 1}", "[1]"],
    bool: ["1", '"true"', "0.5", "{a: 1}", "[true]"],
    str: ["1", "true", "0.5", "{a: 1}", "[a]"],
    dict: ["1", "true", "abc", "[1]"],
    list: ["true", "{a: 1}", "[.nan]", "[{a: 1}]"],
    tuple: ["true", "{a: 1}", "[.nan, .inf]", "[0.5]"],
}


def _kind(annotation: Any) -> type:
    """The one kind a key is tested as: a number where a union admits one (e.g. ``"dynamic" | float``)."""
    kinds = _kinds(annotation)
    # A number where a union admits one, then a bool (``true | "backend name"``): never an arbitrary pick.
    return next((k for k in (float, int, bool) if k in kinds), None) or kinds.pop()


_KEYS = [(key, _kind(annotation)) for key, annotation in _leaves(TrainConfig)]


def test_every_config_key_is_walked_and_of_one_known_kind() -> None:
    keys = [key for key, _ in _KEYS]
    assert len(keys) == len(set(keys))
    assert {
        "data.eval_batch_size",
        "optim.betas",
        "schedule.milestones",
        "eval.pgd_steps",
        "distributed.backend",
    } <= set(keys)
    assert all(kind in _WRONG for _, kind in _KEYS)


@pytest.mark.parametrize(("key", "kind"), _KEYS, ids=[key for key, _ in _KEYS])
def test_every_config_key_refuses_wrong_kinds_in_one_line(key: str, kind: type) -> None:
    for text in _WRONG[kind]:
        data = apply_overrides(BASE, [f"{key}={text}"])
        try:
            build_config(data)
        except ConfigError as exc:
            assert "\n" not in str(exc), (key, text)
        else:
            raise AssertionError(f"{key}={text} was accepted")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choice=st.sampled_from([(key, text) for key, kind in _KEYS for text in _WRONG[kind]]))
def test_train_command_refuses_every_wrong_value_in_one_line_writing_nothing(
    tmp_path_factory: pytest.TempPathFactory, capsys, choice: tuple[str, str]
) -> None:
    key, text = choice
    folder = tmp_path_factory.mktemp("train")
    config = folder / "c.yaml"
    config.write_text(yaml.safe_dump(BASE))
    code, _, err = run(["train", "--config", str(config), "--out", str(folder / "out"), f"{key}={text}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, (key, text, err)
    assert [p.name for p in folder.iterdir()] == ["c.yaml"]


# --- command-line flags --------------------------------------------------------------------------

# What each subcommand needs besides the flag under test (the flag fails while parsing).
_REQUIRED = {
    "plan": ["--model", "small_cnn"],
    "bench": ["--model", "small_cnn", "--sparsity", "0.5"],
    "eval": ["RUN"],
    "study": ["S.yaml"],
    "train": [],
    "export": ["RUN"],
}
_FLAG_WRONG = {
    "int": ["true", "abc", "0.5", "nan", "inf", "1e400", _HUGE, f"-{_HUGE}", "[1]"],
    "float": ["true", "abc", "nan", "inf", "-inf", "1e400", "[1]", "{}"],
}


def _numeric_flags() -> list[tuple[str, str, str]]:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    flags = []
    for name, sub in commands.choices.items():
        for action in sub._actions:
            kind = getattr(action.type, "__name__", None)
            if action.option_strings and kind in ("int", "float", "parse"):
                flags.append((name, action.option_strings[-1], "float" if kind == "float" else "int"))
    return flags


_FLAGS = _numeric_flags()


def test_every_numeric_flag_is_a_bounded_type() -> None:
    assert {("plan", "--width"), ("bench", "--batch"), ("bench", "--threads"), ("eval", "--batch-size")} <= {
        (c, f) for c, f, _ in _FLAGS
    }
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    raw = [(n, a.option_strings) for n, s in commands.choices.items() for a in s._actions if a.type in (int, float)]
    assert raw == []  # plain int/float accept 1e308 widths and 10**8 batches


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_numeric_flags_refuse_wrong_values_in_one_line_writing_nothing(
    tmp_path_factory: pytest.TempPathFactory, capsys, data: st.DataObject
) -> None:
    command, flag, kind = data.draw(st.sampled_from(_FLAGS))
    text = data.draw(st.sampled_from(_FLAG_WRONG[kind]))
    folder = tmp_path_factory.mktemp("flags")
    argv = [command, *(str(folder / a) if a in ("RUN", "S.yaml") else a for a in _REQUIRED[command])]
    code, _, err = run([*argv, f"{flag}={text}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, (command, flag, text, err)
    assert list(folder.iterdir()) == []


def test_huge_values_on_the_command_line_name_the_flag(capsys) -> None:
    for argv, flag in [
        (["plan", "--model", "small_cnn", "--width", "1e308"], "--width"),
        (["bench", "--model", "small_cnn", "--sparsity", "0.5", "--batch", "100000000"], "--batch"),
    ]:
        code, _, err = run(argv, capsys)
        assert code == 2 and flag in err and len(err.strip().splitlines()) == 1


# --- studies check every run before starting any -------------------------------------------------


@pytest.mark.parametrize(
    "grid",
    [
        {"sparsity.distribution": ["erk_plus"], "sparsity.options.classifier_density": ["abc"]},
        {"sparsity.distribution": ["custom"], "sparsity.options.densities": [[0.5, 0.5]]},
        {"optim.lr": [0.1, True]},
        {"data.batch_size": [32, 100000000]},
    ],
)
def test_a_study_with_one_bad_run_fails_before_any_run_writing_nothing(tmp_path: Path, capsys, grid) -> None:
    from tests.experiments._studies import write_study

    study = write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5], **grid})
    out = tmp_path / "out"
    code, _, err = run(["study", str(study), "--out", str(out), "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
