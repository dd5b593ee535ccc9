"""DataModules: where a run's loaders come from when it is handed a datamodule, not loaders.

A datamodule is duck typed: a ``lightning.pytorch.LightningDataModule`` or any object with
``train_dataloader`` / ``val_dataloader`` / ``test_dataloader`` / ``predict_dataloader``
methods, and optionally ``prepare_data``, ``setup(stage)``, ``teardown(stage)``,
``state_dict`` / ``load_state_dict``. The runtime calls them where Lightning 2.6's Trainer
does: ``prepare_data`` on rank zero (of the node, with ``prepare_data_per_node``, the
default), then ``setup(stage)`` before the callbacks' ``setup``, the loader methods after
it, and ``teardown(stage)`` before the callbacks' ``teardown``. Its state is saved in
checkpoints under its class's ``__qualname__`` (Lightning's key).

One difference from Lightning: ``fit`` asks for the loaders right after the ``setup``
event, before ``fit_start`` (Lightning asks after ``on_fit_start``), because busloop's
callbacks read the batch counts and the validation loader at ``fit_start``. The
datamodule's own calls come in Lightning's order.

Nothing here imports Lightning: whether a LightningDataModule overrides a loader method is
decided against Lightning's ``DataHooks`` only when Lightning is already imported.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from runtime import distributed as dist
from runtime.errors import ConfigError

__all__ = [
    "LOADER_METHODS",
    "as_datamodule",
    "defines",
    "fit_loaders",
    "loader_of",
    "prepare_and_setup",
    "teardown",
]

#: The loader method a stage's data comes from.
LOADER_METHODS = {
    "fit": "train_dataloader",
    "validate": "val_dataloader",
    "test": "test_dataloader",
    "predict": "predict_dataloader",
}

#: Modules whose ``DataHooks`` hold Lightning's no-op / raising base implementations.
_LIGHTNING_HOOK_MODULES = ("lightning.pytorch.core.hooks", "pytorch_lightning.core.hooks")


def _base_hooks(name: str) -> list[Any]:
    """Lightning's base implementations of ``name`` (only from an already-imported Lightning)."""
    found = []
    for module_name in _LIGHTNING_HOOK_MODULES:
        hooks = sys.modules.get(module_name)
        base = getattr(getattr(hooks, "DataHooks", None), name, None)
        if base is not None:
            found.append(base)
    return found


def defines(obj: object, name: str) -> bool:
    """Whether ``obj`` has a method ``name`` of its own (not Lightning's ``DataHooks`` default)."""
    method = getattr(type(obj), name, None)
    if not callable(method):
        return False
    return all(method is not base for base in _base_hooks(name))


def _is_datamodule(obj: object) -> bool:
    return obj is not None and any(callable(getattr(obj, m, None)) for m in LOADER_METHODS.values())


def _name(dm: object) -> str:
    return type(dm).__qualname__


def as_datamodule(data: Any, datamodule: Any, stage: str) -> Any:
    """The datamodule of a run: ``datamodule=``, or a datamodule given in place of a loader.

    Returns None when the run got loaders. Both a loader and a datamodule, or a datamodule
    without the loader method ``stage`` needs, is a :class:`ConfigError`.
    """
    if datamodule is None and _is_datamodule(data):
        data, datamodule = None, data
    if datamodule is None:
        return None
    if data is not None:
        raise ConfigError(
            f"{stage}: got both loaders and datamodule {_name(datamodule)}; pass one of them"
        )
    if not _is_datamodule(datamodule):
        raise ConfigError(
            f"{stage}: datamodule {_name(datamodule)} has none of the methods "
            f"{', '.join(LOADER_METHODS.values())}"
        )
    method = LOADER_METHODS[stage]
    if not defines(datamodule, method):
        raise ConfigError(f"{stage}: datamodule {_name(datamodule)} defines no {method}()")
    return datamodule


def prepare_and_setup(dm: Any, model: object, stage: str, device: Any) -> None:
    """``prepare_data`` (module and datamodule, on rank zero), then ``dm.setup(stage)``.

    As Lightning: ``prepare_data`` runs on each node's rank zero, or only on global rank
    zero when ``prepare_data_per_node`` is False; every rank waits for it.
    """
    dist.init_process_group(device)  # ranks must be known (and able to wait) first
    for owner in (dm, model):
        if defines(owner, "prepare_data"):
            per_node = getattr(owner, "prepare_data_per_node", True)
            if (dist.local_rank() if per_node else dist.rank()) == 0:
                owner.prepare_data()  # type: ignore[union-attr]
    dist.barrier()
    if defines(dm, "setup"):
        dm.setup(stage=stage)


def fit_loaders(dm: Any, *, sanity_check: bool) -> tuple[Iterable[Any], Iterable[Any] | None]:
    """``(train, val)`` loaders for ``fit``; ``val`` is None when the datamodule has none.

    Asked in Lightning's order: the validation loader first when a sanity check will run
    (Lightning builds it for the check), the training loader first otherwise.
    """
    has_val = defines(dm, "val_dataloader")
    val = dm.val_dataloader() if has_val and sanity_check else None
    train = loader_of(dm, "fit")
    if has_val and not sanity_check:
        val = dm.val_dataloader()
    return train, val


def loader_of(dm: Any, stage: str) -> Iterable[Any]:
    """The loader ``stage`` needs, from the datamodule's method for it."""
    method = LOADER_METHODS[stage]
    loader = getattr(dm, method)()
    if loader is None:
        raise ConfigError(f"{stage}: {_name(dm)}.{method}() returned None")
    return loader  # type: ignore[no-any-return]


def teardown(dm: Any, stage: str) -> None:
    """``dm.teardown(stage)``, when the datamodule defines it."""
    if defines(dm, "teardown"):
        dm.teardown(stage=stage)
