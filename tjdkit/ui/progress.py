"""Progress displays: spinners for slow steps the core cannot count (model loading), bars for stages it can."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def stage_display(console: Console, title: str) -> Iterator[Callable[[str], None]]:
    """A transient spinner with elapsed time; yields a callback that names the current stage.

    Off a terminal (logs, CI) each stage is one plain line instead.
    """
    if not console.is_terminal:
        yield lambda stage: console.print(f"[dim]{title}: {stage}[/]")
        return
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(title, total=None)
        yield lambda stage: progress.update(task, description=f"{title}: {stage}")


@contextlib.contextmanager
def stage_bars(console: Console, suffix: str = "", elapsed: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """Transient bars, one per stage the core reports; yields the core's `on_progress(stage, done, total)`.

    Nothing is drawn off a terminal.
    """
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if elapsed:
        columns.append(TimeElapsedColumn())
    progress = Progress(*columns, console=console, transient=True, disable=not console.is_terminal)
    tasks: dict[str, int] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(f"{stage}{suffix}", total=total)
        progress.update(tasks[stage], completed=done)

    with progress:
        yield on_progress


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def human_count(count: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(int(count))
