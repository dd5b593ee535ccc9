"""ArchiveOnTrainEnd: pack the exported ONNX model and its config into an NN Archive.

At ``train_end`` (rank zero) it takes the ONNX file an ExportOnTrainEnd earlier in the list
produced and verified, or exports the best checkpoint itself (same rules and verification),
builds the ``config.json`` (:mod:`callbacks.archive.build`) and writes
``<run>/archive/<name>.onnx.tar.xz`` (:mod:`callbacks.archive.tarball`). The archive is
uploaded through the tracker and ``artifact_produced(kind="archive", path)`` is emitted.
Problems are logged as errors and do not fail the finished training run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from callbacks.archive.build import build_config
from callbacks.archive.config import ArchiveConfig, Head
from callbacks.archive.tarball import COMPRESSIONS, ArchiveError, write_archive
from callbacks.artifacts import publish_artifact
from callbacks.best_checkpoint import check_preferred
from callbacks.export import ExportOnTrainEnd, ExportResult, export_name, skip_sharded
from callbacks.onnx_tools import ExportError
from runtime.callback import Callback
from runtime.config import ConfigError
from runtime.config_convert import structure
from runtime.distributed import is_rank_zero
from runtime.loop import Runtime
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["ArchiveOnTrainEnd", "archive_export", "archive_options"]


def archive_options(
    compression: str, heads: list[dict[str, Any]] | None
) -> tuple[str, list[Head] | None]:
    """Check the archive settings Archive and Convert share: the compression name and the
    heads (structured into :class:`Head` s, so a bad head fails at construction)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    return compression, None if heads is None else structure(heads, list[Head])


def archive_export(
    runtime: Runtime,
    export: ExportResult,
    *,
    heads: list[Head] | None = None,
    compression: str = "xz",
) -> tuple[Path, ArchiveConfig]:
    """Archive a verified export into ``<run>/archive/``; publish it; return path and config."""
    config = build_config(
        export.path, runtime.config, name=export_name(runtime.config), heads=heads,
        model=runtime.model,
    )  # fmt: skip
    out_dir = (runtime.run_dir or Path.cwd()) / "archive"
    path = write_archive(export.path, config, out_dir, compression=compression)
    log.info("NN Archive written: %s", path)
    publish_artifact(runtime, "archive", path)
    return path, config


def verified_export(runtime: Runtime, preferred_checkpoint: str, who: str) -> ExportResult | None:
    """A passed export from an ExportOnTrainEnd that already ran, else a fresh one."""
    for callback in runtime.callbacks:
        result = getattr(callback, "result", None)
        if isinstance(callback, ExportOnTrainEnd) and result is not None and result.passed:
            return result  # type: ignore[no-any-return]
    result = ExportOnTrainEnd(preferred_checkpoint).export(runtime, load_best=True)
    if result is not None and not result.passed:
        log.error("%s: the export failed verification; not archiving it", who)
        return None
    return result


@register()
class ArchiveOnTrainEnd(Callback):
    """Write the NN Archive of the best checkpoint at ``train_end``.

    ``preferred_checkpoint``: "metric" (default) or "loss". ``compression``: "xz"
    (default), "gz" or "bz2". ``heads``: NN Archive heads (``[{parser, metadata,
    outputs}]``) overriding what the model declares. After the run :attr:`archive_path`
    and :attr:`config` describe the archive (None when none was written).
    """

    def __init__(
        self,
        preferred_checkpoint: str = "metric",
        compression: str = "xz",
        heads: list[dict[str, Any]] | None = None,
    ) -> None:
        self.preferred_checkpoint = check_preferred(preferred_checkpoint)
        self.compression, self.heads = archive_options(compression, heads)
        self.archive_path: Path | None = None
        self.config: ArchiveConfig | None = None

    def on_train_end(self, runtime: Runtime) -> None:
        self.archive_path, self.config = None, None
        who = type(self).__name__
        if runtime.state.interrupted or not is_rank_zero() or skip_sharded(runtime, who):
            return
        try:
            export = verified_export(runtime, self.preferred_checkpoint, who)
            if export is None:
                return
            self.archive_path, self.config = archive_export(
                runtime, export, heads=self.heads, compression=self.compression
            )
        except (ExportError, ArchiveError, ConfigError) as exc:
            log.error("%s: archive failed: %s", who, exc)
