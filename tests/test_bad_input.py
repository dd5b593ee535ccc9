"""Bad input to the ``busloop`` command line: exit 2, one line naming the problem, no
traceback, nothing left behind (no run folder), and the whole job checked before the data
and the model are built.

Most cases call the CLI's ``main(argv)`` in this process (fast); a few run the real console
entry point in a subprocess. The corpus of broken configs is generated from the config's
attrs classes (an unknown key at every level, a wrong type for every field) plus a table of
out-of-range values, bad YAML, bad overrides and wrong callback, optimizer and factory
parameters; a hypothesis test feeds arbitrary overrides to ``load_config``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import base_config, make_loader, make_model
from runtime import Runtime
from runtime.cli import main
from runtime.config import Config, ConfigError, load_config
from runtime.tracking import NullTracker

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"
#: Fast settings for the digits job, so a case that gets past the checks stays quick.
FAST = ["trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
#: torch's advice on a refused file, which busloop must never pass on.
ADVICE = ("weights_only=False", "weights_only` set to `False", "Re-running `torch.load`")


def _one_line_error(rc: int, err: str, *expected: str) -> str:
    """Assert exit 2, exactly one stderr line (busloop's error) holding ``expected``,
    no traceback, no weights_only advice and no run folder in the working directory."""
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("busloop: error: "), err
    for text in expected:
        assert text in lines[0], err
    assert "Traceback" not in err and not any(advice in err for advice in ADVICE), err
    assert not Path("runs").exists(), sorted(Path("runs").rglob("*"))
    return lines[0]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


# --- checkpoints: --resume, trainer.resume_from and test --weights take one path ---------


class Payload:
    """A pickle whose loading would create a file: what a malicious checkpoint does."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.target), "w"))


@pytest.fixture
def bad_checkpoints(tmp_path: Path) -> dict[str, Path]:
    """Files that are no checkpoint of the digits model, keyed by what is wrong with them."""
    files = tmp_path / "ckpts"
    files.mkdir()
    rt = Runtime(make_model(), [], base_config(epochs=1), loss="torch.nn.functional:cross_entropy", tracker=NullTracker())
    rt.fit(make_loader(32))
    other = rt.save_checkpoint(files / "other_model.ckpt")  # a real resume checkpoint, of an MLP
    data = other.read_bytes()
    (files / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (files / "random.ckpt").write_bytes(os.urandom(4096))
    (files / "folder.ckpt").mkdir()
    torch.save({"busloop_format": 1, "state_dict": {}, "loop": {}, "x": Payload(tmp_path / "PWNED")}, files / "malicious.ckpt")
    with (files / "malicious_pickle.ckpt").open("wb") as handle:
        pickle.dump(Payload(tmp_path / "PWNED"), handle)
    return {
        "random": files / "random.ckpt",
        "truncated": files / "truncated.ckpt",
        "missing": files / "missing.ckpt",
        "folder": files / "folder.ckpt",
        "other_model": other,
        "malicious": files / "malicious.ckpt",
        "malicious_pickle": files / "malicious_pickle.ckpt",
    }


#: What each bad file's one line says (besides its path).
CHECKPOINT_PROBLEMS = {
    "random": "is not a readable checkpoint",
    "truncated": "is not a readable checkpoint",
    "missing": "checkpoint not found",
    "folder": "is a directory, not a checkpoint file",
    "other_model": "does not fit this model",
    "malicious": "holds pickled objects that weights_only loading refuses: Unsupported global: GLOBAL io.open",
    "malicious_pickle": "is not a readable checkpoint",
}


def _checkpoint_argv(how: str, path: Path) -> list[str]:
    if how == "--resume":
        return ["train", *FAST, "--resume", str(path)]
    if how == "resume_from":
        return ["train", *FAST, f"trainer.resume_from={path}"]
    return ["test", *FAST, "--weights", str(path)]


@pytest.mark.parametrize("how", ["--resume", "resume_from", "--weights"])
@pytest.mark.parametrize("kind", sorted(CHECKPOINT_PROBLEMS))
def test_a_bad_checkpoint_is_one_line_and_leaves_no_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_checkpoints: dict[str, Path], how: str, kind: str
) -> None:
    path = bad_checkpoints[kind]
    rc, err = _run(capsys, *_checkpoint_argv(how, path))
    _one_line_error(rc, err, str(path), CHECKPOINT_PROBLEMS[kind])
    assert not (tmp_path / "PWNED").exists()  # the malicious payload never ran


def test_a_good_checkpoint_still_resumes_and_tests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The checks let a checkpoint of the configured model through, for all three ways."""
    small = [*FAST, "model.params.channels=4", "trainer.smart_cfg_auto_populate=false", "tracker.run_name=cli"]
    assert main(["train", *small]) == 0
    (run,) = Path("runs").iterdir()
    checkpoint = next((run / "checkpoints" / "min_val_loss").glob("*.ckpt"))
    assert main(["train", *small, "trainer.epochs=2", "--resume", str(checkpoint)]) == 0
    assert main(["train", *small, "trainer.epochs=2", f"trainer.resume_from={checkpoint}"]) == 0
    assert main(["test", *small, "--weights", str(checkpoint)]) == 0
    assert "error" not in capsys.readouterr().err


# --- the whole job is checked before the data is built -----------------------------------


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A path the factories ``bad_input_job:marked_model`` / ``marked_loaders`` write (with
    the suffix ``.model`` / ``.data``) when they run."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return tmp_path / "built"


def _marked(marker: Path) -> list[str]:
    return [
        *FAST,
        "model.factory=bad_input_job:marked_model",
        f"model.params.marker={marker}.model",
        "data.factory=bad_input_job:marked_loaders",
        f"data.params={{marker: '{marker}.data'}}",
    ]


def _built(marker: Path) -> list[str]:
    """What the job built: "model" and / or "data"."""
    return [part for part in ("model", "data") if Path(f"{marker}.{part}").exists()]


def test_the_marked_factory_runs_when_nothing_is_wrong(capsys: pytest.CaptureFixture[str], marker: Path) -> None:
    """The control for the corpus below, which runs this job with one mistake each and
    checks that the mistake is reported before this data factory runs."""
    assert main(["train", *_marked(marker), "trainer.smart_cfg_auto_populate=false"]) == 0
    assert _built(marker) == ["model", "data"]


def test_an_error_inside_a_users_factory_names_the_factory_key(
    capsys: pytest.CaptureFixture[str], marker: Path
) -> None:
    rc, err = _run(capsys, "train", *FAST, "data.factory=bad_input_job:failing_loaders", "data.params={bucket: s3://b}")
    line = _one_line_error(rc, err, "data.factory: bad_input_job:failing_loaders", "FileNotFoundError: no dataset at s3://b")
    assert "second line" not in line
    rc, err = _run(capsys, "train", *FAST, "data.params.val_fraction=2.0")  # the case
    _one_line_error(rc, err, "data.params.val_fraction", "[0, 1)")


# --- real subprocesses: the console entry point, and a package that is not installed -----


def _busloop(tmp_path: Path, *argv: str, pythonpath: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (*pythonpath, REPO, SCRIPTS))), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_tensorboard_backend_without_the_package_names_the_extra(tmp_path: Path) -> None:
    """``sitecustomize.py`` sets ``sys.modules['tensorboard'] = None`` in the child: this
    simulates the package being absent (the test environment has it installed)."""
    absent = tmp_path / "absent"
    absent.mkdir()
    (absent / "sitecustomize.py").write_text("import sys\nsys.modules['tensorboard'] = None  # simulates an absent package\n")
    marker = tmp_path / "built"
    argv = [*_marked(marker), "tracker.backends=[local, tensorboard]"]
    proc = _busloop(tmp_path, "train", *argv, pythonpath=(absent,))
    os.chdir(tmp_path)
    _one_line_error(proc.returncode, proc.stderr, "tracker.backends", "pip install 'busloop[tensorboard]'")
    assert not _built(marker)


@pytest.mark.slow
def test_console_script_refuses_a_malicious_checkpoint_and_random_bytes(tmp_path: Path) -> None:
    target = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    torch.save({"busloop_format": 1, "payload": Payload(target)}, evil)
    proc = _busloop(tmp_path, "train", *FAST, "--resume", str(evil))
    _one_line_error(proc.returncode, proc.stderr, "refuses: Unsupported global: GLOBAL io.open")
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(os.urandom(2048))
    proc = _busloop(tmp_path, "test", "--weights", str(noise))
    _one_line_error(proc.returncode, proc.stderr, "noise.ckpt is not a readable checkpoint")
    assert not target.exists()


# --- the corpus: broken configs and overrides -------------------------------------------


def _inner(type_: Any) -> Any:
    """``X`` for ``X | None``; the type itself otherwise."""
    if typing.get_origin(type_) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(type_) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return type_


def _nodes(cls: type, path: str, setup: tuple[str, ...] = ()) -> Iterator[tuple[str, type, tuple[str, ...]]]:
    """Every attrs class in the config tree: ``(key path, class, overrides it needs to exist)``."""
    yield path, cls, setup
    for field in attrs.fields(attrs.resolve_types(cls)):
        inner, key = _inner(field.type), f"{path}.{field.name}" if path else field.name
        if attrs.has(inner):
            yield from _nodes(inner, key, setup)
        elif typing.get_origin(inner) is list and attrs.has(typing.get_args(inner)[0]):
            yield from _nodes(typing.get_args(inner)[0], f"{key}.0", (*setup, f"{key}.0.name=EarlyStopping"))


def _wrong_value(type_: Any) -> str | None:
    """An override value of a type the field does not take (None: the field takes any)."""
    inner = _inner(type_)
    if attrs.has(inner) or typing.get_origin(inner) in (list, dict):
        return "5"
    if inner is str:
        return "[1, 2]"
    if inner in (int, float, bool) or typing.get_origin(inner) in (typing.Union, types.UnionType):
        return "ten"
    return None


def _generated() -> list[Any]:
    cases = []
    for path, cls, setup in _nodes(Config, ""):
        names = [f.name for f in attrs.fields(cls)]
        bogus = f"{names[0]}x"
        key = f"{path}.{bogus}" if path else bogus
        cases.append(pytest.param([*setup, f"{key}=1"], key, f"did you mean '{names[0]}'", id=f"unknown-{key}"))
        for field in attrs.fields(cls):
            value = _wrong_value(field.type)
            key = f"{path}.{field.name}" if path else field.name
            if value is not None:
                needed = [s for s in setup if not s.startswith(f"{key}=")]
                cases.append(pytest.param([*needed, f"{key}={value}"], key, "expected", id=f"type-{key}"))
    return cases


#: Out-of-range values, bad overrides, names and parameters: (overrides, key, detail).
TABLE = [
    (["trainer.epochs=0"], "trainer.epochs", ">= 1"),
    (["trainer.max_steps=0"], "trainer.max_steps", ">= 1"),
    (["trainer.batch_size=0"], "trainer.batch_size", ">= 1"),
    (["trainer.num_workers=-1"], "trainer.num_workers", ">= 0"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches", ">= 1"),
    (["trainer.gradient_clip_val=0"], "trainer.gradient_clip_val", "> 0"),
    (["trainer.gradient_clip_algorithm=sideways"], "trainer.gradient_clip_algorithm", "'norm', 'value'"),
    (["trainer.precision=64"], "trainer.precision", "must be one of"),
    (["trainer.accelerator=tpu"], "trainer.accelerator", "must be 'auto'"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch", ">= 1"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval", ">= 1"),
    (["trainer.val_check_interval=1.5"], "trainer.val_check_interval", "(0, 1]"),
    (["trainer.limit_train_batches=-1"], "trainer.limit_train_batches", ">= 0"),
    (["trainer.limit_val_batches=2.5"], "trainer.limit_val_batches", "[0, 1]"),
    (["trainer.num_sanity_val_steps=-2"], "trainer.num_sanity_val_steps", ">= -1"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps", ">= 1"),
    (["trainer.save_top_k=-2"], "trainer.save_top_k", ">= -1"),
    (["trainer.main_metric.mode=up"], "trainer.main_metric.mode", "'min', 'max'"),
    (["trainer.input_shape=[0, 8, 8]"], "trainer.input_shape.0", ">= 1"),
    (["scheduler.interval=batch"], "scheduler.interval", "'epoch', 'step'"),
    (["scheduler.frequency=0"], "scheduler.frequency", ">= 1"),
    (["tracker.backends=[wandb]"], "tracker.backends.0", "must be one of"),
    (["exporter.onnx.opset_version=99"], "exporter.onnx.opset_version", "between"),
    (["exporter.tolerance=0"], "exporter.tolerance", "> 0"),
    (["exporter.blobconverter.shaves=17"], "exporter.blobconverter.shaves", "between"),
    (["exporter.blobconverter.data_type=FP8"], "exporter.blobconverter.data_type", "must be one of"),
    (["exporter.blobconverter.version=2022.1"], "exporter.blobconverter.version", "quote it"),
    (["trainer.epochs=[1"], "trainer.epochs", "invalid value"),
    (["=5"], "override", "expected key=value"),
    (["trainer..epochs=3"], "trainer..epochs", "empty name"),
    (["trainer.callbacks.5.name=EarlyStopping"], "trainer.callbacks.5", "expected an index"),
    (["trainer.epochs.deep=1"], "trainer.epochs", "not a mapping or a list"),
    (["optimizer.name=SGDD"], "optimizer.name", "did you mean 'SGD'"),
    (["optimizer.name=torch.optim:AdamWW"], "optimizer.name", "did you mean 'AdamW'"),
    (["optimizer.params.lrr=0.1"], "optimizer.params.lrr", "did you mean 'lr'"),
    (["optimizer.params.betas=0.9"], "optimizer.params", "AdamW rejected"),
    (["scheduler.name=CosineAnealingLR"], "scheduler.name", "did you mean 'CosineAnnealingLR'"),
    (["scheduler.name=StepLR", "scheduler.params={}"], "scheduler.params", "step_size"),
    (["loss=nope.module:fn"], "loss", "no module named 'nope'"),
    (["model.factory=runtime.examples.digits:build_modle"], "model.factory", "did you mean 'build_model'"),
    (["data.factory=runtime.examples.nodigits:build_loaders"], "data.factory", "nodigits"),
    (["data.params.val_fractoin=0.1"], "data.params.val_fractoin", "did you mean 'val_fraction'"),
    (["model.params.num_class=3"], "model.params.num_class", "did you mean 'num_classes'"),
    (["trainer.callbacks.0.name=ModelCheckpont"], "trainer.callbacks.0.name", "did you mean 'ModelCheckpoint'"),
    (["trainer.callbacks.0.name=nope.pkg:Callback"], "trainer.callbacks.0.name", "no module named 'nope'"),
    (["trainer.callbacks.0.name=EarlyStopping", "trainer.callbacks.0.params.monitr=x"], "trainer.callbacks.0.params.monitr", "did you mean 'monitor'"),
    (["trainer.callbacks.0.name=EarlyStopping", "trainer.callbacks.0.params={monitor: val/loss, mode: up}"], "trainer.callbacks.0.params", "mode can be"),
    (["trainer.callbacks.0.name=EMACallback", "trainer.callbacks.0.params.decay=2"], "trainer.callbacks.0.params", "decay"),
    (["trainer.callbacks.0.name=EarlyStopping", "trainer.callbacks.0.active=maybe"], "trainer.callbacks.0.active", "true or false"),
    (["trainer.callbacks.0.params.patience=3"], "trainer.callbacks.0.name", "required key is missing"),
    (["scheduler.params.T_maxx=3"], "scheduler.params.T_maxx", "did you mean 'T_max'?"),
    (["optimizer.params.lr=-1"], "optimizer.params", "Invalid learning rate"),
    (["data.params.markerr=x"], "data.params.markerr", "did you mean 'marker'?"),
]


@pytest.mark.parametrize(("overrides", "key", "detail"), [*_generated(), *TABLE])
def test_corpus_of_broken_overrides(
    capsys: pytest.CaptureFixture[str], marker: Path, overrides: list[str], key: str, detail: str
) -> None:
    """Each mistake: exit 2, one line naming the key, reported before the model and the
    data are built."""
    rc, err = _run(capsys, "train", *_marked(marker), *overrides)
    _one_line_error(rc, err, key, detail)
    assert not _built(marker), "the job was built before the mistake was reported"


def test_the_corpus_is_large_and_reaches_every_level() -> None:
    generated = _generated()
    assert len(generated) + len(TABLE) >= 100
    levels = {case.values[1].count(".") for case in generated if case.id.startswith("unknown-")}
    assert levels == {0, 1, 2, 3, 4}  # config, section, sub-section, ...


BAD_FILES = [
    ("config.yaml", "trainer:\n  epochs: [1\n", "invalid YAML at line"),
    ("config.yaml", "trainer:\n\tepochs: 3\n", "invalid YAML"),
    ("config.yaml", "- a\n- list\n", "the top level must be a mapping"),
    ("config.yaml", "trainer:\n  epochz: 3\n", "trainer.epochz: unknown key; did you mean 'epochs'"),  # names the key
    ("config.json", '{"trainer": {"epochs": 3,}}', "invalid JSON at line 1"),
    ("config.toml", "[trainer]\nepochs = 3\n", "unsupported config file type"),
]


@pytest.mark.parametrize(("name", "text", "detail"), BAD_FILES)
def test_corpus_of_broken_config_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, detail: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    rc, err = _run(capsys, "train", str(path))
    _one_line_error(rc, err, detail) if "unknown key" in detail else _one_line_error(rc, err, name, detail)
    rc, err = _run(capsys, "train", str(tmp_path / "absent.yaml"))
    _one_line_error(rc, err, "config file not found", "absent.yaml")


KEYS = ["trainer.epochs", "trainer.callbacks.0.name", "trainer.callbacks.0", "optimizer.params.lr", "tracker.backends.1", "exporter.onnx", "model", "x.y.0.z"]
VALUES = st.one_of(st.text(max_size=12), st.sampled_from(["[1", "{a: 1}", "null", "-1", "1e400", "[]", "0.5", "'3'", ": x"]))


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=15), VALUES), max_size=4))
def test_any_override_loads_or_raises_config_error(overrides: list[tuple[str, str]]) -> None:
    """Whatever is typed after ``busloop train``, the config loads or every problem is a
    ``ConfigError`` line naming a key path: never another exception."""
    try:
        load_config({}, [f"{key}={value}" for key, value in overrides])
    except ConfigError as exc:
        assert exc.problems and all(line.strip() and "\n" not in line for line in exc.problems)


def test_an_impossible_val_check_interval_is_refused_before_fit_start_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A data-dependent setting (an int interval longer than the epoch: validation would never
    run) is refused as soon as the loaders are known: before fit_start, one line naming the key,
    and the log's "Run failed" record carries no traceback for this user mistake."""
    started: list[str] = []

    class FitStart:
        def on_fit_start(self, runtime: Runtime) -> None:
            started.append("fit_start")

    rt = Runtime(
        make_model(), [FitStart()], base_config(val_check_interval=100), loss=torch.nn.functional.cross_entropy,
        tracker=NullTracker(),
    )
    with caplog.at_level("ERROR", logger="busloop"), pytest.raises(
        ConfigError, match="trainer.val_check_interval: 100 batches is more than an epoch's 6"
    ):
        rt.fit(make_loader(), make_loader(32))
    assert started == []
    failed = [r for r in caplog.records if r.getMessage().startswith("Run failed")]
    assert len(failed) == 1 and failed[0].exc_info is None
