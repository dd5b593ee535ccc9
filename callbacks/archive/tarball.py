"""The NN Archive file: write it, read its config, extract it without escaping the folder.

An archive is a tar (xz by default; gz and bz2 allowed) named ``<model>.onnx.tar.xz`` that
holds the model file (and its ``.onnx.data`` external weights, if any) by base name and a
top-level ``config.json`` (indent 4).

Extraction checks **every** member before writing anything, with the standard library's
``tarfile.data_filter`` (PEP 706): absolute paths, ``..`` that leads out, symlinks and
hardlinks that point outside the target folder, device files, and members whose path goes
through a link member are refused with an :class:`ArchiveError` naming the member; then it
extracts with ``filter="data"`` (which checks each member again as it is written).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from callbacks.archive.config import ArchiveConfig
from runtime.errors import ConfigError

__all__ = ["COMPRESSIONS", "ArchiveError", "read_config", "safe_extract", "write_archive"]

COMPRESSIONS = ("xz", "gz", "bz2")
CONFIG_NAME = "config.json"


class ArchiveError(ValueError):
    """An archive cannot be read, is not an NN Archive, or would extract outside its folder."""


def write_archive(
    model_path: Path, config: ArchiveConfig, out_dir: Path, *, compression: str = "xz"
) -> Path:
    """Write ``out_dir/<model file>.tar.<compression>``; return its path.

    The file appears atomically (written to a temporary name, then renamed).
    """
    if compression not in COMPRESSIONS:
        raise ArchiveError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if config.model.metadata.path != model_path.name:
        raise ArchiveError(
            f"config metadata.path is {config.model.metadata.path!r}, the model file {model_path.name!r}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{model_path.name}.tar.{compression}"
    text = json.dumps(config.to_dict(), indent=4).encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        mode: Any = f"w:{compression}"
        with tarfile.open(tmp, mode) as tar:
            tar.add(model_path, arcname=model_path.name)
            data = model_path.with_name(model_path.name + ".data")
            if data.is_file():
                tar.add(data, arcname=data.name)
            info = tarfile.TarInfo(CONFIG_NAME)
            info.size = len(text)
            info.mtime = int(model_path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(text))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _open(archive: Path) -> tarfile.TarFile:
    if not archive.is_file():
        raise ArchiveError(f"archive not found: {archive}")
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{archive} is not a readable tar archive: {exc}") from None


def read_config(archive: Path) -> ArchiveConfig:
    """The archive's ``config.json``, checked against every rule of the format."""
    with _open(archive) as tar:
        try:
            member = tar.getmember(CONFIG_NAME)
        except KeyError:
            raise ArchiveError(f"{archive}: no top-level {CONFIG_NAME}; not an NN Archive") from None
        handle = tar.extractfile(member)
        if handle is None:
            raise ArchiveError(f"{archive}: {CONFIG_NAME} is not a regular file")
        try:
            data = json.loads(handle.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArchiveError(f"{archive}: {CONFIG_NAME} is not valid JSON: {exc}") from None
        names = set(tar.getnames())
    try:
        config = ArchiveConfig.from_dict(data)
    except ConfigError as exc:
        raise ArchiveError(f"{archive}: invalid {CONFIG_NAME}:\n{exc}") from None
    if config.model.metadata.path not in names:
        raise ArchiveError(f"{archive}: the model file {config.model.metadata.path!r} is missing")
    return config


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Extract ``archive`` into ``dest``; refuse the whole archive if any member would land
    (or link) outside ``dest``. Returns the extracted paths."""
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    with _open(archive) as tar:
        members = tar.getmembers()
        links: set[str] = set()
        for member in members:
            name = os.path.normpath(member.name)
            through = next((p for p in Path(name).parents if str(p) in links), None)
            try:
                if through is not None:  # a path through a link member can lead anywhere
                    raise tarfile.FilterError(f"its path goes through the link {str(through)!r}")
                if _absolute(member.name):  # data_filter would strip the "/"; refuse instead
                    raise tarfile.AbsolutePathError(member)
                if (member.issym() or member.islnk()) and _absolute(member.linkname):
                    raise tarfile.AbsoluteLinkError(member)
                tarfile.data_filter(member, root)
            except tarfile.FilterError as exc:
                raise ArchiveError(
                    f"{archive}: refusing to extract: member {member.name!r} {_why(exc)} "
                    f"(nothing was extracted)"
                ) from None
            if member.issym() or member.islnk():
                links.add(name)
        tar.extractall(root, filter="data")
    return [dest / member.name for member in members]


def _absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":")


def _why(exc: tarfile.FilterError) -> str:
    if isinstance(exc, tarfile.AbsolutePathError):
        return "has an absolute path"
    if isinstance(exc, tarfile.OutsideDestinationError):
        return "would be written outside the target folder"
    if isinstance(exc, tarfile.AbsoluteLinkError):
        return "is a link to an absolute path"
    if isinstance(exc, tarfile.LinkOutsideDestinationError):
        return "is a link that points outside the target folder"
    if isinstance(exc, tarfile.SpecialFileError):
        return "is a device or special file"
    return f"is refused: {exc}"
