"""The digits default job end to end: busloop vs the same training by hand, by Lightning and
by Ignite (part of ``python -m benchmarks --workloads``).

Every contender trains the model of ``runtime/examples/digits.yaml`` (``build_model``) on its
loaders (``build_loaders``) with its optimizer (AdamW), scheduler (CosineAnnealingLR, per
epoch), seed and epochs, validating after every epoch, and reports the time from the start
(building the model and loaders) to the end of the final epoch's validation, on the wall
clock and in the training thread's CPU time, and that validation's accuracy.

* **busloop**: ``busloop train``'s job as the CLI builds it (``build_job``, the default
  callbacks, the local tracker writing the run folder), the auto-populated train-end
  callbacks (test, export, archive) switched off: they run after the timed window.
* **plain**: a hand-written loop (grads set to None, the fastest form).
* **Lightning**: a LightningModule with the digits model's own steps (``self.log`` of loss
  and accuracy), Trainer defaults (progress bar, logger, checkpointing, summary).
* **Ignite**: an ``Engine`` with the plain step and an evaluator computing accuracy.

Accuracy differs a little between contenders: each consumes the random streams (shuffling,
dropout) in its own order.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from benchmarks.overhead import quiet
from benchmarks.stats import summarize

__all__ = ["DIGITS_CONTENDERS", "run_digits"]

_Result = tuple[float, float, float]
"""(wall seconds, thread CPU seconds, final validation accuracy)."""


class _Clock:
    """Wall and thread CPU time since construction, read when the final epoch ends."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()
        self.result: _Result | None = None

    def mark(self, accuracy: float) -> None:
        self.result = (time.perf_counter() - self.wall, time.thread_time() - self.cpu, accuracy)


def _config(workdir: Path, epochs: int, limit: float | None) -> Any:
    from runtime.config import load_config
    from runtime.examples import DEFAULT_CONFIG

    overrides = [
        f"trainer.epochs={epochs}",
        "trainer.accelerator=cpu",
        "trainer.smart_cfg_auto_populate=false",
        f"tracker.save_directory={workdir / 'busloop-runs'}",
    ]
    if limit is not None:
        overrides += [f"trainer.limit_train_batches={limit}", f"trainer.limit_val_batches={limit}"]
    return load_config(str(DEFAULT_CONFIG), overrides)


def _optimization(cfg: Any, params: Any) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.AdamW(params, **cfg.optimizer.params)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **cfg.scheduler.params)


def _limited(loader: Any, limit: float | None) -> Any:
    return loader if limit is None else [batch for _, batch in zip(range(int(limit)), loader, strict=False)]


def _busloop(cfg: Any, clock: _Clock, limit: float | None) -> None:
    from callbacks import build_callbacks
    from runtime import Runtime
    from runtime.callback import Callback
    from runtime.devices import seed_everything
    from runtime.job import build_job

    class FinalEpoch(Callback):
        def on_epoch_metrics(self, runtime: Any, stage: str, metrics: dict[str, float]) -> None:
            if stage == "val":
                clock.mark(metrics["val/accuracy"])

    seed_everything(cfg.trainer.seed)
    model, loaders = build_job(cfg)
    with Runtime(model, [*build_callbacks(cfg), FinalEpoch()], cfg) as runtime:
        runtime.loaders.update(loaders)
        runtime.fit(loaders["train"], loaders["val"])


def _plain(cfg: Any, clock: _Clock, limit: float | None) -> None:
    from runtime.devices import seed_everything
    from runtime.job import build_job

    seed_everything(cfg.trainer.seed)
    model, loaders = build_job(cfg)
    optimizer, scheduler = _optimization(cfg, model.parameters())
    params = [p for group in optimizer.param_groups for p in group["params"]]
    train, val = _limited(loaders["train"], limit), _limited(loaders["val"], limit)
    for _ in range(cfg.trainer.epochs):
        model.train()
        for images, labels in train:
            for param in params:
                param.grad = None
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for images, labels in val:
                correct += int((model(images).argmax(1) == labels).sum())
                seen += len(labels)
        accuracy = correct / seen
    clock.mark(accuracy)


def _lightning(cfg: Any, clock: _Clock, limit: float | None) -> None:
    import lightning.pytorch as pl

    from runtime.devices import seed_everything
    from runtime.examples.digits import DigitsClassifier
    from runtime.job import build_job

    class DigitsModule(pl.LightningModule):
        """The digits model's own steps (self.log of loss and accuracy) in a LightningModule."""

        training_step = DigitsClassifier.training_step
        validation_step = DigitsClassifier.validation_step
        _shared_step = DigitsClassifier._shared_step

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

        def configure_optimizers(self) -> Any:
            optimizer, scheduler = _optimization(cfg, self.parameters())
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    class FinalEpoch(pl.Callback):
        def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            if not trainer.sanity_checking:
                clock.mark(float(trainer.callback_metrics["val/accuracy"]))

    seed_everything(cfg.trainer.seed)
    net, loaders = build_job(cfg)
    batches = None if limit is None else int(limit)
    trainer = pl.Trainer(
        max_epochs=cfg.trainer.epochs, accelerator="cpu", devices=1, callbacks=[FinalEpoch()],
        default_root_dir=str(Path(cfg.tracker.save_directory).parent / "lightning"),
        limit_train_batches=batches, limit_val_batches=batches,
    )  # fmt: skip
    trainer.fit(DigitsModule(net), loaders["train"], loaders["val"])


def _ignite(cfg: Any, clock: _Clock, limit: float | None) -> None:
    from ignite.engine import Engine, Events, create_supervised_evaluator
    from ignite.metrics import Accuracy

    from runtime.devices import seed_everything
    from runtime.job import build_job

    seed_everything(cfg.trainer.seed)
    model, loaders = build_job(cfg)
    optimizer, scheduler = _optimization(cfg, model.parameters())
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def train_step(engine: Engine, batch: Any) -> float:
        model.train()
        images, labels = batch
        for param in params:
            param.grad = None
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return 0.0

    trainer = Engine(train_step)
    evaluator = create_supervised_evaluator(model, metrics={"accuracy": Accuracy()})
    val = _limited(loaders["val"], limit)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine: Engine) -> None:
        scheduler.step()
        evaluator.run(val)
        if engine.state.epoch == cfg.trainer.epochs:
            clock.mark(float(evaluator.state.metrics["accuracy"]))

    trainer.run(_limited(loaders["train"], limit), max_epochs=cfg.trainer.epochs)


#: name -> (label, run, required package)
DIGITS_CONTENDERS: dict[str, tuple[str, Callable[[Any, _Clock, float | None], None], str | None]] = {
    "plain": ("hand-written loop", _plain, None),
    "busloop": ("busloop train (default callbacks, local tracker)", _busloop, None),
    "lightning": ("Lightning Trainer, defaults", _lightning, "lightning"),
    "ignite": ("Ignite Engine + evaluator", _ignite, "ignite"),
}


def run_digits(
    *,
    rounds: int = 3,
    epochs: int = 12,
    limit: float | None = None,
    without: Collection[str] = (),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Interleaved rounds of every digits contender; times and ratios to the plain loop."""
    import importlib
    import importlib.util

    skipped = {
        name: f"skipped: {need} {'excluded' if need in without else 'is not installed'}"
        for name, (_, _, need) in DIGITS_CONTENDERS.items()
        if need is not None and (need in without or importlib.util.find_spec(need) is None)
    }
    active = [name for name in DIGITS_CONTENDERS if name not in skipped]
    runs: dict[str, list[_Result]] = {name: [] for name in active}
    # Imports and the dataset's first load happen once, before any timed window.
    from runtime.examples.digits import load_digits_tensors

    load_digits_tensors()
    for name in active:
        need = DIGITS_CONTENDERS[name][2]
        if need is not None:
            importlib.import_module("lightning.pytorch" if need == "lightning" else "ignite.engine")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="busloop-bench-") as tmp:
            for index in range(1, rounds + 1):
                if progress is not None:
                    progress(f"round {index}/{rounds}")
                for name in active:
                    workdir = Path(tmp) / f"{name}-{index}"
                    cfg = _config(workdir, epochs, limit)
                    clock = _Clock()
                    with quiet():
                        DIGITS_CONTENDERS[name][1](cfg, clock, limit)
                    if clock.result is None:
                        raise RuntimeError(f"digits contender {name} never finished an epoch")
                    runs[name].append(clock.result)
    finally:
        torch.set_num_threads(threads)
    results: dict[str, Any] = {}
    for name in active:
        wall, cpu, accuracy = (list(column) for column in zip(*runs[name], strict=True))
        base = runs["plain"]
        results[name] = {
            "label": DIGITS_CONTENDERS[name][0],
            "wall_s": summarize(wall),
            "cpu_s": summarize(cpu),
            "accuracy": summarize(accuracy),
            "wall_ratio": statistics.median(r[0] / b[0] for r, b in zip(runs[name], base, strict=True)),
            "cpu_ratio": statistics.median(r[1] / b[1] for r, b in zip(runs[name], base, strict=True)),
        }
    return {"rounds": rounds, "epochs": epochs, "limit": limit, "results": results, "skipped": skipped}
