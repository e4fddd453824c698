"""Progress bars with rate and ETA (rich), shared by every long-running step.

They show when zoo's log lines show (zoo.log.configure at INFO), on the same stderr console, so
quiet and JSON modes need no flag of their own.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from zoo.log import console, shows_progress

T = TypeVar("T")


def make_progress(transient: bool = False) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TextColumn("[cyan]{task.fields[rate]}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=transient,
                    console=console())


def _rate(task: Task) -> str:
    speed = task.speed
    return f"{speed:6.1f} it/s" if speed else "   ... it/s"


def progress_bar(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over items with a bar that shows count, rate and ETA (when progress is shown)."""
    if not shows_progress():
        yield from items
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with make_progress() as progress:
        task_id = progress.add_task(description, total=total, rate="")
        for item in items:
            yield item
            progress.update(task_id, advance=1, rate=_rate(progress.tasks[task_id]))
