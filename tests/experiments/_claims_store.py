"""A synthetic study store with several seeds and known numbers for every claim of the paper."""

from __future__ import annotations

from pathlib import Path

from randsparse.experiments import ResultsStore

WIDTHS = (0.5, 1.0, 2.0)
SPARSITIES = (0.5, 0.9)
SEEDS = (0, 1, 2)
SEED_NOISE = {0: -0.002, 1: 0.0, 2: 0.002}  # the same on every run of a seed: paired differences are exact


def gap(width: float, sparsity: float, distribution: str, flip: bool = False) -> float:
    """Sparse − dense accuracy: shrinks with width (grows with it when `flip`), uniform worse than ERK."""
    penalty = 0.08 if distribution == "uniform" else 0.04
    size = (1 / width) if not flip else width
    if flip and distribution == "uniform":
        penalty = 0.02  # flipped: uniform beats ERK too
    return -penalty * sparsity * size


def metrics(width: float, sparsity: float, distribution: str, seed: int, flip: bool = False) -> dict:
    """Summary metrics of one run; with `flip` every claim's trend is reversed."""
    dense = sparsity == 0
    accuracy = 0.85 + 0.02 * width + SEED_NOISE[seed] + (0.0 if dense else gap(width, sparsity, distribution, flip))
    sign = 0.0 if dense else (-1.0 if flip else 1.0)
    seed_spread = 0.001 * seed  # a seed-dependent part that differs between sparse and dense: a real std
    return {
        "test_accuracy": accuracy + (0.0 if dense else seed_spread),
        "eval": {
            "ece": 0.05 - sign * 0.02,
            "nll": 0.40 - sign * 0.05,
            "ood": {"digits": {"msp": {"auroc": 0.90 + sign * 0.03 + (0.0 if dense else seed_spread)}}},
            "adv": {"fgsm": {"0.05": 0.40 + sign * 0.04}},
        },
    }


def spec(width: float, sparsity: float, distribution: str, seed: int) -> dict:
    return {
        "data": {"name": "synthetic"},
        "model": {"name": "small_cnn", "width": width, "depth": None},
        "sparsity": {"sparsity": sparsity, "distribution": distribution},
        "seed": seed,
    }


def claims_store(path: Path, flip: bool = False, seeds: tuple[int, ...] = SEEDS, name: str = "toy") -> ResultsStore:
    """Widths × (dense + ERK/uniform × sparsities) × seeds, every run done with `metrics`."""
    store = ResultsStore(path)
    specs, values = [], {}
    for seed in seeds:
        for width in WIDTHS:
            points = [(0.0, "erk")] + [(s, d) for s in SPARSITIES for d in ("erk", "uniform")]
            for sparsity, distribution in points:
                run_id = f"w{width}-s{sparsity}-{distribution}-{seed}"
                specs.append((run_id, spec(width, sparsity, distribution, seed), {}))
                values[run_id] = metrics(width, sparsity, distribution, seed, flip)
    store.sync(specs, {"name": name, "description": "a synthetic study"})
    while (row := store.claim("h:1")) is not None:
        store.finish(row.id, "done", values[row.id])
    return store
