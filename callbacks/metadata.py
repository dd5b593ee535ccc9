"""MetadataLogger: record what a run was made of (config values, git commits, versions).

At ``fit_start`` (rank zero only) it logs the chosen config values to the tracker as
hyperparameters and writes ``<run>/metadata.yaml``::

    hyperparams: {trainer.batch_size: 64, optimizer.params.lr: 0.001, missing.key: null}
    git:
      busloop: {path: /src/busloop, commit: 3f1c..., dirty: false}
      working_dir: {path: /home/me/project, commit: null, dirty: null}
    versions: {python: 3.12.3, torch: 2.5.1, busloop: 0.1.0, numpy: ...}

``git.busloop`` is the repository holding busloop's own source (an editable install from
a checkout); ``git.working_dir`` is the repository of the directory the run started in.
``commit`` and ``dirty`` are null when the folder is not a git checkout (or git is absent).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

import runtime as runtime_package
from runtime.callback import Callback
from runtime.checkpoint import versions
from runtime.config import config_to_dict
from runtime.distributed import is_rank_zero
from runtime.loop import Runtime
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["MetadataLogger", "busloop_source_dir", "config_value", "git_info"]

#: Seconds one git command may take before it is given up (the value is then null).
GIT_TIMEOUT_S = 5.0

_MISSING = object()


def config_value(config: Mapping[str, Any], key: str) -> Any:
    """The value at dot-notation ``key`` (``trainer.main_metric.name``, list items by index).

    Returns None when any part of the path is missing.
    """
    node: Any = config
    for part in key.split("."):
        if isinstance(node, Mapping):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.lstrip("-").isdigit():
            index = int(part)
            node = node[index] if -len(node) <= index < len(node) else _MISSING
        else:
            node = _MISSING
        if node is _MISSING:
            return None
    return node


def _git(args: Sequence[str], cwd: Path) -> str | None:
    """``git <args>`` in ``cwd``: its stripped stdout, or None on any failure."""
    try:
        result = subprocess.run(  # fixed argv, no shell
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_info(path: str | os.PathLike[str], *, tracked_file: str | None = None) -> dict[str, Any]:
    """``{"path", "commit", "dirty"}`` for the git checkout containing ``path``.

    ``commit`` is ``git rev-parse HEAD`` and ``dirty`` whether tracked files differ from
    it; both are None when ``path`` is not inside a git checkout (or has no commit yet).
    With ``tracked_file`` (relative to ``path``), the checkout only counts if git tracks
    that file, so a package installed into a virtualenv that sits inside some other
    repository is not credited with that repository's commit.
    """
    folder = Path(path).resolve()
    info: dict[str, Any] = {"path": str(folder), "commit": None, "dirty": None}
    if not folder.is_dir():
        return info
    if (
        tracked_file is not None
        and _git(["ls-files", "--error-unmatch", "--", tracked_file], folder) is None
    ):
        return info
    commit = _git(["rev-parse", "--verify", "HEAD"], folder)
    if not commit:
        return info
    info["commit"] = commit
    status = _git(["status", "--porcelain", "--untracked-files=no"], folder)
    info["dirty"] = None if status is None else bool(status)
    return info


def busloop_source_dir() -> Path:
    """The folder that contains the ``runtime`` package (a repository root when editable)."""
    return Path(runtime_package.__file__).resolve().parent.parent


def _yaml_plain(value: Any) -> Any:
    """``value`` as YAML-safe types (unknown objects become their ``str``)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _yaml_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_yaml_plain(v) for v in value]
    return str(value)


@register()
class MetadataLogger(Callback):
    """Log chosen config values, git commits and package versions at ``fit_start``.

    ``hyperparams`` lists dot-notation config keys (``trainer.batch_size``,
    ``optimizer.params.lr``); a key that does not exist is recorded as None. The values go
    to ``tracker.log_hyperparams`` together with ``busloop_git_commit`` and
    ``working_dir_git_commit``, and everything to ``<run>/metadata.yaml`` (not written
    when the tracker has no run folder). Runs on rank zero only.
    """

    def __init__(self, hyperparams: Sequence[str] = ()) -> None:
        if isinstance(hyperparams, str):
            raise ValueError("hyperparams must be a list of dot-notation config keys, not a string")
        self.hyperparams: list[str] = list(hyperparams)
        self.metadata: dict[str, Any] | None = None
        """What the last ``fit_start`` recorded (None before)."""

    def collect(self, runtime: Runtime) -> dict[str, Any]:
        """The metadata of ``runtime``'s run: hyperparams, git checkouts, versions."""
        config = config_to_dict(runtime.config)
        source = busloop_source_dir()
        return {
            "hyperparams": {key: config_value(config, key) for key in self.hyperparams},
            "git": {
                "busloop": git_info(source, tracked_file="runtime/__init__.py"),
                "working_dir": git_info(Path.cwd()),
            },
            "versions": versions(),
        }

    def on_fit_start(self, runtime: Runtime) -> None:
        if not is_rank_zero():
            return
        metadata = self.metadata = self.collect(runtime)
        git = metadata["git"]
        if runtime.tracker is not None:
            runtime.tracker.log_hyperparams(
                {
                    **metadata["hyperparams"],
                    "busloop_git_commit": git["busloop"]["commit"],
                    "working_dir_git_commit": git["working_dir"]["commit"],
                }
            )
        run_dir = runtime.run_dir
        if run_dir is None:
            log.info("MetadataLogger: the tracker has no run folder; metadata.yaml not written")
            return
        path = Path(run_dir) / "metadata.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(_yaml_plain(metadata), sort_keys=False, allow_unicode=True)
        path.write_text(text, encoding="utf-8")
        log.info("Metadata written to %s", path)
