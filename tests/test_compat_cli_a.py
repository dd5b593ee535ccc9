"""``busloop train`` on the embedded digits job naming ModelCheckpoint, EarlyStopping, Timer,
LearningRateMonitor and GradientAccumulationScheduler in YAML; misspelt parameters exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from runtime.cli import main

DIGITS: dict[str, Any] = {
    "model": {"factory": "runtime.examples.digits:build_model", "params": {"channels": 8}},
    "data": {"factory": "runtime.examples.digits:build_loaders"},
    "optimizer": {"name": "AdamW", "params": {"lr": 0.01}},
    "trainer": {
        "epochs": 3, "limit_train_batches": 4, "limit_val_batches": 2, "seed": 0, "smart_cfg_auto_populate": False,
    },
}
CALLBACKS = [
    {"name": "GradientAccumulationScheduler", "params": {"scheduling": {0: 2, 1: 1}}},
    {"name": "LearningRateMonitor", "params": {"logging_interval": "epoch"}},
    {"name": "Timer", "params": {"duration": "00:01:00:00", "interval": "epoch"}},
    {
        "name": "ModelCheckpoint",
        "params": {
            "monitor": "val/accuracy", "mode": "max", "save_top_k": 2, "save_last": "link",
            "filename": "ep{epoch}-acc{val/accuracy:.2f}", "auto_insert_metric_name": False,
        },
    },
    {"name": "EarlyStopping", "params": {"monitor": "val/loss", "patience": 1, "divergence_threshold": 0.0}},
]


def _write(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_train_with_each_callback_named_in_yaml(tmp_path: Path) -> None:
    config = {**DIGITS, "trainer": {**DIGITS["trainer"], "callbacks": CALLBACKS}}
    assert main(["train", _write(tmp_path, config), "tracker.run_name=compat"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["lr-AdamW"] for row in rows if "lr-AdamW" in row]
    assert lrs == [0.01]  # logged at the first epoch start; EarlyStopping ended the run after it
    # any finite val/loss is above the divergence threshold 0.0: stop after the first epoch
    folder = run_dir / "checkpoints" / "max_val_accuracy"
    names = sorted(p.name for p in folder.glob("*.ckpt"))
    assert len(names) == 2 and "last.ckpt" in names and (folder / "last.ckpt").is_symlink()
    (best,) = [name for name in names if name.startswith("ep0-acc")]
    checkpoint = torch.load(folder / best, weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 2  # 4 batches, accumulating 2
    states = checkpoint["callbacks"]
    assert states["Timer"]["time_elapsed"]["train"] > 0
    assert states["EarlyStopping{'monitor': 'val/loss', 'mode': 'min'}"]["patience"] == 1


@pytest.mark.parametrize(
    ("entry", "key", "hint"),
    [
        ({"name": "EarlyStopping", "params": {"monitor": "val/loss", "patiense": 3}}, "params.patiense", "patience"),
        ({"name": "ModelCheckpoint", "params": {"save_top": 2}}, "params.save_top", "save_top_k"),
        ({"name": "Timer", "params": {"durration": "00:00:01:00"}}, "params.durration", "duration"),
        ({"name": "LearningRateMonitor", "params": {"log_momentun": True}}, "params.log_momentun", "log_momentum"),
        ({"name": "GradientAccumulationScheduler", "params": {"schedule": {0: 2}}}, "params.schedule", "scheduling"),
    ],
)
def test_a_misspelt_parameter_exits_2_naming_the_key_and_the_nearest_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: dict[str, Any], key: str, hint: str
) -> None:
    config = {**DIGITS, "trainer": {**DIGITS["trainer"], "callbacks": [entry]}}
    assert main(["train", _write(tmp_path, config)]) == 2
    err = capsys.readouterr().err
    assert f"trainer.callbacks.0.{key}" in err and f"did you mean '{hint}'" in err


def test_a_bad_value_exits_2_naming_the_callback_and_parameter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = {"name": "Timer", "params": {"duration": "one hour"}}
    config = {**DIGITS, "trainer": {**DIGITS["trainer"], "callbacks": [entry]}}
    assert main(["train", _write(tmp_path, config)]) == 2
    err = capsys.readouterr().err
    assert "trainer.callbacks.0.params" in err and "Timer: duration='one hour'" in err


def test_registered_under_lightning_names_by_compat_alone() -> None:
    """Importing compat (not callbacks) registers the five under their Lightning names."""
    import subprocess
    import sys

    code = (
        "import sys, compat\n"
        "from runtime.registry import CALLBACKS\n"
        "assert 'callbacks' not in sys.modules\n"
        "for name in ('ModelCheckpoint', 'EarlyStopping', 'Timer', 'LearningRateMonitor', 'GradientAccumulationScheduler'):\n"
        "    assert CALLBACKS[name] is getattr(compat, name), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
