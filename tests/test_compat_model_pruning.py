"""ModelPruning against Lightning's stock callback: sparsity per epoch, weights, checkpoints."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from compat import ModelPruning
from conftest import make_loader
from runtime import Callback

pl = pytest.importorskip("lightning.pytorch")

from lightning_compare import BNModule, busloop_fit, lightning_fit  # noqa: E402


def _sparsity(model: nn.Module) -> dict[str, float]:
    """The fraction of zeros of every Linear weight and bias, as the forward sees them."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            for param in ("weight", "bias"):
                value = getattr(module, param)
                out[f"{name}.{param}"] = float((value == 0).float().mean())
    return out


class LightningSparsity(pl.Callback):
    def __init__(self) -> None:
        self.per_epoch: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.per_epoch.append(_sparsity(pl_module))


class BusloopSparsity(Callback):
    def __init__(self) -> None:
        self.per_epoch: list[dict[str, float]] = []

    def on_train_epoch_end(self, runtime: Any) -> None:
        self.per_epoch.append(_sparsity(runtime.model))


CASES = [
    {"pruning_fn": "l1_unstructured", "amount": 0.3},
    {"pruning_fn": "l1_unstructured", "amount": lambda epoch: [0.5, 0.0, 0.2][epoch],
     "use_global_unstructured": False, "use_lottery_ticket_hypothesis": False},
    {"pruning_fn": "ln_structured", "pruning_dim": 0, "pruning_norm": 2, "amount": 0.25,
     "use_global_unstructured": False, "parameter_names": ["weight"]},
]


@pytest.mark.parametrize("kwargs", CASES, ids=["global-l1-lottery", "local-schedule", "ln-structured"])
def test_sparsity_per_epoch_and_weights_equal_lightning(kwargs: dict) -> None:
    torch.manual_seed(0)
    module = BNModule(batch_norm=False)
    train = make_loader(64)
    theirs_rec, ours_rec = LightningSparsity(), BusloopSparsity()
    _, lightning_model = lightning_fit(module, [pl.callbacks.ModelPruning(**kwargs), theirs_rec], train)
    _, busloop_model = busloop_fit(module, [ModelPruning(**kwargs), ours_rec], train)

    assert ours_rec.per_epoch == theirs_rec.per_epoch
    assert any(v > 0 for v in ours_rec.per_epoch[-1].values())
    theirs_state, ours_state = lightning_model.state_dict(), busloop_model.state_dict()
    assert set(ours_state) == set(theirs_state)  # permanent: no weight_orig / weight_mask left
    for key, value in theirs_state.items():
        assert torch.allclose(ours_state[key], value, atol=1e-6), key
    assert ModelPruning(**kwargs).state_dict() == {}  # no state, as Lightning's


def test_checkpoints_hold_the_pruned_weights(tmp_path) -> None:
    torch.manual_seed(0)
    module = BNModule(batch_norm=False)

    class Save(Callback):
        def on_train_epoch_end(self, runtime: Any) -> None:
            runtime.save_checkpoint(tmp_path / f"e{runtime.state.epoch}.ckpt")

    rt, model = busloop_fit(module, [ModelPruning("l1_unstructured", amount=0.5), Save()], make_loader(64), epochs=2)
    state = torch.load(tmp_path / "e0.ckpt", weights_only=True)["state_dict"]
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    assert float((state["net.0.weight"] == 0).float().mean()) > 0.3
    live = rt.model.state_dict()
    assert all(not k.endswith("_mask") for k in live)  # made permanent at train_end


def test_parameters_by_dotted_path_and_epoch_mapping() -> None:
    torch.manual_seed(0)
    module = BNModule(batch_norm=False)
    rec = BusloopSparsity()
    busloop_fit(
        module,
        [ModelPruning("random_unstructured", parameters_to_prune=["net.0.weight"], amount={1: 0.5}), rec],
        make_loader(64),
    )
    assert [e["net.0.weight"] for e in rec.per_epoch] == [0.0, 0.5, 0.5]
    assert all(e["net.3.weight"] == 0.0 for e in rec.per_epoch)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"pruning_fn": "l2_magic"}, "pruning_fn"),
        ({"pruning_fn": "ln_structured", "use_global_unstructured": False}, "pruning_dim"),
        ({"pruning_fn": "l1_unstructured", "parameter_names": ["gamma"]}, "parameter_names"),
        ({"pruning_fn": "l1_unstructured", "amount": "lots"}, "amount"),
        ({"pruning_fn": "random_structured", "pruning_dim": 0}, "use_global_unstructured"),
    ],
)
def test_pruning_rejects_bad_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=f"ModelPruning: {fragment}"):
        ModelPruning(**kwargs)
