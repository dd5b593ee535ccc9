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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text
from torch import nn
from torch.nn.parameter import UninitializedParameter

from callbacks.progress import ConsoleOutput, human_count, install_echo_filter, plain_table
from runtime.callback import Callback
from runtime.data import move_to_device
from runtime.distributed import is_rank_zero
from runtime.loop import Runtime
from runtime.registry import register

__all__ = ["LayerInfo", "LuxonisModelSummary", "ModelSummaryData", "summarize_model"]

log = logging.getLogger("busloop.summary")

UNKNOWN_SIZE = "?"
_BYTES_PER_PARAM = 4  # float32, as Lightning's "32" precision


@dataclass
class LayerInfo:
    """One row of the summary."""

    name: str
    type: str
    params: int
    training: bool
    in_size: Any = UNKNOWN_SIZE
    out_size: Any = UNKNOWN_SIZE

    @property
    def mode(self) -> str:
        """``train`` or ``eval``."""
        return "train" if self.training else "eval"


@dataclass
class ModelSummaryData:
    """The numbers behind the summary table."""

    layers: list[LayerInfo]
    total_params: int
    trainable_params: int
    modules_in_train: int
    modules_in_eval: int
    has_sizes: bool = False
    other_params: int = 0
    """Parameters owned by no listed layer (e.g. directly by the root module)."""
    notes: list[str] = field(default_factory=list)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def size_mb(self) -> float:
        """Estimated size of the parameters in MB (float32)."""
        return self.total_params * _BYTES_PER_PARAM / 1e6


def _numel(param: torch.Tensor) -> int:
    return 0 if isinstance(param, UninitializedParameter) else param.numel()


def _shape_of(value: Any) -> Any:
    """Shapes of tensors in ``value`` (nested lists/tuples/dicts), ``?`` for anything else."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, Mapping):
        return {str(k): _shape_of(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shape_of(v) for v in value]
    return UNKNOWN_SIZE


def _selected_modules(model: nn.Module, max_depth: int) -> list[tuple[str, nn.Module]]:
    if max_depth == 0:
        return []
    modules = list(model.named_modules())[1:]  # the root is summarised by the totals
    if max_depth < 0:
        return modules
    return [(name, m) for name, m in modules if name.count(".") + 1 <= max_depth]


def _run_example(model: nn.Module, example: Any, notes: list[str]) -> bool:
    """Forward ``example`` once: eval mode, no grad, RNG untouched, modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    example = move_to_device(example, device)
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            model.eval()
            if isinstance(example, list | tuple):
                model(*example)
            elif isinstance(example, Mapping):
                model(**example)
            else:
                model(example)
        return True
    except Exception as exc:  # a summary must never stop training
        notes.append(f"in/out sizes unknown: the example input failed: {type(exc).__name__}: {exc}")
        return False
    finally:
        for module, training in modes:
            module.training = training


def summarize_model(
    model: nn.Module, max_depth: int = 2, example_input: Any = None
) -> ModelSummaryData:
    """Collect the summary of ``model``; in/out sizes when ``example_input`` is given.

    ``max_depth``: layers nested at most this deep (1 = direct children); -1 all; 0 none.
    """
    selected = _selected_modules(model, max_depth)
    layers = [
        LayerInfo(
            name=name,
            type=type(module).__name__,
            params=sum(_numel(p) for p in module.parameters()),
            training=module.training,
        )
        for name, module in selected
    ]
    params = list(model.parameters())
    total = sum(_numel(p) for p in params)
    trainable = sum(_numel(p) for p in params if p.requires_grad)
    modes = [m.training for m in list(model.modules())[1:]]
    notes: list[str] = []
    if any(isinstance(p, UninitializedParameter) for p in params):
        notes.append("the model has lazy (uninitialized) parameters; counts may be low")
    covered = {id(p) for _, module in selected for p in module.parameters()}
    other = sum(_numel(p) for p in params if id(p) not in covered) if max_depth != 0 else 0

    has_sizes = False
    if example_input is not None and layers:
        handles = []
        for info, (_, module) in zip(layers, selected, strict=True):
            if isinstance(module, torch.jit.ScriptModule):
                continue

            def hook(
                _module: nn.Module,
                args: tuple[Any, ...],
                kwargs: dict[str, Any],
                output: Any,
                info: LayerInfo = info,
            ) -> None:
                if info.in_size is not UNKNOWN_SIZE:
                    return  # a module called twice reports its first call
                inputs = (*args, *kwargs.values())
                info.in_size = _shape_of(inputs[0] if len(inputs) == 1 else inputs)
                info.out_size = _shape_of(output)

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        try:
            has_sizes = _run_example(model, example_input, notes)
        finally:
            for handle in handles:
                handle.remove()
    return ModelSummaryData(
        layers=layers,
        total_params=total,
        trainable_params=trainable,
        modules_in_train=modes.count(True),
        modules_in_eval=modes.count(False),
        has_sizes=has_sizes,
        other_params=other,
        notes=notes,
    )


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
