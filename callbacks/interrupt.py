"""GracefulInterruptCallback: Ctrl+C / SIGTERM during ``fit`` saves ``resume.ckpt`` and stops.

What happens, in order::

    setup(stage="fit")   install SIGINT and SIGTERM handlers (main thread only; a signal
                         set to SIG_IGN stays ignored); the previous handlers are kept
    first signal         the handler only records it (no logging, no events: a signal
                         handler runs at an arbitrary bytecode boundary)
    next safe point      the warning "Saving interrupt checkpoint to <save_dir>/resume.ckpt"
                         is logged and ``interrupt_received(signal)`` is emitted; safe points
                         are train_batch_end, validation_batch_end and train_end
    train_batch_end      ``state.interrupted = True`` and ``request_stop``: the loop leaves
                         the epoch right after this batch, without validation or epoch end
    train_end            (this callback is first) write ``resume.ckpt``, upload it through
                         the tracker, finalise the tracker as "interrupted", restore the
                         handlers, then raise StopEvent: later train_end receivers (test,
                         export, convert on train end) do not run
    second signal        a line on stderr, "interrupted" written to the tracker's status file
                         (``status.txt`` of the run folder, when it has one), ``os._exit(1)``
    teardown / exception restore the previous handlers (if they are still ours)

Where the checkpoint is taken. The decision is made at the end of the training batch
that is running when the signal arrives (after every ``train_batch_end`` receiver: EMA and
friends have seen the batch), and the file is written in ``train_end``, where the loop
state is exactly the state at that batch boundary. ``Runtime.checkpoint_dict`` records it
as "batch ``b+1`` of epoch ``e`` done, validation pending if it was due", which is the
position ``Runtime.fit(ckpt_path=...)`` resumes bit for bit. A signal that arrives during
validation, the sanity check or an epoch end is acted on at the end of the next training
batch (the running validation finishes first; send the signal again to quit at once). A
signal after the last training batch (during the final validation) takes effect at
``train_end``: training is complete, ``resume.ckpt`` holds the finished state, and
resuming from it only runs the train-end callbacks that were skipped.

Per-batch cost. In one process the ``train_batch_end`` hook is left out of the event's
dispatch from each train epoch start until a signal arrives (the handler puts it back, in
its place, with one attribute assignment), so with no signal the event costs nothing per
batch. Under torchrun it stays in (it runs the vote every batch).

After a normal (uninterrupted) ``train_end`` the handlers are restored at once, so a Ctrl+C
in the train-end callbacks (testing, export) or in ``test``/``predict`` behaves like Python's
default (``KeyboardInterrupt``) and never writes ``resume.ckpt``.

Exit codes. ``Runtime.fit`` returns normally with ``state.interrupted`` True; ``busloop
train`` then exits 130 and logs the command that resumes. A second signal exits with 1
(``os._exit(1)``, as the reference does), deliberately different from the graceful 130 so
that a script can tell "resumable" from "killed mid-step".

Processes. DataLoader workers forked during fit inherit the Python handler; in a worker it
ignores the signal (a terminal's Ctrl+C reaches the whole process group, and a worker that
died from it would crash the main process's next fetch); the main process decides and the
workers end with the iterator. Under torchrun every rank installs the handlers and the
ranks agree on the interrupt without stalling the step: at each training batch end a rank
waits for the small vote it started at the previous batch end (long finished by then), reads
it (a CPU tensor, on a gloo group also under NCCL: no device sync) and starts the next one,
asynchronously. Every rank reads the same votes at the same batch, so all stop after the same
batch, one batch after the signal arrived; rank zero writes and uploads the file.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from runtime import distributed as dist
from runtime.bus import StopEvent
from runtime.callback import Callback
from runtime.loop import Runtime
from runtime.registry import register
from runtime.tracking import Tracker

log = logging.getLogger("busloop.callbacks")

__all__ = ["RESUME_FILENAME", "GracefulInterruptCallback"]

#: The name of the checkpoint a graceful interrupt writes.
RESUME_FILENAME = "resume.ckpt"

_HANDLED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

#: The exit code of the second signal (a hard exit, unlike the graceful stop's 130).
HARD_EXIT_CODE = 1


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@register()
class GracefulInterruptCallback(Callback):
    """On SIGINT/SIGTERM during fit: save ``<save_dir>/resume.ckpt``, stop, skip train-end.

    ``save_dir`` defaults to the run folder (``runtime.run_dir``), else the working
    directory. ``tracker`` receives the checkpoint as an artifact and is finalised as
    "interrupted"; it defaults to ``runtime.tracker``. Put this callback first: its
    ``train_end`` receiver must run before the others to skip them (the default set does).
    Only the first GracefulInterruptCallback of a runtime acts; later ones stay inactive.
    """

    def __init__(self, save_dir: str | None = None, tracker: Tracker | None = None) -> None:
        self.save_dir = save_dir
        self.tracker = tracker
        self.path: Path | None = None
        """Where ``resume.ckpt`` goes (resolved when fit starts)."""
        self.resume_path: Path | None = None
        """The checkpoint written by the last interrupt, or None (none, or the save failed)."""
        self.received: int | None = None
        """The first signal received during the current fit, or None."""
        self._previous: dict[int, Any] = {}
        self._handler = self._on_signal  # one bound method: compared when restoring
        self._pid: int | None = None
        self._status_path: Path | None = None
        self._noticed = False
        self._stopping = False
        self._sync = False
        self._vote: tuple[Any, torch.Tensor] | None = None
        """The vote started at the last training batch end (work handle, flags), if any."""
        self._batch_end: Any = None
        self._with_hook: tuple[Any, ...] = ()
        self._without_hook: tuple[Any, ...] | None = None

    # ------------------------------------------------------------------ signal handler
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Record the first signal; exit at once on the second. Nothing else happens here."""
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the main process handles the interrupt
        if self.received is None:
            self.received = signum
            self._arm()
            return
        message = (
            f"busloop: second {_signal_name(signum)} received, exiting immediately "
            f"(exit code {HARD_EXIT_CODE})\n"
        )
        try:
            os.write(2, message.encode())  # unbuffered: print/logging are unsafe in a handler
            self._write_final_status()
        finally:
            os._exit(HARD_EXIT_CODE)

    def _write_final_status(self) -> None:
        """The run's final status, before the hard exit: without it ``status.txt`` would say
        "running" forever. Plain ``os`` calls only (this runs inside the signal handler)."""
        if self._status_path is None:
            return
        try:
            fd = os.open(self._status_path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o644)
            try:
                os.write(fd, b"interrupted\n")
            finally:
                os.close(fd)
        except OSError:
            pass  # the exit must happen whatever the file system says

    # ------------------------------------------------------------------ installation
    @property
    def installed(self) -> bool:
        """Whether this callback's handlers are in place now."""
        return bool(self._previous)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "GracefulInterruptCallback: fit runs outside the main thread; signal handlers "
                "can only be installed in the main thread, so Ctrl+C is not handled gracefully"
            )
            return
        self._pid = os.getpid()
        for sig in _HANDLED_SIGNALS:
            previous = signal.getsignal(sig)
            if previous == signal.SIG_IGN:
                continue  # deliberately ignored (nohup, `cmd &`): keep it that way
            self._previous[sig] = previous
            signal.signal(sig, self._handler)

    def _restore(self) -> None:
        """Put the previous handlers back where ours are still installed."""
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            if signal.getsignal(sig) != self._handler:
                continue  # someone replaced ours during fit: leave theirs alone
            # None means "not installed from Python": the closest we can restore is SIG_DFL.
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    # ------------------------------------------------------------------ events
    def on_setup(self, runtime: Runtime, stage: str) -> None:
        if stage != "fit":
            return  # test/predict/validate (also when called inside fit) install nothing
        self.received, self._noticed, self._stopping, self._sync = None, False, False, False
        first = next(c for c in runtime.callbacks if isinstance(c, GracefulInterruptCallback))
        if first is not self:
            log.info("GracefulInterruptCallback is listed twice; only the first one acts")
            return
        base = self.save_dir or runtime.run_dir or Path.cwd()
        # Rank zero writes the file (only it has the run folder): every rank names its path.
        self.path = Path(dist.broadcast_object(str(Path(base) / RESUME_FILENAME)))
        self.resume_path = None
        self._sync = dist.is_available_and_initialized() and dist.world_size() > 1
        self._vote = None
        if self._sync:
            dist.control_group()  # created collectively, now, on every rank
        tracker = self.tracker if self.tracker is not None else runtime.tracker
        self._status_path = getattr(tracker, "status_path", None)
        receivers = getattr(runtime.bus.signal("train_end"), "dispatch", ())
        if receivers and getattr(receivers[0], "__self__", None) is not self:
            log.warning(
                "GracefulInterruptCallback is not the first train_end receiver; the train_end "
                "callbacks before it run after an interrupt and may change the checkpoint"
            )
        self._install()

    def on_train_epoch_start(self, runtime: Runtime) -> None:
        if self.installed and not self._sync and self.received is None:
            self._disarm(runtime)

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.received is None and not self._sync:
            return  # the per-batch cost when nothing happened: one attribute test
        if self._stopping:
            return
        signum = self._poll_vote() if self._sync else self.received
        if signum is None:
            return
        self._notice(runtime, signum, "at the end of this training batch")
        self._stop(runtime, signum)

    def on_validation_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        if self.received is not None and not self._noticed:
            self._notice(runtime, self.received, "after this validation, at the end of the next training batch")

    def on_train_end(self, runtime: Runtime) -> None:
        if not self.installed:
            return
        if not self._stopping:
            signum = self._agreed_signal(runtime)
            if signum is None:  # training ended normally: hand Ctrl+C back for train-end work
                self._restore()
                return
            self._notice(runtime, signum, "now: training has finished")  # after the last batch
            self._stop(runtime, signum)
        self._save(runtime)
        if dist.is_rank_zero():
            log.warning("Graceful shutdown, skipping all remaining train-end callbacks")
            tracker = self.tracker if self.tracker is not None else runtime.tracker
            try:
                if tracker is not None:
                    tracker.finalize("interrupted")  # after the last line for the run's log
            except Exception as exc:  # never turn a clean stop into a crash
                log.error("Could not finalise the tracker as interrupted: %s", exc)
        raise StopEvent

    def on_teardown(self, runtime: Runtime, stage: str) -> None:
        if stage == "fit":
            self._restore()
            self._arm()
            self.received, self._vote = None, None

    def on_exception(self, runtime: Runtime, exception: BaseException) -> None:
        self._restore()
        self._arm()

    # ------------------------------------------------------------------ per-batch hook
    def _disarm(self, runtime: Runtime) -> None:
        """Leave ``on_train_batch_end`` out of ``train_batch_end``'s dispatch until a signal
        arrives (one process: no vote to run), so that the event costs nothing per batch.

        Done at every train epoch start (after every callback's setup). Only the signal's
        cached ``dispatch`` tuple changes; the hook stays connected on the bus, so a connect
        or disconnect on the event (which rebuilds the tuple) puts it back in its place,
        where it costs one attribute test per batch, as it always did.
        """
        signal_ = runtime.bus.signal("train_batch_end")
        hook = self.on_train_batch_end
        with_hook = signal_.dispatch
        if hook not in with_hook:
            return
        self._batch_end, self._with_hook = signal_, with_hook
        self._without_hook = tuple(r for r in with_hook if r != hook)
        signal_.dispatch = self._without_hook
        if self.received is not None:  # the signal came during the lines above
            self._arm()

    def _arm(self) -> None:
        """Put the hook back in its place (from the signal handler; at teardown).

        The handler runs between two bytecodes of the main thread, possibly inside a bus
        call, so it calls nothing on the bus: one attribute assignment swaps the tuple back,
        and only if it is still the one :meth:`_disarm` left (a rebuilt one holds the hook).
        The loop reads the tuple at the next batch end, so the interrupt acts there.
        """
        signal_, without = self._batch_end, self._without_hook
        if signal_ is not None and without is not None and signal_.dispatch is without:
            signal_.dispatch = self._with_hook

    # ------------------------------------------------------------------ helpers
    def _start_vote(self) -> tuple[Any, torch.Tensor]:
        local = self.received or 0
        flags = torch.tensor([1.0 if local else 0.0, float(local)])
        return dist.start_all_reduce_sum(flags, dist.control_group()), flags

    def _read_vote(self, vote: tuple[Any, torch.Tensor]) -> int | None:
        """Any rank's signal from a finished vote (every rank reads the same), else None."""
        work, flags = vote
        if work is not None:
            work.wait()
        count, total = flags.tolist()
        if count == 0:
            return None
        return (self.received or 0) or round(total / count)

    def _poll_vote(self) -> int | None:
        """Read the vote started one batch ago and start the next (none after a decision)."""
        previous, self._vote = self._vote, None
        signum = self._read_vote(previous) if previous is not None else None
        if signum is None:
            self._vote = self._start_vote()
        return signum

    def _agreed_signal(self, runtime: Runtime) -> int | None:
        """At train end: this rank's signal; under DDP, any rank's, from the vote in flight
        and, if that finds none, one last vote (every rank gets the same answer)."""
        if not self._sync:
            return self.received
        previous, self._vote = self._vote, None
        signum = self._read_vote(previous) if previous is not None else None
        return signum if signum is not None else self._read_vote(self._start_vote())

    def _notice(self, runtime: Runtime, signum: int, when: str) -> None:
        """Log the warning and emit ``interrupt_received`` once per fit. The run's tracker
        writes the records it holds back (the local tracker's metric rows): a second signal
        ends the process with ``os._exit``, which would lose them."""
        if self._noticed:
            return
        self._noticed = True
        if dist.is_rank_zero():
            name = _signal_name(signum)
            log.warning(
                "Received %s: stopping %s. Saving interrupt checkpoint to %s (send %s again "
                "to exit immediately)", name, when, self.path, name,
            )
            try:
                if runtime.tracker is not None:
                    runtime.tracker.flush()
            except Exception as exc:  # never turn a clean stop into a crash
                log.error("Could not write the tracker's pending records: %s", exc)
        runtime.bus.event.interrupt_received.emit(runtime, signal=signum)

    def _stop(self, runtime: Runtime, signum: int) -> None:
        self._stopping = True
        runtime.state.interrupted = True
        runtime.request_stop(f"interrupted by {_signal_name(signum)}")

    def _save(self, runtime: Runtime) -> None:
        """Write and upload ``resume.ckpt``; failures are logged, never raised."""
        assert self.path is not None
        try:
            path = runtime.save_checkpoint(self.path)
        except Exception as exc:  # a failed save must not hide the stop
            log.error("Could not save the interrupt checkpoint to %s: %s", self.path, exc, exc_info=exc)
            return
        self.resume_path = path
        if not dist.is_rank_zero():
            return
        log.warning(
            "Interrupt checkpoint saved to %s; resume with `--resume %s` or trainer.resume_from",
            path,
            path,
        )
        tracker = self.tracker if self.tracker is not None else runtime.tracker
        if tracker is not None:
            try:
                tracker.log_artifact(path, kind="checkpoint")
            except Exception as exc:  # an unreachable tracker must not crash
                log.error("Could not upload the interrupt checkpoint %s: %s", path, exc)
