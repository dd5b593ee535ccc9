"""Loaders without ``__len__`` (an IterableDataset behind a DataLoader, a generator): training,
validation and evaluation with Lightning 2.6's semantics.

The comparisons train one LightningModule on an IterableDataset loader under
``lightning.pytorch.Trainer`` and ``compat.Trainer`` with the same arguments and compare the
hook sequence (with epoch, batch and step), the step and epoch counts, the learning rate and the
final weights. The native tests run :class:`runtime.Runtime` on a generator-backed loader and
resume one mid-epoch.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, IterableDataset

from callbacks.progress import LuxonisRichProgressBar, LuxonisTQDMProgressBar
from conftest import SaveAndStop, base_config, make_data, make_model
from runtime import Callback, Runtime
from runtime.cli import main as cli_main
from runtime.data import distributed_loader
from runtime.errors import ConfigError
from runtime.tracking import NullTracker

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.utilities.exceptions import MisconfigurationException  # noqa: E402

from compat import Trainer  # noqa: E402

QUIET: dict[str, Any] = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "logger": False,
    "num_sanity_val_steps": 0,
}


class Stream(IterableDataset):  # type: ignore[type-arg]
    """``n`` fixed (x, y) regression samples, yielded in order; no ``__len__``."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(
            n, 1, generator=g
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return zip(self.x, self.y, strict=True)


def _stream(n: int, seed: int) -> DataLoader[Any]:
    return DataLoader(Stream(n, seed), batch_size=8)


class Recorder(pl.LightningModule):  # type: ignore[misc,name-defined]
    """A linear regressor with an epoch StepLR that records its hooks with the loop position."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.calls: list[tuple[Any, ...]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.layer(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", F.mse_loss(self.layer(x), y))

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0])

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.7),
        }

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, self.current_epoch, self.global_step, *args))

    def on_train_epoch_start(self) -> None:
        self._record("train_epoch_start")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._record("train_batch_start", batch_idx)

    def _is_last(self) -> bool:
        return bool(self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Known before the step only for an epoch of unknown length (fetched ahead); with a
        # length, compat.Trainer's view turns True after the last batch's step (not compared).
        unknown = math.isinf(self.trainer.num_training_batches)
        self._record("before_optimizer_step", self._is_last() if unknown else None)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._record(
            "train_batch_end", batch_idx, self._is_last(), self.trainer.num_training_batches
        )

    def on_validation_start(self) -> None:
        self._record("validation_start", self.trainer.num_val_batches[0])

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._record("validation_batch_end", batch_idx)

    def on_train_epoch_end(self) -> None:
        self._record("train_epoch_end", self.trainer.num_training_batches)


def _fit(trainer_cls: Any, root: Path, train: int = 44, **kwargs: Any) -> dict[str, Any]:
    """Fit a Recorder on a 44-sample stream (6 batches, the last of 4) validating on 2 batches."""
    model = Recorder()
    trainer = trainer_cls(default_root_dir=root, **{"max_epochs": 2, **QUIET, **kwargs})
    trainer.fit(model, _stream(train, 1), _stream(16, 2))
    return {
        "calls": model.calls,
        "step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "lr": trainer.optimizers[0].param_groups[0]["lr"],
        "metrics": sorted(trainer.callback_metrics),
        "weights": torch.cat([p.detach().flatten() for p in model.parameters()]),
    }


@pytest.mark.parametrize(
    ("kwargs", "step", "val_runs"),
    [
        ({}, 12, 2),  # validation once per epoch, after the last batch (found by fetching ahead)
        ({"val_check_interval": 2}, 12, 6),  # after batches 2, 4, 6 of each epoch
        ({"val_check_interval": 4}, 12, 2),  # after batch 4 only: not at an unknown epoch end
        ({"accumulate_grad_batches": 4}, 4, 2),  # windows [0..3] [4, 5]: the last closes early
        ({"max_steps": 8, "max_epochs": -1}, 8, 1),  # stops in the second epoch, no validation
        ({"limit_train_batches": 4, "max_epochs": 3}, 12, 3),  # an int limit sizes the epoch
        ({"limit_train_batches": 10, "accumulate_grad_batches": 4}, 2, 0),  # limit past the end
        ({"val_check_interval": 3, "check_val_every_n_epoch": None, "max_epochs": 3}, 18, 6),
    ],
)
def test_iterable_dataset_training_matches_lightning(
    tmp_path: Path, kwargs: dict[str, Any], step: int, val_runs: int
) -> None:
    theirs = _fit(pl.Trainer, tmp_path / "lightning", **kwargs)
    ours = _fit(Trainer, tmp_path / "busloop", **kwargs)
    assert ours["calls"] == theirs["calls"]
    assert ours["step"] == theirs["step"] == step
    assert sum(call[0] == "validation_start" for call in ours["calls"]) == val_runs
    assert ours["epoch"] == theirs["epoch"]
    assert ours["lr"] == pytest.approx(theirs["lr"], abs=1e-9)
    assert ours["metrics"] == theirs["metrics"]
    assert torch.allclose(ours["weights"], theirs["weights"], atol=1e-6, rtol=0)


def test_validate_test_predict_run_an_iterable_loader_to_its_end_as_lightning(
    tmp_path: Path,
) -> None:
    results = {}
    for name, cls in (("lightning", pl.Trainer), ("busloop", Trainer)):
        model = Recorder()
        trainer = cls(default_root_dir=tmp_path / name, **QUIET)
        results[name] = (
            trainer.validate(model, _stream(20, 3)),
            trainer.num_val_batches,
            trainer.test(model, _stream(20, 3)),
            torch.cat(trainer.predict(model, _stream(20, 3))),
            [c for c in model.calls if c[0] == "validation_batch_end"],
        )
        limited = cls(default_root_dir=tmp_path / name, limit_test_batches=2, **QUIET)
        results[name] += (limited.test(model, _stream(40, 3)), limited.num_test_batches)
    ours, theirs = results["busloop"], results["lightning"]
    assert ours[1] == theirs[1] == [math.inf]
    assert ours[4] == theirs[4] and len(ours[4]) == 3  # 20 samples: batches of 8, 8, 4
    for index in (0, 2, 5):
        assert ours[index][0] == pytest.approx(theirs[index][0], abs=1e-6)
    assert torch.allclose(ours[3], theirs[3], atol=1e-6) and len(ours[3]) == 20
    assert ours[6] == theirs[6] == [2]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"limit_train_batches": 0.5}, "trainer.limit_train_batches"),
        ({"val_check_interval": 0.5}, "trainer.val_check_interval"),
        ({"limit_val_batches": 0.5}, "trainer.limit_val_batches"),
    ],
)
def test_fractions_of_an_unknown_length_are_refused_as_by_lightning(
    tmp_path: Path, kwargs: dict[str, Any], key: str
) -> None:
    with pytest.raises(MisconfigurationException, match="IterableDataset"):
        _fit(pl.Trainer, tmp_path / "lightning", **kwargs)
    with pytest.raises(MisconfigurationException) as raised:  # compat.Trainer: Lightning's type too
        _fit(Trainer, tmp_path / "busloop", **kwargs)
    assert isinstance(raised.value, ConfigError)
    message = str(raised.value)
    assert message.startswith(key) and "\n" not in message and "0.5" in message


class Generated:
    """A re-iterable source without ``__len__``: each pass is a fresh generator of batches."""

    def __init__(
        self, n: int = 96, batch_size: int = 16, seed: int = 0, noise: bool = False
    ) -> None:
        self.data, self.batch_size, self.noise = make_data(n, seed=seed), batch_size, noise

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.data.tensors
        for start in range(0, len(x), self.batch_size):
            batch = x[start : start + self.batch_size]
            if self.noise:  # drawn from the global stream, in the main process
                batch = batch + 0.1 * torch.randn_like(batch)
            yield batch, y[start : start + self.batch_size]


class Positions(Callback):
    """Records (epoch, batch_idx, is_last, global_step) after each training batch and the
    batch counts the loop exposes."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, bool, int]] = []
        self.val_at: list[tuple[int, int]] = []

    def on_train_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        st = runtime.state
        self.seen.append((st.epoch, batch_idx, st.last_batch_done(), st.global_step))

    def on_validation_start(self, runtime: Runtime) -> None:
        if not runtime.state.sanity_checking:
            self.val_at.append((runtime.state.epoch, runtime.state.batch_idx))


def _runtime(callbacks: list[Any], **trainer: Any) -> Runtime:
    cfg = base_config(**trainer)
    cfg["scheduler"] = {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.5}}
    return Runtime(make_model(seed=4), callbacks, cfg, loss=F.cross_entropy, tracker=NullTracker())


def test_native_fit_on_a_generator_knows_the_last_batch_and_validates_after_it() -> None:
    positions = Positions()
    rt = _runtime([positions], accumulate_grad_batches=4, num_sanity_val_steps=-1)
    state = rt.fit(Generated(88), Generated(40))  # 6 batches (the last of 8), 3 val batches
    assert math.isinf(state.num_training_batches) and math.isinf(state.num_val_batches)
    assert [(e, i, last) for e, i, last, _ in positions.seen] == [
        (e, i, i == 5) for e in range(2) for i in range(6)
    ]
    assert [step for *_, step in positions.seen] == [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4]
    assert positions.val_at == [(0, 6), (1, 6)]
    assert rt.optimizer.param_groups[0]["lr"] == pytest.approx(
        0.1 * 0.5**2
    )  # the epoch scheduler stepped
    assert (state.epoch, state.global_step, state.loader_done) == (2, 4, False)
    assert set(rt.validate(Generated(40))) == {"val/loss"}
    assert rt.state.num_val_batches == math.inf
    assert len(rt.predict(Generated(40))) == 3


def test_native_fit_refuses_a_fraction_of_an_unknown_length_in_one_line() -> None:
    with pytest.raises(
        ConfigError, match=r"^trainer\.limit_train_batches: the train loader has no length"
    ):
        _runtime([], limit_train_batches=0.25).fit(Generated(88))
    with pytest.raises(
        ConfigError, match=r"^trainer\.limit_test_batches: the test loader has no length"
    ):
        _runtime([], limit_test_batches=0.25).test(Generated(40))


def test_native_fit_with_an_int_limit_and_max_steps_on_a_generator() -> None:
    positions = Positions()
    state = _runtime([positions], limit_train_batches=4, epochs=5, max_steps=10).fit(Generated(88))
    assert state.num_training_batches == 4
    assert [(e, i) for e, i, *_ in positions.seen] == [(e, i) for e in range(3) for i in range(4)][
        :10
    ]
    assert (state.global_step, state.epoch) == (10, 3)  # the stopped epoch counts, as Lightning's


@pytest.mark.parametrize(
    ("epoch", "at", "accumulate"),
    [(0, 2, 1), (1, 0, 1), (1, 5, 1), (0, 2, 4), (1, 4, 4), (1, 5, 4)],
)
def test_resume_mid_epoch_of_a_generator_fast_forwards_exactly(
    tmp_path: Path, epoch: int, at: int, accumulate: int
) -> None:
    """The batches already trained are fetched and dropped (the source cannot skip by sampler),
    and the saved random stream continues: the noisy batches, drawn from the global stream
    one batch ahead, are the uninterrupted run's, and so are the final weights."""

    def run(callbacks: list[Any], ckpt: Any = None) -> Runtime:
        rt = _runtime(callbacks, epochs=3, seed=3, accumulate_grad_batches=accumulate)
        rt.fit(Generated(88, noise=True), Generated(40), ckpt_path=ckpt)
        return rt

    straight = run([])
    path = tmp_path / "mid.ckpt"
    run([SaveAndStop(path, epoch, at)])
    resumed = run([], ckpt=path)
    weights = resumed.model.state_dict()
    assert all(
        torch.equal(value, weights[name]) for name, value in straight.model.state_dict().items()
    )
    assert straight.state.history == resumed.state.history
    assert straight.state.global_step == resumed.state.global_step == 3 * -(-6 // accumulate)


def test_resume_mid_epoch_of_an_iterable_dataset_loader_skips_its_data(tmp_path: Path) -> None:
    """A DataLoader over an IterableDataset has a batch sampler, but it does not choose the
    data: the resumed epoch must continue after the batches already trained."""
    seen: list[torch.Tensor] = []

    class Batches(Callback):
        def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
            seen.append(batch[0].clone())

    def loader() -> DataLoader[Any]:
        return DataLoader(Stream(44, 1), batch_size=8)

    def run(callbacks: list[Any], ckpt: Any = None) -> Runtime:
        cfg = {
            "optimizer": {"name": "SGD", "params": {"lr": 0.05}},
            "trainer": {"epochs": 2, "seed": 0},
        }
        torch.manual_seed(0)
        rt = Runtime(torch.nn.Linear(4, 1), callbacks, cfg, loss=F.mse_loss, tracker=NullTracker())
        rt.fit(loader(), ckpt_path=ckpt)
        return rt

    straight = run([])
    path = tmp_path / "mid.ckpt"
    run([SaveAndStop(path, 0, 2)])
    resumed = run([Batches()], ckpt=path)
    expected = [x for x, _ in loader()]
    assert [b.tolist() for b in seen] == [b.tolist() for b in expected[3:] + expected]
    assert torch.equal(straight.model.weight, resumed.model.weight)


def test_under_two_ranks_an_iterable_source_is_left_whole_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No sampler can split an IterableDataset or a generator (Lightning adds none either):
    the loader is returned as it is, and rank zero says that every rank reads all of it."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    stream, generated = _stream(44, 1), Generated(40)
    with caplog.at_level("WARNING", logger="busloop.data"):
        assert distributed_loader(stream) is stream
        assert distributed_loader(generated) is generated
    assert [r.getMessage().split(" has no sampler")[0] for r in caplog.records] == [
        "Stream",
        "Generated",
    ]
    assert "every rank reads all of it" in caplog.records[0].getMessage()
    assert len(list(stream)) == 6  # still the whole stream, nothing drawn from an endless sampler


def generated_loaders() -> dict[str, Generated]:
    """A data factory for ``busloop train``: generator-backed loaders without a length."""
    return {"train": Generated(88), "val": Generated(40), "test": Generated(40)}


def test_busloop_train_on_a_factory_of_generators(tmp_path: Path) -> None:
    config = {
        "model": {"factory": "conftest:make_model", "params": {"seed": 2}},
        "data": {"factory": "test_unsized_loaders:generated_loaders"},
        "loss": "torch.nn.functional:cross_entropy",
        "optimizer": {"name": "SGD", "params": {"lr": 0.1}},
        "trainer": {"epochs": 2, "seed": 0, "num_sanity_val_steps": 2},
        "tracker": {"save_directory": str(tmp_path / "runs")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli_main(["train", str(path)]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows if "val/loss" in row] == [0, 1]
    assert max(row["step"] for row in rows) == 12  # two epochs of 6 batches


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("bar_cls", [LuxonisTQDMProgressBar, LuxonisRichProgressBar])
def test_progress_bars_show_no_total_for_a_loader_without_a_length(bar_cls: type) -> None:
    out = _Terminal()
    _runtime([bar_cls(refresh_interval=0, file=out)], epochs=1).fit(Generated(88), Generated(40))
    printed = out.getvalue()
    assert "Epoch 1/1" in printed and "[Epoch 1/1] Duration: " in printed
    assert "6/6" not in printed and "3/3" not in printed  # a sized loader's bar would say so
    if bar_cls is LuxonisTQDMProgressBar:
        assert "6it" in printed and "3it" in printed  # counts without a total


def test_lookahead_fetches_one_ahead_and_flags_the_last_batch_as_it_is_handed_over() -> None:
    """The loader is read one batch ahead (the first when the iterator is built), and
    ``loader_done`` turns True exactly when the last batch is handed over."""
    from runtime.state import LoopState
    from runtime.unsized import lookahead

    fetched: list[int] = []

    def source() -> Iterator[int]:
        for item in range(3):
            fetched.append(item)
            yield item

    state = LoopState()
    batches = lookahead(source(), state)
    assert fetched == [0] and not state.loader_done
    seen = [(next(batches), list(fetched), state.loader_done) for _ in range(3)]
    assert seen == [(0, [0, 1], False), (1, [0, 1, 2], False), (2, [0, 1, 2], True)]
    assert next(batches, None) is None
    state = LoopState()
    assert list(lookahead(iter([]), state, resumed=True)) == [] and state.loader_done
    state = LoopState()
    assert list(lookahead(iter([]), state)) == [] and not state.loader_done
