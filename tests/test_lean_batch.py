"""A plain module's batch written out in the loop (``runtime/batch.py``) trains exactly as the
loop's general ``_training_batch``: same weights, metrics and events, bit for bit, and it
honours what callbacks change during a run, whichever event they change it in (a receiver
connected to an optimization event, an optimizer's ``zero_grad`` patched on the instance or a
param group added, ``skip_backward``, accumulation, clipping)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import runtime.batch
from conftest import base_config, make_loader, make_model
from runtime import Callback, Runtime
from runtime.batch import lean_applies
from runtime.errors import ConfigError
from runtime.tracking import NullTracker

F = nn.functional

_STEP_LR = {"name": "StepLR", "params": {"step_size": 3, "gamma": 0.5}, "interval": "step"}


@pytest.fixture
def lean_choices(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the loop chose the lean function, at every epoch start."""
    chosen: list[bool] = []

    def spy(rt: Any) -> bool:
        applies = lean_applies(rt)
        chosen.append(applies)
        return applies

    monkeypatch.setattr(runtime.batch, "lean_applies", spy)
    return chosen


def _fit(callbacks: list[Any], scheduler: dict[str, Any] | None = None, **trainer: Any) -> Runtime:
    cfg = base_config(epochs=2, **trainer)
    if scheduler is not None:
        cfg["scheduler"] = scheduler
    rt = Runtime(make_model(), callbacks, cfg, loss=F.cross_entropy, tracker=NullTracker())
    rt.fit(make_loader(80, batch_size=16, shuffle=True), make_loader(32, batch_size=10))
    return rt


def _same_run(lean: Runtime, general: Runtime) -> None:
    assert lean.state.global_step == general.state.global_step
    lean_weights, general_weights = lean.model.state_dict(), general.model.state_dict()
    assert all(torch.equal(lean_weights[k], general_weights[k]) for k in general_weights)
    assert lean.state.history == general.state.history  # train/loss and val/loss, every epoch
    a, b = lean.optimizer.state_dict()["state"], general.optimizer.state_dict()["state"]  # type: ignore[union-attr]
    assert a.keys() == b.keys() and all(
        torch.equal(a[k]["momentum_buffer"], b[k]["momentum_buffer"]) for k in a
    )


class _Events(Callback):
    """Records every optimization event and logs a value without a batch size."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def on_before_zero_grad(self, runtime: Runtime, optimizer: Any) -> None:
        self.seen.append(("before_zero_grad", runtime.state.global_step))

    def on_before_backward(self, runtime: Runtime, loss: torch.Tensor) -> None:
        self.seen.append(("before_backward", runtime.state.global_step))

    def on_after_backward(self, runtime: Runtime) -> None:
        self.seen.append(("after_backward", runtime.state.global_step))

    def on_before_optimizer_step(self, runtime: Runtime, optimizer: Any) -> None:
        self.seen.append(("before_optimizer_step", runtime.state.global_step))

    def on_train_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.seen.append(("loss", int(outputs["loss"].requires_grad)))
        runtime.log("first_input", batch[0][0, 0])  # weighted by the batch's size


class _Flips(Callback):
    """From batch ``at`` of the first epoch on, sets ``attribute`` to ``value``."""

    def __init__(self, attribute: str, value: Any, at: int = 2) -> None:
        self.attribute, self.value, self.at = attribute, value, at

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        if runtime.state.epoch == 0 and batch_idx == self.at:
            setattr(runtime, self.attribute, self.value)


@pytest.mark.parametrize(
    "case",
    [
        {},
        {"gradient_clip_val": 0.05},
        {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value", "scheduler": _STEP_LR},
        {"flip": ("skip_backward", True)},  # forward-only batches from mid-epoch on
        {"flip": ("accumulate_grad_batches", 2)},  # accumulation switched on mid-epoch
    ],
    ids=["plain", "clip-norm", "clip-value-step-scheduler", "skip-backward", "accumulate"],
)
def test_the_lean_path_trains_bitwise_as_the_general_path(
    monkeypatch: pytest.MonkeyPatch, lean_choices: list[bool], case: dict[str, Any]
) -> None:
    case = dict(case)
    flip = case.pop("flip", None)

    def callbacks() -> list[Any]:
        return [_Events(), *([_Flips(*flip)] if flip else [])]

    lean_callbacks = callbacks()
    lean = _fit(lean_callbacks, **case)
    assert lean_choices[0] is True  # the first epoch ran the lean function
    monkeypatch.setattr(runtime.batch, "lean_applies", lambda rt: False)
    general_callbacks = callbacks()
    general = _fit(general_callbacks, **case)
    _same_run(lean, general)
    assert lean_callbacks[0].seen == general_callbacks[0].seen
    assert "train/first_input" in lean.state.metrics


def test_the_lean_path_is_chosen_for_plain_modules_only(lean_choices: list[bool]) -> None:
    _fit([])
    assert lean_choices == [True, True]
    lean_choices.clear()
    _fit([], accumulate_grad_batches=2)
    assert lean_choices == [False, False]
    lean_choices.clear()
    _fit([], precision="bf16-mixed")
    assert lean_choices == [False, False]

    class Stepping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    lean_choices.clear()
    Runtime(Stepping(), [], {"trainer": {"epochs": 1}}, tracker=NullTracker()).fit(make_loader())
    assert lean_choices == [False]


def test_a_receiver_connected_mid_run_is_called(lean_choices: list[bool]) -> None:
    calls: list[int] = []

    def before_backward(runtime: Runtime, loss: torch.Tensor) -> None:
        calls.append(runtime.state.global_step)

    class ConnectsLate(Callback):
        def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
            if runtime.state.global_step == 3:
                runtime.bus.connect("before_backward", before_backward)
            if runtime.state.global_step == 7:
                runtime.bus.disconnect("before_backward", before_backward)

    _fit([ConnectsLate()])
    assert lean_choices[0] is True
    assert calls == [3, 4, 5, 6]


def test_a_zero_grad_patched_on_the_optimizer_mid_run_is_called(lean_choices: list[bool]) -> None:
    calls: list[tuple[int, bool]] = []

    class PatchesZeroGrad(Callback):
        def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
            optimizer = runtime.optimizer
            if runtime.state.global_step == 2 and "zero_grad" not in vars(optimizer):
                original = optimizer.zero_grad  # type: ignore[union-attr]

                def wrapper(set_to_none: bool = True) -> None:
                    calls.append((runtime.state.global_step, set_to_none))
                    original(set_to_none=set_to_none)

                optimizer.zero_grad = wrapper  # type: ignore[method-assign,union-attr]

    rt = _fit([PatchesZeroGrad()])
    assert lean_choices[0] is True
    assert calls == [(step, True) for step in range(2, rt.state.global_step)]


def test_bad_plain_batches_and_a_missing_loss_fail_as_before() -> None:
    model = make_model()
    rt = Runtime(model, [], base_config(epochs=1), loss=F.cross_entropy, tracker=NullTracker())
    with pytest.raises(TypeError, match=r"trained on \(inputs, targets\) batches; got dict"):
        rt.fit([{"x": torch.randn(4, 8), "y": torch.zeros(4, dtype=torch.long)}])
    rt = Runtime(make_model(), [], base_config(epochs=1), tracker=NullTracker())
    with pytest.raises(ConfigError, match="needs a loss function"):
        rt.fit(make_loader())


def test_the_recorded_loss_is_a_float_and_outputs_loss_is_graph_free() -> None:
    """The lean path records a CPU loss as its Python float (``loss.item()``: the exact value,
    nothing to sync) in the epoch's logs and ``step_metrics``; ``outputs["loss"]`` is
    ``loss.data``: the same value as a tensor on the loss's device, without its graph."""
    seen: list[torch.Tensor] = []

    class Outputs(Callback):
        def on_train_batch_end(
            self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            seen.append(outputs["loss"])
            logged = runtime.metrics.active["train/loss"][0][-1]
            assert type(logged) is float and logged is runtime.state.step_metrics["train/loss"]
            assert logged == outputs["loss"].item()

    rt = _fit([Outputs()])
    assert len(seen) == rt.state.global_step
    for loss in seen:
        assert type(loss) is torch.Tensor and loss.ndim == 0 and loss.device.type == "cpu"
        assert not loss.requires_grad and loss.grad_fn is None and loss.is_leaf


def test_float64_losses_reduce_and_checkpoint_exactly(tmp_path: Path) -> None:
    """A float64 model's losses are recorded as floats without rounding: the epoch's
    train/loss is the float64 batch-size-weighted mean of the step losses, and a mid-epoch
    checkpoint keeps the pending floats as they are (not as float32 tensors)."""
    steps: list[float] = []
    saved: dict[str, Any] = {}

    class Steps(Callback):
        def on_train_batch_end(
            self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            steps.append(outputs["loss"].item())
            if batch_idx == 1 and not saved:
                runtime.save_checkpoint(tmp_path / "mid.ckpt")
                saved.update(torch.load(tmp_path / "mid.ckpt", weights_only=True))

    model = make_model().double()
    loader = [(x.double(), y) for x, y in make_loader()]
    rt = Runtime(model, [Steps()], base_config(epochs=1), loss=F.cross_entropy, tracker=NullTracker())
    rt.fit(loader)
    pending = saved["loop"]["pending_logs"]["train/loss"]["values"]
    assert pending == steps[:2] and all(type(v) is float for v in pending)
    sizes = torch.tensor([len(y) for _, y in loader], dtype=torch.float64)
    expected = (torch.tensor(steps, dtype=torch.float64) * sizes).sum().item() / sizes.sum().item()
    assert rt.state.metrics["train/loss"] == expected


def test_without_optimization_receivers_the_lean_path_records_the_same_losses(
    monkeypatch: pytest.MonkeyPatch, lean_choices: list[bool]
) -> None:
    """No receiver on the optimization events (the common case, which no other test here
    runs): the run (weights, train/loss and val/loss of every epoch, the values a
    train_batch_end receiver sees) is bit for bit the general path's."""
    seen: dict[str, list[float]] = {"lean": [], "general": []}

    def outputs(key: str) -> Callback:
        class Outputs(Callback):
            def on_train_batch_end(
                self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int
            ) -> None:
                assert outputs["loss"].item() == float(runtime.state.step_metrics["train/loss"])
                seen[key].append(outputs["loss"].item())

        return Outputs()

    lean = _fit([outputs("lean")], scheduler=_STEP_LR)
    assert lean_choices[0] is True
    monkeypatch.setattr(runtime.batch, "lean_applies", lambda rt: False)
    general = _fit([outputs("general")], scheduler=_STEP_LR)
    _same_run(lean, general)
    assert seen["lean"] == seen["general"] and len(seen["lean"]) == lean.state.global_step


def _flips_at(event: str, attribute: str, value: Any, flipped: list[int], at: int = 2) -> Callback:
    """A callback that, at ``event`` of batch ``at`` of the first epoch, sets ``attribute`` of
    the runtime (``gradient_clip_val``: of the trainer config) to ``value``; it appends the
    global step to ``flipped`` when it does."""

    def flip(self: Callback, runtime: Runtime, **payload: Any) -> None:
        st = runtime.state
        if st.epoch == 0 and payload.get("batch_idx", st.batch_idx) == at and not flipped:
            target = runtime.config.trainer if attribute == "gradient_clip_val" else runtime
            setattr(target, attribute, value)
            flipped.append(st.global_step)

    return type("FlipsAt", (Callback,), {f"on_{event}": flip})()


@pytest.mark.parametrize(
    "event",
    ["train_batch_start", "before_zero_grad", "before_backward", "after_backward", "before_optimizer_step", "train_batch_end"],
)
@pytest.mark.parametrize(
    "flip",
    [("skip_backward", True), ("accumulate_grad_batches", 2), ("gradient_clip_val", 0.01)],
    ids=["skip-backward", "accumulate", "clip"],
)
def test_a_setting_changed_at_any_event_is_honoured_as_by_the_general_path(
    monkeypatch: pytest.MonkeyPatch, event: str, flip: tuple[str, Any]
) -> None:
    """The written-out batch reads the runtime's settings again after every event that has
    receivers, so a change made in any of them applies where the general path applies it."""
    flipped: dict[str, list[int]] = {"lean": [], "general": []}
    lean = _fit([_flips_at(event, *flip, flipped["lean"])])
    monkeypatch.setattr(runtime.batch, "lean_applies", lambda rt: False)
    general = _fit([_flips_at(event, *flip, flipped["general"])])
    assert flipped["lean"] == flipped["general"] and len(flipped["lean"]) == 1
    _same_run(lean, general)


def test_a_param_group_added_mid_epoch_has_its_grads_cleared(
    monkeypatch: pytest.MonkeyPatch, lean_choices: list[bool]
) -> None:
    """A callback that unfreezes a layer and adds it to the optimizer mid-epoch (as backbone
    fine-tuning does): the written-out zero_grad clears the new group's grads from the next
    batch on, exactly as ``zero_grad(set_to_none=True)``; a stale parameter list would let
    them accumulate and the weights would differ."""

    class Unfreezes(Callback):
        def on_fit_start(self, runtime: Runtime) -> None:
            first = runtime.model[0]  # type: ignore[index]
            first.requires_grad_(False)
            optimizer = runtime.optimizer
            assert optimizer is not None
            optimizer.param_groups[0]["params"] = [
                p for p in optimizer.param_groups[0]["params"] if p.requires_grad
            ]

        def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
            if runtime.state.epoch == 0 and batch_idx == 1:
                first = runtime.model[0]  # type: ignore[index]
                first.requires_grad_(True)
                runtime.optimizer.add_param_group({"params": list(first.parameters()), "lr": 0.05})  # type: ignore[union-attr]

    lean = _fit([Unfreezes()])
    assert lean_choices[0] is True
    monkeypatch.setattr(runtime.batch, "lean_applies", lambda rt: False)
    general = _fit([Unfreezes()])
    _same_run(lean, general)
    assert len(lean.optimizer.param_groups) == 2  # type: ignore[union-attr]
