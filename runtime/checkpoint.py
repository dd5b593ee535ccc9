"""Checkpoint files: atomic writes and a ``weights_only``-safe format.

A busloop checkpoint is one ``dict`` per file, written with :func:`torch.save` and
read back with ``torch.load(path, weights_only=True)``. It therefore holds tensors,
numbers, strings, booleans, ``None``, ``torch.Size`` and lists / tuples / dicts of
those, nothing else: no pickled objects, so loading one never runs foreign code.

Writes are atomic: the bytes go to a temporary file in the destination folder,
which is fsynced and then renamed over the destination. A crash (even ``SIGKILL``)
in the middle of a write leaves either the old file or the new one, never a
truncated mix.

:func:`rng_state` / :func:`set_rng_state` capture every random generator the loop
draws from (Python, NumPy, torch CPU, CUDA) in that safe format, and
:func:`versions` records the package versions that wrote a checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import itertools
import logging
import os
import pickle
import platform
import random
import re
import time
import warnings
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from runtime import fast_pickle
from runtime.checkpoint_content import CheckpointError, check_weights_only_safe

__all__ = [
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "CheckpointError",
    "check_weights_only_safe",
    "is_lightning_checkpoint",
    "isolated_rng",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "versions",
]

log = logging.getLogger("busloop.checkpoint")

#: Key of the format version in every checkpoint busloop writes.
FORMAT_KEY = "busloop_format"
#: The format this version of busloop writes; it reads this one and older ones.
FORMAT_VERSION = 1

# ---------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories can't be opened)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:  # Windows, or a filesystem that refuses
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: Exclusive creation of a checkpoint's temporary file, never through a link.
_TEMPORARY_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_temporary_numbers = itertools.count()


def _create_temporary(path: Path) -> tuple[int, str]:
    """Create ``.<name>.<pid>-<n>.tmp`` beside ``path`` exclusively; return its fd and name.

    The mode is 0o666 less the umask, as a plain ``open()`` gives (the kernel applies the
    umask). Cheaper than ``tempfile.mkstemp``, which draws a random name in Python and creates
    0600 (then the umask had to be read and the mode changed). The process id and a counter
    make the name unique; a name a leftover holds is skipped. A missing folder is created.
    """
    prefix = os.path.join(os.fspath(path.parent), f".{path.name}.{os.getpid()}-")
    for _ in range(100):
        name = f"{prefix}{next(_temporary_numbers)}.tmp"
        try:
            return os.open(name, _TEMPORARY_FLAGS, 0o666), name
        except FileExistsError:
            continue
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
    raise FileExistsError(f"cannot create a temporary file beside {path}: every name tried exists")


#: The write buffer of a checkpoint file. torch.save hands its zip writer's output over record
#: by record (a header, the pickle, each tensor's bytes): through the default 8 KiB buffer a
#: small model's checkpoint took a dozen ``write`` calls, through this one it takes one (at the
#: flush); a record larger than the buffer still goes straight to the file, as before.
WRITE_BUFFER_BYTES = 1 << 16


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically and return the path.

    The dict is checked first (see :func:`check_weights_only_safe`); ``FORMAT_KEY`` is
    added when missing (the caller's dict is not modified). The bytes go to a hidden
    temporary file next to ``path`` (``.<name>.<pid>-<n>.tmp``), are flushed and fsynced,
    and the file is renamed over ``path``; then the folder is fsynced so the rename
    survives a power cut. On any failure the temporary file is removed and the error
    re-raised, and whatever was at ``path`` before is untouched.
    """
    path = Path(path)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"cannot save {type(checkpoint)} to {path}: a checkpoint is a dict")
    if FORMAT_KEY not in checkpoint:
        checkpoint = {FORMAT_KEY: FORMAT_VERSION, **checkpoint}
    try:
        check_weights_only_safe(dict(checkpoint))
    except CheckpointError as err:
        raise CheckpointError(f"cannot save {path}: {err}") from None

    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb", buffering=WRITE_BUFFER_BYTES) as handle:
            torch.save(dict(checkpoint), handle, pickle_module=fast_pickle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)
    _remove_stale_temporaries(path)
    log.debug("Saved checkpoint %s", path)
    return path


#: A temporary file untouched for this long belongs to a writer that died mid-write.
STALE_TEMPORARY_SECONDS = 60.0


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.*.tmp`` files that writers killed mid-write left beside ``path``.

    A live writer touches its temporary file continuously, so only files older than
    :data:`STALE_TEMPORARY_SECONDS` are removed.
    """
    now, prefix = time.time(), f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))  # cheaper than Path.glob (no pattern compiled)
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp") and len(name) >= len(prefix) + 4):
            continue
        try:
            if now - entry.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                os.unlink(entry.path)
                log.debug("Removed a stale temporary checkpoint file %s", entry.path)
        except OSError:
            pass


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    """The error for a file ``torch.load`` refused, in one line.

    torch's own message for a weights_only refusal advises retrying with
    ``weights_only=False``, which would run whatever the file holds: busloop never passes
    that advice on. A pickled object is named by its global (``GLOBAL io.open``); plain
    garbage shows up as an unsupported opcode or a zip-reader failure.
    """
    text = _ANSI.sub("", str(err)).strip()
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    reason = " ".join(match.group(1).split()) if match else ""
    if reason and not reason.startswith("Unsupported operand"):
        # "Unsupported global: GLOBAL x.Y was not an allowed global by default. Please use ..."
        for end in (" was not an allowed global", ". Please", ". Check"):
            cut = reason.find(end)
            reason = reason[:cut] if cut > 0 else reason
        return CheckpointError(
            f"{path} holds pickled objects that weights_only loading refuses: {reason} "
            "(loading them could run code, so busloop never does)"
        )
    if not reason and not isinstance(err, pickle.UnpicklingError):
        reason = text.splitlines()[0].split(". ")[0][:200] if text else ""
    detail = f"{type(err).__name__}: {reason}" if reason else type(err).__name__
    return CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated?): {detail}")


def is_lightning_checkpoint(checkpoint: Any) -> bool:
    """Whether ``checkpoint`` looks like a file written by Lightning's Trainer."""
    return (
        isinstance(checkpoint, Mapping)
        and "state_dict" in checkpoint
        and "pytorch-lightning_version" in checkpoint
    )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    map_location: Any = "cpu",
    weights_only: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and return its dict.

    Loads with ``weights_only=True`` unless told otherwise, so a file cannot run code.
    A Lightning checkpoint (``state_dict`` + ``pytorch-lightning_version``) is returned
    as is, without ``FORMAT_KEY``; the caller decides what to do with it.

    Raises :class:`CheckpointError` for a missing file, a corrupt or truncated file,
    a file holding pickled objects, a file that is no busloop checkpoint, and one
    written by a newer format than this version reads.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        with warnings.catch_warnings():  # the weights-only unpickler warns about foreign pickles
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._weights_only")
            checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, KeyError, ... here
        raise _unreadable(path, err) from err

    if is_lightning_checkpoint(checkpoint) and FORMAT_KEY not in checkpoint:
        return checkpoint  # written by Lightning (a busloop checkpoint carries Lightning's keys too)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path} is not a busloop checkpoint (it holds a {type(checkpoint).__name__}, "
            "not a dict)"
        )
    if FORMAT_KEY not in checkpoint:
        raise CheckpointError(f"{path} is not a busloop checkpoint (no {FORMAT_KEY!r} key)")
    version = checkpoint[FORMAT_KEY]
    if type(version) is not int:
        raise CheckpointError(f"{path} has an invalid {FORMAT_KEY!r}: {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written in checkpoint format {version}, newer than this busloop "
            f"reads ({FORMAT_VERSION}); upgrade busloop to load it"
        )
    return checkpoint


# ---------------------------------------------------------------------------------------
# Random generators
# ---------------------------------------------------------------------------------------


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


#: ``array`` type code of an unsigned 64-bit integer (``L`` is 4 bytes on Windows).
_WORD64 = "L" if array("L").itemsize == 8 else "Q"


def _python_words(internal: tuple[int, ...]) -> torch.Tensor:
    """``random``'s 625 state words (each below 2**32) as an int64 tensor.

    Packed through an ``array`` (a C loop over the ints, about a third of the instructions
    of ``torch.tensor(internal)``, which converts element by element through torch's
    generic sequence path; it runs at every epoch start and every checkpoint). The words
    are non-negative and below 2**63, so the unsigned array holds the same bits as int64.
    ``frombuffer`` shares the array's memory and keeps the array alive.
    """
    return torch.frombuffer(array(_WORD64, internal), dtype=torch.int64)


#: The global generators' states as their getters return them (see :func:`read_rng`).
RawRng = tuple[tuple[Any, ...], torch.Tensor, tuple[Any, ...] | None, list[torch.Tensor] | None]


def read_rng() -> RawRng:
    """Every global random generator's state as its getter returns it (each a copy that later
    draws do not change): ``random``'s, torch's CPU generator's, NumPy's legacy generator's
    (None without NumPy) and one per visible GPU (None without CUDA)."""
    np = _numpy()
    return (
        random.getstate(),
        torch.get_rng_state(),
        None if np is None else np.random.get_state(legacy=True),
        list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else None,
    )


def rng_form(raw: RawRng) -> dict[str, Any]:
    """:func:`read_rng`'s states in :func:`rng_state`'s ``weights_only``-safe form."""
    (version, internal, gauss_next), torch_state, numpy_state, cuda = raw
    state: dict[str, Any] = {"python": [version, _python_words(internal), gauss_next], "torch": torch_state}
    if numpy_state is not None:
        np = _numpy()
        assert np is not None  # the state was read through it
        name, keys, pos, has_gauss, cached_gaussian = numpy_state
        state["numpy"] = {
            "bit_generator": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        }
    if cuda is not None:
        state["cuda"] = cuda
    return state


def rng_state() -> dict[str, Any]:
    """Capture every global random generator, in a ``weights_only``-safe form.

    Keys: ``python`` (``random`` as ``[version, int64 tensor, gauss_next]``: the 625-word
    state as one tensor, which pickles as one storage instead of 625 objects, so a checkpoint
    write costs less; a list of ints, as older checkpoints hold, restores too), ``numpy``
    (NumPy's legacy global generator, when NumPy is importable), ``torch`` (the CPU
    generator's uint8 tensor) and ``cuda`` (one tensor per visible GPU, when CUDA is
    available). Restore it with :func:`set_rng_state`.
    """
    return rng_form(read_rng())


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators captured by :func:`rng_state`.

    Missing keys are left alone (a checkpoint from a run without NumPy, or without a
    GPU, restores what it has). CUDA states are restored for as many devices as both
    the checkpoint and this machine have; a mismatch is logged.
    """
    if "python" in state:
        version, internal, gauss_next = state["python"]
        words = internal.tolist() if isinstance(internal, torch.Tensor) else internal
        random.setstate((int(version), tuple(int(x) for x in words), gauss_next))
    if "torch" in state:
        torch.set_rng_state(_byte_tensor(state["torch"]))
    if "numpy" in state:
        np = _numpy()
        if np is None:
            log.warning("Checkpoint holds a NumPy random state but NumPy is not installed")
        else:
            saved = state["numpy"]
            keys = saved["keys"]
            keys = keys.cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
            np.random.set_state(
                (
                    saved["bit_generator"],
                    keys.astype(np.uint32),
                    int(saved["pos"]),
                    int(saved["has_gauss"]),
                    float(saved["cached_gaussian"]),
                )
            )
    if "cuda" in state:
        saved_cuda = list(state["cuda"])
        if not torch.cuda.is_available():
            if saved_cuda:
                log.warning("Checkpoint holds CUDA random states but CUDA is not available")
            return
        count = torch.cuda.device_count()
        if len(saved_cuda) != count:
            log.warning(
                "Checkpoint holds CUDA random states for %d device(s), this machine has %d; "
                "restoring the first %d",
                len(saved_cuda),
                count,
                min(count, len(saved_cuda)),
            )
        for index, device_state in enumerate(saved_cuda[:count]):
            torch.cuda.set_rng_state(_byte_tensor(device_state), index)


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without it changing any global random generator (all restored after it)."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def _byte_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.uint8)
    return torch.tensor(value, dtype=torch.uint8)


# ---------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------


@functools.cache
def _distribution_version(name: str) -> str | None:
    """The installed version of ``name``, looked up once per process.

    ``importlib.metadata.version`` scans the installed distributions (milliseconds), and
    every checkpoint records the versions: uncached, that was most of a small model's
    checkpoint write. What is installed does not change under a running process.
    """
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """Versions of Python, torch, busloop and, when installed, lightning and numpy."""
    found: dict[str, str] = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "busloop": _distribution_version("busloop") or "unknown",
    }
    for name in ("lightning", "numpy"):
        version = _distribution_version(name)
        if version is not None:
            found[name] = version
    return found
