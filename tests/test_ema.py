"""EMACallback: the update formula, the swaps around evaluation, checkpoints, exact resume."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from callbacks.ema import EMACallback
from compat.model_checkpoint import ModelCheckpoint
from conftest import base_config, make_loader
from runtime import Callback, Runtime
from runtime.checkpoint import load_checkpoint
from runtime.tracking import NullTracker

F = nn.functional


def make_bn_model(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    """A small model with a BatchNorm (float running stats and an int64 counter)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _runtime(model: nn.Module, callbacks: list[Any], scheduler: Any = None, **trainer: Any) -> Runtime:
    cfg = base_config(**trainer)
    if scheduler is not None:
        cfg["scheduler"] = scheduler
    return Runtime(model, callbacks, cfg, loss=F.cross_entropy, tracker=NullTracker())


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class StepRecorder(Callback):
    """Registered after the EMA: the model's weights at fit start and after every step."""

    def __init__(self) -> None:
        self.initial: dict[str, torch.Tensor] = {}
        self.after_steps: list[dict[str, torch.Tensor]] = []
        self._step = 0

    def on_fit_start(self, runtime: Runtime) -> None:
        self.initial = _copy(runtime.model.state_dict())
        self._step = runtime.state.global_step

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        if runtime.state.global_step != self._step:
            self._step = runtime.state.global_step
            self.after_steps.append(_copy(runtime.model.state_dict()))


def _expected_ema(
    recorder: StepRecorder, decay: float, dynamic: bool, tau: float
) -> dict[str, torch.Tensor]:
    """The EMA formula recomputed in float64 from the recorded weights."""
    ema = {k: v.double() if v.is_floating_point() else v.clone() for k, v in recorder.initial.items()}
    for updates, weights in enumerate(recorder.after_steps, start=1):
        d = decay * (1 - math.exp(-updates / tau)) if dynamic else decay
        for key, value in weights.items():
            ema[key] = d * ema[key] + (1 - d) * value.double() if value.is_floating_point() else value.clone()
    return ema


@pytest.mark.parametrize("dynamic", [True, False])
def test_ema_values_follow_the_formula(dynamic: bool) -> None:
    """Gradient accumulation 2 (so not every batch steps), validation in between."""
    ema_cb, recorder = EMACallback(decay=0.8, use_dynamic_decay=dynamic, decay_tau=4), StepRecorder()
    rt = _runtime(make_bn_model(), [ema_cb, recorder], epochs=2, accumulate_grad_batches=2)
    rt.fit(make_loader(80, batch_size=16), make_loader(32))  # 5 batches -> 3 steps per epoch

    assert len(recorder.after_steps) == ema_cb.updates == rt.state.global_step == 6
    expected = _expected_ema(recorder, 0.8, dynamic, 4)
    assert ema_cb.ema is not None
    for key, value in expected.items():
        got = ema_cb.ema[key]
        if value.is_floating_point():
            torch.testing.assert_close(got.double(), value, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(got, value), key
    # The average is not just the latest weights.
    assert not torch.allclose(ema_cb.ema["0.weight"], recorder.after_steps[-1]["0.weight"])


def test_training_itself_is_not_changed_by_the_ema() -> None:
    """The raw weights after fit equal those of the same run without EMA, bit for bit."""
    plain = _runtime(make_bn_model(seed=2, dropout=0.3), [], epochs=2, seed=1)
    plain.fit(make_loader(shuffle=True), make_loader(32))
    ema_cb = EMACallback(decay=0.9, decay_tau=3)
    with_ema = _runtime(make_bn_model(seed=2, dropout=0.3), [ema_cb], epochs=2, seed=1)
    with_ema.fit(make_loader(shuffle=True), make_loader(32))
    _assert_equal(ema_cb.state_dict()["raw"], plain.model.state_dict())
    train = [h for h in plain.state.history if h["stage"] == "train"]
    assert train == [h for h in with_ema.state.history if h["stage"] == "train"]


class SwapProbe(Callback):
    """What the model holds at validation/test batches and at training batches."""

    def __init__(self, ema_cb: EMACallback) -> None:
        self.ema_cb = ema_cb
        self.last_trained: dict[str, torch.Tensor] | None = None
        self.after_validation = False
        self.checked_val = self.checked_train = self.checked_test = 0

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.last_trained = _copy(runtime.model.state_dict())

    def on_validation_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        assert self.ema_cb.ema is not None
        _assert_equal(runtime.model.state_dict(), self.ema_cb.ema)
        if self.last_trained is not None:
            assert not torch.equal(runtime.model.state_dict()["0.weight"], self.last_trained["0.weight"])
            self.after_validation = True
        self.checked_val += 1

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        if self.after_validation:  # the first training batch after a validation
            assert self.last_trained is not None
            _assert_equal(runtime.model.state_dict(), self.last_trained)
            self.after_validation = False
            self.checked_train += 1

    def on_test_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        assert self.ema_cb.ema is not None
        _assert_equal(runtime.model.state_dict(), self.ema_cb.ema)
        self.checked_test += 1


def test_ema_is_swapped_in_for_validation_and_out_for_training() -> None:
    ema_cb = EMACallback(decay=0.9, decay_tau=2)
    probe = SwapProbe(ema_cb)
    rt = _runtime(make_bn_model(), [ema_cb, probe], epochs=2, val_check_interval=2, num_sanity_val_steps=1)
    rt.fit(make_loader(), make_loader(32))  # 6 batches: validation after batches 2, 4, 6
    assert probe.checked_val == 1 + 2 * 3 * 2  # sanity batch + 6 validations of 2 batches
    assert probe.checked_train == 5  # every validation but the last is followed by training

    # train_end loaded the EMA for good; test sees it; the raw weights are kept aside.
    assert ema_cb.ema is not None
    _assert_equal(rt.model.state_dict(), ema_cb.ema)
    _assert_equal(ema_cb.state_dict()["raw"], probe.last_trained or {})
    rt.test(make_loader(32))
    assert probe.checked_test == 2
    _assert_equal(rt.model.state_dict(), ema_cb.ema)


def test_test_swaps_the_ema_in_and_out_outside_train_end() -> None:
    """A test run while training weights are loaded (e.g. a callback testing mid-fit)."""
    ema_cb = EMACallback(decay=0.9, decay_tau=2)
    rt = _runtime(make_bn_model(), [ema_cb], epochs=1)
    rt.fit(make_loader())
    ema_cb.on_fit_start(rt)  # as a new fit would: the training weights are back
    raw = _copy(rt.model.state_dict())
    assert ema_cb.ema is not None and not torch.equal(raw["0.weight"], ema_cb.ema["0.weight"])
    probe = SwapProbe(ema_cb)
    rt.bus.subscribe(probe)
    rt.test(make_loader(32))
    assert probe.checked_test == 2
    _assert_equal(rt.model.state_dict(), raw)


class SaveAt(Callback):
    """Save a checkpoint after batch ``at`` of ``epoch`` (optionally stop), noting the EMA."""

    def __init__(self, path: Any, epoch: int, at: int, ema_cb: EMACallback, stop: bool = True) -> None:
        self.path, self.epoch, self.at, self.ema_cb, self.stop = path, epoch, at, ema_cb, stop
        self.ema_then: dict[str, torch.Tensor] = {}
        self.raw_then: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        if runtime.state.epoch == self.epoch and batch_idx == self.at:
            assert self.ema_cb.ema is not None
            self.ema_then, self.raw_then = _copy(self.ema_cb.ema), _copy(runtime.model.state_dict())
            runtime.save_checkpoint(self.path)
            if self.stop:
                runtime.request_stop("checkpoint taken")


def test_checkpoints_carry_the_ema_as_state_dict(tmp_path: Any) -> None:
    ema_cb = EMACallback(decay=0.9, decay_tau=2)
    saver = SaveAt(tmp_path / "mid.ckpt", 0, 3, ema_cb, stop=False)
    rt = _runtime(make_bn_model(), [ema_cb, saver], epochs=1)
    rt.fit(make_loader())
    ckpt = load_checkpoint(tmp_path / "mid.ckpt")
    _assert_equal(ckpt["state_dict"], saver.ema_then)
    state = ckpt["callbacks"][ema_cb.state_key]
    _assert_equal(state["ema"], saver.ema_then)
    _assert_equal(state["raw"], saver.raw_then)
    assert state["updates"] == 4
    assert state["ema"].keys() == rt.model.state_dict().keys()


@pytest.mark.parametrize("ema_first", [True, False])
def test_checkpoint_written_during_validation_does_not_leak_the_swap(tmp_path: Any, ema_first: bool) -> None:
    """ModelCheckpoint saves at validation_end, before or after the EMA swaps back."""
    ema_cb = EMACallback(decay=0.9, decay_tau=2)
    ckpt_cb = ModelCheckpoint(monitor="val/loss", save_top_k=-1, dirpath=str(tmp_path))
    probe = SwapProbe(ema_cb)
    callbacks: list[Any] = [ema_cb, ckpt_cb, probe] if ema_first else [ckpt_cb, ema_cb, probe]
    rt = _runtime(make_bn_model(), callbacks, epochs=1)
    rt.fit(make_loader(), make_loader(32))
    ckpt = load_checkpoint(ckpt_cb.best_model_path)
    state = ckpt["callbacks"][ema_cb.state_key]
    assert ema_cb.ema is not None
    _assert_equal(ckpt["state_dict"], ema_cb.ema)  # no step since that validation
    _assert_equal(state["raw"], probe.last_trained or {})
    assert not torch.equal(state["raw"]["0.weight"], state["ema"]["0.weight"])


def _resume_run(
    callbacks: list[Any], ema_cb: EMACallback, ckpt: Any = None, **trainer: Any
) -> Runtime:
    scheduler = {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.7}}
    rt = _runtime(
        make_bn_model(seed=9, dropout=0.5), [ema_cb, *callbacks], scheduler, epochs=3, seed=3, **trainer
    )
    rt.fit(make_loader(shuffle=True), make_loader(32), ckpt_path=ckpt)
    return rt


def _assert_same_run(straight: Runtime, resumed: Runtime, a: EMACallback, b: EMACallback) -> None:
    _assert_equal(straight.model.state_dict(), resumed.model.state_dict())  # the EMA, after train_end
    _assert_equal(a.state_dict()["raw"], b.state_dict()["raw"])
    assert a.updates == b.updates == straight.state.global_step == resumed.state.global_step == 18
    sa, sb = straight.optimizer.state_dict(), resumed.optimizer.state_dict()  # type: ignore[union-attr]
    for key in sa["state"]:
        assert torch.equal(sa["state"][key]["momentum_buffer"], sb["state"][key]["momentum_buffer"])
    assert straight.state.history == resumed.state.history


@pytest.mark.parametrize(("epoch", "at"), [(1, 2), (0, 0), (1, 5)])
def test_resume_with_ema_is_bitwise_identical(tmp_path: Any, epoch: int, at: int) -> None:
    """Shuffled loader, dropout, BatchNorm, momentum, a scheduler and the EMA."""
    straight_ema = EMACallback(decay=0.9, decay_tau=3)
    straight = _resume_run([], straight_ema)
    path = tmp_path / "mid.ckpt"
    stopped_ema = EMACallback(decay=0.9, decay_tau=3)
    _resume_run([SaveAt(path, epoch, at, stopped_ema)], stopped_ema)
    resumed_ema = EMACallback(decay=0.9, decay_tau=3)
    resumed = _resume_run([], resumed_ema, ckpt=path)
    _assert_same_run(straight, resumed, straight_ema, resumed_ema)


def test_resume_from_a_checkpoint_written_during_validation(tmp_path: Any) -> None:
    def ckpt_cb() -> ModelCheckpoint:
        return ModelCheckpoint(monitor="val/loss", save_top_k=-1, dirpath=str(tmp_path / "ck"))

    straight_ema = EMACallback(decay=0.9, decay_tau=3)
    straight = _resume_run([ckpt_cb()], straight_ema, val_check_interval=4)
    path = next((tmp_path / "ck").glob("epoch=1-step=10*.ckpt"))  # the mid-epoch validation
    assert load_checkpoint(path)["loop"]["batch_idx"] == 4
    resumed_ema = EMACallback(decay=0.9, decay_tau=3)
    resumed = _resume_run([], resumed_ema, ckpt=path, val_check_interval=4)
    _assert_same_run(straight, resumed, straight_ema, resumed_ema)


def test_resume_restores_training_weights_and_ema_state(tmp_path: Any) -> None:
    ema_cb = EMACallback(decay=0.9, decay_tau=2)
    saver = SaveAt(tmp_path / "mid.ckpt", 0, 3, ema_cb)
    _runtime(make_bn_model(), [ema_cb, saver], epochs=2).fit(make_loader())

    class AtFitStart(Callback):
        def on_fit_start(self, runtime: Runtime) -> None:
            self.weights = _copy(runtime.model.state_dict())

    fresh, seen = EMACallback(decay=0.9, decay_tau=2), AtFitStart()
    _runtime(make_bn_model(seed=4), [fresh, seen], epochs=1).fit(make_loader(), ckpt_path=tmp_path / "mid.ckpt")
    _assert_equal(seen.weights, saver.raw_then)  # the model trains on from the raw weights
    assert fresh.updates == 6  # 4 restored + the 2 remaining steps of epoch 0


def test_resume_from_a_checkpoint_without_ema_state_starts_a_new_average(tmp_path: Any) -> None:
    class Save(Callback):
        def on_train_end(self, runtime: Runtime) -> None:
            runtime.save_checkpoint(tmp_path / "plain.ckpt")

    plain = _runtime(make_bn_model(), [Save()], epochs=1)
    plain.fit(make_loader())
    ema_cb = EMACallback()
    rt = _runtime(make_bn_model(seed=3), [ema_cb], epochs=2)
    rt.fit(make_loader(), ckpt_path=tmp_path / "plain.ckpt")
    assert ema_cb.updates == 6


def test_state_key_depends_on_the_settings() -> None:
    assert EMACallback(decay=0.5).state_key != EMACallback(decay=0.9).state_key
    assert EMACallback().state_key == EMACallback().state_key
    with pytest.raises(ValueError, match="decay"):
        EMACallback(decay=1.5)
