"""The verdict of a benchmark script: one PASS/FAIL line and the exit status that goes with it."""

from __future__ import annotations


def verdict(targets: dict[str, bool]) -> int:
    """Print ``PASS: ...`` when every target (description -> met) is met, else ``FAIL: <missed ones>``
    (also ``FAIL`` when there is no target: a run that checked nothing has met nothing).

    Returns the script's exit status: 0 on PASS, 1 on FAIL, so scripts and CI can act on it.
    """
    if not targets:
        print("FAIL: no target was checked")
        return 1
    missed = [what for what, met in targets.items() if not met]
    if missed:
        print(f"FAIL: missed {'; '.join(missed)}")
        return 1
    print(f"PASS: {'; '.join(targets)}")
    return 0
