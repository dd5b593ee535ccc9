"""DeviceStatsMonitor against Lightning's stock callback: the same names at the same steps."""

from __future__ import annotations

import copy

import pytest
import torch

from compat import DeviceStatsMonitor
from conftest import make_loader
from runtime import Runtime

pl = pytest.importorskip("lightning.pytorch")

from lightning_compare import BNModule, CaptureLogger, CaptureTracker  # noqa: E402

PREFIX = "DeviceStatsMonitor."


def _stats_calls(calls: list) -> list[tuple[list[str], int]]:
    return [(sorted(m), step) for m, step in calls if any(k.startswith(PREFIX) for k in m)]


@pytest.mark.parametrize("every", [1, 3])
def test_names_steps_and_schedule_equal_lightning(every: int) -> None:
    torch.manual_seed(0)
    module = BNModule(batch_norm=False)
    train, val, test = make_loader(64), make_loader(32), make_loader(32)

    logger = CaptureLogger()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, callbacks=[pl.callbacks.DeviceStatsMonitor()], logger=logger,
        max_epochs=2, num_sanity_val_steps=1, log_every_n_steps=every, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    lightning_model = copy.deepcopy(module)
    torch.manual_seed(0)
    trainer.fit(lightning_model, train, val)
    trainer.test(lightning_model, test, verbose=False)

    tracker = CaptureTracker()
    cfg = {"trainer": {"epochs": 2, "num_sanity_val_steps": 1, "log_every_n_steps": every}}
    rt = Runtime(copy.deepcopy(module), [DeviceStatsMonitor()], cfg, tracker=tracker)
    torch.manual_seed(0)
    rt.fit(train, val)
    rt.test(test)

    theirs, ours = _stats_calls(logger.calls), _stats_calls(tracker.calls)
    assert ours == theirs
    logged_hooks = {k.split("/")[0] for keys, _ in ours for k in keys}
    assert (PREFIX + "on_test_batch_end" in logged_hooks) == (every == 1)  # 2 test batches
    assert (PREFIX + "on_validation_batch_start" in logged_hooks) == (every == 1)
    values = next(m for m, _ in tracker.calls if PREFIX + "on_train_batch_end/cpu_vm_percent" in m)
    assert 0 < values[PREFIX + "on_train_batch_end/cpu_vm_percent"] <= 100


def test_cpu_stats_false_logs_nothing_on_cpu() -> None:
    tracker = CaptureTracker()
    rt = Runtime(BNModule(batch_norm=False), [DeviceStatsMonitor(cpu_stats=False)],
                 {"trainer": {"epochs": 1, "log_every_n_steps": 1}}, tracker=tracker)
    rt.fit(make_loader(32))
    assert _stats_calls(tracker.calls) == []
    assert DeviceStatsMonitor().state_dict() == {}


def test_bad_cpu_stats_is_rejected() -> None:
    with pytest.raises(ValueError, match="DeviceStatsMonitor: cpu_stats"):
        DeviceStatsMonitor(cpu_stats="yes")  # type: ignore[arg-type]
