"""Instructions per training step, counted by valgrind's callgrind: ``python -m benchmarks.instructions``.

Timings on a busy machine are noisy; instruction counts are not. On the overhead section's
tiny workload a step's cost tracks its instruction count closely (low IPC: about 0.8 ns per
instruction here), so the per-step instructions a runtime adds over the hand-written loop
are the figure to cut, and they can be compared before / after a change to within a few
hundred instructions.

How: one Python process runs under ``valgrind --tool=callgrind --instr-atstart=no`` (torch's
import runs uninstrumented, fast). It warms every contender up with one run of N1 steps (so that lazy imports and
first-call caches stay out of the counts), then
turns instrumentation on through a callgrind client request (a tiny C helper compiled with
``gcc`` against ``valgrind/callgrind.h`` into a temporary folder) and, for each contender and
each of two step counts N1 < N2, zeroes the counters, trains (the contender from
:mod:`benchmarks.contenders` on :class:`benchmarks.workload.Workload`, with the same epochs
each time and no companion step) and dumps the counters under a label. The slope
``(Ir(N2) - Ir(N1)) / (N2 - N1)`` is the instructions per step: building the runtime, fit's
set-up and the epoch ends (the same number of epochs in both runs) cancel out. The heap is
frozen (``gc.freeze()``) before the measured runs so that a full collection's walk over
torch's objects cannot land in one run and not the other; ``PYTHONHASHSEED`` is fixed.

``--top K`` adds, per contender, the K functions (C level, as callgrind sees them: Python
functions show as the interpreter) whose self cost per step differs most from the
baseline's, from ``callgrind_annotate``.

Needs ``valgrind`` (with its headers) and ``gcc``; takes a few minutes (about 1–2 minutes of
valgrind start-up and import, then ~10 s per 100 steps per contender on 2 cores).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["measure", "main"]

DEFAULT_CONTENDERS = ("plain-lean", "busloop", "busloop-defaults")

_HELPER_C = r"""
#include <valgrind/callgrind.h>
void busloop_cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void busloop_cg_zero(void) { CALLGRIND_ZERO_STATS; }
void busloop_cg_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
"""


def _build_helper(folder: Path) -> Path:
    """Compile the client-request helper (a shared library) into ``folder``."""
    source, library = folder / "cg_helper.c", folder / "cg_helper.so"
    source.write_text(_HELPER_C)
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


# ---------------------------------------------------------------------- the worker (under valgrind)
def _worker(helper: str, contenders: Sequence[str], steps: Sequence[int]) -> None:
    """Warm up, then train each contender for each step count between zero / dump requests."""
    import torch

    from benchmarks.contenders import CONTENDERS
    from benchmarks.overhead import quiet
    from benchmarks.workload import RunContext, TimedBatches, Workload

    cg = ctypes.CDLL(helper)
    cg.busloop_cg_dump.argtypes = [ctypes.c_char_p]
    torch.set_num_threads(1)
    workload = Workload()
    data = {n: workload.batches(workload.per_epoch(n)) for n in steps}
    with tempfile.TemporaryDirectory(prefix="busloop-instr-") as tmp:
        ctx = RunContext(workload, Path(tmp), workload.val_batches_list())

        def run(name: str, count: int) -> None:
            with quiet():
                CONTENDERS[name].fit(ctx, TimedBatches(data[count]))

        for name in contenders:  # first-run costs (lazy imports, caches) stay out of the counts
            run(name, steps[0])
        gc.collect()
        gc.freeze()
        cg.busloop_cg_start()
        for name in contenders:
            for count in steps:
                cg.busloop_cg_zero()
                run(name, count)
                cg.busloop_cg_dump(f"{name}@{count}".encode())


# ---------------------------------------------------------------------- the driver
def _parts(folder: Path) -> dict[str, Path]:
    """The dump files by label (``contender@steps``)."""
    parts: dict[str, Path] = {}
    for path in folder.glob("cg.out.*"):
        with path.open() as handle:
            for line in handle:
                match = re.match(r"desc: Trigger: Client Request: (\S+)", line)
                if match:
                    parts[match.group(1)] = path
                    break
    return parts


def _total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{path}: no totals line")


def _functions(path: Path) -> dict[str, int]:
    """Self cost (Ir) of every function in one dump, from ``callgrind_annotate``."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    costs: dict[str, int] = {}
    for line in out.splitlines():
        match = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*?)(?: \[[^]]*\])?$", line)
        if match and ":" in match.group(2):
            name = match.group(2)
            costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def measure(
    contenders: Sequence[str] = DEFAULT_CONTENDERS,
    steps: tuple[int, int] = (100, 300),
    top: int = 0,
) -> dict[str, Any]:
    """Run the worker under callgrind; returns per-contender instructions per step (the slope),
    the difference to the first contender (the baseline), and with ``top`` the functions whose
    self cost per step differs most from the baseline's."""
    for tool in ("valgrind", "gcc", *(("callgrind_annotate",) if top else ())):
        if shutil.which(tool) is None:
            raise SystemExit(f"benchmarks.instructions: needs {tool} on PATH")
    n1, n2 = steps
    with tempfile.TemporaryDirectory(prefix="busloop-callgrind-") as tmp:
        folder = Path(tmp)
        helper = _build_helper(folder)
        command = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={folder / 'cg.out'}",
            sys.executable, "-m", "benchmarks.instructions", "--worker", str(helper),
            "--contenders", ",".join(contenders), "--steps", f"{n1},{n2}",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"the callgrind run failed ({done.returncode}):\n{done.stderr[-4000:]}"
            )
        parts = _parts(folder)
        result: dict[str, Any] = {"steps": [n1, n2], "per_step": {}, "over_baseline": {}, "top": {}}
        functions: dict[str, dict[str, float]] = {}
        for name in contenders:
            first, second = parts[f"{name}@{n1}"], parts[f"{name}@{n2}"]
            result["per_step"][name] = (_total(second) - _total(first)) / (n2 - n1)
            if top:
                low, high = _functions(first), _functions(second)
                functions[name] = {
                    f: (high.get(f, 0) - low.get(f, 0)) / (n2 - n1) for f in {*low, *high}
                }
    baseline = contenders[0]
    for name in contenders[1:]:
        result["over_baseline"][name] = result["per_step"][name] - result["per_step"][baseline]
        if top:
            base = functions[baseline]
            diff = {f: cost - base.get(f, 0.0) for f, cost in functions[name].items()}
            diff.update({f: -cost for f, cost in base.items() if f not in diff})
            ranked = sorted(diff.items(), key=lambda item: -abs(item[1]))[:top]
            result["top"][name] = [[f, round(cost)] for f, cost in ranked]
    return result


def _print(result: dict[str, Any]) -> None:
    n1, n2 = result["steps"]
    print(f"Instructions per step (callgrind Ir, slope between {n1} and {n2} steps)")
    base = next(iter(result["per_step"]))
    for name, per_step in result["per_step"].items():
        extra = "" if name == base else f"   {result['over_baseline'][name]:+10,.0f} over {base}"
        print(f"  {name:<28}{per_step:12,.0f}{extra}")
    for name, rows in result["top"].items():
        print(f"\n{name}: functions whose self cost per step differs most from {base}'s")
        for function, cost in rows:
            print(f"  {cost:+9,d}  {function}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help="comma-separated; the first is the baseline (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", default="100,300", help="the two step counts N1,N2 (default: %(default)s)"
    )
    parser.add_argument(
        "--top", type=int, default=0, help="list the K functions differing most from the baseline"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--worker", help=argparse.SUPPRESS
    )  # the run under valgrind: the helper's path
    args = parser.parse_args(argv)
    contenders = [name for name in args.contenders.split(",") if name]
    n1, n2 = (int(n) for n in args.steps.split(","))
    if args.worker:
        _worker(args.worker, contenders, (n1, n2))
        return
    from benchmarks.contenders import CONTENDERS

    unknown = [name for name in contenders if name not in CONTENDERS]
    if unknown or not 0 < n1 < n2:
        raise SystemExit(
            f"--contenders: unknown {unknown}"
            if unknown
            else "--steps: give N1,N2 with 0 < N1 < N2"
        )
    result = measure(contenders, (n1, n2), args.top)
    print(json.dumps(result, indent=2) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        _print(result)


if __name__ == "__main__":
    main()
