"""Small helpers around :mod:`torch.distributed` (DDP under ``torchrun``).

``torchrun`` starts one process per device and sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. The runtime calls
:func:`init_process_group` once; everything else here works the same whether or not
a process group exists, so library code can call these helpers unconditionally. Each
is a couple of attribute lookups when the process is not distributed.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "StepForward",
    "all_gather_object",
    "all_reduce",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "control_group",
    "destroy_process_group",
    "init_process_group",
    "is_available_and_initialized",
    "is_rank_zero",
    "launched_by_torchrun",
    "local_rank",
    "rank",
    "rank_zero_only",
    "rank_zero_write",
    "start_all_reduce_sum",
    "trainable_signature",
    "world_size",
    "wrap_ddp",
]

log = logging.getLogger("busloop.distributed")

F = TypeVar("F", bound=Callable[..., Any])


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        return default


def is_available_and_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank: from the process group, else ``RANK``, else 0."""
    if is_available_and_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``, else 0): the GPU index to use."""
    return _env_int("LOCAL_RANK", 0)


def world_size() -> int:
    """The number of processes: from the process group, else ``WORLD_SIZE``, else 1."""
    if is_available_and_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def is_rank_zero() -> bool:
    """Whether this process is the one that writes files, logs and prints."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def init_process_group(device: torch.device) -> bool:
    """Join the process group ``torchrun`` set up; return whether this call did so.

    Uses NCCL for a CUDA ``device`` (and makes ``cuda:LOCAL_RANK`` the current device
    when the device has no index) and gloo otherwise. Does nothing, and returns False,
    when the process was not launched by ``torchrun`` or the group already exists.
    """
    if not launched_by_torchrun() or is_available_and_initialized():
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else local_rank()
        torch.cuda.set_device(index)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    log.info(
        "Initialised torch.distributed (%s): rank %d of %d, local rank %d",
        backend,
        dist.get_rank(),
        dist.get_world_size(),
        local_rank(),
    )
    return True


def destroy_process_group() -> None:
    """Tear the process group down, if there is one (safe to call twice)."""
    if is_available_and_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank reaches this point; a no-op when not distributed."""
    if not is_available_and_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks, in place, and return it.

    Without a process group (or with one rank) ``t`` is returned unchanged. Under NCCL
    the tensor must live on this rank's GPU.
    """
    if not is_available_and_initialized() or dist.get_world_size() == 1:
        return t
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


_REDUCE_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def all_reduce(t: torch.Tensor, op: str = "sum", group: Any = None) -> torch.Tensor:
    """Reduce ``t`` over the ranks of ``group`` (all ranks by default) with ``op`` ("sum",
    "max" or "min"), in place, and return it; unchanged without a process group."""
    if not is_available_and_initialized() or dist.get_world_size() == 1:
        return t
    dist.all_reduce(t, op=getattr(dist.ReduceOp, _REDUCE_OPS[op]), group=group)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (picklable objects only).

    Use it for small decisions one rank makes for all, such as a run folder's name.
    Without a process group ``obj`` is returned as is.
    """
    if not is_available_and_initialized() or dist.get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def rank_zero_only(fn: F) -> F:
    """Decorate ``fn`` so that it runs on rank zero only and returns None elsewhere.

    For side effects that must happen once per job: writing files, printing, logging
    to an experiment tracker.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if is_rank_zero():
            return fn(*args, **kwargs)
        return None

    return wrapper  # type: ignore[return-value]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a process group).

    For small per-rank state (random generator states, pending logs) that rank zero writes
    into a checkpoint for all.
    """
    if not is_available_and_initialized() or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def rank_zero_write(write: Callable[[], Any], what: str) -> bool:
    """Run ``write`` on rank zero; every rank learns whether it succeeded.

    Replaces "rank zero writes, every rank waits at a barrier": a write that fails on rank
    zero would leave the others waiting forever. Here one all-reduce carries the outcome; a
    failure is re-raised on rank zero and raised as ``RuntimeError`` naming ``what`` on every
    other rank, so all ranks leave together. Returns whether this rank wrote (rank zero).
    """
    error: BaseException | None = None
    if is_rank_zero():
        try:
            write()
        except Exception as exc:
            error = exc
    if is_available_and_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([0.0 if error is None else 1.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=control_group())
        if error is None and flag.item() > 0:
            raise RuntimeError(f"rank 0 failed to write {what}; see rank 0's log")
    if error is not None:
        raise error
    return is_rank_zero()


def start_all_reduce_sum(t: torch.Tensor, group: Any = None) -> Any:
    """Start summing ``t`` over the ranks of ``group`` in place and return the work handle
    (call ``wait()`` on it before reading ``t``); None without a process group."""
    if not is_available_and_initialized() or dist.get_world_size() == 1:
        return None
    return dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group, async_op=True)


_CONTROL_GROUP: dict[str, Any] = {}


def control_group() -> Any:
    """A gloo process group for small CPU-side votes (None: the default group is gloo).

    Under NCCL a vote on a CUDA tensor and reading it back syncs the device; a CPU tensor on
    a gloo group does not. Created once, collectively: the first call must happen on every
    rank (the runtime makes it when training starts).
    """
    if not is_available_and_initialized() or dist.get_backend() == "gloo":
        return None
    if "group" not in _CONTROL_GROUP:
        _CONTROL_GROUP["group"] = dist.new_group(backend="gloo")
    return _CONTROL_GROUP["group"]


def trainable_signature(module: nn.Module) -> tuple[int, ...]:
    """Which parameters train now (their ids): DDP all-reduces the ones that trained when it
    was built, so a change means the wrapper must be rebuilt."""
    return tuple(id(p) for p in module.parameters() if p.requires_grad)


class StepForward(nn.Module):
    """Routes a Lightning-style module's steps through ``forward`` (what DDP wraps).

    DDP prepares its gradient all-reduce in its ``forward``; a training_step called on the
    bare module would bypass it. ``StepForward(module)(step, batch, batch_idx)`` calls
    ``step(batch, batch_idx)`` (a bound step of ``module``), so wrapping this object in DDP
    runs every step through DDP's forward, as Lightning's own wrapper does.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, step: Callable[..., Any], batch: Any, batch_idx: int) -> Any:
        return step(batch, batch_idx)


def wrap_ddp(model: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel when several ranks train, else ``model`` itself."""
    if not is_available_and_initialized() or world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
