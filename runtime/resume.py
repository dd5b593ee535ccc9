"""What a checkpoint holds about a run, and how the loop is put back exactly where it was.

:func:`checkpoint_of` builds the dict :meth:`Runtime.save_checkpoint` writes (weights,
optimizer / scheduler / scaler states, the loop position, RNG states, each stateful
callback's state under its ``state_key``, the config and package versions).
:func:`restore` loads one into a runtime and returns the :class:`ResumePoint` the next
training epoch consumes; :func:`epoch_batches` then replays that epoch's start (same
shuffle, same worker seeds), skips the batches already trained at the sampler level and
continues the saved random stream, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from torch import nn

from runtime import distributed as dist
from runtime.bus import BusError
from runtime.checkpoint import (
    FORMAT_KEY,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    set_rng_state,
    versions,
)
from runtime.config import config_to_dict
from runtime.data import iterate, set_sampler_epoch
from runtime.epoch_rng import EpochRng
from runtime.lightning_ckpt import (
    LIGHTNING_FORMAT_VERSION,
    LIGHTNING_VERSION_KEY,
    fit_loop_state,
    hparams_entries,
    lightning_resume_epoch,
    loops_state,
)
from runtime.state import LoopState
from runtime.unsized import lookahead as fetch_ahead

if TYPE_CHECKING:
    from runtime.core import RuntimeCore as Runtime

__all__ = [
    "ResumePoint",
    "check_resumable",
    "check_state_keys",
    "checkpoint_of",
    "epoch_batches",
    "load_for_resume",
    "load_weights",
    "restore",
    "state_key",
]

log = logging.getLogger("busloop")


@attrs.define
class ResumePoint:
    """Where a restored checkpoint left the fit loop (consumed when the epoch starts)."""

    batch_idx: int
    epoch_done: bool
    epoch_rng: dict[str, Any] | None
    rng: dict[str, Any] | None
    val_pending: bool = False


def checkpoint_of(runtime: Runtime, *, epoch_rng: EpochRng | None, val_pending: bool) -> dict[str, Any]:
    """The checkpoint of ``runtime`` as a dict of weights_only-safe values (see DESIGN.md).

    ``epoch_rng`` is the RNG state read at the start of the running epoch (held, and converted,
    only before its last batch is done) and ``val_pending`` whether a validation is due after
    the last finished batch: the loop's own position.
    The dict is also a Lightning 2.6 checkpoint (see :mod:`runtime.lightning_ckpt`).
    """
    st = runtime.state
    epoch_done = st.training is False and st.last_batch_done()
    callback_states: dict[str, Any] = {}
    for callback in runtime.callbacks:
        state_dict = getattr(callback, "state_dict", None)
        state = state_dict() if callable(state_dict) else None
        if state:
            callback_states[state_key(callback)] = state
    pending = runtime.metrics.pending("train")
    # the epoch-start state replays an unfinished epoch: converted only when the file holds it
    held_rng = None if epoch_done or epoch_rng is None else epoch_rng.checkpoint_form()
    # Each rank draws its own random numbers and logs its own values: rank zero writes
    # every rank's (a collective: every rank builds the checkpoint).
    # The gradients of an unfinished accumulation window differ between ranks too (no_sync).
    grads = _window_grads(runtime, epoch_done)
    rng = rng_state()  # once: nothing draws between the two places it goes
    ranks = dist.all_gather_object(
        {"rng": rng, "epoch_rng": held_rng, "pending_logs": pending, "grads": grads}
    )
    checkpoint = {
        FORMAT_KEY: FORMAT_VERSION,
        "epoch": st.epoch,
        "global_step": st.global_step,
        "loop": {
            "epoch": st.epoch,
            "batch_idx": st.batch_idx,
            "epoch_done": epoch_done,
            "val_pending": val_pending,
            "epoch_rng": held_rng,
            "pending_logs": pending,
            "grads": grads,
            **({"ranks": ranks} if len(ranks) > 1 else {}),
        },
        "state_dict": runtime.model.state_dict(),
        "optimizer_states": [optimizer.state_dict() for optimizer in runtime.optimizers],
        "lr_schedulers": [c.scheduler.state_dict() for c in runtime.lr_scheduler_configs],
        "scaler": runtime.scaler.state_dict() if runtime.scaler is not None else None,
        "accumulate_grad_batches": runtime.accumulate_grad_batches,
        "rng": rng,
        "callbacks": callback_states,
        "metrics": dict(st.metrics),
        "history": [dict(entry) for entry in st.history],
        "config": config_to_dict(runtime.config),
        "versions": versions(),
    }
    checkpoint.update(_lightning_entries(runtime, epoch_done))
    return checkpoint


def _window_grads(runtime: Runtime, epoch_done: bool) -> list[Any] | None:
    """The gradients summed so far in an unfinished accumulation window, one entry per
    parameter of the model (None where it has none), or None outside a window.

    A window opens at each batch index divisible by ``accumulate_grad_batches``; a checkpoint
    taken after its first micro-batches holds their gradients so that the resumed run adds
    the rest to them and steps exactly as the uninterrupted run does. Not for a model
    sharded with FSDP (its gradients are shards): that resume restarts the window.
    """
    st, accumulate = runtime.state, runtime.accumulate_grad_batches
    if accumulate <= 1 or epoch_done or st.batch_idx % accumulate == 0:
        return None
    if runtime.sharded:
        log.warning("FSDP checkpoint inside an accumulation window: its partial gradients are not saved")
        return None
    return [None if p.grad is None else p.grad.detach().clone() for p in runtime.model.parameters()]


def _restore_window_grads(runtime: Runtime, grads: list[Any] | None, path: str | os.PathLike[str]) -> None:
    """Put the gradients of an unfinished accumulation window back on the parameters."""
    if grads is None:
        return
    params = list(runtime.model.parameters())
    if len(grads) != len(params):
        raise CheckpointError(f"{path} holds gradients for {len(grads)} parameters, the model has {len(params)}")
    for param, grad in zip(params, grads, strict=True):
        param.grad = None if grad is None else grad.to(device=param.device, dtype=param.dtype)


def _epoch_length(st: LoopState, epoch_done: bool) -> int:
    """The epoch length Lightning's counters are written with. Unknown (a loader without a
    length): the batches trained so far, one more while the epoch runs (not its last batch yet);
    earlier epochs are counted as that long."""
    n = st.num_training_batches
    if not math.isinf(n):
        return int(n)
    return st.batch_idx if epoch_done or st.loader_done else st.batch_idx + 1


def _lightning_entries(runtime: Runtime, epoch_done: bool) -> dict[str, Any]:
    """What Lightning's Trainer and ``load_from_checkpoint`` read beyond the shared keys."""
    st, dm = runtime.state, runtime.datamodule
    fit_loop = fit_loop_state(
        epoch=st.epoch,
        batch_idx=st.batch_idx,
        num_batches=_epoch_length(st, epoch_done),
        global_step=st.global_step,
        epoch_done=epoch_done,
    )
    entries: dict[str, Any] = {LIGHTNING_VERSION_KEY: LIGHTNING_FORMAT_VERSION, "loops": loops_state(fit_loop)}
    entries.update(hparams_entries(runtime.model, "hyper_parameters", "hparams_name"))
    if dm is not None:
        entries.update(hparams_entries(dm, "datamodule_hyper_parameters", "datamodule_hparams_name"))
        state_dict = getattr(dm, "state_dict", None)
        state = state_dict() if callable(state_dict) else None
        if state:
            entries[type(dm).__qualname__] = state
    if runtime.scaler is not None:
        entries["MixedPrecision"] = runtime.scaler.state_dict()  # Lightning's precision plugin key
    return entries


def load_for_resume(runtime: Runtime, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the checkpoint at ``path`` (weights_only), check that it can be resumed, and load
    the datamodule's state and the model weights (Lightning's order); returns the checkpoint.

    A Lightning checkpoint busloop cannot continue exactly is refused before anything loads.
    """
    sharded = Path(path).is_dir()
    if sharded:  # an FSDP checkpoint folder: the sharded weights and optimizer states load here
        from runtime.fsdp import load_sharded

        checkpoint = load_sharded(runtime, Path(path))
    else:
        checkpoint = load_checkpoint(path, map_location=runtime.device)
    check_resumable(checkpoint, path)
    dm = runtime.datamodule
    if dm is not None and type(dm).__qualname__ in checkpoint:
        dm.load_state_dict(checkpoint[type(dm).__qualname__])
    if not sharded:
        load_weights(runtime.model, checkpoint, path)
    return checkpoint


def check_resumable(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointError` unless training can continue from ``checkpoint``: a
    busloop checkpoint with the loop's position, or a Lightning one saved between epochs."""
    if "loop" in checkpoint:
        return
    if FORMAT_KEY in checkpoint:
        raise CheckpointError(
            f"{path} holds no training state (no 'loop': saved with save_weights_only?), so "
            "training cannot resume from it; use it with `busloop test --weights` instead"
        )
    lightning_resume_epoch(checkpoint, path)


def load_weights(model: nn.Module, checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Load ``checkpoint["state_dict"]`` into ``model`` (strictly), for resume and for
    ``busloop test --weights`` alike; a checkpoint of another model is one line naming what
    is missing, unexpected or of another shape (torch's message runs over many lines)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds no model weights (no 'state_dict' mapping)")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        mine = model.state_dict()
        missing = [k for k in mine if k not in state]
        unexpected = [k for k in state if k not in mine]
        shapes = [
            f"{k} (file {_shape(state[k])}, model {_shape(mine[k])})"
            for k in mine
            if k in state and _shape(state[k]) != _shape(mine[k])
        ]
        parts = [
            f"{len(items)} {label}: {_listed(items)}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
            if items
        ] or [str(exc).strip().splitlines()[0][:200]]
        raise CheckpointError(f"{path} does not fit this model (a checkpoint of another model?): {'; '.join(parts)}") from None


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return "x".join(str(d) for d in shape) if shape is not None else type(value).__name__


def _listed(items: Sequence[str], shown: int = 3) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def restore_training_state(runtime: Runtime, checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Load the optimizer / scheduler / scaler states. The fit loop calls it after
    ``fit_start``, as Lightning restores them after ``on_fit_start`` (a callback such as
    ``BaseFinetuning`` adds its parameter groups there first)."""
    _load_optimizers(runtime, checkpoint.get("optimizer_states", []), path)
    for config, state in zip(runtime.lr_scheduler_configs, checkpoint.get("lr_schedulers", []), strict=False):
        config.scheduler.load_state_dict(state)
    scaler_state = next(
        (checkpoint[k] for k in ("scaler", "MixedPrecision", "native_amp_scaling_state") if checkpoint.get(k)), None
    )
    if runtime.scaler is not None and scaler_state:
        runtime.scaler.load_state_dict(scaler_state)


def restore(runtime: Runtime, checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> ResumePoint | None:
    """Load the callbacks' states and the loop position from ``checkpoint`` (the optimizers
    follow after ``fit_start``: :func:`restore_training_state`).

    Returns where the fit loop resumes, or None for a Lightning checkpoint (it resumes at
    the epoch boundary its loop counters name, with the random generators as they are).
    """
    states = checkpoint.get("callbacks", {})
    for callback in runtime.callbacks:
        key = state_key(callback)
        if key in states and callable(getattr(callback, "load_state_dict", None)):
            callback.load_state_dict(states[key])  # type: ignore[attr-defined]
    runtime.accumulate_grad_batches = int(
        checkpoint.get("accumulate_grad_batches", runtime.accumulate_grad_batches)
    )

    st = runtime.state
    loop = checkpoint.get("loop")
    st.global_step = int(checkpoint.get("global_step", 0))
    st.metrics = dict(checkpoint.get("metrics", {}))
    st.history = [dict(entry) for entry in checkpoint.get("history", [])]
    if loop is None:  # written by Lightning: resume at the epoch boundary it was saved at
        st.epoch, st.batch_idx = lightning_resume_epoch(checkpoint, path), 0
        log.info("Resumed from Lightning checkpoint %s at epoch %d, step %d", path, st.epoch, st.global_step)
        return None
    st.epoch = int(loop["epoch"])
    st.batch_idx = int(loop["batch_idx"])
    mine = _this_rank(loop, checkpoint, path)
    runtime.metrics.restore_pending("train", mine["pending_logs"])
    _restore_window_grads(runtime, mine.get("grads"), path)
    log.info("Resumed from %s at epoch %d, batch %d, step %d", path, st.epoch, st.batch_idx, st.global_step)
    return ResumePoint(
        batch_idx=st.batch_idx,
        epoch_done=bool(loop["epoch_done"]),
        epoch_rng=mine["epoch_rng"],
        val_pending=bool(loop.get("val_pending", False)),
        rng=mine["rng"],
    )


def _this_rank(loop: dict[str, Any], checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """This rank's random states and not yet reduced logs from a checkpoint.

    Same world size: the rank's own entry (exact resume). A different one: rank zero takes
    every saved rank's pending logs (the epoch's reduction sums over ranks, so the epoch mean
    is unchanged) and each rank the random state of its rank number, if saved, else rank 0's.
    """
    saved = loop.get("ranks") or [
        {
            "rng": checkpoint.get("rng"),
            "epoch_rng": loop.get("epoch_rng"),
            "pending_logs": loop.get("pending_logs", {}),
            "grads": loop.get("grads"),
        }
    ]
    rank, world = dist.rank(), dist.world_size()
    if len(saved) == world:
        return dict(saved[rank])
    log.warning(
        "%s was written by %d process(es), this run has %d: the random streams are not "
        "continued exactly", path, len(saved), world,
    )
    merged: dict[str, Any] = {}
    if rank == 0:
        for entry in saved:
            for name, logged in entry["pending_logs"].items():
                into = merged.setdefault(name, {"values": [], "sizes": []})
                into["values"] += list(logged["values"])
                into["sizes"] += list(logged["sizes"])
    own = saved[rank] if rank < len(saved) else saved[0]
    if own.get("grads") is not None:
        log.warning("%s: the partial accumulation window's gradients are dropped (another world size)", path)
    return {"rng": own["rng"], "epoch_rng": own["epoch_rng"], "pending_logs": merged, "grads": None}


def _load_optimizers(runtime: Runtime, states: list[Any], path: str | os.PathLike[str]) -> None:
    """Load the saved optimizer states in order; a different count or shape names the file."""
    optimizers = runtime.optimizers
    if not states:
        return
    if len(states) != len(optimizers):
        raise CheckpointError(
            f"{path} holds {len(states)} optimizer state(s), this run has {len(optimizers)} optimizer(s)"
        )
    for index, (optimizer, state) in enumerate(zip(optimizers, states, strict=True)):
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: optimizer {index}'s state does not fit this run: {exc}") from None


def epoch_batches(
    loader: Iterable[Any], epoch: int, resume: ResumePoint | None, lookahead: LoopState | None = None
) -> tuple[Iterator[Any], EpochRng]:
    """The epoch's batches (from the resume position) and the RNG state at the epoch's start.

    Exact resume: replay the epoch's start (same shuffle, same worker seeds), skip the
    batches already trained (at the sampler level; a loader without one, such as an
    IterableDataset's, by fetching and dropping them), then continue the saved random stream.
    ``lookahead``: the epoch has no known length; its batches come through a
    :func:`runtime.unsized.lookahead` that flags the last one on this state.
    """
    set_sampler_epoch(loader, epoch)
    if resume is None:
        epoch_rng = EpochRng()
        batches = iterate(loader)
        return (batches if lookahead is None else fetch_ahead(batches, lookahead)), epoch_rng
    if resume.epoch_rng is not None:
        set_rng_state(resume.epoch_rng)
    elif resume.rng is not None:
        set_rng_state(resume.rng)
    epoch_rng = EpochRng()
    batches = iterate(loader, resume.batch_idx, replay_persistent=epoch > 0)
    if lookahead is not None:  # fetched ahead before the saved stream, as in the saved run
        batches = fetch_ahead(batches, lookahead, resumed=resume.batch_idx > 0)
    if resume.epoch_rng is not None and resume.rng is not None:
        set_rng_state(resume.rng)
    return batches, epoch_rng


def state_key(callback: object) -> str:
    """The key of ``callback``'s state in a checkpoint: its ``state_key``, else its class name."""
    key = getattr(callback, "state_key", None)
    return key if isinstance(key, str) else type(callback).__qualname__


def _has_state(callback: object) -> bool:
    """Whether the callback defines its own ``state_dict`` (the base class's is empty)."""
    from runtime.callback import Callback

    method = getattr(type(callback), "state_dict", None)
    return callable(method) and method is not Callback.state_dict


def check_state_keys(callbacks: Sequence[object]) -> None:
    """Two stateful callbacks with one state_key would overwrite each other's state."""
    seen: dict[str, object] = {}
    for callback in callbacks:
        if not _has_state(callback):
            continue
        key = state_key(callback)
        if key in seen:
            raise BusError(
                f"callbacks {type(seen[key]).__name__} and {type(callback).__name__} share the "
                f"state_key {key!r}; give one of them a distinct state_key"
            )
        seen[key] = callback
