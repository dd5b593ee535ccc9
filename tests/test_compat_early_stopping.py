"""compat.EarlyStopping against Lightning's stock EarlyStopping on the same module and data:
the same stop epoch and step, the same reason, message and state; resume; all ranks agree."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from compat_pairs import SCORES, PairModule, fit_busloop, fit_lightning, pl

from compat import EarlyStopping, EarlyStoppingReason, ModelCheckpoint

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 8

CASES: list[tuple[dict[str, Any], dict[str, Any], tuple[float, ...]]] = [
    ({"monitor": "score", "patience": 2}, {}, SCORES),  # patience exhausted at epoch 7
    ({"monitor": "score", "patience": 1}, {}, SCORES),
    ({"monitor": "score", "patience": 1, "mode": "max"}, {}, SCORES),
    ({"monitor": "score", "patience": 1, "min_delta": 0.15}, {}, SCORES),
    ({"monitor": "score", "stopping_threshold": 0.25}, {}, SCORES),
    ({"monitor": "score", "divergence_threshold": 0.55}, {}, SCORES),
    ({"monitor": "score", "patience": 5}, {}, (0.5, 0.4, math.nan, 0.3)),  # not finite
    ({"monitor": "score", "patience": 5, "check_finite": False}, {}, (0.5, 0.4, math.nan, 0.3, 0.6, 0.7)),
    ({"monitor": "val_loss", "patience": 1, "min_delta": 0.02}, {}, SCORES),
    ({"monitor": "score", "patience": 3}, {"val_check_interval": 0.5}, SCORES),  # checks after each validation
    ({"monitor": "score", "patience": 1, "check_on_train_epoch_end": False}, {"check_val_every_n_epoch": 2}, SCORES),
    ({"monitor": "train_loss", "patience": 1, "min_delta": 0.05}, {"val": False}, SCORES),
    ({"monitor": "missing", "strict": False}, {}, SCORES),
]


@pytest.mark.parametrize(("options", "trainer", "scores"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_same_stop_and_state_as_lightning(
    tmp_path: Path, options: dict[str, Any], trainer: dict[str, Any], scores: tuple[float, ...]
) -> None:
    module = PairModule(scores=scores)
    theirs = pl.callbacks.EarlyStopping(**options)
    lightning = fit_lightning(module, [theirs], tmp_path, epochs=EPOCHS, **trainer)
    ours = EarlyStopping(**options)
    rt = fit_busloop(module, [ours], epochs=EPOCHS, **trainer)

    assert (rt.state.epoch, rt.state.global_step) == (lightning.current_epoch, lightning.global_step)
    assert rt.state.should_stop == lightning.should_stop
    assert ours.state_key == theirs.state_key
    mine, stock = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == stock.keys()
    for key in ("wait_count", "stopped_epoch", "patience", "stopping_reason", "stopping_reason_message"):
        assert mine[key] == stock[key], key
    torch.testing.assert_close(mine["best_score"], stock["best_score"].cpu(), rtol=0, atol=1e-6, equal_nan=True)
    assert ours.stopping_reason.name == theirs.stopping_reason.name
    if ours.stopping_reason is not EarlyStoppingReason.NOT_STOPPED:
        assert rt.state.stop_reason == ours.stopping_reason_message


def test_strict_missing_metric_fails_as_in_lightning(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not available"):
        fit_lightning(PairModule(), [pl.callbacks.EarlyStopping(monitor="missing")], tmp_path, epochs=1)
    with pytest.raises(Exception, match="EarlyStopping conditioned on metric `missing` which is not available"):
        fit_busloop(PairModule(), [EarlyStopping(monitor="missing")], epochs=1)


def test_the_stopping_reason_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="busloop"):
        fit_busloop(PairModule(), [EarlyStopping(monitor="score", patience=1)], epochs=EPOCHS)
    assert any("did not improve in the last 1 records" in r.getMessage() for r in caplog.records)


def test_resume_keeps_counting_patience(tmp_path: Path) -> None:
    straight = EarlyStopping(monitor="score", patience=2)
    full = fit_busloop(PairModule(), [straight], epochs=EPOCHS)
    saver = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    fit_busloop(PairModule(), [EarlyStopping(monitor="score", patience=2), saver], epochs=5)  # wait_count 1 at the end
    resumed = EarlyStopping(monitor="score", patience=2)
    again = fit_busloop(PairModule(), [resumed], epochs=EPOCHS, ckpt_path=tmp_path / "last.ckpt")
    assert (again.state.epoch, resumed.stopped_epoch) == (full.state.epoch, straight.stopped_epoch) == (EPOCHS, 7)
    assert resumed.state_dict() == straight.state_dict()


@pytest.mark.parametrize(
    ("options", "problem"),
    [({"monitor": "x", "mode": "avg"}, "mode"), ({"monitor": "x", "patience": -1}, "patience"), ({"monitor": ""}, "monitor")],
)
def test_bad_arguments_name_the_callback_and_parameter(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=f"EarlyStopping: .*{problem}"):
        EarlyStopping(**options)


@pytest.mark.slow
def test_under_torchrun_one_rank_stopping_stops_every_rank(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(REPO / "tests" / "scripts" / "ddp_early_stopping.py"), str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # rank 1's metric reaches the threshold after epoch 1, rank 0's never does: both stop there
    assert rank0["epoch"] == rank1["epoch"] == 2
    assert rank0["stopped_epoch"] == rank1["stopped_epoch"] == 1
    assert rank1["reason"] == EarlyStoppingReason.STOPPING_THRESHOLD.value
    assert rank0["reason"] == EarlyStoppingReason.NOT_STOPPED.value
