"""RichModelSummary: Lightning 2.6's rich model summary, natively on the busloop bus.

At fit start (rank zero) it prints the layers to ``max_depth`` (index, name, type,
parameter count, train / eval mode, and in / out sizes when the model has an
``example_input_array``) as a rich table, then the parameter totals, the estimated size and
the modules in train / eval mode, as Lightning's RichModelSummary does. ``max_depth`` 0
prints nothing; -1 every layer. A plain-text copy goes to the ``busloop.summary`` log.

Lightning 2.6 adds a FLOPs column and a "Total FLOPs" line; busloop does not count FLOPs.
"""

from __future__ import annotations

import logging
from typing import Any

from rich import get_console
from rich.console import Console
from rich.table import Table

from compat.summary_data import ModelSummaryData, human_count, summarize_model
from runtime.callback import Callback
from runtime.distributed import is_rank_zero
from runtime.registry import register

__all__ = ["RichModelSummary"]

log = logging.getLogger("busloop.summary")


@register()
class RichModelSummary(Callback):
    """Print the model summary as a rich table when fit starts.

    ``max_depth``: layers nested at most this deep (1: direct children, -1: all, 0: off).
    ``summarize_kwargs``: ``header_style`` (default "bold magenta"), as Lightning's.
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise ValueError(f"RichModelSummary: max_depth must be an int >= -1, got {max_depth!r}")
        self._max_depth = max_depth
        self._summarize_kwargs = summarize_kwargs
        self.summary: ModelSummaryData | None = None
        """The last summary computed (for inspection)."""
        self.console: Console | None = None
        """Where to print (None: rich's global console, as Lightning)."""

    def on_fit_start(self, runtime: Any) -> None:
        if not self._max_depth or not is_rank_zero():
            return
        model = runtime.model
        self.summary = summarize_model(model, self._max_depth, getattr(model, "example_input_array", None))
        self.print_summary(self.summary)

    def print_summary(self, data: ModelSummaryData) -> None:
        """Print ``data``: the layer table, then the totals grid."""
        console = self.console or get_console()
        table = Table(header_style=self._summarize_kwargs.get("header_style", "bold magenta"))
        table.add_column(" ", style="dim")
        table.add_column("Name", justify="left", no_wrap=True)
        table.add_column("Type")
        table.add_column("Params", justify="right")
        table.add_column("Mode")
        if data.has_sizes:
            table.add_column("In sizes", justify="right", style="white")
            table.add_column("Out sizes", justify="right", style="white")
        lines = []
        for index, layer in enumerate(data.layers):
            row = [str(index), layer.name, layer.type, human_count(layer.params), layer.mode]
            if data.has_sizes:
                row += [str(layer.in_size), str(layer.out_size)]
            table.add_row(*row)
            lines.append(" | ".join(row))
        console.print(table)
        grid = Table.grid(expand=True)
        grid.add_column()
        totals = [
            ("Trainable params", human_count(data.trainable_params)),
            ("Non-trainable params", human_count(data.non_trainable_params)),
            ("Total params", human_count(data.total_params)),
            ("Total estimated model params size (MB)", f"{data.size_mb:,.3f}"),
            ("Modules in train mode", str(data.modules_in_train)),
            ("Modules in eval mode", str(data.modules_in_eval)),
        ]
        for label, value in totals:
            grid.add_row(f"[bold]{label}[/]: {value:<10}")
            lines.append(f"{label}: {value}")
        console.print(grid)
        log.info("Model summary\n%s", "\n".join(lines))
