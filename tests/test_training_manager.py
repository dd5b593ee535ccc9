"""TrainingManager: node freezing, BatchNorm, lr_after_unfreeze, resume; TripleLRSGDStrategy."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from callbacks.strategies import ConfigOptimizerStrategy, TripleLRSGDStrategy, build_strategy
from callbacks.training_manager import TrainingManager, set_group_lr
from conftest import SaveAndStop, base_config, make_loader
from runtime import Callback, ConfigError, Runtime
from runtime.optim import SchedulerConfig
from runtime.tracking import NullTracker

F = nn.functional


class Net(nn.Module):
    """backbone (Linear, BatchNorm, ReLU) -> head (Linear)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _runtime(
    callbacks: list[Any], *, scheduler: Any = None, model: nn.Module | None = None, **trainer: Any
) -> Runtime:
    cfg = base_config(**trainer)
    if isinstance(scheduler, dict):
        cfg["scheduler"] = scheduler
        scheduler = None
    return Runtime(
        model or Net(), callbacks, cfg, loss=F.cross_entropy, scheduler=scheduler, tracker=NullTracker()
    )


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class FreezeProbe(Callback):
    """Per epoch: grads at the optimizer step, requires_grad and BN mode at every batch,
    backbone state at the epoch's end."""

    def __init__(self) -> None:
        self.grads: dict[int, list[tuple[bool, bool]]] = {}
        self.requires_grad: dict[int, set[bool]] = {}
        self.bn_training: dict[int, set[bool]] = {}
        self.backbone_at_end: dict[int, dict[str, torch.Tensor]] = {}
        self.initial: dict[str, torch.Tensor] = {}

    def on_fit_start(self, runtime: Runtime) -> None:
        self.initial = _copy(runtime.model.backbone.state_dict())  # type: ignore[union-attr]

    def on_train_batch_start(self, runtime: Runtime, batch: Any, batch_idx: int) -> None:
        model: Any = runtime.model
        epoch = runtime.state.epoch
        self.requires_grad.setdefault(epoch, set()).update(p.requires_grad for p in model.backbone.parameters())
        self.bn_training.setdefault(epoch, set()).add(model.backbone[1].training)
        assert all(p.requires_grad for p in model.head.parameters())

    def on_before_optimizer_step(self, runtime: Runtime, optimizer: Any) -> None:
        model: Any = runtime.model
        backbone_none = all(p.grad is None for p in model.backbone.parameters())
        head_set = all(p.grad is not None for p in model.head.parameters())
        self.grads.setdefault(runtime.state.epoch, []).append((backbone_none, head_set))

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        self.backbone_at_end[runtime.state.epoch] = _copy(runtime.model.backbone.state_dict())  # type: ignore[union-attr]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_node_gets_no_grads_and_its_batchnorm_stats_stay(caplog: pytest.LogCaptureFixture) -> None:
    """Validation mid-epoch (the loop sets train mode after it) and a sanity check."""
    probe = FreezeProbe()
    manager = TrainingManager(freeze={"backbone": {"unfreeze_after": 2}})
    rt = _runtime([manager, probe], epochs=3, val_check_interval=2, num_sanity_val_steps=1)
    with caplog.at_level(logging.INFO, logger="busloop"):
        rt.fit(make_loader(), make_loader(32))

    for epoch in (0, 1):
        assert probe.grads[epoch] == [(True, True)] * 6
        assert probe.requires_grad[epoch] == {False}
        assert probe.bn_training[epoch] == {False}  # also after each validation
        assert _same(probe.backbone_at_end[epoch], probe.initial)  # weights and running stats
    assert probe.grads[2] == [(False, True)] * 6
    assert probe.requires_grad[2] == {True}
    assert probe.bn_training[2] == {True}
    after = probe.backbone_at_end[2]
    assert not torch.equal(after["1.running_mean"], probe.initial["1.running_mean"])
    assert int(after["1.num_batches_tracked"]) == 6
    assert not torch.equal(after["0.weight"], probe.initial["0.weight"])

    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("Freezing node 'backbone'") == 1
    assert messages.count("Unfreezing node 'backbone'") == 1


@pytest.mark.parametrize(
    ("unfreeze_after", "epochs", "frozen_epochs"),
    [(1, 3, {0}), (0.5, 4, {0, 1}), (0.3, 4, {0}), (None, 3, {0, 1, 2}), (0, 2, set()), (5, 3, {0, 1, 2})],
)
def test_unfreeze_epoch_for_int_float_and_none(unfreeze_after: Any, epochs: int, frozen_epochs: set[int]) -> None:
    probe = FreezeProbe()
    rt = _runtime([TrainingManager(freeze={"backbone": {"unfreeze_after": unfreeze_after}}), probe], epochs=epochs)
    rt.fit(make_loader(32))
    for epoch in range(epochs):
        frozen = epoch in frozen_epochs
        assert probe.requires_grad[epoch] == {not frozen}, epoch
        assert probe.bn_training[epoch] == {not frozen}, epoch


def test_inactive_node_and_user_frozen_parameters_are_left_alone() -> None:
    model = Net()
    model.backbone[0].bias.requires_grad_(False)  # frozen by the user for good
    manager = TrainingManager(freeze={"backbone": {"unfreeze_after": 1}, "head": {"active": False}})
    rt = _runtime([manager], model=model, epochs=2)
    rt.fit(make_loader(32))
    assert model.backbone[0].weight.requires_grad
    assert not model.backbone[0].bias.requires_grad
    assert all(p.requires_grad for p in model.head.parameters())


def test_each_node_gets_its_own_param_groups() -> None:
    model = Net()
    manager = TrainingManager(freeze={"backbone": {"unfreeze_after": 1}, "backbone.1": {"unfreeze_after": 2}})
    rt = _runtime([manager], model=model, epochs=1)
    rt.fit(make_loader(32))
    assert isinstance(rt.training_strategy, ConfigOptimizerStrategy)
    groups = rt.optimizer.param_groups  # type: ignore[union-attr]
    assert [g["node"] for g in groups] == ["backbone", "backbone.1", None]
    ids = [[id(p) for p in g["params"]] for g in groups]
    assert ids[0] == [id(p) for p in model.backbone[0].parameters()]
    assert ids[1] == [id(p) for p in model.backbone[1].parameters()]
    assert ids[2] == [id(p) for p in model.head.parameters()]
    assert all(g["lr"] == 0.1 and g["momentum"] == 0.9 for g in groups)


def test_without_nodes_the_runtime_builds_its_own_optimizer() -> None:
    rt = _runtime([TrainingManager()], epochs=1)
    rt.fit(make_loader(32))
    assert rt.training_strategy is None
    assert len(rt.optimizer.param_groups) == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("freeze", [None, {"backbone": {"active": False}}])
def test_with_nothing_to_freeze_every_epoch_trains_as_without_the_manager(freeze: Any) -> None:
    """No active node: the manager's epoch start changes nothing (it skips its work), so the
    run's weights, BN modes and requires_grad are those of a run without it."""

    def run(callbacks: list[Any]) -> tuple[Runtime, FreezeProbe]:
        probe, model = FreezeProbe(), Net()
        model.backbone[0].bias.requires_grad_(False)  # frozen by the user for good
        rt = _runtime([*callbacks, probe], model=model, epochs=3)
        rt.fit(make_loader(32), make_loader(16))
        return rt, probe

    manager = TrainingManager(freeze=freeze)
    (with_manager, seen), (without, expected) = run([manager]), run([])
    assert _same(with_manager.model.state_dict(), without.model.state_dict())
    assert (seen.requires_grad, seen.bn_training) == (expected.requires_grad, expected.bn_training)
    assert seen.requires_grad == {0: {True, False}, 1: {True, False}, 2: {True, False}}
    assert manager.frozen_nodes() == set()


class LrProbe(Callback):
    """Registered after the manager: group lr / initial_lr and scheduler base_lrs per epoch."""

    def __init__(self) -> None:
        self.lr: dict[int, list[float]] = {}
        self.initial_lr: dict[int, list[float]] = {}
        self.base_lrs: dict[int, list[float]] = {}

    def on_train_epoch_start(self, runtime: Runtime) -> None:
        groups = runtime.optimizer.param_groups  # type: ignore[union-attr]
        epoch = runtime.state.epoch
        self.lr[epoch] = [g["lr"] for g in groups]
        self.initial_lr[epoch] = [g["initial_lr"] for g in groups]
        self.base_lrs[epoch] = list(runtime.lr_scheduler_configs[0].scheduler.base_lrs)


def test_lr_after_unfreeze_is_set_on_the_unfreeze_epoch_only() -> None:
    probe = LrProbe()
    manager = TrainingManager(freeze={"backbone": {"unfreeze_after": 2, "lr_after_unfreeze": 0.01}})
    scheduler = {"name": "StepLR", "params": {"step_size": 1, "gamma": 0.5}}
    rt = _runtime([manager, probe], scheduler=scheduler, epochs=4)
    rt.fit(make_loader(32))
    backbone, rest = zip(*probe.lr.values(), strict=True)
    assert rest == pytest.approx((0.1, 0.05, 0.025, 0.0125))
    assert backbone == pytest.approx((0.1, 0.05, 0.01, 0.005))  # set at epoch 2, then scheduled
    assert probe.initial_lr[1] == [0.1, 0.1]
    assert probe.initial_lr[2] == probe.initial_lr[3] == [0.01, 0.1]
    assert probe.base_lrs[1] == [0.1, 0.1]
    assert probe.base_lrs[2] == probe.base_lrs[3] == [0.01, 0.1]


@pytest.mark.parametrize("kind", ["sequential", "chained"])
def test_lr_after_unfreeze_reaches_nested_schedulers(kind: str) -> None:
    params = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]]}], lr=0.1)
    lr_sched = torch.optim.lr_scheduler
    warm = lr_sched.LinearLR(optimizer, start_factor=0.5, total_iters=2)
    step = lr_sched.StepLR(optimizer, step_size=1, gamma=0.5)
    if kind == "sequential":
        scheduler: Any = lr_sched.SequentialLR(optimizer, [warm, step], milestones=[2])
    else:
        scheduler = lr_sched.ChainedScheduler([warm, step])
    runtime: Any = SimpleNamespace(optimizer=optimizer, lr_scheduler_configs=[SchedulerConfig(scheduler)])
    set_group_lr(runtime, [1], 0.003)
    assert optimizer.param_groups[1]["lr"] == optimizer.param_groups[1]["initial_lr"] == 0.003
    assert optimizer.param_groups[0]["initial_lr"] == 0.1
    assert warm.base_lrs == step.base_lrs == [0.1, 0.003]




def _freeze_run(callbacks: list[Any], strategy: Any = None, ckpt: Any = None) -> tuple[Runtime, FreezeProbe]:
    probe = FreezeProbe()
    manager = TrainingManager(
        freeze={"backbone": {"unfreeze_after": 2, "lr_after_unfreeze": 0.02}}, strategy=strategy
    )
    scheduler = None if strategy else {"name": "StepLR", "params": {"step_size": 4, "gamma": 0.5}, "interval": "step"}
    rt = _runtime([manager, probe, *callbacks], scheduler=scheduler, epochs=4, seed=3)
    rt.fit(make_loader(shuffle=True), make_loader(32), ckpt_path=ckpt)
    return rt, probe


@pytest.mark.parametrize(("epoch", "at"), [(1, 2), (1, 5), (2, 0), (2, 3), (3, 1)])
@pytest.mark.parametrize("strategy", [None, "triple"])
def test_resumed_run_lands_in_the_same_freeze_state(tmp_path: Any, epoch: int, at: int, strategy: Any) -> None:
    """Before, at and after the unfreeze epoch; a per-step scheduler, so a second
    lr_after_unfreeze on resume would show; TripleLRSGD's warmup spans the checkpoints."""
    spec = {"name": "TripleLRSGDStrategy", "params": {"lr": 0.05, "warmup_min_steps": 1}} if strategy else None
    straight, _ = _freeze_run([], spec)
    path = tmp_path / "mid.ckpt"
    _freeze_run([SaveAndStop(path, epoch, at)], spec)
    resumed, probe = _freeze_run([], spec, ckpt=path)

    first = min(probe.requires_grad)
    assert first == (epoch if at < 5 else epoch + 1)  # after the last batch: the next epoch
    assert probe.requires_grad[first] == {first >= 2}
    assert probe.bn_training[first] == {first >= 2}
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    a, b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()  # type: ignore[union-attr]
    assert a["param_groups"] == b["param_groups"]
    for key in a["state"]:
        assert torch.equal(a["state"][key]["momentum_buffer"], b["state"][key]["momentum_buffer"])
    assert straight.state.history == resumed.state.history


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="freeze.backbone.unfreeze_afer: unknown key; did you mean"):
        TrainingManager(freeze={"backbone": {"unfreeze_afer": 1}})
    with pytest.raises(ValueError, match="fraction"):
        TrainingManager(freeze={"backbone": {"unfreeze_after": 2.0}})
    with pytest.raises(ConfigError, match="did you mean 'TripleLRSGDStrategy'"):
        TrainingManager(strategy="TripleLRSGD")
    rt = _runtime([TrainingManager(freeze={"backbon": {}})], epochs=1)
    with pytest.raises(Exception, match="no submodule 'backbon'; did you mean 'backbone'"):
        rt.fit(make_loader(32))


# ---------------------------------------------------------------------- TripleLRSGD
def _groups_by(optimizer: torch.optim.Optimizer) -> dict[tuple[Any, str], dict[str, Any]]:
    return {(g["node"], g["kind"]): g for g in optimizer.param_groups}


def test_triple_lr_sgd_param_groups() -> None:
    model = Net()
    rt = _runtime([TrainingManager(strategy={"name": "TripleLRSGDStrategy"})], model=model, epochs=1)
    rt.fit(make_loader(32))
    groups = _groups_by(rt.optimizer)  # type: ignore[arg-type]
    assert list(groups) == [(None, "bn"), (None, "weight"), (None, "bias")]
    ids = {key: [id(p) for p in g["params"]] for key, g in groups.items()}
    bb, head = model.backbone, model.head
    assert ids[None, "bn"] == [id(bb[1].weight)]
    assert ids[None, "weight"] == [id(bb[0].weight), id(head.weight)]
    assert ids[None, "bias"] == [id(bb[0].bias), id(bb[1].bias), id(head.bias)]
    assert [g["weight_decay"] for g in groups.values()] == [0.0, 0.0005, 0.0]
    assert all(g["nesterov"] and g["initial_lr"] == 0.02 for g in groups.values())
    assert isinstance(rt.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.LambdaLR)

    model = Net()
    manager = TrainingManager(freeze={"backbone": {"unfreeze_after": 1}}, strategy="TripleLRSGDStrategy")
    rt = _runtime([manager], model=model, epochs=1)
    rt.fit(make_loader(32))
    groups = _groups_by(rt.optimizer)  # type: ignore[arg-type]
    assert list(groups) == [
        ("backbone", "bn"), ("backbone", "weight"), ("backbone", "bias"),
        (None, "bn"), (None, "weight"), (None, "bias"),
    ]
    assert groups[None, "bn"]["params"] == []
    assert [id(p) for p in groups["backbone", "bias"]["params"]] == [id(model.backbone[0].bias), id(model.backbone[1].bias)]


def _lf(x: float, epochs: int, lr: float, lre: float, cosine: bool) -> float:
    lrf = lre / lr
    if cosine:
        return ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return max(1 - x / epochs, 0) * (1.0 - lrf) + lrf


class StepProbe(Callback):
    """lr and momentum of every group at each optimizer step, by (epoch, batch)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
        self.kinds: list[str] = []

    def on_before_optimizer_step(self, runtime: Runtime, optimizer: Any) -> None:
        st = runtime.state
        self.kinds = [g["kind"] for g in optimizer.param_groups]
        self.seen[st.epoch, st.batch_idx] = (
            [g["lr"] for g in optimizer.param_groups],
            [g["momentum"] for g in optimizer.param_groups],
        )


@pytest.mark.parametrize("cosine", [True, False])
def test_triple_lr_sgd_warmup_values(cosine: bool) -> None:
    """6 batches per epoch, warmup_epochs 3 -> W = 18 steps (min steps lowered to 10)."""
    lr, lre, epochs, n, total = 0.05, 0.001, 6, 6, 18
    strategy = TripleLRSGDStrategy(lr=lr, lre=lre, cosine_annealing=cosine, warmup_min_steps=10)
    probe = StepProbe()
    rt = _runtime([TrainingManager(strategy=strategy), probe], epochs=epochs)
    rt.fit(make_loader())
    assert probe.kinds == ["bn", "weight", "bias"]

    for step in (0, 1, 5, 7, 12, 17, 18):
        epoch, batch = divmod(step, n)
        lrs, momenta = probe.seen[epoch, batch]
        target = lr * _lf(epoch, epochs, lr, lre, cosine)
        frac = step / total
        assert lrs[0] == pytest.approx(frac * target)  # bn weights from 0
        assert lrs[1] == pytest.approx(frac * target)  # weights from 0
        assert lrs[2] == pytest.approx(0.1 + frac * (target - 0.1))  # biases from warmup_bias_lr
        assert momenta == pytest.approx([0.8 + frac * (0.937 - 0.8)] * 3)
    for epoch in (3, 4, 5):  # after the warmup: the LambdaLR alone
        for batch in range(n):
            lrs, momenta = probe.seen[epoch, batch]
            assert lrs == pytest.approx([lr * _lf(epoch, epochs, lr, lre, cosine)] * 3)
            assert momenta == pytest.approx([0.937] * 3)


def test_triple_lr_sgd_default_warmup_lasts_at_least_100_steps() -> None:
    strategy = TripleLRSGDStrategy()
    assert strategy.warmup_steps(6) == 100
    assert strategy.warmup_steps(50) == 150
    assert build_strategy({"name": "TripleLRSGDStrategy", "params": {"lr": 0.1}}).lr == 0.1
