"""NN Archive: the ``config.json`` classes, building one for an ONNX file, the tarball
(write, inspect, safe extract) and :class:`ArchiveOnTrainEnd`."""

from callbacks.archive.build import build_config
from callbacks.archive.callback import ArchiveOnTrainEnd, archive_export
from callbacks.archive.config import (
    ArchiveConfig,
    Head,
    HeadMetadata,
    Input,
    Metadata,
    Model,
    Output,
)
from callbacks.archive.tarball import ArchiveError, read_config, safe_extract, write_archive

__all__ = [
    "ArchiveConfig",
    "ArchiveError",
    "ArchiveOnTrainEnd",
    "Head",
    "HeadMetadata",
    "Input",
    "Metadata",
    "Model",
    "Output",
    "archive_export",
    "build_config",
    "read_config",
    "safe_extract",
    "write_archive",
]
