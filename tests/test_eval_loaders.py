"""Several loaders per evaluation stage (runtime.eval_loaders), against Lightning 2.6's Trainer.

The same LightningModule, with two validation loaders, runs under ``lightning.pytorch.Trainer``
and ``compat.Trainer``: the hooks with their ``dataloader_idx``, ``callback_metrics``, the
logger's calls, stock callbacks monitoring a suffixed name, ``validate`` / ``test`` /
``predict`` results and the final weights must agree. The native Runtime takes a list of
loaders too, with busloop's naming rule (loader 0 unchanged, ``/dataloader_idx_N`` after).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.utilities import CombinedLoader  # noqa: E402

from callbacks.progress.tqdm_bar import LuxonisTQDMProgressBar  # noqa: E402
from compat import Trainer  # noqa: E402
from runtime import Runtime  # noqa: E402
from runtime.errors import ConfigError  # noqa: E402
from runtime.eval_loaders import EvalLoaders, as_loaders  # noqa: E402
from runtime.tracking import NullTracker  # noqa: E402
from tests.lightning_compare import CaptureLogger, assert_state_close  # noqa: E402

QUIET: dict[str, Any] = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
}


class Recorder(pl.Callback):  # type: ignore[misc,name-defined]
    """Keeps the eval batch hooks a callback gets, with what the trainer says at that point."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        sanity = list(trainer.num_sanity_val_batches) if trainer.sanity_checking else None
        self.calls.append(
            ("val_start", batch_idx, dataloader_idx, list(trainer.num_val_batches), sanity)
        )

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.calls.append(("val_end", batch_idx, dataloader_idx))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.calls.append(("val_epoch_end", sorted(trainer.callback_metrics)))

    def on_test_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.calls.append(("test_start", batch_idx, dataloader_idx, list(trainer.num_test_batches)))

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        # (outputs, batch, batch_idx, dataloader_idx): the index is passed with several loaders
        self.calls.append(("predict_end", *args[2:], list(trainer.num_predict_batches)))


class TwoLoaders(pl.LightningModule):  # type: ignore[misc,name-defined]
    """A regressor whose eval steps take ``dataloader_idx`` and log in every way that names differ."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.seen: list[tuple[str, int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.seen.append(("step", batch_idx, dataloader_idx))
        loss = F.mse_loss(self(x), y)
        self.log("val_loss", loss)
        self.log("val_mae", (self(x) - y).abs().mean(), on_step=True, on_epoch=True, prog_bar=True)
        if dataloader_idx == 1:
            self.log("unsuffixed", loss * 2, add_dataloader_idx=False)

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.seen.append(("hook", batch_idx, dataloader_idx))

    def on_validation_epoch_end(self) -> None:
        self.log("epoch_end_value", 1.5)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.seen.append(("transfer", -1, dataloader_idx))
        return batch

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0]) * (dataloader_idx + 1)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader(seed: int, n: int = 48) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _run(trainer_cls: Any, root: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model, recorder = TwoLoaders(), Recorder()
    best = pl.callbacks.ModelCheckpoint(
        dirpath=root / "ckpt", monitor="val_loss/dataloader_idx_1", save_top_k=2
    )
    stop = pl.callbacks.EarlyStopping("val_loss/dataloader_idx_0", patience=1)
    trainer = trainer_cls(
        max_epochs=3,
        default_root_dir=root,
        callbacks=[recorder, best, stop],
        limit_val_batches=4,
        **QUIET,
    )
    trainer.fit(model, _loader(1), [_loader(2), _loader(3, n=24)])
    fit_calls = list(recorder.calls)
    out = {
        "fit_calls": fit_calls,
        "seen": list(model.seen),
        "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "progress_bar_metrics": dict(trainer.progress_bar_metrics),
        "best": (float(best.best_model_score), Path(best.best_model_path).name),
        "stopped_epoch": stop.stopped_epoch,
        "weights": torch.cat([p.detach().flatten() for p in model.parameters()]),
        "validate": trainer.validate(
            model, {"a": _loader(2), "b": _loader(3, n=24)}, verbose=False
        ),
        "test": trainer.test(model, [_loader(4), _loader(5, n=16)], verbose=False),
        "test_one": trainer.test(model, [_loader(4)], verbose=False),
        "predict": trainer.predict(
            model, CombinedLoader([_loader(4), _loader(5, n=16)], "sequential")
        ),
    }
    out["eval_calls"] = [c for c in recorder.calls[len(fit_calls) :] if c[0] != "val_start"]
    return out


def test_two_validation_loaders_match_lightning(tmp_path: Path) -> None:
    theirs = _run(pl.Trainer, tmp_path / "lightning")
    ours = _run(Trainer, tmp_path / "busloop")
    assert ours["fit_calls"] == theirs["fit_calls"]
    assert ("val_start", 3, 1, [4, 3], None) not in theirs["fit_calls"]  # 3 batches in loader 1
    assert ("val_start", 1, 1, [4, 3], [2, 2]) in theirs["fit_calls"]  # the sanity check: 2 of each
    assert ours["seen"] == theirs["seen"]
    assert ("step", 2, 1) in theirs["seen"] and ("hook", 2, 1) in theirs["seen"]
    assert ("transfer", -1, 1) in theirs["seen"]
    assert_state_close(ours["callback_metrics"], theirs["callback_metrics"])
    assert {"val_loss/dataloader_idx_1", "val_mae_epoch/dataloader_idx_0", "unsuffixed"} <= set(
        theirs["callback_metrics"]
    )
    assert_state_close(ours["progress_bar_metrics"], theirs["progress_bar_metrics"])
    assert ours["best"][1] == theirs["best"][1]
    assert ours["best"][0] == pytest.approx(theirs["best"][0], abs=1e-6)
    assert ours["stopped_epoch"] == theirs["stopped_epoch"]
    assert torch.allclose(ours["weights"], theirs["weights"], atol=1e-6, rtol=0)
    for key in ("validate", "test", "test_one"):
        assert_state_close(ours[key], theirs[key])
    assert len(theirs["validate"]) == 2 and theirs["validate"][1]["unsuffixed"] > 0
    assert (
        theirs["validate"][0]["epoch_end_value"] == theirs["validate"][1]["epoch_end_value"] == 1.5
    )
    assert list(theirs["test_one"][0]) == ["test_loss"]  # one loader in a list: no suffix
    assert [len(p) for p in ours["predict"]] == [len(p) for p in theirs["predict"]] == [6, 2]
    assert_state_close(ours["predict"], theirs["predict"])
    assert ours["eval_calls"] == theirs["eval_calls"]


def test_logger_gets_what_lightning_logs_with_two_loaders(tmp_path: Path) -> None:
    """Per-batch eval logs count steps per loader; epoch values of both loaders in one call."""
    calls = []
    for cls in (pl.Trainer, Trainer):
        torch.manual_seed(0)
        model, logger = TwoLoaders(), CaptureLogger()
        trainer = cls(
            max_epochs=2,
            default_root_dir=tmp_path / cls.__module__,
            logger=logger,
            log_every_n_steps=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        trainer.fit(model, _loader(1, n=16), [_loader(2, n=16), _loader(3, n=8)])
        trainer.validate(model, [_loader(2, n=16), _loader(3, n=8)], verbose=False)
        calls.append(logger.calls)
    theirs, ours = calls
    assert [(sorted(m), s) for m, s in ours] == [(sorted(m), s) for m, s in theirs]
    # "epoch" of the validate call after fit differs with one loader too (busloop: the last
    # epoch trained, Lightning: the epoch count); every logged value is compared
    values = [[{k: v for k, v in m.items() if k != "epoch"} for m, _ in c] for c in (ours, theirs)]
    assert_state_close(*values)
    assert any("val_mae_step/dataloader_idx_1" in m for m, _ in theirs)


class NoIndex(TwoLoaders):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", F.mse_loss(self(batch[0]), batch[1]))


class NeedsIndex(TwoLoaders):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        self.log("val_loss", F.mse_loss(self(batch[0]), batch[1]))


@pytest.mark.parametrize(
    ("module", "loaders", "message"),
    [
        (NoIndex, 2, "no `dataloader_idx` argument in `NoIndex.validation_step"),
        (NeedsIndex, 1, "have included `dataloader_idx` in `NeedsIndex.validation_step"),
    ],
)
def test_dataloader_idx_signature_checked_as_lightning(
    module: type, loaders: int, message: str, tmp_path: Path
) -> None:
    """Both trainers raise a RuntimeError saying the same; busloop's is also a ConfigError."""
    val = [_loader(2, n=16) for _ in range(loaders)]
    for cls in (pl.Trainer, Trainer):
        with pytest.raises(RuntimeError, match=message) as raised:
            cls(max_epochs=1, default_root_dir=tmp_path, **QUIET).validate(
                module(), val, verbose=False
            )
    assert isinstance(raised.value, ConfigError) and str(raised.value).startswith("validation: ")


class Echo(pl.LightningModule):  # type: ignore[misc,name-defined]
    """Predicts what it is given, with where it came from."""

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return (int(batch), batch_idx, dataloader_idx)


@pytest.mark.parametrize(
    "loaders",
    [[[0, 1], [2, 3, 4]], {"a": [0, 1], "b": ([2], [3, 4])}, ([0, 1, 2],), [0, 1, 2]],
    ids=["lists", "nested-dict", "tuple-of-one", "one-list-of-numbers"],
)
def test_collections_of_loaders_read_as_lightning(loaders: Any, tmp_path: Path) -> None:
    """Collections inside a collection are opened up, those of numbers are loaders themselves."""
    results = [
        cls(default_root_dir=tmp_path, **QUIET).predict(Echo(), loaders)
        for cls in (pl.Trainer, Trainer)
    ]
    assert results[1] == results[0]


class Counts(TwoLoaders):
    def test_dataloader(self) -> Any:
        return [_loader(4, n=24), _loader(5, n=16)]


@pytest.mark.parametrize("limit", [1, 1.0, 0.5, 2])
def test_limit_applies_to_each_loader_as_in_lightning(limit: float, tmp_path: Path) -> None:
    """``limit_test_batches`` cuts each loader (an int 1 is one batch, a float 1.0 all)."""
    counts, results = [], []
    for cls in (pl.Trainer, Trainer):
        torch.manual_seed(0)
        trainer = cls(default_root_dir=tmp_path, limit_test_batches=limit, **QUIET)
        results.append(trainer.test(Counts(), verbose=False))
        counts.append(list(trainer.num_test_batches))
    assert counts[1] == counts[0]
    assert_state_close(results[1], results[0])


@pytest.mark.parametrize(
    ("loaders", "message"),
    [
        ([], "dataloaders: an empty list of loaders"),
        (
            CombinedLoader([_loader(1), _loader(2)], "max_size_cycle"),
            'CombinedLoader\\(mode="max_size_cycle"\\)',
        ),
    ],
)
def test_bad_loader_collections_are_one_line_errors(
    loaders: Any, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        Trainer(default_root_dir=tmp_path, **QUIET).test(TwoLoaders(), loaders, verbose=False)


def _plain_runtime(callbacks: list[Any], **trainer: Any) -> Runtime:
    torch.manual_seed(0)
    config = {"trainer": {"epochs": 2, "accelerator": "cpu", **trainer}}
    return Runtime(
        torch.nn.Linear(4, 1),
        callbacks,
        config,
        loss=F.mse_loss,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05),
        tracker=NullTracker(),
    )


class EvalEvents:
    """A native callback keeping the validation batch events."""

    def __init__(self) -> None:
        self.events: list[tuple[bool, int, int]] = []

    def on_validation_batch_end(
        self, runtime: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        self.events.append((runtime.state.sanity_checking, batch_idx, dataloader_idx))


def test_native_runtime_runs_a_list_of_loaders() -> None:
    events = EvalEvents()
    rt = _plain_runtime([events], limit_val_batches=3, num_sanity_val_steps=1)
    first, second = _loader(2), _loader(3, n=16)
    rt.fit(_loader(1), [first, second])
    st = rt.state
    assert st.loader_batches["val"] == [3, 2] and st.num_val_batches == 5
    assert st.loader_batches["sanity_val"] == [1, 1]
    assert events.events[:2] == [(True, 0, 0), (True, 0, 1)]
    assert events.events[2:7] == [
        (False, 0, 0),
        (False, 1, 0),
        (False, 2, 0),
        (False, 0, 1),
        (False, 1, 1),
    ]
    assert {"val/loss", "val/loss/dataloader_idx_1"} <= set(st.metrics)

    both = rt.validate(EvalLoaders([first, second]))
    assert rt.loader_metrics == [
        {"val/loss": both["val/loss"]},
        {"val/loss/dataloader_idx_1": both["val/loss/dataloader_idx_1"]},
    ]
    alone = [
        rt.validate(first)["val/loss"],
        rt.validate(second)["val/loss"],
    ]  # the limit: 3 batches of each
    assert both["val/loss"] == pytest.approx(alone[0]) and both[
        "val/loss/dataloader_idx_1"
    ] == pytest.approx(alone[1])
    assert rt.loader_metrics == [{"val/loss": alone[1]}]  # one loader: one dict, names unchanged

    predictions = rt.predict({"a": first, "b": second})
    assert [len(p) for p in predictions] == [6, 2]
    assert torch.allclose(predictions[1][0], rt.model(next(iter(second))[0]))
    assert len(rt.predict(first)) == 6  # one loader: a flat list


class OffsetEvents:
    """Keeps where each validation batch falls in the stage: ``state.eval_offset + batch_idx``,
    what the progress bar and TrainingProgress number it by."""

    def __init__(self) -> None:
        self.positions: list[tuple[int, Any]] = []

    def on_validation_batch_end(
        self, runtime: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        self.positions.append((dataloader_idx, runtime.state.eval_offset + batch_idx))


def test_a_loader_without_a_length_is_counted_before_the_next_loader() -> None:
    """A validation loader without ``__len__`` first, a sized one after: the second loader's
    batches are numbered after the batches the first one gave (it used to add inf)."""

    class NoLength:
        def __iter__(self) -> Any:
            return iter(list(_loader(4, n=24)))  # 3 batches, no __len__

    events = OffsetEvents()
    rt = _plain_runtime([events], epochs=1, num_sanity_val_steps=0)
    rt.fit(_loader(1, n=16), [NoLength(), _loader(5, n=16)])
    assert events.positions == [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4)]
    assert rt.state.eval_offset == 5


def test_lightning_module_under_native_runtime_suffixes_every_loader() -> None:
    torch.manual_seed(0)
    model = TwoLoaders()
    rt = Runtime(model, [], {"trainer": {"epochs": 1, "accelerator": "cpu"}}, tracker=NullTracker())
    metrics = rt.validate([_loader(2), _loader(3, n=16)])
    assert {
        "val_loss/dataloader_idx_0",
        "val_loss/dataloader_idx_1",
        "unsuffixed",
        "epoch_end_value",
    } <= set(metrics)
    assert "val_loss" not in metrics
    assert ("step", 1, 1) in model.seen and ("hook", 1, 1) in model.seen


def test_as_loaders_tells_loaders_from_batches() -> None:
    loader = _loader(1)
    batches = [(torch.zeros(2, 4), torch.zeros(2, 1))]
    assert as_loaders([loader, loader]) == [loader, loader]
    assert as_loaders({"a": loader}) == [loader]
    assert as_loaders(batches) == [batches]  # a list of batches is one loader
    assert as_loaders(EvalLoaders([batches, batches])) == [batches, batches]


def test_native_progress_bar_reports_each_loader(capsys: pytest.CaptureFixture[str]) -> None:
    rt = _plain_runtime([LuxonisTQDMProgressBar(refresh_interval=0)], epochs=1)
    rt.fit(_loader(1, n=16), [_loader(2, n=16), _loader(3, n=8)])
    out = capsys.readouterr().out
    assert "Validation metrics: dataloader_idx_1" in out
