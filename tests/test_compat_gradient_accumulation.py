"""compat.GradientAccumulationScheduler against Lightning's stock scheduler on the same module
and data: the same optimizer steps per epoch and the same trained weights; its validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from compat_pairs import PairModule, fit_busloop, fit_lightning, pl

from compat import GradientAccumulationScheduler
from runtime import Callback, Runtime


class LightningSteps(pl.Callback):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        self.steps.append(trainer.global_step)


class BusloopSteps(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        self.steps.append(runtime.state.global_step)


@pytest.mark.parametrize("scheduling", [{0: 3, 1: 1, 2: 4}, {2: 2}, {1: 5, 3: 1}])
def test_same_steps_and_weights_as_lightning(tmp_path: Path, scheduling: dict[int, int]) -> None:
    module = PairModule()
    theirs, their_steps = pl.callbacks.GradientAccumulationScheduler(dict(scheduling)), LightningSteps()
    lightning = fit_lightning(module, [theirs, their_steps], tmp_path, epochs=4)
    ours, our_steps = GradientAccumulationScheduler(dict(scheduling)), BusloopSteps()
    rt = fit_busloop(module, [ours, our_steps], epochs=4)

    assert our_steps.steps == their_steps.steps
    assert ours.scheduling == theirs.scheduling and ours.epochs == theirs.epochs
    assert [ours.get_accumulate_grad_batches(e) for e in range(5)] == [theirs.get_accumulate_grad_batches(e) for e in range(5)]
    for (name, a), (_, b) in zip(lightning.lightning_module.state_dict().items(), rt.model.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


def test_string_epochs_from_json_configs_are_accepted() -> None:
    assert GradientAccumulationScheduler({"0": 2, "3": 1}).scheduling == {0: 2, 3: 1}


@pytest.mark.parametrize(
    ("scheduling", "error", "problem"),
    [
        ({}, TypeError, "empty"),
        ({-1: 2}, ValueError, "greater than or equal to 0"),
        ({"one": 2}, ValueError, "keys are epochs"),
        ({0: 0}, ValueError, "count >= 1"),
        ({0: 1.5}, ValueError, "accumulation factors"),
        ([(0, 2)], TypeError, "must be a dict"),
    ],
)
def test_the_schedule_is_validated_as_lightning_does(scheduling: Any, error: type[Exception], problem: str) -> None:
    with pytest.raises(error, match=f"GradientAccumulationScheduler: .*{problem}"):
        GradientAccumulationScheduler(scheduling)
    if isinstance(scheduling, dict) and all(isinstance(k, int) for k in scheduling):
        with pytest.raises(Exception):  # noqa: B017  Lightning refuses the same schedules
            pl.callbacks.GradientAccumulationScheduler(scheduling)


def test_manual_optimization_is_refused() -> None:
    class Manual(PairModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(Exception, match="manual optimization"):
        fit_busloop(Manual(), [GradientAccumulationScheduler({0: 2})], epochs=1)
