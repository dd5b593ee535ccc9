"""Rendering: rich tables per section, and the targets checked as PASS / FAIL lines."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = [
    "TARGETS",
    "adapter_line",
    "check_targets",
    "markdown_report",
    "print_report",
    "same_work_line",
    "zero_grad_line",
]

#: The targets: key -> (description, limit, unit). Overheads are over the fastest
#: hand-written loop (grads set to None) and read the median over rounds (see
#: :mod:`benchmarks.overhead` on why not the min, which is reported beside it).
TARGETS: dict[str, tuple[str, float, str]] = {
    "empty_event": ("event with no receivers (guarded form)", 0.1, "µs"),
    "per_receiver": ("cost of each receiver (guarded form, slope)", 0.6, "µs"),
    "defaults_us": (
        "busloop default callbacks: overhead over the fastest plain loop, median", 10.0, "µs"
    ),
    "defaults_vs_plain": (
        "busloop default callbacks: overhead, % of the fastest plain step, median", 5.0, "%"
    ),
    "defaults_vs_lightning": (
        "busloop default callbacks: overhead ÷ Lightning-defaults' overhead",
        1 / 20,
        "×",
    ),
    "per_callback_event": ("scaling: cost per callback per event (slope)", 1.0, "µs"),
    "adapter_per_hook": (
        "Lightning callback adapter: extra per hook call over a native callback, median", 1.0, "µs"
    ),
}


def _target(
    key: str, value: float | None, note: str = "", minimum: float | None = None
) -> dict[str, Any]:
    description, limit, unit = TARGETS[key]
    if value is None or math.isnan(value):
        status = "SKIP"
    else:
        status = "PASS" if value <= limit else "FAIL"
    return {
        "target": key,
        "description": description,
        "value": value,
        "limit": limit,
        "unit": unit,
        "status": status,
        "note": note,
        "min": minimum,
    }


def check_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Evaluate the targets against whichever sections ``results`` holds."""
    checks: list[dict[str, Any]] = []
    dispatch = results.get("dispatch")
    if dispatch:
        guarded = dispatch["results"].get("busloop guarded")
        if guarded:
            checks.append(_target("empty_event", guarded["per_count"].get("0", {}).get("min")))
            checks.append(_target("per_receiver", guarded["slope_us_per_receiver"]))
    overhead = results.get("overhead")
    if overhead:
        defaults = overhead["results"].get("busloop-defaults")
        skipped = overhead["skipped"]
        note = skipped.get("busloop-defaults", "")
        overhead_us = defaults and defaults["overhead_us"]
        checks.append(
            _target(
                "defaults_us",
                overhead_us and overhead_us["median"],
                note,
                overhead_us and overhead_us["min"],
            )
        )
        checks.append(
            _target("defaults_vs_plain", defaults and defaults["overhead_pct_of_baseline"], note)
        )
        ratio = defaults and defaults["overhead_vs_lightning_defaults"]
        note = note or skipped.get("lightning-defaults", "")
        checks.append(_target("defaults_vs_lightning", ratio, note))
    scaling = results.get("scaling")
    if scaling:
        checks.append(_target("per_callback_event", scaling["slope_us_per_callback_per_event"]))
    adapter = results.get("adapter")
    if adapter:
        checks.append(
            _target(
                "adapter_per_hook",
                adapter["extra_us_max_median"],
                "the slowest of the events measured",
                adapter["extra_us_max_min"],
            )
        )
    return checks


def _us(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _range(summary: Mapping[str, float], digits: int = 1) -> str:
    return f"{_us(summary['min'], digits)} – {_us(summary['max'], digits)}"


def dispatch_table(section: Mapping[str, Any]) -> Table:
    counts = section["counts"]
    table = Table(
        title="Dispatch: µs per event, by number of receivers",
        caption=(
            f"best of {section['repeat']} timeit repeats (median in --json); "
            f"includes timeit's loop overhead of {section['loop_overhead_us']:.3f} µs. "
            "Receivers: bound methods taking (sender, batch, batch_idx) by keyword."
        ),
    )
    table.add_column("contender")
    for count in counts:
        table.add_column(f"{count} recv.", justify="right")
    table.add_column("µs / receiver", justify="right")
    for name, entry in section["results"].items():
        cells = [_us(entry["per_count"][str(count)]["min"], 3) for count in counts]
        table.add_row(name, *cells, _us(entry["slope_us_per_receiver"], 3))
    idle = section.get("idle_batch_events")
    if idle:
        table.add_row(
            f"{len(idle['events'])} per-batch train events, guarded (µs per batch)",
            _us(idle["per_batch_us"]["min"], 3),
            *["" for _ in counts[1:]],
            "",
        )
    return table


def idle_events_line(idle: Mapping[str, Any]) -> str:
    """The markdown line for the per-batch events with no receivers."""
    return (
        f"Six per-batch train events with no receivers ({', '.join(idle['events'])}; the "
        f"loop's guarded form): {idle['per_batch_us']['min']:.3f} µs per batch, "
        f"{idle['net_us']['min']:.3f} µs net of timeit's loop (best of "
        f"{idle['per_batch_us']['n']} repeats)."
    )


def overhead_table(section: Mapping[str, Any]) -> Table:
    clock = "thread CPU time" if section["clock"] == "cpu" else "wall time"
    table = Table(
        title="Per-step overhead: " + section["workload"],
        caption=(
            f"{section['rounds']} interleaved rounds × {section['steps']} steps after "
            f"{section['warmup']} warm-up steps, {section['batches_per_epoch']} batches per "
            f"epoch (epoch ends amortised); {clock}. Each step runs in lockstep with a companion "
            "plain-loop step; overhead = (contender step − companion step) − (the same for the "
            "baseline, the fastest plain loop: grads set to None). Median and min – max over "
            "rounds; targets read the median. Ratios are medians of per-round ratios; baseline "
            f"step ≈ {_us(section['baseline_step_us'])} µs."
        ),
    )
    for header in ("contender", "µs / step", "min – max", "overhead µs", "min – max"):
        table.add_column(header, justify="left" if header == "contender" else "right")
    table.add_column("× baseline", justify="right")
    table.add_column("overhead % of baseline", justify="right")
    table.add_column("overhead ÷ Lightning-defaults'", justify="right")
    for entry in section["results"].values():
        ratio = entry["overhead_vs_lightning_defaults"]
        table.add_row(
            entry["label"],
            _us(entry["step_us"]["median"]),
            _range(entry["step_us"]),
            _us(entry["overhead_us"]["median"]),
            _range(entry["overhead_us"]),
            f"{entry['ratio_vs_baseline']:.3f}",
            f"{entry['overhead_pct_of_baseline']:.2f}%",
            "—" if ratio is None else f"{ratio:.4f}",
        )
    return table


def scaling_table(section: Mapping[str, Any]) -> Table:
    clock = "thread CPU time" if section["clock"] == "cpu" else "wall time"
    slope = section["slope_us_per_callback"]
    per_event = section["slope_us_per_callback_per_event"]
    table = Table(
        title=f"Scaling: callbacks on all {len(section['events'])} per-batch train events",
        caption=(
            f"{section['rounds']} rounds × {section['steps']} steps, {clock}; overhead vs the "
            f"plain loop ({_us(section['plain_step_us'])} µs/step). Least-squares slope: "
            f"{_us(slope, 3)} µs per callback per step = {_us(per_event, 3)} µs per callback "
            "per event."
        ),
    )
    table.add_column("callbacks", justify="right")
    table.add_column("µs / step", justify="right")
    table.add_column("overhead µs", justify="right")
    table.add_column("min – max", justify="right")
    table.add_column("µs per callback", justify="right")
    for count, entry in section["results"].items():
        base = section["results"].get("0")
        per_callback = (
            (entry["overhead_us"]["median"] - base["overhead_us"]["median"]) / int(count)
            if base is not None and int(count) > 0
            else None
        )
        table.add_row(
            count,
            _us(entry["step_us"]["median"]),
            _us(entry["overhead_us"]["median"]),
            _range(entry["overhead_us"]),
            _us(per_callback, 3),
        )
    return table


def zero_grad_line(section: Mapping[str, Any]) -> str | None:
    """What ``Optimizer.zero_grad`` costs over setting grads to None: stock plain − baseline.

    busloop takes the same shortcut (``runtime.optim.zero_grad``), so this saving is real
    for users but is not credited to busloop's loop: the targets use the baseline.
    """
    stock = section["results"].get("plain")
    if stock is None or section["baseline"] not in section["results"]:
        return None
    cost = stock["overhead_us"]
    return (
        "the stock plain loop (optimizer.zero_grad(set_to_none=True)) over the baseline: "
        f"{cost['median']:+.1f} µs/step median, {cost['min']:+.1f} min (the profiler label "
        "Optimizer.zero_grad enters; busloop skips it when nothing profiles)"
    )


def same_work_line(section: Mapping[str, Any]) -> str | None:
    """The default set's overhead over the baseline doing the default set's work by hand
    (``plain-lean-work``): what busloop itself costs once the work is taken out. Reported
    beside the targets, which read the overhead over the fastest plain loop."""
    extra = section.get("defaults_over_same_work")
    if not extra:
        return None
    return (
        "busloop default callbacks over the hand-written loop doing the same work "
        f"(plain-lean-work): {extra['median']:+.1f} µs/step median, {extra['min']:+.1f} min, "
        f"{extra['pct_of_same_work']:.2f} % of its step (reported; the targets read the "
        "overhead over the fastest plain loop)"
    )


def adapter_line(section: Mapping[str, Any]) -> str:
    """One line per event: a native busloop callback's cost per hook call and what the
    adapter adds for the same logic as a stock-style Lightning callback."""
    parts = [
        f"{event} {entry['native_us']['median']:.2f} µs native, "
        f"+{entry['extra_us']['median']:.2f} µs adapted (of the mins: {entry['extra_us_of_mins']:+.2f})"
        for event, entry in section["results"].items()
    ]
    return f"Adapter ({section['callback']}, median of {section['rounds']} rounds): " + "; ".join(parts) + "."


def markdown_report(results: Mapping[str, Any]) -> str:
    """The overhead table and the target lines as Markdown, for pasting into README."""
    lines: list[str] = []
    section = results.get("overhead")
    if section and section["results"]:
        lines += [
            "| contender | µs / step | overhead µs (median) | overhead µs (min) "
            "| overhead % of baseline | ÷ Lightning-defaults' overhead |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for entry in section["results"].values():
            ratio = entry["overhead_vs_lightning_defaults"]
            lines.append(
                f"| {entry['label']} | {_us(entry['step_us']['median'], 0)} "
                f"| {_us(entry['overhead_us']['median'])} | {_us(entry['overhead_us']['min'])} "
                f"| {entry['overhead_pct_of_baseline']:.1f} % "
                f"| {'—' if ratio is None else f'{ratio:.3f}'} |"
            )
        clock = "thread CPU time" if section["clock"] == "cpu" else "wall time"
        lines += [
            "",
            f"{clock}; {section['rounds']} interleaved rounds × {section['steps']} steps "
            f"({section['epochs']} epochs of {section['batches_per_epoch']} batches, each "
            f"validating on {section['val_batches']} batches) after {section['warmup']} warm-up "
            "steps; overhead over the baseline (the fastest plain loop), median and min over "
            "rounds; targets read the median.",
        ]
        same_work = same_work_line(section)
        if same_work:
            lines += ["", same_work + "."]
        for name, note in section["skipped"].items():
            lines.append(f"- {name}: {note}")
    dispatch = results.get("dispatch")
    if dispatch:
        guarded = dispatch["results"].get("busloop guarded")
        if guarded:
            lines += [
                "",
                f"Dispatch (guarded form): {guarded['per_count']['0']['min']:.3f} µs with no "
                f"receivers, {guarded['slope_us_per_receiver']:.3f} µs per receiver.",
            ]
        idle = dispatch.get("idle_batch_events")
        if idle:
            lines += ["", idle_events_line(idle)]
    scaling = results.get("scaling")
    if scaling:
        lines += [
            "",
            f"Scaling: {scaling['slope_us_per_callback_per_event']:.3f} µs per callback per event.",
        ]
    adapter = results.get("adapter")
    if adapter:
        lines += ["", adapter_line(adapter)]
    if results.get("targets"):
        lines += ["", "| target | value | limit | status |", "| --- | ---: | ---: | --- |"]
        for check in results["targets"]:
            value = check["value"]
            shown = "n/a" if value is None else f"{value:.3g} {check['unit']}"
            if check.get("min") is not None:
                shown += f" (min {check['min']:.3g})"
            lines.append(
                f"| {check['description']} | {shown} | ≤ {check['limit']:.3g} {check['unit']} "
                f"| {check['status']} |"
            )
    return "\n".join(lines) + "\n"


def print_report(results: Mapping[str, Any], console: Console) -> None:
    """Print every section's table, skip notes, and the targets as PASS / FAIL lines."""
    meta = results.get("meta", {})
    if meta:
        console.print(
            "busloop bench — "
            + ", ".join(f"{key}: {value}" for key, value in meta.items() if key != "versions")
        )
        versions = meta.get("versions", {})
        console.print("versions — " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if "dispatch" in results:
        console.print(dispatch_table(results["dispatch"]))
    if "overhead" in results:
        section = results["overhead"]
        if section["results"]:
            console.print(overhead_table(section))
        for name, note in section["skipped"].items():
            console.print(f"note: {name}: {note}")
        for line in (zero_grad_line(section), same_work_line(section)):
            if line:
                console.print(line, markup=False, highlight=False)
    if "scaling" in results:
        section = results["scaling"]
        if section["results"]:
            console.print(scaling_table(section))
        for name, note in section["notes"].items():
            console.print(f"note: {name}: {note}")
    if "adapter" in results:
        console.print(adapter_line(results["adapter"]), markup=False, highlight=False)
    for check in results.get("targets", []):
        value = check["value"]
        shown = "n/a" if value is None else f"{value:.4g} {check['unit']}"
        if check.get("min") is not None:
            shown += f" (min {check['min']:.4g})"
        line = (
            f"{check['status']:4}  {check['description']}: {shown} "
            f"(target <= {check['limit']:.4g} {check['unit']})"
        )
        if check["note"]:
            line += f" — {check['note']}"
        console.print(line, markup=False, highlight=False)
