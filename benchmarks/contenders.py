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

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.workload import Batch, Contender, RunContext, TimedBatches, plain_step

__all__ = ["BASELINE", "CONTENDERS", "STOCK", "fit_busloop", "plain_validate"]

#: The contender every other one is compared with: the fastest hand-written loop.
BASELINE = "plain-lean"

#: The stock hand-written loop (``optimizer.zero_grad(set_to_none=True)``), reported as a row.
STOCK = "plain"


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
