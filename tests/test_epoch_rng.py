"""The epoch-start random state: read raw at every epoch start, converted for a checkpoint only
when the checkpoint holds it (runtime.epoch_rng), with the values rng_state would have given."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from conftest import base_config, make_loader, make_model
from runtime import Callback, Runtime
from runtime.checkpoint import rng_state, set_rng_state
from runtime.epoch_rng import EpochRng
from runtime.tracking import NullTracker


def _assert_same_form(got: Any, expected: Any, where: str = "rng") -> None:
    """The same nested structure and types, tensors equal in dtype, shape and values."""
    assert type(got) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert got.dtype == expected.dtype and torch.equal(got, expected), where
    elif isinstance(expected, dict):
        assert list(got) == list(expected), where
        for key in expected:
            _assert_same_form(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected, strict=True)):
            _assert_same_form(a, b, f"{where}[{index}]")
    else:
        assert got == expected, where


def _draw() -> list[float]:
    """A draw from every generator, Gaussian caches included (random's gauss_next, NumPy's
    legacy has_gauss / cached_gaussian)."""
    return [random.random(), random.gauss(0, 1), float(np.random.normal()), float(np.random.rand()),
            float(torch.rand(()))]


def test_the_epoch_start_state_converts_to_what_rng_state_read_then() -> None:
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    _draw()  # caches filled: gauss_next and NumPy's cached Gaussian are part of the state
    captured, expected = EpochRng(), rng_state()
    after = _draw()  # later draws do not change what was captured
    form = captured.checkpoint_form()
    _assert_same_form(form, expected)
    assert form["numpy"]["has_gauss"] == 1 and form["python"][2] is not None
    assert captured.checkpoint_form() is form  # converted once: every checkpoint holds that dict
    set_rng_state(form)
    assert _draw() == after


class _Probe(Callback):
    """Records rng_state() at each epoch start (the loader is a list: nothing draws between the
    loop's capture and this event) and the loop's entries of checkpoints built after batches 2
    and 4 and at the epoch's end; draws from every generator after each batch."""

    def __init__(self) -> None:
        self.at_start: list[dict[str, Any]] = []
        self.mid: list[Any] = []
        self.end: list[Any] = []

    def on_train_epoch_start(self, runtime: Runtime) -> None:
        self.at_start.append(rng_state())

    def on_train_batch_end(self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int) -> None:
        _draw()
        if batch_idx in (2, 4):
            self.mid.append(runtime.checkpoint_dict()["loop"]["epoch_rng"])

    def on_train_epoch_end(self, runtime: Runtime) -> None:
        self.end.append(runtime.checkpoint_dict()["loop"]["epoch_rng"])


def test_a_checkpoint_holds_the_epoch_start_state_mid_epoch_only() -> None:
    probe = _Probe()
    rt = Runtime(make_model(seed=4, dropout=0.5), [probe], base_config(epochs=2, seed=5),
                 loss=F.cross_entropy, tracker=NullTracker())
    rt.fit(list(make_loader()))
    assert len(probe.at_start) == 2 and len(probe.mid) == 4
    for held, expected in zip(probe.mid, [s for s in probe.at_start for _ in (2, 4)], strict=True):
        _assert_same_form(held, expected)
    assert probe.mid[0] is probe.mid[1] and probe.mid[2] is probe.mid[3]  # converted once an epoch
    assert probe.end == [None, None]  # the epoch's batches are done: nothing to replay
