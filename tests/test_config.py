"""Tests for runtime.config: loading, overrides, round trips, error messages, imports."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch.nn.functional as F
import yaml

from runtime.config import (
    CallbackSpec,
    Config,
    ConfigError,
    MainMetric,
    OptimizerSpec,
    TrainerConfig,
    config_to_dict,
    dump_config,
    load_config,
)
from runtime.names import resolve_import, suggest

FULL_YAML = """\
model: {factory: "pkg.module:build_model", params: {width: 8}}
data: {factory: "pkg.module:build_loaders", params: {root: data}}
loss: "torch.nn.functional:cross_entropy"
optimizer: {name: AdamW, params: {lr: 0.001}}
scheduler: {name: CosineAnnealingLR, params: {T_max: 10}, interval: step, frequency: 2}
trainer:
  epochs: 5
  batch_size: 64
  precision: bf16
  seed: 42
  gradient_clip_val: 1
  val_check_interval: 0.5
  limit_train_batches: 10
  limit_val_batches: 0.25
  main_metric: {name: val/accuracy, mode: max}
  input_shape: [3, 32, 32]
  callbacks:
    - {name: EarlyStopping, params: {monitor: val/loss, patience: 3}}
    - {name: EMACallback, active: false}
tracker: {save_directory: runs, run_name: exp1, backends: [local, tensorboard]}
exporter:
  name: net
  onnx: {opset_version: 13, dynamic_axes: {input: {0: batch}}}
  blobconverter: {active: true, shaves: 8, version: "2022.1"}
  hubai: {active: false, platform: rvc4}
"""


def _error(source: Any = None, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    return str(info.value)


# --- loading ---


def test_defaults_from_none_and_empty_mapping() -> None:
    cfg = load_config()
    assert cfg == Config() == load_config({})
    assert cfg.optimizer is None and cfg.scheduler is None and cfg.loss is None
    t = cfg.trainer
    assert (t.epochs, t.batch_size, t.precision, t.val_check_interval) == (10, 32, "32", 1.0)
    assert isinstance(t.val_check_interval, float)
    assert t.callbacks == [] and t.main_metric is None
    assert cfg.tracker.backends == ["local"]
    assert cfg.exporter.onnx.opset_version == 17


def test_load_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(FULL_YAML)
    cfg = load_config(path)
    assert cfg.model.factory == "pkg.module:build_model" and cfg.model.params == {"width": 8}
    assert cfg.optimizer == OptimizerSpec(name="AdamW", params={"lr": 0.001})
    assert cfg.scheduler is not None and cfg.scheduler.interval == "step"
    t = cfg.trainer
    assert t.precision == "bf16-mixed"
    assert t.gradient_clip_val == 1.0 and isinstance(t.gradient_clip_val, float)
    assert t.limit_train_batches == 10 and isinstance(t.limit_train_batches, int)
    assert t.limit_val_batches == 0.25
    assert t.main_metric == MainMetric(name="val/accuracy", mode="max")
    assert t.callbacks[0] == CallbackSpec(
        "EarlyStopping", params={"monitor": "val/loss", "patience": 3}
    )
    assert t.callbacks[1].active is False
    assert cfg.tracker.backends == ["local", "tensorboard"]
    assert cfg.exporter.onnx.dynamic_axes == {"input": {0: "batch"}}
    assert cfg.exporter.hubai.platform == "rvc4"
    assert load_config(str(path)) == cfg  # str paths work too


def test_load_yml_and_json_files(tmp_path: Path) -> None:
    yml = tmp_path / "c.yml"
    yml.write_text("trainer: {epochs: 3}\n")
    assert load_config(yml).trainer.epochs == 3
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"trainer": {"epochs": 4, "precision": 16}, "loss": None}))
    cfg = load_config(js)
    assert cfg.trainer.epochs == 4 and cfg.trainer.precision == "16-mixed"


def test_empty_file_and_empty_section_mean_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert load_config(path) == Config()
    assert load_config({"trainer": None, "exporter": {"onnx": None}}) == Config()


@pytest.mark.parametrize(
    ("given", "expected"),
    [(32, "32"), ("32-true", "32"), (16, "16-mixed"), ("16", "16-mixed"), ("bf16", "bf16-mixed")],
)
def test_precision_aliases(given: Any, expected: str) -> None:
    assert load_config({"trainer": {"precision": given}}).trainer.precision == expected


def test_int_and_float_batch_limits_keep_their_type() -> None:
    t = load_config({"trainer": {"val_check_interval": 1, "limit_test_batches": 1.0}}).trainer
    assert t.val_check_interval == 1 and isinstance(t.val_check_interval, int)
    assert t.limit_test_batches == 1.0 and isinstance(t.limit_test_batches, float)


def test_mapping_source_is_not_mutated() -> None:
    raw = {"optimizer": {"params": {"lr": 0.1}}}
    cfg = load_config(raw, ["optimizer.params.lr=0.5"])
    assert cfg.optimizer is not None and cfg.optimizer.params == {"lr": 0.5}
    assert raw == {"optimizer": {"params": {"lr": 0.1}}}


# --- round trip and dumping ---


def test_round_trip_through_dict(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(FULL_YAML)
    cfg = load_config(path)
    data = config_to_dict(cfg)
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain data only
    assert load_config(data) == cfg


def test_config_source_returns_a_copy() -> None:
    cfg = load_config({"trainer": {"callbacks": [{"name": "A"}]}})
    copy = load_config(cfg, ["trainer.epochs=2"])
    assert copy is not cfg and copy.trainer.epochs == 2 and cfg.trainer.epochs == 10
    copy.trainer.callbacks[0].params["x"] = 1
    assert cfg.trainer.callbacks[0].params == {}
    assert load_config(cfg) == cfg


@pytest.mark.parametrize("name", ["out.yaml", "out.json", "sub/dir/out.yml"])
def test_dump_and_reload(tmp_path: Path, name: str) -> None:
    cfg = load_config(
        {"trainer": {"epochs": 7, "main_metric": {"name": "val/loss", "mode": "min"}}}
    )
    path = tmp_path / name
    dump_config(cfg, path)
    assert load_config(path) == cfg
    if name == "out.yaml":
        assert path.read_text().splitlines()[0] == "model:"  # declaration order kept


# --- overrides ---


def test_overrides_parse_values_as_yaml() -> None:
    cfg = load_config(
        None,
        [
            "trainer.epochs=5",
            "optimizer.params.lr=0.01",
            "trainer.deterministic=true",
            "trainer.input_shape=[1, 28, 28]",
            "trainer.seed=null",
            "trainer.main_metric.name=val/acc",
            "model.params.new.nested=x",
        ],
    )
    assert cfg.trainer.epochs == 5
    assert cfg.optimizer == OptimizerSpec(name="Adam", params={"lr": 0.01})
    assert cfg.trainer.deterministic is True
    assert cfg.trainer.input_shape == [1, 28, 28]
    assert cfg.trainer.seed is None
    assert cfg.trainer.main_metric == MainMetric(name="val/acc")
    assert cfg.model.params == {"new": {"nested": "x"}}


def test_overrides_index_and_append_to_lists() -> None:
    source = {"trainer": {"callbacks": [{"name": "EarlyStopping", "params": {"patience": 3}}]}}
    cfg = load_config(
        source,
        [
            "trainer.callbacks.0.params.patience=5",
            "trainer.callbacks.1.name=EMACallback",
            "trainer.callbacks.1.active=false",
            "trainer.callbacks.2={name: LearningRateMonitor}",
        ],
    )
    assert [c.name for c in cfg.trainer.callbacks] == [
        "EarlyStopping",
        "EMACallback",
        "LearningRateMonitor",
    ]
    assert cfg.trainer.callbacks[0].params == {"patience": 5}
    assert cfg.trainer.callbacks[1].active is False
    # a missing list is created when the next part is an index
    assert load_config(None, ["trainer.callbacks.0.name=A"]).trainer.callbacks == [
        CallbackSpec("A")
    ]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("trainer.epochs", "override 'trainer.epochs': expected key=value"),
        ("=5", "expected key=value"),
        ("trainer..epochs=5", "override 'trainer..epochs': empty name"),
        ("trainer.callbacks.3.name=x", "trainer.callbacks has 0 item(s)"),
        ("trainer.epochs=[1", "override 'trainer.epochs': invalid value"),
    ],
)
def test_bad_overrides(override: str, fragment: str) -> None:
    assert fragment in _error(None, (override,))


def test_override_into_a_scalar_is_an_error() -> None:
    message = _error({"trainer": {"epochs": 3}}, ("trainer.epochs.x=1",))
    assert "trainer.epochs is 3 (int), not a mapping or a list" in message


def test_overridden_value_is_checked() -> None:
    assert "trainer.epochs: must be >= 1, got 0" in _error(None, ("trainer.epochs=0",))
    assert "trainer.epochz: unknown key; did you mean 'epochs'?" in _error(
        None, ("trainer.epochz=3",)
    )


# --- error messages ---


def test_unknown_keys_suggest_the_nearest_name() -> None:
    assert (
        _error({"trainer": {"epochz": 3}}) == "trainer.epochz: unknown key; did you mean 'epochs'?"
    )
    assert _error({"optimiser": {"name": "SGD"}}) == (
        "optimiser: unknown key; did you mean 'optimizer'?"
    )
    assert _error({"trainer": {"zzzz": 1}}) == "trainer.zzzz: unknown key"
    assert "trainer.callbacks.0.parms: unknown key; did you mean 'params'?" in _error(
        {"trainer": {"callbacks": [{"name": "A", "parms": {}}]}}
    )


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        ({"epochs": "ten"}, "trainer.epochs: expected an integer, got 'ten' (str)"),
        ({"epochs": True}, "trainer.epochs: expected an integer, got True (bool)"),
        ({"epochs": 2.0}, "trainer.epochs: expected an integer, got 2.0 (float)"),
        ({"epochs": 0}, "trainer.epochs: must be >= 1, got 0"),
        ({"num_workers": -1}, "trainer.num_workers: must be >= 0, got -1"),
        ({"max_steps": 0}, "trainer.max_steps: must be >= 1, got 0"),
        ({"gradient_clip_val": 0}, "trainer.gradient_clip_val: must be > 0, got 0.0"),
        ({"gradient_clip_val": "1"}, "trainer.gradient_clip_val: expected a number, got '1' (str)"),
        ({"deterministic": 1}, "trainer.deterministic: expected true or false, got 1 (int)"),
        ({"resume_from": 3}, "trainer.resume_from: expected a string, got 3 (int)"),
        (
            {"precision": "fp8"},
            "trainer.precision: must be one of '32', '16-mixed', 'bf16-mixed', got 'fp8'",
        ),
        ({"gradient_clip_algorithm": "values"}, "did you mean 'value'?"),
        ({"accelerator": "gpu"}, "trainer.accelerator: must be 'auto', 'cpu', 'cuda', 'cuda:N'"),
        ({"val_check_interval": 0}, "trainer.val_check_interval: as a number of batches must be"),
        (
            {"val_check_interval": 1.5},
            "trainer.val_check_interval: as a fraction must be in (0, 1]",
        ),
        (
            {"limit_val_batches": -1},
            "trainer.limit_val_batches: as a number of batches must be >= 0",
        ),
        ({"num_sanity_val_steps": -2}, "trainer.num_sanity_val_steps: must be >= -1, got -2"),
        ({"save_top_k": -2}, "trainer.save_top_k: must be >= -1, got -2"),
        ({"main_metric": {"name": "m", "mode": "avg"}}, "trainer.main_metric.mode: must be one of"),
        ({"main_metric": {"mode": "min"}}, "trainer.main_metric.name: required key is missing"),
        ({"input_shape": "3,32,32"}, "trainer.input_shape: expected a list, got '3,32,32' (str)"),
        ({"input_shape": [3, "a"]}, "trainer.input_shape.1: expected an integer, got 'a' (str)"),
        (
            {"callbacks": [{"name": "A", "params": [1]}]},
            "trainer.callbacks.0.params: expected a mapping",
        ),
    ],
)
def test_value_errors_name_the_key_path(trainer: dict[str, Any], expected: str) -> None:
    assert expected in _error({"trainer": trainer})


def test_other_section_errors() -> None:
    assert "scheduler.frequency: must be >= 1, got 0" in _error(
        {"scheduler": {"name": "StepLR", "frequency": 0}}
    )
    assert (
        "scheduler.interval: must be one of 'epoch', 'step', got 'epochs'; did you mean 'epoch'?"
        in _error({"scheduler": {"name": "StepLR", "interval": "epochs"}})
    )
    assert "tracker.backends.1: must be one of 'local', 'tensorboard', 'mlflow'" in _error(
        {"tracker": {"backends": ["local", "wandb"]}}
    )
    assert "exporter.onnx.opset_version: must be between 7 and 23, got 30" in _error(
        {"exporter": {"onnx": {"opset_version": 30}}}
    )
    assert "exporter.hubai.platform: must be one of 'rvc2', 'rvc3', 'rvc4'" in _error(
        {"exporter": {"hubai": {"platform": "rvc5"}}}
    )
    assert "exporter.blobconverter.version: expected a string, got 2022.1 (float)" in _error(
        {"exporter": {"blobconverter": {"version": 2022.1}}}
    )
    assert _error({"model": "pkg:build"}) == "model: expected a mapping, got 'pkg:build' (str)"
    assert _error({"loss": 5}) == "loss: expected a string, got 5 (int)"


def test_several_problems_one_line_each() -> None:
    message = _error(
        {
            "trainer": {"epochs": 0, "batch_size": "big", "epochz": 1},
            "optimiser": {},
            "tracker": {"backends": ["wandb"]},
        }
    )
    lines = message.splitlines()
    assert len(lines) == 5
    assert {line.split(":")[0] for line in lines} == {
        "trainer.epochs",
        "trainer.batch_size",
        "trainer.epochz",
        "optimiser",
        "tracker.backends.0",
    }


def test_json_quoted_number_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"trainer": {"epochs": "5"}}')
    assert _error(path) == "trainer.epochs: expected an integer, got '5' (str)"


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "x.yaml"
    assert _error(missing) == f"config file not found: {missing}"

    bad = tmp_path / "config.yaml"
    bad.write_text("trainer:\n  epochs: 3\n  batch_size: [1, 2\n")
    message = _error(bad)
    assert message.startswith(f"{bad}: invalid YAML at line ")
    assert "config.yaml" in message and "column" in message

    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    assert _error(listed) == f"{listed}: the top level must be a mapping, got list"

    bad_json = tmp_path / "c.json"
    bad_json.write_text('{"trainer": }')
    assert _error(bad_json).startswith(f"{bad_json}: invalid JSON at line 1, column 13")

    other = tmp_path / "c.toml"
    other.write_text("")
    assert "unsupported config file type" in _error(other)

    assert "config source must be" in _error(42)
    assert (
        _error([1])
        == "config source must be a file path, a mapping, a Config or None, got [1] (list)"
    )


def test_config_error_is_a_value_error_with_problems() -> None:
    with pytest.raises(ValueError) as info:
        load_config({"trainer": {"epochs": 0, "batch_size": 0}})
    assert isinstance(info.value, ConfigError)
    assert info.value.problems == (
        "trainer.epochs: must be >= 1, got 0",
        "trainer.batch_size: must be >= 1, got 0",
    )


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match="epochs: must be >= 1, got 0"):
        TrainerConfig(epochs=0)
    assert TrainerConfig(precision=16).precision == "16-mixed"  # type: ignore[arg-type]


# --- helpers ---


def test_suggest() -> None:
    assert suggest("epochz", ["epochs", "seed"]) == "; did you mean 'epochs'?"
    assert suggest("EarlyStoping", ["EarlyStopping", "EMACallback"]) == (
        "; did you mean 'EarlyStopping'?"
    )
    assert suggest("zzz", ["epochs"]) == ""
    assert suggest("x", []) == ""


def test_resolve_import_success() -> None:
    assert resolve_import("torch.nn.functional:cross_entropy", key="loss") is F.cross_entropy
    assert resolve_import("torch.nn.functional.cross_entropy", key="loss") is F.cross_entropy
    import torch

    assert resolve_import("torch.nn:Module.forward", key="x") is torch.nn.Module.forward
    assert resolve_import("torch.optim.AdamW", key="optimizer.name") is torch.optim.AdamW


@pytest.mark.parametrize(
    ("path", "fragments"),
    [
        ("no_such_pkg_xyz.mod:thing", ["loss: ", "no module named 'no_such_pkg_xyz'"]),
        ("no_such_pkg_xyz.thing", ["loss: ", "no module named 'no_such_pkg_xyz'"]),
        (
            "torch.nn.functionl:cross_entropy",
            ["no module named 'torch.nn.functionl'", "did you mean 'functional'?"],
        ),
        (
            "torch.nn.functional:cross_entropi",
            [
                "'torch.nn.functional' has no attribute 'cross_entropi'",
                "did you mean 'cross_entropy'?",
            ],
        ),
        (
            "torch.nn.functional.cross_entropi",
            [
                "'torch.nn.functional' has no attribute 'cross_entropi'",
                "did you mean 'cross_entropy'?",
            ],
        ),
        ("torch.nn:Module.forwad", ["'torch.nn.Module' has no attribute 'forwad'", "'forward'"]),
        ("", ["expected an import path"]),
        ("torch.nn:", ["expected an import path"]),
    ],
)
def test_resolve_import_failures(path: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_import(path, key="loss")
    message = str(info.value)
    assert message.startswith("loss: ")
    for fragment in fragments:
        assert fragment in message


def test_resolve_import_reports_broken_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_cfg_mod.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        resolve_import("broken_cfg_mod:thing", key="model.factory")
    message = str(info.value)
    assert message.startswith("model.factory: importing 'broken_cfg_mod' failed")
    assert "no_such_dependency_xyz" in message


def test_config_to_dict_equals_the_converters_unstructured_copy() -> None:
    """config_to_dict is cattrs' unstructure made plain (exact-type fast paths in the copy),
    exotic parameter values included, and never shares the live config's objects."""
    from collections import OrderedDict

    from runtime.config import _plain, converter

    cfg = load_config(
        {
            "model": {
                "factory": "m:build",
                "params": {"sizes": (1, 2), "nested": {"a": [1.5, None]}},
            },
            "optimizer": {"name": "AdamW", "params": {"lr": 0.1, "betas": (0.9, 0.99)}},
            "scheduler": {"name": "StepLR", "params": {"step_size": 2}, "monitor": "val/loss"},
            "trainer": {
                "main_metric": {"name": "acc"},
                "input_shape": [3, 8, 8],
                "callbacks": [{"name": "EarlyStopping", "params": {"patience": 2}}],
                "preprocessing": {"normalize": {"active": True}},
            },
        }
    )
    cfg.model.params["ordered"] = OrderedDict(x=1)
    cfg.model.params["main"] = cfg.trainer.main_metric
    expected = _plain(converter.unstructure(cfg))
    got = config_to_dict(cfg)
    assert got == expected and list(got) == list(expected)
    assert (
        got["model"]["params"]["ordered"] == {"x": 1}
        and type(got["model"]["params"]["ordered"]) is dict
    )
    assert got["model"]["params"]["main"] == {"name": "acc", "mode": "max"}
    got["optimizer"]["params"]["lr"] = 1.0
    got["trainer"]["input_shape"].append(9)
    assert cfg.optimizer is not None and cfg.optimizer.params["lr"] == 0.1
    assert cfg.trainer.input_shape == [3, 8, 8]
    assert config_to_dict(load_config({})) == _plain(converter.unstructure(load_config({})))
