"""Lightning 2.6's checkpoint format, written into and read from busloop checkpoints.

A busloop checkpoint carries, beside its own keys, what Lightning's Trainer needs to resume
it and what ``LightningModule.load_from_checkpoint`` needs to rebuild the module:
``pytorch-lightning_version``, the ``loops`` progress counters (``current_epoch`` and
``global_step`` are derived from them), ``hyper_parameters`` / ``hparams_name`` of the
module, ``datamodule_hyper_parameters`` / ``datamodule_hparams_name`` and the datamodule's
state under its class ``__qualname__``. ``epoch``, ``global_step``, ``state_dict``,
``optimizer_states``, ``lr_schedulers`` and ``callbacks`` (by ``state_key``) are shared
by both formats.

Reading a checkpoint Lightning wrote, :func:`lightning_resume_epoch` finds from its loop
counters the epoch boundary to continue at, and refuses a checkpoint saved in the middle
of an epoch: Lightning stores neither the random generators nor the loader position, so
no runtime can continue one exactly.

Nothing here imports Lightning; the format is plain dicts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.checkpoint import CheckpointError, check_weights_only_safe

__all__ = [
    "LIGHTNING_FORMAT_VERSION",
    "LIGHTNING_VERSION_KEY",
    "fit_loop_state",
    "hparams_entries",
    "lightning_resume_epoch",
    "loops_state",
]

#: The key Lightning reads a checkpoint's format version from (and migrates older ones by).
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
#: The Lightning release whose checkpoint layout busloop writes.
LIGHTNING_FORMAT_VERSION = "2.6.0"


def _progress(ready: int, started: int, processed: int, completed: int) -> dict[str, int]:
    return {"ready": ready, "started": started, "processed": processed, "completed": completed}


def _counts(ready: int, completed: int, started: int | None = None) -> dict[str, int]:
    counts = {"ready": ready, "completed": completed}
    if started is not None:
        counts["started"] = started
    return counts


def _batch_progress(current: dict[str, int], total: dict[str, int], is_last: bool) -> dict[str, Any]:
    return {"current": current, "total": total, "is_last_batch": is_last}


def fit_loop_state(
    *, epoch: int, batch_idx: int, num_batches: int, global_step: int, epoch_done: bool
) -> dict[str, Any]:
    """Lightning's ``loops.fit_loop`` counters for a busloop loop position.

    ``epoch`` counts finished epochs (0 during the first), ``batch_idx`` the batches
    finished in the running one. Three positions, written as Lightning writes them:

    - between epochs (``batch_idx == 0``): every epoch counter equals ``epoch``; Lightning
      starts epoch ``epoch`` afresh;
    - at the end of an epoch (``epoch_done``, saved in ``train_epoch_end`` as Lightning's
      ModelCheckpoint does): processed is one ahead of completed; Lightning continues with
      the next epoch;
    - mid-epoch: as Lightning's own save in ``on_train_batch_end``; Lightning resumes it
      as it resumes its own mid-epoch checkpoints (restarting the loader, with a warning).

    ``global_step`` goes into both optimization counters (Lightning reads the automatic
    or the manual one, depending on the module). The per-epoch batch / step counters of
    earlier epochs are counted as full epochs of ``num_batches``.
    """
    n = num_batches
    if epoch_done:
        started, processed, completed, done = epoch + 1, epoch + 1, epoch, n
    elif batch_idx == 0:
        started = processed = completed = epoch
        done = n if epoch > 0 else 0
    else:
        started, processed, completed, done = epoch + 1, epoch, epoch, batch_idx
    mid = not epoch_done and batch_idx > 0
    before = (epoch if (mid or epoch_done) else max(epoch - 1, 0)) * n
    batch_current = _progress(done, done, done, done - 1 if mid else done)
    batch_total = _progress(before + done, before + done, before + done, before + done - (1 if mid else 0))
    step_current = min(done, global_step)
    step = {"current": _counts(step_current, step_current), "total": _counts(global_step, global_step)}
    zero_grad = {
        "current": _counts(step_current, step_current, step_current),
        "total": _counts(global_step, global_step, global_step),
    }
    zeros = _progress(0, 0, 0, 0)
    return {
        "state_dict": {},
        "epoch_progress": {
            "current": _progress(started, started, processed, completed),
            "total": _progress(started, started, processed, completed),
        },
        "epoch_loop.state_dict": {"_batches_that_stepped": max(global_step - (1 if mid else 0), 0)},
        "epoch_loop.batch_progress": _batch_progress(batch_current, batch_total, done >= n > 0),
        "epoch_loop.scheduler_progress": {"current": _counts(0, 0), "total": _counts(0, 0)},
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {"optimizer": {"step": step, "zero_grad": zero_grad}},
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": step,
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": _batch_progress(dict(zeros), dict(zeros), False),
    }


def loops_state(fit_loop: dict[str, Any]) -> dict[str, Any]:
    """Lightning's ``loops`` entry: the fit loop's counters and empty evaluation loops."""

    def evaluation(with_last: bool) -> dict[str, Any]:
        progress: dict[str, Any] = {"current": _progress(0, 0, 0, 0), "total": _progress(0, 0, 0, 0)}
        if with_last:
            progress["is_last_batch"] = False
        return {"state_dict": {}, "batch_progress": progress}

    return {
        "fit_loop": fit_loop,
        "validate_loop": evaluation(True),
        "test_loop": evaluation(True),
        "predict_loop": evaluation(False),
    }


def _plain(value: Any) -> Any:
    """``value`` with mappings as dicts and sequences as lists (AttributeDict, DictConfig ...)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(item) for item in value]
    return value


def hparams_entries(obj: object, key: str, name_key: str) -> dict[str, Any]:
    """``{key: hparams, name_key: hparams name}`` of a module / datamodule, as Lightning writes.

    Empty when the object has no (or empty) ``hparams``. Lightning pickles hyperparameters;
    busloop stores them as plain values so the file still loads with ``weights_only=True``,
    and refuses a value that cannot be stored, naming it.
    """
    hparams = getattr(obj, "hparams", None)
    if not isinstance(hparams, Mapping) or not hparams:
        return {}
    key = getattr(obj, "CHECKPOINT_HYPER_PARAMS_KEY", key)
    name_key = getattr(obj, "CHECKPOINT_HYPER_PARAMS_NAME", name_key)
    values = _plain(hparams)
    try:
        check_weights_only_safe(values, root=key)
    except CheckpointError as err:
        raise CheckpointError(
            f"{type(obj).__qualname__}'s hyperparameters: {err}; leave the value out with "
            "save_hyperparameters(ignore=[...])"
        ) from None
    entries: dict[str, Any] = {key: values}
    name = getattr(obj, "_hparams_name", None)
    if isinstance(name, str):
        entries[name_key] = name
    return entries


def lightning_resume_epoch(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> int:
    """The epoch a checkpoint written by Lightning's Trainer continues at (0-based).

    Lightning's ``current_epoch`` on resume: its fit loop's processed-epoch counter, at an
    epoch boundary (saved between epochs, at an epoch's start or in ``on_train_epoch_end``).
    A checkpoint saved in the middle of an epoch, one without optimizer states (saved
    with ``save_weights_only``), or one without the fit loop's counters is a
    :class:`CheckpointError` naming the file.
    """
    fit_loop = checkpoint.get("loops", {}).get("fit_loop") if isinstance(checkpoint.get("loops"), Mapping) else None
    progress = fit_loop.get("epoch_progress") if isinstance(fit_loop, Mapping) else None
    if not isinstance(progress, Mapping):
        raise CheckpointError(
            f"{path}: this Lightning checkpoint holds no fit-loop progress (loops.fit_loop.epoch_progress), "
            "so the epoch to resume at is unknown; upgrade it with "
            f"`python -m lightning.pytorch.utilities.upgrade_checkpoint {path}`"
        )
    if "optimizer_states" not in checkpoint or "lr_schedulers" not in checkpoint:
        raise CheckpointError(
            f"{path}: this Lightning checkpoint holds only the model (saved with save_weights_only=True); "
            "it cannot resume training. Load its weights into the model instead"
        )
    total, current = progress["total"], progress["current"]
    r, s, p, c = (int(total[k]) for k in ("ready", "started", "processed", "completed"))
    if (r == s == p and c in (p, p - 1)) or (r == s + 1 and s == p == c):
        return int(current["processed"])
    batches = fit_loop.get("epoch_loop.batch_progress", {}).get("current", {}).get("processed", "?")  # type: ignore[union-attr]
    raise CheckpointError(
        f"{path} was saved by Lightning in the middle of epoch {int(current['completed'])} (after "
        f"{batches} batch(es) of it); Lightning checkpoints hold neither the random generators nor the "
        "loader position, so busloop cannot continue it exactly. Resume from a checkpoint saved at the "
        "end of an epoch (ModelCheckpoint with validation once per epoch, or trainer.save_checkpoint "
        "after fit)"
    )
