"""The default callback set of a config run, in luxonis-train's order.

:func:`build_callbacks` turns ``trainer.callbacks`` and the trainer switches into the
callbacks of a run; :func:`default_callbacks` is the part a run gets without listing
anything. Names resolve through :mod:`runtime.registry`, into which this package and
``compat`` register on import.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from callbacks.fail_on_no_batches import FailOnNoTrainBatches
from callbacks.interrupt import GracefulInterruptCallback
from callbacks.progress import LuxonisRichProgressBar, LuxonisTQDMProgressBar
from callbacks.summary import LuxonisModelSummary
from callbacks.training_manager import TrainingManager
from compat.gradient_accumulation import GradientAccumulationScheduler
from compat.model_checkpoint import ModelCheckpoint
from runtime.config import CallbackSpec, Config
from runtime.registry import class_name, instantiate, resolve_callback

log = logging.getLogger("busloop.callbacks")

__all__ = ["AUTO_POPULATED", "build_callbacks", "default_callbacks"]

#: Callbacks that smart_cfg_auto_populate appends unless already listed (in this order).
AUTO_POPULATED = ("UploadCheckpoint", "TestOnTrainEnd", "ConvertOnTrainEnd")
#: What an active ConvertOnTrainEnd does itself, so their own entries are switched off.
CONVERT_DOES = ("ExportOnTrainEnd", "ArchiveOnTrainEnd")


def default_callbacks(config: Config) -> list[tuple[str, object]]:
    """The default callbacks in luxonis-train's order, as ``(name, callback)`` pairs."""
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
       entry replaces it (``active: false`` switches a default off). ModelCheckpoint: an
       active entry adds a checkpoint next to the defaults; an entry with ``active: false``
       switches the default ModelCheckpoints off.
    2. The user's callbacks in config order, EMACallback moved to the front of them.
    3. GradientAccumulationScheduler ``{0: accumulate_grad_batches}`` when that is set and
       no GradientAccumulationScheduler is listed.
    4. With ``smart_cfg_auto_populate``: UploadCheckpoint, TestOnTrainEnd and
       ConvertOnTrainEnd, each unless listed, each logged as "Added X callback".

    When ConvertOnTrainEnd is active (listed or added), active ExportOnTrainEnd and
    ArchiveOnTrainEnd entries are switched off with a warning: Convert exports and archives.
    """
    trainer = config.trainer
    listed = {class_name(entry.name) for entry in trainer.callbacks}
    inactive = {class_name(entry.name) for entry in trainer.callbacks if not entry.active}
    callbacks = [
        callback
        for name, callback in default_callbacks(config)
        if (name not in inactive if name == "ModelCheckpoint" else name not in listed)
    ]
    callbacks += _build_entries(_without_convert_duplicates(config))
    if trainer.accumulate_grad_batches and "GradientAccumulationScheduler" not in listed:
        callbacks.append(GradientAccumulationScheduler({0: trainer.accumulate_grad_batches}))
    if trainer.smart_cfg_auto_populate:
        for name in AUTO_POPULATED:
            if name not in listed:
                callbacks.append(instantiate(resolve_callback(name, key=name), {}, key=name))
                log.info("Added %s callback", name)
    return callbacks


def _without_convert_duplicates(config: Config) -> list[CallbackSpec]:
    """The callback entries, minus active Export/Archive ones when Convert is active."""
    entries = list(config.trainer.callbacks)
    names = [class_name(entry.name) for entry in entries]
    convert = [e for e, n in zip(entries, names, strict=True) if n == "ConvertOnTrainEnd"]
    if not any(e.active for e in convert) and (convert or not config.trainer.smart_cfg_auto_populate):
        return entries
    kept = []
    for entry, name in zip(entries, names, strict=True):
        if name in CONVERT_DOES and entry.active:
            log.warning("ConvertOnTrainEnd is active: switching off %s (Convert does it)", name)
            continue
        kept.append(entry)
    return kept


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
