"""Where a run executes: seeding, device choice and the mixed-precision context.

Small decisions the loop makes once per run, kept out of :mod:`runtime.loop` so the loop
reads as the training story only.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import torch

from runtime import distributed as dist
from runtime.errors import ConfigError

__all__ = ["autocast_for", "seed_everything", "select_device"]


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python, numpy (when installed) and torch; optionally force deterministic kernels."""
    random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def select_device(accelerator: str) -> torch.device:
    """``auto`` picks cuda (this rank's local device under torchrun), then mps, then cpu."""
    if accelerator == "auto":
        if torch.cuda.is_available():
            accelerator = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            accelerator = "mps"
        else:
            accelerator = "cpu"
    if accelerator == "cuda" and dist.launched_by_torchrun():
        accelerator = f"cuda:{dist.local_rank()}"
    device = torch.device(accelerator)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: '{accelerator}' requested but CUDA is not available")
    return device


def autocast_for(precision: str, device: torch.device) -> Any:
    """The autocast context for ``trainer.precision``; None at full precision (no context)."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return None
