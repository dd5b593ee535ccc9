"""The callback registry: names in config resolve to callback classes, and the default set.

A config entry ``{name, active, params}`` names a registered callback (native ones, and the
Lightning-compatible ones of ``compat`` once that package registers them) or an import path
(``mypkg.cbs:MyCallback`` or ``lightning.pytorch.callbacks.LearningRateMonitor``). Only
import paths the user wrote are imported.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from runtime.config import CallbackSpec, Config, ConfigError
from runtime.names import resolve_import, suggest

log = logging.getLogger("busloop.callbacks")

__all__ = ["CALLBACKS", "build_callbacks", "register", "resolve_callback", "instantiate"]

T = TypeVar("T", bound=type)

#: Registered name -> callback class.
CALLBACKS: dict[str, type] = {}


def register(*names: str) -> Callable[[T], T]:
    """Class decorator: register a callback under its class name and any extra ``names``."""

    def decorate(cls: T) -> T:
        for name in (cls.__name__, *names):
            if name in CALLBACKS and CALLBACKS[name] is not cls:
                raise ValueError(f"callback name {name!r} is already registered by {CALLBACKS[name]}")
            CALLBACKS[name] = cls
        return cls

    return decorate


def _load_builtin_callbacks() -> None:
    """Import the modules that register callbacks (native, then compat when present)."""
    import callbacks  # noqa: F401  (its __init__ imports every native module)

    try:
        import compat  # noqa: F401
    except ImportError:  # pragma: no cover - compat ships with busloop
        pass


def resolve_callback(name: str, *, key: str) -> type:
    """The class for a registered name or an import path; ConfigError names ``key``."""
    _load_builtin_callbacks()
    if name in CALLBACKS:
        return CALLBACKS[name]
    if ":" in name or "." in name:
        resolved = resolve_import(name, key=key)
        if not callable(resolved):
            raise ConfigError(f"{key}: {name!r} is not a class or factory")
        return resolved  # type: ignore[no-any-return]
    raise ConfigError(
        f"{key}: unknown callback {name!r}{suggest(name, CALLBACKS)} "
        "(use a registered name or an import path like 'pkg.module:MyCallback')"
    )


def instantiate(cls: type, params: dict[str, Any], *, key: str) -> object:
    """``cls(**params)``, with a parameter mismatch reported as a ConfigError naming ``key``."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        if not accepts_any:
            known = [n for n, p in signature.parameters.items() if p.kind is not p.VAR_POSITIONAL]
            for param in params:
                if param not in known:
                    raise ConfigError(
                        f"{key}.params.{param}: {cls.__name__} has no parameter {param!r}"
                        f"{suggest(param, known)}; it takes {', '.join(known) or 'none'}"
                    )
        try:
            signature.bind(**params)
        except TypeError as exc:
            raise ConfigError(f"{key}.params: {cls.__name__}: {exc}") from None
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}.params: {cls.__name__} rejected its parameters: {exc}") from None


def _build_entries(entries: Sequence[CallbackSpec]) -> list[object]:
    built: list[object] = []
    first: list[object] = []
    for index, entry in enumerate(entries):
        key = f"trainer.callbacks.{index}"
        cls = resolve_callback(entry.name, key=f"{key}.name")
        if not entry.active:
            log.info("Callback %s is inactive, skipping", entry.name)
            continue
        callback = instantiate(cls, dict(entry.params), key=key)
        # EMA must see every optimizer step before other callbacks read the weights.
        (first if entry.name == "EMACallback" else built).append(callback)
    return first + built


#: Callbacks that smart_cfg_auto_populate appends unless already listed (in this order).
#: TODO(issue: export, archive and conversion callbacks): add "ConvertOnTrainEnd" once built.
AUTO_POPULATED = ("UploadCheckpoint", "TestOnTrainEnd")


def default_callbacks(config: Config) -> list[tuple[str, object]]:
    """The default callbacks in luxonis-train's order, as ``(name, callback)`` pairs."""
    from callbacks.checkpoint import ModelCheckpoint
    from callbacks.fail_on_no_batches import FailOnNoTrainBatches
    from callbacks.interrupt import GracefulInterruptCallback
    from callbacks.progress import LuxonisRichProgressBar, LuxonisTQDMProgressBar
    from callbacks.summary import LuxonisModelSummary
    from callbacks.training_manager import TrainingManager

    trainer = config.trainer
    progress: object = LuxonisRichProgressBar() if trainer.rich_logging else LuxonisTQDMProgressBar()
    defaults: list[tuple[str, object]] = [
        ("GracefulInterruptCallback", GracefulInterruptCallback()),
        ("FailOnNoTrainBatches", FailOnNoTrainBatches()),
        (type(progress).__name__, progress),
        ("TrainingManager", TrainingManager()),
        ("LuxonisModelSummary", LuxonisModelSummary(rich=trainer.rich_logging, max_depth=2)),
        (
            "ModelCheckpoint",
            ModelCheckpoint(
                monitor="val/loss", mode="min", save_top_k=trainer.save_top_k, subdir="min_val_loss"
            ),
        ),
    ]
    if trainer.main_metric is not None:
        defaults.append(
            (
                "ModelCheckpoint",
                ModelCheckpoint(
                    monitor=trainer.main_metric.name,
                    mode=trainer.main_metric.mode,
                    save_top_k=trainer.save_top_k,
                    subdir="best_val_metric",
                ),
            )
        )
    return defaults


def build_callbacks(config: Config) -> list[object]:
    """The callbacks of a run, in call order.

    1. Defaults (luxonis-train's order): GracefulInterruptCallback, FailOnNoTrainBatches, the
       progress bar (Rich when ``rich_logging``, else TQDM), TrainingManager, the model
       summary, a ModelCheckpoint on min ``val/loss`` and, with a main metric, one on it.
       A default whose class name the user lists (active or not) is left out: the user's
       entry replaces it (``active: false`` switches a default off). ModelCheckpoint is the
       exception: listing one adds a checkpoint, it does not replace the defaults.
    2. The user's callbacks in config order, EMACallback moved to the front of them.
    3. GradientAccumulationScheduler ``{0: accumulate_grad_batches}`` when that is set and
       no GradientAccumulationScheduler is listed.
    4. With ``smart_cfg_auto_populate``: UploadCheckpoint and TestOnTrainEnd, each unless
       listed, each logged as "Added X callback".
    """
    from callbacks.grad_accumulation import GradientAccumulationScheduler

    trainer = config.trainer
    _load_builtin_callbacks()
    listed = {_class_name(entry.name) for entry in trainer.callbacks}
    callbacks = [
        callback
        for name, callback in default_callbacks(config)
        if name == "ModelCheckpoint" or name not in listed
    ]
    callbacks += _build_entries(trainer.callbacks)
    if trainer.accumulate_grad_batches and "GradientAccumulationScheduler" not in listed:
        callbacks.append(GradientAccumulationScheduler({0: trainer.accumulate_grad_batches}))
    if trainer.smart_cfg_auto_populate:
        for name in AUTO_POPULATED:
            if name not in listed:
                callbacks.append(instantiate(resolve_callback(name, key=name), {}, key=name))
                log.info("Added %s callback", name)
    return callbacks


def _class_name(name: str) -> str:
    """The class name a config entry refers to (aliases resolved, import paths' last part)."""
    if name in CALLBACKS:
        return CALLBACKS[name].__name__
    return name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
