"""The ``busloop`` command line: the default job, user errors, test and callbacks commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from runtime.cli import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = {
    "model": {"factory": "runtime.examples.digits:build_model", "params": {"channels": 8}},
    "data": {"factory": "runtime.examples.digits:build_loaders"},
    "optimizer": {"name": "AdamW", "params": {"lr": 0.01}},
    "trainer": {"epochs": 1, "limit_train_batches": 3, "limit_val_batches": 2, "seed": 0},
}


def _write(tmp_path: Path, data: Any, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_default_job_reaches_95_percent_validation_accuracy(tmp_path: Path) -> None:
    assert main(["train"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    val = [m["val/accuracy"] for m in _metrics(run_dir) if "val/accuracy" in m]
    assert len(val) == 12 and max(val) >= 0.95
    log_text = (run_dir / "log.txt").read_text()
    assert (run_dir / "config.yaml").exists() and "Epoch 12/12" in log_text
    assert "Train Loss: n/a" not in log_text  # the epoch line shows the train loss the module logs
    best = list((run_dir / "checkpoints" / "best_val_metric").glob("*.ckpt"))
    assert len(best) == 1
    checkpoint = torch.load(best[0], weights_only=True)
    assert checkpoint["busloop_format"] == 1 and "state_dict" in checkpoint


USER_ERRORS = [
    ({**DIGITS, "trainer": {"epochz": 3}}, "trainer.epochz", "did you mean 'epochs'"),
    ({**DIGITS, "trainer": {"epochs": "ten"}}, "trainer.epochs", "expected an integer"),
    ({**DIGITS, "trainer": {"epochs": 0}}, "trainer.epochs", ">= 1"),
    ({**DIGITS, "trainer": {"callbacks": [{"name": "ModelCheckpont"}]}}, "trainer.callbacks.0.name", "did you mean 'ModelCheckpoint'"),
    (
        {**DIGITS, "trainer": {"callbacks": [{"name": "ModelCheckpoint", "params": {"monitr": "x"}}]}},
        "trainer.callbacks.0.params.monitr",
        "did you mean 'monitor'",
    ),
    ({**DIGITS, "model": {"factory": "runtime.examples.nope:build"}}, "model.factory", "nope"),
    ({**DIGITS, "model": {"factory": "runtime.examples.digits:build_modle"}}, "model.factory", "build_model"),
    ("trainer:\n  epochs: [1\n", "config.yaml", "line"),
    ("- just\n- a list\n", "config.yaml", "mapping"),
]


@pytest.mark.parametrize(("config", "key", "detail"), USER_ERRORS)
def test_config_errors_exit_2_with_a_named_key_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: Any, key: str, detail: str
) -> None:
    assert main(["train", _write(tmp_path, config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("busloop: error:") and key in err and detail in err
    assert "Traceback" not in err


def test_missing_file_and_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["train", _write(tmp_path, DIGITS), "trainer.epochs=zero"]) == 2
    assert "trainer.epochs" in capsys.readouterr().err


def test_console_script_exit_code_and_debug_traceback(tmp_path: Path) -> None:
    config = _write(tmp_path, {**DIGITS, "trainer": {"epochz": 1}})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    plain = subprocess.run([sys.executable, "-m", "runtime.cli", "train", config], capture_output=True, text=True, env=env)
    assert plain.returncode == 2 and "trainer.epochz" in plain.stderr and "Traceback" not in plain.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "--debug", "train", config], capture_output=True, text=True, env=env
    )
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_train_then_test_with_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path, {**DIGITS, "trainer": {**DIGITS["trainer"], "epochs": 2}})
    assert main(["train", config, "tracker.run_name=cli"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    ckpt = sorted((run_dir / "checkpoints" / "min_val_loss").glob("*.ckpt"))[0]
    assert main(["test", config, "--weights", str(ckpt), "trainer.limit_test_batches=2"]) == 0
    assert main(["test", config, "--weights", str(tmp_path / "nope.ckpt")]) == 2
    assert "nope.ckpt" in capsys.readouterr().err


def test_callbacks_command_lists_resolved_order_and_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(
        tmp_path,
        {**DIGITS, "trainer": {"main_metric": {"name": "val/accuracy"}, "callbacks": [{"name": "ModelCheckpoint", "params": {"monitor": "train/loss"}}]}},
    )
    assert main(["callbacks", "--config", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    checkpoints = [line for line in lines if "ModelCheckpoint" in line]
    assert len(checkpoints) == 3 and all("validation_end" in line for line in checkpoints)
    described = sorted(line.split(": ")[0].split(". ", 1)[1] for line in checkpoints)
    assert described == [
        "ModelCheckpoint(monitor=train/loss, mode=min)",
        "ModelCheckpoint(monitor=val/accuracy, mode=max)",
        "ModelCheckpoint(monitor=val/loss, mode=min)",
    ]


def test_help_does_not_import_torch() -> None:
    """``busloop --help`` must not pay for torch (seconds): the runtime package is lazy."""
    code = (
        "import sys\n"
        "from runtime.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "import runtime\n"
        "assert runtime.Runtime.__name__ == 'Runtime'  # still importable from the package\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage: busloop" in done.stdout
