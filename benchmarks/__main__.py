"""Command line of the benchmark suite: ``python -m benchmarks [options]`` / ``busloop bench``.

    python -m benchmarks --quick            # about a minute: every section, fewer rounds
    python -m benchmarks                    # the full suite (several minutes)
    python -m benchmarks --json > out.json  # the results as one JSON object on stdout
    python -m benchmarks --markdown         # the overhead table and targets for README
    python -m benchmarks --only dispatch --only scaling
    python -m benchmarks --only adapter     # the Lightning callback adapter's cost per hook call
    python -m benchmarks --without lightning   # treat Lightning as not installed
    python -m benchmarks --workloads        # the real workloads (ResNet-18, DataLoader, digits)

Progress goes to stderr; the tables (or the JSON) to stdout. The exit status is 0, or 1
with ``--check`` when a target fails.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console

from benchmarks.adapter import run_adapter
from benchmarks.dispatch import run_dispatch
from benchmarks.overhead import CLOCKS, CONTENDERS, run_overhead
from benchmarks.report import check_targets, markdown_report, print_report
from benchmarks.scaling import CALLBACK_COUNTS, run_scaling

SECTIONS = ("dispatch", "overhead", "scaling", "adapter")


@dataclass(frozen=True)
class Preset:
    """How long each section measures."""

    dispatch_repeat: int
    dispatch_min_time: float
    rounds: int
    steps: int
    warmup: int
    scaling_rounds: int
    scaling_steps: int
    adapter_rounds: int = 15
    adapter_min_time: float = 0.05


#: ``--quick``: within two minutes on a 2-core machine.
QUICK = Preset(
    dispatch_repeat=7,
    dispatch_min_time=0.02,
    rounds=5,
    steps=400,
    warmup=50,
    scaling_rounds=4,
    scaling_steps=400,
    adapter_rounds=7,
    adapter_min_time=0.02,
)
#: The default: several minutes, tighter numbers.
FULL = Preset(
    dispatch_repeat=15,
    dispatch_min_time=0.05,
    rounds=9,
    steps=1500,
    warmup=100,
    scaling_rounds=7,
    scaling_steps=1500,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="busloop bench",
        description="busloop's hook-overhead benchmarks: dispatch, per-step overhead, scaling, "
        "the Lightning callback adapter.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (< 2 min)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the results as JSON only")
    output.add_argument(
        "--markdown", action="store_true",
        help="print the overhead table and targets as Markdown (for README)",
    )
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--contenders", metavar="NAMES",
        help=f"comma-separated overhead contenders (default all): {', '.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--without", action="append", default=[], metavar="PACKAGE",
        help="treat PACKAGE as not installed (e.g. lightning, ignite); repeatable",
    )
    parser.add_argument("--rounds", type=int, help="overhead/scaling rounds (after a warm-up round)")
    parser.add_argument("--steps", type=int, help="timed steps per run")
    parser.add_argument("--warmup", type=int, help="untimed steps at the start of each run")
    parser.add_argument(
        "--clock", choices=CLOCKS, default="cpu",
        help="time steps by the training thread's CPU time (default; robust on a shared "
        "machine) or by wall time",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    parser.add_argument(
        "--workloads", action="store_true",
        help="run the real workloads instead (ResNet-18, a 2-worker DataLoader, the digits job: "
        "busloop vs plain vs Lightning vs Ignite, as ratios; several minutes)",
    )
    return parser


def _versions() -> dict[str, str]:
    found: dict[str, str] = {"python": platform.python_version()}
    for dist in ("busloop", "torch", "blinker", "lightning", "pytorch-ignite", "rich"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def run_suite(
    sections: tuple[str, ...],
    preset: Preset,
    *,
    clock: str = "cpu",
    contenders: list[str] | None = None,
    without: tuple[str, ...] = (),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the chosen sections and return every result plus the target checks."""
    say = progress or (lambda message: None)
    results: dict[str, Any] = {}
    started = time.perf_counter()
    if "dispatch" in sections:
        say("dispatch ...")
        results["dispatch"] = run_dispatch(
            repeat=preset.dispatch_repeat, min_time=preset.dispatch_min_time
        )
    if "overhead" in sections:
        results["overhead"] = run_overhead(
            rounds=preset.rounds,
            steps=preset.steps,
            warmup=preset.warmup,
            clock=clock,
            contenders=contenders,
            without=without,
            progress=lambda message: say(f"overhead: {message}"),
        )
    if "scaling" in sections:
        results["scaling"] = run_scaling(
            counts=CALLBACK_COUNTS,
            rounds=preset.scaling_rounds,
            steps=preset.scaling_steps,
            warmup=preset.warmup,
            clock=clock,
            progress=lambda message: say(f"scaling: {message}"),
        )
    if "adapter" in sections:
        say("adapter ...")
        results["adapter"] = run_adapter(
            rounds=preset.adapter_rounds, min_time=preset.adapter_min_time, without=without
        )
    results["targets"] = check_targets(results)
    results["meta"] = {
        "sections": ",".join(sections),
        "cpus": os.cpu_count(),
        "clock": clock,
        "seconds": round(time.perf_counter() - started, 1),
        "versions": _versions(),
    }
    return results


def _finite(value: Any) -> Any:
    """``value`` with NaN / infinite floats replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the suite; print the tables (or ``--json``); returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    overrides = {
        key: value
        for key, value in (
            ("rounds", args.rounds),
            ("scaling_rounds", args.rounds),
            ("steps", args.steps),
            ("scaling_steps", args.steps),
            ("warmup", args.warmup),
        )
        if value is not None
    }
    if any(value < 1 for key, value in overrides.items() if key != "warmup"):
        parser.error("--rounds and --steps must be at least 1")
    if overrides.get("warmup", 0) < 0:
        parser.error("--warmup must be >= 0")
    preset = replace(preset, **overrides)
    contenders = None
    if args.contenders:
        contenders = [name.strip() for name in args.contenders.split(",") if name.strip()]
        unknown = [name for name in contenders if name not in CONTENDERS]
        if unknown:
            parser.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    sections = tuple(args.only) if args.only else SECTIONS

    def progress(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    if args.workloads:
        return _run_workloads(args, progress)
    results = run_suite(
        sections,
        preset,
        clock=args.clock,
        contenders=contenders,
        without=tuple(args.without),
        progress=progress,
    )
    results["meta"] = {"mode": "quick" if args.quick else "full", **results["meta"]}
    if args.json:
        json.dump(_finite(results), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    elif args.markdown:
        sys.stdout.write(markdown_report(results))
    else:
        console = Console(width=None if sys.stdout.isatty() else 160)
        print_report(results, console)
    failed = any(check["status"] == "FAIL" for check in results["targets"])
    return 1 if args.check and failed else 0


def _run_workloads(args: argparse.Namespace, progress: Callable[[str], None]) -> int:
    """``--workloads``: the real workloads (``--quick``: tiny sizes, a smoke run)."""
    from benchmarks.workloads import FULL_SIZES, TINY_SIZES, run_workloads, workloads_markdown

    started = time.perf_counter()
    results = run_workloads(TINY_SIZES if args.quick else FULL_SIZES, without=tuple(args.without), progress=progress)
    results["meta"] = {
        "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
        "versions": _versions(),
    }
    if args.json:
        json.dump(_finite(results), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(workloads_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
