"""Run by tests/test_distributed.py under ``torchrun --nproc-per-node 2`` (gloo, CPU).

One launch, several small fits (each its own Runtime and run folder under ``<out>/<case>``),
so the suite starts processes once. Each rank saves what the test compares to
``<out>/rank<R>.pt``:

- ``manager``: TrainingManager freezes ``0`` (the first layer) until epoch 1, so it starts
  training after DDP was built; every parameter must still end identical on both ranks.
- ``accumulate``: accumulate_grad_batches=2; a DDP comm hook counts the gradient all-reduces
  (one per optimizer step with ``no_sync``, one per batch without).
- ``sampler``: a WeightedRandomSampler (odd samples weigh 0) and a fork multiprocessing
  context on a worker; the indices each rank trains on, and the loader's context.
- ``failed_save``: rank 0 cannot write the checkpoint (its folder is a file); what each rank
  raised, and whether the ranks still meet at the next collective.
- ``lightning``: a LightningModule (sync_dist logging, ModelCheckpoint, progress bar);
  ``manual``: one with manual optimization and ``manual_backward``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler

from callbacks import TrainingManager
from compat import ModelCheckpoint
from runtime import Callback, Runtime
from runtime import distributed as dist


def data(n: int = 64, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    return TensorDataset(x, (x.sum(1) > 0).long())


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def config(out: Path, case: str, **trainer: Any) -> dict[str, Any]:
    return {
        "optimizer": {"name": "SGD", "params": {"lr": 0.1}},
        "trainer": {"epochs": 2, "seed": 1, "num_sanity_val_steps": 0, "accelerator": "cpu", **trainer},
        "tracker": {"save_directory": str(out / case / "runs"), "run_name": case},
    }


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class CountAllReduce(Callback):
    """Registers a DDP comm hook at fit_start that counts the gradient buckets all-reduced."""

    def __init__(self) -> None:
        self.calls = 0

    def on_fit_start(self, runtime: Runtime) -> None:
        def hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks the annotations
            self.calls += 1
            return allreduce_hook(state, bucket)

        runtime._train_model.register_comm_hook(None, hook)  # type: ignore[operator]


class Indexed(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    def __init__(self, n: int) -> None:
        self.base = data(n)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = self.base[index]
        return x, y, torch.tensor(index)


class IndexModel(nn.Module):
    """A plain module trained through a training_step-free loss on (x, y, index) batches."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RecordIndices(Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        self.seen += batch[2].tolist()


class LitModel(pl.LightningModule):
    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        self.net = mlp()
        self.automatic_optimization = not manual

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("rank", float(dist.rank()), on_step=False, on_epoch=True, sync_dist=True, reduce_fx="sum")
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return None

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(out: Path, cases: set[str]) -> None:
    """Run the ``cases`` named (all when empty) and save their results."""
    results: dict[str, Any] = {}
    cases = cases or {"manager", "accumulate", "sampler", "failed_save", "lightning", "manual"}
    train = DataLoader(data(), batch_size=8, shuffle=True)
    val = DataLoader(data(32, seed=1), batch_size=8)

    if "manager" in cases:
        results["manager"] = _manager(out, train, val)
    if "accumulate" in cases:
        results["accumulate"] = _accumulate(out, train)
    if "sampler" in cases:
        results["sampler"] = _sampler(out)
    if "failed_save" in cases:
        results["failed_save"] = _failed_save(out, train)
    for case in ("lightning", "manual"):
        if case in cases:
            results[case] = _lightning(out, case, train, val)
    torch.save(results, out / f"rank{dist.rank()}.pt")


def _manager(out: Path, train: DataLoader[Any], val: DataLoader[Any]) -> dict[str, Any]:
    """TrainingManager unfreezes layer 0 at epoch 1, after DDP was built at fit start."""
    model = mlp()
    manager = TrainingManager(freeze={"0": {"unfreeze_after": 1}})
    rt = Runtime(model, [manager], config(out, "manager", epochs=3), loss=nn.functional.cross_entropy)
    rt.fit(train, val)
    rt.close()
    return {"weights": weights(model), "metrics": dict(rt.state.metrics)}


def _accumulate(out: Path, train: DataLoader[Any]) -> dict[str, Any]:
    """Gradient accumulation: 4 batches per rank and epoch, 2 epochs, a step every 2 batches."""
    counter = CountAllReduce()
    model = mlp()
    rt = Runtime(model, [counter], config(out, "accumulate", accumulate_grad_batches=2), loss=nn.functional.cross_entropy)
    rt.fit(train)
    rt.close()
    return {"weights": weights(model), "allreduces": counter.calls, "steps": rt.state.global_step}


def _sampler(out: Path) -> dict[str, Any]:
    """A custom sampler and DataLoader options survive the sharding."""
    weights_ = [1.0 if i % 2 == 0 else 0.0 for i in range(64)]
    sampler = WeightedRandomSampler(weights_, num_samples=64, replacement=True)
    loader = DataLoader(Indexed(64), batch_size=8, sampler=sampler, num_workers=1, multiprocessing_context="fork")
    recorder, model = RecordIndices(), IndexModel()
    rt = Runtime(model, [recorder], config(out, "sampler", epochs=1), loss=lambda out_, y: nn.functional.cross_entropy(out_, y))
    rt.fit(loader)
    rt.close()
    train_loader: Any = rt.train_loader
    return {
        "indices": recorder.seen,
        "context": type(train_loader.multiprocessing_context).__name__,
        "num_workers": train_loader.num_workers,
        "weights": weights(model),
    }


def _failed_save(out: Path, train: DataLoader[Any]) -> dict[str, Any]:
    """A save that fails on rank 0 only: every rank must hear of it, none may hang."""
    blocker = out / "not_a_folder"
    if dist.is_rank_zero():
        blocker.write_text("a file where the checkpoint folder should be")
    dist.barrier()
    model = mlp()
    rt = Runtime(model, [], config(out, "failed_save", epochs=1), loss=nn.functional.cross_entropy)
    rt.fit(train)
    written: list[str] = []
    rt.bus.connect("checkpoint_written", lambda runtime, path, monitor, score: written.append(str(path)))
    error = ""
    try:
        rt.save_checkpoint(blocker / "last.ckpt")
    except Exception as exc:  # what each rank raised
        error = type(exc).__name__
    rt.save_checkpoint(out / "failed_save" / "ok.ckpt")
    rt.close()
    return {"error": error, "after": float(dist.all_reduce_sum(torch.ones(1)).item()), "written": written}


def _lightning(out: Path, case: str, train: DataLoader[Any], val: DataLoader[Any]) -> dict[str, Any]:
    """A LightningModule with automatic (``lightning``) or manual (``manual``) optimization."""
    module = LitModel(manual=case == "manual")
    checkpoint = ModelCheckpoint(dirpath=str(out / case / "ckpts"), monitor="val_loss", save_top_k=1)
    rt = Runtime(module, [checkpoint], config(out, case))
    rt.fit(train, val)
    rt.close()
    return {"weights": weights(module), "metrics": dict(rt.state.metrics), "best": checkpoint.best_model_path}


if __name__ == "__main__":
    main(Path(sys.argv[1]), set(sys.argv[2:]))
