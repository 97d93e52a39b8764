"""The per-epoch progress bar: loss, accuracy, images/s and ETA (rich; off when quiet or not a TTY)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class EpochProgress:
    """A context manager showing one epoch's progress; does nothing when disabled."""

    def __init__(self, epoch: int, epochs: int, steps: int, *, enabled: bool) -> None:
        self._bar: Progress | None = None
        if enabled:
            self._bar = Progress(
                TextColumn(f"epoch {epoch}/{epochs}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task("train", total=steps, stats="")

    def __enter__(self) -> EpochProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, sums: dict[str, float]) -> None:
        """One step done; `sums` holds the running loss/correct/count/seconds of the epoch."""
        if self._bar is None:
            return
        count = max(sums["count"], 1.0)
        rate = sums["count"] / sums["seconds"] if sums["seconds"] > 0 else 0.0
        stats = f"loss {sums['loss'] / count:.4f}  acc {sums['correct'] / count:.4f}  {rate:,.0f} img/s"
        self._bar.update(self._task, advance=1, stats=stats)
