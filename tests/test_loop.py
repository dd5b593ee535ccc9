"""Loop features on real (small) training runs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from conftest import SaveAndStop, base_config, make_loader, make_model
from runtime import Callback, Runtime
from runtime.checkpoint import load_checkpoint
from runtime.tracking import NullTracker

F = nn.functional


def _runtime(model: nn.Module, callbacks: list[Any] | None = None, **trainer: Any) -> Runtime:
    return Runtime(model, callbacks or [], base_config(**trainer), loss=F.cross_entropy, tracker=NullTracker())


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_bitwise_identical_weights() -> None:
    results = []
    for _ in range(2):
        model = make_model(seed=5, dropout=0.3)
        _runtime(model, seed=11, epochs=2).fit(make_loader(shuffle=True), make_loader(32))
        results.append(_weights(model))
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name
    other = make_model(seed=5, dropout=0.3)
    _runtime(other, seed=12, epochs=2).fit(make_loader(shuffle=True), make_loader(32))
    assert not torch.equal(_weights(other)["0.weight"], results[0]["0.weight"])


def test_gradient_accumulation_matches_a_k_times_larger_batch() -> None:
    accumulated, large = make_model(seed=2), make_model(seed=2)
    cfg = {"optimizer": {"name": "SGD", "params": {"lr": 0.5}}, "trainer": {"epochs": 2, "num_sanity_val_steps": 0}}
    cfg_acc = {**cfg, "trainer": {**cfg["trainer"], "accumulate_grad_batches": 4}}
    steps = []
    for model, config, batch_size in ((accumulated, cfg_acc, 8), (large, cfg, 32)):
        rt = Runtime(model, [], config, loss=F.cross_entropy, tracker=NullTracker())
        steps.append(rt.fit(make_loader(64, batch_size=batch_size)).global_step)
    assert steps == [4, 4]
    for (name, a), b in zip(_weights(accumulated).items(), _weights(large).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(_weights(large)["0.weight"], _weights(make_model(seed=2))["0.weight"])


class GradProbe(Callback):
    """Records the gradient norm / max before clipping and after (at batch end)."""

    def __init__(self) -> None:
        self.before: list[tuple[float, float]] = []
        self.after: list[tuple[float, float]] = []

    @staticmethod
    def _measure(module: nn.Module) -> tuple[float, float]:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        return norm, max(g.abs().max().item() for g in grads)

    def on_before_optimizer_step(self, runtime: Runtime, optimizer: Any) -> None:
        self.before.append(self._measure(runtime.model))

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.after.append(self._measure(runtime.model))


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping(algorithm: str) -> None:
    probe = GradProbe()
    clip = 0.05
    _runtime(make_model(), [probe], gradient_clip_val=clip, gradient_clip_algorithm=algorithm).fit(make_loader())
    index = 0 if algorithm == "norm" else 1
    assert max(b[index] for b in probe.before) > clip * 2  # clipping had work to do
    assert all(a[index] <= clip * (1 + 1e-5) for a in probe.after)


def test_bf16_mixed_on_cpu_runs_forward_in_bfloat16_and_learns() -> None:
    dtypes: list[torch.dtype] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.net(x)
            dtypes.append(out.dtype)
            return out

    model = Probe()
    rt = _runtime(model, epochs=4, precision="bf16-mixed")
    rt.fit(make_loader(), make_loader(32))
    first = [h for h in rt.state.history if h["stage"] == "train"][0]["train/loss"]
    assert set(dtypes) == {torch.bfloat16}
    assert rt.state.metrics["train/loss"] < first
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_16_mixed_on_cpu_uses_a_grad_scaler() -> None:
    rt = _runtime(make_model(), precision="16-mixed")
    rt.fit(make_loader())
    assert rt.scaler is not None and rt.scaler.get_scale() > 0
    assert rt.state.global_step == 12


def _lrs(rt_callbacks: list[Any], scheduler: dict[str, Any], epochs: int = 3, **trainer: Any) -> list[float]:
    lrs: list[float] = []

    class LrProbe(Callback):
        def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
            lrs.append(runtime.optimizer.param_groups[0]["lr"])

    cfg = base_config(epochs=epochs, **trainer)
    cfg["scheduler"] = scheduler
    Runtime(make_model(), [LrProbe(), *rt_callbacks], cfg, loss=F.cross_entropy, tracker=NullTracker()).fit(
        make_loader(64, batch_size=16), make_loader(32)
    )
    return lrs


def test_epoch_scheduler_steps_once_per_epoch() -> None:
    lrs = _lrs([], {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.5}, "interval": "epoch"})
    assert lrs == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025] * 4)


def test_step_scheduler_with_frequency_steps_every_second_step() -> None:
    lrs = _lrs([], {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.5}, "interval": "step", "frequency": 2}, epochs=1)
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_step_scheduler_waits_for_accumulated_steps() -> None:
    lrs = _lrs(
        [],
        {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.5}, "interval": "step"},
        epochs=1,
        accumulate_grad_batches=2,
    )
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_reduce_on_plateau_steps_after_each_epoch_on_its_monitor() -> None:
    class Constant(Callback):
        def on_validation_epoch_end(self, runtime: Runtime) -> None:
            runtime.log("plateau_probe", 1.0)  # -> val/plateau_probe, never improves

    lrs = _lrs(
        [Constant()],
        {"name": "ReduceLROnPlateau", "params": {"factor": 0.5, "patience": 0}, "monitor": "val/plateau_probe"},
    )
    assert lrs == pytest.approx([0.1] * 4 + [0.1] * 4 + [0.05] * 4)


class BatchCounter(Callback):
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        self._count("train")

    def on_validation_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        self._count("sanity" if runtime.state.sanity_checking else "val")

    def on_test_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        self._count("test")

    def on_validation_start(self, runtime: Runtime) -> None:
        self._count("val_runs")


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"limit_train_batches": 2, "limit_val_batches": 1}, {"train": 4, "val": 2, "val_runs": 2}),
        ({"limit_train_batches": 0.5, "limit_val_batches": 0.5}, {"train": 6, "val": 4, "val_runs": 2}),
        ({"val_check_interval": 0.5}, {"train": 12, "val": 16, "val_runs": 4}),
        ({"check_val_every_n_epoch": 2}, {"train": 12, "val": 4, "val_runs": 1}),
        ({"max_steps": 5}, {"train": 5}),  # as Lightning: no validation when max_steps ends mid-epoch
        ({"num_sanity_val_steps": 1}, {"train": 12, "val": 8, "val_runs": 3, "sanity": 1}),
    ],
)
def test_limits_and_validation_schedule(limits: dict[str, Any], expected: dict[str, int]) -> None:
    counter = BatchCounter()
    rt = _runtime(make_model(), [counter], **limits)  # 96 samples / 16 = 6 train batches, 2 epochs
    rt.fit(make_loader(), make_loader(64, batch_size=16))  # 4 val batches
    assert counter.counts == expected


def test_limit_test_batches_and_test_metrics() -> None:
    counter = BatchCounter()
    cfg = base_config(limit_test_batches=3)
    rt = Runtime(make_model(), [counter], cfg, loss=F.cross_entropy, tracker=NullTracker())
    metrics = rt.test(make_loader(96, batch_size=16))
    assert counter.counts == {"test": 3}
    assert set(metrics) == {"test/loss"}


def test_val_loss_always_present_for_lightning_style_modules_that_return_a_loss() -> None:
    class Quiet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.net(batch[0]), batch[1])

        validation_step = training_step

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    rt = Runtime(Quiet(), [], base_config(), tracker=NullTracker())
    rt.fit(make_loader(), make_loader(32))
    assert "val/loss" in rt.state.metrics


def test_request_stop_and_predict() -> None:
    class StopAfterThree(Callback):
        def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
            if runtime.state.global_step == 3:
                runtime.request_stop("enough")

    model = make_model()
    rt = _runtime(model, [StopAfterThree()], epochs=5)
    state = rt.fit(make_loader())
    assert (state.global_step, state.epoch, state.stop_reason) == (3, 1, "enough")
    predictions = rt.predict(make_loader(32, batch_size=16))
    assert len(predictions) == 2 and predictions[0].shape == (16, 2)


def test_metrics_are_batch_size_weighted_means() -> None:
    class LogBatchSize(Callback):
        def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
            runtime.log("size", float(len(batch[0])))

    rt = _runtime(make_model(), [LogBatchSize()], epochs=1)
    rt.fit(make_loader(40, batch_size=16))  # batches of 16, 16, 8
    assert rt.state.metrics["train/size"] == pytest.approx((16 * 16 + 16 * 16 + 8 * 8) / 40)


def test_one_process_reduction_is_the_collective_ones_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """One process reduces without the collective's tensors; the epoch means are the float64
    values the all-reduce path computes, for tensors of any count, Python numbers, sizes that
    differ and 1-element tensors (the fallback)."""
    from runtime import distributed as dist
    from runtime.metrics import MetricStore, _weighted_sum
    from runtime.state import LoopState

    generator = torch.Generator().manual_seed(3)
    logs = {
        "train/loss": ([torch.rand((), generator=generator) for _ in range(401)], [64] * 400 + [17]),
        "train/acc": ([float(i) / 7 for i in range(9)], list(range(1, 10))),
        "train/one": ([torch.rand(1, generator=generator) for _ in range(5)], [3] * 5),
        "train/single": ([torch.tensor(0.1, dtype=torch.float64)], [1]),
    }

    def reduced() -> dict[str, float]:
        store = MetricStore(LoopState(), torch.device("cpu"))
        store.begin_stage("train")
        store.active.update({name: (list(values), list(sizes)) for name, (values, sizes) in logs.items()})
        return store.reduce("train")

    one_process = reduced()
    monkeypatch.setattr(dist, "is_available_and_initialized", lambda: True)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce_sum", lambda t: t)  # a second rank that logged nothing
    assert one_process == reduced()
    assert one_process["train/single"] == 0.1
    values = logs["train/loss"][0]
    reference = (torch.stack(values).double() * torch.tensor([64] * 401, dtype=torch.float64)).sum()
    assert _weighted_sum(values, [64] * 401).item() == reference.item()  # one size: the same weights




@pytest.mark.parametrize(
    ("epoch", "at", "accumulate"), [(1, 2, 1), (0, 0, 1), (1, 5, 1), (1, 0, 4), (2, 4, 4), (0, 2, 4)]
)
def test_resume_mid_epoch_is_bitwise_identical(tmp_path: Any, epoch: int, at: int, accumulate: int) -> None:
    """Shuffled loader, dropout, momentum, a scheduler: resuming from a checkpoint taken
    after any batch ends with the same weights, optimizer state and metric history; with
    accumulation also inside a window ([0..3] [4, 5] with 6 batches and 4 per step)."""
    scheduler = {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.7}}

    def run(callbacks: list[Any], ckpt: Any = None) -> Runtime:
        cfg = base_config(epochs=3, seed=3, accumulate_grad_batches=accumulate)
        cfg["scheduler"] = scheduler
        rt = Runtime(make_model(seed=9, dropout=0.5), callbacks, cfg, loss=F.cross_entropy, tracker=NullTracker())
        rt.fit(make_loader(shuffle=True), make_loader(32), ckpt_path=ckpt)
        return rt

    straight = run([])
    path = tmp_path / "mid.ckpt"
    run([SaveAndStop(path, epoch, at)])
    resumed = run([], ckpt=path)

    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    a, b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for key in a["state"]:
        assert torch.equal(a["state"][key]["momentum_buffer"], b["state"][key]["momentum_buffer"])
    assert straight.state.history == resumed.state.history
    assert straight.state.global_step == resumed.state.global_step == 3 * -(-6 // accumulate)
    assert load_checkpoint(path)["loop"]["batch_idx"] == at + 1


class _CountingSGD(torch.optim.SGD):
    """An optimizer that overrides zero_grad: the loop must call it, not bypass it."""

    calls = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        type(self).calls += 1
        super().zero_grad(set_to_none=set_to_none)


def test_zero_grad_clears_grads_and_respects_overrides_and_profiler() -> None:
    seen: list[list[bool]] = []

    class GradProbe(Callback):
        def on_before_backward(self, runtime: Runtime, loss: torch.Tensor) -> None:
            seen.append([p.grad is None for p in runtime.model.parameters()])

    loader = make_loader()
    _runtime(make_model(), [GradProbe()], epochs=1).fit(loader)
    assert len(seen) == len(loader) and all(all(flags) for flags in seen)

    model = make_model()
    optimizer = _CountingSGD(model.parameters(), lr=0.1)
    runtime = Runtime(model, [], base_config(epochs=1), loss=F.cross_entropy, optimizer=optimizer, tracker=NullTracker())
    _CountingSGD.calls = 0
    runtime.fit(loader)
    assert _CountingSGD.calls == len(loader)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _runtime(make_model(), epochs=1).fit(loader)
    names = {event.key for event in prof.key_averages()}
    assert "Optimizer.zero_grad#SGD.zero_grad" in names


def test_zero_grad_calls_an_instance_level_patch() -> None:
    """``optimizer.zero_grad = wrapper`` (apex-style): the loop must call the wrapper."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    original = optimizer.zero_grad
    calls: list[bool] = []

    def wrapper(set_to_none: bool = True) -> None:
        calls.append(set_to_none)
        original(set_to_none=set_to_none)

    optimizer.zero_grad = wrapper  # type: ignore[method-assign]
    loader = make_loader()
    runtime = Runtime(model, [], base_config(epochs=1), loss=F.cross_entropy, optimizer=optimizer, tracker=NullTracker())
    runtime.fit(loader)
    assert calls == [True] * len(loader)


def test_zero_grad_honours_an_inherited_override() -> None:
    """A subclass of an overriding optimizer inherits the override; the loop calls it too."""

    class Inheriting(_CountingSGD):
        pass

    model = make_model()
    loader = make_loader()
    optimizer = Inheriting(model.parameters(), lr=0.1)
    runtime = Runtime(model, [], base_config(epochs=1), loss=F.cross_entropy, optimizer=optimizer, tracker=NullTracker())
    _CountingSGD.calls = 0
    Inheriting.calls = 0
    runtime.fit(loader)
    assert Inheriting.calls == len(loader)


def test_epoch_scheduler_steps_when_the_last_training_step_returns_none() -> None:
    """A training_step that skips the epoch's last batch (returns None) must not skip the
    epoch-interval scheduler step (issue #16)."""

    class SkipsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
            if batch_idx == 3:  # the last of 4 batches
                return None
            x, y = batch
            return F.cross_entropy(self(x), y)

    lrs: list[float] = []

    class LrProbe(Callback):
        def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
            lrs.append(runtime.optimizer.param_groups[0]["lr"])  # type: ignore[union-attr]

    cfg = base_config(epochs=3)
    cfg["scheduler"] = {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.5}, "interval": "epoch"}
    rt = Runtime(SkipsLast(), [LrProbe()], cfg, tracker=NullTracker())
    rt.fit(make_loader(64, batch_size=16))
    assert rt.state.global_step == 9  # the skipped batches did not step the optimizer
    assert lrs == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025] * 4)


def test_zero_grad_keeps_its_profiler_label_under_the_autograd_profiler() -> None:
    """``torch.autograd.profiler.profile`` (what ``torch.profiler.profile`` runs on) sets the
    flag the loop's zero_grad shortcut reads: the trace keeps ``Optimizer.zero_grad``'s label."""
    with torch.autograd.profiler.profile() as prof:
        _runtime(make_model(), epochs=1).fit(make_loader())
    assert "Optimizer.zero_grad#SGD.zero_grad" in {event.key for event in prof.key_averages()}
