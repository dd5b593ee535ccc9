"""GPUStatsMonitor: Lightning's GPU monitor (removed in Lightning 1.7), brought back on NVML.

Lightning's version shelled out to ``nvidia-smi`` on every logged batch. This one talks to
NVML through ``pynvml`` (the ``nvidia-ml-py`` package): NVML is initialised once when fit
starts, the device handles are cached, and each logged batch costs a few NVML calls.
Statistics go to the run's tracker as ``device_id: <i>/<query> (<unit>)``, the old names,
at the step and on the schedule Lightning logs (see :mod:`compat.device_stats_monitor`):

- at ``train_batch_start``: ``utilization.gpu (%)`` (``gpu_utilization``),
  ``memory.used (MB)``, ``memory.free (MB)``, ``utilization.memory (%)``
  (``memory_utilization``), and ``batch_time/inter_step (ms)`` (``inter_step_time``);
- at ``train_batch_end``: the same GPU figures plus ``fan.speed (%)`` (``fan_speed``),
  ``temperature.gpu (°C)`` (``temperature``), ``power.draw (W)`` (``power``),
  ``clocks.sm (MHz)`` / ``clocks.mem (MHz)`` (``clocks``) and ``batch_time/intra_step (ms)``
  (``intra_step_time``). Step times are host wall-clock times (no device synchronisation).

Memory is in MiB, as ``nvidia-smi`` reports it. A query the GPU does not support (fan speed
on a passively cooled card) is dropped after one warning. Where there is no NVIDIA GPU or no
NVML, one warning says why and the callback disables itself; training goes on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from runtime.callback import Callback
from runtime.registry import register

__all__ = ["GPUStatsMonitor"]

log = logging.getLogger("busloop.callbacks")

_MIB = 1024**2


@register()
class GPUStatsMonitor(Callback):
    """Log NVIDIA GPU utilisation, memory, fan, temperature, power and clocks per batch.

    ``device_ids``: NVML indices of the GPUs to watch (None: the run's CUDA device).
    """

    def __init__(
        self,
        memory_utilization: bool = True,
        gpu_utilization: bool = True,
        intra_step_time: bool = False,
        inter_step_time: bool = False,
        fan_speed: bool = False,
        temperature: bool = False,
        power: bool = False,
        clocks: bool = False,
        device_ids: list[int] | None = None,
    ) -> None:
        switches = dict(
            memory_utilization=memory_utilization, gpu_utilization=gpu_utilization,
            intra_step_time=intra_step_time, inter_step_time=inter_step_time, fan_speed=fan_speed,
            temperature=temperature, power=power, clocks=clocks,
        )
        for name, value in switches.items():
            if not isinstance(value, bool):
                raise ValueError(f"GPUStatsMonitor: {name} must be True or False, got {value!r}")
        if device_ids is not None and not all(isinstance(i, int) and i >= 0 for i in device_ids):
            raise ValueError(f"GPUStatsMonitor: device_ids must be NVML indices (ints >= 0), got {device_ids!r}")
        self.switches = switches
        self.device_ids = device_ids
        self.enabled = True
        self._nvml: Any = None
        self._handles: list[tuple[int, Any]] = []
        self._start_queries: list[tuple[str, Callable[[Any], float]]] = []
        self._end_queries: list[tuple[str, Callable[[Any], float]]] = []
        self._every = 50
        self._stepped = 0
        self._snap_intra: float | None = None
        self._snap_inter: float | None = None

    # ------------------------------------------------------------------ set-up
    def on_setup(self, runtime: Any, stage: str) -> None:
        if stage != "fit" or self._nvml is not None or not self.enabled:
            return
        self._every = runtime.config.trainer.log_every_n_steps
        device = runtime.device
        ids = self.device_ids
        if ids is None:
            if device.type != "cuda":
                self._disable(f"the run is on {device.type!r}, not an NVIDIA GPU")
                return
            ids = [_nvml_index(device.index or 0)]
        self.start_nvml(ids)

    def start_nvml(self, device_ids: list[int]) -> bool:
        """Initialise NVML and cache the handles of ``device_ids``; False (and disabled) if NVML
        or a device is not there."""
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in device_ids]
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_InvalidArgument ...
            self._disable(f"NVML is not available ({type(exc).__name__}: {exc})")
            return False
        self._nvml = pynvml
        self._start_queries, self._end_queries = self._queries(pynvml)
        return True

    def _disable(self, why: str) -> None:
        self.enabled = False
        log.warning("GPUStatsMonitor: %s; no GPU statistics will be logged (callback disabled)", why)

    def _queries(self, nvml: Any) -> tuple[list[tuple[str, Callable[[Any], float]]], ...]:
        on = self.switches
        gpu: list[tuple[str, Callable[[Any], float]]] = []
        if on["memory_utilization"]:
            gpu += [
                ("memory.used (MB)", lambda h: nvml.nvmlDeviceGetMemoryInfo(h).used / _MIB),
                ("memory.free (MB)", lambda h: nvml.nvmlDeviceGetMemoryInfo(h).free / _MIB),
                ("utilization.memory (%)", lambda h: nvml.nvmlDeviceGetUtilizationRates(h).memory),
            ]
        if on["gpu_utilization"]:
            gpu.append(("utilization.gpu (%)", lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu))
        extra: list[tuple[str, Callable[[Any], float]]] = []
        if on["fan_speed"]:
            extra.append(("fan.speed (%)", nvml.nvmlDeviceGetFanSpeed))
        if on["temperature"]:
            extra.append(("temperature.gpu (°C)", lambda h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)))
        if on["power"]:
            extra.append(("power.draw (W)", lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000))
        if on["clocks"]:
            extra += [
                ("clocks.sm (MHz)", lambda h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
                ("clocks.mem (MHz)", lambda h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)),
            ]
        return gpu, gpu + extra

    def on_teardown(self, runtime: Any, stage: str) -> None:
        if stage == "fit" and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            finally:
                self._nvml, self._handles = None, []

    # ------------------------------------------------------------------ per batch
    def on_fit_start(self, runtime: Any) -> None:
        self._stepped = runtime.state.global_step

    def on_train_batch_start(self, runtime: Any, batch: Any, batch_idx: int) -> None:
        if not self.enabled:
            return
        if self.switches["intra_step_time"]:
            self._snap_intra = time.perf_counter()
        self._stepped = runtime.state.global_step
        if self._due(runtime):
            logs = self.read(self._start_queries)
            if self.switches["inter_step_time"] and self._snap_inter is not None:
                logs["batch_time/inter_step (ms)"] = (time.perf_counter() - self._snap_inter) * 1000
            self._send(runtime, logs)

    def on_train_batch_end(self, runtime: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.enabled:
            return
        if self.switches["inter_step_time"]:
            self._snap_inter = time.perf_counter()
        if self._due(runtime):
            logs = self.read(self._end_queries)
            if self.switches["intra_step_time"] and self._snap_intra is not None:
                logs["batch_time/intra_step (ms)"] = (time.perf_counter() - self._snap_intra) * 1000
            self._send(runtime, logs)

    def read(self, queries: list[tuple[str, Callable[[Any], float]]]) -> dict[str, float]:
        """One value per device and query; a query the device rejects is dropped (one warning)."""
        logs: dict[str, float] = {}
        for key, query in list(queries):
            for index, handle in self._handles:
                try:
                    logs[f"device_id: {index}/{key}"] = float(query(handle))
                except self._nvml.NVMLError as exc:
                    log.warning("GPUStatsMonitor: %s is not supported on GPU %d (%s); not logged", key, index, exc)
                    for table in (self._start_queries, self._end_queries):
                        if (key, query) in table:
                            table.remove((key, query))
                    break
        return logs

    def _due(self, runtime: Any) -> bool:
        every = self._every
        return bool(every) and ((self._stepped + 1) % every == 0 or runtime.state.should_stop)

    def _send(self, runtime: Any, logs: dict[str, float]) -> None:
        if logs and runtime.tracker is not None:
            runtime.tracker.log_metrics(logs, step=self._stepped, epoch=runtime.state.epoch)


def _nvml_index(cuda_index: int) -> int:
    """The NVML index of CUDA device ``cuda_index`` (CUDA_VISIBLE_DEVICES renumbers devices)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    parts = [p.strip() for p in visible.split(",") if p.strip()]
    if parts and all(p.isdigit() for p in parts) and cuda_index < len(parts):
        return int(parts[cuda_index])
    return cuda_index
