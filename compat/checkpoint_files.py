"""File-level helpers of :class:`compat.ModelCheckpoint`: name templates, ``last`` links,
and the ``train_time_interval`` argument (kept apart so the callback reads as its decisions)."""

from __future__ import annotations

import os
import re
import shutil
from datetime import timedelta
from typing import Any

import torch

from runtime import distributed as dist

__all__ = ["as_timedelta", "fill_template", "link_checkpoint", "monitor_candidates"]


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
    (``{val/loss:.2f}``); a name not in ``metrics`` formats as 0. Longer names are replaced
    first, so ``{epoch_test}`` is not mistaken for ``{epoch}``.
    """
    values = dict(metrics)
    fields = sorted(re.findall(r"(\{.*?)[:\}]", template), key=len, reverse=True)
    for field in fields:
        name = field[1:]
        if insert_names:
            template = template.replace(field, name + equals + "{" + name)
        template = template.replace(field, "{0[" + name + "]")
        values.setdefault(name, torch.tensor(0))
    return template.format(values)


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
