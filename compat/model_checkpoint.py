"""ModelCheckpoint: Lightning 2.6's checkpoint callback, natively on busloop's bus.

Same arguments, defaults, file names, save points, ``state_key`` and ``state_dict`` as
``lightning.pytorch.callbacks.ModelCheckpoint`` (its docstring is the spec), with these
busloop choices:

- Without ``dirpath`` the files go to ``<run>/checkpoints/<subdir>/``: ``subdir`` (a busloop
  argument; the default callback set uses ``min_val_loss`` and ``best_val_metric``) defaults
  to ``<mode>_<monitor>`` when a metric is monitored, so two callbacks never share a folder;
  without a run folder ``./checkpoints/...``.
- A save is written first, the state committed only when it succeeded, and files that left
  the top k deleted last: a failed write (disk full, no permission) never loses the previous
  best. It is logged with the file and the kept best; ``on_write_error`` "stop" (default)
  then raises a CheckpointError, "continue" trains on and retries at the next save.
- Every file written emits ``checkpoint_written(path, monitor, score)`` (monitor and score
  None for ``last`` files and ``monitor=None`` saves).
- A ``monitor`` that was never logged is a warning (once), not an error: a misnamed metric
  must not end a long run (Lightning raises once validation has run).
- ``on_train_batch_end`` is connected only when ``every_n_train_steps`` or
  ``train_time_interval`` asks for it (nothing is added to the per-batch path otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch

from compat.checkpoint_files import (
    as_timedelta,
    fill_template,
    link_checkpoint,
    monitor_candidates,
    staged,
)
from compat.collective import agree
from runtime import distributed as dist
from runtime.callback import Callback
from runtime.checkpoint import save_checkpoint
from runtime.loop import Runtime
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["ModelCheckpoint"]

#: What a ``save_weights_only`` file keeps of a full checkpoint.
_WEIGHTS_ONLY_KEYS = ("busloop_format", "epoch", "global_step", "state_dict", "versions")


@register()
class ModelCheckpoint(Callback):
    """Save checkpoints periodically and keep the ``save_top_k`` best by ``monitor``.

    ``monitor=None`` keeps the latest checkpoint (``save_top_k`` 1, or all with -1);
    ``save_last`` True also writes ``last.ckpt`` ("link": a symlink to the latest file);
    ``filename`` is a template such as ``"{epoch}-{val/loss:.2f}"`` (with
    ``auto_insert_metric_name`` the names are inserted: ``epoch=3-val/loss=0.12``; a ``/``
    in a name makes a subfolder, as in Lightning). Saves happen every ``every_n_epochs``
    (default 1) at the end of the training epoch or of validation (``save_on_train_epoch_end``,
    decided as Lightning does when None), or every ``every_n_train_steps`` optimizer steps,
    or every ``train_time_interval``; the three are mutually exclusive.
    """

    monitor_role = "checkpoint"
    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | Literal["link"] | None = None,
        save_top_k: int = 1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | dict[str, float] | float | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
        subdir: str | None = None,
        on_write_error: Literal["stop", "continue"] = "stop",
    ) -> None:
        if on_write_error not in ("stop", "continue"):
            raise ValueError(f"ModelCheckpoint: on_write_error must be 'stop' or 'continue', got {on_write_error!r}")
        self.on_write_error = on_write_error
        if mode not in ("min", "max"):
            raise ValueError(f"ModelCheckpoint: mode must be 'min' or 'max', got {mode!r}")
        if save_last not in (None, True, False, "link"):
            raise ValueError(f"ModelCheckpoint: save_last must be True, False, None or 'link', got {save_last!r}")
        self.monitor, self.mode, self.verbose = monitor, mode, verbose
        self.save_last, self.save_top_k = save_last, save_top_k
        self.save_on_exception, self.save_weights_only = save_on_exception, save_weights_only
        self.auto_insert_metric_name = auto_insert_metric_name
        self.filename = filename
        self.dirpath: str | None = os.path.realpath(os.path.expanduser(dirpath)) if dirpath else None
        self.subdir = subdir or (re.sub(r"[^\w.-]+", "_", f"{mode}_{monitor}") if monitor else None)
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs, every_n_train_steps = 1, 0
        self._every_n_epochs: int = every_n_epochs or 0
        self._every_n_train_steps: int = every_n_train_steps or 0
        self._train_time_interval = as_timedelta(train_time_interval)
        self._validate()

        self.current_score: torch.Tensor | None = None
        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value = torch.tensor(torch.inf if mode == "min" else -torch.inf)
        self.best_model_score: torch.Tensor | None = None
        self.best_model_path = ""
        self.last_model_path = ""
        self._last_global_step_saved = 0  # nothing to save before the first step
        self._last_checkpoint_saved = ""
        self._last_time_checked: float | None = None
        self._defer_save_until_validation = False
        self._warned_missing = False

    def _validate(self) -> None:
        def bad(problem: str) -> ValueError:
            return ValueError(f"ModelCheckpoint: {problem}")
        if not isinstance(self.save_top_k, int) or self.save_top_k < -1:
            raise bad(f"save_top_k must be an int >= -1, got {self.save_top_k!r}")
        if self._every_n_train_steps < 0:
            raise bad(f"every_n_train_steps must be >= 0, got {self._every_n_train_steps}")
        if self._every_n_epochs < 0:
            raise bad(f"every_n_epochs must be >= 0, got {self._every_n_epochs}")
        triggers = (self._every_n_train_steps >= 1) + (self._every_n_epochs >= 1) + (self._train_time_interval is not None)
        if triggers > 1:
            raise bad(
                f"every_n_train_steps={self._every_n_train_steps}, every_n_epochs={self._every_n_epochs} "
                f"and train_time_interval={self._train_time_interval} are mutually exclusive"
            )
        if self.monitor is None and self.save_top_k not in (-1, 0, 1):
            raise bad(f"save_top_k={self.save_top_k} needs a monitor (no quantity to rank the top k by)")

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    @property
    def every_n_epochs(self) -> int:
        return self._every_n_epochs

    # ------------------------------------------------------------------ events
    def on_setup(self, runtime: Runtime, stage: str) -> None:
        if self.dirpath is None:
            base = runtime.run_dir if runtime.run_dir is not None else Path.cwd()
            folder = Path(base) / "checkpoints"
            self.dirpath = str(folder / self.subdir if self.subdir else folder)
        self.dirpath = dist.broadcast_object(self.dirpath)
        if stage == "fit":
            self._warned_missing = False
            if dist.is_rank_zero() and self.save_top_k != 0 and Path(self.dirpath).is_dir() and any(Path(self.dirpath).iterdir()):
                log.warning("ModelCheckpoint: checkpoint directory %s exists and is not empty", self.dirpath)
            if self._every_n_train_steps < 1 and self._train_time_interval is None:
                runtime.bus.disconnect("train_batch_end", self.on_train_batch_end)

    def on_train_start(self, runtime: Runtime) -> None:
        self._last_time_checked = time.monotonic()

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Save every ``every_n_train_steps`` steps or ``train_time_interval`` (connected only then)."""
        st = runtime.state
        skip_batch = self._every_n_train_steps < 1 or st.global_step % self._every_n_train_steps != 0
        skip_time, now = True, time.monotonic()
        if self._train_time_interval is not None:
            last = self._last_time_checked
            skip_time = last is None or now - last < self._train_time_interval.total_seconds()
            skip_time = dist.broadcast_object(skip_time)
        if skip_batch and skip_time:
            return
        if not skip_time:
            self._last_time_checked = now
        candidates = monitor_candidates(runtime.state)
        if self.monitor is not None and self.monitor not in candidates:
            self._defer_save_until_validation = True
            return
        last_batch = st.last_batch_done()
        if self.monitor is not None and not self._should_save_on_train_epoch_end(runtime) and last_batch:
            cfg = runtime.config.trainer
            every = cfg.check_val_every_n_epoch
            if st.num_val_batches > 0 and (every is None or (st.epoch + 1) % every == 0):
                self._defer_save_until_validation = True
                return
        if self._should_skip(runtime):
            return
        self._save_topk(runtime, candidates)
        self._save_last(runtime, candidates)

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        if not self._should_skip(runtime) and self._should_save_on_train_epoch_end(runtime):
            self._save_epoch(runtime)

    def on_validation_end(self, runtime: Runtime) -> None:
        if self._should_skip(runtime) or self._should_save_on_train_epoch_end(runtime):
            return
        if self._defer_save_until_validation:
            candidates = monitor_candidates(runtime.state)
            self._save_topk(runtime, candidates)
            self._save_last(runtime, candidates)
            self._defer_save_until_validation = False
            return
        self._save_epoch(runtime)

    def on_exception(self, runtime: Runtime, exception: BaseException) -> None:
        st = runtime.state
        if not self.save_on_exception or st.sanity_checking or self._last_global_step_saved == st.global_step:
            return
        candidates = monitor_candidates(runtime.state)
        path = self.format_checkpoint_name(candidates)
        self._write(runtime, path, None, None)
        self._save_last(runtime, candidates)
        log.info("ModelCheckpoint: %s was raised (%s); saved checkpoint to %s", type(exception).__name__, exception, path)

    def on_train_end(self, runtime: Runtime) -> None:
        if self.save_last and not self._last_checkpoint_saved:
            self._save_last(runtime, monitor_candidates(runtime.state))

    # ------------------------------------------------------------------ decisions
    def _should_skip(self, runtime: Runtime) -> bool:
        st = runtime.state
        return st.stage != "fit" or st.sanity_checking or self._last_global_step_saved == st.global_step

    def _should_save_on_train_epoch_end(self, runtime: Runtime) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        cfg = runtime.config.trainer
        if cfg.check_val_every_n_epoch != 1:
            return False
        if runtime.state.num_val_batches == 0 or getattr(runtime, "val_loader", None) is None:
            return True
        return cfg.val_check_interval == 1.0

    def _save_epoch(self, runtime: Runtime) -> None:
        """The epoch-end save: top k every ``every_n_epochs``, then ``last`` after any save."""
        candidates = monitor_candidates(runtime.state)
        if self._every_n_epochs >= 1 and (runtime.state.epoch + 1) % self._every_n_epochs == 0:
            self._save_topk(runtime, candidates)
        if self._last_global_step_saved == runtime.state.global_step or (
            self.save_last == "link" and self._last_checkpoint_saved
        ):
            self._save_last(runtime, candidates)

    def check_monitor_top_k(self, runtime: Runtime, current: torch.Tensor | None = None) -> bool:
        """Whether ``current`` makes it into the top k (all ranks agree)."""
        if current is None:
            return False
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        better = torch.lt if self.mode == "min" else torch.gt
        decision = bool(better(current, self.best_k_models[self.kth_best_model_path]))
        return agree(decision, runtime.device, every_rank=True)

    # ------------------------------------------------------------------ saving
    def _save_topk(self, runtime: Runtime, candidates: dict[str, torch.Tensor]) -> None:
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            self._save_latest(runtime, candidates)
            return
        if self.monitor not in candidates:
            message = (
                f"ModelCheckpoint(monitor={self.monitor!r}) could not find the monitored key in the "
                f"logged metrics: {sorted(candidates)}. Did you log {self.monitor!r}?"
            )
            if not self._warned_missing:  # once per run; Lightning raises once validation has run
                self._warned_missing = True
                log.warning(message)
            return
        current = candidates[self.monitor]
        if self.check_monitor_top_k(runtime, current):
            self._update_best_and_save(runtime, current, candidates)
        elif self.verbose:
            log.info(
                "Epoch %d, global step %d: %r was not in top %d",
                int(candidates["epoch"]), int(candidates["step"]), self.monitor, self.save_top_k,
            )

    def _save_latest(self, runtime: Runtime, candidates: dict[str, torch.Tensor]) -> None:
        """``monitor=None``: the newest file is the best; with top k 1 the previous one goes."""
        path = self._free_name(candidates, self.best_model_path)
        previous = self.best_model_path
        with staged(self, path) as written:
            self.best_model_path = path
            self._write(runtime, path, None, None)
        if written[0] and self.save_top_k == 1 and previous and self._removable(runtime, previous, path):
            self._remove(previous)

    def _update_best_and_save(self, runtime: Runtime, current: torch.Tensor, candidates: dict[str, torch.Tensor]) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        dropped = self.kth_best_model_path if len(self.best_k_models) == k and k > 0 else None
        if torch.isnan(current):
            current = torch.tensor(float("inf" if self.mode == "min" else "-inf"))
        path = self._free_name(candidates, dropped)
        with staged(self, path) as written:
            if dropped is not None:
                self.best_k_models.pop(dropped)
            self.current_score = current
            self.best_k_models[path] = current
            if len(self.best_k_models) == k:
                worst = max if self.mode == "min" else min
                self.kth_best_model_path = worst(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
                self.kth_value = self.best_k_models[self.kth_best_model_path]
            best = min if self.mode == "min" else max
            self.best_model_path = best(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
            self.best_model_score = self.best_k_models[self.best_model_path]
            if self.verbose:
                log.info(
                    "Epoch %d, global step %d: %r reached %.5f (best %.5f), saving model to %r as top %d",
                    int(candidates["epoch"]), int(candidates["step"]), self.monitor,
                    float(current), float(self.best_model_score), path, k,
                )
            self._write(runtime, path, self.monitor, float(current))
        if written[0] and dropped and self._removable(runtime, dropped, path):
            self._remove(dropped)

    def _save_last(self, runtime: Runtime, candidates: dict[str, torch.Tensor]) -> None:
        if not self.save_last:
            return
        previous = self.last_model_path
        path = self._free_name(candidates, previous, self.CHECKPOINT_NAME_LAST)
        with staged(self, path) as written:
            self.last_model_path = path
            if self.save_last == "link" and self._last_checkpoint_saved and self.save_top_k != 0:
                link_checkpoint(self._last_checkpoint_saved, path)
            else:
                self._write(runtime, path, None, None)
        if written[0] and previous and self._removable(runtime, previous, path):
            self._remove(previous)

    def _write(self, runtime: Runtime, path: str, monitor: str | None, score: float | None) -> None:
        """Write one file (full or weights only) and emit ``checkpoint_written``."""
        if self.save_weights_only:
            checkpoint = runtime.checkpoint_dict()
            weights = {k: checkpoint[k] for k in _WEIGHTS_ONLY_KEYS if k in checkpoint}
            if runtime.sharded:  # FSDP: gather full tensors (collective), rank zero writes them
                from runtime.fsdp import full_state_dict

                weights["state_dict"] = full_state_dict(runtime.model)
            if dist.rank_zero_write(lambda: save_checkpoint(weights, path), path):  # every rank learns the outcome
                runtime.bus.event.checkpoint_written.emit(runtime, path=Path(path), monitor=monitor, score=score)
        else:
            runtime.save_checkpoint(path, monitor=monitor, score=score)
        self._last_global_step_saved = runtime.state.global_step
        self._last_checkpoint_saved = path

    def _removable(self, runtime: Runtime, previous: str, current: str) -> bool:
        """Only files inside ``dirpath``, never the one this run resumed from."""
        if previous == current:
            return False
        old = Path(previous).absolute()
        if runtime.ckpt_path is not None and old == Path(runtime.ckpt_path).absolute():
            return False
        return Path(self.dirpath or ".").absolute() in old.parents

    def _remove(self, path: str) -> None:
        if dist.is_rank_zero():  # os.path on the str: no Path built at every save
            if os.path.isdir(path):  # a sharded checkpoint folder (trainer.strategy=fsdp)
                shutil.rmtree(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _exists(self, path: str) -> bool:
        return bool(dist.broadcast_object(os.path.exists(path) if dist.is_rank_zero() else False))

    def _free_name(self, candidates: dict[str, torch.Tensor], replacing: str | None, filename: str | None = None) -> str:
        """The formatted name, with ``-v1``, ``-v2`` ... while it names another existing file."""
        path, version = self.format_checkpoint_name(candidates, filename), self.STARTING_VERSION
        while self._enable_version_counter and self._exists(path) and path != replacing:
            path, version = self.format_checkpoint_name(candidates, filename, ver=version), version + 1
        return path

    # ------------------------------------------------------------------ names
    def format_checkpoint_name(
        self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None, prefix: str | None = None
    ) -> str:
        """The file path for ``metrics`` (e.g. ``<dirpath>/epoch=2-val_loss=0.12.ckpt``).

        ``{name}`` and ``{name:fmt}`` fields are filled from ``metrics``; with
        ``auto_insert_metric_name`` each becomes ``name=<value>``; a name not in ``metrics``
        formats as 0. ``ver`` appends ``-v<ver>``, ``prefix`` goes in front.
        """
        template = filename or self.filename or "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"
        name = fill_template(template, metrics, insert_names=self.auto_insert_metric_name, equals=self.CHECKPOINT_EQUALS_CHAR)
        if prefix is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join([prefix, name])
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join((name, f"v{ver}"))
        name += self.FILE_EXTENSION
        return os.path.join(self.dirpath, name) if self.dirpath else name

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore; when ``dirpath`` changed only ``best_model_path`` is restored (with a warning)."""
        saved_dir = state_dict.get("dirpath", self.dirpath)
        if self.dirpath == saved_dir:
            self.best_model_score = state_dict["best_model_score"]
            self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.best_k_models = dict(state_dict.get("best_k_models", self.best_k_models))
            self.last_model_path = state_dict.get("last_model_path", self.last_model_path)
        else:
            log.warning(
                "ModelCheckpoint: dirpath changed from %r to %r; only best_model_path is restored",
                saved_dir, self.dirpath,
            )
        self.best_model_path = state_dict["best_model_path"]
