"""The TQDM backend: live bars drawn with ``tqdm`` and reports as fixed-width text.

Only the drawing lives here; when to draw and what to print is
:class:`~callbacks.progress.bar.ProgressBarBase`'s. It prints plain text (no rich), writes
above live bars with ``tqdm.write`` so they are not torn, and mirrors every printed line to
the ``busloop.progress`` logger. ``tqdm`` is imported only when a live bar is drawn.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from callbacks.progress.bar import ProgressBarBase
from callbacks.progress.console import log, mirror_to_log
from callbacks.progress.report import StageReport, report_plain
from runtime.registry import register


@register()
class LuxonisTQDMProgressBar(ProgressBarBase):
    """TQDM progress bars and plain metric tables, mirrored to the log.

    ``refresh_interval``: seconds between live redraws. ``file``: where to print (stdout
    when None). Live bars only when ``file`` is a terminal.
    """

    def __init__(self, refresh_interval: float = 0.25, file: TextIO | None = None) -> None:
        super().__init__(refresh_interval)
        self._file = file
        self._bars: dict[str, Any] = {}

    @property
    def file(self) -> TextIO:
        """The stream written to."""
        return self._file if self._file is not None else sys.stdout

    @property
    def is_live(self) -> bool:
        isatty = getattr(self.file, "isatty", None)
        try:
            return bool(isatty()) if callable(isatty) else False
        except ValueError:  # closed stream
            return False

    def _open_bar(self, key: str, description: str, total: int | None, completed: int) -> None:
        from tqdm import tqdm

        if key in self._bars:
            self._bars.pop(key).close()
        self._bars[key] = tqdm(
            total=total,
            initial=completed,
            desc=description,
            file=self.file,
            leave=False,
            dynamic_ncols=True,
            mininterval=0,
            smoothing=0.1,
        )

    def _update_bar(self, key: str, completed: int, postfix: str) -> None:
        bar = self._bars.get(key)
        if bar is not None:
            bar.n = completed
            bar.set_postfix_str(postfix, refresh=False)
            bar.refresh()

    def _close_bar(self, key: str) -> None:
        bar = self._bars.pop(key, None)
        if bar is not None:
            bar.close()

    def _has_bar(self, key: str) -> bool:
        return key in self._bars

    def _close_all(self) -> None:
        for key in list(self._bars):
            self._close_bar(key)

    def _print_line(self, text: str) -> None:
        if self._bars:
            from tqdm import tqdm

            tqdm.write(text, file=self.file)
        else:
            self.file.write(text + "\n")
        self.file.flush()
        mirror_to_log(log, text)

    def _print_report(self, report: StageReport) -> None:
        self._print_line(report_plain(report))
