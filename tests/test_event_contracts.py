"""What each event of the catalogue (runtime/events.py) promises a callback, one test per event.

The order of events is pinned elsewhere (a recorder sees it); these tests pin what is *true*
when an event fires, as a callback relies on it: gradients present at ``after_backward``,
not yet cleared at ``before_zero_grad``, unscaled and not yet clipped at
``before_optimizer_step``, weights updated and ``global_step`` counted at
``train_batch_end``, eval mode and no grad across a validation block, metrics reduced at
``*_epoch_end``, the checkpoint complete at ``save_checkpoint`` ...

One real run (two epochs, sanity check, validation, a scheduler, a ModelCheckpoint, the local
tracker, then test and predict) is observed by :class:`Probe`, which takes a snapshot at every
event; each test reads the snapshots of its event. Runs of their own cover 16-mixed precision
(a real GradScaler on the CPU), accumulation, resume, an exception, an export and a signal.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from callbacks.interrupt import GracefulInterruptCallback
from compat.model_checkpoint import ModelCheckpoint
from conftest import base_config, make_loader, make_model
from runtime import Callback, Runtime
from runtime.checkpoint import load_checkpoint
from runtime.events import EVENTS
from runtime.tracking import NullTracker

F = nn.functional
BATCHES, EPOCHS = 6, 2  # make_loader(): 96 samples in batches of 16
_LOADERS = {"train": "shuffle", "val": 32, "test": 48, "predict": 32}


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _grads(model: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


class Probe(Callback):
    """A snapshot of what a callback can see, at every event of the catalogue (the
    ``on_<event>`` methods are added below, one per event)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def snapshot(self, event: str, runtime: Runtime, payload: dict[str, Any]) -> None:
        st, model = runtime.state, runtime.model
        snap = {
            **payload,
            "stage": st.stage, "epoch": st.epoch, "global_step": st.global_step, "batch_idx": st.batch_idx,
            "training": st.training, "sanity": st.sanity_checking, "interrupted": st.interrupted,
            "modes": {m.training for m in model.modules()}, "grad_enabled": torch.is_grad_enabled(),
            "weights": _weights(model), "grads": _grads(model), "metrics": dict(st.metrics),
            "history": list(st.history), "optimizer": runtime.optimizer,
            "lr": runtime.optimizer.param_groups[0]["lr"] if runtime.optimizer is not None else None,
            "scale": runtime.scaler.get_scale() if runtime.scaler is not None else 1.0,
            "tracker_status": getattr(runtime.tracker, "status", None),
        }
        if "stage" in payload:
            snap["stage_arg"] = payload["stage"]
        if "metrics" in payload:
            snap["metrics_arg"] = dict(payload["metrics"])
        if event == "save_checkpoint":
            checkpoint = payload["checkpoint"]
            snap["holds_the_weights"] = _same(_weights(model), checkpoint["state_dict"])
            checkpoint["probe"] = {"note": "added by a callback"}
        self.seen[event].append(snap)


def _receiver(event: str) -> Any:
    def receive(self: Probe, runtime: Runtime, **payload: Any) -> None:
        self.snapshot(event, runtime, payload)

    return receive


for _event in EVENTS:
    setattr(Probe, f"on_{_event}", _receiver(_event))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The observed run; returns the probe's snapshots, the runtime and its folders."""
    root = tmp_path_factory.mktemp("contracts")
    cfg = base_config(epochs=EPOCHS, seed=0, num_sanity_val_steps=1)
    cfg["scheduler"] = {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.5}, "interval": "epoch"}
    cfg["tracker"] = {"save_directory": str(root / "runs"), "run_name": "probe"}
    probe = Probe()
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", monitor="val/loss", save_top_k=-1)
    rt = Runtime(make_model(seed=1, dropout=0.3), [checkpoint, probe], cfg, loss=F.cross_entropy)
    with rt:
        rt.fit(make_loader(shuffle=True), make_loader(32))
        rt.test(make_loader(48))
        predictions = rt.predict(make_loader(32))
    return {"seen": probe.seen, "rt": rt, "root": root, "predictions": predictions}


def _at(run: dict[str, Any], event: str) -> list[dict[str, Any]]:
    snaps = run["seen"][event]
    assert snaps, f"{event} never fired"
    return snaps  # type: ignore[no-any-return]


def _train_batches(run: dict[str, Any], event: str) -> list[dict[str, Any]]:
    return [s for s in _at(run, event) if not s["sanity"] and s["stage"] == "fit"]


# ---------------------------------------------------------------------- set-up and tear-down
def test_setup_and_teardown_name_the_running_stage(run: dict[str, Any]) -> None:
    for event in ("setup", "teardown"):
        snaps = _at(run, event)
        assert [s["stage_arg"] for s in snaps] == ["fit", "test", "predict"]
        assert all(s["stage_arg"] == s["stage"] for s in snaps)
    setup = _at(run, "setup")[0]
    assert setup["optimizer"] is None  # configure_optimizers comes after setup, as in Lightning
    assert _at(run, "teardown")[0]["global_step"] == EPOCHS * BATCHES  # training is over


def test_fit_start_has_the_optimizer_schedulers_and_batch_counts(run: dict[str, Any]) -> None:
    (snap,) = _at(run, "fit_start")
    assert isinstance(snap["optimizer"], torch.optim.SGD) and snap["lr"] == pytest.approx(0.1)
    assert snap["global_step"] == 0 and snap["epoch"] == 0 and not snap["sanity"]
    assert run["rt"].state.num_training_batches == BATCHES


def test_sanity_check_runs_in_eval_mode_without_touching_the_weights(run: dict[str, Any]) -> None:
    (start,), (end,) = _at(run, "sanity_check_start"), _at(run, "sanity_check_end")
    assert start["sanity"] and end["sanity"]
    assert _same(start["weights"], end["weights"]) and end["global_step"] == 0
    assert all(s["sanity"] for s in _at(run, "validation_batch_end")[:1])  # the first val batch was the check's


def test_train_start_in_train_mode_with_the_sanity_metrics_cleared(run: dict[str, Any]) -> None:
    (snap,) = _at(run, "train_start")
    assert snap["modes"] == {True} and snap["grad_enabled"]
    assert snap["global_step"] == 0 and snap["epoch"] == 0 and snap["metrics"] == {}
    assert _same(snap["weights"], _at(run, "fit_start")[0]["weights"])


def test_train_end_after_the_last_step_and_fit_end_after_it(run: dict[str, Any]) -> None:
    (end,), (fit_end,) = _at(run, "train_end"), _at(run, "fit_end")
    assert end["global_step"] == EPOCHS * BATCHES and end["epoch"] == EPOCHS and not end["training"]
    assert "val/loss" in end["metrics"] and _same(end["weights"], fit_end["weights"])


# ---------------------------------------------------------------------- the training epoch
def test_train_epoch_start_in_train_mode_after_the_epoch_scheduler_stepped(run: dict[str, Any]) -> None:
    snaps = _at(run, "train_epoch_start")
    assert [s["epoch"] for s in snaps] == list(range(EPOCHS))
    assert all(s["modes"] == {True} and s["training"] and s["batch_idx"] == 0 for s in snaps)
    assert [s["lr"] for s in snaps] == pytest.approx([0.1 * 0.5**e for e in range(EPOCHS)])


def test_train_batch_start_before_any_change_of_the_weights(run: dict[str, Any]) -> None:
    starts, ends = _at(run, "train_batch_start"), _at(run, "train_batch_end")
    assert [s["global_step"] for s in starts] == list(range(EPOCHS * BATCHES))
    for start, previous_end in zip(starts[1:], ends, strict=False):
        assert _same(start["weights"], previous_end["weights"])
    assert all(s["grad_enabled"] and s["modes"] == {True} for s in starts)
    x, y = starts[0]["batch"]
    assert x.shape == (16, 8) and y.shape == (16,) and starts[0]["batch_idx"] == 0


def test_before_zero_grad_sees_the_previous_steps_gradients_not_yet_cleared(run: dict[str, Any]) -> None:
    snaps, steps = _at(run, "before_zero_grad"), _at(run, "before_optimizer_step")
    assert len(snaps) == EPOCHS * BATCHES and snaps[0]["grads"][0] is None  # nothing to clear yet
    for index, (snap, previous_step) in enumerate(zip(snaps[1:], steps, strict=False), start=1):
        assert snap["optimizer"] is previous_step["optimizer"]
        if index % BATCHES == 0:  # after the epoch's validation: freed before it, as Lightning does
            assert all(g is None for g in snap["grads"])
            continue
        assert all(g is not None and torch.equal(g, p) for g, p in zip(snap["grads"], previous_step["grads"], strict=True))


def test_before_backward_gets_the_graph_connected_loss_with_grads_cleared(run: dict[str, Any]) -> None:
    snaps, ends = _at(run, "before_backward"), _at(run, "train_batch_end")
    for snap, end in zip(snaps, ends, strict=True):
        loss = snap["loss"]
        assert loss.requires_grad and loss.ndim == 0 and loss.grad_fn is not None
        assert torch.equal(loss.detach(), end["outputs"]["loss"])
        assert all(g is None for g in snap["grads"])  # zero_grad(set_to_none=True) ran before


def test_after_backward_has_every_gradient_and_the_old_weights(run: dict[str, Any]) -> None:
    snaps, starts = _at(run, "after_backward"), _at(run, "train_batch_start")
    assert len(snaps) == EPOCHS * BATCHES
    for snap, start in zip(snaps, starts, strict=True):
        assert all(g is not None and bool(g.abs().sum() > 0) for g in snap["grads"])
        assert _same(snap["weights"], start["weights"])


def test_before_optimizer_step_has_the_gradients_and_the_old_weights(run: dict[str, Any]) -> None:
    snaps, backs, starts = _at(run, "before_optimizer_step"), _at(run, "after_backward"), _at(run, "train_batch_start")
    assert len(snaps) == EPOCHS * BATCHES
    for snap, back, start in zip(snaps, backs, starts, strict=True):
        assert all(torch.equal(g, b) for g, b in zip(snap["grads"], back["grads"], strict=True))
        assert _same(snap["weights"], start["weights"]) and snap["global_step"] == start["global_step"]
        assert isinstance(snap["optimizer"], torch.optim.SGD)


def test_train_batch_end_after_the_step_with_global_step_counted(run: dict[str, Any]) -> None:
    ends, starts = _at(run, "train_batch_end"), _at(run, "train_batch_start")
    for end, start in zip(ends, starts, strict=True):
        assert end["global_step"] == start["global_step"] + 1
        assert not _same(end["weights"], start["weights"])  # the optimizer has stepped
        assert end["batch_idx"] == start["batch_idx"] + 1 == end["batch_idx"]  # state counts the batch as done
        assert not end["outputs"]["loss"].requires_grad


def test_train_epoch_end_sees_the_epochs_reduced_train_metrics(run: dict[str, Any]) -> None:
    snaps, ends = _at(run, "train_epoch_end"), _at(run, "train_batch_end")
    for epoch, snap in enumerate(snaps):
        losses = [float(e["outputs"]["loss"]) for e in ends[epoch * BATCHES : (epoch + 1) * BATCHES]]
        assert snap["metrics"]["train/loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
        assert not snap["training"] and snap["batch_idx"] == BATCHES and snap["epoch"] == epoch


# ---------------------------------------------------------------------- evaluation blocks
@pytest.mark.parametrize("stage", ["validation", "test", "predict"])
def test_an_evaluation_block_runs_in_eval_mode_without_grad_on_fixed_weights(run: dict[str, Any], stage: str) -> None:
    events = [f"{stage}_{when}" for when in ("start", "epoch_start", "batch_start", "batch_end", "epoch_end", "end")]
    for event in events:
        for snap in _at(run, event):
            assert snap["modes"] == {False}, event
            assert not snap["grad_enabled"], event
    for start, end in zip(_at(run, f"{stage}_start"), _at(run, f"{stage}_end"), strict=True):
        assert _same(start["weights"], end["weights"])


@pytest.mark.parametrize(("stage", "prefix", "rows"), [("validation", "val", 32), ("test", "test", 48)])
def test_evaluation_batches_and_the_reduced_epoch_metrics(run: dict[str, Any], stage: str, prefix: str, rows: int) -> None:
    starts, ends = _at(run, f"{stage}_batch_start"), _at(run, f"{stage}_batch_end")
    assert all(s["dataloader_idx"] == 0 for s in starts + ends)
    assert all(e["outputs"]["loss"].ndim == 0 for e in ends)
    blocks = [s for s in _at(run, f"{stage}_epoch_end") if not s["sanity"]]
    per_block = rows // 16
    real_ends = [e for e in ends if not e["sanity"]]
    for index, snap in enumerate(blocks):
        losses = [float(e["outputs"]["loss"]) for e in real_ends[index * per_block : (index + 1) * per_block]]
        assert snap["metrics"][f"{prefix}/loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_predict_batch_end_carries_the_predictions(run: dict[str, Any]) -> None:
    ends = _at(run, "predict_batch_end")
    assert [tuple(e["outputs"].shape) for e in ends] == [(16, 2), (16, 2)]
    assert all(torch.equal(e["outputs"], p) for e, p in zip(ends, run["predictions"], strict=True))


# ---------------------------------------------------------------------- busloop's own events
def test_epoch_metrics_carries_what_state_metrics_and_history_hold(run: dict[str, Any]) -> None:
    snaps = _at(run, "epoch_metrics")
    assert [s["stage_arg"] for s in snaps] == ["val", "train", "val", "train", "test"]
    for snap in snaps:
        given = snap["metrics_arg"]
        assert given and all(snap["metrics"][k] == pytest.approx(v) for k, v in given.items())
        assert all(k.startswith(f"{snap['stage_arg']}/") for k in given)
        entry = snap["history"][-1]
        assert entry["stage"] == snap["stage_arg"] and {k: entry[k] for k in given} == given


def test_save_checkpoint_gets_the_complete_dict_and_its_changes_are_written(run: dict[str, Any]) -> None:
    snaps, written = _at(run, "save_checkpoint"), _at(run, "checkpoint_written")
    assert len(snaps) == len(written) == EPOCHS
    required = {"state_dict", "optimizer_states", "lr_schedulers", "loop", "rng", "callbacks", "epoch",
                "global_step", "config", "versions", "metrics", "history"}
    for snap, done in zip(snaps, written, strict=True):
        checkpoint = snap["checkpoint"]
        assert required <= set(checkpoint)
        assert snap["holds_the_weights"] and checkpoint["global_step"] == snap["global_step"]
        assert "val/loss" in checkpoint["metrics"]  # the validation that triggered the save is in it
        on_disk = load_checkpoint(done["path"])
        assert on_disk["probe"] == {"note": "added by a callback"}  # a callback's addition is saved


def test_checkpoint_written_names_an_existing_file_and_its_score(run: dict[str, Any]) -> None:
    for snap in _at(run, "checkpoint_written"):
        path = Path(snap["path"])
        assert path.is_file() and load_checkpoint(path)["global_step"] == snap["global_step"]
        assert snap["monitor"] == "val/loss" and snap["score"] == pytest.approx(snap["metrics"]["val/loss"])


def test_load_checkpoint_sees_the_file_with_the_weights_loaded_and_the_loop_not_yet(run: dict[str, Any]) -> None:
    path = Path(_at(run, "checkpoint_written")[0]["path"])
    probe = Probe()
    cfg = base_config(epochs=EPOCHS, seed=0)
    rt = Runtime(make_model(seed=7), [probe], cfg, loss=F.cross_entropy, tracker=NullTracker())
    rt.fit(make_loader(shuffle=True), ckpt_path=path)
    (snap,) = probe.seen["load_checkpoint"]
    assert snap["checkpoint"]["probe"] == {"note": "added by a callback"}
    assert _same(snap["weights"], snap["checkpoint"]["state_dict"])  # weights first (Lightning's order)
    assert snap["global_step"] == 0 and snap["checkpoint"]["global_step"] == BATCHES  # the loop comes after
    assert probe.seen["fit_start"][0]["global_step"] == BATCHES


def test_exception_fires_once_before_the_tracker_is_closed(tmp_path: Path) -> None:
    class Boom(Callback):
        def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 2:
                raise ValueError("boom")

    probe = Probe()
    cfg = base_config(epochs=1)
    cfg["tracker"] = {"save_directory": str(tmp_path), "run_name": "boom"}
    rt = Runtime(make_model(), [Boom(), probe], cfg, loss=F.cross_entropy)
    with pytest.raises(Exception, match="boom") as caught:
        rt.fit(make_loader())
    (snap,) = probe.seen["exception"]
    assert snap["exception"] is caught.value and snap["tracker_status"] is None  # still open to log to
    assert rt.tracker is not None and rt.tracker.status == "failed"


def test_artifact_produced_after_the_file_exists_and_the_tracker_has_it(tmp_path: Path) -> None:
    from callbacks.export import ExportOnTrainEnd
    from conftest import TinyCNN, image_config, make_image_loader

    probe = Probe()
    rt = Runtime(TinyCNN(), [ModelCheckpoint(subdir="min_val_loss"), ExportOnTrainEnd("loss"), probe], image_config(tmp_path))
    with rt:
        rt.fit(make_image_loader(48), make_image_loader(32, seed=1))
    kinds = {s["kind"]: Path(s["path"]) for s in probe.seen["artifact_produced"]}
    assert kinds["onnx"].is_file() and kinds["onnx"].suffix == ".onnx"
    assert rt.run_dir is not None and f"Artifact (onnx): {kinds['onnx'].resolve()}" in (rt.run_dir / "log.txt").read_text()


def test_interrupt_received_before_the_stop_and_the_resume_file(tmp_path: Path) -> None:
    class SendAt(Callback):
        def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
            if batch_idx == 2:
                os.kill(os.getpid(), signal.SIGINT)

    probe = Probe()
    rt = Runtime(make_model(), [GracefulInterruptCallback(save_dir=str(tmp_path)), SendAt(), probe], base_config(epochs=1),
                 loss=F.cross_entropy, tracker=NullTracker())
    assert rt.fit(make_loader()).interrupted
    (snap,) = probe.seen["interrupt_received"]
    assert snap["signal"] == signal.SIGINT and not snap["interrupted"] and snap["global_step"] == 3
    assert (tmp_path / "resume.ckpt").is_file()


# ---------------------------------------------------------------------- precision and accumulation
def test_16_mixed_gradients_are_unscaled_and_unclipped_at_before_optimizer_step() -> None:
    """16-mixed on the CPU: torch's GradScaler scales the loss on the CPU too (no CUDA needed)."""
    probe = Probe()
    cfg = base_config(epochs=1, precision="16-mixed", gradient_clip_val=1e-4)
    rt = Runtime(make_model(), [probe], cfg, loss=F.cross_entropy, tracker=NullTracker())
    rt.fit(make_loader())
    for back, step in zip(probe.seen["after_backward"], probe.seen["before_optimizer_step"], strict=True):
        assert back["scale"] > 1  # after_backward: still scaled
        for scaled, unscaled in zip(back["grads"], step["grads"], strict=True):
            torch.testing.assert_close(unscaled * back["scale"], scaled)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in step["grads"]]))
        assert norm > 1e-4  # clipping comes after the event


def test_accumulation_zero_grad_opens_a_window_and_the_step_closes_it() -> None:
    probe = Probe()
    rt = Runtime(make_model(), [probe], base_config(epochs=1, accumulate_grad_batches=4), loss=F.cross_entropy,
                 tracker=NullTracker())
    rt.fit(make_loader())  # 6 batches: windows [0..3] and [4, 5]
    assert [s["batch_idx"] for s in probe.seen["before_zero_grad"]] == [0, 4]  # state.batch_idx: batches done
    steps, backs = probe.seen["before_optimizer_step"], probe.seen["after_backward"]
    assert [s["batch_idx"] for s in steps] == [3, 5]
    for step, back in zip(steps, (backs[3], backs[5]), strict=True):
        assert all(torch.equal(g, b) for g, b in zip(step["grads"], back["grads"], strict=True))
    ends = probe.seen["train_batch_end"]
    assert [e["global_step"] for e in ends] == [0, 0, 0, 1, 1, 2]


#: Each event of the catalogue and the test above that pins its contract.
CONTRACTS = {
    "setup": "test_setup_and_teardown_name_the_running_stage",
    "teardown": "test_setup_and_teardown_name_the_running_stage",
    "fit_start": "test_fit_start_has_the_optimizer_schedulers_and_batch_counts",
    "fit_end": "test_train_end_after_the_last_step_and_fit_end_after_it",
    "sanity_check_start": "test_sanity_check_runs_in_eval_mode_without_touching_the_weights",
    "sanity_check_end": "test_sanity_check_runs_in_eval_mode_without_touching_the_weights",
    "train_start": "test_train_start_in_train_mode_with_the_sanity_metrics_cleared",
    "train_end": "test_train_end_after_the_last_step_and_fit_end_after_it",
    "train_epoch_start": "test_train_epoch_start_in_train_mode_after_the_epoch_scheduler_stepped",
    "train_epoch_end": "test_train_epoch_end_sees_the_epochs_reduced_train_metrics",
    "train_batch_start": "test_train_batch_start_before_any_change_of_the_weights",
    "train_batch_end": "test_train_batch_end_after_the_step_with_global_step_counted",
    "before_backward": "test_before_backward_gets_the_graph_connected_loss_with_grads_cleared",
    "after_backward": "test_after_backward_has_every_gradient_and_the_old_weights",
    "before_optimizer_step": "test_16_mixed_gradients_are_unscaled_and_unclipped_at_before_optimizer_step",
    "before_zero_grad": "test_before_zero_grad_sees_the_previous_steps_gradients_not_yet_cleared",
    **{
        f"{stage}_{when}": "test_an_evaluation_block_runs_in_eval_mode_without_grad_on_fixed_weights"
        for stage in ("validation", "test", "predict")
        for when in ("start", "end", "epoch_start", "epoch_end", "batch_start", "batch_end")
    },
    "exception": "test_exception_fires_once_before_the_tracker_is_closed",
    "save_checkpoint": "test_save_checkpoint_gets_the_complete_dict_and_its_changes_are_written",
    "load_checkpoint": "test_load_checkpoint_sees_the_file_with_the_weights_loaded_and_the_loop_not_yet",
    "epoch_metrics": "test_epoch_metrics_carries_what_state_metrics_and_history_hold",
    "checkpoint_written": "test_checkpoint_written_names_an_existing_file_and_its_score",
    "artifact_produced": "test_artifact_produced_after_the_file_exists_and_the_tracker_has_it",
    "interrupt_received": "test_interrupt_received_before_the_stop_and_the_resume_file",
}


def test_every_event_of_the_catalogue_has_a_contract_here() -> None:
    """A new event in runtime/events.py needs its contract test here."""
    assert set(CONTRACTS) == set(EVENTS)
    assert all(callable(globals().get(name)) for name in CONTRACTS.values())
