"""Converter plugins: what ConvertOnTrainEnd runs after export and archive.

A converter is any object with a ``name`` and ``convert(job) -> Conversion`` (the
:class:`Converter` protocol), registered under a name with :func:`register_converter`::

    @register_converter("my-target")
    class MyConverter:
        name = "my-target"
        def __init__(self, level: int = 1) -> None: ...
        def convert(self, job: ConversionJob) -> Conversion: ...

Shipped: ``fp16`` and ``int8`` (local, checked with onnxruntime against the fp32 model;
:mod:`callbacks.converters.local`) and ``blobconverter`` / ``hubai`` (remote services;
:mod:`callbacks.converters.remote`). A converter that cannot run raises
:class:`ConverterError` with one line saying what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs
import numpy as np

from runtime.config import Config, ConfigError
from runtime.names import suggest
from runtime.registry import instantiate

__all__ = [
    "CONVERTERS",
    "Conversion",
    "ConversionJob",
    "Converter",
    "ConverterError",
    "make_converter",
    "register_converter",
]


class ConverterError(RuntimeError):
    """A converter could not produce its output; the message says what is missing."""


@attrs.define
class ConversionJob:
    """What a converter gets: the verified fp32 ONNX file, the archive, where to write,
    the run's config, and real model inputs (a validation batch) to check outputs on."""

    onnx_path: Path
    archive_path: Path | None
    out_dir: Path
    config: Config
    sample: np.ndarray | None


@attrs.define
class Conversion:
    """A converter's output: the file, its artifact kind, and the parity check (local ones).

    ``max_abs_diff`` / ``max_rel_diff`` compare with the fp32 ONNX model's outputs
    (relative: to the largest reference magnitude); ``top1_agreement`` is the share of
    samples whose arg-max over the last axis of the first output agrees.
    ``passed`` is False when the check missed ``tolerance`` (relative).
    """

    converter: str
    path: Path
    kind: str
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    top1_agreement: float | None = None
    tolerance: float | None = None
    passed: bool = True


@runtime_checkable
class Converter(Protocol):
    """A conversion step: ``convert`` writes the output and returns a :class:`Conversion`."""

    name: str

    def convert(self, job: ConversionJob) -> Conversion: ...


T = TypeVar("T", bound=type)

#: Converter name -> class (or factory taking the converter's params).
CONVERTERS: dict[str, type] = {}


def register_converter(name: str) -> Callable[[T], T]:
    """Class decorator: make a converter available to ConvertOnTrainEnd as ``name``."""

    def decorate(cls: T) -> T:
        if name in CONVERTERS and CONVERTERS[name] is not cls:
            raise ValueError(f"converter name {name!r} is already registered by {CONVERTERS[name]}")
        CONVERTERS[name] = cls
        return cls

    return decorate


def make_converter(name: str, params: dict[str, Any], *, key: str) -> Converter:
    """Build a registered converter; ConfigError naming ``key`` for an unknown name or param."""
    from callbacks.converters import local, remote  # noqa: F401  (they register on import)

    if name not in CONVERTERS:
        raise ConfigError(
            f"{key}: unknown converter {name!r}{suggest(name, CONVERTERS)}; "
            f"registered: {', '.join(sorted(CONVERTERS))}"
        )
    converter = instantiate(CONVERTERS[name], params, key=key)
    if not isinstance(converter, Converter):
        raise ConfigError(f"{key}: {name!r} does not build a converter (name + convert(job))")
    return converter
