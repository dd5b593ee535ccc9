"""Decisions every rank must agree on (stop, save): one all-reduce, nothing when single-process.

Lightning's callbacks call ``trainer.strategy.reduce_boolean_decision``; the native callbacks
of ``compat`` get the Runtime, so they agree through this helper over :mod:`runtime.distributed`.
"""

from __future__ import annotations

import torch

from runtime import distributed as dist

__all__ = ["agree"]


def agree(decision: bool, device: torch.device, *, every_rank: bool) -> bool:
    """True when every rank (``every_rank``) or any rank decided True.

    ``device`` is where the vote tensor lives (NCCL reduces CUDA tensors only).
    """
    if dist.world_size() == 1 or not dist.is_available_and_initialized():
        return bool(decision)
    votes = dist.all_reduce_sum(torch.tensor([float(bool(decision))], device=device))
    count = int(votes.item())
    return count == dist.world_size() if every_rank else count > 0
