"""Section 1: the cost of emitting one event, by number of receivers.

Every contender calls the same receivers — bound methods shaped like a per-batch hook,
``on_event(self, sender, batch, batch_idx)`` — with the same keyword payload:

* ``busloop emit``: :meth:`runtime.bus.OrderedSignal.emit`, called unconditionally;
* ``busloop guarded``: the loop's hot-path form, ``if sig.dispatch: sig.emit(...)``;
* ``blinker send (weak)`` / ``blinker send (weak=False)``: a raw :class:`blinker.Signal`;
* ``plain loop (floor)``: ``for fn in receivers: fn(sender, batch=..., batch_idx=...)``,
  the least any dispatcher can do.

One more row, ``idle batch events``: the six per-batch train events the loop emits in its
guarded form (``train_batch_start``, ``before_zero_grad``, ``before_backward``,
``after_backward``, ``before_optimizer_step``, ``train_batch_end``) on a fresh bus with no
receivers: what a training batch pays for its events when nobody listens, in µs per batch,
with and without timeit's own loop overhead.

Each cell is timed with :mod:`timeit` (``repeat`` runs of a loop sized to last about
``min_time`` seconds; the best run is the headline, the median is kept too). The numbers
include timeit's own loop overhead, reported as ``loop_overhead_us``. The per-receiver
cost is the least-squares slope over the receiver counts.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import blinker

from benchmarks.stats import least_squares, summarize
from runtime.bus import Bus

__all__ = [
    "BATCH_EVENTS",
    "DISPATCH_CONTENDERS",
    "RECEIVER_COUNTS",
    "run_dispatch",
    "time_idle_batch_events",
    "time_statement",
]

#: The receiver counts measured by default.
RECEIVER_COUNTS: tuple[int, ...] = (0, 1, 10, 50)

_EVENT = "bench_event"
_PAYLOAD = ("batch", "batch_idx")


class _Receiver:
    """A callback with one per-batch hook that does nothing (the cost is all dispatch)."""

    def on_event(self, sender: Any, batch: Any, batch_idx: int) -> None:
        """Receive the event."""


@dataclass(frozen=True)
class _Case:
    """A timed statement and the local names it needs (bound in timeit's setup)."""

    stmt: str
    names: dict[str, Any]


def _busloop_signal(receivers: Sequence[_Receiver]) -> Any:
    bus = Bus()
    bus.declare(_EVENT, _PAYLOAD)
    for receiver in receivers:
        bus.connect(_EVENT, receiver.on_event)
    return bus.signal(_EVENT)


def _blinker_signal(receivers: Sequence[_Receiver], *, weak: bool) -> blinker.Signal:
    signal = blinker.Signal()
    for receiver in receivers:
        signal.connect(receiver.on_event, weak=weak)
    return signal


def _case_busloop_emit(receivers: Sequence[_Receiver]) -> _Case:
    return _Case(
        "sig.emit(sender, batch=batch, batch_idx=i)", {"sig": _busloop_signal(receivers)}
    )


def _case_busloop_guarded(receivers: Sequence[_Receiver]) -> _Case:
    return _Case(
        "if sig.dispatch: sig.emit(sender, batch=batch, batch_idx=i)",
        {"sig": _busloop_signal(receivers)},
    )


def _case_blinker_weak(receivers: Sequence[_Receiver]) -> _Case:
    return _Case(
        "sig.send(sender, batch=batch, batch_idx=i)",
        {"sig": _blinker_signal(receivers, weak=True)},
    )


def _case_blinker_strong(receivers: Sequence[_Receiver]) -> _Case:
    return _Case(
        "sig.send(sender, batch=batch, batch_idx=i)",
        {"sig": _blinker_signal(receivers, weak=False)},
    )


def _case_plain_loop(receivers: Sequence[_Receiver]) -> _Case:
    return _Case(
        "for fn in fns: fn(sender, batch=batch, batch_idx=i)",
        {"fns": tuple(receiver.on_event for receiver in receivers)},
    )


#: Contender name -> builder of its timed statement for a list of receivers.
DISPATCH_CONTENDERS: dict[str, Callable[[Sequence[_Receiver]], _Case]] = {
    "busloop emit": _case_busloop_emit,
    "busloop guarded": _case_busloop_guarded,
    "blinker send (weak)": _case_blinker_weak,
    "blinker send (weak=False)": _case_blinker_strong,
    "plain loop (floor)": _case_plain_loop,
}


def time_statement(
    stmt: str,
    names: dict[str, Any],
    *,
    repeat: int,
    min_time: float,
    clock: Callable[[], float] = timeit.default_timer,
) -> list[float]:
    """Microseconds per execution of ``stmt``, one value per repeat.

    The names are bound as *locals* of timeit's inner function (as the loop's hot path
    holds its signals in locals), and the loop count is sized so that one repeat lasts
    at least ``min_time`` seconds (of ``clock``: wall time by default).
    """
    setup = "; ".join(f"{name} = _ns[{name!r}]" for name in names) or "pass"
    timer = timeit.Timer(stmt, setup=setup, timer=clock, globals={"_ns": names})
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= min_time / 4 or number >= 10**8:
            break
        number *= 4 if elapsed < min_time / 40 else 2
    number = max(1, int(number * min_time / max(elapsed, 1e-9)))
    return [t / number * 1e6 for t in timer.repeat(repeat=repeat, number=number)]


#: The per-batch train events of the loop's hot path, with the payload it emits them with.
BATCH_EVENTS: dict[str, str] = {
    "train_batch_start": "batch=batch, batch_idx=i",
    "before_zero_grad": "optimizer=optimizer",
    "before_backward": "loss=loss",
    "after_backward": "",
    "before_optimizer_step": "optimizer=optimizer",
    "train_batch_end": "outputs=outputs, batch=batch, batch_idx=i",
}


def time_idle_batch_events(*, repeat: int, min_time: float) -> dict[str, Any]:
    """µs per batch for the six per-batch train events, guarded as the loop emits them, on
    a :class:`~runtime.bus.Bus` with no receivers (``net_us``: minus timeit's loop overhead)."""
    bus = Bus()
    names: dict[str, Any] = {
        "sender": object(),
        "batch": ("inputs", "targets"),
        "i": 7,
        "optimizer": object(),
        "loss": 0.5,
        "outputs": {"loss": 0.5},
    }
    lines = []
    for index, (event, payload) in enumerate(BATCH_EVENTS.items()):
        names[f"s{index}"] = bus.signal(event)
        args = f", {payload}" if payload else ""
        lines.append(f"if s{index}.dispatch: s{index}.emit(sender{args})")
    samples = time_statement("\n".join(lines), names, repeat=repeat, min_time=min_time)
    overhead = time_statement("pass", {}, repeat=repeat, min_time=min_time)
    floor = min(overhead)
    return {
        "events": list(BATCH_EVENTS),
        "per_batch_us": summarize(samples),
        "net_us": summarize([max(sample - floor, 0.0) for sample in samples]),
    }


def _slope(counts: Sequence[int], values: Sequence[float]) -> float:
    """µs per receiver: the least-squares slope (NaN with fewer than two distinct counts)."""
    if len(set(counts)) < 2:
        return float("nan")
    return least_squares(list(counts), list(values))[0]


def run_dispatch(
    *,
    counts: Sequence[int] = RECEIVER_COUNTS,
    repeat: int = 15,
    min_time: float = 0.05,
    contenders: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Time every dispatch contender at every receiver count.

    Returns a JSON-ready dict::

        {"counts": [...], "repeat": R, "loop_overhead_us": x,
         "results": {name: {"per_count": {"0": {median, min, max, n}, ...},
                            "slope_us_per_receiver": s,          # from the best repeats
                            "slope_us_per_receiver_median": s2}}}

    The headline numbers are the best (minimum) repeats, timeit's convention: on a shared
    machine the least disturbed repeat is the closest to the code's own cost.
    """
    names = list(DISPATCH_CONTENDERS) if contenders is None else list(contenders)
    unknown = [name for name in names if name not in DISPATCH_CONTENDERS]
    if unknown:
        raise ValueError(f"unknown dispatch contender(s) {unknown}; known: {list(DISPATCH_CONTENDERS)}")
    common = {"sender": object(), "batch": ("inputs", "targets"), "i": 7}
    loop_overhead = time_statement("pass", {}, repeat=repeat, min_time=min_time)
    results: dict[str, Any] = {}
    for name in names:
        per_count: dict[str, dict[str, float]] = {}
        for count in counts:
            receivers = [_Receiver() for _ in range(count)]  # kept alive for weak refs
            case = DISPATCH_CONTENDERS[name](receivers)
            samples = time_statement(
                case.stmt, {**common, **case.names}, repeat=repeat, min_time=min_time
            )
            per_count[str(count)] = summarize(samples)
            del receivers
        best = [per_count[str(count)]["min"] for count in counts]
        medians = [per_count[str(count)]["median"] for count in counts]
        results[name] = {
            "per_count": per_count,
            "slope_us_per_receiver": _slope(counts, best),
            "slope_us_per_receiver_median": _slope(counts, medians),
        }
    return {
        "counts": list(counts),
        "repeat": repeat,
        "min_time_s": min_time,
        "loop_overhead_us": summarize(loop_overhead)["median"],
        "results": results,
        "idle_batch_events": time_idle_batch_events(repeat=repeat, min_time=min_time),
    }
