"""GPUStatsMonitor on NVML.

This machine has no NVIDIA GPU, so NVML itself is the one thing that cannot be real here:
the logic tests inject a fake ``pynvml`` module (in ``sys.modules``) that answers like NVML
for two devices. The real ``pynvml`` is used in the tests that check the callback fails
cleanly (one warning, disabled, training unaffected) where there is no GPU.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import types
from typing import Any

import pytest
import torch
from lightning_compare import CaptureTracker  # noqa: E402  (no Lightning needed: the tracker only)

from compat import GPUStatsMonitor
from conftest import make_loader, make_model
from runtime import Runtime

OPTIMIZER = {"optimizer": {"name": "SGD", "params": {"lr": 0.1}}}


class NVMLError(Exception):
    pass


class NVMLErrorNotSupported(NVMLError):
    pass


def fake_nvml() -> types.SimpleNamespace:
    """A stand-in for pynvml with two devices; device 1 has no fan. Counts every call."""
    calls: dict[str, int] = {}

    def counted(name: str, fn: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return fn(*args)
        return wrapper

    def fan(handle: int) -> int:
        if handle == 1:
            raise NVMLErrorNotSupported("Not Supported")
        return 40

    return types.SimpleNamespace(
        calls=calls,
        NVMLError=NVMLError,
        NVML_TEMPERATURE_GPU=0, NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2,
        nvmlInit=counted("init", lambda: None),
        nvmlShutdown=counted("shutdown", lambda: None),
        nvmlDeviceGetHandleByIndex=counted("handle", lambda i: i),
        nvmlDeviceGetMemoryInfo=counted(
            "memory", lambda h: types.SimpleNamespace(used=(2048 + h) * 1024**2, free=1024 * 1024**2)
        ),
        nvmlDeviceGetUtilizationRates=counted("util", lambda h: types.SimpleNamespace(gpu=70 + h, memory=30)),
        nvmlDeviceGetFanSpeed=counted("fan", fan),
        nvmlDeviceGetTemperature=counted("temp", lambda h, sensor: 55 + h),
        nvmlDeviceGetPowerUsage=counted("power", lambda h: 123_000),
        nvmlDeviceGetClockInfo=counted("clock", lambda h, kind: 1500 if kind == 1 else 2600),
    )


def _run(callback: GPUStatsMonitor, every: int = 1, epochs: int = 1) -> tuple[Runtime, CaptureTracker]:
    tracker = CaptureTracker()
    rt = Runtime(make_model(), [callback], {"loss": "torch.nn.functional:cross_entropy", **OPTIMIZER,
                 "trainer": {"epochs": epochs, "log_every_n_steps": every}}, tracker=tracker)
    rt.fit(make_loader(64))
    return rt, tracker


def test_logs_every_switch_from_nvml_once_initialised(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    nvml = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(subprocess.Popen, "__init__", lambda *a, **k: pytest.fail("no subprocess per step"))
    callback = GPUStatsMonitor(intra_step_time=True, inter_step_time=True, fan_speed=True,
                               temperature=True, power=True, clocks=True, device_ids=[0, 1])
    with caplog.at_level(logging.WARNING, logger="busloop.callbacks"):
        _, tracker = _run(callback)
    stats = [(m, step) for m, step in tracker.calls if any(k.startswith("device_id") for k in m)]
    assert [step for _, step in stats] == [0, 0, 1, 1, 2, 2, 3, 3]  # start and end of 4 batches
    start, end = stats[0][0], stats[1][0]
    assert set(start) == {f"device_id: {d}/{k}" for d in (0, 1) for k in (
        "memory.used (MB)", "memory.free (MB)", "utilization.memory (%)", "utilization.gpu (%)")}
    assert start["device_id: 1/memory.used (MB)"] == 2049.0 and start["device_id: 0/utilization.gpu (%)"] == 70.0
    assert end["device_id: 0/fan.speed (%)"] == 40.0 and "device_id: 1/fan.speed (%)" not in end
    assert end["device_id: 1/temperature.gpu (°C)"] == 56.0 and end["device_id: 0/power.draw (W)"] == 123.0
    assert end["device_id: 0/clocks.sm (MHz)"] == 1500.0 and end["device_id: 0/clocks.mem (MHz)"] == 2600.0
    assert end["batch_time/intra_step (ms)"] > 0 and "batch_time/inter_step (ms)" not in start
    assert stats[2][0]["batch_time/inter_step (ms)"] >= 0
    assert "fan.speed" not in str(stats[-1][0])  # dropped after the first failure ...
    assert sum("fan.speed (%) is not supported" in r.message for r in caplog.records) == 1  # ... with one warning
    assert nvml.calls["init"] == 1 and nvml.calls["handle"] == 2 and nvml.calls["shutdown"] == 1


def test_switches_off_and_log_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    _, tracker = _run(GPUStatsMonitor(memory_utilization=False, device_ids=[0]), every=2)
    stats = [(m, step) for m, step in tracker.calls if any(k.startswith("device_id") for k in m)]
    assert [step for _, step in stats] == [1, 1, 3, 3]  # (step + 1) % log_every_n_steps == 0
    assert all(set(m) == {"device_id: 0/utilization.gpu (%)"} for m, _ in stats)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without an NVIDIA GPU")
def test_real_pynvml_fails_cleanly_without_a_gpu(caplog: Any) -> None:
    pytest.importorskip("pynvml")
    callback = GPUStatsMonitor(device_ids=[0])  # ask for GPU 0: the real NVML has none here
    with caplog.at_level(logging.WARNING, logger="busloop.callbacks"):
        rt, tracker = _run(callback)
    warnings = [r.message for r in caplog.records if "GPUStatsMonitor" in r.message]
    assert len(warnings) == 1 and "NVML is not available" in warnings[0]
    assert callback.enabled is False and rt.state.epoch == 1
    assert not any(k.startswith("device_id") for m, _ in tracker.calls for k in m)


def test_cpu_run_disables_with_one_warning(caplog: Any) -> None:
    callback = GPUStatsMonitor()
    with caplog.at_level(logging.WARNING, logger="busloop.callbacks"):
        _run(callback, epochs=2)
    warnings = [r.message for r in caplog.records if "GPUStatsMonitor" in r.message]
    assert len(warnings) == 1 and "not an NVIDIA GPU" in warnings[0] and callback.enabled is False


def test_bad_switch_is_rejected() -> None:
    with pytest.raises(ValueError, match="GPUStatsMonitor: fan_speed"):
        GPUStatsMonitor(fan_speed="on")  # type: ignore[arg-type]
