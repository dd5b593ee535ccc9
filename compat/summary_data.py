"""What a model summary shows, computed once for every summary callback.

Per layer (to ``max_depth``): name, type, parameter count (its whole subtree, as Lightning
counts), train / eval mode and, given an example input, the input and output sizes of its
first call. Totals: trainable / non-trainable / total parameters, the size in MB (4 bytes per
parameter, MB = 1e6 bytes) and the modules in train / eval mode (root excluded).

It lives in ``compat`` so that both compat's ``RichModelSummary`` and the luxonis-style
``callbacks.summary.LuxonisModelSummary`` use it (``compat`` never imports ``callbacks``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from runtime.data import move_to_device

__all__ = ["UNKNOWN_SIZE", "LayerInfo", "ModelSummaryData", "human_count", "summarize_model"]

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
