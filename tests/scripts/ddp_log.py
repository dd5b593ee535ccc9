"""Run by tests/test_lightning_log.py under ``torchrun --nproc_per_node=2`` (gloo, CPU):
``self.log(..., sync_dist=True)`` in a LightningModule's test_step, each rank on its own data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from runtime import Runtime
from runtime import distributed as dist
from runtime.tracking import NullTracker


class SyncLogging(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(8, 2)
        self.losses: list[tuple[float, int]] = []

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.losses.append((float(loss), len(x)))
        self.log("mean_sync", loss, sync_dist=True)
        self.log("mean_local", loss)
        self.log("max_sync", loss, reduce_fx="max", sync_dist=True)
        self.log("sum_sync", 1.0, reduce_fx="sum", sync_dist=True)
        self.log("step_sync", loss, on_step=True, on_epoch=False, sync_dist=True)
        self.log("rank_zero", loss, sync_dist=True, rank_zero_only=True)


def main(out: Path) -> None:
    dist.init_process_group(torch.device("cpu"))
    rank = dist.rank()
    generator = torch.Generator().manual_seed(10 + rank)
    n, batch_size = (20, 8) if rank == 0 else (18, 6)  # 3 batches each, of different sizes
    x = torch.randn(n, 8, generator=generator)
    y = (x.sum(1) > 0).long()
    module = SyncLogging()
    rt = Runtime(module, [], {"trainer": {"accelerator": "cpu"}}, tracker=NullTracker())
    rt.test(DataLoader(TensorDataset(x, y), batch_size=batch_size))
    torch.save(
        {"metrics": rt.state.metrics, "logged": rt.state.logged_metrics, "losses": module.losses},
        out / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
