"""GracefulInterruptCallback: real signals, resume.ckpt, exact resume in a fresh process.

The fast tests send the signal to the pytest process itself (the handler is a real Python
signal handler; pytest runs tests in the main thread). The slow ones run
``tests/scripts/interrupt_job.py`` and ``busloop train`` in subprocesses: a run interrupted
by SIGINT or SIGTERM at a chosen batch, resumed from ``resume.ckpt`` in another process,
must end bitwise identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
import pytest
import torch
import yaml
from torch import nn

from callbacks.interrupt import GracefulInterruptCallback
from conftest import base_config, make_loader, make_model
from runtime import Callback, Runtime
from runtime.checkpoint import load_checkpoint
from runtime.tracking import NullTracker

F = nn.functional
REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"
JOB = SCRIPTS / "interrupt_job.py"
BATCHES = 8  # interrupt_job: 64 training samples in batches of 8, 3 epochs -> 24 steps
STEPS = 3 * BATCHES


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SCRIPTS), str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run_jobs(jobs: list[dict[str, Any]], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(JOB), json.dumps(jobs)],
        capture_output=True, text=True, env=_env(), timeout=timeout, check=False,
    )


def _check(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)  # type: ignore[no-any-return]


def _assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested dicts / lists / tensors / numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ---------------------------------------------------------------------- in-process helpers
class SelfSignal(Callback):
    """Sends the running process ``sig`` while training batch (epoch, batch) runs (at its
    train_batch_start), or in a validation batch of ``val_epoch`` (not the sanity check)."""

    def __init__(self, epoch: int = 0, batch: int = 0, sig: int = signal.SIGINT, val_epoch: int | None = None) -> None:
        self.epoch, self.batch, self.sig, self.val_epoch = epoch, batch, sig, val_epoch
        self.sent = False

    def _send(self) -> None:
        self.sent = True
        os.kill(os.getpid(), self.sig)

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        if self.val_epoch is None and not self.sent and (runtime.state.epoch, batch_idx) == (self.epoch, self.batch):
            self._send()

    def on_validation_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        st = runtime.state
        if self.val_epoch == st.epoch and not st.sanity_checking and not self.sent:
            self._send()


class Recorder(Callback):
    """Records the events it sees (it comes after the interrupt callback)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.handlers: list[Any] = []

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        self.handlers.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.events.append(("batch", runtime.state.epoch, batch_idx))

    def on_validation_start(self, runtime: Runtime) -> None:
        self.events.append(("validation", runtime.state.epoch))

    def on_interrupt_received(self, runtime: Runtime, signal: int) -> None:
        self.events.append(("interrupt_received", signal))

    def on_train_end(self, runtime: Runtime) -> None:
        self.events.append(("train_end",))

    def on_fit_end(self, runtime: Runtime) -> None:
        self.events.append(("fit_end",))

    def on_teardown(self, runtime: Runtime, stage: str) -> None:
        self.events.append(("teardown", stage))


class RecordingTracker(NullTracker):
    """A tracker that remembers the artifacts it was given and how it was finalised."""

    def __init__(self) -> None:
        super().__init__()
        self.artifacts: list[tuple[Path, str]] = []
        self.statuses: list[str] = []

    def log_artifact(self, path: str | os.PathLike[str], kind: str) -> Path | None:
        assert Path(path).exists()
        self.artifacts.append((Path(path), kind))
        return Path(path)

    def _finalize(self, status: str) -> None:
        self.statuses.append(status)


def _runtime(callbacks: list[Any], tracker: Any = None, **trainer: Any) -> Runtime:
    cfg = base_config(**{"epochs": 2, "seed": 1, **trainer})
    cfg["scheduler"] = {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.5}}
    return Runtime(
        make_model(seed=2, dropout=0.2), callbacks, cfg, loss=F.cross_entropy,
        tracker=tracker if tracker is not None else NullTracker(),
    )


def _fit(rt: Runtime, ckpt: Any = None) -> Any:
    return rt.fit(make_loader(shuffle=True), make_loader(32), ckpt_path=ckpt)  # 6 train batches


def _marker(signum: int, frame: FrameType | None) -> None:
    """A stand-in 'previous' handler (never called in these tests)."""


@pytest.fixture
def previous_handlers() -> Iterator[tuple[Callable[..., Any], Callable[..., Any]]]:
    """Install recognisable SIGINT / SIGTERM handlers for the test, then put pytest's back."""
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def int_marker(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, int_marker)
    signal.signal(signal.SIGTERM, _marker)
    try:
        yield int_marker, _marker
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


# ---------------------------------------------------------------------- fast, in-process
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_saves_stops_and_skips_later_train_end_callbacks(tmp_path: Path, sig: int) -> None:
    tracker = RecordingTracker()
    interrupt, recorder = GracefulInterruptCallback(save_dir=str(tmp_path / "out")), Recorder()
    rt = _runtime([interrupt, SelfSignal(0, 2, sig), recorder], tracker=tracker)
    state = _fit(rt)

    name = signal.Signals(sig).name
    assert state.interrupted and state.stop_reason == f"interrupted by {name}"
    path = tmp_path / "out" / "resume.ckpt"
    assert interrupt.resume_path == path and path.exists()
    loop = load_checkpoint(path)["loop"]
    assert (loop["epoch"], loop["batch_idx"], loop["epoch_done"]) == (0, 3, False)
    # the batch that got the signal finished (all its batch-end receivers ran), then nothing:
    # no validation, no epoch end, no train_end for the callbacks after the interrupt
    assert recorder.events == [
        ("batch", 0, 0), ("batch", 0, 1), ("interrupt_received", sig), ("batch", 0, 2),
        ("fit_end",), ("teardown", "fit"),
    ]
    assert tracker.artifacts == [(path, "checkpoint")]
    assert tracker.statuses == ["interrupted"]


def test_messages_and_no_duplicate_action(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second = GracefulInterruptCallback(save_dir=str(tmp_path)), GracefulInterruptCallback(save_dir=str(tmp_path / "2"))
    rt = _runtime([first, second, SelfSignal(1, 0)])
    with caplog.at_level("INFO", logger="busloop"):
        _fit(rt)
    text = caplog.text
    assert f"Saving interrupt checkpoint to {tmp_path / 'resume.ckpt'}" in text
    assert "Graceful shutdown, skipping all remaining train-end callbacks" in text
    assert "listed twice" in text and not (tmp_path / "2").exists()


def test_handlers_only_during_fit_and_restored_after(tmp_path: Path, previous_handlers: Any) -> None:
    int_marker, term_marker = previous_handlers
    interrupt, recorder = GracefulInterruptCallback(save_dir=str(tmp_path)), Recorder()
    rt = _runtime([interrupt, recorder], epochs=1)

    _fit(rt)  # a normal fit
    ours = interrupt._handler
    assert set(recorder.handlers) == {(ours, ours)}
    assert signal.getsignal(signal.SIGINT) is int_marker and signal.getsignal(signal.SIGTERM) is term_marker

    rt.test(make_loader(32))  # test and predict install nothing
    rt.predict(make_loader(32))
    assert signal.getsignal(signal.SIGINT) is int_marker

    class Boom(Callback):
        def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
            raise ValueError("boom")

    failing = _runtime([GracefulInterruptCallback(save_dir=str(tmp_path)), Boom()])
    with pytest.raises(Exception, match="boom"):
        _fit(failing)
    assert signal.getsignal(signal.SIGINT) is int_marker and signal.getsignal(signal.SIGTERM) is term_marker

    interrupted = _runtime([GracefulInterruptCallback(save_dir=str(tmp_path)), SelfSignal(0, 1, signal.SIGTERM)])
    assert _fit(interrupted).interrupted
    assert signal.getsignal(signal.SIGINT) is int_marker and signal.getsignal(signal.SIGTERM) is term_marker

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # an ignored signal stays ignored during fit
    ignoring, recorder = GracefulInterruptCallback(save_dir=str(tmp_path)), Recorder()
    _fit(_runtime([ignoring, recorder], epochs=1))
    assert set(recorder.handlers) == {(ignoring._handler, signal.SIG_IGN)}
    assert signal.getsignal(signal.SIGINT) is int_marker and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


@pytest.mark.parametrize("stage", ["test", "predict"])
def test_ctrl_c_in_test_or_predict_raises_and_writes_nothing(tmp_path: Path, stage: str) -> None:
    class CtrlC(Callback):
        def _hit(self, batch_idx: int) -> None:
            if batch_idx == 1:
                os.kill(os.getpid(), signal.SIGINT)

        def on_test_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
            self._hit(batch_idx)

        def on_predict_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
            self._hit(batch_idx)

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    rt = _runtime([GracefulInterruptCallback(save_dir=str(tmp_path)), CtrlC()], epochs=1)
    _fit(rt)  # a fit first: its handlers must be gone afterwards
    with pytest.raises(KeyboardInterrupt):
        getattr(rt, stage)(make_loader(64, batch_size=16))
    assert not list(tmp_path.rglob("*.ckpt"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signal_during_validation_acts_after_the_next_training_batch(tmp_path: Path) -> None:
    recorder = Recorder()
    rt = _runtime([GracefulInterruptCallback(save_dir=str(tmp_path)), SelfSignal(val_epoch=0), recorder], epochs=3)
    state = _fit(rt)
    assert state.interrupted and state.global_step == 7
    # noticed (warning, event) in the next validation batch; acted on after batch 0 of epoch 1
    assert recorder.events[-6:] == [
        ("batch", 0, 5), ("validation", 0), ("interrupt_received", signal.SIGINT), ("batch", 1, 0),
        ("fit_end",), ("teardown", "fit"),
    ]
    assert load_checkpoint(tmp_path / "resume.ckpt")["loop"]["batch_idx"] == 1


def test_signal_in_the_final_validation_stops_at_train_end_and_resume_runs_it(tmp_path: Path) -> None:
    """Training is complete; resume.ckpt holds the end state, and resuming from it runs the
    train-end callbacks that the interrupt skipped."""
    recorder = Recorder()
    rt = _runtime([GracefulInterruptCallback(save_dir=str(tmp_path)), SelfSignal(val_epoch=1), recorder])
    state = _fit(rt)
    assert state.interrupted and state.global_step == 12 and ("train_end",) not in recorder.events
    checkpoint = load_checkpoint(tmp_path / "resume.ckpt")
    assert checkpoint["loop"]["epoch"] == 2

    again = Recorder()
    resumed = _runtime([GracefulInterruptCallback(save_dir=str(tmp_path / "r")), again])
    state = _fit(resumed, ckpt=tmp_path / "resume.ckpt")
    assert not state.interrupted and state.global_step == 12
    assert [e for e in again.events if e[0] in ("batch", "train_end")] == [("train_end",)]


def test_save_failure_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    interrupt = GracefulInterruptCallback(save_dir=str(blocker / "sub"))
    rt = _runtime([interrupt, SelfSignal(0, 1)], tracker=RecordingTracker())
    with caplog.at_level("ERROR", logger="busloop"):
        state = _fit(rt)
    assert state.interrupted and interrupt.resume_path is None
    assert "Could not save the interrupt checkpoint" in caplog.text
    assert rt.tracker.artifacts == [] and rt.tracker.statuses == ["interrupted"]  # type: ignore[union-attr]


def test_save_dir_defaults_to_the_run_folder(tmp_path: Path) -> None:
    cfg = base_config(epochs=1, seed=0)
    cfg["tracker"] = {"save_directory": str(tmp_path / "runs"), "run_name": "x"}
    rt = Runtime(make_model(), [GracefulInterruptCallback(), SelfSignal(0, 0)], cfg, loss=F.cross_entropy)
    with rt:
        state = _fit(rt)
    assert state.interrupted and rt.run_dir is not None
    assert (rt.run_dir / "resume.ckpt").exists()
    assert (rt.run_dir / "status.txt").read_text().strip() == "interrupted"
    assert "Graceful shutdown, skipping" in (rt.run_dir / "log.txt").read_text()


def test_resume_through_trainer_resume_from_is_exact(tmp_path: Path) -> None:
    straight = _runtime([], epochs=3)
    _fit(straight)
    _fit(_runtime([GracefulInterruptCallback(save_dir=str(tmp_path)), SelfSignal(1, 2)], epochs=3))
    resumed = _runtime([], epochs=3, resume_from=str(tmp_path / "resume.ckpt"))
    _fit(resumed)
    _assert_identical(straight.model.state_dict(), resumed.model.state_dict(), "weights")
    _assert_identical(straight.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")  # type: ignore[union-attr]
    _assert_identical(straight.state.history, resumed.state.history, "history")


def test_nothing_installed_outside_the_main_thread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    recorder = Recorder()
    rt = _runtime([GracefulInterruptCallback(save_dir=str(tmp_path)), recorder], epochs=1)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            _fit(rt)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with caplog.at_level("WARNING", logger="busloop"):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert not errors
    assert set(recorder.handlers) == {before}
    assert "outside the main thread" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("kill", [(0, 2), (1, 2)])
def test_resume_with_persistent_workers_is_exact(tmp_path: Path, kill: tuple[int, int]) -> None:
    """The skip must not stay in the persistent iterator, and replaying a later epoch must not
    draw the base seed that the uninterrupted run drew only once, at its first epoch."""

    def loader() -> Any:
        return make_loader(shuffle=True, num_workers=2, persistent_workers=True)

    straight = _runtime([], epochs=3)
    straight.fit(loader())
    _runtime([GracefulInterruptCallback(save_dir=str(tmp_path)), SelfSignal(*kill)], epochs=3).fit(loader())
    resumed = _runtime([], epochs=3)
    state = resumed.fit(loader(), ckpt_path=tmp_path / "resume.ckpt")
    assert state.global_step == straight.state.global_step
    _assert_identical(straight.model.state_dict(), resumed.model.state_dict(), "weights")


# ---------------------------------------------------------------------- subprocesses
@attrs.frozen
class Case:
    """One interrupted run: where, by which signal, with which loader and callbacks."""

    name: str
    kill: tuple[int, int]
    signal: str
    workers: int
    augment: bool = False
    ema: bool = False
    accumulate: int = 1

    @property
    def variant(self) -> str:
        acc = f"-acc{self.accumulate}" if self.accumulate > 1 else ""
        return f"w{self.workers}{'-aug' if self.augment else ''}{'-ema' if self.ema else ''}{acc}"

    def job(self, out: Path, **extra: Any) -> dict[str, Any]:
        return {
            "out": str(out), "workers": self.workers, "augment": self.augment, "ema": self.ema,
            "accumulate": self.accumulate, **extra,
        }

    def steps(self, epoch: int, done: int) -> int:
        """Optimizer steps after ``done`` batches of ``epoch`` (a short last window steps too)."""
        per_epoch = -(-BATCHES // self.accumulate)
        return epoch * per_epoch + done // self.accumulate + (done == BATCHES and done % self.accumulate != 0)


# Every interrupt point (mid, first and last batch of an epoch) with each signal and each
# worker count; augmentation noise only with 0 workers (see the module docstring of
# callbacks/interrupt.py: with workers, per-worker RNG streams cannot be replayed without
# loading the skipped batches).
CASES = [
    Case("mid-SIGINT-w0-aug", (1, 3), "SIGINT", 0, augment=True),
    Case("mid-SIGTERM-w2", (0, 4), "SIGTERM", 2),
    Case("first-SIGINT-w2", (1, 0), "SIGINT", 2),
    Case("first-SIGTERM-w0-aug", (2, 0), "SIGTERM", 0, augment=True),
    Case("last-SIGINT-w0", (0, BATCHES - 1), "SIGINT", 0),
    Case("last-SIGTERM-w2", (1, BATCHES - 1), "SIGTERM", 2),
    Case("ema-mid-SIGINT-w0-aug", (1, 5), "SIGINT", 0, augment=True, ema=True),
    Case("ema-last-SIGTERM-w2", (0, BATCHES - 1), "SIGTERM", 2, ema=True),
    # accumulate_grad_batches=3: windows [0, 1, 2] [3, 4, 5] [6, 7]; interrupted inside one
    Case("acc3-first-of-window-SIGINT-w2", (1, 3), "SIGINT", 2, accumulate=3),
    Case("acc3-second-of-window-SIGTERM-w0-aug", (0, 4), "SIGTERM", 0, augment=True, accumulate=3),
    Case("acc3-short-window-SIGINT-w0", (2, 6), "SIGINT", 0, accumulate=3),
]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs every case: phase 1 (one process per worker count) trains the uninterrupted
    baselines and the interrupted runs; phase 2 (fresh processes) resumes each resume.ckpt.
    Returns the processes' outputs and the folders of the results."""
    root = tmp_path_factory.mktemp("interrupt-matrix")
    cases = CASES
    phase1: dict[int, list[dict[str, Any]]] = {0: [], 2: []}
    for variant in sorted({c.variant for c in cases}):
        case = next(c for c in cases if c.variant == variant)
        phase1[case.workers].append(case.job(root / "baseline" / variant))
    for case in cases:
        phase1[case.workers].append(
            case.job(root / "interrupted" / case.name, kill=list(case.kill), signal=case.signal)
        )
    with ThreadPoolExecutor(2) as pool:
        first = dict(zip(phase1, pool.map(_run_jobs, phase1.values()), strict=True))
    for proc in first.values():
        _check(proc)
    phase2: dict[int, list[dict[str, Any]]] = {0: [], 2: []}
    for case in cases:
        ckpt = root / "interrupted" / case.name / "resume.ckpt"
        if ckpt.exists():
            phase2[case.workers].append(case.job(root / "resumed" / case.name, resume=str(ckpt)))
    with ThreadPoolExecutor(2) as pool:
        second = dict(zip(phase2, pool.map(_run_jobs, phase2.values()), strict=True))
    for proc in second.values():
        _check(proc)
    return {"root": root, "phase1": first}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_interrupted_and_resumed_run_is_bitwise_identical(matrix: dict[str, Any], case: Case) -> None:
    root: Path = matrix["root"]
    interrupted = _load(root / "interrupted" / case.name / "result.pt")
    epoch, batch = case.kill
    assert interrupted["interrupted"] and interrupted["global_step"] == case.steps(epoch, batch + 1)
    default = [str(signal.default_int_handler), str(int(signal.SIG_DFL))]
    assert interrupted["handlers"] == default  # restored after the interrupted fit
    checkpoint = load_checkpoint(root / "interrupted" / case.name / "resume.ckpt")
    assert (checkpoint["loop"]["epoch"], checkpoint["loop"]["batch_idx"]) == (epoch, batch + 1)
    stderr = matrix["phase1"][case.workers].stderr
    assert f"Saving interrupt checkpoint to {root / 'interrupted' / case.name / 'resume.ckpt'}" in stderr

    baseline = _load(root / "baseline" / case.variant / "result.pt")
    resumed = _load(root / "resumed" / case.name / "result.pt")
    assert baseline["global_step"] == resumed["global_step"] == case.steps(3, 0)
    if case.accumulate > 1:
        assert checkpoint["loop"]["grads"] is not None  # inside a window: its gradients are kept
    assert not resumed["interrupted"]
    for key in ("weights", "optimizer", "schedulers", "history", "ema"):
        _assert_identical(baseline[key], resumed[key], key)
    assert any(s["momentum_buffer"] is not None for s in resumed["optimizer"]["state"].values())
    if case.ema:
        assert resumed["ema"] and resumed["ema"]["updates"] == STEPS
    # the interrupted run really differed from the baseline at the interrupt (not a no-op)
    assert not all(torch.equal(v, interrupted["weights"][k]) for k, v in baseline["weights"].items())


@pytest.mark.slow
def test_second_signal_exits_immediately(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    sentinel = out / "resume.ckpt"
    sentinel.write_bytes(b"an older resume checkpoint")
    start = time.monotonic()
    runs = tmp_path / "runs"
    proc = _run_jobs([{"out": str(out), "kill": [0, 2], "signal": "SIGINT", "times": 2, "runs": str(runs)}])
    assert proc.returncode == 1, proc.stderr[-3000:]
    # the run folder records how the run ended, not "running" forever (issue #16)
    assert (runs / "0-job" / "status.txt").read_text() == "interrupted\n"
    assert "second SIGINT received, exiting immediately" in proc.stderr
    assert "Graceful shutdown" not in proc.stderr and not (out / "result.pt").exists()
    assert sentinel.read_bytes() == b"an older resume checkpoint"  # not rewritten
    assert not [p for p in out.iterdir() if p.name != "resume.ckpt"]  # no temporary file left
    assert time.monotonic() - start < 120


@pytest.mark.slow
def test_cli_ctrl_c_to_the_process_group_exits_130_and_resume_finishes(tmp_path: Path) -> None:
    """``busloop train`` with 2 loader workers gets SIGINT on its whole process group (what a
    terminal's Ctrl+C does): exit 130 and a resume command; ``--resume`` then finishes."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    config = {
        "model": {"factory": "interrupt_job:build_model"},
        "data": {"factory": "interrupt_job:build_loaders"},
        "loss": "torch.nn.functional:cross_entropy",
        "optimizer": {"name": "SGD", "params": {"lr": 0.05, "momentum": 0.9}},
        "scheduler": {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.7}, "interval": "epoch"},
        "trainer": {
            "epochs": 3, "batch_size": 8, "num_workers": 2, "seed": 7, "accelerator": "cpu",
            "num_sanity_val_steps": 0, "rich_logging": False, "smart_cfg_auto_populate": False,
            # GracefulInterruptCallback comes from the default set (first)
            "callbacks": [
                {"name": "interrupt_job:Handshake", "params": {"ready": str(ready), "go": str(go), "step": 3}},
            ],
        },
        "tracker": {"save_directory": "runs", "run_name": "cli"},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    busloop = [sys.executable, "-m", "runtime.cli"]
    child = subprocess.Popen(
        [*busloop, "train", str(path)], cwd=tmp_path, env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), child.communicate(timeout=30)
        os.killpg(child.pid, signal.SIGINT)  # the main process and its loader workers
        go.touch()
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, stderr[-4000:]
    assert "Training interrupted in epoch 1/3 (4 steps)" in stderr and "Training finished" not in stderr
    match = re.search(r"resume with: (busloop train .*--resume (\S+))", stderr)
    assert match, stderr[-4000:]
    resume = Path(match.group(2))
    run_dir = tmp_path / resume.parent
    assert (tmp_path / resume).exists() and (run_dir / "status.txt").read_text().strip() == "interrupted"
    assert load_checkpoint(tmp_path / resume)["global_step"] == 4  # the batch after the handshake's
    assert "DataLoader worker" not in stderr

    proc = subprocess.run(
        [*busloop, "train", str(path), "--resume", str(resume)], cwd=tmp_path, env=_env(),
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Resumed from" in proc.stderr and f"Training finished after 3 epochs ({STEPS} steps)" in proc.stderr


@pytest.mark.parametrize("kill", [(0, 0), (1, 3), (1, 4)], ids=["first-of-epoch0", "first-of-window", "second-of-window"])
def test_resume_mid_accumulation_window_is_exact(tmp_path: Path, kill: tuple[int, int]) -> None:
    """accumulate_grad_batches=3 over 6 batches: windows [0, 1, 2] and [3, 4, 5]. An interrupt
    after one or two micro-batches of a window must resume with their gradients (issue #16)."""
    straight = _runtime([], epochs=2, accumulate_grad_batches=3)
    _fit(straight)
    interrupted = _runtime([GracefulInterruptCallback(save_dir=str(tmp_path)), SelfSignal(*kill)], epochs=2, accumulate_grad_batches=3)
    assert _fit(interrupted).interrupted
    loop = load_checkpoint(tmp_path / "resume.ckpt")["loop"]
    assert loop["batch_idx"] % 3 != 0  # the checkpoint lies inside a window
    resumed = _runtime([], epochs=2, accumulate_grad_batches=3)
    state = _fit(resumed, ckpt=tmp_path / "resume.ckpt")
    assert state.global_step == straight.state.global_step == 4
    _assert_identical(straight.model.state_dict(), resumed.model.state_dict(), "weights")
    _assert_identical(straight.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")  # type: ignore[union-attr]
    _assert_identical(straight.state.history, resumed.state.history, "history")


# ---------------------------------------------------------------------- the per-batch hook
class DispatchWatcher(Callback):
    """Records, at every train batch start, whether the interrupt's batch-end hook is in
    train_batch_end's dispatch; optionally connects a receiver at run time (a rebuild)."""

    def __init__(self, interrupt: GracefulInterruptCallback, connect_at: tuple[int, int] | None = None) -> None:
        self.interrupt, self.connect_at = interrupt, connect_at
        self.seen: list[tuple[int, int, bool]] = []

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        st = runtime.state
        if (st.epoch, batch_idx) == self.connect_at:
            runtime.bus.connect("train_batch_end", _late_receiver)
        hooked = self.interrupt.on_train_batch_end in runtime.bus.signal("train_batch_end").dispatch
        self.seen.append((st.epoch, batch_idx, hooked))


def _late_receiver(runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
    """A receiver connected during training (it rebuilds the event's dispatch)."""


def test_the_batch_end_hook_is_left_out_until_a_signal_and_the_stop_is_still_at_that_batch(tmp_path: Path) -> None:
    """One process: the interrupt's train_batch_end hook is not dispatched before a signal
    (the event costs nothing per batch); the signal handler puts it back in first place, so
    the stop, the warning and interrupt_received happen at the end of the running batch."""
    interrupt, recorder = GracefulInterruptCallback(save_dir=str(tmp_path)), Recorder()
    watcher = DispatchWatcher(interrupt)
    rt = _runtime([interrupt, watcher, SelfSignal(epoch=1, batch=2), recorder], epochs=3)
    state = _fit(rt)
    assert state.interrupted and state.global_step == 6 + 3
    assert [hooked for _, _, hooked in watcher.seen] == [False] * 9  # until the signal (in batch 1/2)
    assert recorder.events[-4:] == [("interrupt_received", signal.SIGINT), ("batch", 1, 2), ("fit_end",), ("teardown", "fit")]
    assert load_checkpoint(tmp_path / "resume.ckpt")["loop"]["batch_idx"] == 3
    # after fit the event's dispatch is the bus's again (the hook first, as connected)
    assert rt.bus.signal("train_batch_end").dispatch[0] == interrupt.on_train_batch_end


def test_a_receiver_connected_mid_epoch_brings_the_hook_back_and_the_signal_still_stops(tmp_path: Path) -> None:
    """A connect during training rebuilds the dispatch from the bus: the hook is back (its
    one-attribute test per batch) and a signal after that still stops at its batch end."""
    interrupt, recorder = GracefulInterruptCallback(save_dir=str(tmp_path)), Recorder()
    watcher = DispatchWatcher(interrupt, connect_at=(0, 1))
    rt = _runtime([interrupt, watcher, SelfSignal(epoch=0, batch=4), recorder], epochs=3)
    state = _fit(rt)
    assert state.interrupted and state.global_step == 5
    assert [hooked for _, _, hooked in watcher.seen] == [False, True, True, True, True]
    assert ("interrupt_received", signal.SIGINT) in recorder.events
    assert load_checkpoint(tmp_path / "resume.ckpt")["loop"]["batch_idx"] == 5
