"""File-level helpers of :class:`compat.ModelCheckpoint`: name templates, ``last`` links,
and the ``train_time_interval`` argument (kept apart so the callback reads as its decisions)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch

from runtime import distributed as dist
from runtime.bus import CallbackError
from runtime.checkpoint import CheckpointError

log = logging.getLogger("busloop.callbacks")

__all__ = ["SAVE_STATE", "as_timedelta", "fill_template", "link_checkpoint", "monitor_candidates", "staged", "write_failed"]

#: The attributes of a ModelCheckpoint that a save changes, restored when its write fails.
SAVE_STATE = ("best_k_models", "kth_best_model_path", "kth_value", "best_model_path", "best_model_score",
              "current_score", "last_model_path")
#: What a failed checkpoint write raises: OSError (ENOSPC, EACCES ...), and torch.save's
#: RuntimeError ("PytorchStreamWriter failed writing file") for the same causes.
WRITE_ERRORS = (OSError, RuntimeError)


@contextlib.contextmanager
def staged(owner: Any, path: str) -> Iterator[list[bool]]:
    """Keep the changes a ModelCheckpoint (``owner``) makes inside the block, which writes
    ``path``, only when the block succeeds.

    Yields ``[written]``: True once the block finished; the caller deletes replaced files
    only then. When the block raises, the :data:`SAVE_STATE` attributes get their values
    back (dicts as they were); a write error (see :data:`WRITE_ERRORS`; not another
    callback's error) is reported by :func:`write_failed`; anything else propagates.
    """
    saved = {name: getattr(owner, name) for name in SAVE_STATE}
    saved = {name: dict(value) if isinstance(value, dict) else value for name, value in saved.items()}
    written = [False]
    try:
        yield written
    except BaseException as exc:
        for name, value in saved.items():
            setattr(owner, name, value)
        if isinstance(exc, WRITE_ERRORS) and not isinstance(exc, CallbackError):
            write_failed(owner, path, exc)
            return
        raise
    written[0] = True


def write_failed(owner: Any, path: str, exc: Exception) -> None:
    """Report a failed write of ``path`` (the previous files are all kept), then stop with a
    CheckpointError or go on, as ``owner.on_write_error`` says."""
    message = (
        f"ModelCheckpoint could not write {path}: {type(exc).__name__}: {exc}; the previous "
        f"checkpoints are kept (best: {owner.best_model_path or 'none yet'})"
    )
    log.error("%s%s", message, "; training goes on" if owner.on_write_error == "continue" else "")
    if owner.on_write_error == "stop":
        raise CheckpointError(message) from exc


def as_timedelta(value: Any) -> timedelta | None:
    """``train_time_interval`` as a timedelta: a timedelta, a dict of its fields, or seconds."""
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, dict):
        try:
            return timedelta(**value)
        except TypeError as exc:
            raise ValueError(f"ModelCheckpoint: train_time_interval={value!r} is no timedelta: {exc}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    raise ValueError(
        f"ModelCheckpoint: train_time_interval must be a timedelta, a dict like {{'minutes': 30}} "
        f"or seconds, got {value!r}"
    )


def fill_template(template: str, metrics: dict[str, Any], *, insert_names: bool, equals: str = "=") -> str:
    """Fill ``{name}`` / ``{name:fmt}`` fields of ``template`` from ``metrics``.

    With ``insert_names`` each field becomes ``name=<value>``. Names may hold ``/`` or ``.``
    (``{val/loss:.2f}``); a name not in ``metrics`` formats as 0.
    """
    form, names = _format_string(template, insert_names, equals)
    values = dict(metrics)
    for name in names:
        if name not in values:
            values[name] = torch.tensor(0)
    return form.format(values)


@functools.lru_cache(maxsize=64)
def _format_string(template: str, insert_names: bool, equals: str) -> tuple[str, tuple[str, ...]]:
    """``template`` as a ``str.format`` string reading one mapping (``{0[name]}``), and the
    names it reads. Longer names are replaced first, so ``{epoch_test}`` is not mistaken for
    ``{epoch}``. Cached: a checkpoint callback formats the same template at every save."""
    fields = sorted(re.findall(r"(\{.*?)[:\}]", template), key=len, reverse=True)
    for field in fields:
        name = field[1:]
        if insert_names:
            template = template.replace(field, name + equals + "{" + name)
        template = template.replace(field, "{0[" + name + "]")
    return template, tuple(field[1:] for field in fields)


def link_checkpoint(target: str, link: str) -> None:
    """Make ``link`` a relative symlink to ``target`` (a copy where links are refused); rank 0."""
    if dist.is_rank_zero() and os.path.abspath(target) != os.path.abspath(link):
        if os.path.islink(link) or os.path.isfile(link):
            os.remove(link)
        elif os.path.isdir(link):
            shutil.rmtree(link)
        try:
            os.symlink(os.path.relpath(target, os.path.dirname(link)), link)
        except OSError:
            shutil.copy(target, link)
    dist.barrier()


def monitor_candidates(state: Any) -> dict[str, torch.Tensor]:
    """The loop's ``metrics`` as tensors plus ``epoch`` and ``step``: what names format from."""
    candidates = {
        k: v.detach().clone() if isinstance(v, torch.Tensor) else torch.tensor(v) for k, v in state.metrics.items()
    }
    epoch, step = candidates.get("epoch"), candidates.get("step")
    candidates["epoch"] = epoch.int() if epoch is not None else torch.tensor(state.epoch)
    candidates["step"] = step.int() if step is not None else torch.tensor(state.global_step)
    return candidates
