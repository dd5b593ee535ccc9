"""Stock Lightning callbacks that change the model or what is shown, run by busloop through the
adapter: StochasticWeightAveraging, ModelPruning, BackboneFinetuning, RichModelSummary,
TQDMProgressBar and RichProgressBar.

As in ``test_lightning_adapter.py``, each test trains the same LightningModule under
Lightning's Trainer and under busloop with the same stock callback class (``pair``: same seed,
data, sanity steps), asserts the same hook sequence for a recording callback and the same
final weights (<= 1e-6), then compares the callback's own decisions and state.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from compat_pairs import PairModule, pair, pl
from lightning_compare import BNModule, assert_state_close
from torch import nn
from torch.optim.swa_utils import SWALR

SWA_CASES: list[tuple[bool, dict[str, Any]]] = [
    (True, {"swa_lrs": 0.05, "swa_epoch_start": 2, "annealing_epochs": 2}),
    (False, {"swa_lrs": [0.02], "swa_epoch_start": 0.5, "annealing_strategy": "linear"}),
]


@pytest.mark.parametrize(("batch_norm", "options"), SWA_CASES, ids=["batch_norm", "no_batch_norm"])
def test_stochastic_weight_averaging(tmp_path: Path, batch_norm: bool, options: dict[str, Any]) -> None:
    module = BNModule(batch_norm=batch_norm)  # a StepLR that SWA swaps for its SWALR
    make = lambda _: [pl.callbacks.StochasticWeightAveraging(**options)]  # noqa: E731
    fit, (theirs,), rt, (ours,) = pair(make, tmp_path, module=module)
    # With batch norm Lightning adds an epoch (forward only) to recompute the statistics; the
    # model's running stats are part of the weights compared by ``pair``.
    assert (rt.state.epoch, rt.state.global_step) == (fit.current_epoch, fit.global_step)
    assert rt.state.epoch == 4 + batch_norm
    assert isinstance(rt.lr_scheduler_configs[0].scheduler, SWALR)  # the swap
    assert isinstance(fit.lr_scheduler_configs[0].scheduler, SWALR)
    assert [g["lr"] for g in rt.optimizers[0].param_groups] == [g["lr"] for g in fit.optimizers[0].param_groups]
    assert_state_close(ours.state_dict(), theirs.state_dict())  # n_averaged, SWALR state, the average
    assert ours.state_dict()["n_averaged"] == theirs.state_dict()["n_averaged"] >= 2
    assert not rt.skip_backward and rt.accumulate_grad_batches == 1  # what SWA set is undone
    averaged = ours.state_dict()["average_model_state"]
    for name, value in rt.model.named_parameters():  # the model ends with the averaged weights
        torch.testing.assert_close(value.detach(), averaged[name], rtol=0, atol=1e-6)
    if batch_norm:
        norm: Any = rt.model.get_submodule("net.1")
        assert norm.momentum == 0.1 and int(norm.num_batches_tracked) == 6  # one pass, momentum back


class _Sparsity(pl.Callback):  # type: ignore[misc,name-defined]
    """Records the fraction of zero weights in each Linear layer at every epoch end."""

    def __init__(self) -> None:
        self.seen: list[list[float]] = []

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        layers = [m for m in pl_module.modules() if isinstance(m, nn.Linear)]
        self.seen.append([float((m.weight == 0).float().mean()) for m in layers])


PRUNING_CASES: list[dict[str, Any]] = [
    {"pruning_fn": "l1_unstructured", "amount": 0.3},
    {"pruning_fn": "random_unstructured", "amount": 0.25, "use_global_unstructured": False,
     "make_pruning_permanent": False, "parameter_names": ["weight", "bias"]},
    {"pruning_fn": "ln_structured", "amount": 0.2, "pruning_dim": 0, "pruning_norm": 2, "use_global_unstructured": False,
     "parameter_names": ["weight"], "use_lottery_ticket_hypothesis": False},
]  # fmt: skip


@pytest.mark.parametrize("options", PRUNING_CASES, ids=["l1_global", "random_local", "ln_structured"])
def test_model_pruning(tmp_path: Path, options: dict[str, Any]) -> None:
    def make(_: Path) -> list[Any]:
        return [pl.callbacks.ModelPruning(**options), _Sparsity()]

    fit, (_, theirs), rt, (_, ours) = pair(make, tmp_path)
    assert ours.seen == theirs.seen and len(ours.seen) == 4  # sparsity per epoch
    assert ours.seen[-1] != [0.0, 0.0] and ours.seen[-1][0] > ours.seen[0][0]
    assert set(rt.model.state_dict()) == set(fit.lightning_module.state_dict())  # masks kept or not
    if not options.get("make_pruning_permanent", True):
        assert any(k.endswith("weight_mask") for k in rt.model.state_dict())


def test_model_pruning_checkpoint_holds_pruned_weights(tmp_path: Path) -> None:
    """While training, the model carries ``weight_orig`` / ``weight_mask``; ModelPruning rewrites
    each checkpoint's ``state_dict`` to the pruned weights, in busloop's files as in Lightning's."""

    def make(root: Path) -> list[Any]:
        return [pl.callbacks.ModelPruning("l1_unstructured", amount=0.5),
                pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", monitor=None, save_top_k=-1)]  # fmt: skip

    pair(make, tmp_path, epochs=2)
    name = "epoch=0-step=6.ckpt"
    ours = torch.load(tmp_path / "bl" / "ckpt" / name, weights_only=True)["state_dict"]
    theirs = torch.load(tmp_path / "pl" / "ckpt" / name, weights_only=False)["state_dict"]
    assert set(ours) == set(theirs) and not any(k.endswith(("_orig", "_mask")) for k in ours)
    assert float((ours["net.0.weight"] == 0).float().mean()) > 0.4
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6, msg=key)


class _Backbone(PairModule):
    """A ``backbone`` and a head; the optimizer takes only trainable parameters."""

    def __init__(self) -> None:
        super().__init__(scores=None)
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh())
        self.net = nn.Sequential(self.backbone, nn.Linear(16, 2))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD((p for p in self.parameters() if p.requires_grad), lr=0.1, momentum=0.9)


class _Groups(pl.Callback):  # type: ignore[misc,name-defined]
    """Records the optimizer's learning rates and whether the backbone trains, each epoch."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[float], bool]] = []

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
        self.seen.append((lrs, pl_module.backbone[0].weight.requires_grad))


def test_backbone_finetuning(tmp_path: Path) -> None:
    def make(_: Path) -> list[Any]:
        return [pl.callbacks.BackboneFinetuning(unfreeze_backbone_at_epoch=2, train_bn=False), _Groups()]

    _, (theirs, their_groups), rt, (ours, our_groups) = pair(make, tmp_path, module=_Backbone())
    assert our_groups.seen == their_groups.seen
    assert [len(lrs) for lrs, _ in our_groups.seen] == [1, 1, 2, 2]  # the backbone's group added at 2
    assert [trains for _, trains in our_groups.seen] == [False, False, True, True]
    assert_state_close(ours.state_dict(), theirs.state_dict())


_TABLE = re.compile(r"[┏┃┡│└]|params|Modules in|FLOPs")


def test_rich_model_summary_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    pair(lambda _: [pl.callbacks.RichModelSummary(max_depth=2)], tmp_path, module=BNModule(), epochs=1)
    lines = [line.rstrip() for line in capsys.readouterr().out.splitlines() if _TABLE.search(line)]
    half = len(lines) // 2  # Lightning's table, then busloop's
    theirs, ours = lines[:half], lines[half:]
    assert any("Total params" in line for line in theirs) and any("net.1" in line for line in theirs)
    assert ours == theirs


def _rich_totals(bar: Any) -> list[tuple[str, float | None, float]]:
    return [(re.sub(r"\d+/\d+", "", t.description), t.total, t.completed) for t in bar.progress.tasks]


@pytest.mark.parametrize("kind", ["tqdm", "rich"])
def test_progress_bars_off_terminal(tmp_path: Path, kind: str) -> None:
    """Both bars run under pytest's captured (non-terminal) output; their totals and counts
    are Lightning's: the sanity check, training (batches per epoch) and validation."""

    def make(_: Path) -> list[Any]:
        if kind == "tqdm":
            return [pl.callbacks.TQDMProgressBar(leave=True)]
        return [pl.callbacks.RichProgressBar(leave=True)]

    fit, (theirs,), rt, (ours,) = pair(make, tmp_path, epochs=2, num_sanity_val_steps=2)
    assert fit.progress_bar_callback is theirs and rt.state.epoch == 2
    if kind == "tqdm":
        for name in ("train_progress_bar", "val_progress_bar"):
            mine, stock = getattr(ours, name), getattr(theirs, name)
            assert (mine.total, mine.n) == (stock.total, stock.n), name
        assert ours.train_progress_bar.total == 6
    else:
        assert _rich_totals(ours) == _rich_totals(theirs)
        assert any(total == 6 for _, total, _ in _rich_totals(ours))
