"""Where :class:`compat.Trainer` takes a call's data from, as Lightning's trainer does.

Loaders given to the call win; then a datamodule; else the LightningModule's own loader
hooks (``train_dataloader`` ...), which :func:`module_data` presents to the Runtime as a
datamodule with just those methods (the module's ``prepare_data`` and ``setup`` already run as
module hooks). A stage whose step the module does not override gets no loader: Lightning skips
validation without ``validation_step``.
"""

from __future__ import annotations

from typing import Any

from runtime.datamodule import LOADER_METHODS

__all__ = ["ModuleData", "module_data", "overrides"]

_STEPS = {"fit": "training_step", "validate": "validation_step", "test": "test_step", "predict": "predict_step"}


def overrides(model: object, name: str) -> bool:
    """Whether ``model``'s class defines ``name`` itself (not Lightning's base default)."""
    from compat.module import lightning_base_classes

    method = getattr(type(model), name, None)
    if method is None or getattr(model, name, None) is None:  # ``model.val_dataloader = None``
        return False
    bases = lightning_base_classes(model) or ()
    return all(getattr(base, name, None) is not method for base in bases)


class ModuleData:
    """A LightningModule's loader hooks seen as a datamodule (a subclass per module carries
    only the methods that module overrides)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __repr__(self) -> str:
        return f"ModuleData({type(self.model).__name__})"


def _delegate(method: str) -> Any:
    def call(self: ModuleData) -> Any:
        return getattr(self.model, method)()

    call.__name__ = method
    return call


def module_data(model: Any, fn: str) -> ModuleData | None:
    """The module's loaders for ``fn`` ("fit", "validate", ...), or None when it has none."""
    methods = {}
    for stage, method in LOADER_METHODS.items():
        if overrides(model, method) and (stage == "predict" or overrides(model, _STEPS[stage])):
            methods[method] = _delegate(method)
    if LOADER_METHODS[fn] not in methods:
        return None
    return type(f"{type(model).__name__}Data", (ModuleData,), methods)(model)


def without_validation(model: Any) -> bool:
    """Lightning skips validation (with loaders given or not) for a module without
    ``validation_step``; plain ``nn.Module`` models validate with their loss."""
    from compat.module import lightning_base_classes

    return lightning_base_classes(model) is not None and not overrides(model, "validation_step")
