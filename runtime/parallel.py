"""Data-parallel training under ``torchrun``: how the model is wrapped and stepped.

:func:`wrap_for_training` applies ``trainer.strategy`` once the process group exists:

- a plain ``nn.Module`` is wrapped in ``DistributedDataParallel``; its loss runs through
  DDP's forward;
- a Lightning-style module is wrapped as ``DDP(StepForward(module))`` and its
  ``training_step`` / ``validation_step`` are routed through DDP's forward (as Lightning's
  own wrapper does), so DDP prepares the gradient all-reduce for what the step computes.

The wrapper records which parameters trained when it was built; the loop rebuilds it when
that changes (a callback unfroze layers), since DDP all-reduces only those.
:func:`no_sync_batches` keeps accumulating batches out of the all-reduce (``no_sync``).
:func:`check_topology` turns ``trainer.strategy`` / ``devices`` / ``num_nodes`` that cannot
match how the job was launched into one clear error.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.parallel import DistributedDataParallel

from runtime import distributed as dist
from runtime.errors import ConfigError

if TYPE_CHECKING:
    from runtime.config import TrainerConfig
    from runtime.core import RuntimeCore as Runtime

__all__ = ["check_topology", "no_sync_batches", "prepare_backward", "wrap_for_training"]

#: Stages whose steps run through DDP's forward (as under Lightning's DDP strategy).
_ROUTED_STAGES = ("training", "validation")


def wrap_for_training(rt: Runtime) -> None:
    """Set ``rt._train_model`` (and, for a Lightning-style module, its routed steps) for the
    run's strategy; a single process trains the bare model."""
    model = rt.model
    if not dist.is_available_and_initialized() or dist.world_size() == 1:
        rt._train_model = model
        return
    if rt.config.trainer.strategy == "fsdp":
        from runtime.fsdp import shard_model

        rt._train_model, rt.sharded = shard_model(rt), True
        return
    bridge = rt._bridge
    if not bridge.lightning_style:
        rt._train_model = dist.wrap_ddp(model, rt.device)
    else:
        manual = getattr(model, "automatic_optimization", True) is False
        # Manual optimization may back-propagate several losses per step, each through part
        # of the model: DDP then finds the parameters a loss did not reach.
        ddp = dist.wrap_ddp(dist.StepForward(model), rt.device, find_unused_parameters=manual)
        rt._train_model = ddp
        route = _through_manual if manual else _through
        bridge.route_steps(_ROUTED_STAGES, lambda step: route(ddp, step))
        routed = bridge.step("training")
        if routed is not None:
            rt._training_step = routed
    rt._ddp_signature = dist.trainable_signature(model)


def _through(ddp: torch.nn.Module, step: Callable[..., Any]) -> Callable[[Any, int], Any]:
    def call(batch: Any, batch_idx: int) -> Any:
        return ddp(step, batch, batch_idx)

    return call


def _through_manual(ddp: torch.nn.Module, step: Callable[..., Any]) -> Callable[[Any, int], Any]:
    """A manually optimized step runs its backward passes inside DDP's forward: the forward
    must not arm the all-reduce (the step's result is no loss); each ``manual_backward``
    arms it for its own loss instead (:func:`prepare_backward`)."""

    def call(batch: Any, batch_idx: int) -> Any:
        assert isinstance(ddp, DistributedDataParallel)
        ddp.require_backward_grad_sync = False
        try:
            return ddp(step, batch, batch_idx)
        finally:
            ddp.require_backward_grad_sync = True

    return call


def prepare_backward(rt: Runtime, loss: torch.Tensor) -> None:
    """Before a manual backward under DDP: make this backward all-reduce the gradients of the
    parameters ``loss`` depends on (the others are marked unused). Nothing without DDP."""
    ddp = rt._train_model
    if isinstance(ddp, DistributedDataParallel) and torch.is_grad_enabled() and ddp.training:
        ddp.reducer.prepare_for_backward([loss] if ddp.find_unused_parameters else [])


def no_sync_batches(
    rt: Runtime, train_batch: Callable[[Any, int, bool], dict[str, Any] | None]
) -> Callable[[Any, int, bool], dict[str, Any] | None]:
    """``train_batch`` as it is, or, under DDP with gradient accumulation, run inside
    ``no_sync()`` on the batches that do not step: their gradients accumulate locally and the
    stepping batch all-reduces the sum once (the forward must be inside the context too)."""
    if rt.accumulate_grad_batches == 1 or not isinstance(rt._train_model, DistributedDataParallel):
        return train_batch

    def batch(batch: Any, batch_idx: int, is_last: bool) -> dict[str, Any] | None:
        accumulate, ddp = rt.accumulate_grad_batches, rt._train_model
        if is_last or (batch_idx + 1) % accumulate == 0 or not isinstance(ddp, DistributedDataParallel):
            return train_batch(batch, batch_idx, is_last)
        with ddp.no_sync():
            return train_batch(batch, batch_idx, is_last)

    return batch


def _env_count(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def check_topology(cfg: TrainerConfig, device: torch.device) -> None:
    """Refuse ``trainer.strategy`` / ``devices`` / ``num_nodes`` that cannot match this launch.

    busloop never starts processes itself: ``torchrun`` (or SLURM's ``srun`` with torchrun's
    environment) does. So ``devices`` must equal the processes on this node
    (``LOCAL_WORLD_SIZE``) and ``num_nodes`` times that must be the world size.
    """
    world = dist.world_size()
    local = _env_count("LOCAL_WORLD_SIZE") or (world if not dist.launched_by_torchrun() else None)
    devices, nodes = cfg.devices, cfg.num_nodes
    launch = "start one process per device with `torchrun --nproc-per-node N` (see the README)"
    if isinstance(devices, int):
        if device.type == "cuda" and devices > torch.cuda.device_count():
            raise ConfigError(
                f"trainer.devices={devices}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        if world == 1 and devices > 1:
            raise ConfigError(f"trainer.devices={devices}: this is a single process; {launch}")
        if local is not None and devices != local:
            raise ConfigError(
                f"trainer.devices={devices}: torchrun started {local} process(es) on this node; "
                f"use --nproc-per-node {devices} or trainer.devices=auto"
            )
    if nodes is not None and nodes > 1 and world == 1:
        raise ConfigError(f"trainer.num_nodes={nodes}: this is a single process; {launch} on each node")
    if nodes is not None and local is not None and nodes * local != world:
        raise ConfigError(
            f"trainer.num_nodes={nodes}: {world} process(es) with {local} per node means "
            f"{world // max(local, 1)} node(s); use --nnodes {nodes} or trainer.num_nodes={world // max(local, 1)}"
        )
    if cfg.strategy == "fsdp" and world > 1 and cfg.precision == "16-mixed":
        raise ConfigError(
            "trainer.precision='16-mixed' with trainer.strategy=fsdp: FSDP2 needs a sharded grad "
            "scaler busloop does not provide; use bf16-mixed or 32"
        )
