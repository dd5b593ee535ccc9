"""Stage reports: what is printed at the end of a validation / test epoch, and how.

A report is built once from the epoch's metrics (:func:`build_stage_report`), then rendered
either as fixed-width text (:func:`report_plain`, the TQDM bar) or as rich tables
(:func:`report_rich`, the Rich bar), so both bars print the same content. 2-D metrics
(confusion matrices) reach the report through :func:`publish_matrix`, because the runtime
reduces scalars only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from callbacks.progress.console import format_value, plain_table
from runtime.loop import Runtime

#: Metric prefix -> the stage's printed title.
_STAGE_TITLES = {"train": "Train", "val": "Validation", "test": "Test", "predict": "Predict"}


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
    """The name the stage's loss is logged under in ``metrics``, if any."""
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
        name, marker, loader = name.partition("/dataloader_idx_")  # a stage with several loaders
        group, sep, rest = name.partition("/")
        if not sep:
            group, rest = "", name
        if marker:  # one table per extra loader: "Validation metrics: dataloader_idx_1"
            group = f"{group} dataloader_idx_{loader}".strip()
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
