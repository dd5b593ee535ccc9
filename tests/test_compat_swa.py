"""StochasticWeightAveraging against Lightning's stock callback on the same LightningModule."""

from __future__ import annotations

import copy

import pytest
import torch

from compat import StochasticWeightAveraging
from conftest import SaveAndStop, make_loader

pl = pytest.importorskip("lightning.pytorch")

from lightning_compare import BNModule, assert_state_close, busloop_fit, lightning_fit  # noqa: E402


@pytest.mark.parametrize(
    ("batch_norm", "kwargs"),
    [
        (True, {"swa_lrs": 0.05, "swa_epoch_start": 2, "annealing_epochs": 2}),
        (False, {"swa_lrs": [0.02], "swa_epoch_start": 0.5, "annealing_strategy": "linear"}),
    ],
)
def test_swa_weights_and_state_equal_lightning(batch_norm: bool, kwargs: dict) -> None:
    torch.manual_seed(0)
    module = BNModule(batch_norm=batch_norm)
    train, val = make_loader(64), make_loader(32)
    theirs = pl.callbacks.StochasticWeightAveraging(**kwargs)
    _, lightning_model = lightning_fit(module, [theirs], train, val, max_epochs=4)
    ours = StochasticWeightAveraging(**kwargs)
    _, busloop_model = busloop_fit(module, [ours], train, val, epochs=4)

    lightning_state, busloop_state = lightning_model.state_dict(), busloop_model.state_dict()
    assert set(busloop_state) == set(lightning_state)
    for key, value in lightning_state.items():  # weights and batch-norm statistics
        assert torch.allclose(busloop_state[key].float(), value.float(), atol=1e-6), key
    assert not torch.allclose(busloop_state["net.0.weight"], module.state_dict()["net.0.weight"])
    assert_state_close(ours.state_dict(), theirs.state_dict())
    assert ours.state_dict()["n_averaged"] == theirs.state_dict()["n_averaged"] > 1


def test_swa_resumes_with_its_average(tmp_path) -> None:
    torch.manual_seed(0)
    module = BNModule(batch_norm=True, scheduler=False)
    train = make_loader(64)
    kwargs = {"swa_lrs": 0.05, "swa_epoch_start": 2}
    _, straight = busloop_fit(module, [StochasticWeightAveraging(**kwargs)], train, epochs=4)
    ckpt = tmp_path / "mid.ckpt"
    first = StochasticWeightAveraging(**kwargs)
    busloop_fit(module, [first, SaveAndStop(ckpt, epoch=2, at=1)], train, epochs=4)
    assert torch.load(ckpt, weights_only=True)["callbacks"][first.state_key]["n_averaged"] == 2

    resumed_cb = StochasticWeightAveraging(**kwargs)
    from runtime import Runtime
    from runtime.tracking import NullTracker

    model = copy.deepcopy(module)
    rt = Runtime(model, [resumed_cb], {"trainer": {"epochs": 4, "num_sanity_val_steps": 0}}, tracker=NullTracker())
    rt.fit(train, ckpt_path=ckpt)
    for key, value in straight.state_dict().items():
        assert torch.allclose(model.state_dict()[key].float(), value.float(), atol=1e-6), key
    assert resumed_cb.state_dict()["n_averaged"] == 3


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"swa_lrs": -1.0}, "swa_lrs"),
        ({"swa_lrs": 0.1, "swa_epoch_start": 1.5}, "swa_epoch_start"),
        ({"swa_lrs": 0.1, "annealing_strategy": "step"}, "annealing_strategy"),
        ({"swa_lrs": 0.1, "avg_fn": 3}, "avg_fn"),
    ],
)
def test_swa_rejects_bad_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=f"StochasticWeightAveraging: {fragment}"):
        StochasticWeightAveraging(**kwargs)
