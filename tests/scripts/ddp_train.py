"""Trained by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU), or
by two single-process torchrun agents as two "nodes". An optional second argument is a JSON
dict of ``trainer`` settings (e.g. ``{"num_nodes": 2}``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from runtime import Runtime
from runtime import distributed as dist


def main(out: Path, trainer: dict[str, Any]) -> None:
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = (x.sum(1) > 0).long()
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    config = {
        "optimizer": {"name": "SGD", "params": {"lr": 0.1}},
        "trainer": {"epochs": 2, "seed": 1, "num_sanity_val_steps": 0, "accelerator": "cpu", **trainer},
        "tracker": {"save_directory": str(out / "runs"), "run_name": "ddp"},
    }
    rt = Runtime(model, [], config, loss=nn.functional.cross_entropy)
    state = rt.fit(train, val)
    rt.close()
    torch.save(
        {
            "weights": model.state_dict(),
            "metrics": state.metrics,
            "num_training_batches": state.num_training_batches,
            "world_size": dist.world_size(),
            "initialized": dist.is_available_and_initialized(),
        },
        out / f"rank{dist.rank()}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
