"""The job a config describes: checked before anything heavy, then built.

:func:`check_job` checks what can be checked without the data and the model, so that a
mistake fails in about a second instead of after the data has loaded: the loss, the
optimizer and scheduler (built on one throwaway parameter), the tracker backends (their
packages installed), the factories' import paths and parameter names, and the checkpoint
to resume from or to load (read weights_only; for a resume, one that can be continued).
:func:`build_job` then calls the factories; an error raised inside a user's factory is a
``ConfigError`` naming the factory's config key, so the CLI reports it in one line.

The CLI (the composition root) runs :func:`check_job`, builds the callbacks, then
:func:`build_job`, then loads the checkpoint's weights with
:func:`runtime.resume.load_weights` (the same code for ``--resume``, ``trainer.resume_from``
and ``--weights``), all before a run folder exists.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from runtime.checkpoint import load_checkpoint
from runtime.config import Config
from runtime.errors import ConfigError
from runtime.fsdp import META_FILE
from runtime.module import resolve_loss
from runtime.names import resolve_import, suggest
from runtime.optim import check_specs
from runtime.resume import check_resumable
from runtime.tracking import check_backends

__all__ = ["build_job", "check_job"]

_FACTORIES = ("model", "data")
#: Trainer settings passed to a data factory that takes them and was not given them.
_DATA_DEFAULTS = ("batch_size", "num_workers")


def check_job(cfg: Config, checkpoint: str | os.PathLike[str] | None = None, *, resume: bool = False) -> dict[str, Any] | None:
    """Check ``cfg`` (and ``checkpoint``) without building the data or the model.

    Returns the checkpoint's dict (read on the CPU, weights_only) or None. Raises
    ``ConfigError``, ``OptimizationError`` or ``CheckpointError`` naming the key or file.
    """
    resolve_loss(cfg.loss)
    check_specs(cfg.optimizer, cfg.scheduler)
    check_backends(cfg.tracker.backends)
    for section in _FACTORIES:
        factory = _factory(cfg, section)
        params = dict(getattr(cfg, section).params)
        _check_parameters(factory, params, key=f"{section}.params")
    if checkpoint is None:
        return None
    sharded = Path(checkpoint) / META_FILE
    if resume and sharded.is_file():  # an FSDP checkpoint folder: its shards load in fit
        check_resumable(load_checkpoint(sharded), checkpoint)
        return None
    loaded = load_checkpoint(checkpoint)
    if resume:
        check_resumable(loaded, checkpoint)
    return loaded


def build_job(cfg: Config) -> tuple[Any, dict[str, Any]]:
    """The model and the loaders dict ({"train", "val", "test"}) from the config factories."""
    model_factory, data_factory = (_factory(cfg, section) for section in _FACTORIES)
    model = _call(model_factory, dict(cfg.model.params), section="model", path=cfg.model.factory)
    data_params = dict(cfg.data.params)
    accepted = _parameters(data_factory)
    for name in _DATA_DEFAULTS:
        if name not in data_params and (accepted is None or name in accepted):
            data_params[name] = getattr(cfg.trainer, name)
    loaders = _call(data_factory, data_params, section="data", path=cfg.data.factory)
    if not isinstance(loaders, dict) or "train" not in loaders:
        raise ConfigError(
            f"data.factory: {cfg.data.factory} must return a dict with 'train' (and optionally "
            f"'val', 'test'), got {type(loaders).__name__}"
        )
    return model, loaders


def _factory(cfg: Config, section: str) -> Any:
    path = getattr(cfg, section).factory
    if path is None:
        raise ConfigError(f"{section}.factory: required (an import path like 'pkg.module:build_{section}')")
    return resolve_import(path, key=f"{section}.factory")


def _parameters(fn: Any) -> set[str] | None:
    """The keyword names ``fn`` takes, or None when it takes any (``**kwargs``) or is opaque."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _check_parameters(fn: Any, params: dict[str, Any], *, key: str) -> None:
    accepted = _parameters(fn)
    if accepted is None:
        return
    for name in params:
        if name not in accepted:
            raise ConfigError(
                f"{key}.{name}: {getattr(fn, '__name__', fn)} takes no parameter {name!r}"
                f"{suggest(name, accepted)}"
            )


def _call(fn: Any, params: dict[str, Any], *, section: str, path: str | None) -> Any:
    """``fn(**params)``; whatever the user's factory raises is a ConfigError naming
    ``<section>.factory`` (the cause stays chained: ``--debug`` shows its traceback)."""
    _check_parameters(fn, params, key=f"{section}.params")
    try:
        return fn(**params)
    except ConfigError as exc:
        if all(line.startswith(f"{section}.") for line in exc.problems):
            raise  # the factory named the key itself
        raise ConfigError(f"{section}.factory: {path}: {exc}") from exc
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        raise ConfigError(
            f"{section}.factory: {path} failed with {section}.params {params}: "
            f"{type(exc).__name__}{': ' + first if first else ''} (--debug shows the traceback)"
        ) from exc
