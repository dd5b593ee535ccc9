"""The per-step overhead contenders: hand-written loops, busloop, Lightning and Ignite.

Every contender trains :class:`~benchmarks.workload.Workload` for ``workload.epochs``
epochs over the same batches and validates on the same batches at the end of each epoch,
so the work is the same and what differs is the runtime around it.

The baseline is the fastest hand-written loop, **plain-lean**: it clears gradients by
setting them to None itself, as busloop does, instead of calling
``optimizer.zero_grad(set_to_none=True)``, whose profiler label costs tens of µs a step on
this workload. Scoring busloop against the stock plain loop would credit busloop with that
saving, which is not the cost of its loop; the stock loop stays as a reported row.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.workload import Batch, Contender, RunContext, TimedBatches, plain_step

__all__ = ["BASELINE", "CONTENDERS", "SAME_WORK", "STOCK", "fit_busloop", "plain_validate"]

#: The contender every other one is compared with: the fastest hand-written loop.
BASELINE = "plain-lean"

#: The stock hand-written loop (``optimizer.zero_grad(set_to_none=True)``), reported as a row.
STOCK = "plain"

#: The baseline doing by hand the work the default callback set adds (a reported row; the
#: default set's overhead over it is reported beside the targets, which stay scored
#: against :data:`BASELINE`).
SAME_WORK = "plain-lean-work"


def plain_validate(model: nn.Module, val: Sequence[Batch], loss_fn: Callable[..., torch.Tensor]) -> float:
    """A hand-written validation pass: eval mode, no grad, the mean loss read once."""
    model.eval()
    total = torch.zeros(())
    with torch.no_grad():
        for inputs, targets in val:
            total += loss_fn(model(inputs), targets)
    model.train()
    return total.item() / max(len(val), 1)


def _fit_plain(ctx: RunContext, batches: TimedBatches) -> None:
    """The stock hand-written loop: zero_grad(set_to_none=True), forward, loss, backward, step."""
    model = ctx.workload.model()
    step = plain_step(model, ctx.workload.optimizer(model), ctx.workload.loss)
    model.train()
    for _ in range(ctx.workload.epochs):
        for batch in batches:
            step(batch)
        plain_validate(model, ctx.val, ctx.workload.loss)


def _fit_plain_lean(
    ctx: RunContext,
    batches: TimedBatches,
    epoch_end: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
) -> None:
    """The fastest hand-written loop: grads set to None in place of ``zero_grad``.

    Exactly what ``zero_grad(set_to_none=True)`` does, without the profiler label
    ``Optimizer.zero_grad`` enters even when nothing is profiling. ``epoch_end`` runs after
    each epoch's validation (the checkpointing row's save).
    """
    model = ctx.workload.model()
    optimizer = ctx.workload.optimizer(model)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    loss_fn = ctx.workload.loss
    model.train()
    for epoch in range(ctx.workload.epochs):
        for inputs, targets in batches:
            for param in params:
                param.grad = None
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
        plain_validate(model, ctx.val, loss_fn)
        if epoch_end is not None:
            epoch_end(epoch, model, optimizer)


def _save_durably(state: dict[str, Any], path: Path) -> None:
    """A hand-written loop's checkpoint, as durable as busloop's: a temporary file, fsync,
    rename over ``path``, fsync of the folder."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _fit_plain_lean_checkpoint(ctx: RunContext, batches: TimedBatches) -> None:
    """The baseline plus a checkpoint (weights, optimizer state, epoch) written after every
    epoch's validation, atomically and fsynced as busloop's are: what saving costs a
    hand-written loop, to read beside the default set's ModelCheckpoint (a reported row;
    the targets stay scored against the baseline)."""
    path = ctx.workdir / "plain-lean.ckpt"

    def save(epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        _save_durably(state, path)

    _fit_plain_lean(ctx, batches, save)


def _fit_plain_lean_work(ctx: RunContext, batches: TimedBatches) -> None:
    """The baseline doing by hand, the fastest way, the work ``busloop train``'s default set
    adds around the step, so the default set's overhead can be read against a loop that
    does the same work (see benchmarks/README.md):

    - each step's loss read (``loss.item()``) for the epoch's mean training loss, and a
      metrics row every 50 steps (``log_every_n_steps``'s default);
    - after each epoch's validation: the epoch's row (training and validation loss) and
      the held step rows written to ``metrics.jsonl`` in one write, one line to a log file
      and to stdout;
    - when the validation loss improved (ModelCheckpoint on min ``val/loss``, top 1): a
      checkpoint (weights, optimizer state, epoch, step, the torch / Python / NumPy random
      states) written durably (as :func:`_save_durably`) under a new name, the previous
      best removed.

    Left out, so this loop stays the fastest one doing the work: the validation report
    table, a model summary, the weights_only-safe form of the saved states, the mid-epoch
    resume point, config and version records.
    """
    import numpy as np

    model = ctx.workload.model()
    optimizer = ctx.workload.optimizer(model)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    loss_fn, epochs = ctx.workload.loss, ctx.workload.epochs
    folder = ctx.workdir / SAME_WORK
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    step, best, best_path = 0, math.inf, None
    model.train()
    with open(folder / "metrics.jsonl", "a") as metrics, open(folder / "log.txt", "a") as log:
        for epoch in range(epochs):
            total, count = 0.0, 0
            for inputs, targets in batches:
                for param in params:
                    param.grad = None
                loss = loss_fn(model(inputs), targets)
                value = loss.item()
                total += value
                count += 1
                loss.backward()
                optimizer.step()
                step += 1
                if step % 50 == 0:
                    rows.append({"step": step, "epoch": epoch, "train/loss": value})
            train_loss = total / max(count, 1)
            val_loss = plain_validate(model, ctx.val, loss_fn)
            rows.append(
                {"step": step, "epoch": epoch, "train/loss": train_loss, "val/loss": val_loss}
            )
            metrics.write("".join(json.dumps(row) + "\n" for row in rows))
            metrics.flush()
            rows.clear()
            line = (
                f"[Epoch {epoch + 1}/{epochs}] Train Loss: {train_loss:.5f} "
                f"| Val Loss: {val_loss:.5f}"
            )
            print(line)
            log.write(line + "\n")
            log.flush()
            if val_loss < best:
                path = folder / f"epoch={epoch}-step={step}.ckpt"
                # Python's and NumPy's states as one pickle.dumps blob: torch.save would
                # otherwise pickle the 625 ints of random's state object by object.
                rng = {
                    "torch": torch.get_rng_state(),
                    "python_numpy": pickle.dumps((random.getstate(), np.random.get_state())),
                }
                state = {
                    "epoch": epoch,
                    "global_step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rng,
                }
                _save_durably(state, path)
                if best_path is not None:
                    best_path.unlink()
                best, best_path = val_loss, path


def _busloop_config(ctx: RunContext, **trainer: Any) -> dict[str, Any]:
    return {
        "optimizer": {"name": "SGD", "params": {"lr": ctx.workload.lr}},
        "trainer": {"epochs": ctx.workload.epochs, "accelerator": "cpu", **trainer},
        "tracker": {"save_directory": str(ctx.workdir / "busloop-runs")},
    }


def fit_busloop(ctx: RunContext, batches: TimedBatches, callbacks: Sequence[object] = ()) -> None:
    """busloop with the given callbacks and no tracker, validating every epoch."""
    from runtime import Runtime
    from runtime.tracking import NullTracker

    runtime = Runtime(
        ctx.workload.model(),
        list(callbacks),
        _busloop_config(ctx, num_sanity_val_steps=0),
        loss=ctx.workload.loss,
        tracker=NullTracker(),
    )
    runtime.fit(batches, ctx.val)


def _fit_busloop_bare(ctx: RunContext, batches: TimedBatches) -> None:
    fit_busloop(ctx, batches)


def _fit_busloop_defaults(ctx: RunContext, batches: TimedBatches) -> None:
    """busloop as ``busloop train`` runs it: the default callback set (progress bar on a
    non-terminal, model summary, ModelCheckpoint writing on val/loss, ...), the local
    tracker writing metrics into the run folder, validation every epoch."""
    from callbacks import build_callbacks
    from runtime import Runtime
    from runtime.config import load_config

    config = load_config(_busloop_config(ctx))
    with Runtime(
        ctx.workload.model(), build_callbacks(config), config, loss=ctx.workload.loss
    ) as runtime:
        runtime.fit(batches, ctx.val)


def _lightning_module(ctx: RunContext) -> Any:
    import lightning.pytorch as pl

    workload = ctx.workload

    class BenchModule(pl.LightningModule):
        """The workload as a LightningModule: the same model, loss and optimiser."""

        def __init__(self) -> None:
            super().__init__()
            self.net = workload.model()

        def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            return workload.loss(self.net(inputs), targets)

        def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            return workload.loss(self.net(inputs), targets)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return workload.optimizer(self.net)

    return BenchModule()


class _OneLoader:
    """The validation batches as one loader: Lightning reads a bare list as several loaders."""

    def __init__(self, batches: Sequence[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _fit_lightning(ctx: RunContext, batches: TimedBatches, **trainer_args: Any) -> None:
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        max_epochs=ctx.workload.epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(ctx.workdir / "lightning"),
        **trainer_args,
    )
    trainer.fit(_lightning_module(ctx), train_dataloaders=batches, val_dataloaders=_OneLoader(ctx.val))


def _fit_lightning_bare(ctx: RunContext, batches: TimedBatches) -> None:
    """Lightning's Trainer with logger, checkpointing, progress bar and summary off."""
    _fit_lightning(
        ctx,
        batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def _fit_lightning_defaults(ctx: RunContext, batches: TimedBatches) -> None:
    """Lightning's Trainer with its defaults (progress bar, logger, checkpointing, summary)."""
    _fit_lightning(ctx, batches)


def _fit_busloop_lightning_module(ctx: RunContext, batches: TimedBatches) -> None:
    """busloop driving the same LightningModule as the Lightning contenders (no tracker)."""
    from runtime import Runtime
    from runtime.tracking import NullTracker

    config = {"trainer": {"epochs": ctx.workload.epochs, "accelerator": "cpu", "num_sanity_val_steps": 0}}
    Runtime(_lightning_module(ctx), [], config, tracker=NullTracker()).fit(batches, _OneLoader(ctx.val))


def _fit_ignite(ctx: RunContext, batches: TimedBatches) -> None:
    """Ignite's Engine running the stock plain step, with one handler: validation per epoch."""
    from ignite.engine import Engine, Events

    model = ctx.workload.model()
    optimizer = ctx.workload.optimizer(model)
    loss_fn = ctx.workload.loss

    def train_step(engine: Engine, batch: Batch) -> torch.Tensor:
        inputs, targets = batch
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        return loss

    engine = Engine(train_step)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: plain_validate(model, ctx.val, loss_fn))
    model.train()
    engine.run(batches, max_epochs=ctx.workload.epochs)


#: The per-step overhead contenders, in round order.
CONTENDERS: dict[str, Contender] = {
    contender.name: contender
    for contender in (
        Contender(STOCK, "plain loop, optimizer.zero_grad()", _fit_plain),
        Contender(BASELINE, "plain loop, grads set to None (baseline)", _fit_plain_lean),
        Contender(
            "plain-lean-ckpt",
            "plain loop, grads set to None, + a checkpoint per epoch",
            _fit_plain_lean_checkpoint,
        ),
        Contender(
            SAME_WORK,
            "plain loop, grads set to None, + the default set's work by hand",
            _fit_plain_lean_work,
        ),
        Contender("busloop", "busloop, no callbacks", _fit_busloop_bare),
        Contender("busloop-defaults", "busloop, default callbacks + tracker", _fit_busloop_defaults),
        Contender("lightning-bare", "Lightning, all off", _fit_lightning_bare, ("lightning",)),
        Contender(
            "lightning-defaults", "Lightning, defaults", _fit_lightning_defaults, ("lightning",)
        ),
        Contender(
            "busloop-lightning-module",
            "busloop, the same LightningModule",
            _fit_busloop_lightning_module,
            ("lightning",),
        ),
        Contender("ignite", "Ignite Engine, validation handler", _fit_ignite, ("ignite",)),
    )
}
