"""The callbacks :class:`compat.Trainer` adds where Lightning's trainer adds them.

Lightning appends to the user's callbacks, in this order: a ``ModelCheckpoint`` (when
``enable_checkpointing`` and none is given), a ``Timer`` (``max_time``), a progress bar (Rich's
when ``rich`` is installed, else TQDM's; when ``enable_progress_bar`` and none is given) and a
model summary (``RichModelSummary`` / ``ModelSummary``; when ``enable_model_summary`` and none is
given); then it moves checkpoint callbacks last. The front does the same with Lightning's stock
classes when the program imported Lightning (it is coming from Lightning), else with compat's
re-implementations (no progress bar then: busloop's bars live in the ``callbacks`` package).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import TYPE_CHECKING, Any

from runtime.errors import ConfigError

if TYPE_CHECKING:
    from compat.trainer_args import TrainerArgs

log = logging.getLogger("busloop")

__all__ = ["callback_role", "default_callbacks", "misconfiguration", "run_callbacks"]


def misconfiguration(message: str) -> ConfigError:
    """A ConfigError that is also Lightning's ``MisconfigurationException`` when Lightning is
    imported, so code that catches Lightning's error still does."""
    exceptions = sys.modules.get("lightning.fabric.utilities.exceptions")
    lightning_error = getattr(exceptions, "MisconfigurationException", None)
    if lightning_error is None:
        return ConfigError(message)
    cls = type("MisconfigurationError", (ConfigError, lightning_error), {"__module__": __name__})
    return cls(message)  # type: ignore[no-any-return]


def _names(obj: object) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def callback_role(callback: object) -> str | None:
    """"checkpoint", "early_stopping" or None, for busloop's and Lightning's callbacks alike."""
    role = getattr(callback, "monitor_role", None)
    if isinstance(role, str):
        return role
    names = _names(callback)
    if "Checkpoint" in names and _is_lightning(callback):
        return "checkpoint"
    if "EarlyStopping" in names and _is_lightning(callback):
        return "early_stopping"
    return None


def _is_lightning(callback: object) -> bool:
    return any(c.__module__.startswith(("lightning.", "pytorch_lightning.")) for c in type(callback).__mro__)


def _stock() -> Any:
    """``lightning.pytorch.callbacks`` when the program imported Lightning, else None."""
    if "lightning.pytorch" not in sys.modules:
        return None
    return importlib.import_module("lightning.pytorch.callbacks")


def _has(callbacks: list[Any], *class_names: str) -> list[Any]:
    return [c for c in callbacks if _names(c) & set(class_names)]


def default_callbacks(args: TrainerArgs) -> list[Any]:
    """The user's callbacks plus Lightning's defaults, checkpoint callbacks last."""
    callbacks = list(args.callbacks)
    stock = _stock()
    rich = importlib.util.find_spec("rich") is not None
    checkpoints = [c for c in callbacks if callback_role(c) == "checkpoint"]
    if checkpoints and not args.enable_checkpointing:
        raise misconfiguration(
            "Trainer was configured with `enable_checkpointing=False` but found "
            f"`{type(checkpoints[0]).__name__}` in callbacks list"
        )
    if args.enable_checkpointing and not checkpoints:
        if stock is not None:
            callbacks.append(stock.ModelCheckpoint())
        else:
            from compat.model_checkpoint import ModelCheckpoint

            callbacks.append(ModelCheckpoint())
    if args.max_time is not None and _has(callbacks, "Timer"):
        log.warning("Ignoring Trainer(max_time=...): the callbacks list already contains a Timer")
    elif args.max_time is not None:
        if stock is not None:
            callbacks.append(stock.Timer(duration=args.max_time, interval="step"))
        else:
            from compat.timer import Timer

            callbacks.append(Timer(duration=args.max_time, interval="step"))
    bars = _has(callbacks, "ProgressBar")
    if len(bars) > 1:
        raise misconfiguration(f"Trainer(callbacks=...): {len(bars)} progress bars; Lightning allows one")
    if bars and not args.enable_progress_bar:
        raise misconfiguration(
            f"Trainer was configured with `enable_progress_bar=False` but found `{type(bars[0]).__name__}` "
            "in callbacks list"
        )
    if args.enable_progress_bar and not bars and stock is not None:
        callbacks.append(stock.RichProgressBar() if rich else stock.TQDMProgressBar())
    if args.enable_model_summary and not _has(callbacks, "ModelSummary", "RichModelSummary"):
        if stock is not None:
            callbacks.append(stock.RichModelSummary() if rich else stock.ModelSummary())
        elif rich:
            from compat.rich_model_summary import RichModelSummary

            callbacks.append(RichModelSummary())
    return [c for c in callbacks if callback_role(c) != "checkpoint"] + [
        c for c in callbacks if callback_role(c) == "checkpoint"
    ]


def run_callbacks(callbacks: list[Any], model: object) -> list[Any]:
    """The callbacks of one run: a Lightning model summary summarises LightningModules only, so
    a plain ``nn.Module`` runs without the default one (Lightning would refuse the module)."""
    from compat.module import lightning_base_classes

    if lightning_base_classes(model) is not None:
        return list(callbacks)
    return [c for c in callbacks if not (_is_lightning(c) and _names(c) & {"ModelSummary", "RichModelSummary"})]
