"""`randsparse train` end to end on Fashion-MNIST: dense vs masked dense vs the sparse engine, images/s and accuracy.

Target (issue 15): ResNet-20 ×4, 95 % ERK, 1 epoch: the sparse engine's run (``engine: auto``)
trains at >= 1.4× the dense run's images/s, and its test accuracy is within noise of the masked
dense engine's (same seed, same masks: the two differ by float32 rounding only; "within noise" is
taken as at most 1 point). Each variant is one real CLI run (``python -m randsparse train``) in a
subprocess; with ``--repeats`` > 1 the variants alternate and the medians are compared. The
images/s are the training epoch's, as ``fit`` records them in ``metrics.jsonl`` (evaluation and
start-up excluded). ``--subset`` trains on part of the 60 000 images (the epoch is then shorter,
the rates comparable).

    python benchmarks/train_end_to_end.py [--subset 10000] [--repeats 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _verdict import verdict

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
VARIANTS = {"dense": ["sparsity=0"], "masked": ["engine=dense"], "auto": ["engine=auto"]}
NOISE_POINTS = 1.0


def _train(out: Path, args: argparse.Namespace, extra: list[str]) -> tuple[float, float]:
    overrides = [
        "model.name=resnet20", f"model.width={args.width}", f"sparsity={args.sparsity}", "sparsity.distribution=erk",
        "epochs=1", "eval=false", f"seed={args.seed}",
    ]  # fmt: skip
    if args.subset:
        overrides.append(f"data.subset={args.subset}")
    command = [
        sys.executable, "-m", "randsparse", "train", "--config", str(ROOT / "configs/fmnist-quick.yaml"),
        "--out", str(out), *overrides, *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    return row["images_per_second"], summary["test_accuracy"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=None, help="training images (default: all 60 000)")
    parser.add_argument("--width", type=float, default=4.0)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not FMNIST.is_dir():
        print(f"Fashion-MNIST not found in {FMNIST} (apt-get install dataset-fashion-mnist)", file=sys.stderr)
        return 2
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    accuracy: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            names = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
            for name in names:
                rate, acc = _train(Path(tmp) / f"{name}-{repeat}", args, VARIANTS[name])
                rates[name].append(rate)
                accuracy[name] = acc
    median = {name: statistics.median(values) for name, values in rates.items()}
    images = args.subset or 60000
    print(
        f"resnet20 x{args.width:g}, Fashion-MNIST ({images} images, 1 epoch), {args.sparsity:g} ERK,"
        f" {args.threads} threads; training images/s (median of {args.repeats}), test accuracy"
    )
    for name in VARIANTS:
        print(
            f"{name:7} {median[name]:8.1f} images/s  {median[name] / median['dense']:5.2f}x dense"
            f"  test accuracy {accuracy[name] * 100:6.2f} %"
        )
    gap = abs(accuracy["auto"] - accuracy["masked"]) * 100
    print(f"auto - masked dense accuracy: {gap:.2f} points (noise taken as <= {NOISE_POINTS:g})")
    return verdict(
        {
            "engine auto >= 1.4x dense images/s": median["auto"] / median["dense"] >= 1.4,
            "engine auto accuracy within noise of masked dense": gap <= NOISE_POINTS,
        }
    )


if __name__ == "__main__":
    sys.exit(main())
