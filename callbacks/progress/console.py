"""Console output and its log mirror, plus the text-formatting helpers the printouts share.

Everything the progress bars and the model summary print goes through here, so that the
rules are kept in one place: text goes to the console (or ``file``), the same text is
logged once to the ``busloop.progress`` logger (so it lands in ``log.txt``), and the
mirrored record is marked so that :class:`EchoFilter` keeps it off the terminal a second
time. Off a terminal, output is plain text: no ANSI codes, no redraws, wide tables.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from typing import IO, TextIO

from rich import get_console
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.text import Text

log = logging.getLogger("busloop.progress")

#: Attribute set on log records that mirror text already printed to the console.
PRINTED_ATTR = "busloop_printed"

_NON_TTY_WIDTH = 160
_DECIMALS = 5


# ---------------------------------------------------------------------------- log mirroring
class EchoFilter(logging.Filter):
    """Drops records that mirror printed text (for handlers that write to the console)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, PRINTED_ATTR, False)


def install_echo_filter(logger_name: str = "busloop") -> None:
    """Add :class:`EchoFilter` to the CLI's console handlers (marked ``_busloop_console``)."""
    for handler in logging.getLogger(logger_name).handlers:
        if getattr(handler, "_busloop_console", False) and not any(
            isinstance(f, EchoFilter) for f in handler.filters
        ):
            handler.addFilter(EchoFilter())


def mirror_to_log(logger: logging.Logger, text: str) -> None:
    """Log printed ``text`` at INFO as one record; a multi-line block starts on a new line,
    so every printed line appears verbatim in log.txt."""
    text = text.rstrip("\n")
    if not text.strip():
        return
    if "\n" in text:  # a block starts on its own line, so its columns stay aligned
        text = "\n" + text
    logger.info("%s", text, extra={PRINTED_ATTR: True})


# ---------------------------------------------------------------------------- text tables
def format_value(value: float, decimals: int = _DECIMALS) -> str:
    """A metric value with ``decimals`` decimals (integers stay integers)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{decimals}f}"


def plain_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    right: Sequence[int] = (),
) -> str:
    """A fixed-width ASCII table: ``title``, header, a rule, the rows (columns in ``right``
    are right-aligned)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return " | ".join(parts).rstrip()

    out = [title] if title else []
    out.append(line(headers))
    out.append("-+-".join("-" * w for w in widths))
    out.extend(line(row) for row in rows)
    return "\n".join(out)


# ---------------------------------------------------------------------------- console output
class _EncodedStringIO(io.StringIO):
    """A StringIO that reports an encoding, so rich picks the box characters it can write."""

    def __init__(self, encoding: str) -> None:
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding


class ConsoleOutput:
    """Printed output: a rich Console on ``file`` (stdout when None) plus a log mirror.

    On a terminal (no ``file`` or ``console`` given) it is rich's global console, which
    the CLI's log handler also prints through: one console, so a live bar and log records
    never share a line.

    When the console is not a terminal, rich renders without colours or ANSI codes and
    the exact text printed is also what is logged.
    """

    def __init__(
        self,
        logger: logging.Logger,
        file: TextIO | None = None,
        console: Console | None = None,
    ) -> None:
        self.logger = logger
        self._fixed_width: int | None = None
        """The width set here on a console made here (rich then always reports it; asking
        rich costs terminal-size system calls)."""
        self._own_console = console is None
        """Whether the console was made here, so nothing else records, captures or draws
        through it (see :meth:`_write_plain`)."""
        if console is None:
            console = Console(file=file, highlight=False)
            if file is None and console.is_terminal:
                # On a terminal: rich's global console, the one the CLI's log handler prints
                # through, so that log records go above the live bar, never onto its line.
                console = get_console()
                self._own_console = False
            elif not console.is_terminal and "COLUMNS" not in os.environ:
                self._fixed_width = _NON_TTY_WIDTH  # tables are never squeezed in CI logs
                console.width = self._fixed_width
        self.console = console

    @property
    def is_terminal(self) -> bool:
        """Whether live redrawing (bars, colours) is appropriate."""
        return self.console.is_terminal

    @property
    def file(self) -> IO[str]:
        """The stream written to (stdout unless a file or console was given)."""
        return self.console.file

    def render_plain(self, renderables: Sequence[RenderableType]) -> str:
        """``renderables`` as plain text (no styles), as wide as needed up to 160 columns."""
        encoding = getattr(self.file, "encoding", None) or "utf-8"
        capture = Console(
            file=_EncodedStringIO(encoding),
            width=max(_NON_TTY_WIDTH, self.console.width),
            color_system=None,
            force_terminal=False,
            highlight=False,
            emoji=False,
        )
        for renderable in renderables:
            capture.print(renderable)
        return capture.file.getvalue()  # type: ignore[attr-defined,no-any-return]

    def print(self, renderables: Sequence[RenderableType], log_text: str | None = None) -> None:
        """Print ``renderables`` and mirror them (or ``log_text``) to the logger."""
        if self.is_terminal:
            self.console.print(Group(*renderables))  # one redraw under a live bar
            text = log_text if log_text is not None else self.render_plain(renderables)
        else:
            printed = self._plain_text_lines(renderables)
            if printed is None:
                with self.console.capture() as capture:
                    for renderable in renderables:
                        self.console.print(renderable)
                printed = capture.get()
            if not self._write_plain(printed):
                self.console.out(printed, end="", highlight=False)
                self.file.flush()
            text = log_text if log_text is not None else printed
        mirror_to_log(self.logger, text)

    def _plain_text_lines(self, renderables: Sequence[RenderableType]) -> str | None:
        """What rich prints off a terminal for one-line ``Text`` renderables (their text and
        a newline each), without rich's render pass (most of an epoch report's cost);
        None for anything else (tables, wrapping, tabs, colours), which rich renders."""
        console = self.console
        if console.color_system is not None:
            return None
        width = self._fixed_width or console.width
        lines = []
        for renderable in renderables:
            if type(renderable) is not Text or renderable.justify or renderable.overflow:
                return None
            plain = renderable.plain
            if renderable.end != "\n" or not plain.isprintable() or cell_len(plain) > width:
                return None
            lines.append(plain + "\n")
        return "".join(lines)

    def print_text(self, text: str, style: str | None = None) -> None:
        """Print plain ``text`` as is (no markup, no wrapping) and mirror it."""
        if self.is_terminal:
            self.console.print(Text(text, style=style or ""), soft_wrap=True)
        elif not self._write_plain(text + "\n"):
            self.console.out(text, highlight=False)
            self.file.flush()
        mirror_to_log(self.logger, text)

    def _write_plain(self, text: str) -> bool:
        """Off a terminal, write ``text`` to the file as it is and flush; False (nothing
        written) when rich has to write it.

        What ``console.out(text, end="", highlight=False)`` writes when every line is
        printable (no tab to expand, no control code to strip; ``out`` never wraps or crops)
        and the console is plain: made here (no capture, recording or live display a caller
        set up on it), no colours, not quiet, not Jupyter's or a legacy Windows console.
        rich's render pass costs a few hundred µs per call, the write a few: it runs at every
        epoch end. On an encoding error rich writes (and raises its own error, with its hint);
        a broken pipe is rich's too (:meth:`rich.console.Console.on_broken_pipe`).
        """
        console = self.console
        if (
            not self._own_console
            or console.color_system is not None
            or console.record
            or console.quiet
            or console.is_jupyter
            or console.legacy_windows
            or not all(line.isprintable() for line in text.split("\n"))
        ):
            return False
        file = console.file
        try:
            file.write(text)
            file.flush()
        except UnicodeEncodeError:  # raised before anything is written: rich reports it
            return False
        except BrokenPipeError:
            console.on_broken_pipe()
        return True
