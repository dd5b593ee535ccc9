"""Lightning's own callback tests, run against :class:`compat.Trainer`.

    python -m benchmarks.lightning_suite                       # the default files
    python -m benchmarks.lightning_suite test_timer.py -k max_time
    python -m benchmarks.lightning_suite --baseline            # real Lightning, for comparison
    python -m benchmarks.lightning_suite --json out.json --failures

The tests are Lightning's (``tests/`` of Lightning-AI/pytorch-lightning at tag 2.6.5), exported
into a scratch folder outside this project, never copied into it::

    git -C <lightning clone> archive 2.6.5 tests | tar -x -C /work/scratch18

A pytest plugin (:class:`SwapTrainer`) replaces ``lightning.pytorch.Trainer`` (also as
``lightning.pytorch.trainer.Trainer`` and ``lightning.pytorch.trainer.trainer.Trainer``) with
``compat.Trainer`` before the test modules are collected, so every ``Trainer(...)`` a test
builds is busloop's; callbacks, LightningModules and loggers stay Lightning's own. The run
prints passed / failed / skipped per file and, with ``--failures``, each failure's one-line
reason, the raw material for classifying what differs. Not a test suite of this project: the
counts are a measurement (see README, "Coming from Lightning").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

__all__ = ["DEFAULT_FILES", "SwapTrainer", "main"]

#: Where the exported Lightning tests live unless ``--tests`` says otherwise.
DEFAULT_TESTS = Path(os.environ.get("BUSLOOP_LIGHTNING_TESTS", "/work/scratch18/tests"))

#: The callback test files measured by default (in ``tests_pytorch/callbacks``).
DEFAULT_FILES = (
    "test_early_stopping.py",
    "test_lr_monitor.py",
    "test_timer.py",
    "test_gradient_accumulation_scheduler.py",
)

_TRAINER_MODULES = ("lightning.pytorch", "lightning.pytorch.trainer", "lightning.pytorch.trainer.trainer")


class SwapTrainer:
    """The pytest plugin: patches Lightning's Trainer at configure time (before collection)
    and tallies each test's outcome by file."""

    def __init__(self, swap: bool = True) -> None:
        self.swap = swap
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.failures: dict[str, list[tuple[str, str]]] = defaultdict(list)

    def pytest_configure(self, config: pytest.Config) -> None:
        if not self.swap:
            return
        import importlib

        from compat import Trainer

        for name in _TRAINER_MODULES:
            setattr(importlib.import_module(name), "Trainer", Trainer)  # noqa: B010

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        path = report.nodeid.split("::")[0]
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome: str = "skipped" if report.skipped else report.outcome
            if report.when == "setup" and report.failed:
                outcome = "error"
            self.outcomes[path][outcome] += 1
            if report.failed:
                self.failures[path].append((report.nodeid.split("::", 1)[-1], _reason(report)))
        elif report.when == "teardown" and report.failed:
            self.outcomes[path]["error"] += 1
            self.failures[path].append((report.nodeid.split("::", 1)[-1], "teardown: " + _reason(report)))


def _reason(report: pytest.TestReport) -> str:
    """The failure's last exception line (``Type: message``), shortened to one line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr).strip().splitlines()[-1]
    line = " ".join(text.split())
    return line[:240]


def _resolve(tests: Path, name: str) -> str:
    """A file name under ``tests_pytorch/callbacks`` (or a path relative to the tests folder)."""
    for candidate in (tests / name, tests / "tests_pytorch" / "callbacks" / name):
        if candidate.exists():
            return str(candidate.relative_to(tests))
    raise SystemExit(f"lightning_suite: no test file {name!r} under {tests}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lightning_suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="test files (default: the four starters)")
    parser.add_argument("--tests", type=Path, default=DEFAULT_TESTS, help="the exported tests/ folder")
    parser.add_argument("--baseline", action="store_true", help="run with Lightning's own Trainer")
    parser.add_argument("--failures", action="store_true", help="print each failure's reason")
    parser.add_argument("--json", type=Path, help="write counts and failures as JSON")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    ns = parser.parse_args(argv)
    tests = ns.tests.resolve()
    if not (tests / "tests_pytorch").is_dir():
        raise SystemExit(f"lightning_suite: {tests} holds no tests_pytorch/ (export Lightning's tests first)")
    files = [_resolve(tests, f) for f in (ns.files or DEFAULT_FILES)]
    plugin = SwapTrainer(swap=not ns.baseline)
    json_path = ns.json.resolve() if ns.json is not None else None
    sys.path.insert(0, str(tests))  # tests_pytorch.helpers
    os.chdir(tests)
    args = ["-q", "-p", "no:cacheprovider", f"--rootdir={tests}", "-W", "ignore", *files]
    if ns.keyword:
        args += ["-k", ns.keyword]
    pytest.main(args, plugins=[plugin])
    report: dict[str, Any] = {"trainer": "lightning" if ns.baseline else "compat.Trainer", "files": {}}
    print(f"\n{'file':<60} {'passed':>6} {'failed':>6} {'error':>6} {'skipped':>7}")
    for path in files:
        counts = plugin.outcomes.get(path, Counter())
        report["files"][path] = {"counts": dict(counts), "failures": plugin.failures.get(path, [])}
        print(f"{path:<60} {counts['passed']:>6} {counts['failed']:>6} {counts['error']:>6} {counts['skipped']:>7}")
        if ns.failures:
            for test, reason in plugin.failures.get(path, []):
                print(f"    {test}: {reason}")
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
