"""The default tracker: plain files in a numbered run folder.

```
runs/<N>-<run-name>/
  config.yaml  hparams.yaml  log.txt  metrics.jsonl  status.txt
  checkpoints/  images/<tag>/<step>.png  artifacts/
```

Everything the library logs through the ``busloop`` logger also lands in ``log.txt``
while the tracker is open.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import re
import shutil
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import yaml

from .base import Tracker, to_hwc_uint8

__all__ = ["FLUSH_INTERVAL", "MAX_PENDING_ROWS", "LocalTracker", "new_run_dir", "next_run_number", "run_dir_of"]

log = logging.getLogger("busloop.tracking")

_LIBRARY_LOGGER = "busloop"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RUN_PREFIX = re.compile(r"^(\d+)-")

FLUSH_INTERVAL = 5.0
"""Seconds after which a logged metric row is written with the next :meth:`LocalTracker.log_metrics`
call: ``tail -f metrics.jsonl`` follows training a few seconds behind at most while it logs."""
MAX_PENDING_ROWS = 1000
"""Metric rows kept in memory at most: the row that reaches it writes them all."""


def next_run_number(save_directory: str | os.PathLike[str]) -> int:
    """1 + the largest ``N`` among ``<N>-*`` folders in ``save_directory`` (0 when none)."""
    directory = Path(save_directory)
    if not directory.is_dir():
        return 0
    numbers = []
    for entry in directory.iterdir():
        match = _RUN_PREFIX.match(entry.name)
        if match and entry.is_dir():
            numbers.append(int(match.group(1)))
    return max(numbers) + 1 if numbers else 0


def _clean_run_name(run_name: str | None) -> str:
    if run_name is None or not str(run_name).strip():
        return "run-" + time.strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[\\/\s]+", "_", str(run_name).strip())
    return name.strip(".") or "run"


def new_run_dir(
    save_directory: str | os.PathLike[str] = "runs", run_name: str | None = None
) -> Path:
    """Create and return a fresh ``<save_directory>/<N>-<run_name>`` folder.

    ``run_name`` defaults to ``run-<YYYYmmdd-HHMMSS>``. When another process takes the
    same number at the same moment, the next number is used.
    """
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = _clean_run_name(run_name)
    number = next_run_number(directory)
    for _ in range(1000):
        candidate = directory / f"{number}-{name}"
        try:
            candidate.mkdir()
        except FileExistsError:
            number = max(number + 1, next_run_number(directory))
            continue
        return candidate
    raise RuntimeError(f"could not create a new run folder in {directory}")


def run_dir_of(path: str | os.PathLike[str]) -> Path | None:
    """The run folder that holds ``path`` (a checkpoint in it or below it), or None.

    A run folder is recognised by the ``status.txt`` and ``log.txt`` a LocalTracker keeps.
    """
    for folder in Path(path).absolute().parents:
        if (folder / "status.txt").is_file() and (folder / "log.txt").is_file():
            return folder
    return None


def _yaml_safe(value: Any) -> Any:
    """``value`` as plain YAML types: dicts, lists, str, numbers, bool, None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {
            (k if isinstance(k, (str, int, float, bool)) else str(k)): _yaml_safe(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_yaml_safe(v) for v in value]
    if isinstance(value, enum.Enum):
        return _yaml_safe(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)  # torch / numpy scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        try:
            return _yaml_safe(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def _write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    text = yaml.safe_dump(_yaml_safe(data), sort_keys=False, allow_unicode=True)
    path.write_text(text, encoding="utf-8")


class _LibraryLogLevel:
    """Lowers the ``busloop`` logger to INFO while at least one run log is attached."""

    users = 0
    saved_level: int | None = None

    @classmethod
    def acquire(cls) -> None:
        logger = logging.getLogger(_LIBRARY_LOGGER)
        if cls.users == 0 and logger.getEffectiveLevel() > logging.INFO:
            cls.saved_level = logger.level
            logger.setLevel(logging.INFO)
        cls.users += 1

    @classmethod
    def release(cls) -> None:
        cls.users = max(0, cls.users - 1)
        if cls.users == 0 and cls.saved_level is not None:
            logging.getLogger(_LIBRARY_LOGGER).setLevel(cls.saved_level)
            cls.saved_level = None


class LocalTracker(Tracker):
    """Writes a run's records as files in ``<save_directory>/<N>-<run_name>/``.

    ``N`` is one more than the largest number among the folders already there (0 for
    the first run). Pass ``run_dir`` to reopen an existing run folder instead (resume):
    metrics and the log are appended to.

    Files: ``metrics.jsonl`` (one JSON object per :meth:`log_metrics` call),
    ``hparams.yaml``, ``config.yaml`` (:meth:`save_config`), ``log.txt`` (everything
    logged to the ``busloop`` logger at INFO and above), ``status.txt`` ("running" until
    :meth:`finalize` writes the final status), ``images/<tag>/<step>.png`` and
    ``artifacts/``. ``checkpoints/`` is created for the runtime's checkpoints.

    When metric rows reach ``metrics.jsonl``. Encoding, writing and flushing one row cost
    about 100 µs of a training step right after the step's work (cold caches), so rows
    are kept in memory, in the order logged, and written together (one ``write`` and one
    ``flush``): by the first :meth:`log_metrics` at least ``flush_interval`` seconds after
    the last write, by the one that makes ``max_pending`` rows, by :meth:`flush`, by
    :meth:`resume_at` (before it reads the file) and by :meth:`finalize`; a row logged
    after :meth:`finalize` is written at once. The runtime calls :meth:`flush` at the end
    of each training epoch, before every checkpoint it writes, with the checkpoint's step
    (a resume drops the rows after that step and keeps the others without logging them
    again, so those are on disk before a kill can lose them: the pending ones are written
    then, and a row logged later at that step or before it is written at once), and at
    the end of each ``fit`` / ``validate`` / ``test`` / ``predict``. At
    interpreter exit, or when a tracker that was never finalised is garbage collected,
    the pending rows are written too. A process killed outright (SIGKILL, ``os._exit``)
    loses the rows logged since the last write. The file's bytes are those of one
    ``json.dumps(row) + "\\n"`` per call, as when every row was written at once.
    """

    run_dir: Path
    status_path: Path
    _run_dir_real: tuple[Path, str] | None = None  # (run_dir, its real path + separator)

    def __init__(
        self,
        save_directory: str | os.PathLike[str] = "runs",
        run_name: str | None = None,
        *,
        run_dir: str | os.PathLike[str] | None = None,
        flush_interval: float = FLUSH_INTERVAL,
        max_pending: int = MAX_PENDING_ROWS,
    ) -> None:
        self.status = None
        if run_dir is not None:
            self.run_dir = Path(run_dir).absolute()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            resumed = True
        else:
            self.run_dir = new_run_dir(save_directory, run_name).absolute()
            resumed = False
        self.run_name = self.run_dir.name
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.image_dir = self.run_dir / "images"
        self.artifact_dir = self.run_dir / "artifacts"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.checkpoint_dir.mkdir(exist_ok=True)
        self.image_dir.mkdir(exist_ok=True)
        self._hparams: dict[str, Any] = {}
        self._metrics_file: IO[str] | None = None
        self._rows: list[dict[str, Any]] = []  # logged, not yet written; in order
        self._flush_interval = float(flush_interval)
        self._max_pending = max(1, int(max_pending))
        self._flush_due = time.monotonic() + self._flush_interval
        self._checkpoint_step = -1  # rows at or before it are written when logged (flush)
        # the rows still pending at interpreter exit (or when this tracker is collected
        # unfinalised) are written; it holds the list, not the tracker
        self._rows_at_exit = weakref.finalize(self, _write_rows, self._rows, self.metrics_path, os.getpid())
        self.status_path = self.run_dir / "status.txt"
        self.status_path.write_text("running\n", encoding="utf-8")

        self._handler: logging.Handler | None = logging.FileHandler(
            self.run_dir / "log.txt", mode="a", encoding="utf-8"
        )
        self._handler.setLevel(logging.INFO)
        self._handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        logging.getLogger(_LIBRARY_LOGGER).addHandler(self._handler)
        _LibraryLogLevel.acquire()
        log.info("%s run folder %s", "Resuming in" if resumed else "New", self.run_dir)

    # -- records -------------------------------------------------------------------------

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Merge ``params`` into ``hparams.yaml`` (later calls update earlier keys)."""
        self._hparams.update(params)
        _write_yaml(self.run_dir / "hparams.yaml", self._hparams)

    def save_config(self, cfg_dict: Mapping[str, Any]) -> None:
        """Write the resolved configuration to ``config.yaml``, keys in their order."""
        _write_yaml(self.run_dir / "config.yaml", cfg_dict)

    def log_metrics(
        self, metrics: Mapping[str, float], step: int, epoch: int | None = None
    ) -> None:
        """Append ``{"step", "epoch", **metrics}`` as one line to ``metrics.jsonl``.

        The values are converted with ``float()`` here, so a tensor changed in place later
        cannot change the row and a value that is not a number raises at this call; the
        row is encoded and written later (see the class docstring), the check for that is
        one ``time.monotonic()`` per call.
        """
        step = int(step)
        record: dict[str, Any] = {
            "step": step,
            "epoch": None if epoch is None else int(epoch),
        }
        for name, value in metrics.items():
            if name in ("step", "epoch"):
                continue
            try:
                record[str(name)] = float(value)
            except (TypeError, ValueError) as err:
                raise TypeError(
                    f"metric {name!r} must be a number, got {type(value).__name__}: {err}"
                ) from None
        rows = self._rows
        rows.append(record)
        if step <= self._checkpoint_step or len(rows) >= self._max_pending or time.monotonic() >= self._flush_due:
            self.flush()

    def flush(self, checkpoint_step: int | None = None) -> None:
        """Write the pending metric rows to ``metrics.jsonl`` in one ``write`` and flush it.

        ``checkpoint_step``: a checkpoint of that step is about to be written; from now on a
        row at that step or before it is written when logged (see the class docstring).
        The rows leave memory before the write: when the write fails (disk full) its error
        is raised here and those rows are lost, as a row whose own write failed was before
        rows were kept.
        """
        if checkpoint_step is not None:
            self._checkpoint_step = max(self._checkpoint_step, int(checkpoint_step))
        rows = self._rows
        if not rows:
            return
        text = _encode(rows)
        rows.clear()
        self._flush_due = time.monotonic() + self._flush_interval
        file = self._metrics_file
        if file is None or file.closed:
            file = self._metrics_file = open(self.metrics_path, "a", encoding="utf-8")
        file.write(text)
        file.flush()

    def resume_at(self, step: int) -> None:
        """Drop the ``metrics.jsonl`` rows after ``step``: the resumed run writes its own from
        there, so each step is recorded once (rows that are not JSON are kept). Pending
        rows are written first, so they are judged like the others."""
        self.flush()
        if not self.metrics_path.exists():
            return
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not _after(line, step)]
        if len(kept) == len(lines):
            return
        temporary = self.metrics_path.with_suffix(".jsonl.tmp")
        temporary.write_text("".join(kept), encoding="utf-8")
        os.replace(temporary, self.metrics_path)
        log.info("metrics.jsonl: %d row(s) after step %d dropped (the run resumes there)", len(lines) - len(kept), step)

    def log_image(self, tag: str, image: Any, step: int) -> Path:
        """Save ``image`` as ``images/<tag>/<step>.png``; slashes in ``tag`` make folders."""
        from PIL import Image

        parts = [p for p in str(tag).replace("\\", "/").split("/") if p not in ("", ".", "..")]
        folder = self.image_dir.joinpath(*parts) if parts else self.image_dir / "image"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{int(step)}.png"
        Image.fromarray(to_hwc_uint8(image)).save(path, format="PNG")
        return path

    def log_artifact(self, path: str | os.PathLike[str], kind: str) -> Path:
        """Keep a copy of ``path`` in ``artifacts/`` unless it already lies in the run folder.

        Returns the artifact's path inside the run folder.
        """
        source = Path(path)
        real = os.path.realpath(source)  # what Path.resolve gives, without building Paths
        if not os.path.exists(real):
            raise FileNotFoundError(f"artifact ({kind}) not found: {source}")
        if os.path.join(real, "").startswith(self._real_run_dir()):  # inside, or the folder itself
            log.info("Artifact (%s): %s", kind, real)
            return Path(real)
        self.artifact_dir.mkdir(exist_ok=True)
        target = self.artifact_dir / source.name
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
        log.info("Artifact (%s) copied to %s", kind, target)
        return target

    def _real_run_dir(self) -> str:
        """The run folder's real path with a trailing separator, resolved once per run
        folder: every checkpoint a run uploads asks whether it lies inside."""
        cached = self._run_dir_real
        if cached is None or cached[0] is not self.run_dir:
            cached = (self.run_dir, os.path.join(os.path.realpath(self.run_dir), ""))
            self._run_dir_real = cached
        return cached[1]

    # -- end -----------------------------------------------------------------------------

    def _finalize(self, status: str) -> None:
        """Write the pending rows, then the final status (a failed write is recorded under
        it rather than raised: the status and the log must still be closed)."""
        try:
            self.flush()
        except OSError as exc:
            problem = f"metrics.jsonl: metric rows could not be written: {exc}"
            log.error("%s", problem)
            self.problems = (*self.problems, problem)
        self._rows_at_exit.detach()
        self._flush_due = -math.inf  # a row logged after the end is written at once
        lines = [status, *self.problems]  # the final status first, then the tracking problems
        self.status_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        log.info("Run finished: %s%s", status, " (with tracker problems, see status.txt)" if self.problems else "")
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        handler, self._handler = self._handler, None
        if handler is not None:
            logging.getLogger(_LIBRARY_LOGGER).removeHandler(handler)
            handler.close()
            _LibraryLogLevel.release()

    def __repr__(self) -> str:
        return f"LocalTracker(run_dir={str(self.run_dir)!r}, status={self.status!r})"


def _after(line: str, step: int) -> bool:
    """Whether a metrics.jsonl line is a record of a step after ``step``."""
    try:
        return int(json.loads(line)["step"]) > step
    except (ValueError, KeyError, TypeError):
        return False


def _encode(rows: list[dict[str, Any]]) -> str:
    """The ``metrics.jsonl`` lines of ``rows``: ``json.dumps(row) + "\\n"`` each."""
    return "".join([json.dumps(row) + "\n" for row in rows])


def _write_rows(rows: list[dict[str, Any]], path: Path, pid: int) -> None:
    """Append the rows a tracker still holds at interpreter exit (or when it is collected
    unfinalised). Only in the process that logged them: a forked child that exits normally
    holds a copy of the parent's rows, which the parent writes itself."""
    if rows and os.getpid() == pid:
        with open(path, "a", encoding="utf-8") as file:
            file.write(_encode(rows))
        rows.clear()
