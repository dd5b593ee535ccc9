"""RichModelSummary against Lightning's: the same rows and totals, printed with rich."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from rich import get_console

from compat import RichModelSummary
from conftest import make_loader
from runtime import Runtime
from runtime.tracking import NullTracker

pl = pytest.importorskip("lightning.pytorch")

from lightning_compare import BNModule  # noqa: E402


def _parse(text: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Rows of the rich table (by column name) and the ``label: value`` totals."""
    rows, header = [], None
    totals = {}
    for line in text.splitlines():
        if "│" in line or "┃" in line:
            cells = [c.strip() for c in line.replace("┃", "│").strip()[1:-1].split("│")]
            if header is None:
                header = cells
            else:
                rows.append(dict(zip(header, cells, strict=True)))
        elif ": " in line:
            label, value = line.split(": ", 1)
            totals[label.strip()] = value.strip()
    return rows, totals


@pytest.fixture
def wide_console() -> Any:
    console = get_console()
    width = console.width
    console.width = 200
    yield console
    console.width = width


@pytest.mark.parametrize(("depth", "example"), [(1, False), (2, True), (-1, True)])
def test_rows_and_totals_equal_lightning(wide_console: Any, depth: int, example: bool) -> None:
    torch.manual_seed(0)
    module = BNModule()
    if example:
        module.example_input_array = torch.zeros(4, 8)
    module.net[1].eval()  # one module in eval mode: the mode column and counts must say so
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, callbacks=[pl.callbacks.RichModelSummary(max_depth=depth)],
        logger=False, max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0,
        enable_checkpointing=False, enable_progress_bar=False,
    )
    with wide_console.capture() as theirs:
        trainer.fit(copy.deepcopy(module), make_loader(32))
    ours_cb = RichModelSummary(max_depth=depth)
    rt = Runtime(copy.deepcopy(module), [ours_cb], {"trainer": {"epochs": 1, "limit_train_batches": 1}},
                 tracker=NullTracker())
    with wide_console.capture() as ours:
        rt.fit(make_loader(32))

    their_rows, their_totals = _parse(theirs.get())
    our_rows, our_totals = _parse(ours.get())
    for row in their_rows:
        row.pop("FLOPs")  # busloop does not count FLOPs
    their_totals.pop("Total FLOPs")
    assert our_rows == their_rows
    assert len(our_rows) == {1: 1, 2: 5, -1: 5}[depth]
    assert {k: v for k, v in our_totals.items() if k in their_totals} == their_totals
    assert set(their_totals) <= set(our_totals)
    assert their_totals["Modules in eval mode"] == "1"


def test_max_depth_zero_prints_nothing(wide_console: Any) -> None:
    rt = Runtime(BNModule(), [RichModelSummary(max_depth=0)], {"trainer": {"epochs": 1, "limit_train_batches": 1}},
                 tracker=NullTracker())
    with wide_console.capture() as out:
        rt.fit(make_loader(32))
    assert "Total params" not in out.get()


def test_bad_max_depth_is_rejected() -> None:
    with pytest.raises(ValueError, match="RichModelSummary: max_depth"):
        RichModelSummary(max_depth=-3)
