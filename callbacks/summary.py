"""The model summary printed when fit starts: layers to ``max_depth``, parameter totals.

Per layer: index, name, type, parameter count (its whole subtree, as Lightning counts),
mode (train / eval) and, when an example input is known, the input and output sizes of
the layer's first call. The example input is ``model.example_input_array`` (a tensor; a
tuple/list is passed positionally, a dict by keyword) or zeros ``[1, *trainer.input_shape]``;
it runs once under ``torch.no_grad`` with the model temporarily in eval mode (every
module's mode is restored afterwards, and the random state is left untouched).

Totals: trainable / non-trainable / total parameters, the estimated size in MB (4 bytes per
parameter, MB = 1e6 bytes, as Lightning), and how many modules are in train / eval mode
(the root excluded). The summary is printed (a rich table, or a plain one with
``rich=False``) and a plain-text copy is always logged to ``busloop.summary`` (log.txt).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TextIO

import torch
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from callbacks.progress import ConsoleOutput, install_echo_filter, plain_table
from compat.summary_data import (
    LayerInfo,
    ModelSummaryData,
    human_count,
    summarize_model,
)
from runtime.callback import Callback
from runtime.distributed import is_rank_zero
from runtime.loop import Runtime
from runtime.registry import register

__all__ = ["LayerInfo", "LuxonisModelSummary", "ModelSummaryData", "summarize_model"]

log = logging.getLogger("busloop.summary")

def _columns(data: ModelSummaryData) -> tuple[list[str], list[list[str]]]:
    headers = ["", "Name", "Type", "Params", "Mode"]
    if data.has_sizes:
        headers += ["In sizes", "Out sizes"]
    rows = []
    for index, layer in enumerate(data.layers):
        row = [str(index), layer.name, layer.type, human_count(layer.params), layer.mode]
        if data.has_sizes:
            row += [str(layer.in_size), str(layer.out_size)]
        rows.append(row)
    if data.other_params > 0:
        row = ["", "other params", "n/a", human_count(data.other_params), "n/a"]
        rows.append(row + (["n/a", "n/a"] if data.has_sizes else []))
    return headers, rows


def _totals(data: ModelSummaryData) -> list[tuple[str, str]]:
    return [
        ("Trainable params", human_count(data.trainable_params)),
        ("Non-trainable params", human_count(data.non_trainable_params)),
        ("Total params", human_count(data.total_params)),
        ("Total estimated model params size (MB)", f"{data.size_mb:,.3f}"),
        ("Modules in train mode", str(data.modules_in_train)),
        ("Modules in eval mode", str(data.modules_in_eval)),
    ]


def format_summary_plain(data: ModelSummaryData) -> str:
    """The summary as a fixed-width table followed by the totals."""
    headers, rows = _columns(data)
    parts = [plain_table(headers, rows, right=(3,))] if rows else []
    width = max(len(value) for _, value in _totals(data))
    parts.append("\n".join(f"{value:<{width}}  {label}" for label, value in _totals(data)))
    parts.extend(f"Note: {note}" for note in data.notes)
    return "\n".join(parts)


def format_summary_rich(data: ModelSummaryData) -> list[RenderableType]:
    """The summary as a rich table and a grid of totals."""
    out: list[RenderableType] = []
    headers, rows = _columns(data)
    if rows:
        table = Table(header_style="bold magenta")
        for header in headers:
            table.add_column(header, justify="right" if header == "Params" else "left")
        for row in rows:
            table.add_row(*row)
        out.append(table)
    grid = Table.grid(expand=False)
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in _totals(data):
        grid.add_row(f"{label}: ", value)
    out.append(grid)
    out.extend(Text(f"Note: {note}", style="yellow") for note in data.notes)
    return out


def example_input_for(runtime: Runtime) -> Any:
    """``model.example_input_array``, else zeros ``[1, *trainer.input_shape]``, else None."""
    example = getattr(runtime.model, "example_input_array", None)
    if example is not None:
        return example
    shape: Sequence[int] | None = getattr(runtime.config.trainer, "input_shape", None)
    if shape:
        return torch.zeros(1, *shape)
    return None


@register("ModelSummary")
class LuxonisModelSummary(Callback):
    """Print the model summary at fit start (rank zero): rich table or plain, copy to the log.

    ``rich``: a rich table (True) or a plain fixed-width one. ``max_depth``: layers nested
    at most this deep (-1 all, 0 no layer table). ``file`` / ``console``: where to print
    (stdout by default).
    """

    def __init__(
        self,
        rich: bool = True,
        max_depth: int = 2,
        file: TextIO | None = None,
        console: Console | None = None,
    ) -> None:
        if max_depth < -1:
            raise ValueError(f"max_depth must be -1 (all), 0 (none) or positive, got {max_depth}")
        self.rich = rich
        self.max_depth = max_depth
        self.output = ConsoleOutput(log, file=file, console=console)
        self.summary: ModelSummaryData | None = None
        """The last summary computed (for inspection)."""

    def on_fit_start(self, runtime: Runtime) -> None:
        if not is_rank_zero():
            return
        install_echo_filter()
        self.summary = summarize_model(runtime.model, self.max_depth, example_input_for(runtime))
        plain = format_summary_plain(self.summary)
        if self.rich:
            self.output.print(format_summary_rich(self.summary), log_text=plain)
        else:
            self.output.print_text(plain)
