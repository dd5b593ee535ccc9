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

The package, one job per module:

- :mod:`~callbacks.progress.console`: console output, the log mirror, number and table
  formatting (shared with the model summary).
- :mod:`~callbacks.progress.report`: stage reports, built once and rendered as text or as
  rich tables; :func:`publish_matrix`.
- :mod:`~callbacks.progress.bar`: :class:`~callbacks.progress.bar.ProgressBarBase`, the
  callback both bars share (stage lifecycle, refresh policy, what is printed when).
- :mod:`~callbacks.progress.rich_bar` and :mod:`~callbacks.progress.tqdm_bar`: the two
  backends, drawing only.
"""

from callbacks.progress.bar import ProgressBarBase as ProgressBarBase
from callbacks.progress.console import (
    PRINTED_ATTR,
    ConsoleOutput,
    EchoFilter,
    install_echo_filter,
    plain_table,
)
from callbacks.progress.console import format_value as format_value
from callbacks.progress.console import mirror_to_log as mirror_to_log
from callbacks.progress.report import (
    StageReport,
    build_stage_report,
    publish_matrix,
)
from callbacks.progress.report import report_plain as report_plain
from callbacks.progress.report import report_rich as report_rich
from callbacks.progress.rich_bar import LuxonisRichProgressBar
from callbacks.progress.tqdm_bar import LuxonisTQDMProgressBar
from compat.summary_data import human_count

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
