"""Stopping a run on a signal: SIGINT/SIGTERM are handled from the first to the last instruction of `fit`.

While the loop trains, the first signal becomes a request that the loop honours after the current
step (it saves a checkpoint first). Outside the steps (start-up, the final test pass) there is no
step to finish, so a signal stops the run at once; so does a second signal at any time. Either way
`Interrupted` is raised, the summary says ``interrupted`` and the command exits 128 + the signal's
number (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from randsparse.errors import RandsparseError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(RandsparseError):
    """Training was stopped by a signal (Ctrl-C, SIGTERM); `signal` is the signal's name."""

    def __init__(self, message: str, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal = signal_name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended."""
        return 128 + int(getattr(signal.Signals, self.signal, signal.SIGINT))


class StopRequest:
    """What `stop_on_signals` records: the signal received (if any), and whether to stop at once."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.deferred = False  # True while the loop trains: stop after the current step, not in it
        self.phase = "while the run was starting"  # how an immediate stop is described (and what to do next)

    def __bool__(self) -> bool:
        return self.signal is not None

    def get(self, key: str, default: str | None = None) -> str | None:
        """Mapping-style access kept for callers that read ``request.get("signal")``."""
        return self.signal if key == "signal" and self.signal is not None else default

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Within this block the first signal is recorded, not raised (the loop checks it after a step)."""
        self.deferred = True
        try:
            yield
        finally:
            self.deferred = False


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Handle SIGINT/SIGTERM for the duration of the block (main thread only; elsewhere a no-op).

    A signal raises `Interrupted` at once, unless the request is `deferring` and it is the first one.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        first = request.signal is None
        request.signal = request.signal or name
        if first and request.deferred:
            return
        raise Interrupted(f"stopped by {name} {request.phase}", name)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
