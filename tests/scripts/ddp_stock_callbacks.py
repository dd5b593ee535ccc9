"""Trained by tests/test_lightning_adapter_cli.py under ``torchrun --nproc-per-node 2`` (gloo,
CPU) with Lightning's stock EarlyStopping and ModelCheckpoint: each rank sees its own
``rank_score`` (only rank 1's reaches EarlyStopping's threshold), while ModelCheckpoint
monitors the loss busloop reduces across ranks. Each rank saves what its callbacks decided."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from ddp_early_stopping import RankScore  # this folder is the script's: on sys.path
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from runtime import Runtime
from runtime import distributed as dist


def main(out: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x.sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    config = {
        "optimizer": {"name": "SGD", "params": {"lr": 0.1}},
        "trainer": {"epochs": 6, "seed": 1, "num_sanity_val_steps": 0, "accelerator": "cpu"},
        "tracker": {"save_directory": str(out / "runs"), "run_name": "ddp"},
    }
    stopper = pl.callbacks.EarlyStopping(
        monitor="rank_score", stopping_threshold=0.6, patience=10, check_on_train_epoch_end=True
    )
    saver = pl.callbacks.ModelCheckpoint(
        dirpath=out / "ckpt", monitor="train/loss", save_top_k=2, save_last=True, filename="top-{epoch}"
    )
    rt = Runtime(model, [saver, stopper, RankScore()], config, loss=nn.functional.cross_entropy)
    state = rt.fit(DataLoader(TensorDataset(x, y), batch_size=8))
    rt.close()
    torch.save(
        {
            "world_size": dist.world_size(),
            "epoch": state.epoch,
            "stopped_epoch": stopper.stopped_epoch,
            "reason": stopper.stopping_reason.value,
            "best_model_path": saver.best_model_path,
            "best_k": sorted(saver.best_k_models),
            "last": saver.last_model_path,
        },
        out / f"rank{dist.rank()}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
