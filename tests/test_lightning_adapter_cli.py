"""Stock Lightning callbacks named by import path in a YAML config, run by ``busloop train``
(``python -m runtime.cli``) in a subprocess: their state is stored under their ``state_key`` in
the checkpoints and restored on ``--resume``. And under a real ``torchrun`` with two processes
(gloo, CPU): ranks agree on the stop epoch and the best checkpoint, and one set of files is
written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

pytest.importorskip("lightning.pytorch")

REPO = Path(__file__).resolve().parents[1]
ES_KEY = "EarlyStopping{'monitor': 'val/loss', 'mode': 'min'}"
MC_KEY = (
    "ModelCheckpoint{'monitor': 'val/accuracy', 'mode': 'max', 'every_n_train_steps': 0, "
    "'every_n_epochs': 1, 'train_time_interval': None}"
)

#: A stock-style callback (import path ``spy:Spy``) writing, at ``on_fit_start`` (after a resume
#: restored the callbacks), what EarlyStopping and ModelCheckpoint hold.
SPY = textwrap.dedent(
    """
    import json
    import lightning.pytorch as pl

    class Spy(pl.Callback):
        def __init__(self, path):
            self.path = path

        def on_fit_start(self, trainer, pl_module):
            es = trainer.early_stopping_callback
            mc = next(c for c in trainer.checkpoint_callbacks if isinstance(c, pl.callbacks.ModelCheckpoint))
            seen = {"epoch": trainer.current_epoch, "wait_count": es.wait_count,
                    "best_score": float(es.best_score), "best_model_path": mc.best_model_path,
                    "best_k": sorted(mc.best_k_models)}
            with open(self.path, "a") as f:
                f.write(json.dumps(seen) + "\\n")
    """
)


def _config(tmp_path: Path, epochs: int) -> dict[str, Any]:
    callbacks = [
        {"name": "lightning.pytorch.callbacks.ModelCheckpoint",
         "params": {"dirpath": str(tmp_path / "stock"), "monitor": "val/accuracy", "mode": "max", "save_top_k": 2,
                    "save_last": True, "filename": "best-{epoch}"}},
        {"name": "lightning.pytorch.callbacks.EarlyStopping", "params": {"monitor": "val/loss", "patience": 5}},
        {"name": "spy:Spy", "params": {"path": str(tmp_path / "spy.jsonl")}},
    ]  # fmt: skip
    return {
        "model": {"factory": "runtime.examples.digits:build_model", "params": {"channels": 4}},
        "data": {"factory": "runtime.examples.digits:build_loaders"},
        "optimizer": {"name": "SGD", "params": {"lr": 0.05}},
        "trainer": {"epochs": epochs, "limit_train_batches": 3, "limit_val_batches": 2, "seed": 0,
                    "smart_cfg_auto_populate": False, "callbacks": callbacks},
        "tracker": {"save_directory": str(tmp_path / "runs")},
    }  # fmt: skip


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "train", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_busloop_train_with_stock_callbacks_and_resume(tmp_path: Path) -> None:
    (tmp_path / "spy.py").write_text(SPY)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path, epochs=2)))
    first = _train(tmp_path, str(config))
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "stock" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    es, mc = saved["callbacks"][ES_KEY], saved["callbacks"][MC_KEY]  # under their state_keys
    assert saved["epoch"] == 1 and es["wait_count"] >= 0 and es["patience"] == 5
    assert Path(mc["best_model_path"]).name.startswith("best-epoch=") and len(mc["best_k_models"]) == 2

    second = _train(tmp_path, str(config), "trainer.epochs=3", "--resume", str(last))
    assert second.returncode == 0, second.stderr[-3000:]
    fresh, resumed = (json.loads(line) for line in (tmp_path / "spy.jsonl").read_text().splitlines())
    assert fresh["best_model_path"] == "" and fresh["best_score"] == float("inf")
    assert resumed["epoch"] == saved["epoch"] and resumed["wait_count"] == es["wait_count"]  # restored before fit_start
    assert resumed["best_score"] == pytest.approx(float(es["best_score"]))
    assert resumed["best_model_path"] == mc["best_model_path"] and resumed["best_k"] == sorted(mc["best_k_models"])
    after = torch.load(last, weights_only=True)
    assert after["epoch"] == 2 and set(after["callbacks"]) >= {ES_KEY, MC_KEY}
    assert len(list((tmp_path / "stock").glob("best-*.ckpt"))) == 2


@pytest.mark.slow
def test_torchrun_stock_callbacks_agree_across_ranks(tmp_path: Path) -> None:
    """EarlyStopping stops every rank when one rank's metric says so
    (``strategy.reduce_boolean_decision``); ModelCheckpoint's paths are broadcast from rank 0
    and rank 0 alone writes: one set of files, the same best path on both ranks."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(REPO / "tests" / "scripts" / "ddp_stock_callbacks.py"), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["world_size"] == 2
    # rank 1's score is 0.5 <= 0.6 after epoch 1; rank 0's never gets there: both stop there
    assert rank0["epoch"] == rank1["epoch"] == 2 and rank0["stopped_epoch"] == rank1["stopped_epoch"] == 1
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    assert rank1["reason"] == EarlyStoppingReason.STOPPING_THRESHOLD.value  # the rank that decided
    assert rank0["best_model_path"] == rank1["best_model_path"] and rank0["best_k"] == rank1["best_k"]
    assert rank0["last"] == rank1["last"] == str(tmp_path / "ckpt" / "last.ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == sorted([*(Path(p).name for p in rank0["best_k"]), "last.ckpt"]) and len(files) == 3
    assert Path(rank0["best_model_path"]).name in files


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"name": "lightning.pytorch.callbacks.BatchSizeFinder"}, "BatchSizeFinder: needs Lightning's tuner"),
        ({"name": "lightning.pytorch.callbacks.ModelSummary"}, "ModelSummary: needs a LightningModule as pl_module"),
    ],
)
def test_busloop_train_refuses_at_registration_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: dict[str, Any], expected: str
) -> None:
    """A stock callback busloop cannot serve stops ``busloop train`` before training: exit 2 and
    one line naming the callback and what is missing, no traceback."""
    from runtime.cli import main

    config = _config(tmp_path, epochs=1)
    config["trainer"]["callbacks"] = [entry]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not list((tmp_path / "runs").rglob("*.ckpt"))
