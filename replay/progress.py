"""Progress bars for long work: count, events/s and ETA on stderr (silent when disabled)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["ProgressTicker", "progress"]


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} ev/s", style="progress.data.speed")


class ProgressTicker:
    """Counts work done; pushes to the bar only every ``every`` units to stay off hot paths."""

    def __init__(self, bar: Progress | None, task_id: int | None, every: int) -> None:
        self._bar, self._task, self._every = bar, task_id, every
        self._pending = 0

    def tick(self, n: int = 1) -> None:
        self._pending += n
        if self._pending >= self._every:
            self.flush()

    def flush(self) -> None:
        if self._bar is not None and self._pending:
            self._bar.advance(self._task, self._pending)  # type: ignore[arg-type]
        self._pending = 0


@contextmanager
def progress(
    description: str, total: int | None, *, enabled: bool = True, every: int = 5_000
) -> Iterator[ProgressTicker]:
    """A progress bar on stderr for ``total`` units (unknown total: a counter)."""
    if not enabled:
        yield ProgressTicker(None, None, every)
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task_id = bar.add_task(description, total=total)
        ticker = ProgressTicker(bar, task_id, every)
        yield ticker
        ticker.flush()
