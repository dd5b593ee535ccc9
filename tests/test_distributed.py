"""Distributed training on PyTorch's own engine: real ``torchrun`` runs (gloo on CPU, two
processes) and the single-process parts (topology checks, data sharding).

The torchrun tests start processes on a small machine, so each launch covers several cases
(see the scripts in ``tests/scripts``) and every one is marked slow.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    SequentialSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from runtime import Runtime
from runtime import distributed as dist
from runtime.cli import main as cli_main
from runtime.config import load_config
from runtime.data import RankShare, distributed_loader
from runtime.errors import ConfigError
from runtime.fsdp import main as fsdp_main
from runtime.parallel import check_topology
from runtime.tracking import NullTracker

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _torchrun(script: str, *args: str, launcher: tuple[str, ...] = ("--standalone", "--nproc-per-node", "2")) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, str(SCRIPTS / script), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=420)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def _ranks(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    return rank0, rank1


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_torchrun_two_processes_train_in_sync(tmp_path: Path) -> None:
    _torchrun("ddp_train.py", str(tmp_path))
    rank0, rank1 = _ranks(tmp_path)
    assert rank0["initialized"] and rank0["world_size"] == 2
    assert rank0["num_training_batches"] == rank1["num_training_batches"] == 4  # 128 / 2 ranks / 16
    assert _identical(rank0["weights"], rank1["weights"])  # DDP kept replicas identical
    assert rank0["metrics"] == rank1["metrics"]  # epoch metrics reduced across ranks
    assert set(rank0["metrics"]) == {"train/loss", "val/loss"}
    assert len(list((tmp_path / "runs").iterdir())) == 1  # only rank zero writes the run folder


@pytest.mark.slow
def test_two_torchrun_agents_as_two_nodes_train_in_sync(tmp_path: Path) -> None:
    """Multi-node, simulated: two torchrun agents (one process each) meet at a c10d rendezvous."""
    port = _free_port()
    launcher = (
        "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", f"busloop-{port}",
    )  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, str(SCRIPTS / "ddp_train.py"), str(tmp_path), '{"num_nodes": 2}']
    agents = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV) for _ in range(2)]
    outputs = [agent.communicate(timeout=420)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    rank0, rank1 = _ranks(tmp_path)
    assert rank0["world_size"] == 2 and rank0["num_training_batches"] == 4
    assert _identical(rank0["weights"], rank1["weights"])
    assert rank0["metrics"] == rank1["metrics"]
    assert len(list((tmp_path / "runs").iterdir())) == 1


@pytest.mark.slow
def test_ddp_defects_fixed_and_lightning_modules_train_under_ddp(tmp_path: Path) -> None:
    """One launch of tests/scripts/ddp_features.py; see its docstring for the cases."""
    _torchrun("ddp_features.py", str(tmp_path))
    rank0, rank1 = _ranks(tmp_path)

    # TrainingManager unfroze layer 0 after DDP was built: it must have been all-reduced too.
    assert _identical(rank0["manager"]["weights"], rank1["manager"]["weights"])
    assert rank0["manager"]["metrics"] == rank1["manager"]["metrics"]

    # Accumulating 2 batches: one gradient all-reduce per optimizer step, not per batch.
    for rank in (rank0, rank1):
        assert rank["accumulate"]["steps"] == 4  # 2 epochs x 4 batches / 2
        assert rank["accumulate"]["allreduces"] == 4
    assert _identical(rank0["accumulate"]["weights"], rank1["accumulate"]["weights"])

    # The weighted sampler was kept (odd samples weigh 0) and split (32 of 64 draws each),
    # and so was the loader's multiprocessing context.
    seen0, seen1 = rank0["sampler"]["indices"], rank1["sampler"]["indices"]
    assert len(seen0) == len(seen1) == 32
    assert all(i % 2 == 0 for i in seen0 + seen1)
    assert seen0 != seen1
    assert rank0["sampler"]["context"] == rank1["sampler"]["context"] == "ForkContext"
    assert rank0["sampler"]["num_workers"] == 1
    assert _identical(rank0["sampler"]["weights"], rank1["sampler"]["weights"])

    # Rank 0 could not write: both ranks raised, neither hung, and the ranks stayed in step;
    # checkpoint_written fired on rank 0 only, for the file it did write.
    assert rank0["failed_save"]["error"] == "NotADirectoryError"  # its folder is a file: the temporary file cannot be created
    assert rank1["failed_save"]["error"] == "RuntimeError"
    assert rank0["failed_save"]["after"] == rank1["failed_save"]["after"] == 2.0
    assert rank0["failed_save"]["written"] == [str(tmp_path / "failed_save" / "ok.ckpt")]
    assert rank1["failed_save"]["written"] == []
    assert not (tmp_path / "not_a_folder").is_dir()

    # LightningModules under DDP: replicas identical, sync_dist reduced across ranks (the
    # per-rank value "rank" summed: 4 batches x rank 1), one checkpoint set, one run folder.
    for case in ("lightning", "manual"):
        assert _identical(rank0[case]["weights"], rank1[case]["weights"]), case
        assert rank0[case]["metrics"] == rank1[case]["metrics"], case
        assert rank0[case]["metrics"]["rank"] == 4.0
        assert rank0[case]["best"] == rank1[case]["best"]
        assert [p.name for p in (tmp_path / case / "ckpts").iterdir()] == [Path(rank0[case]["best"]).name]
        assert len(list((tmp_path / case / "runs").iterdir())) == 1
    # The same job, the same data: manual optimization with manual_backward under DDP trains
    # exactly as automatic optimization does.
    assert _identical(rank0["lightning"]["weights"], rank0["manual"]["weights"])


@pytest.mark.slow
def test_sigterm_to_both_ranks_then_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """One launch of tests/scripts/ddp_resume.py: uninterrupted, SIGTERMed, resumed."""
    _torchrun("ddp_resume.py", str(tmp_path))
    rank0, rank1 = _ranks(tmp_path)
    for rank in (rank0, rank1):
        assert rank["stopped"]["interrupted"]
        assert rank["stopped"]["stopped_at"] == (1, 3, 9)  # both stop after the same batch
        assert rank["blocking_votes"] == 0  # the interrupt vote never blocks a training batch
        assert _identical(rank["full"]["weights"], rank["resumed"]["weights"])  # bitwise
        assert rank["full"]["metrics"] == rank["resumed"]["metrics"]
        assert rank["full"]["history"] == rank["resumed"]["history"]
    assert _identical(rank0["resumed"]["weights"], rank1["resumed"]["weights"])
    assert rank0["full"]["metrics"] == rank1["full"]["metrics"]
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.ckpt")] == ["stopped/runs/0-job/resume.ckpt"]
    for job in ("full", "stopped"):
        assert len(list((tmp_path / job / "runs").iterdir())) == 1
    # The resumed run continues the stopped run's folder (README, "Checkpoints and resume").
    assert not (tmp_path / "resumed" / "runs").exists()
    status = (tmp_path / "stopped" / "runs" / "0-job" / "status.txt").read_text().splitlines()
    assert status[0] == "success"


@pytest.mark.slow
def test_fsdp_sharded_checkpoints_resume_exactly_and_consolidate(tmp_path: Path) -> None:
    """tests/scripts/ddp_resume.py with trainer.strategy=fsdp (FSDP2 on gloo, CPU), then the
    resume folder consolidated here, in one process, into one weights_only file."""
    _torchrun("ddp_resume.py", str(tmp_path), "fsdp")
    rank0, rank1 = _ranks(tmp_path)
    for rank in (rank0, rank1):
        assert rank["full"]["sharded"] and rank["resumed"]["sharded"]  # parameters are DTensor shards
        assert rank["stopped"]["stopped_at"] == (1, 3, 9)
        assert _identical(rank["full"]["weights"], rank["resumed"]["weights"])  # bitwise
        assert rank["full"]["metrics"] == rank["resumed"]["metrics"]
        assert rank["full"]["history"] == rank["resumed"]["history"]
        assert rank["bf16"]["dtypes"] == {"torch.bfloat16"}  # the policy from trainer.precision
    assert _identical(rank0["full"]["weights"], rank1["full"]["weights"])
    assert rank0["bf16"]["metrics"] == rank1["bf16"]["metrics"]
    # ModelCheckpoint(save_weights_only=True) under FSDP: one file of full tensors (rank zero)
    (weights_file,) = (tmp_path / "bf16" / "weights").iterdir()
    assert _identical(torch.load(weights_file, weights_only=True)["state_dict"], rank0["bf16"]["weights"])

    folder = tmp_path / "stopped" / "runs" / "0-job" / "resume.ckpt"
    assert folder.is_dir() and {p.name for p in folder.iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp", "busloop.pt"}
    out = tmp_path / "consolidated.ckpt"
    assert fsdp_main([str(folder), str(out)]) == 0
    single = torch.load(out, weights_only=True)
    assert _identical(single["state_dict"], rank0["stopped"]["weights"])  # the full weights at the stop
    assert single["loop"]["batch_idx"] == 3 and single["global_step"] == 9
    with pytest.raises(SystemExit) as exit_info:
        fsdp_main([str(tmp_path), str(tmp_path / "x.ckpt")])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------- single process


def _trainer(**values: Any) -> Any:
    return load_config({"trainer": values}).trainer


def test_topology_errors_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match=r"trainer.devices=2: this is a single process; .*torchrun"):
        check_topology(_trainer(devices=2), cpu)
    with pytest.raises(ConfigError, match="trainer.num_nodes=2: this is a single process"):
        check_topology(_trainer(num_nodes=2), cpu)
    check_topology(_trainer(devices=1, num_nodes=1, strategy="ddp"), cpu)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="trainer.devices=4: torchrun started 2 process"):
        check_topology(_trainer(devices=4), cpu)
    with pytest.raises(ConfigError, match="trainer.num_nodes=3: 4 process.* 2 node"):
        check_topology(_trainer(num_nodes=3), cpu)
    with pytest.raises(ConfigError, match="16-mixed.*fsdp"):
        check_topology(_trainer(strategy="fsdp", precision="16-mixed"), cpu)
    check_topology(_trainer(devices=2, num_nodes=2, strategy="ddp"), cpu)


def test_fsdp_refuses_lightning_style_modules_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stepping(torch.nn.Linear):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self(batch[0]).sum()

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="trainer.strategy=fsdp: Lightning-style modules"):
        Runtime(Stepping(2, 2), [], {"trainer": {"strategy": "fsdp"}}, tracker=NullTracker())
    Runtime(Stepping(2, 2), [], {"trainer": {"strategy": "ddp"}}, tracker=NullTracker())


def test_cli_refuses_devices_without_torchrun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {
        "model": {"factory": "runtime.examples.digits:build_model", "params": {"channels": 8}},
        "data": {"factory": "runtime.examples.digits:build_loaders"},
        "trainer": {"epochs": 1, "devices": 2, "strategy": "ddp"},
        "tracker": {"save_directory": str(tmp_path / "runs")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli_main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("busloop: error: trainer.devices=2: this is a single process")
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made


def _shard(loader: DataLoader[Any], rank: int, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    return distributed_loader(loader)


def test_distributed_loader_keeps_options_and_shares_a_custom_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    data = TensorDataset(torch.arange(20))
    sampler = WeightedRandomSampler([1.0 if i < 10 else 0.0 for i in range(20)], num_samples=20)
    loader = DataLoader(
        data, batch_size=4, sampler=sampler, num_workers=1, multiprocessing_context="spawn",
        pin_memory=True, persistent_workers=True, timeout=30,
    )  # fmt: skip
    shards = [_shard(loader, rank, monkeypatch) for rank in (0, 1)]
    for shard in shards:
        assert shard is not loader and loader.sampler is sampler  # the user's loader is untouched
        assert isinstance(shard.sampler, RankShare) and shard.sampler.sampler is sampler
        assert (shard.num_workers, shard.pin_memory, shard.persistent_workers, shard.timeout) == (1, True, True, 30)
        assert shard.multiprocessing_context is loader.multiprocessing_context
        assert len(shard.sampler) == 10 and len(shard) == 3
    drawn = [list(shard.sampler) for shard in shards]
    assert all(i < 10 for i in drawn[0] + drawn[1])  # the weights still apply
    whole = list(RankShare(sampler, 1, 0, drop_last=False))  # what both ranks draw, in one
    assert drawn[0] == whole[0::2] and drawn[1] == whole[1::2]
    # The same epoch draws the same shares again (a resumed epoch), another epoch others.
    assert list(shards[0].sampler) == drawn[0]
    shards[0].sampler.set_epoch(1)
    assert list(shards[0].sampler) != drawn[0]


def test_distributed_loader_default_samplers_and_custom_batch_samplers(monkeypatch: pytest.MonkeyPatch) -> None:
    data = TensorDataset(torch.arange(10))
    shard = _shard(DataLoader(data, batch_size=2, shuffle=True, drop_last=True), 1, monkeypatch)
    assert isinstance(shard.sampler, torch.utils.data.DistributedSampler)
    assert shard.sampler.shuffle and shard.sampler.rank == 1 and shard.drop_last
    assert len(shard) == 2  # 5 samples of 10 on this rank, batches of 2, last dropped
    already = DataLoader(data, sampler=torch.utils.data.DistributedSampler(data, num_replicas=2, rank=1))
    assert _shard(already, 1, monkeypatch) is already
    custom = DataLoader(data, batch_sampler=_Pairs(SequentialSampler(data)))
    with pytest.raises(ConfigError, match="batch_sampler _Pairs does not split the data across ranks"):
        _shard(custom, 0, monkeypatch)


class _Pairs(BatchSampler):
    """A batch sampler of another class than BatchSampler (busloop cannot split it)."""

    def __init__(self, sampler: Any) -> None:
        super().__init__(sampler, 2, False)


def test_single_process_helpers_need_no_process_group() -> None:
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    calls: list[int] = []
    assert dist.rank_zero_write(lambda: calls.append(1), "x") is True and calls == [1]
    with pytest.raises(OSError, match="disk full"):
        dist.rank_zero_write(lambda: (_ for _ in ()).throw(OSError("disk full")), "x")
    assert dist.control_group() is None and dist.start_all_reduce_sum(torch.ones(1)) is None
