"""Subprocess entry point and config factories for ``tests/test_interrupt.py``.

Run as ``python tests/scripts/interrupt_job.py JOBS_JSON``: a JSON list of jobs, each run
in order in this process; a job trains the small model below with
GracefulInterruptCallback and saves what the test compares (weights, optimizer and
scheduler state, metric history, EMA state) to ``<out>/result.pt``. A job may send this
process a real signal at a chosen (epoch, batch) and may resume from a checkpoint.

Job keys: ``out`` (folder; also the callback's save_dir), ``workers`` (num_workers),
``augment`` (random noise added in ``__getitem__``), ``ema`` (add EMACallback),
``kill`` ([epoch, batch] or null), ``signal`` ("SIGINT" / "SIGTERM"), ``times`` (signals
sent at that point), ``resume`` (checkpoint path or null), ``stage`` ("fit", or "test" /
"predict" to be interrupted there instead), ``accumulate``
(accumulate_grad_batches), ``runs`` (a folder: use the local tracker there
instead of none).

The module also serves ``busloop train`` configs (with ``tests/scripts`` on PYTHONPATH):
``interrupt_job:build_model``, ``interrupt_job:build_loaders`` and the callbacks
``interrupt_job:KillAt`` and ``interrupt_job:Handshake``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from runtime import Callback, Runtime


def build_model(seed: int = 0, dropout: float = 0.3) -> nn.Module:
    """A small MLP with dropout (its draws must replay exactly on resume)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))


class NoisyData(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A separable two-class problem; ``augment`` adds noise drawn from torch's global RNG
    in ``__getitem__`` (the main process's RNG with 0 workers, the worker's otherwise)."""

    def __init__(self, n: int, seed: int, augment: bool = False, sleep: float = 0.0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=generator)
        self.y = (self.x[:, :4].sum(1) > self.x[:, 4:].sum(1)).long()
        self.augment, self.sleep = augment, sleep

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sleep:
            time.sleep(self.sleep)
        x = self.x[index]
        if self.augment:
            x = x + 0.1 * torch.randn(8)
        return x, self.y[index]


def build_loaders(
    batch_size: int = 8,
    num_workers: int = 0,
    augment: bool = False,
    n_train: int = 64,
    n_val: int = 32,
    sleep: float = 0.0,
) -> dict[str, DataLoader[Any]]:
    """Train: shuffled, no explicit generator (the common case), ``num_workers`` workers.
    Val / test: in order, in the main process (fewer worker start-ups keep the tests fast)."""
    train = NoisyData(n_train, seed=0, augment=augment, sleep=sleep)
    val = NoisyData(n_val, seed=1)
    return {
        "train": DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=num_workers),
        "val": DataLoader(val, batch_size=16),
        "test": DataLoader(val, batch_size=16),
    }


class KillAt(Callback):
    """Sends this process ``signal`` ``times`` times while a chosen batch runs.

    ``stage`` "fit" fires in train_batch_start of (``epoch``, ``batch``), so the signal
    lands during that batch; "test" / "predict" fire in that stage's batch_end of ``batch``.
    """

    def __init__(
        self, epoch: int = 0, batch: int = 0, signal: str = "SIGINT", times: int = 1, stage: str = "fit"
    ) -> None:
        self.epoch, self.batch, self.times, self.stage = epoch, batch, times, stage
        self.signum = int(getattr(__import__("signal"), signal))
        self.fired = False

    def _fire(self) -> None:
        self.fired = True
        for _ in range(self.times):
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        if self.stage == "fit" and not self.fired and (runtime.state.epoch, batch_idx) == (self.epoch, self.batch):
            self._fire()

    def on_test_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        if self.stage == "test" and batch_idx == self.batch:
            self._fire()

    def on_predict_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        if self.stage == "predict" and batch_idx == self.batch:
            self._fire()


class Handshake(Callback):
    """At train_batch_end of global step ``step``: create ``ready``, then wait (at most
    ``timeout`` s) until the test creates ``go`` -- after it has sent its signal from
    outside, so that the signal lands in this batch."""

    def __init__(self, ready: str, go: str, step: int = 3, timeout: float = 60.0) -> None:
        self.ready, self.go, self.step, self.timeout = Path(ready), Path(go), step, timeout

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        if runtime.state.global_step != self.step or self.ready.exists():
            return
        self.ready.write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout
        while not self.go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)


def _ema_callback() -> Any:
    from callbacks.ema import EMACallback  # a colleague's module; the test skips without it

    return EMACallback(decay=0.5, use_dynamic_decay=True, decay_tau=2000)


def run_job(job: dict[str, Any]) -> None:
    """Train (or resume) one job and save its final state to ``<out>/result.pt``."""
    from callbacks.interrupt import GracefulInterruptCallback
    from runtime.tracking import NullTracker

    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    stage = job.get("stage", "fit")
    callbacks: list[Any] = [GracefulInterruptCallback(save_dir=str(out))]
    ema = _ema_callback() if job.get("ema") else None
    if ema is not None:
        callbacks.append(ema)
    if job.get("kill") is not None:
        epoch, batch = job["kill"]
        callbacks.append(
            KillAt(epoch, batch, signal=job.get("signal", "SIGINT"), times=job.get("times", 1), stage=stage)
        )
    config = {
        "optimizer": {"name": "SGD", "params": {"lr": 0.05, "momentum": 0.9}},
        "scheduler": {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.7}, "interval": "epoch"},
        "trainer": {
            "epochs": 3, "seed": 7, "num_sanity_val_steps": 1, "accelerator": "cpu",
            "accumulate_grad_batches": job.get("accumulate", 1),
        },
    }
    loaders = build_loaders(num_workers=job.get("workers", 0), augment=job.get("augment", False))
    tracker = None if job.get("runs") else NullTracker()
    if job.get("runs"):  # a run folder (status.txt, log.txt) from the local tracker
        config["tracker"] = {"save_directory": job["runs"], "run_name": "job"}
    rt = Runtime(build_model(seed=3), callbacks, config, loss=F.cross_entropy, tracker=tracker)
    if stage == "test":
        rt.test(loaders["test"])
    elif stage == "predict":
        rt.predict(loaders["test"])
    state = rt.fit(loaders["train"], loaders["val"], ckpt_path=job.get("resume"))
    assert rt.optimizer is not None
    result = {
        "weights": rt.model.state_dict(),
        "optimizer": rt.optimizer.state_dict(),
        "schedulers": [c.scheduler.state_dict() for c in rt.lr_scheduler_configs],
        "history": state.history,
        "global_step": state.global_step,
        "epoch": state.epoch,
        "interrupted": state.interrupted,
        "ema": ema.state_dict() if ema is not None and hasattr(ema, "state_dict") else None,
        "handlers": [str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)],
    }
    torch.save(result, out / "result.pt")


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    for job in json.loads(argv[0]):
        run_job(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
