"""Stopping a run on a signal: the first SIGINT/SIGTERM becomes a request that the loop honours after a step."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from randsparse.errors import RandsparseError


class Interrupted(RandsparseError):
    """Training was stopped by a signal (Ctrl-C, SIGTERM) after saving a checkpoint."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, str]]:
    """Turn the first SIGINT/SIGTERM into a request to stop (checked after each step)."""
    request: dict[str, str] = {}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        request["signal"] = signal.Signals(signum).name
        signal.signal(signum, previous[signum])  # a second one stops at once

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
