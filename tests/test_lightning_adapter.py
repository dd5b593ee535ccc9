"""Stock ``lightning.pytorch.callbacks`` run by busloop through the adapter (compat/adapter.py).

Each test trains the same LightningModule twice, under Lightning's Trainer with the stock
callback and under busloop's Runtime with another instance of the same stock class, and
compares the hook sequence a recording Lightning callback sees, the final weights (<= 1e-6)
and the stock callback's decisions and state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from compat_pairs import EPOCHS, SCORES, PairModule, fit_busloop, fit_lightning, pair, pl

from compat.adapter import LightningCallbackAdapter
from conftest import make_loader
from runtime import Runtime
from runtime.bus import CallbackError
from runtime.errors import ConfigError
from runtime.tracking import NullTracker

ES_CASES: list[dict[str, Any]] = [
    {"monitor": "score", "patience": 1},
    {"monitor": "score", "patience": 1, "check_on_train_epoch_end": False},
    {"monitor": "score", "patience": 1, "check_on_train_epoch_end": True},
    {"monitor": "score", "divergence_threshold": 0.55},
    {"monitor": "score", "stopping_threshold": 0.25},
]


@pytest.mark.parametrize("options", ES_CASES, ids=[str(i) for i in range(len(ES_CASES))])
def test_early_stopping(tmp_path: Path, options: dict[str, Any]) -> None:
    fit, (theirs,), rt, (ours,) = pair(lambda _: [pl.callbacks.EarlyStopping(**options)], tmp_path, epochs=8)
    assert (rt.state.epoch, rt.state.global_step) == (fit.current_epoch, fit.global_step)
    assert ours.stopped_epoch == theirs.stopped_epoch and ours.wait_count == theirs.wait_count
    assert ours.stopping_reason == theirs.stopping_reason
    assert ours.stopping_reason_message == theirs.stopping_reason_message
    torch.testing.assert_close(ours.best_score, theirs.best_score)
    assert theirs.stopping_reason.name != "NOT_STOPPED" or options.get("patience") is None


MC_CASES: list[dict[str, Any]] = [
    {"monitor": "score", "save_top_k": 1, "filename": "{epoch}-{score:.2f}"},
    {"monitor": "score", "save_top_k": 2, "save_last": True},
    {"monitor": "score", "save_top_k": -1, "mode": "max", "filename": "m-{epoch:02d}-{step}"},
    {"every_n_train_steps": 5, "save_top_k": -1},
    {"every_n_epochs": 2, "monitor": "score", "save_top_k": 2, "save_weights_only": True},
    {"monitor": None, "save_last": True},
]


@pytest.mark.parametrize("options", MC_CASES, ids=[str(i) for i in range(len(MC_CASES))])
def test_model_checkpoint(tmp_path: Path, options: dict[str, Any]) -> None:
    def make(root: Path) -> list[Any]:
        return [pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", **options)]

    _, (theirs,), _, (ours,) = pair(make, tmp_path)
    assert sorted(os.listdir(tmp_path / "bl" / "ckpt")) == sorted(os.listdir(tmp_path / "pl" / "ckpt"))
    assert Path(ours.best_model_path).name == Path(theirs.best_model_path).name
    assert Path(ours.last_model_path).name == Path(theirs.last_model_path).name
    if theirs.best_model_score is not None:
        torch.testing.assert_close(ours.best_model_score, theirs.best_model_score)
    assert {Path(p).name for p in ours.best_k_models} == {Path(p).name for p in theirs.best_k_models}
    assert ours.state_key == theirs.state_key


def _lr_rows(rows: list[tuple[int, dict[str, float]]]) -> list[tuple[int, dict[str, float]]]:
    picked = [(s, {k: v for k, v in m.items() if k.startswith(("lr-", "momentum"))}) for s, m in rows]
    return [(s, m) for s, m in picked if m]


@pytest.mark.parametrize("interval", ["step", "epoch", None])
def test_learning_rate_monitor(tmp_path: Path, interval: str | None) -> None:
    module = PairModule(groups=2, scheduler={"kind": "step", "interval": "epoch"})
    fit, _, rt, _ = pair(
        lambda _: [pl.callbacks.LearningRateMonitor(logging_interval=interval, log_momentum=True)],
        tmp_path, module=module, logged=True, log_every_n_steps=2,
    )
    theirs = _lr_rows([(step, values) for step, values, _ in fit.logger.calls])
    ours = _lr_rows(rt.tracker.rows)  # type: ignore[union-attr]
    assert theirs and ours == theirs


def test_lambda_callback(tmp_path: Path) -> None:
    seen: dict[str, list[tuple[str, int]]] = {"pl": [], "bl": []}

    def make(root: Path) -> list[Any]:
        log = seen[root.name]
        return [pl.callbacks.LambdaCallback(
            on_train_epoch_end=lambda t, m: log.append(("epoch_end", t.current_epoch)),
            on_validation_batch_end=lambda t, m, out, batch, idx: log.append(("val_batch", idx)),
        )]  # fmt: skip

    _, _, rt, _ = pair(make, tmp_path)
    assert seen["bl"] == seen["pl"] and len(seen["bl"]) == EPOCHS * 4
    wrapped = next(c for c in rt.callbacks if isinstance(c, LightningCallbackAdapter))
    assert wrapped.lightning_hooks == ("train_epoch_end", "validation_batch_end")  # only those
    assert rt.bus.describe()["train_batch_end"] == ["Recorder.on_train_batch_end"]


def test_gradient_accumulation_scheduler(tmp_path: Path) -> None:
    make = lambda _: [pl.callbacks.GradientAccumulationScheduler({0: 1, 1: 2, 3: 3})]  # noqa: E731
    fit, _, rt, _ = pair(make, tmp_path)
    assert rt.state.global_step == fit.global_step == 6 + 3 + 3 + 2
    assert rt.accumulate_grad_batches == fit.accumulate_grad_batches == 3


def test_timer_stops_at_fit_start(tmp_path: Path) -> None:
    fit, _, rt, _ = pair(lambda _: [pl.callbacks.Timer(duration={"seconds": 0})], tmp_path)
    # Timer checks at fit_start: no time left, so neither trainer trains at all.
    assert [c[0] for c in rt.recorded] == ["setup", "on_fit_start", "on_fit_end", "teardown"]  # type: ignore[attr-defined]
    assert rt.state.global_step == fit.global_step == 0 and fit.should_stop and rt.state.should_stop


def test_timer_state_across_resume(tmp_path: Path) -> None:
    fit, (theirs,), rt, (ours,) = pair(lambda _: [pl.callbacks.Timer(duration={"days": 1})], tmp_path)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert ours.state_dict()["time_elapsed"].keys() == theirs.state_dict()["time_elapsed"].keys()
    elapsed = ours.time_elapsed("train")
    assert elapsed > 0
    path = rt.save_checkpoint(tmp_path / "t.ckpt")
    saved = torch.load(path, weights_only=True)["callbacks"][ours.state_key]
    assert saved["time_elapsed"]["train"] == pytest.approx(elapsed, abs=0.05)
    again = pl.callbacks.Timer(duration={"days": 1})
    resumed = fit_busloop(PairModule(), [again], epochs=EPOCHS, ckpt_path=path)  # already done
    assert resumed.state.global_step == rt.state.global_step
    assert saved["time_elapsed"]["train"] <= again.time_elapsed("train") < saved["time_elapsed"]["train"] + 1


def test_duck_typed_callback_and_plain_module(tmp_path: Path) -> None:
    class Duck:
        def __init__(self) -> None:
            self.seen: list[Any] = []

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            module = type(pl_module.wrapped_module).__name__
            self.seen.append((trainer.current_epoch, module, trainer.callbacks[0] is self, pl_module.current_epoch))

    duck = Duck()
    model = torch.nn.Linear(8, 2)
    config = {"trainer": {"epochs": 2}, "loss": "torch.nn.functional:cross_entropy",
              "optimizer": {"name": "SGD", "params": {"lr": 0.1}}}  # fmt: skip
    rt = Runtime(model, [duck], config, tracker=NullTracker())
    rt.fit(make_loader(32))
    assert duck.seen == [(0, "Linear", True, 0), (1, "Linear", True, 1)]


def test_refused_at_registration() -> None:
    model, config = torch.nn.Linear(8, 2), {"loss": "torch.nn.functional:cross_entropy"}
    with pytest.raises(ConfigError, match=r"^GradientAccumulationScheduler: needs a LightningModule"):
        Runtime(model, [pl.callbacks.GradientAccumulationScheduler({0: 2})], config)
    with pytest.raises(ConfigError, match=r"^LearningRateMonitor: needs a logger"):
        Runtime(PairModule(), [pl.callbacks.LearningRateMonitor()], tracker=NullTracker())
    with pytest.raises(ConfigError, match=r"^BatchSizeFinder: needs Lightning's tuner"):
        Runtime(PairModule(), [pl.callbacks.BatchSizeFinder()])

    class Typo:
        def on_train_epoch_ends(self, trainer: Any, pl_module: Any) -> None: ...

    with pytest.raises(ConfigError, match=r"^Typo: on_train_epoch_ends is no Lightning callback hook"):
        Runtime(PairModule(), [Typo()])


def test_error_in_stock_hook_names_the_callback(tmp_path: Path) -> None:
    def boom(trainer: Any, pl_module: Any) -> None:
        raise ValueError("nope")

    rt = Runtime(PairModule(), [pl.callbacks.LambdaCallback(on_train_start=boom)],
                 {"trainer": {"epochs": 1}}, tracker=NullTracker())  # fmt: skip
    with pytest.raises(CallbackError, match="LambdaCallback.on_train_start.*nope"):
        rt.fit(make_loader(32))



def test_on_exception_checkpoint_writes_file(tmp_path: Path) -> None:
    class Failing(PairModule):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.current_epoch == 1:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)  # type: ignore[no-any-return]

    written = {}
    for side in ("pl", "bl"):
        callback = pl.callbacks.OnExceptionCheckpoint(dirpath=tmp_path / side, filename="crash")
        with pytest.raises(RuntimeError, match="boom"):
            if side == "pl":
                trainer = pl.Trainer(accelerator="cpu", max_epochs=3, callbacks=[callback], logger=False,
                                     enable_progress_bar=False, enable_model_summary=False,
                                     default_root_dir=tmp_path / "default")  # fmt: skip
                trainer.fit(Failing(), make_loader(96))
            else:
                fit_busloop(Failing(), [callback], epochs=3, val=False)
        written[side] = torch.load(tmp_path / side / "crash.ckpt", weights_only=False)
    assert written["bl"]["epoch"] == written["pl"]["epoch"] == 1
    assert written["bl"]["global_step"] == written["pl"]["global_step"] == 6
    for key, value in written["pl"]["state_dict"].items():
        torch.testing.assert_close(written["bl"]["state_dict"][key], value, rtol=0, atol=1e-6)


def test_model_summary_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def table() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if "Total params" in r.getMessage()]
        caplog.clear()
        return lines

    make = lambda _: [pl.callbacks.ModelSummary(max_depth=2)]  # noqa: E731
    with caplog.at_level("INFO"):
        fit_lightning(PairModule(), make(tmp_path), tmp_path, epochs=1)
        theirs = table()
        fit_busloop(PairModule(), make(tmp_path), epochs=1)
        assert theirs and table() == theirs


def test_device_stats_monitor_logs_cpu_stats(tmp_path: Path) -> None:
    """Training- and validation-batch stats, at Lightning's steps and on its schedule (in a
    validation, every ``log_every_n_steps``-th of its batches, logged at the stepping-batch
    count before the batch that triggered it)."""
    fit, _, rt, _ = pair(lambda _: [pl.callbacks.DeviceStatsMonitor(cpu_stats=True)], tmp_path,
                         logged=True, log_every_n_steps=2, epochs=2)  # fmt: skip

    def names_and_steps(rows: list[tuple[int, dict[str, float]]]) -> list[tuple[int, list[str]]]:
        return [(s, sorted(k for k in m if k.startswith("DeviceStatsMonitor."))) for s, m in rows
                if any(k.startswith("DeviceStatsMonitor.") for k in m)]  # fmt: skip

    theirs = names_and_steps([(step, values) for step, values, _ in fit.logger.calls])
    assert names_and_steps(rt.tracker.rows) == theirs  # type: ignore[union-attr]
    validation = [s for s, names in theirs if names[0].startswith("DeviceStatsMonitor.on_validation_batch")]
    assert validation == [5, 5, 11, 11] and any("cpu_percent" in n for _, names in theirs for n in names)


def test_tqdm_progress_bar_off_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bar = pl.callbacks.TQDMProgressBar()
    rt = fit_busloop(PairModule(), [bar], epochs=2)
    assert rt.state.epoch == 2
    assert bar.train_progress_bar.total == 6 and bar.train_progress_bar.n == 6
    assert "Epoch 1: 100%" in capsys.readouterr().out


class _Order(pl.Callback):  # type: ignore[misc,name-defined]
    """Notes, when it runs, what EarlyStopping and ModelCheckpoint have done so far."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int, float, list[str]]] = []

    def _note(self, hook: str, trainer: Any) -> None:
        es, mc = trainer.early_stopping_callback, trainer.checkpoint_callback
        files = sorted(Path(p).name for p in mc.best_k_models)
        self.seen.append((hook, trainer.current_epoch, es.wait_count, float(es.best_score), files))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._note("validation_end", trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._note("train_epoch_end", trainer)


@pytest.mark.parametrize("at_train_epoch_end", [False, True], ids=["validation_end", "train_epoch_end"])
def test_checkpoint_callbacks_run_last(tmp_path: Path, at_train_epoch_end: bool) -> None:
    """Config order ModelCheckpoint, EarlyStopping, a third callback: as Lightning, the checkpoint
    callback runs after the others, so at ``on_validation_end`` the third callback sees
    EarlyStopping's update of this epoch and no checkpoint of it yet; at ``on_train_epoch_end``
    both monitoring callbacks run after it (and after the module's own hook)."""
    from runtime.registry import instantiate, resolve_callback

    def make(root: Path) -> list[Any]:
        entries = [
            ("lightning.pytorch.callbacks.ModelCheckpoint",
             {"dirpath": str(root / "ckpt"), "monitor": "score", "save_top_k": 2,
              "save_on_train_epoch_end": at_train_epoch_end}),
            ("lightning.pytorch.callbacks.EarlyStopping",
             {"monitor": "score", "patience": 10, "check_on_train_epoch_end": at_train_epoch_end}),
        ]  # fmt: skip
        built = [instantiate(resolve_callback(name, key="cb"), params, key="cb") for name, params in entries]
        return [*built, _Order()]

    _, (_, _, theirs), rt, (mc, _, ours) = pair(make, tmp_path)
    assert ours.seen == theirs.seen
    assert [type(c).__name__ for c in rt.callbacks] == ["EarlyStopping", "_Order", "Recorder", "ModelCheckpoint"]
    for hook, epoch, _, best, files in ours.seen:
        if hook == "validation_end" or at_train_epoch_end:  # ModelCheckpoint has not run yet
            assert not any(f"epoch={epoch}-" in f for f in files)
        checked = SCORES[: epoch + (not at_train_epoch_end)]  # EarlyStopping at validation_end: ran
        assert best == pytest.approx(min(checked) if checked else float("inf"))
    assert len(ours.seen) == 2 * EPOCHS and len(mc.best_k_models) == 2 and any(s[2] > 0 for s in ours.seen)


def _stock(name: str, monitor: str) -> Any:
    """One instance of each stock callback class, with the arguments it requires."""
    C = pl.callbacks
    special: dict[str, Callable[[], Any]] = {
        "BasePredictionWriter": lambda: type("Writer", (C.BasePredictionWriter,), {"write_on_batch_end": print})(),
        "EarlyStopping": lambda: C.EarlyStopping(monitor=monitor),
        "GradientAccumulationScheduler": lambda: C.GradientAccumulationScheduler({0: 2}),
        "LambdaCallback": lambda: C.LambdaCallback(on_train_start=lambda t, m: None),
        "ModelCheckpoint": lambda: C.ModelCheckpoint(monitor=monitor),
        "ModelPruning": lambda: C.ModelPruning("l1_unstructured", amount=0.2),
        "OnExceptionCheckpoint": lambda: C.OnExceptionCheckpoint(dirpath="crash"),
        "StochasticWeightAveraging": lambda: C.StochasticWeightAveraging(swa_lrs=0.01),
        "ThroughputMonitor": lambda: C.ThroughputMonitor(batch_size_fn=len),
    }  # fmt: skip
    return special[name]() if name in special else getattr(C, name)()


#: Every concrete class ``lightning.pytorch.callbacks`` exports.
STOCK = sorted(set(pl.callbacks.__all__) - {"Callback", "Checkpoint", "ProgressBar", "BaseFinetuning"})
REFUSED = {"BatchSizeFinder", "LearningRateFinder", "ThroughputMonitor"}
REFUSED_ON_PLAIN = {
    "BackboneFinetuning", "BasePredictionWriter", "EMAWeightAveraging", "GradientAccumulationScheduler",
    "ModelSummary", "RichModelSummary", "StochasticWeightAveraging", "WeightAveraging",
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("plain", [False, True], ids=["lightning_module", "plain_module"])
def test_every_stock_callback_runs_or_is_refused_at_registration(tmp_path: Path, plain: bool) -> None:
    """Each stock callback either trains an epoch (and validates) without error, or is refused
    when the Runtime is built, with one line naming it and what is missing."""
    refused: dict[str, str] = {}
    for name in STOCK:
        callback = _stock(name, "val/loss" if plain else "val_loss")
        model: Any = torch.nn.Sequential(torch.nn.Linear(8, 2)) if plain else PairModule()
        config: dict[str, Any] = {"trainer": {"epochs": 1}, "tracker": {"save_directory": str(tmp_path / name)}}
        if plain:
            config |= {"loss": "torch.nn.functional:cross_entropy", "optimizer": {"name": "SGD", "params": {}}}
        try:
            rt = Runtime(model, [callback], config)
        except ConfigError as error:
            refused[name] = str(error)
            continue
        with rt:
            rt.fit(make_loader(32), make_loader(16))
        assert rt.state.epoch == 1, name
    assert set(refused) == REFUSED | (REFUSED_ON_PLAIN if plain else {"BackboneFinetuning"})
    for name, message in refused.items():
        assert "\n" not in message and message.split(":")[0] in (name, "Writer") and " needs " in message
