"""compat.LearningRateMonitor against Lightning's stock LearningRateMonitor on the same module:
the same names, values and steps reach the tracker as reach Lightning's logger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from compat_pairs import CaptureTracker, CapturingLogger, PairModule, fit_busloop, fit_lightning, pl

from compat import LearningRateMonitor

CASES: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ({}, {}, {"log_every_n_steps": 1}),  # no scheduler: every step
    ({}, {"scheduler": {"kind": "step", "interval": "epoch"}}, {"log_every_n_steps": 1}),
    ({"logging_interval": "step"}, {"scheduler": {"kind": "lambda", "interval": "step"}}, {"log_every_n_steps": 2}),
    ({"logging_interval": "epoch"}, {"scheduler": {"kind": "lambda", "interval": "step"}}, {}),
    ({"log_momentum": True, "log_weight_decay": True}, {"optimizer": "Adam", "groups": 2}, {"log_every_n_steps": 3}),
    ({"log_momentum": True}, {"groups": 3, "scheduler": {"kind": "step", "interval": "epoch"}}, {}),
    ({}, {"scheduler": {"kind": "step", "interval": "epoch", "name": "my-lr"}}, {}),
]


def _lr_rows(rows: list[tuple[Any, dict[str, float]]]) -> list[tuple[Any, dict[str, float]]]:
    picked = [(step, {k: v for k, v in values.items() if k.startswith(("lr-", "my-lr"))}) for step, values in rows]
    return [(step, values) for step, values in picked if values]


@pytest.mark.parametrize(("options", "module_options", "trainer"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_same_names_values_and_steps_as_lightning(
    tmp_path: Path, options: dict[str, Any], module_options: dict[str, Any], trainer: dict[str, Any]
) -> None:
    module = PairModule(**module_options)
    logger = CapturingLogger()
    theirs = pl.callbacks.LearningRateMonitor(**options)
    fit_lightning(module, [theirs], tmp_path, epochs=3, logger=logger, **trainer)
    tracker = CaptureTracker(tmp_path / "runs")
    ours = LearningRateMonitor(**options)
    rt = fit_busloop(module, [ours], epochs=3, tracker=tracker, **trainer)

    expected = _lr_rows([(step, values) for step, values, _ in logger.calls])
    assert expected, "Lightning logged no learning rate"
    got = _lr_rows(tracker.rows)
    assert [step for step, _ in got] == [step for step, _ in expected]
    for (_, mine), (_, stock) in zip(got, expected, strict=True):
        assert mine == pytest.approx(stock, rel=1e-6)
    assert ours.lrs.keys() == theirs.lrs.keys()
    for name, values in theirs.lrs.items():
        assert ours.lrs[name] == pytest.approx(values, rel=1e-6), name
    assert ours.last_momentum_values == pytest.approx(theirs.last_momentum_values)
    assert ours.last_weight_decay_values == pytest.approx(theirs.last_weight_decay_values)
    last = expected[-1][1]
    assert {k: rt.state.metrics[k] for k in last} == pytest.approx(last)  # also in callback_metrics


def test_names_of_groups_and_of_a_second_optimizer_of_the_same_type() -> None:
    monitor = LearningRateMonitor()
    model = torch.nn.Linear(2, 2)
    groups: list[dict[str, Any]] = [{"params": [model.weight], "name": "weights"}, {"params": [model.bias]}]
    first = torch.optim.SGD(groups, lr=0.1)
    second = torch.optim.SGD(model.parameters(), lr=0.2)

    class Holder:
        lr_scheduler_configs: list[Any] = []
        optimizers = [first, second]

    (scheduled, plain), _ = monitor._names(Holder())  # type: ignore[arg-type]
    assert scheduled == [] and plain == [["lr-SGD/weights", "lr-SGD/pg2"], ["lr-SGD-1"]]


def test_without_a_tracker_it_fails_as_lightning_does_without_a_logger(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="LearningRateMonitor needs a tracker"):
        fit_busloop(PairModule(), [LearningRateMonitor()], epochs=1)


def test_the_per_batch_hook_is_not_connected_for_epoch_logging(tmp_path: Path) -> None:
    rt = fit_busloop(PairModule(), [LearningRateMonitor("epoch")], epochs=1, tracker=CaptureTracker(tmp_path))
    assert rt.bus.describe().get("train_batch_start", []) == []


def test_bad_interval_names_the_callback_and_parameter() -> None:
    with pytest.raises(ValueError, match="LearningRateMonitor: logging_interval"):
        LearningRateMonitor(logging_interval="batch")
