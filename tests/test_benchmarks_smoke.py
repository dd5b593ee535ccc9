"""The benchmark suite runs end to end and produces well-formed results (never timings).

Tiny sizes only: these tests check shapes, notes and the command line, not speed.
"""

from __future__ import annotations

import json
import math
import pickle
from typing import Any

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.dispatch import DISPATCH_CONTENDERS, run_dispatch
from benchmarks.overhead import Contender, RunContext, TimedBatches, run_overhead
from benchmarks.report import check_targets, markdown_report, same_work_line, zero_grad_line
from benchmarks.scaling import run_scaling
from runtime.bus import Bus, CallbackError, OrderedSignal, StopEvent

TINY = {"rounds": 1, "steps": 4, "warmup": 2}


def _is_summary(summary: dict[str, float], n: int) -> bool:
    return summary["n"] == n and all(
        math.isfinite(summary[key]) for key in ("median", "min", "max")
    ) and summary["min"] <= summary["median"] <= summary["max"]


def test_dispatch_section_reports_every_contender_and_count() -> None:
    section = run_dispatch(counts=(0, 1, 3), repeat=2, min_time=0.001)
    assert set(section["results"]) == set(DISPATCH_CONTENDERS)
    assert section["counts"] == [0, 1, 3]
    for entry in section["results"].values():
        assert set(entry["per_count"]) == {"0", "1", "3"}
        assert all(_is_summary(cell, 2) and cell["min"] > 0 for cell in entry["per_count"].values())
        assert math.isfinite(entry["slope_us_per_receiver"])
    json.dumps(section)  # JSON-ready


def test_tiny_overhead_run_is_well_formed() -> None:
    section = run_overhead(contenders=["busloop", "busloop-defaults"], **TINY)
    assert section["skipped"] == {}
    assert list(section["results"]) == ["plain-lean", "busloop", "busloop-defaults"]
    for entry in section["results"].values():
        assert _is_summary(entry["step_us"], 1) and _is_summary(entry["overhead_us"], 1)
        assert entry["ratio_vs_baseline"] > 0
        assert entry["overhead_vs_lightning_defaults"] is None  # Lightning was not run
        assert _is_summary(entry["wall"]["step_us"], 1)
    assert section["results"]["plain-lean"]["overhead_us"]["median"] == 0  # the baseline
    assert section["baseline"] == "plain-lean" and section["figure"] == "median"
    json.dumps(section)


def test_the_stock_plain_loop_is_a_row_scored_against_the_lean_baseline() -> None:
    section = run_overhead(contenders=["plain", "busloop-defaults"], **TINY)
    results = section["results"]
    assert list(results) == ["plain-lean", "plain", "busloop-defaults"]
    line = zero_grad_line(section)
    assert line is not None and f"{results['plain']['overhead_us']['median']:+.1f} µs/step" in line
    assert zero_grad_line(run_overhead(contenders=["busloop"], **TINY)) is None  # no stock loop ran
    targets = {t["target"]: t for t in check_targets({"overhead": section})}
    expected = results["busloop-defaults"]["overhead_us"]
    assert targets["defaults_us"]["value"] == expected["median"]
    assert targets["defaults_us"]["min"] == expected["min"]
    assert targets["defaults_us"]["limit"] == 10.0


def test_the_default_set_is_also_read_against_the_loop_doing_its_work_by_hand() -> None:
    section = run_overhead(contenders=["plain-lean-work", "busloop-defaults"], **TINY)
    extra = section["defaults_over_same_work"]
    results = section["results"]
    # Per round, (defaults - baseline) - (same-work - baseline): the two rows' difference.
    assert extra["n"] == TINY["rounds"] == 1
    expected = (
        results["busloop-defaults"]["overhead_us"]["median"]
        - results["plain-lean-work"]["overhead_us"]["median"]
    )
    assert extra["median"] == pytest.approx(expected)
    line = same_work_line(section)
    assert line is not None and f"{extra['median']:+.1f} µs/step" in line
    assert "plain-lean-work" in markdown_report({"overhead": section})
    assert run_overhead(contenders=["busloop-defaults"], **TINY)["defaults_over_same_work"] is None
    json.dumps(section)


def test_every_contender_runs_several_epochs_with_validation(tmp_path: Any) -> None:
    from benchmarks.contenders import CONTENDERS
    from benchmarks.workload import Workload

    workload = Workload(epochs=3, val_batches=2)
    ctx = RunContext(workload, tmp_path, workload.val_batches_list())
    for name in (
        "plain", "plain-lean", "plain-lean-ckpt", "plain-lean-work", "busloop", "busloop-defaults"
    ):  # fmt: skip
        timed = TimedBatches(workload.batches(2))
        CONTENDERS[name].fit(ctx, timed)
        assert len(timed.starts["cpu"]) == 6, name  # fetches counted across the 3 epochs
    saved = torch.load(tmp_path / "plain-lean.ckpt", weights_only=True)  # the hand-written save
    assert saved["epoch"] == 2 and set(saved) == {"epoch", "model", "optimizer"}
    by_hand = tmp_path / "plain-lean-work"  # the default set's work, by hand
    rows = [json.loads(line) for line in (by_hand / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1, 2] and all("val/loss" in row for row in rows)
    assert len((by_hand / "log.txt").read_text().splitlines()) == 3
    best = list(by_hand.glob("*.ckpt"))
    assert len(best) == 1, "the best checkpoint only, the previous one removed"
    kept = torch.load(best[0], weights_only=True)
    assert {"model", "optimizer", "rng", "global_step"} <= set(kept)
    python_state, numpy_state = pickle.loads(kept["rng"]["python_numpy"])  # our own file
    assert python_state[0] == 3 and numpy_state[0] == "MT19937"
    runs = tmp_path / "busloop-runs"
    assert any(p.suffix == ".ckpt" for p in runs.rglob("*")), "the default set writes checkpoints"
    assert any("metrics" in p.name for p in runs.rglob("*")), "the local tracker writes metrics"


def test_missing_or_excluded_peers_are_skipped_with_a_note() -> None:
    absent = Contender(
        "absent-peer", "a peer that is not installed", lambda ctx, batches: None,
        requires=("no_such_package_for_busloop_bench",),
    )
    section = run_overhead(contenders=["lightning-bare", "ignite", absent], without=("lightning", "ignite"), **TINY)
    assert list(section["results"]) == ["plain-lean"]
    assert section["skipped"] == {
        "lightning-bare": "skipped: lightning excluded (--without lightning)",
        "ignite": "skipped: ignite excluded (--without ignite)",
        "absent-peer": "skipped: no_such_package_for_busloop_bench is not installed",
    }
    targets = check_targets({"overhead": run_overhead(contenders=["busloop-defaults"], without=("lightning",), **TINY)})
    assert [t["status"] for t in targets if t["target"] == "defaults_vs_lightning"] == ["SKIP"]


def test_a_failing_contender_is_dropped_with_a_note() -> None:
    def explode(ctx: RunContext, batches: TimedBatches) -> None:
        raise RuntimeError("boom")

    short = Contender("short", "stops early", lambda ctx, batches: next(iter(batches)))
    broken = Contender("broken", "raises", explode)
    section = run_overhead(contenders=[broken, short], **TINY)
    assert list(section["results"]) == ["plain-lean"]
    assert section["skipped"]["broken"] == "failed: RuntimeError: boom"
    assert section["skipped"]["short"].startswith("failed: RuntimeError: the contender fetched 1")


def test_tiny_scaling_run_fits_a_slope() -> None:
    section = run_scaling(counts=(0, 2), **TINY)
    assert set(section["results"]) == {"0", "2"}
    assert math.isfinite(section["slope_us_per_callback"])
    assert section["slope_us_per_callback_per_event"] == pytest.approx(
        section["slope_us_per_callback"] / len(section["events"])
    )


def test_command_line_json_and_tables(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--only", "overhead", "--contenders", "busloop-defaults,lightning-defaults",
            "--without", "lightning", "--rounds", "1", "--steps", "4", "--warmup", "2"]
    assert main([*args, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"overhead", "targets", "meta"}
    assert results["overhead"]["skipped"]["lightning-defaults"].startswith("skipped: lightning")
    assert {t["target"] for t in results["targets"]} == {"defaults_us", "defaults_vs_plain", "defaults_vs_lightning"}

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Per-step overhead" in out and "busloop, default" in out
    assert "note: lightning-defaults: skipped: lightning excluded" in out
    assert "SKIP  busloop default callbacks: overhead ÷ Lightning-defaults' overhead" in out

    assert main([*args, "--markdown"]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith("| contender | µs / step |")
    assert "| busloop, default callbacks + tracker |" in markdown
    assert "| busloop default callbacks: overhead over the fastest plain loop, median |" in markdown


def test_command_line_rejects_unknown_contenders() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--only", "overhead", "--contenders", "nope"])
    assert exc.value.code == 2


# The bus's specialised emit (generated per payload shape for speed) must behave exactly
# like the generic OrderedSignal.emit; the benchmark is what motivates it, so it is checked here.
def test_specialised_emit_matches_the_generic_one() -> None:
    bus = Bus()
    seen: list[Any] = []

    def catch_all(runtime: Any, **payload: Any) -> None:
        seen.append(payload)

    bus.connect("train_batch_end", catch_all)
    signal = bus.signal("train_batch_end")
    assert signal.emit is not OrderedSignal.emit  # specialised
    assert signal.emit("rt", batch=2, outputs=1, batch_idx=3) is True
    assert signal.emit("rt", outputs=1, batch=2, batch_idx=3, extra=4) is True  # generic path
    assert signal.emit("rt", outputs=1) is True  # missing keywords: generic path
    assert seen == [
        {"outputs": 1, "batch": 2, "batch_idx": 3},  # declared order, as positional adapters need
        {"outputs": 1, "batch": 2, "batch_idx": 3, "extra": 4},
        {"outputs": 1},
    ]

    def strict(runtime: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        raise StopEvent

    def never(runtime: Any, **payload: Any) -> None:
        raise AssertionError("StopEvent must keep later receivers from running")

    bus.disconnect("train_batch_end", catch_all)
    bus.connect("train_batch_end", strict)
    bus.connect("train_batch_end", never)
    assert signal.emit("rt", outputs=1, batch=2, batch_idx=3) is False

    def broken(runtime: Any) -> None:
        raise ValueError("bad")

    bus.connect("after_backward", broken)
    with pytest.raises(CallbackError, match="broken failed in event 'after_backward'") as exc:
        bus.emit("after_backward", "rt")
    assert isinstance(exc.value.original, ValueError)
    assert OrderedSignal("undeclared").emit.__func__ is OrderedSignal.emit  # no payload: generic


def test_adapter_section_times_native_and_adapted_hooks() -> None:
    from benchmarks.adapter import ADAPTER_EVENTS, run_adapter

    section = run_adapter(rounds=2, min_time=0.001)
    assert set(section["results"]) == set(ADAPTER_EVENTS)
    for entry in section["results"].values():
        assert _is_summary(entry["native_us"], 2) and _is_summary(entry["adapted_us"], 2)
        assert entry["native_us"]["min"] > 0 and math.isfinite(entry["extra_us"]["median"])
    (check,) = [c for c in check_targets({"adapter": section}) if c["target"] == "adapter_per_hook"]
    assert check["status"] in ("PASS", "FAIL") and check["value"] == section["extra_us_max_median"]
    json.dumps(section)


def test_dispatch_section_times_the_six_batch_events_with_no_receivers() -> None:
    from benchmarks.dispatch import BATCH_EVENTS
    from benchmarks.report import dispatch_table, idle_events_line, markdown_report
    from runtime.events import EVENTS

    section = run_dispatch(counts=(0, 1), repeat=2, min_time=0.001)
    idle = section["idle_batch_events"]
    assert idle["events"] == list(BATCH_EVENTS) and len(idle["events"]) == 6
    assert all(event in EVENTS for event in idle["events"])
    assert _is_summary(idle["per_batch_us"], 2) and idle["per_batch_us"]["min"] > 0
    assert 0 <= idle["net_us"]["min"] <= idle["per_batch_us"]["min"]
    line = idle_events_line(idle)
    assert "Six per-batch train events with no receivers" in line and "train_batch_end" in line
    assert line in markdown_report({"dispatch": section})
    assert dispatch_table(section).row_count == len(section["results"]) + 1
