"""The verdict line every benchmark ends with, and the exit status it implies (1 when a target is missed)."""

from __future__ import annotations


def verdict(ok: bool, what: str) -> int:
    """Print ``PASS: what`` or ``FAIL: what``; return the exit status (0 met, 1 missed)."""
    print(f"{'PASS' if ok else 'FAIL'}: {what}")
    return 0 if ok else 1
