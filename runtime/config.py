"""Run configuration: attrs classes, loaded from YAML/JSON with cattrs.

The shape of a config file (every section is optional; ``{}`` is a valid config)::

    model:     {factory: "pkg.module:build_model", params: {...}}
    data:      {factory: "pkg.module:build_loaders", params: {...}}
    loss:      "torch.nn.functional:cross_entropy"
    optimizer: {name: AdamW, params: {lr: 0.001}}
    scheduler: {name: CosineAnnealingLR, params: {T_max: 10}, interval: epoch, frequency: 1}
    trainer:   {epochs: 10, batch_size: 32, precision: "32", callbacks: [...], ...}
    tracker:   {save_directory: runs, run_name: null, backends: [local]}
    exporter:  {onnx: {opset_version: 17}, blobconverter: {active: false}, hubai: {active: false}}

``load_config`` reads a file, a mapping or a ``Config``, applies ``key=value`` dot-path
overrides to the raw data, then structures it with one strict ``cattrs.Converter``:
unknown keys are rejected (with the nearest valid name), ints/floats/bools/strings are
never coerced from another type, and ranges are checked by attrs validators. Every user
mistake raises ``ConfigError`` whose message has one ``key.path: problem`` line per problem.

This module holds the attrs classes (with their field-specific checks) and loading,
overrides and dumping. The strict converter and the generic validators are in
``runtime.config_convert``; ``ConfigError`` is defined in ``runtime.errors`` (and
re-exported here); name suggestions and import paths are in ``runtime.names``.
"""

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from runtime.config_convert import (
    _STRUCTURE,
    _batches_or_fraction,
    _each,
    _ge,
    _got,
    _gt,
    _one_of,
    _opt,
    _Problem,
    converter,
    structure,
)
from runtime.config_exporter import BlobconverterConfig, ExporterConfig, HubAIConfig, OnnxConfig
from runtime.errors import ConfigError

__all__ = [
    "BlobconverterConfig", "CallbackSpec", "ComponentSpec", "Config", "ConfigError",
    "ExporterConfig", "HubAIConfig", "MainMetric", "NormalizeConfig", "NormalizeParams",
    "OnnxConfig", "OptimizerSpec", "PreprocessingConfig",
    "SchedulerSpec", "TrackerConfig", "TrainerConfig", "config_to_dict", "converter",
    "dump_config", "load_config",
]  # fmt: skip


# --- checks and structure hooks of particular fields ---


def _accelerator(_inst: Any, attribute: "attrs.Attribute[Any]", value: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise _Problem(
            f"must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}", attribute.name
        )


def _devices(_inst: Any, attribute: "attrs.Attribute[Any]", value: int | str) -> None:
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise _Problem(f"expected 'auto' or a number of devices >= 1, got {value!r}", attribute.name)


_PRECISION_ALIASES: dict[object, str] = {
    32: "32",
    "32-true": "32",
    16: "16-mixed",
    "16": "16-mixed",
    "bf16": "bf16-mixed",
}


def _normalize_precision(value: Any) -> Any:
    """Map the accepted aliases (32, "32-true", 16, "16", "bf16") to canonical names."""
    if isinstance(value, bool):
        return value
    return _PRECISION_ALIASES.get(value, value)


def _structure_precision(value: Any, _type: Any) -> str | int:
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise _Problem(f"expected a string or an integer, got {_got(value)}")


# --- the configuration classes ---


@attrs.define
class ComponentSpec:
    """A user component (model or data) built by calling ``factory(**params)``.

    ``factory`` is an import path such as ``"pkg.module:build_model"``.
    """

    factory: str | None = None
    params: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class OptimizerSpec:
    """The optimiser: a ``torch.optim`` class name (or import path) and its keyword arguments."""

    name: str = "Adam"
    params: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class SchedulerSpec:
    """The LR scheduler: class name (or import path), kwargs, and when it steps.

    ``interval`` is ``"epoch"`` or ``"step"``; it steps every ``frequency`` intervals;
    ``monitor`` names the metric passed to schedulers such as ``ReduceLROnPlateau``.
    """

    name: str
    params: dict[str, Any] = attrs.field(factory=dict)
    interval: str = attrs.field(default="epoch", validator=_one_of("epoch", "step"))
    frequency: int = attrs.field(default=1, validator=_ge(1))
    monitor: str | None = None


@attrs.define
class MainMetric:
    """The metric that ranks checkpoints: its logged ``name`` and whether to ``min`` or ``max`` it."""

    name: str
    mode: str = attrs.field(default="max", validator=_one_of("min", "max"))


@attrs.define
class CallbackSpec:
    """One callback: a registered name or import path, whether it is used, and its kwargs."""

    name: str
    active: bool = True
    params: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class NormalizeParams:
    """Per-channel ``mean`` and ``std`` of the normalisation, in [0, 1] pixel units."""

    mean: list[float] = attrs.field(factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = attrs.field(factory=lambda: [0.229, 0.224, 0.225])


@attrs.define
class NormalizeConfig:
    """The normalisation your data factory applies (busloop does not apply it itself).

    Export reads it for the archive's mean/scale (x 255) and Grad-CAM to de-normalise
    the images it overlays. luxonis-train's shape: ``{active, params: {mean, std}}``.
    """

    active: bool = True
    params: NormalizeParams = attrs.field(factory=NormalizeParams)


@attrs.define
class PreprocessingConfig:
    """What the data factory does to images; ``normalize: null`` means inputs in [0, 1]."""

    normalize: NormalizeConfig | None = None


@attrs.define
class TrainerConfig:
    """The training loop: length, batching, precision, validation cadence, logging, callbacks.

    ``limit_*_batches``: ``None`` (all), an int number of batches, or a float fraction.
    ``val_check_interval``: an int number of training batches, or a float fraction of an epoch.
    ``num_sanity_val_steps``: ``-1`` runs the whole validation set before training.
    ``strategy`` / ``devices`` / ``num_nodes``: how several processes train (``torchrun``
    starts them; these must match it, see the README's "Several devices and machines").
    ``save_top_k``: ``-1`` keeps every checkpoint. ``input_shape``: C, H, W of one sample.
    """

    epochs: int = attrs.field(default=10, validator=_ge(1))
    max_steps: int | None = attrs.field(default=None, validator=_opt(_ge(1)))
    batch_size: int = attrs.field(default=32, validator=_ge(1))
    num_workers: int = attrs.field(default=0, validator=_ge(0))
    accumulate_grad_batches: int | None = attrs.field(default=None, validator=_opt(_ge(1)))
    gradient_clip_val: float | None = attrs.field(default=None, validator=_opt(_gt(0)))
    gradient_clip_algorithm: str = attrs.field(default="norm", validator=_one_of("norm", "value"))
    precision: str = attrs.field(
        default="32",
        converter=_normalize_precision,
        validator=_one_of("32", "16-mixed", "bf16-mixed"),
        metadata={_STRUCTURE: _structure_precision},
    )
    seed: int | None = None
    deterministic: bool = False
    accelerator: str = attrs.field(default="auto", validator=_accelerator)
    strategy: str = attrs.field(default="auto", validator=_one_of("auto", "ddp", "fsdp"))
    devices: int | str = attrs.field(default="auto", validator=_devices)
    num_nodes: int | None = attrs.field(default=None, validator=_opt(_ge(1)))
    check_val_every_n_epoch: int | None = attrs.field(default=1, validator=_opt(_ge(1)))
    val_check_interval: int | float = attrs.field(
        default=1.0, validator=_batches_or_fraction(zero_ok=False)
    )
    limit_train_batches: int | float | None = attrs.field(
        default=None, validator=_opt(_batches_or_fraction(zero_ok=True))
    )
    limit_val_batches: int | float | None = attrs.field(
        default=None, validator=_opt(_batches_or_fraction(zero_ok=True))
    )
    limit_test_batches: int | float | None = attrs.field(
        default=None, validator=_opt(_batches_or_fraction(zero_ok=True))
    )
    limit_predict_batches: int | float | None = attrs.field(
        default=None, validator=_opt(_batches_or_fraction(zero_ok=True))
    )
    num_sanity_val_steps: int = attrs.field(default=2, validator=_ge(-1))
    log_every_n_steps: int = attrs.field(default=50, validator=_ge(1))
    save_top_k: int = attrs.field(default=3, validator=_ge(-1))
    main_metric: MainMetric | None = None
    rich_logging: bool = True
    smart_cfg_auto_populate: bool = True
    resume_from: str | None = None
    input_shape: list[int] | None = attrs.field(default=None, validator=_opt(_each(_ge(1))))
    preprocessing: PreprocessingConfig = attrs.field(factory=PreprocessingConfig)
    callbacks: list[CallbackSpec] = attrs.field(factory=list)


@attrs.define
class TrackerConfig:
    """Where runs are recorded: the parent folder, the run's name, and the logging backends."""

    save_directory: str = "runs"
    run_name: str | None = None
    backends: list[str] = attrs.field(
        factory=lambda: ["local"], validator=_each(_one_of("local", "tensorboard", "mlflow"))
    )


@attrs.define
class Config:
    """A whole run: model, data, loss, optimiser, scheduler, trainer, tracker and exporter."""

    model: ComponentSpec = attrs.field(factory=ComponentSpec)
    data: ComponentSpec = attrs.field(factory=ComponentSpec)
    loss: str | None = None
    optimizer: OptimizerSpec | None = None
    scheduler: SchedulerSpec | None = None
    trainer: TrainerConfig = attrs.field(factory=TrainerConfig)
    tracker: TrackerConfig = attrs.field(factory=TrackerConfig)
    exporter: ExporterConfig = attrs.field(factory=ExporterConfig)


# --- loading, overrides, dumping ---


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"{path}: unsupported config file type; use .yaml, .yml or .json")
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{at}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def _apply_override(raw: dict[str, Any], text: str) -> None:
    """Set ``key.path=value`` in ``raw``; missing mappings are created, lists may grow by one."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key=value")
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {key!r}: empty name in the key path")
    if not key.isprintable():
        raise ConfigError(f"override {key!r}: a key path holds no control characters (newline, tab)")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError as exc:  # PyYAML's message spans lines: keep the problem only
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else "not YAML"
        raise ConfigError(f"override {key!r}: invalid value {value_text!r} ({problem})") from None
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        new: Any = value if last else ([] if parts[depth + 1].isdigit() else {})
        if isinstance(node, dict):
            if last or node.get(part) is None:
                node[part] = new
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) > len(node):
                raise ConfigError(
                    f"override {key!r}: {'.'.join(parts[:depth])} has {len(node)} item(s); "
                    f"expected an index from 0 to {len(node)} (to append), got {part!r}"
                )
            if int(part) == len(node):
                node.append(new)
            elif last:
                node[int(part)] = new
            node = node[int(part)]
        else:
            raise ConfigError(
                f"override {key!r}: {'.'.join(parts[:depth])} is {_got(node)}, "
                "not a mapping or a list"
            )


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | Config | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """Build a ``Config`` from a .yaml/.yml/.json file, a mapping, a ``Config`` or ``None``.

    ``overrides`` are ``key=value`` strings with dot paths (``trainer.epochs=5``,
    ``trainer.callbacks.0.params.patience=5``); values are parsed as YAML. They apply to
    the raw data before it is checked. Raises ``ConfigError`` for any mistake.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    name = "config"
    if source is None:
        raw: Any = {}
    elif isinstance(source, Config):
        raw = config_to_dict(source)
    elif isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        raw = _read_file(Path(source))
        raw = {} if raw is None else raw
    elif isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
    else:
        raise ConfigError(
            f"config source must be a file path, a mapping, a Config or None, got {_got(source)}"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: the top level must be a mapping, got {type(raw).__name__}")
    for text in overrides:
        _apply_override(raw, text)
    return structure(raw, Config)


_PLAIN_LEAVES = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """``value`` with every mapping copied to a dict and every list / tuple to a list.

    Exact types are tested first: ``isinstance(value, Mapping)`` is an ABC check, and this
    runs over every value of the config at every checkpoint write.
    """
    kind = type(value)
    if kind in _PLAIN_LEAVES:
        return value
    if kind is dict:
        return {k: v if type(v) in _PLAIN_LEAVES else _plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [v if type(v) in _PLAIN_LEAVES else _plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Return ``cfg`` as plain dicts, lists and scalars (loadable again by ``load_config``)."""
    return _plain(converter.unstructure(cfg))


def dump_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write ``cfg`` as YAML (keys in declaration order); as JSON if ``path`` ends in .json."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    if target.suffix.lower() == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    target.write_text(text, encoding="utf-8")
