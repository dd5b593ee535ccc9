"""The Rich backend: live bars drawn with ``rich.progress`` and reports as rich tables.

Only the drawing lives here; when to draw and what to print is
:class:`~callbacks.progress.bar.ProgressBarBase`'s. Printing goes through
:class:`~callbacks.progress.console.ConsoleOutput`, so the rich console and the log mirror
stay in step (plain text in ``log.txt``, one copy on the terminal).
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from callbacks.progress.bar import ProgressBarBase
from callbacks.progress.console import ConsoleOutput, log
from callbacks.progress.report import StageReport, report_rich
from runtime.registry import register


@register()
class LuxonisRichProgressBar(ProgressBarBase):
    """Rich progress bars and rich metric tables (5 decimals), mirrored to the log.

    ``refresh_interval``: seconds between live redraws. ``file``: where to print (stdout
    when None); ``console``: a rich Console to use instead. Live bars only on a terminal.
    """

    def __init__(
        self,
        refresh_interval: float = 0.25,
        file: TextIO | None = None,
        console: Console | None = None,
    ) -> None:
        super().__init__(refresh_interval)
        self.output = ConsoleOutput(log, file=file, console=console)
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    @property
    def is_live(self) -> bool:
        return self.output.is_terminal

    def _ensure_progress(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[postfix]}"),
                console=self.output.console,
                auto_refresh=False,
                transient=True,
            )
            self._progress.start()
        return self._progress

    def _open_bar(self, key: str, description: str, total: int | None, completed: int) -> None:
        progress = self._ensure_progress()
        if key in self._tasks:
            progress.remove_task(self._tasks.pop(key))
        self._tasks[key] = progress.add_task(description, total=total, completed=completed, postfix="")
        progress.refresh()

    def _update_bar(self, key: str, completed: int, postfix: str) -> None:
        if self._progress is not None and key in self._tasks:
            self._progress.update(self._tasks[key], completed=completed, postfix=postfix)
            self._progress.refresh()

    def _close_bar(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if self._progress is not None and task is not None:
            self._progress.remove_task(task)
            self._progress.refresh()

    def _has_bar(self, key: str) -> bool:
        return key in self._tasks

    def _close_all(self) -> None:
        progress, self._progress = self._progress, None
        self._tasks.clear()
        if progress is not None:
            progress.stop()

    def _print_line(self, text: str) -> None:
        self.output.print_text(text)

    def _print_report(self, report: StageReport) -> None:
        self.output.print(report_rich(report))
