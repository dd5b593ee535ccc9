"""The loop's zero_grad shortcut is exactly ``optimizer.zero_grad(set_to_none=True)`` in every
case: an optimizer class that overrides ``zero_grad`` (directly, by inheritance, or patched on
the class after busloop was imported) gets its own method called with ``set_to_none=True``;
a LightningModule gets Lightning's ``optimizer_zero_grad`` behaviour, overridden or not, as
Lightning's Trainer calls it. (Instance-level patches and the profiler label are covered in
test_loop.py.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from parity import fit_both, three_batches
from torch import nn
from torch.nn import functional as F

from conftest import base_config, make_loader, make_model
from runtime import Runtime
from runtime.tracking import NullTracker

pl = pytest.importorskip("lightning.pytorch")


class RecordingSGD(torch.optim.SGD):
    """Records the ``set_to_none`` of every zero_grad call and the grads it found."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.zero_grad_calls: list[tuple[bool, bool]] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        had_grads = any(p.grad is not None for g in self.param_groups for p in g["params"])
        self.zero_grad_calls.append((set_to_none, had_grads))
        super().zero_grad(set_to_none=set_to_none)


def _fit(optimizer_factory: Any) -> tuple[Runtime, Any]:
    model = make_model()
    optimizer = optimizer_factory(model.parameters())
    runtime = Runtime(model, [], base_config(epochs=1), loss=F.cross_entropy, optimizer=optimizer, tracker=NullTracker())
    loader = make_loader()
    runtime.fit(loader)
    return runtime, loader


def test_an_overriding_subclass_is_called_with_set_to_none_true() -> None:
    runtime, loader = _fit(lambda params: RecordingSGD(params, lr=0.1))
    calls = runtime.optimizer.zero_grad_calls  # type: ignore[union-attr]
    assert [flag for flag, _ in calls] == [True] * len(loader)
    assert [had for _, had in calls] == [False] + [True] * (len(loader) - 1)  # real grads cleared


def test_a_zero_grad_patched_on_the_class_after_import_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    original = torch.optim.Optimizer.zero_grad

    def patched(self: torch.optim.Optimizer, set_to_none: bool = True) -> None:
        seen.append(set_to_none)
        original(self, set_to_none=set_to_none)

    monkeypatch.setattr(torch.optim.SGD, "zero_grad", patched)
    _, loader = _fit(lambda params: torch.optim.SGD(params, lr=0.1))
    assert seen == [True] * len(loader)


class _Classifier(pl.LightningModule):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self) -> Any:
        return RecordingSGD(self.parameters(), lr=0.1, momentum=0.9)


class _OwnZeroGrad(_Classifier):
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        optimizer.zero_grad(set_to_none=batch_idx % 2 == 0)  # zeros instead of None on odd batches


@pytest.mark.parametrize("module", [_Classifier, _OwnZeroGrad])
def test_a_lightning_module_clears_grads_as_under_lightning(module: type[_Classifier]) -> None:
    """Without an override busloop takes the shortcut or calls the optimizer's own zero_grad
    (here: an overriding optimizer, so its own), with Lightning's default set_to_none=True; with
    an ``optimizer_zero_grad`` override, the override decides. Both as Lightning's Trainer."""
    by_lightning, by_busloop, _, rt = fit_both(module, three_batches)
    theirs = by_lightning.trainer.optimizers[0].zero_grad_calls
    ours = rt.optimizer.zero_grad_calls  # type: ignore[union-attr]
    assert ours == theirs and len(ours) == 6
    for mine, lightning in zip(by_busloop.parameters(), by_lightning.parameters(), strict=True):
        assert torch.equal(mine, lightning)
