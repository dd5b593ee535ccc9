"""ModelPruning: Lightning 2.6's pruning callback, natively on the busloop bus.

Prunes parameters with ``torch.nn.utils.prune`` at each training epoch end (or validation
epoch end), globally or per layer, optionally resetting the surviving weights to their
initial values (the lottery ticket hypothesis). ``make_pruning_permanent`` removes the
re-parametrisation when training ends and writes checkpoints with the pruned weights
(``weight`` = ``weight_orig * weight_mask``) instead of ``weight_orig`` / ``weight_mask``.

Beyond Lightning, for configuration files: ``parameters_to_prune`` may name parameters by
their dotted path (``"net.0.weight"``), and ``amount``, ``apply_pruning`` and
``use_lottery_ticket_hypothesis`` may be a mapping from epoch to value (epochs not listed
get 0 / False).
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from runtime.callback import Callback
from runtime.registry import register

__all__ = ["ModelPruning"]

log = logging.getLogger("busloop.callbacks")

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "ln_structured": prune.ln_structured,
    "l1_unstructured": prune.l1_unstructured,
    "random_structured": prune.random_structured,
    "random_unstructured": prune.random_unstructured,
}
_METHODS: dict[str, type[prune.BasePruningMethod]] = {
    "ln_structured": prune.LnStructured,
    "l1_unstructured": prune.L1Unstructured,
    "random_structured": prune.RandomStructured,
    "random_unstructured": prune.RandomUnstructured,
}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _by_epoch(value: Any, epoch: int, default: Any) -> Any:
    """A value that may be a constant, ``callable(epoch)`` or a ``{epoch: value}`` mapping."""
    if callable(value):
        return value(epoch)
    if isinstance(value, Mapping):
        return {int(k): v for k, v in value.items()}.get(epoch, default)
    return value


@register()
class ModelPruning(Callback):
    """Prune ``parameters_to_prune`` (all weights and biases by default) every epoch.

    ``pruning_fn``: "l1_unstructured", "random_unstructured", "ln_structured",
    "random_structured", or a ``torch.nn.utils.prune.BasePruningMethod`` subclass (global
    pruning only). ``amount``: a fraction, a count, ``callable(epoch)`` or ``{epoch: amount}``.
    ``use_global_unstructured``: one threshold across all parameters. ``pruning_dim`` /
    ``pruning_norm``: for the structured methods. ``verbose``: 1 logs overall sparsity, 2 per
    layer. The rest as Lightning's ModelPruning.
    """

    PARAMETER_NAMES = ("weight", "bias")

    def __init__(
        self,
        pruning_fn: Callable[..., Any] | str,
        parameters_to_prune: Sequence[tuple[nn.Module, str] | str] = (),
        parameter_names: list[str] | None = None,
        use_global_unstructured: bool = True,
        amount: int | float | Callable[[int], int | float] | Mapping[Any, int | float] = 0.5,
        apply_pruning: bool | Callable[[int], bool] | Mapping[Any, bool] = True,
        make_pruning_permanent: bool = True,
        use_lottery_ticket_hypothesis: bool | Callable[[int], bool] | Mapping[Any, bool] = True,
        resample_parameters: bool = False,
        pruning_dim: int | None = None,
        pruning_norm: int | None = None,
        verbose: int = 0,
        prune_on_train_epoch_end: bool = True,
    ) -> None:
        name = "ModelPruning"
        self._use_global_unstructured = use_global_unstructured
        self._requested = list(parameters_to_prune)
        self._parameters_to_prune: list[tuple[nn.Module, str]] = []
        self._parameter_names = list(parameter_names or self.PARAMETER_NAMES)
        for parameter in self._parameter_names:
            if parameter not in self.PARAMETER_NAMES:
                raise ValueError(f"{name}: parameter_names: {parameter!r} is not one of {self.PARAMETER_NAMES}")
        self._global_kwargs: dict[str, Any] = {}
        self._method_name: str
        if isinstance(pruning_fn, str):
            key = pruning_fn.lower()
            if key not in _FUNCTIONS:
                raise ValueError(f"{name}: pruning_fn {pruning_fn!r} is not one of {sorted(_FUNCTIONS)}")
            kwargs: dict[str, Any] = {}
            if key.endswith("_structured"):
                if pruning_dim is None:
                    raise ValueError(f"{name}: pruning_dim is required for structured pruning ({key})")
                if key == "ln_structured":
                    if pruning_norm is None:
                        raise ValueError(f"{name}: pruning_norm is required for ln_structured")
                    kwargs["n"] = pruning_norm
                kwargs["dim"] = pruning_dim
            if use_global_unstructured:
                method: Any = _METHODS[key]
                self._global_kwargs = kwargs
            else:
                method = partial(_FUNCTIONS[key], **kwargs)
            self._method_name = (_METHODS if use_global_unstructured else _FUNCTIONS)[key].__name__
        elif inspect.isclass(pruning_fn) and issubclass(pruning_fn, prune.BasePruningMethod):
            if not use_global_unstructured:
                raise ValueError(f"{name}: a BasePruningMethod pruning_fn needs use_global_unstructured=True")
            method, self._method_name = pruning_fn, pruning_fn.__name__
        else:
            raise ValueError(
                f"{name}: pruning_fn must be one of {sorted(_FUNCTIONS)} or a BasePruningMethod "
                f"subclass (the class, not an instance), got {pruning_fn!r}"
            )
        if use_global_unstructured and getattr(method, "PRUNING_TYPE", None) != "unstructured":
            raise ValueError(f"{name}: use_global_unstructured=True needs an unstructured method, got {method}")
        self.pruning_fn = method
        if isinstance(amount, bool) or not (isinstance(amount, int | float | Mapping) or callable(amount)):
            raise ValueError(f"{name}: amount must be an int, a float, a callable or {{epoch: amount}}, got {amount!r}")
        self.amount = amount
        if verbose not in (0, 1, 2):
            raise ValueError(f"{name}: verbose must be 0, 1 or 2, got {verbose!r}")
        self._apply_pruning = apply_pruning
        self._make_pruning_permanent = make_pruning_permanent
        self._use_lottery_ticket_hypothesis = use_lottery_ticket_hypothesis
        self._resample_parameters = resample_parameters
        self._verbose = verbose
        self._prune_on_train_epoch_end = prune_on_train_epoch_end
        self._original_layers: dict[int, tuple[nn.Module, list[tuple[int, str]]]] = {}

    def filter_parameters_to_prune(self, parameters_to_prune: list[tuple[nn.Module, str]]) -> list[tuple[nn.Module, str]]:
        """Override to choose which of the resolved ``(module, name)`` pairs are pruned."""
        return parameters_to_prune

    # ------------------------------------------------------------------ events
    def on_setup(self, runtime: Any, stage: str) -> None:
        self._parameters_to_prune = self.filter_parameters_to_prune(self._resolve(runtime.model))
        self._original_layers = {}
        if self._use_lottery_ticket_hypothesis:
            for i, (module, param) in enumerate(self._parameters_to_prune):
                entry = self._original_layers.setdefault(id(module), (copy.deepcopy(module), []))
                entry[1].append((i, param))

    def on_train_epoch_end(self, runtime: Any) -> None:
        if self._prune_on_train_epoch_end:
            self._run_pruning(runtime.state.epoch)

    def on_validation_epoch_end(self, runtime: Any) -> None:
        if not runtime.state.sanity_checking and not self._prune_on_train_epoch_end:
            self._run_pruning(runtime.state.epoch)

    def on_train_end(self, runtime: Any) -> None:
        if self._make_pruning_permanent:
            self.make_pruning_permanent(runtime.model)

    def on_save_checkpoint(self, runtime: Any, checkpoint: dict[str, Any]) -> None:
        if self._make_pruning_permanent:
            checkpoint["state_dict"] = self._permanent_state_dict(runtime.model)

    # ------------------------------------------------------------------ pruning
    def _resolve(self, model: nn.Module) -> list[tuple[nn.Module, str]]:
        """``parameters_to_prune`` as (module, name) pairs of ``model``; all of them by default."""
        modules = [  # as Lightning: containers and the LightningModule itself are skipped
            m for m in model.modules()
            if not isinstance(m, _CONTAINERS) and not (m is model and hasattr(m, "training_step"))
        ]
        if not self._requested:
            return [
                (m, p) for p in self._parameter_names for m in modules
                if isinstance(getattr(m, p, None), nn.Parameter)
            ]
        pairs: list[tuple[nn.Module, str]] = []
        for entry in self._requested:
            if isinstance(entry, str):
                path, _, param = entry.rpartition(".")
                try:
                    module = model.get_submodule(path)
                except AttributeError:
                    raise ValueError(f"ModelPruning: parameters_to_prune: the model has no module {path!r}") from None
                entry = (module, param)
            if not (isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[0], nn.Module)):
                raise ValueError(f"ModelPruning: parameters_to_prune entries must be (module, name) or 'path.name', got {entry!r}")
            module, param = entry
            if not any(module is m for m in model.modules()):
                raise ValueError(f"ModelPruning: parameters_to_prune: {type(module).__name__} is not part of the model")
            if not hasattr(module, param):
                raise ValueError(f"ModelPruning: parameters_to_prune: {type(module).__name__} has no {param!r}")
            pairs.append((module, param))
        return pairs

    def _run_pruning(self, epoch: int) -> None:
        amount = _by_epoch(self.amount, epoch, 0)
        if not _by_epoch(self._apply_pruning, epoch, False) or not amount:
            return
        self.apply_pruning(amount)
        if _by_epoch(self._use_lottery_ticket_hypothesis, epoch, False):
            self.apply_lottery_ticket_hypothesis()

    def apply_pruning(self, amount: int | float) -> None:
        """Prune ``parameters_to_prune`` by ``amount`` (globally or per parameter)."""
        before = [self._pruned(m, n) for m, n in self._parameters_to_prune] if self._verbose else []
        if self._use_global_unstructured:
            kwargs = {**self._global_kwargs, "amount": amount}
            accepted = set(inspect.signature(self.pruning_fn).parameters) - {"self"}
            prune.global_unstructured(
                self._parameters_to_prune, pruning_method=self.pruning_fn,
                **{k: v for k, v in kwargs.items() if k in accepted},
            )
        else:
            for module, param in self._parameters_to_prune:
                self.pruning_fn(module, name=param, amount=amount)
        if self._verbose:
            self._log_sparsity(before, [self._pruned(m, n) for m, n in self._parameters_to_prune], amount)

    def apply_lottery_ticket_hypothesis(self) -> None:
        """Reset the surviving weights to their values at setup (or resample them)."""
        for original, names in self._original_layers.values():
            source = original
            if self._resample_parameters and callable(getattr(original, "reset_parameters", None)):
                source = copy.deepcopy(original)
                source.reset_parameters()  # type: ignore[operator]
            for i, param in names:
                module, _ = self._parameters_to_prune[i]
                target = getattr(module, param + "_orig", None)
                if target is None:
                    target = getattr(module, param)
                value = getattr(source, param)
                if isinstance(target, torch.Tensor) and isinstance(value, torch.Tensor):
                    target.data = value.data.to(target.device)

    @staticmethod
    def make_pruning_permanent(model: nn.Module) -> None:
        """Remove the pruning re-parametrisation: the pruned weights become plain parameters."""
        for module in model.modules():
            for key, hook in list(module._forward_pre_hooks.items()):
                if isinstance(hook, prune.BasePruningMethod):
                    hook.remove(module)
                    del module._forward_pre_hooks[key]

    @staticmethod
    def _permanent_state_dict(model: nn.Module) -> dict[str, Any]:
        state = model.state_dict()
        for name in [k[: -len("_mask")] for k in state if k.endswith("_mask")]:
            orig, mask = state.pop(name + "_orig"), state.pop(name + "_mask")
            state[name] = mask.to(dtype=orig.dtype) * orig
        return {k: v.cpu() for k, v in state.items()}

    @staticmethod
    def _pruned(module: nn.Module, name: str) -> tuple[int, int]:
        mask = getattr(module, f"{name}_mask", None)
        return (0, 1) if mask is None else (int((mask == 0).sum().item()), mask.numel())

    def _log_sparsity(self, before: list[tuple[int, int]], after: list[tuple[int, int]], amount: float) -> None:
        total = sum(n for _, n in after)
        zeros_before, zeros_after = sum(z for z, _ in before), sum(z for z, _ in after)
        log.info(
            "Applied `%s`. Pruned: %d/%d (%.2f%%) -> %d/%d (%.2f%%)", self._method_name,
            zeros_before, total, 100 * zeros_before / total, zeros_after, total, 100 * zeros_after / total,
        )
        if self._verbose == 2:
            for (module, name), (z0, n0), (z1, n1) in zip(self._parameters_to_prune, before, after, strict=True):
                log.info(
                    "Applied `%s` to `%r.%s` with amount=%s. Pruned: %d (%.2f%%) -> %d (%.2f%%)",
                    self._method_name, module, name, amount, z0, 100 * z0 / n0, z1, 100 * z1 / n1,
                )
