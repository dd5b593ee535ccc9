"""Instructions per training step, counted by valgrind's callgrind: ``python -m benchmarks.instructions``.

Timings on a busy machine are noisy; instruction counts are not. On the overhead section's
tiny workload a step's cost tracks its instruction count closely (low IPC: about 0.8 ns per
instruction here), so the per-step instructions a runtime adds over the hand-written loop
are the figure to cut, and they can be compared before / after a change.

How: one Python process runs under ``valgrind --tool=callgrind --instr-atstart=no`` (torch's
import runs uninstrumented, fast). It warms every contender up with one run of N1 steps (lazy
imports and first-call caches stay out of the counts), freezes the heap (``gc.freeze()``: a
full collection's walk over torch's objects cannot land in one run and not another) and runs
each measured run with the cyclic collector off, after a collection (a young-generation
collection landing in the N2 run and not the N1 one moved a contender's per-step slope by up to
~17k; the counts leave the collector out, which the overhead section's timings include: a few
young collections per thousand steps in its window), turns
instrumentation on through a callgrind client request (a tiny C helper compiled with ``gcc``
against ``valgrind/callgrind.h`` into a temporary folder), then trains each contender (from
:mod:`benchmarks.contenders`, on :class:`benchmarks.workload.Workload`, no companion step) for
N1 and for N2 steps over the same epochs. The batches dump the counters when an epoch's first
batch is handed over and when its last is, so each run's counts split into the epochs' steps
(all but the last step of each epoch, with nothing of an epoch's start or end) and the edges
(fit's set-up, each epoch's end and the next one's start). Reported per contender:

- **per step**: the slope of the in-epoch counts, ``(steps(N2) - steps(N1)) / (N2 - N1)``: the
  cost of one training batch, whatever an epoch's end does (a checkpoint written only when
  ``val/loss`` improved would make a slope of whole runs depend on how training went);
- **per epoch edge**: an epoch's end plus the next one's start (validation, epoch metrics,
  checkpoints, progress lines), the mean over the N2 run's inner edges. The overhead section
  amortises it over an epoch's batches: per step + edge / batches per epoch.

``PYTHONHASHSEED`` is fixed. Repeated runs of the same contender list give per-step slopes
up to about ±8 thousand instructions apart (the heap's state, which the contenders run before
shapes, moves malloc's costs), and a rare run is off by far more, so read differences under
about 10k a step as noise and repeat a surprising one; the per-edge figures agree to within
about 1 %. Compare like with like (benchmarks/README.md has the measurements).

Needs ``valgrind`` (with its headers) and ``gcc``; about 5 minutes on an idle 2-core machine
(most of it valgrind starting torch).
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
from collections.abc import Iterator, Sequence
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
    """Warm up, then train each contender for each step count, dumping the counters at the
    edges of every epoch's steps (see :func:`_phased`)."""
    import torch

    from benchmarks.contenders import CONTENDERS
    from benchmarks.overhead import quiet
    from benchmarks.workload import RunContext, TimedBatches, Workload

    cg = ctypes.CDLL(helper)
    cg.busloop_cg_dump.argtypes = [ctypes.c_char_p]
    torch.set_num_threads(1)
    workload = Workload()
    data = {n: workload.batches(workload.per_epoch(n)) for n in steps}

    class Phased(TimedBatches):
        """Dumps ``<label>:edge`` when an epoch's first batch is handed over (what ran since:
        fit's set-up, or the previous epoch's end and this one's start) and ``<label>:steps``
        when its last is (the epoch's first n - 1 whole steps, nothing of its start or end).
        Without a label (the warm-up) it only hands the batches over."""

        def __init__(self, batches: Sequence[Any], label: str | None) -> None:
            super().__init__(batches)
            self.label = label

        def __iter__(self) -> Iterator[Any]:
            last, label = len(self.batches) - 1, self.label
            for index, batch in enumerate(self.batches):
                if label is not None and index == 0:
                    cg.busloop_cg_dump(f"{label}:edge".encode())
                if label is not None and index == last:
                    cg.busloop_cg_dump(f"{label}:steps".encode())
                yield batch

    with tempfile.TemporaryDirectory(prefix="busloop-instr-") as tmp:
        ctx = RunContext(workload, Path(tmp), workload.val_batches_list())

        def run(name: str, count: int, label: str | None) -> None:
            with quiet():
                CONTENDERS[name].fit(ctx, Phased(data[count], label))

        for name in contenders:  # first-run costs (lazy imports, caches) stay out of the counts
            run(name, steps[0], None)
        gc.collect()
        gc.freeze()
        cg.busloop_cg_start()
        for name in contenders:
            for count in steps:
                gc.collect()  # each run starts from the same collector state and runs none:
                gc.disable()  # see the module docstring
                cg.busloop_cg_zero()
                try:
                    run(name, count, f"{name}@{count}")
                finally:
                    gc.enable()
                cg.busloop_cg_dump(f"{name}@{count}:edge".encode())  # the last epoch's end


# ---------------------------------------------------------------------- the driver
def _parts(folder: Path) -> dict[str, list[int]]:
    """The dumps' totals by label (``contender@steps:steps`` / ``:edge``), in dump order."""
    parts: dict[str, list[tuple[int, int]]] = {}
    for path in folder.glob("cg.out.*"):
        label, total = None, None
        for line in path.read_text().splitlines():
            match = re.match(r"desc: Trigger: Client Request: (\S+)", line)
            if match:
                label = match.group(1)
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
        if label is not None and total is not None:
            parts.setdefault(label, []).append((int(path.name.rsplit(".", 1)[1]), total))
    return {label: [total for _, total in sorted(dumps)] for label, dumps in parts.items()}


def measure(
    contenders: Sequence[str] = DEFAULT_CONTENDERS, steps: tuple[int, int] = (100, 300)
) -> dict[str, Any]:
    """Run the worker under callgrind. Returns, per contender, the instructions per step (the
    slope of the in-epoch counts between the two runs) and per epoch edge (an epoch's end and
    the next one's start, validation included: the mean over the longer run's inner edges),
    and each one's difference to the first contender (the baseline)."""
    for tool in ("valgrind", "gcc"):
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
    result: dict[str, Any] = {
        "steps": [n1, n2],
        "per_step": {},
        "per_epoch_edge": {},
        "over_baseline": {},
    }
    for name in contenders:
        low, high = sum(parts[f"{name}@{n1}:steps"]), sum(parts[f"{name}@{n2}:steps"])
        result["per_step"][name] = (high - low) / (n2 - n1)
        inner_edges = parts[f"{name}@{n2}:edge"][1:-1]  # not fit's set-up, not the last epoch's end
        result["per_epoch_edge"][name] = sum(inner_edges) / max(len(inner_edges), 1)
    baseline = contenders[0]
    for name in contenders[1:]:
        result["over_baseline"][name] = {
            key: result[key][name] - result[key][baseline] for key in ("per_step", "per_epoch_edge")
        }
    return result


def _print(result: dict[str, Any]) -> None:
    n1, n2 = result["steps"]
    base = next(iter(result["per_step"]))
    print(
        f"Instructions (callgrind Ir): per step = slope of the in-epoch counts between {n1} and {n2} steps;"
    )
    print("per epoch edge = an epoch's end and the next one's start (validation included)")
    print(
        f"  {'contender':<20}{'per step':>12}{'over ' + base:>18}{'per epoch edge':>18}{'over ' + base:>18}"
    )
    for name, per_step in result["per_step"].items():
        edge = result["per_epoch_edge"][name]
        over = result["over_baseline"].get(name)
        extra = (
            ("", "")
            if over is None
            else (f"{over['per_step']:+,.0f}", f"{over['per_epoch_edge']:+,.0f}")
        )
        print(f"  {name:<20}{per_step:12,.0f}{extra[0]:>18}{edge:18,.0f}{extra[1]:>18}")


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
    result = measure(contenders, (n1, n2))
    print(json.dumps(result, indent=2) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        _print(result)


if __name__ == "__main__":
    main()
