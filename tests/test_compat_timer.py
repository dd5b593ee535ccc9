"""compat.Timer against Lightning's stock Timer on the same module and data.

Both timers read ``time.monotonic``; the tests replace it with a clock that a callback
advances by one second per training batch, so that "when the limit is reached" is the same
decision in both runs whatever the machine's speed (a real clock makes it a race).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from compat_pairs import PairModule, fit_busloop, fit_lightning, pl

from compat import ModelCheckpoint, Timer
from runtime import Callback, Runtime


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)
    return fake


def _tickers(clock: Clock) -> tuple[Any, Any]:
    class LightningTick(pl.Callback):  # type: ignore[misc,name-defined]
        def on_train_batch_end(self, *args: Any) -> None:
            clock.now += 1.0

    class BusloopTick(Callback):
        def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
            clock.now += 1.0

    return LightningTick(), BusloopTick()


@pytest.mark.parametrize(
    ("duration", "interval"),
    [("00:00:00:05", "step"), (timedelta(seconds=8), "epoch"), ({"seconds": 13}, "step"), (None, "step")],
)
def test_same_stop_and_state_as_lightning(tmp_path: Path, clock: Clock, duration: Any, interval: str) -> None:
    module = PairModule()
    lightning_tick, busloop_tick = _tickers(clock)
    theirs = pl.callbacks.Timer(duration=duration, interval=interval)
    lightning = fit_lightning(module, [lightning_tick, theirs], tmp_path, epochs=4)
    ours = Timer(duration=duration, interval=interval)
    rt = fit_busloop(module, [busloop_tick, ours], epochs=4)

    assert (rt.state.epoch, rt.state.global_step) == (lightning.current_epoch, lightning.global_step)
    assert ours.state_key == theirs.state_key == "Timer"
    assert ours.state_dict() == theirs.state_dict()
    assert ours.time_elapsed("train") == theirs.time_elapsed("train") == rt.state.global_step
    assert ours.time_remaining() == theirs.time_remaining()
    assert ours.start_time("validate") is not None and ours.end_time("test") is None


def test_resume_counts_the_time_already_spent(tmp_path: Path, clock: Clock) -> None:
    _, tick = _tickers(clock)
    saver = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    fit_busloop(PairModule(), [tick, Timer(duration={"seconds": 100}), saver], epochs=1)  # 6 s spent
    _, tick = _tickers(clock)
    resumed = Timer(duration={"seconds": 9})
    rt = fit_busloop(PairModule(), [tick, resumed], epochs=4, ckpt_path=tmp_path / "last.ckpt")
    assert rt.state.global_step == 9  # 6 before the resume + 3 after it
    assert resumed.time_elapsed() == 9
    assert "Time limit reached" in (rt.state.stop_reason or "")


def test_a_limit_already_spent_stops_before_the_first_step(tmp_path: Path, clock: Clock) -> None:
    _, tick = _tickers(clock)
    timer = Timer(duration="00:00:00:00")
    rt = fit_busloop(PairModule(), [tick, timer], epochs=3)
    lightning_tick, _ = _tickers(clock)
    lightning = fit_lightning(PairModule(), [lightning_tick, pl.callbacks.Timer(duration="00:00:00:00")], tmp_path, epochs=3)
    assert rt.state.global_step == lightning.global_step


def test_the_per_batch_hook_is_connected_only_for_a_step_limit() -> None:
    for idle in (Timer(duration="01:00:00:00", interval="epoch"), Timer()):
        rt = fit_busloop(PairModule(), [idle], epochs=1)
        assert rt.bus.describe().get("train_batch_end", []) == []
    rt = fit_busloop(PairModule(), [Timer(duration="01:00:00:00")], epochs=1)
    assert rt.bus.describe()["train_batch_end"] == ["Timer.on_train_batch_end"]


@pytest.mark.parametrize(
    ("options", "problem"),
    [({"duration": "5 minutes"}, "DD:HH:MM:SS"), ({"interval": "batch"}, "interval"), ({"duration": {"parsecs": 1}}, "duration")],
)
def test_bad_arguments_name_the_callback_and_parameter(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=f"Timer: .*{problem}"):
        Timer(**options)
