"""``self.log`` / ``self.log_dict`` under busloop against the real Lightning 2.6 Trainer.

The same LightningModule logs with every option (on_step / on_epoch combinations, each
reduce_fx, batch_size given and inferred, prog_bar, logger=False, torchmetrics objects,
log_dict, epoch-level hooks) and is trained by ``lightning.pytorch.Trainer`` and by
``runtime.Runtime``; the three metric dicts and what the logger / tracker received must match.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from runtime import Callback, Runtime
from runtime.bus import CallbackError
from runtime.tracking import Tracker

pl = pytest.importorskip("lightning.pytorch")
torchmetrics = pytest.importorskip("torchmetrics")


class CapturingTracker(Tracker):
    """A busloop tracker that records every ``log_metrics`` call as (step, metrics, epoch)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float], int | None]] = []

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int, epoch: int | None = None) -> None:
        self.calls.append((step, {k: float(v) for k, v in metrics.items()}, epoch))

    def log_image(self, tag: str, image: Any, step: int) -> Path | None:
        return None

    def log_artifact(self, path: Any, kind: str) -> Path | None:
        return None


class CapturingLogger(pl.loggers.Logger):
    """A Lightning logger that records every ``log_metrics`` call as (step, metrics, epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float], int | None]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        epoch = values.pop("epoch", None)  # Lightning adds the epoch to train/epoch-end calls
        assert step is not None
        self.calls.append((step, values, None if epoch is None else int(epoch)))


class LoggingModule(pl.LightningModule):
    """A classifier that logs with every ``self.log`` option Lightning documents."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=2)
        self.val_mean = torchmetrics.MeanMetric()
        self.train_epochs_ended = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        loss = nn.functional.cross_entropy(out, y)
        self.log("a", loss)  # step only (training default)
        self.log("b", loss, on_step=True, on_epoch=True, prog_bar=True)  # b_step, b_epoch
        self.log("c", float(batch_idx), on_step=False, on_epoch=True, reduce_fx="sum")
        self.log("d", loss, on_epoch=True, logger=False, reduce_fx=torch.max)
        self.log("e", loss, on_step=False, on_epoch=True, reduce_fx="min", batch_size=3)
        self.log("f", loss * 2, on_step=False, on_epoch=True)  # mean weighted by inferred sizes
        self.log("g", loss, on_step=False, on_epoch=True, batch_size=5)
        self.log("h", loss, on_step=False, on_epoch=True, reduce_fx=max)
        self.log("i", torch.tensor(batch_idx), on_step=True, prog_bar=True, logger=False)  # an int
        self.train_acc(out, y)
        self.log("acc", self.train_acc, on_step=True, on_epoch=True)
        self.log_dict({"k1": loss, "k2": loss / 2}, on_epoch=True, reduce_fx="sum")
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("tbe", 1.0, on_epoch=True)

    def on_train_epoch_start(self) -> None:
        self.log("tes", 7.0)

    def on_train_epoch_end(self) -> None:
        self.train_epochs_ended += 1
        self.log("tend", float(self.train_epochs_ended), prog_bar=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("v", loss, prog_bar=True)  # epoch only (validation default)
        self.log("vs", loss, on_step=True)  # vs_step, vs_epoch
        self.log("vmax", loss, reduce_fx="max")
        self.log("vsum", loss, reduce_fx=torch.sum, batch_size=3)
        self.log("vonly_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("vquiet", loss, logger=False)
        self.val_mean.update(loss)
        self.log("vmean", self.val_mean)
        self.log_dict({"vd1": loss, "vd2": loss * 3}, prog_bar=True, batch_size=4)

    def on_validation_epoch_end(self) -> None:
        self.log("vend", 1.5)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("t", loss, prog_bar=True)
        self.log("ts", loss, on_step=True, reduce_fx="max")

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=generator)
    y = (x[:, :4].sum(1) > x[:, 4:].sum(1)).long()
    # uneven last batches (16, 16, 8) and (8, 8, 4): batch-size weighting shows
    return DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x[:20], y[:20]), batch_size=8)


def _trainer(logger: Any, **kw: Any) -> Any:
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, **kw,
    )


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def _assert_same_calls(
    busloop: list[tuple[int, dict[str, float], int | None]],
    lightning: list[tuple[int, dict[str, float], int | None]],
) -> None:
    assert [(s, sorted(m), e) for s, m, e in busloop] == [(s, sorted(m), e) for s, m, e in lightning]
    for (_, ours, _), (_, theirs, _) in zip(busloop, lightning, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-6)


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    """The module fitted for 2 epochs (1 sanity batch) by Lightning's Trainer and by busloop."""
    torch.manual_seed(0)
    module = LoggingModule()
    train, val = _loaders()
    logger = CapturingLogger()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = _trainer(logger, max_epochs=2, num_sanity_val_steps=1)
        torch.manual_seed(1)
        trainer.fit(copy.deepcopy(module), train, val)

    tracker = CapturingTracker()
    config = {"trainer": {"accelerator": "cpu", "epochs": 2, "num_sanity_val_steps": 1, "log_every_n_steps": 1}}
    rt = Runtime(copy.deepcopy(module), [], config, tracker=tracker)
    torch.manual_seed(1)
    rt.fit(*_loaders())
    return {"trainer": trainer, "logger": logger, "rt": rt, "tracker": tracker}


def test_callback_metrics_equal_lightning(fitted: dict[str, Any]) -> None:
    lightning = _floats(fitted["trainer"].callback_metrics)
    assert fitted["rt"].state.metrics == pytest.approx(lightning, abs=1e-6)
    # the names Lightning documents: forked values under name, name_step and name_epoch
    assert {"b", "b_step", "b_epoch", "acc", "acc_epoch", "vs", "vs_epoch", "tend", "tes"} <= set(lightning)


def test_logged_metrics_equal_lightning(fitted: dict[str, Any]) -> None:
    lightning = _floats(fitted["trainer"].logged_metrics)
    assert fitted["rt"].state.logged_metrics == pytest.approx(lightning, abs=1e-6)
    assert "d_epoch" not in lightning and "vquiet" not in lightning  # logger=False


def test_progress_bar_metrics_equal_lightning(fitted: dict[str, Any]) -> None:
    lightning = fitted["trainer"].progress_bar_metrics
    assert fitted["rt"].state.progress_bar_metrics == pytest.approx(lightning, abs=1e-6)
    assert {"b_step", "b_epoch", "i", "v", "vd1", "tend"} <= set(lightning)


def test_tracker_gets_what_lightnings_logger_gets(fitted: dict[str, Any]) -> None:
    lightning_calls = fitted["logger"].calls
    # train steps every step (log_every_n_steps=1), eval steps every batch, epoch ends
    assert len(lightning_calls) == 2 * (3 + 3 + 1 + 1)
    _assert_same_calls(fitted["tracker"].calls, lightning_calls)


def test_log_every_n_steps_and_test_stage_match_lightning() -> None:
    torch.manual_seed(0)
    module = LoggingModule()
    logger = CapturingLogger()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = _trainer(logger, max_epochs=2, num_sanity_val_steps=0)
        trainer.log_every_n_steps = 2
        torch.manual_seed(1)
        trainer.fit(copy.deepcopy(module), *_loaders())
        tested = copy.deepcopy(module)
        _trainer(logger).test(tested, _loaders()[1], verbose=False)
    test_trainer = tested.trainer

    tracker = CapturingTracker()
    config = {"trainer": {"accelerator": "cpu", "epochs": 2, "num_sanity_val_steps": 0, "log_every_n_steps": 2}}
    torch.manual_seed(1)
    Runtime(copy.deepcopy(module), [], config, tracker=tracker).fit(*_loaders())
    rt = Runtime(copy.deepcopy(module), [], {"trainer": {"accelerator": "cpu"}}, tracker=tracker)
    returned = rt.test(_loaders()[1])

    _assert_same_calls(tracker.calls, logger.calls)
    assert rt.state.metrics == pytest.approx(_floats(test_trainer.callback_metrics), abs=1e-6)
    assert rt.state.logged_metrics == pytest.approx(_floats(test_trainer.logged_metrics), abs=1e-6)
    assert rt.state.progress_bar_metrics == pytest.approx(test_trainer.progress_bar_metrics, abs=1e-6)
    assert returned == pytest.approx({"t": rt.state.metrics["t"], "ts": rt.state.metrics["ts"],
                                      "ts_epoch": rt.state.metrics["ts_epoch"]})


class _LogsOnce(pl.LightningModule):
    """Logs ``self.spec`` (name, value, kwargs) from ``where`` on the first call."""

    def __init__(self, where: str, value: Any, **kwargs: Any) -> None:
        super().__init__()
        self.net = nn.Linear(8, 2)
        self.where, self.value, self.kwargs = where, value, kwargs

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.where == "training_step":
            self.log("bad", self.value, **self.kwargs)
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def on_train_epoch_end(self) -> None:
        if self.where == "on_train_epoch_end":
            self.log("bad", self.value, **self.kwargs)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("where", "value", "kwargs", "message"),
    [
        ("training_step", 1.0, {"reduce_fx": "median"}, "reduce_fx must be"),
        ("training_step", 1.0, {"reduce_fx": lambda t: t}, "reduce_fx must be"),
        ("training_step", torch.ones(3), {}, "shape (3,)"),
        ("training_step", "high", {}, "the value is a str"),
        ("training_step", {"x": 1.0}, {}, "use self.log_dict"),
        ("training_step", 1.0, {"on_step": False, "on_epoch": False}, "records nothing"),
        ("on_train_epoch_end", 1.0, {"on_step": True}, "on_step=True) in an epoch-level hook"),
    ],
)
def test_bad_log_calls_name_the_metric_and_the_problem(where: str, value: Any, kwargs: Any, message: str) -> None:
    rt = Runtime(_LogsOnce(where, value, **kwargs), [], {"trainer": {"epochs": 1, "accelerator": "cpu"}},
                 tracker=CapturingTracker())
    with pytest.raises((ValueError, CallbackError)) as raised:  # a hook's error names the hook too
        rt.fit(_loaders()[0])
    assert "self.log('bad'" in str(raised.value) and message in str(raised.value)


def test_runtime_log_prog_bar_lands_in_progress_bar_metrics() -> None:
    class LogsAccuracy(Callback):
        def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
            runtime.log("accuracy", float(batch_idx), prog_bar=True)
            runtime.log("hidden", 1.0)

    model = nn.Linear(8, 2)
    config = {"trainer": {"epochs": 1, "accelerator": "cpu"}, "optimizer": {"name": "SGD", "params": {"lr": 0.1}}}
    seen: list[float] = []

    class Reader(Callback):
        def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
            seen.append(runtime.state.progress_bar_metrics["train/accuracy"])

    rt = Runtime(model, [LogsAccuracy(), Reader()], config, loss=nn.functional.cross_entropy,
                 tracker=CapturingTracker())
    rt.fit(_loaders()[0])
    assert seen == [0.0, 1.0, 2.0]  # the latest step value while the epoch runs
    # then the epoch's batch-size weighted mean: (0*16 + 1*16 + 2*8) / 40
    assert rt.state.progress_bar_metrics == {"train/accuracy": pytest.approx(0.8)}


@pytest.mark.slow
def test_sync_dist_reduces_across_two_torchrun_ranks(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(repo / "tests" / "scripts" / "ddp_log.py"), str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    losses = [[loss for loss, _ in r["losses"]] for r in ranks]
    everything = [pair for r in ranks for pair in r["losses"]]
    weighted_mean = sum(loss * size for loss, size in everything) / sum(size for _, size in everything)
    for saved in ranks:
        metrics = saved["metrics"]
        assert metrics["mean_sync"] == pytest.approx(weighted_mean, rel=1e-6)
        assert metrics["max_sync"] == pytest.approx(max(losses[0] + losses[1]), rel=1e-6)
        assert metrics["sum_sync"] == 6.0  # 3 batches on each rank
        local = saved["losses"]
        local_mean = sum(loss * size for loss, size in local) / sum(size for _, size in local)
        assert metrics["mean_local"] == pytest.approx(local_mean, rel=1e-6)  # no sync_dist: this rank's
        assert metrics["rank_zero"] == pytest.approx(local_mean, rel=1e-6)  # rank_zero_only: never synced
        # a step value with sync_dist is the mean over ranks of that step's values
        assert saved["logged"]["step_sync"] == pytest.approx((losses[0][-1] + losses[1][-1]) / 2, rel=1e-6)
    assert ranks[0]["metrics"]["mean_local"] != pytest.approx(ranks[1]["metrics"]["mean_local"])


class LogsLossAndTrainStart(pl.LightningModule):
    """Logs ``val/loss`` itself (busloop must not add its own) and a value in on_train_start."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 2)

    def on_train_start(self) -> None:
        self.log("at_train_start", 3.0)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("train/loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("val/loss", loss, on_step=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_module_logged_val_loss_and_on_train_start_log_like_lightning() -> None:
    torch.manual_seed(0)
    module = LogsLossAndTrainStart()
    logger = CapturingLogger()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = _trainer(logger, max_epochs=2, num_sanity_val_steps=1)
        trainer.fit(copy.deepcopy(module), *_loaders())
    tracker = CapturingTracker()
    config = {"trainer": {"accelerator": "cpu", "epochs": 2, "num_sanity_val_steps": 1, "log_every_n_steps": 1}}
    rt = Runtime(copy.deepcopy(module), [], config, tracker=tracker)
    rt.fit(*_loaders())

    _assert_same_calls(tracker.calls, logger.calls)
    assert rt.state.metrics == pytest.approx(_floats(trainer.callback_metrics), abs=1e-6)
    assert rt.state.logged_metrics == pytest.approx(_floats(trainer.logged_metrics), abs=1e-6)
    train_epoch_ends = [metrics for _, metrics, _ in logger.calls if "train/loss_epoch" in metrics]
    # logged with the first train epoch's values, then reset with them
    assert "at_train_start" in train_epoch_ends[0] and "at_train_start" not in train_epoch_ends[1]
