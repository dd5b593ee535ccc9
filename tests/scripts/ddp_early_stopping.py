"""Trained by tests/test_compat_early_stopping.py under ``torchrun --nproc_per_node=2``:
each rank sees its own monitored value, and only rank 1's reaches the stopping threshold."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compat import EarlyStopping
from runtime import Callback, Runtime
from runtime import distributed as dist


class RankScore(Callback):
    """Puts a per-rank value (not reduced) into the metrics before EarlyStopping reads them."""

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        epoch = runtime.state.epoch
        runtime.state.metrics["rank_score"] = 1.0 - 0.1 * epoch if dist.rank() == 0 else 1.0 - 0.5 * epoch


def main(out: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x.sum(1) > 0).long()
    train = DataLoader(TensorDataset(x, y), batch_size=16)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    config = {
        "optimizer": {"name": "SGD", "params": {"lr": 0.1}},
        "trainer": {"epochs": 5, "seed": 1, "num_sanity_val_steps": 0, "accelerator": "cpu"},
        "tracker": {"save_directory": str(out / "runs"), "run_name": "ddp"},
    }
    stopper = EarlyStopping(monitor="rank_score", stopping_threshold=0.6, patience=10)
    rt = Runtime(model, [RankScore(), stopper], config, loss=nn.functional.cross_entropy)
    state = rt.fit(train)
    rt.close()
    torch.save(
        {"epoch": state.epoch, "stopped_epoch": stopper.stopped_epoch, "reason": stopper.stopping_reason.value},
        out / f"rank{dist.rank()}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
