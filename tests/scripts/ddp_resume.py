"""Run by tests/test_distributed.py under ``torchrun --nproc-per-node 2`` (gloo, CPU): an
interrupted and resumed 2-rank run against an uninterrupted one, in one launch.

Three fits of the same job (dropout, shuffled data; each rank reseeds torch at train_start
with its own seed, so the ranks' random streams differ), each in its own folder:

- ``full``: uninterrupted, 2 epochs;
- ``stopped``: both ranks get SIGTERM (rank 0 during batch 1 of epoch 1, rank 1 during
  batch 2): GracefulInterruptCallback stops every rank after the same batch and rank 0
  writes ``resume.ckpt``;
- ``resumed``: a fresh model, the random generators scrambled, resumed from that file.

A second argument ``fsdp`` runs the same job with ``trainer.strategy: fsdp`` (FSDP2 shards,
``resume.ckpt`` a folder of shards); the weights saved are then gathered full tensors.
Each rank saves the weights, metrics and history of each fit, where ``stopped`` stopped,
and how many blocking all-reduces GracefulInterruptCallback made at batch ends, to ``<out>/rank<R>.pt``.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import GracefulInterruptCallback
from compat import ModelCheckpoint
from runtime import Callback, Runtime
from runtime import distributed as dist

BLOCKING_VOTES = [0]
"""Blocking all-reduces issued by GracefulInterruptCallback per training batch (counted by the
patch below; a blocking vote per batch is a device sync per step on GPU)."""

_all_reduce = tdist.all_reduce


def _counting_all_reduce(*args: Any, **kwargs: Any) -> Any:
    if not kwargs.get("async_op", False) and any(
        frame.filename.endswith("callbacks/interrupt.py") and frame.name == "on_train_batch_end"
        for frame in traceback.extract_stack()
    ):
        BLOCKING_VOTES[0] += 1
    return _all_reduce(*args, **kwargs)


tdist.all_reduce = _counting_all_reduce


class RankSeed(Callback):
    """Gives each rank its own random stream (dropout masks differ between ranks)."""

    def on_train_start(self, runtime: Runtime) -> None:
        torch.manual_seed(100 + dist.rank())


class SigtermAt(Callback):
    """Sends this process SIGTERM when batch ``batch`` of epoch ``epoch`` starts."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        if (runtime.state.epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGTERM)


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as a full tensor (gathered from the shards under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}


class ComputeDtype(Callback):
    """Records the dtype of the first layer's weight as its forward sees it (FSDP's policy)."""

    def __init__(self) -> None:
        self.dtypes: set[str] = set()

    def on_fit_start(self, runtime: Runtime) -> None:
        layer = runtime.model[0]  # type: ignore[index]
        layer.register_forward_pre_hook(lambda module, args: self.dtypes.add(str(module.weight.dtype)))


def fit(
    out: Path, extra: list[Any], ckpt_path: Path | None = None, strategy: str = "auto", precision: str = "32"
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 2))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=generator)
    train = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(x[:32], (x[:32].sum(1) > 0).long()), batch_size=8)
    config = {
        "optimizer": {"name": "SGD", "params": {"lr": 0.1, "momentum": 0.9}},
        "trainer": {"epochs": 2, "seed": 1, "num_sanity_val_steps": 0, "accelerator": "cpu", "strategy": strategy,
                    "precision": precision},
        "tracker": {"save_directory": str(out / "runs"), "run_name": "job"},
    }
    interrupt = GracefulInterruptCallback()
    rt = Runtime(model, [interrupt, RankSeed(), *extra], config, loss=nn.functional.cross_entropy)
    state = rt.fit(train, val, ckpt_path=ckpt_path)
    rt.close()
    return {
        "weights": full_weights(model),
        "sharded": rt.sharded and type(next(model.parameters())).__name__ == "DTensor",
        "metrics": dict(state.metrics),
        "history": [dict(h) for h in state.history],
        "interrupted": state.interrupted,
        "stopped_at": (state.epoch, state.batch_idx, state.global_step),
        "resume_path": str(interrupt.resume_path) if interrupt.resume_path else None,
    }


def main(out: Path, strategy: str) -> None:
    results: dict[str, Any] = {"full": fit(out / "full", [], strategy=strategy)}
    kill = SigtermAt(1, 1 if dist.rank() == 0 else 2)
    results["stopped"] = fit(out / "stopped", [kill], strategy=strategy)
    results["blocking_votes"] = BLOCKING_VOTES[0]
    path = results["stopped"]["resume_path"]
    resume = Path(path) if path else next((out / "stopped").rglob("resume.ckpt"))
    torch.manual_seed(12345 + dist.rank())  # nothing of this stream may survive the restore
    results["resumed"] = fit(out / "resumed", [], ckpt_path=resume, strategy=strategy)
    if strategy == "fsdp":  # FSDP's mixed precision policy follows trainer.precision
        dtype = ComputeDtype()
        weights_file = ModelCheckpoint(dirpath=str(out / "bf16" / "weights"), save_weights_only=True)
        extra = [dtype, weights_file]
        results["bf16"] = {**fit(out / "bf16", extra, strategy=strategy, precision="bf16-mixed"), "dtypes": dtype.dtypes}
    torch.save(results, out / f"rank{dist.rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "auto")
