"""Lightning 2.6's ``Trainer(...)`` arguments, checked and mapped onto busloop's config.

:func:`parse_trainer_args` turns the keyword arguments of :class:`compat.Trainer` into a
:class:`TrainerArgs`: the ``trainer`` section of a :class:`runtime.config.Config` plus what the
front keeps itself (loggers, default callbacks, ``min_epochs`` ...). An argument busloop cannot
honour raises :class:`runtime.errors.ConfigError` here, at construction, in one line that names
it: a Lightning project learns at once what does not carry over, and nothing is ignored silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import attrs
import torch

from runtime import distributed as dist
from runtime.config import Config, load_config
from runtime.errors import ConfigError

__all__ = ["UNBOUNDED_EPOCHS", "TrainerArgs", "parse_trainer_args"]

#: busloop's epoch count for Lightning's "no epoch limit" (``max_epochs=-1``, or max_steps alone).
UNBOUNDED_EPOCHS = 2**31 - 1

_PRECISIONS: dict[Any, str] = {
    None: "32", 32: "32", "32": "32", "32-true": "32",
    16: "16-mixed", "16": "16-mixed", "16-mixed": "16-mixed",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
}  # fmt: skip

_ACCELERATORS = {"auto": "auto", "cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}


def _refuse(name: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"Trainer({name}={value!r}): {why}")


@attrs.define
class TrainerArgs:
    """The parsed arguments: busloop's config and what the front does itself."""

    config: Config
    max_epochs: int
    """Lightning's epoch limit (0 allowed: no training), busloop's ``state.max_epochs``."""
    max_steps: int | None
    """Lightning's step limit (0 allowed), busloop's ``state.max_steps``; None: no limit."""
    callbacks: list[Any]
    logger: Any
    """True / False / a Lightning logger / a busloop Tracker / a list of loggers."""
    default_root_dir: str
    enable_checkpointing: bool
    enable_progress_bar: bool
    enable_model_summary: bool
    min_epochs: int | None
    min_steps: int | None
    max_time: Any
    fast_dev_run: int | bool
    overfit_batches: int | float
    """> 0: the training loader is read in order (no shuffling), as Lightning does."""
    detect_anomaly: bool
    inference_mode: bool
    enable_autolog_hparams: bool
    barebones: bool


def _epochs(max_epochs: int | None, max_steps: int, max_time: Any) -> int:
    """Lightning's rule: no max_epochs means 1000, unless max_steps or max_time bounds the run."""
    if max_epochs is None:
        return UNBOUNDED_EPOCHS if (max_steps != -1 or max_time is not None) else 1000
    if max_epochs == -1:
        return UNBOUNDED_EPOCHS
    if not isinstance(max_epochs, int) or max_epochs < 0:
        raise _refuse("max_epochs", max_epochs, "expected -1, None or an epoch count >= 0")
    return max_epochs


def _device(accelerator: Any, devices: Any) -> str:
    """busloop's ``trainer.accelerator`` for Lightning's accelerator + devices (one device per process)."""
    if not isinstance(accelerator, str) or accelerator.lower() not in _ACCELERATORS:
        raise _refuse(
            "accelerator", accelerator, f"busloop runs on {', '.join(sorted(_ACCELERATORS))} (given by name)"
        )
    kind = _ACCELERATORS[accelerator.lower()]
    if devices in ("auto", 1, "1", -1, "-1") or (devices == -1 and dist.launched_by_torchrun()):
        return kind
    if isinstance(devices, list | tuple) and len(devices) == 1 and isinstance(devices[0], int):
        return f"cuda:{devices[0]}" if kind in ("cuda", "auto") and torch.cuda.is_available() else kind
    raise _refuse(
        "devices", devices, "busloop runs one device per process; launch several processes with torchrun"
    )


def _clip(value: Any) -> float | None:
    if value is None or value == 0:
        return None
    if not isinstance(value, int | float) or value < 0:
        raise _refuse("gradient_clip_val", value, "expected a number >= 0")
    return float(value)


def _fast_dev_run(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int) or value < 0:
        raise _refuse("fast_dev_run", value, "expected a bool or a batch count >= 0")
    return value


def _check_unsupported(kw: Mapping[str, Any]) -> None:
    """Refuse, in one line each, the arguments busloop has no counterpart for."""
    fixed: dict[str, tuple[Any, str]] = {
        "use_distributed_sampler": (True, "busloop always shards with DistributedSampler under torchrun"),
        "profiler": (None, "busloop has no profiler integration; wrap the call in torch.profiler"),
        "plugins": (None, "busloop has no Lightning plugins"),
        "sync_batchnorm": (False, "convert the model with torch.nn.SyncBatchNorm.convert_sync_batchnorm"),
        "reload_dataloaders_every_n_epochs": (0, "busloop builds the loaders once per run"),
        "model_registry": (None, "busloop has no model registry upload"),
        "num_nodes": (1, "the node count comes from torchrun (--nnodes)"),
    }
    for name, (default, why) in fixed.items():
        value = kw[name]
        if value != default and not (name == "num_nodes" and value == int(os.environ.get("NNODES", 1))):
            raise _refuse(name, value, why)
    strategy = kw["strategy"]
    if not isinstance(strategy, str) or strategy not in ("auto", "ddp"):
        raise _refuse("strategy", strategy, "busloop supports 'auto' and 'ddp' (under torchrun)")
    if kw["deterministic"] == "warn":
        raise _refuse("deterministic", "warn", "busloop supports True or False")
    if isinstance(kw["val_check_interval"], str | timedelta | dict):
        raise _refuse("val_check_interval", kw["val_check_interval"], "give a batch count or an epoch fraction")
    if kw["min_steps"] is not None and (not isinstance(kw["min_steps"], int) or kw["min_steps"] < 0):
        raise _refuse("min_steps", kw["min_steps"], "expected a step count >= 0")
    if kw["min_epochs"] is not None and (not isinstance(kw["min_epochs"], int) or kw["min_epochs"] < 0):
        raise _refuse("min_epochs", kw["min_epochs"], "expected an epoch count >= 0")


def _barebones(kw: dict[str, Any]) -> None:
    """``barebones=True`` turns Lightning's extras off; asking for one of them too is an error."""
    for name in ("enable_checkpointing", "enable_progress_bar", "enable_model_summary", "logger"):
        if kw[name]:
            raise _refuse(name, kw[name], "conflicts with barebones=True")
        kw[name] = False
    if kw["log_every_n_steps"] not in (None, 0):
        raise _refuse("log_every_n_steps", kw["log_every_n_steps"], "conflicts with barebones=True")
    kw["log_every_n_steps"] = 1


def parse_trainer_args(kw: dict[str, Any]) -> TrainerArgs:
    """Check Lightning's Trainer arguments and map them onto busloop's config (see the module doc)."""
    _check_unsupported(kw)
    if kw["barebones"]:
        _barebones(kw)
    precision = kw["precision"]
    if precision not in _PRECISIONS:
        raise _refuse("precision", precision, "busloop supports 32, 16-mixed and bf16-mixed")
    fast = _fast_dev_run(kw["fast_dev_run"])
    max_steps = kw["max_steps"]
    if not isinstance(max_steps, int) or max_steps < -1:
        raise _refuse("max_steps", max_steps, "expected -1 or a step count >= 0")
    epochs = _epochs(kw["max_epochs"], max_steps, kw["max_time"])
    trainer: dict[str, Any] = {
        "epochs": max(epochs, 1),
        "max_steps": None if max_steps == -1 else max(max_steps, 1),
        "accumulate_grad_batches": kw["accumulate_grad_batches"],
        "gradient_clip_val": _clip(kw["gradient_clip_val"]),
        "gradient_clip_algorithm": kw["gradient_clip_algorithm"] or "norm",
        "precision": _PRECISIONS[precision],
        "deterministic": bool(kw["deterministic"]),
        "accelerator": _device(kw["accelerator"], kw["devices"]),
        "check_val_every_n_epoch": kw["check_val_every_n_epoch"],
        "val_check_interval": 1.0 if kw["val_check_interval"] is None else kw["val_check_interval"],
        "num_sanity_val_steps": 2 if kw["num_sanity_val_steps"] is None else kw["num_sanity_val_steps"],
        "log_every_n_steps": kw["log_every_n_steps"] or 50,
        "rich_logging": False,
    }
    for split in ("train", "val", "test", "predict"):
        limit = kw[f"limit_{split}_batches"]
        whole = limit is None or (isinstance(limit, float) and limit == 1.0)  # int 1: one batch
        trainer[f"limit_{split}_batches"] = None if whole else limit
    overfit = kw["overfit_batches"]
    if isinstance(overfit, bool) or not isinstance(overfit, int | float) or overfit < 0:
        raise _refuse("overfit_batches", overfit, "expected a batch count or an epoch fraction >= 0")
    if overfit > 0:  # Lightning 2.6: the same first batches every epoch, train and val
        trainer.update(limit_train_batches=overfit, limit_val_batches=overfit)
    if fast:  # Lightning's fast_dev_run: n batches of each, one epoch, no sanity check
        trainer.update(epochs=1, max_steps=fast, num_sanity_val_steps=0, val_check_interval=1.0)
        trainer.update({f"limit_{s}_batches": fast for s in ("train", "val", "test", "predict")})
    root = os.fspath(kw["default_root_dir"]) if kw["default_root_dir"] is not None else os.getcwd()
    try:
        config = load_config({"trainer": trainer, "tracker": {"save_directory": root}})
    except ConfigError as exc:
        raise ConfigError(f"Trainer: {exc}") from None
    callbacks = kw["callbacks"]
    callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
    if kw["benchmark"] is not None:  # as Lightning: set once, at construction
        torch.backends.cudnn.benchmark = bool(kw["benchmark"])
    return TrainerArgs(
        config=config,
        max_epochs=1 if fast else epochs,
        max_steps=fast if fast else (None if max_steps == -1 else max_steps),
        callbacks=callbacks,
        logger=False if fast else (True if kw["logger"] is None else kw["logger"]),
        default_root_dir=root,
        enable_checkpointing=kw["enable_checkpointing"] is not False,
        enable_progress_bar=kw["enable_progress_bar"] is not False,
        enable_model_summary=kw["enable_model_summary"] is not False,
        min_epochs=kw["min_epochs"],
        min_steps=kw["min_steps"],
        max_time=kw["max_time"],
        fast_dev_run=kw["fast_dev_run"] if isinstance(kw["fast_dev_run"], bool) else fast,
        overfit_batches=overfit,
        detect_anomaly=bool(kw["detect_anomaly"]),
        inference_mode=bool(kw["inference_mode"]),
        enable_autolog_hparams=bool(kw["enable_autolog_hparams"]),
        barebones=bool(kw["barebones"]),
    )
