"""`EvalConfig`: which evaluations to run after training or on a finished run, validated.

The training config embeds it as its ``eval:`` section and ``randsparse eval`` builds it from its
flags; one definition serves both. List options accept a list or a comma-separated string, and
each ε may be written as a fraction (``8/255``), so CLI values pass straight through.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from randsparse.errors import ConfigError, is_real, validation_message
from randsparse.schema import INT64_MAX, MAX_BATCH, SECTION, registered, resolvable


def _ood_scores() -> list[str]:
    from randsparse.evaluate.ood import available_ood_scores

    return available_ood_scores()


OodScoreName = Annotated[str, registered("OOD score", _ood_scores)]
OodSetName = Annotated[str, resolvable("randsparse.data.registry", "get_entry")]  # plugins too


def _split(value: Any) -> Any:
    """``"a,b"`` → ``["a", "b"]``; a single number becomes a one-item list; lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if is_real(value):
        return [value]
    return value


def _epsilon(value: Any) -> float:
    """A number, or a string such as ``"0.03"`` or ``"8/255"``, as a float."""
    if isinstance(value, str):
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"not a number or fraction: {value!r}") from None
    if not is_real(value):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _unique(values: list[Any]) -> list[Any]:
    """`values` without repeats, first occurrence kept (so result keys are not computed twice).

    Items that are not names (a mapping, a list) are left for the field's validation to refuse.
    """
    if not all(isinstance(v, str) for v in values):
        return values
    return list(dict.fromkeys(values))


class EvalConfig(BaseModel):
    """Options of one evaluation; accuracy (top-1, and top-5 with more than 5 classes) is always computed."""

    model_config = SECTION

    calibration: bool = Field(default=True, description="ECE, MCE, NLL and Brier score on the test set")
    bins: int = Field(default=15, ge=1, le=1000, description="equal-width confidence bins of ECE/MCE")
    reliability_diagram: bool = Field(default=True, description="write reliability.png when an output dir is given")
    ood: list[str] = Field(
        default_factory=list,
        description="OOD sets by name, e.g. mnist,gaussian: keys of `ood_data` for `evaluate.run`; registered"
        " dataset names in a run's config (`RunEvalConfig`)",
    )
    ood_scores: list[OodScoreName] = Field(
        default_factory=lambda: ["msp", "max_logit", "energy"], min_length=1, description="OOD scores to compute"
    )
    energy_temperature: float = Field(default=1.0, gt=0, description="temperature T of the energy score")
    fgsm: list[float] = Field(default_factory=list, description="FGSM ε list in [0, 1] pixel units")
    pgd: list[float] = Field(default_factory=list, description="PGD (L∞) ε list in [0, 1] pixel units")
    pgd_steps: int = Field(default=10, ge=1, le=10_000, description="PGD iterations")
    pgd_step_size: float | None = Field(
        default=None, gt=0, le=1, description="PGD step in pixel units; default 2.5·ε/steps (Madry et al.)"
    )
    pgd_random_start: bool = Field(default=True, description="start PGD at a uniform point of the ε-ball")
    attack_max_images: int | None = Field(
        default=1000,
        ge=1,
        le=INT64_MAX,
        description="attack a seeded random subset of this many test images (None: all; an int64)",
    )
    ood_max_images: int | None = Field(
        default=None,
        ge=1,
        le=INT64_MAX,
        description="score a seeded random subset of at most this many images of each OOD set (None: all; an"
        " int64); AUROC and FPR95 then compare the whole test set with that subset",
    )
    batch_size: int = Field(
        default=256, ge=1, le=MAX_BATCH, description=f"batch size of every evaluation pass, at most {MAX_BATCH}"
    )
    seed: int = Field(
        default=0, ge=0, le=INT64_MAX, description="seeds the attacked subset, the OOD subsets and PGD's random start"
    )

    @field_validator("ood", "ood_scores", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        value = _split(value)
        return _unique(value) if isinstance(value, list) else value

    @field_validator("fgsm", "pgd", mode="before")
    @classmethod
    def _epsilons(cls, value: Any) -> Any:
        value = _split(value)
        if not isinstance(value, list):
            return value
        epsilons: dict[str, float] = {}
        for eps in (_epsilon(v) for v in value):
            epsilons.setdefault(format_eps(eps), eps)  # one entry per result key
        for eps in epsilons.values():
            if not 0.0 <= eps <= 1.0:
                raise ValueError(f"ε must lie in [0, 1] (pixel units), got {eps:g}")
        return list(epsilons.values())

    @model_validator(mode="after")
    def _ood_names_are_plain(self) -> EvalConfig:
        for name in self.ood:
            if not name or "." in name:
                raise ValueError(f"OOD set name {name!r} must be non-empty and contain no '.' (it becomes a key)")
        return self

    @property
    def attacks(self) -> bool:
        """True when any adversarial evaluation is asked for."""
        return bool(self.fgsm or self.pgd)

    def step_size(self, eps: float) -> float:
        """The PGD step for `eps`: the configured one, else 2.5·ε/steps."""
        return self.pgd_step_size if self.pgd_step_size is not None else 2.5 * eps / self.pgd_steps


class RunEvalConfig(EvalConfig):
    """The evaluation of a run (its config's ``eval:`` section, `randsparse eval`): the OOD sets are
    built from the dataset registry, so their names must be registered datasets."""

    ood: list[OodSetName] = Field(
        default_factory=list, description="OOD sets (registered dataset names), e.g. mnist,gaussian"
    )
    ood_if_present: list[OodSetName] = Field(
        default_factory=list,
        description="OOD sets evaluated only when their files are found (never downloaded), e.g. mnist",
    )

    @field_validator("ood_if_present", mode="before")
    @classmethod
    def _optional_names(cls, value: Any) -> Any:
        value = _split(value)
        return _unique(value) if isinstance(value, list) else value


def eval_config(data: EvalConfig | dict[str, Any] | None = None, **overrides: Any) -> EvalConfig:
    """Validate a mapping (e.g. a training config's ``eval:`` section) into an `EvalConfig`.

    The result is of `data`'s class when `data` is one (a run's `RunEvalConfig` stays one, so its
    OOD names are checked against the registry), else an `EvalConfig`. Every problem is named in
    one `ConfigError`, so the CLI prints one line.
    """
    kind = type(data) if isinstance(data, EvalConfig) else EvalConfig
    base = data.model_dump() if isinstance(data, EvalConfig) else dict(data or {})
    try:
        return kind.model_validate({**base, **overrides})
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "eval options")) from None


def format_eps(eps: float) -> str:
    """The key form of an ε (``0.03``, ``0.0313725``): what ``adv.fgsm.<eps>`` uses."""
    return f"{eps:g}"
