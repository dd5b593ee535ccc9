"""The compat Lightning callbacks from the command line, and with Lightning impossible to import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.cli import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = {
    "model": {"factory": "runtime.examples.digits:build_model", "params": {"channels": 8}},
    "data": {"factory": "runtime.examples.digits:build_loaders"},
    "optimizer": {"name": "SGD", "params": {"lr": 0.05}},
    "trainer": {"epochs": 2, "limit_train_batches": 3, "limit_val_batches": 2, "seed": 0, "log_every_n_steps": 1},
}
FIVE = [
    {"name": "DeviceStatsMonitor", "params": {}},
    {"name": "GPUStatsMonitor", "params": {"temperature": True}},
    {"name": "RichModelSummary", "params": {"max_depth": 1}},
    {"name": "StochasticWeightAveraging", "params": {"swa_lrs": 0.01, "swa_epoch_start": 1}},
    {"name": "ModelPruning", "params": {"pruning_fn": "l1_unstructured", "amount": {"1": 0.3}}},
]


def _write(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_busloop_train_with_each_callback_named_in_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {**DIGITS, "trainer": {**DIGITS["trainer"], "callbacks": FIVE}}
    assert main(["train", _write(tmp_path, config)]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("DeviceStatsMonitor.on_train_batch_end/cpu_percent" in m for m in logged)
    assert "Total params" in capsys.readouterr().out  # the rich summary
    best = sorted((run_dir / "checkpoints").rglob("*.ckpt"))
    assert best, "the default ModelCheckpoint wrote nothing"
    import torch

    state = torch.load(best[-1], weights_only=True)
    assert not any(k.endswith("_mask") for k in state["state_dict"])  # ModelPruning: permanent weights
    assert "StochasticWeightAveraging" in state["callbacks"]


@pytest.mark.parametrize(
    ("name", "wrong", "nearest"),
    [
        ("DeviceStatsMonitor", "cpu_stat", "cpu_stats"),
        ("GPUStatsMonitor", "fan_sped", "fan_speed"),
        ("StochasticWeightAveraging", "swa_lr", "swa_lrs"),
        ("ModelPruning", "pruning_fun", "pruning_fn"),
    ],
)
def test_wrong_parameter_name_exits_2_with_the_nearest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, wrong: str, nearest: str
) -> None:
    config = {**DIGITS, "trainer": {**DIGITS["trainer"], "callbacks": [{"name": name, "params": {wrong: 1}}]}}
    assert main(["train", _write(tmp_path, config)]) == 2
    err = capsys.readouterr().err
    assert f"trainer.callbacks.0.params.{wrong}" in err and f"did you mean '{nearest}'" in err


NO_LIGHTNING = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Block())
    for blocked in ("lightning", "pytorch_lightning"):
        try:
            __import__(blocked)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{blocked} imported despite the block")

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    import compat
    from runtime import Runtime

    torch.manual_seed(0)
    x = torch.randn(64, 8); y = (x.sum(1) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    # The ten Lightning callbacks.
    callbacks = [
        compat.ModelCheckpoint(monitor="val/loss", dirpath="ckpts"),
        compat.EarlyStopping(monitor="val/loss", patience=5),
        compat.Timer(duration="00:00:10:00"),
        compat.LearningRateMonitor(),
        compat.GradientAccumulationScheduler({0: 2}),
        compat.DeviceStatsMonitor(),
        compat.GPUStatsMonitor(),
        compat.RichModelSummary(),
        compat.StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1),
        compat.ModelPruning("l1_unstructured", amount=0.2),
    ]
    config = {"loss": "torch.nn.functional:cross_entropy", "optimizer": {"name": "SGD", "params": {"lr": 0.1}},
              "trainer": {"epochs": 2, "num_sanity_val_steps": 0}}
    with Runtime(model, callbacks, config) as rt:  # the local tracker, in the test's folder
        rt.fit(loader, loader)
    assert rt.state.epoch == 2
    leaked = [m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric")]
    assert not leaked, leaked
    print("trained without lightning:", len(callbacks), "callbacks")
    """
)


def test_compat_trains_with_lightning_blocked(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_LIGHTNING], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained without lightning: 10 callbacks" in result.stdout
