"""Layer-wise density rules: how much of each prunable layer to keep for a global target.

Contract every rule keeps: ``rule(shapes, density, **options) -> {name: density}`` where `shapes`
is ``{layer name: weight shape}`` in the model's registration order and `density` is the target
fraction of prunable weights kept, in (0, 1]. A rule returns a density in [0, 1] for every layer
such that ``sum(density_i * size_i) == density * sum(size_i)`` up to float rounding, raises
`InfeasibleBudgetError` when that cannot be done, and gives the same numbers whatever the order of
`shapes` (sums use `math.fsum`; positional roles such as "first layer" can be named explicitly).
Register a new rule with `@register_distribution("name")`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from randsparse.errors import ConfigError, InfeasibleBudgetError, is_real
from randsparse.registry import Registry, check_options
from randsparse.sparsity.layer_types import weight_layout
from randsparse.sparsity.layers import Shape, names_matching
from randsparse.storage import read_mapping

DensityRule = Callable[..., dict[str, float]]

_RULES: Registry[DensityRule] = Registry("distribution")

# Relative slack when checking a budget identity computed in floating point.
_REL_TOL = 1e-9


def register_distribution(name: str) -> Callable[[DensityRule], DensityRule]:
    """Decorator adding a density rule to the registry under `name`."""
    return _RULES.decorator(name)


def available_distributions() -> list[str]:
    """Names of every registered density rule, sorted."""
    return _RULES.names()


def get_distribution(name: str) -> DensityRule:
    """The density rule registered under `name`."""
    return _RULES[name]


def distribution_options(name: str) -> list[str]:
    """Keyword options accepted by the rule `name` (beyond `shapes` and `density`)."""
    params = inspect.signature(get_distribution(name)).parameters
    return [p for p in params if p not in ("shapes", "density")]


def required_options(name: str) -> list[str]:
    """Options the rule `name` cannot do without (those with no default)."""
    params = inspect.signature(get_distribution(name)).parameters
    return [p for p in distribution_options(name) if params[p].default is inspect.Parameter.empty]


def layer_densities(
    shapes: Mapping[str, Shape], density: float, distribution: str = "erk", **options: Any
) -> dict[str, float]:
    """Per-layer densities from rule `distribution` for global target `density` (kept fraction).

    Validates the inputs, rejects options the rule does not take, and checks the rule's result
    against the contract in this module's docstring before returning it.
    """
    check_density(density)
    if not shapes:
        raise ConfigError("the model has no prunable layers; nothing to sparsify")
    for name, shape in shapes.items():
        if math.prod(shape) == 0:
            raise ConfigError(f"prunable layer {name!r} has no weights (shape {tuple(shape)})")
    rule = get_distribution(distribution)
    check_options(f"distribution {distribution!r}", options, distribution_options(distribution))
    missing = [name for name in required_options(distribution) if name not in options]
    if missing:
        raise ConfigError(f"distribution {distribution!r} needs option(s) {', '.join(missing)}")
    result = rule(dict(shapes), density, **options)
    _check_contract(distribution, shapes, density, result)
    return result


def check_density(density: float) -> None:
    """Reject a target density (fraction kept) outside (0, 1]."""
    if not is_real(density) or not (0.0 < density <= 1.0):
        raise ConfigError(f"target density must lie in (0, 1] (sparsity in [0, 1)), got density {density!r}")


def _sizes(shapes: Mapping[str, Shape]) -> dict[str, int]:
    return {name: math.prod(shape) for name, shape in shapes.items()}


def _check_contract(
    distribution: str, shapes: Mapping[str, Shape], density: float, result: Mapping[str, float]
) -> None:
    if set(result) != set(shapes):
        raise AssertionError(f"{distribution} returned densities for the wrong layers")
    sizes = _sizes(shapes)
    for name, d in result.items():
        if not (0.0 <= d <= 1.0) or math.isnan(d):
            raise AssertionError(f"{distribution} gave layer {name} density {d} outside [0, 1]")
    kept = math.fsum(result[n] * sizes[n] for n in sizes)
    budget = density * math.fsum(sizes.values())
    if abs(kept - budget) > _REL_TOL * budget + 1e-6 * len(sizes) and distribution != "custom":
        raise AssertionError(f"{distribution} kept {kept} weights for a budget of {budget}")


def _uniform_rest_density(budget: float, free: Mapping[str, int], rule: str, fixed: str) -> float:
    """Density shared by the `free` layers so that they hold exactly `budget` weights."""
    total = math.fsum(free.values())
    if total == 0:
        if abs(budget) > 1e-6:
            raise InfeasibleBudgetError(f"{rule}: {fixed} leave no layer to absorb the budget")
        return 0.0
    rest = budget / total
    if rest < -_REL_TOL or rest > 1.0 + _REL_TOL:
        raise InfeasibleBudgetError(f"{rule}: {fixed} need the other layers at density {rest:.6g}")
    return min(max(rest, 0.0), 1.0)


@register_distribution("uniform")
def uniform(shapes: Mapping[str, Shape], density: float) -> dict[str, float]:
    """Every prunable layer at the target density."""
    return {name: float(density) for name in shapes}


@register_distribution("uniform_plus")
def uniform_plus(
    shapes: Mapping[str, Shape],
    density: float,
    first_layer: str | None = None,
    last_layer: str | None = None,
    last_layer_min_density: float = 0.2,
) -> dict[str, float]:
    """First layer dense, last layer at density >= `last_layer_min_density`, the rest uniform.

    The shared density of the other layers (and of the last layer, when above its floor) is solved
    so that the global budget is exact. The paper's code (``sparselearning/core.py``, mode
    ``uniform_plus``) misses the budget both ways: at target density >= 0.2 it keeps every other
    layer at the target, so the dense first layer comes on top and it keeps more than the budget;
    below 0.2 it divides what the dense first layer and the last layer at 0.2 leave by the size of
    the whole model instead of the remaining layers, so it keeps fewer. First and last default to
    the first and last entries of `shapes`.
    """
    names = list(shapes)
    first = _pick_layer(names, first_layer, 0, "first_layer")
    last = _pick_layer(names, last_layer, -1, "last_layer")
    _check_fraction(last_layer_min_density, "last_layer_min_density")
    sizes = _sizes(shapes)
    total = math.fsum(sizes.values())
    budget = density * total
    if first == last and len(names) > 1:
        raise ConfigError(
            f"uniform_plus gives the first layer and the last layer different roles, but both are"
            f" {first!r}; name two different layers with first_layer and last_layer"
        )
    if first == last:
        if density < 1.0:
            raise InfeasibleBudgetError(
                f"uniform_plus keeps the first layer {first!r} dense, and it is the only prunable"
                " layer, so only sparsity 0 is feasible; use 'uniform' instead"
            )
        return {first: 1.0}
    floor = last_layer_min_density
    minimum = sizes[first] + floor * sizes[last]
    if budget < minimum * (1 - _REL_TOL):
        raise InfeasibleBudgetError(
            f"uniform_plus keeps the first layer {first!r} dense and the last layer {last!r} at"
            f" density >= {floor:g}: {minimum:.0f} of {total:.0f} weights, more than the budget"
            f" of {budget:.0f} at sparsity {1 - density:.6g}; the highest feasible sparsity is"
            f" {1 - minimum / total:.6f}"
        )
    rest_sizes = {n: s for n, s in sizes.items() if n not in (first, last)}
    # First try the last layer sharing the common density; fall back to its floor.
    shared = (budget - sizes[first]) / (sizes[last] + math.fsum(rest_sizes.values()))
    densities = {n: shared for n in rest_sizes}
    if shared >= floor:
        last_density = min(shared, 1.0)
    else:
        last_density = floor
        fixed = f"the dense first layer and the last layer at its floor {floor:g}"
        rest = _uniform_rest_density(budget - minimum, rest_sizes, "uniform_plus", fixed)
        densities = {n: rest for n in rest_sizes}
    out = {n: densities.get(n, 0.0) for n in names}
    out[first] = 1.0
    out[last] = last_density
    return out


def _pick_layer(names: list[str], name: str | None, default_index: int, option: str) -> str:
    if name is None:
        return names[default_index]
    if name not in names:
        raise ConfigError(f"{option} {name!r} is not a prunable layer")
    return name


def _check_fraction(value: float, option: str) -> None:
    if not is_real(value) or not (0.0 <= value <= 1.0):
        raise ConfigError(f"{option} must lie in [0, 1], got {value!r}")


def _er_raw(shape: Shape) -> float:
    dims = weight_layout(shape)[:2]  # (out, in / groups), for a transposed conv too
    return sum(dims) / math.prod(dims)


def _erk_raw(shape: Shape, power_scale: float) -> float:
    layout = weight_layout(shape)
    return (sum(layout) / math.prod(layout)) ** power_scale


def _check_power_scale(value: float) -> None:
    if not is_real(value) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"erk_power_scale must be a finite number >= 0 (1 is ERK, 0 is uniform), got {value!r}")


def _scaled_densities(raw: Mapping[str, float], sizes: Mapping[str, int], budget: float) -> dict:
    """Densities ``min(1, eps * raw)`` holding exactly `budget` weights (RigL's overflow rule).

    While the largest scaled density exceeds 1, every layer holding that largest raw value
    becomes dense and eps is solved again for the others. Each round only raises eps, so a layer
    made dense stays above 1 and the result is the unique water-filling solution.
    """
    dense: set[str] = set()
    while True:
        free = [n for n in raw if n not in dense]
        rhs = budget - math.fsum(sizes[n] for n in dense)
        if not free:
            break
        divisor = math.fsum(raw[n] * sizes[n] for n in free)
        if not (math.isfinite(divisor) and divisor > 0):
            raise ConfigError(
                "the layer-wise ratios underflow to 0 (or overflow) in floating point; use a smaller erk_power_scale"
            )
        eps = rhs / divisor
        largest = max(raw[n] for n in free)
        if eps * largest <= 1.0:
            break
        dense.update(n for n in free if raw[n] == largest)
    return {n: 1.0 if n in dense else eps * raw[n] for n in raw}


@register_distribution("er")
def er(shapes: Mapping[str, Shape], density: float) -> dict[str, float]:
    """Erdős–Rényi: density proportional to (n_out + n_in) / (n_out * n_in).

    n_out and n_in are the first two dims of the weight in a Conv's layout (out, in / groups), so a
    transposed conv is read the same way as the conv it mirrors (`weight_layout`).
    """
    sizes = _sizes(shapes)
    raw = {n: _er_raw(s) for n, s in shapes.items()}
    return _scaled_densities(raw, sizes, density * math.fsum(sizes.values()))


@register_distribution("erk")
def erk(shapes: Mapping[str, Shape], density: float, erk_power_scale: float = 1.0) -> dict:
    """Erdős–Rényi-Kernel: density proportional to (sum of dims / product of dims) ** power.

    The dims are the weight's in a Conv's layout (out, in / groups, *kernel) (`weight_layout`).
    """
    _check_power_scale(erk_power_scale)
    sizes = _sizes(shapes)
    raw = {n: _erk_raw(s, erk_power_scale) for n, s in shapes.items()}
    return _scaled_densities(raw, sizes, density * math.fsum(sizes.values()))


@register_distribution("erk_plus")
def erk_plus(
    shapes: Mapping[str, Shape],
    density: float,
    classifier_density: float = 1.0,
    classifier: str | None = None,
    erk_power_scale: float = 1.0,
) -> dict[str, float]:
    """ERK on every layer but the classifier, which is held at `classifier_density`.

    The classifier defaults to the last entry of `shapes`; the ERK layers absorb the rest of the
    budget exactly.
    """
    _check_power_scale(erk_power_scale)
    names = list(shapes)
    head = _pick_layer(names, classifier, -1, "classifier")
    _check_fraction(classifier_density, "classifier_density")
    sizes = _sizes(shapes)
    total = math.fsum(sizes.values())
    budget = density * total
    rest_budget = budget - classifier_density * sizes[head]
    rest = {n: s for n, s in shapes.items() if n != head}
    rest_total = math.fsum(sizes[n] for n in rest)
    if rest_budget < -_REL_TOL * budget:
        raise InfeasibleBudgetError(
            f"erk_plus keeps the classifier {head!r} at density {classifier_density:g}"
            f" ({classifier_density * sizes[head]:.0f} weights), more than the budget of"
            f" {budget:.0f} weights at sparsity {1 - density:.6g}; the highest feasible sparsity"
            f" is {1 - classifier_density * sizes[head] / total:.6f}, or lower the classifier"
            " density"
        )
    if rest_budget > rest_total * (1 + _REL_TOL):
        lowest = 1 - (rest_total + classifier_density * sizes[head]) / total
        raise InfeasibleBudgetError(
            f"erk_plus holds the classifier {head!r} at density {classifier_density:g}, so even"
            f" with every other layer dense the sparsity is at least {lowest:.6f}; ask for that"
            " much sparsity or raise the classifier density"
        )
    out = dict.fromkeys(names, 0.0)
    if rest and rest_budget > 0:
        raw = {n: _erk_raw(s, erk_power_scale) for n, s in rest.items()}
        out.update(_scaled_densities(raw, {n: sizes[n] for n in rest}, min(rest_budget, rest_total)))
    out[head] = float(classifier_density)
    return out


@register_distribution("custom")
def custom(shapes: Mapping[str, Shape], density: float, densities: Mapping[str, float]) -> dict[str, float]:
    """Densities pinned per layer by exact name or full-match regex; the others share the rest.

    An exact name beats a regex; a layer matched by two regexes with different values, a key that
    matches no layer, or a pinned set that misses the global budget is an error.
    """
    names = list(shapes)
    pinned = resolve_custom_densities(names, densities)
    sizes = _sizes(shapes)
    total = math.fsum(sizes.values())
    budget = density * total
    pinned_kept = math.fsum(pinned[n] * sizes[n] for n in pinned)
    free = {n: sizes[n] for n in names if n not in pinned}
    if not free:
        if abs(pinned_kept - budget) > len(names):
            raise InfeasibleBudgetError(
                f"the custom densities pin every layer and give sparsity"
                f" {1 - pinned_kept / total:.6f}, not the requested {1 - density:.6g}; ask for"
                f" sparsity {1 - pinned_kept / total:.6f} or leave some layers out to absorb the"
                " difference"
            )
        return {n: pinned[n] for n in names}
    try:
        rest = _uniform_rest_density(budget - pinned_kept, free, "custom", "the pinned layers")
    except InfeasibleBudgetError:
        lo = 1 - (pinned_kept + math.fsum(free.values())) / total
        hi = 1 - pinned_kept / total
        raise InfeasibleBudgetError(
            f"the custom densities pin {len(pinned)} layer(s) so that the global sparsity can only"
            f" lie in [{lo:.6f}, {hi:.6f}]; the requested {1 - density:.6g} is outside it"
        ) from None
    return {n: pinned.get(n, rest) for n in names}


def resolve_custom_densities(names: list[str], densities: Mapping[str, float]) -> dict[str, float]:
    """Expand `densities` (keys: exact layer names or regexes) to ``{layer: density}``."""
    exact: dict[str, float] = {}
    by_regex: dict[str, tuple[str, float]] = {}
    for key, value in densities.items():
        if not is_real(value):
            raise ConfigError(f"custom density for {key!r} must be a number, got {value!r}")
        if not (0.0 <= value <= 1.0):
            raise ConfigError(f"custom density for {key!r} must lie in [0, 1], got {value!r}")
        matched = names_matching(names, key)
        if not matched:
            preview = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ConfigError(f"custom density given for {key!r}, which matches no prunable layer (layers: {preview})")
        if matched == [key]:
            exact[key] = float(value)
            continue
        for name in matched:
            if name in by_regex and by_regex[name][1] != value:
                raise ConfigError(
                    f"layer {name!r} is matched by custom keys {by_regex[name][0]!r} and {key!r}"
                    " with different densities"
                )
            by_regex[name] = (key, float(value))
    out = {name: value for name, (_, value) in by_regex.items()}
    out.update(exact)
    return out


def load_custom_densities(path: str | Path) -> dict[str, float]:
    """Read per-layer densities from a YAML or JSON file.

    The file holds one top-level key, ``density`` or ``sparsity``, mapping layer names or regexes
    to values, so a file can never be read in the wrong vocabulary; sparsities are turned into
    densities here.
    """
    path = Path(path)
    data = read_mapping(path, "custom density file")
    if len(data) != 1 or next(iter(data)) not in ("density", "sparsity"):
        raise ConfigError(
            f"custom density file {str(path)!r} must hold exactly one top-level key, 'density' or"
            " 'sparsity', mapping layer names or regexes to numbers"
        )
    ((kind, mapping),) = data.items()
    if not isinstance(mapping, dict):
        raise ConfigError(f"'{kind}' in {str(path)!r} must map layer names or regexes to numbers")
    out: dict[str, float] = {}
    for key, value in mapping.items():
        if not is_real(value):
            raise ConfigError(f"{kind} for {key!r} in {str(path)!r} must be a number, got {value!r}")
        if not (0.0 <= value <= 1.0):
            raise ConfigError(f"{kind} for {key!r} in {str(path)!r} must lie in [0, 1], got {value}")
        out[str(key)] = float(value) if kind == "density" else 1.0 - float(value)
    return out
