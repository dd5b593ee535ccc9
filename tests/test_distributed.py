"""A real two-process ``torchrun`` (gloo on CPU): DDP, sharded data, reduced metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_two_processes_train_in_sync(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(REPO / "tests" / "scripts" / "ddp_train.py"), str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["initialized"] and rank0["world_size"] == 2
    assert rank0["num_training_batches"] == rank1["num_training_batches"] == 4  # 128 / 2 ranks / 16
    for name, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][name]), name  # DDP kept replicas identical
    assert rank0["metrics"] == rank1["metrics"]  # epoch metrics reduced across ranks
    assert set(rank0["metrics"]) == {"train/loss", "val/loss"}
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1  # only rank zero writes the run folder
