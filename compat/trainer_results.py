"""The result tables ``Trainer.validate`` / ``Trainer.test`` print with ``verbose=True``.

Lightning 2.6 prints, on rank zero, one table of the returned metrics after an evaluation call:
a first column headed "Validate metric" / "Test metric" listing the metric names in sorted
order, then one column per dataloader ("DataLoader 0", "DataLoader 1" ...) with each value as
Python prints it (a one-element tensor as its number); a metric a loader did not log is left
blank. Metric names lose Lightning's ``/dataloader_idx_<N>`` suffix. The table is a ``rich`` table
when rich is installed (cyan names, magenta values, centred), else plain text between ``─`` rules
as wide as the terminal. Columns are as wide as the longest name or header (at least 25, at most
half the terminal); loaders that do not fit the terminal's width go on to a further table.
Nothing is printed when no metric was logged.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["print_results", "result_table"]


def _text(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    return f"{value}"


def result_table(results: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The metric names (sorted) and, per name, one cell per loader ("" where it is missing)."""
    per_loader = [
        {str(name).split("/dataloader_idx_")[0]: value for name, value in result.items()}
        for result in results
    ]
    names = sorted({name for result in per_loader for name in result})
    cells = [
        [_text(result[name]) if name in result else " " for result in per_loader] for name in names
    ]
    return names, cells


def _bar_character() -> str:
    encoding = getattr(sys.stdout, "encoding", None)
    if encoding is None:
        return "─"
    try:
        "─".encode(encoding)
    except UnicodeEncodeError:
        return "-"
    return "─"


def _print_rich(headers: list[str], names: list[str], cells: list[list[str]], width: int) -> None:
    from rich import get_console
    from rich.table import Column, Table

    columns = [Column(h, justify="center", style="magenta", width=width) for h in headers]
    columns[0].style = "cyan"
    table = Table(*columns)
    for name, row in zip(names, cells, strict=True):
        table.add_row(name, *row)
    get_console().print(table)


def _print_plain(
    headers: list[str], names: list[str], cells: list[list[str]], width: int, term: int
) -> None:
    def line(*texts: str) -> str:
        return "".join(f"{text:^{width}}" for text in texts).rstrip()

    bar, half = _bar_character() * term, term // 2
    lines = [bar, line(*headers), bar]
    for name, row in zip(names, cells, strict=True):
        while len(name) > half:  # a long name wraps over several lines, the values on its first
            lines.append(line(name[:half], *row))
            name, row = name[half:], [" "]
        lines.append(line(name, *row))
    lines.append(bar)
    print(os.linesep.join(lines))


def print_results(results: Sequence[Mapping[str, Any]], fn: str) -> None:
    """Print the table of one ``validate`` / ``test`` call (``fn``) as Lightning does."""
    names, cells = result_table(results)
    if not names:
        return
    headers = [f"DataLoader {i}" for i in range(len(results))]
    term = shutil.get_terminal_size(fallback=(120, 30)).columns or 120
    width = int(min(max(len(max(names, key=len)), len(max(headers, key=len)), 25), term / 2))
    per_table = max(1, int((term - width) / width))
    use_rich = importlib.util.find_spec("rich") is not None
    for first in range(0, len(headers), per_table):
        chunk = slice(first, first + per_table)
        table_headers = [f"{fn} metric".capitalize(), *headers[chunk]]
        table_cells = [row[chunk] for row in cells]
        if use_rich:
            _print_rich(table_headers, names, table_cells, width)
        else:
            _print_plain(table_headers, names, table_cells, width, term)
