"""Progress bars (Rich and TQDM) and the console output layer shared with the model summary.

Output rules, for both bars:

- Printed text goes to ``file`` (``sys.stdout`` by default, looked up at each write, so a
  redirected stdout is honoured) or to the rich ``console`` given, and the same text is
  mirrored to the ``busloop.progress`` logger, so it lands in the run's ``log.txt``.
  Mirrored records carry ``busloop_printed=True``; :class:`EchoFilter` (installed on the
  CLI's console log handler at setup) drops them there, so the terminal shows them once.
- Live bars are drawn only when the output is a terminal. Otherwise (CI logs, files, pipes)
  nothing is redrawn: one line per training epoch and the tables of each validation / test
  epoch, without ANSI escape codes or carriage returns.
- A live bar refreshes at most every ``refresh_interval`` seconds, plus once when its stage
  ends. Per batch a bar does one clock read; it reads (and syncs) the latest loss tensor in
  ``runtime.state.step_metrics`` only when it refreshes.

What is printed:

- After every training epoch: ``[Epoch e/max] Duration: 1.23s | Train Loss: 0.12345``.
- After every validation / test epoch (not the sanity check): ``<Stage> loss: x``, one
  table of metrics per group (the name after the stage prefix is ``group/name``; names
  without a group go to the ``<Stage> metrics`` table), one ``GT x Pred`` table per 2-D
  metric, and ``<Stage> main metric (name): value`` when ``trainer.main_metric`` is set.

2-D metrics (confusion matrices): the runtime reduces scalars only, so a 2-D tensor is
published by storing it in ``runtime.state.step_metrics`` under a ``val/...`` or
``test/...`` name, best with :func:`publish_matrix` (e.g. from a callback's
``on_validation_epoch_end``). The latest matrix of the stage is printed, rows are ground
truth, columns predictions. Never :meth:`Runtime.log` a 2-D tensor: it is not reducible.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TextIO

import torch
from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from runtime.callback import Callback
from runtime.distributed import is_rank_zero
from runtime.loop import Runtime
from runtime.registry import register

__all__ = [
    "PRINTED_ATTR",
    "ConsoleOutput",
    "EchoFilter",
    "LuxonisRichProgressBar",
    "LuxonisTQDMProgressBar",
    "StageReport",
    "build_stage_report",
    "human_count",
    "install_echo_filter",
    "plain_table",
    "publish_matrix",
]

log = logging.getLogger("busloop.progress")

#: Attribute set on log records that mirror text already printed to the console.
PRINTED_ATTR = "busloop_printed"

_STAGE_TITLES = {"train": "Train", "val": "Validation", "test": "Test", "predict": "Predict"}
_STAGE_PREFIXES = {"validation": "val", "test": "test", "predict": "predict"}
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


def human_count(number: int | float) -> str:
    """Lightning's parameter count format: ``123``, ``1.2 K``, ``3.4 M``, ``5.0 B``, ``400 T``."""
    number = float(number)
    units = ["", "K", "M", "B", "T"]
    index = 0
    while abs(number) >= 1000 and index < len(units) - 1:
        number /= 1000
        index += 1
    if index == 0:
        return f"{int(number):,d}"
    if number >= 100:
        return f"{int(number):,d} {units[index]}"
    return f"{number:,.1f} {units[index]}"


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
        if console is None:
            console = Console(file=file, highlight=False)
            if not console.is_terminal and "COLUMNS" not in os.environ:
                console.width = _NON_TTY_WIDTH  # tables are never squeezed in CI logs
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
            with self.console.capture() as capture:
                for renderable in renderables:
                    self.console.print(renderable)
            printed = capture.get()
            self.console.out(printed, end="", highlight=False)
            self.file.flush()
            text = log_text if log_text is not None else printed
        mirror_to_log(self.logger, text)

    def print_text(self, text: str, style: str | None = None) -> None:
        """Print plain ``text`` as is (no markup, no wrapping) and mirror it."""
        if self.is_terminal:
            self.console.print(Text(text, style=style or ""), soft_wrap=True)
        else:
            self.console.out(text, highlight=False)
            self.file.flush()
        mirror_to_log(self.logger, text)


# ---------------------------------------------------------------------------- stage reports
def publish_matrix(runtime: Runtime, name: str, matrix: Any) -> None:
    """Publish a 2-D metric (e.g. a confusion matrix, rows GT, columns Pred) for printing.

    ``name`` must start with ``val/`` or ``test/``. The matrix is stored, detached, in
    ``runtime.state.step_metrics[name]``; the progress bars print the latest one at the end
    of the stage's epoch.
    """
    if not name.startswith(("val/", "test/")):
        raise ValueError(f"2-D metric names start with 'val/' or 'test/', got {name!r}")
    tensor = torch.as_tensor(matrix).detach()
    if tensor.ndim != 2:
        raise ValueError(f"{name}: a 2-D metric needs a 2-D matrix, got shape {tuple(tensor.shape)}")
    runtime.state.step_metrics[name] = tensor


@dataclass
class StageReport:
    """What is printed at the end of a validation / test epoch."""

    prefix: str
    """The metric prefix: ``val`` or ``test``."""
    title: str
    """``Validation`` or ``Test``."""
    loss: float | None = None
    groups: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    """Group name ("" for ungrouped) -> [(metric name, value)], in logging order."""
    matrices: dict[str, list[list[float]]] = field(default_factory=dict)
    main_metric: tuple[str, float] | None = None


def _loss_key(metrics: Mapping[str, Any], prefix: str) -> str | None:
    for key in (f"{prefix}/loss", f"{prefix}_loss", "loss"):
        if key in metrics:
            return key
    return None


def _main_metric_key(name: str, prefix: str, metrics: Mapping[str, Any]) -> str | None:
    """The configured main metric's name in this stage (``val/acc`` -> ``test/acc`` for test)."""
    candidates = [name]
    head, sep, rest = name.partition("/")
    if sep and head in ("val", "test", "train"):
        candidates.insert(0, f"{prefix}/{rest}")
    elif not sep:
        candidates.insert(0, f"{prefix}/{name}")
    return next((c for c in candidates if c in metrics), None)


def _is_matrix(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 2


def build_stage_report(
    runtime: Runtime, prefix: str, metrics: Mapping[str, float]
) -> StageReport:
    """Sort a stage's epoch ``metrics`` into loss, grouped tables, matrices and main metric."""
    report = StageReport(prefix=prefix, title=_STAGE_TITLES.get(prefix, prefix.title()))
    loss_key = _loss_key(metrics, prefix)
    if loss_key is not None:
        report.loss = float(metrics[loss_key])
    for key, value in metrics.items():
        if key == loss_key:
            continue
        name = key[len(prefix) + 1 :] if key.startswith(f"{prefix}/") else key
        group, sep, rest = name.partition("/")
        if not sep:
            group, rest = "", name
        report.groups.setdefault(group, []).append((rest, float(value)))
    for key, value in runtime.state.step_metrics.items():
        if key.startswith(f"{prefix}/") and _is_matrix(value):
            report.matrices[key] = value.detach().cpu().tolist()
    main = getattr(runtime.config.trainer, "main_metric", None)
    if main is not None:
        main_key = _main_metric_key(main.name, prefix, metrics)
        if main_key is not None:
            report.main_metric = (main_key, float(metrics[main_key]))
    return report


def _group_title(report: StageReport, group: str) -> str:
    return f"{report.title} metrics" if not group else f"{report.title} metrics: {group}"


def _matrix_rows(matrix: list[list[float]]) -> tuple[list[str], list[list[str]]]:
    integral = all(float(v).is_integer() for row in matrix for v in row)
    width = max((len(row) for row in matrix), default=0)
    headers = ["GT \\ Pred", *(str(j) for j in range(width))]
    rows = [
        [str(i), *(str(int(v)) if integral else format_value(float(v)) for v in row)]
        for i, row in enumerate(matrix)
    ]
    return headers, rows


def report_plain(report: StageReport) -> str:
    """The report as fixed-width text."""
    blocks: list[str] = []
    if report.loss is not None:
        blocks.append(f"{report.title} loss: {format_value(report.loss)}")
    for group, items in report.groups.items():
        rows = [[name, format_value(value)] for name, value in items]
        blocks.append(plain_table(["Metric", "Value"], rows, title=_group_title(report, group), right=(1,)))
    for name, matrix in report.matrices.items():
        headers, rows = _matrix_rows(matrix)
        right = tuple(range(1, len(headers)))
        blocks.append(plain_table(headers, rows, title=f"{name} (GT x Pred)", right=right))
    if report.main_metric is not None:
        key, value = report.main_metric
        blocks.append(f"{report.title} main metric ({key}): {format_value(value)}")
    return "\n".join(blocks)


def report_rich(report: StageReport) -> list[RenderableType]:
    """The report as rich renderables (tables with 5-decimal values)."""
    out: list[RenderableType] = []
    if report.loss is not None:
        out.append(Text(f"{report.title} loss: {format_value(report.loss)}", style="bold"))
    for group, items in report.groups.items():
        out.append(Text(_group_title(report, group), style="bold"))
        table = Table()
        table.add_column("Metric", style="cyan")
        table.add_column("Value", justify="right", style="magenta")
        for name, value in items:
            table.add_row(name, format_value(value))
        out.append(table)
    for name, matrix in report.matrices.items():
        headers, rows = _matrix_rows(matrix)
        out.append(Text(f"{name} (GT x Pred)", style="bold"))
        table = Table()
        table.add_column(headers[0], style="cyan")
        for header in headers[1:]:
            table.add_column(header, justify="right")
        for row in rows:
            table.add_row(*row)
        out.append(table)
    if report.main_metric is not None:
        key, value = report.main_metric
        out.append(Text(f"{report.title} main metric ({key}): {format_value(value)}", style="bold green"))
    return out


def _latest_loss(runtime: Runtime, prefix: str) -> str:
    """The latest logged per-step loss of ``prefix``, formatted (one device sync)."""
    step_metrics = runtime.state.step_metrics
    key = _loss_key(step_metrics, prefix)
    if key is None:
        return ""
    value = step_metrics[key]
    try:
        return f"loss: {float(value):.4f}"
    except (TypeError, ValueError, RuntimeError):
        return ""


# ---------------------------------------------------------------------------- the bars
class _ProgressBarBase(Callback):
    """What both bars share: the stage lifecycle, rate-limited refresh, reports, the log mirror.

    Subclasses draw the live bars (:meth:`_open_bar`, :meth:`_update_bar`, :meth:`_close_bar`,
    :meth:`_close_all`) and print (:meth:`_print_report`, :meth:`_print_line`).
    """

    def __init__(self, refresh_interval: float = 0.25) -> None:
        if refresh_interval < 0:
            raise ValueError(f"refresh_interval must be >= 0, got {refresh_interval}")
        self.refresh_interval = float(refresh_interval)
        self._next_refresh: dict[str, float] = {}
        self._totals: dict[str, int] = {}
        self._epoch_started = 0.0
        self._pending: dict[str, dict[str, float]] = {}
        self._enabled = True

    # -- to implement ---------------------------------------------------------------------
    @property
    def is_live(self) -> bool:
        """Whether live bars are drawn (the output is a terminal)."""
        raise NotImplementedError

    def _open_bar(self, key: str, description: str, total: int, completed: int) -> None:
        raise NotImplementedError

    def _update_bar(self, key: str, completed: int, postfix: str) -> None:
        raise NotImplementedError

    def _close_bar(self, key: str) -> None:
        raise NotImplementedError

    def _close_all(self) -> None:
        raise NotImplementedError

    def _has_bar(self, key: str) -> bool:
        raise NotImplementedError

    def _print_line(self, text: str) -> None:
        raise NotImplementedError

    def _print_report(self, report: StageReport) -> None:
        raise NotImplementedError

    # -- shared helpers -------------------------------------------------------------------
    def _start(self, key: str, description: str, total: int, completed: int = 0) -> None:
        if self._enabled and self.is_live and total > 0:
            self._open_bar(key, description, total, completed)
            self._next_refresh[key] = 0.0
            self._totals[key] = total

    def _tick(self, runtime: Runtime, key: str, prefix: str, completed: int) -> None:
        """Per batch: one clock read; refresh when the interval has passed."""
        now = time.monotonic()
        if now < self._next_refresh.get(key, float("inf")):
            return
        self._next_refresh[key] = now + self.refresh_interval
        self._update_bar(key, completed, _latest_loss(runtime, prefix))

    def _finish(self, runtime: Runtime, key: str, prefix: str, completed: int) -> None:
        if self._has_bar(key):
            self._update_bar(key, completed, _latest_loss(runtime, prefix))
            self._close_bar(key)
        self._next_refresh.pop(key, None)
        self._totals.pop(key, None)

    # -- events ---------------------------------------------------------------------------
    def on_setup(self, runtime: Runtime, stage: str) -> None:
        self._enabled = is_rank_zero()
        install_echo_filter()

    def on_train_epoch_start(self, runtime: Runtime) -> None:
        st = runtime.state
        self._epoch_started = time.monotonic()
        self._start("train", f"Epoch {st.epoch + 1}/{st.max_epochs}", st.num_training_batches, st.batch_idx)

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        if "train" in self._next_refresh:
            self._tick(runtime, "train", "train", batch_idx + 1)

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        self._finish(runtime, "train", "train", runtime.state.batch_idx)

    def on_epoch_metrics(self, runtime: Runtime, stage: str, metrics: dict[str, float]) -> None:
        if not self._enabled:
            return
        if stage == "train":
            st = runtime.state
            duration = time.monotonic() - self._epoch_started
            key = _loss_key(metrics, "train")
            loss = format_value(float(metrics[key])) if key is not None else "n/a"
            self._print_line(
                f"[Epoch {st.epoch + 1}/{st.max_epochs}] Duration: {duration:.2f}s | Train Loss: {loss}"
            )
        else:
            self._pending[stage] = dict(metrics)

    def _eval_start(self, runtime: Runtime, stage: str) -> None:
        st = runtime.state
        if "train" in self._next_refresh:  # show where training paused
            self._update_bar("train", st.batch_idx, _latest_loss(runtime, "train"))
        if st.sanity_checking:
            self._start(stage, "Sanity Checking", st.num_sanity_val_batches)
            return
        total = {
            "validation": st.num_val_batches,
            "test": st.num_test_batches,
            "predict": st.num_predict_batches,
        }[stage]
        self._start(stage, _STAGE_TITLES[_STAGE_PREFIXES[stage]], total)

    def _eval_end(self, runtime: Runtime, stage: str) -> None:
        prefix = _STAGE_PREFIXES[stage]
        if stage in self._next_refresh:
            self._finish(runtime, stage, prefix, self._totals.get(stage, 0))
        metrics = self._pending.pop(prefix, None)
        if self._enabled and metrics is not None and not runtime.state.sanity_checking:
            self._print_report(build_stage_report(runtime, prefix, metrics))

    def on_validation_start(self, runtime: Runtime) -> None:
        self._eval_start(runtime, "validation")

    def on_validation_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        if "validation" in self._next_refresh:
            self._tick(runtime, "validation", "val", batch_idx + 1)

    def on_validation_end(self, runtime: Runtime) -> None:
        self._eval_end(runtime, "validation")

    def on_test_start(self, runtime: Runtime) -> None:
        self._eval_start(runtime, "test")

    def on_test_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        if "test" in self._next_refresh:
            self._tick(runtime, "test", "test", batch_idx + 1)

    def on_test_end(self, runtime: Runtime) -> None:
        self._eval_end(runtime, "test")

    def on_predict_start(self, runtime: Runtime) -> None:
        self._eval_start(runtime, "predict")

    def on_predict_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        if "predict" in self._next_refresh:
            self._tick(runtime, "predict", "predict", batch_idx + 1)

    def on_predict_end(self, runtime: Runtime) -> None:
        self._eval_end(runtime, "predict")

    def on_teardown(self, runtime: Runtime, stage: str) -> None:
        self._close_all()
        self._next_refresh.clear()
        self._totals.clear()
        self._pending.clear()

    def on_exception(self, runtime: Runtime, exception: BaseException) -> None:
        self._close_all()
        self._next_refresh.clear()
        self._totals.clear()


@register()
class LuxonisRichProgressBar(_ProgressBarBase):
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

    def _open_bar(self, key: str, description: str, total: int, completed: int) -> None:
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


@register()
class LuxonisTQDMProgressBar(_ProgressBarBase):
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

    def _open_bar(self, key: str, description: str, total: int, completed: int) -> None:
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
