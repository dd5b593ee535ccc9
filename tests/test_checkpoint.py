"""Checkpoint files: weights_only-safe content, clear errors, RNG round trips, atomicity."""

from __future__ import annotations

import functools
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.checkpoint import (
    FORMAT_KEY,
    FORMAT_VERSION,
    CheckpointError,
    check_weights_only_safe,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    versions,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

class Opaque:
    """A plain object: pickle can store it, weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.value = 3


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 2),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 2, (16,)))
    loss.backward()
    optimizer.step()
    return model, optimizer


def _full_checkpoint() -> dict:
    model, optimizer = _model_and_optimizer()
    return {
        FORMAT_KEY: FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "loop": {"epoch": 3, "global_step": 120, "batch_idx": 7},
        "rng": rng_state(),
        "callbacks": {
            "EarlyStopping{'monitor': 'val/loss'}": {
                "wait": 2,
                "best": torch.tensor(0.25),
                "history": [1.0, 0.5, [1, 2, {"deep": None, "flag": True}]],
                "shape": torch.Size([2, 3]),
                "pair": (1, "a"),
            }
        },
        "config": OrderedDict(trainer={"epochs": 10, "precision": "32"}),
        "versions": versions(),
    }


def _assert_same_checkpoint(loaded: dict, original: dict) -> None:
    assert loaded[FORMAT_KEY] == FORMAT_VERSION
    assert loaded["model"].keys() == original["model"].keys()
    for key, tensor in original["model"].items():
        assert torch.equal(loaded["model"][key], tensor), key
    momentum = loaded["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, original["optimizer"]["state"][0]["momentum_buffer"])
    assert loaded["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert loaded["loop"] == original["loop"]
    callback = loaded["callbacks"]["EarlyStopping{'monitor': 'val/loss'}"]
    assert callback["history"] == [1.0, 0.5, [1, 2, {"deep": None, "flag": True}]]
    assert callback["shape"] == torch.Size([2, 3])
    assert callback["pair"] == (1, "a")
    assert float(callback["best"]) == 0.25
    assert loaded["config"] == original["config"]
    assert loaded["versions"]["torch"] == str(torch.__version__)


def test_full_checkpoint_loads_with_plain_weights_only_torch_load(tmp_path: Path) -> None:
    original = _full_checkpoint()
    path = save_checkpoint(original, tmp_path / "sub" / "dir" / "last.ckpt")
    assert path == tmp_path / "sub" / "dir" / "last.ckpt"

    direct = torch.load(path, weights_only=True)
    _assert_same_checkpoint(direct, original)
    _assert_same_checkpoint(load_checkpoint(path), original)

    # the states restore into fresh objects
    model, optimizer = _model_and_optimizer()
    model.load_state_dict(direct["model"])
    optimizer.load_state_dict(direct["optimizer"])
    # no temporary file left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_save_adds_the_format_key_without_touching_the_callers_dict(tmp_path: Path) -> None:
    original = {"weights": torch.ones(3)}
    save_checkpoint(original, tmp_path / "a.ckpt")
    assert FORMAT_KEY not in original
    assert load_checkpoint(tmp_path / "a.ckpt")[FORMAT_KEY] == FORMAT_VERSION


def test_save_overwrites_atomically_and_keeps_umask_mode(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    save_checkpoint({"step": 1}, path)
    save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 2
    if os.name == "posix":
        mask = os.umask(0)
        os.umask(mask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_save_removes_stale_temporaries_of_killed_writers(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    stale = tmp_path / ".last.ckpt.abc123.tmp"
    fresh = tmp_path / ".last.ckpt.def456.tmp"
    other = tmp_path / ".best.ckpt.abc123.tmp"
    for leftover in (stale, fresh, other):
        leftover.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    save_checkpoint({"step": 1}, path)
    assert not stale.exists()
    assert fresh.exists()  # may belong to a writer still at work
    assert other.exists()  # another checkpoint's business


@pytest.mark.parametrize(
    ("checkpoint", "key_path"),
    [
        ({"callbacks": {"MyCb": {"foo": Opaque()}}}, "callbacks.MyCb.foo"),
        ({"history": [1, 2, Opaque()]}, "history[2]"),
        ({"metrics": {"val": np.float32(0.5)}}, "metrics.val"),
        ({"weights": np.zeros(3)}, "weights"),
        ({"config": {"a": 1, "b": {1: 2.0, "c": Opaque()}}}, "config.b.c"),
        ({"history": [{"a": 1.0}, {"b": 2, "c": Opaque()}]}, "history[1].c"),
        ({"loop": OrderedDict(w=torch.zeros(1), v=(1, [2, Opaque()]))}, "loop.v[1][1]"),
    ],
)
def test_unsafe_content_is_refused_at_save_with_its_key_path(
    tmp_path: Path, checkpoint: dict, key_path: str
) -> None:
    path = tmp_path / "bad.ckpt"
    save_checkpoint({"good": 1}, path)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(checkpoint, path)
    message = str(info.value)
    assert f"{key_path}: <class " in message
    assert "cannot be stored; checkpoints hold tensors, numbers, strings, lists and dicts only" in (
        message
    )
    assert str(path) in message
    # the good file is untouched and no temporary file was left
    assert load_checkpoint(path)["good"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["bad.ckpt"]


def test_an_unsafe_key_is_refused_with_its_container_path(tmp_path: Path) -> None:
    checkpoint = {"callbacks": {"ok": 1, frozenset({1}): 2.0}}
    with pytest.raises(
        CheckpointError, match=r"callbacks: key frozenset\(\{1\}\) of <class 'frozenset'>"
    ):
        save_checkpoint(checkpoint, tmp_path / "x.ckpt")


def test_the_first_unsafe_item_in_order_is_named(tmp_path: Path) -> None:
    checkpoint = {"a": {"x": 1, "y": Opaque(), frozenset(): 3}, "b": [Opaque()]}
    with pytest.raises(CheckpointError, match=r"a\.y: <class"):
        save_checkpoint(checkpoint, tmp_path / "x.ckpt")


def test_opaque_class_name_appears_in_the_refusal(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"callbacks\.MyCb\.foo: <class '.*Opaque'>"):
        save_checkpoint({"callbacks": {"MyCb": {"foo": Opaque()}}}, tmp_path / "x.ckpt")


def test_failed_write_removes_the_temporary_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    save_checkpoint({"step": 1}, path)

    def broken_save(obj: object, handle, **kwargs: object) -> None:
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert load_checkpoint(path)["step"] == 1


# -- load errors ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.ckpt"
    with pytest.raises(CheckpointError, match=f"^checkpoint not found: {path}$"):
        load_checkpoint(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = save_checkpoint(_full_checkpoint(), tmp_path / "full.ckpt")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(truncated)
    assert str(info.value).startswith(
        f"{truncated} is not a readable checkpoint (corrupt or truncated?): "
    )
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [os.urandom(4096), b"", b"hello world\n", b"PK\x03\x04junk"])
def test_garbage_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(
        f"{path} is not a readable checkpoint (corrupt or truncated?): "
    )
    # one line, and never torch's advice to retry with weights_only=False
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_foreign_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path} is not a busloop checkpoint (no 'busloop_format' key)"


def test_foreign_non_dict_file(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(2), path)
    with pytest.raises(CheckpointError, match="is not a busloop checkpoint"):
        load_checkpoint(path)


def test_pickled_custom_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.ckpt"
    torch.save({FORMAT_KEY: FORMAT_VERSION, "callback": Opaque()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path} holds pickled objects that weights_only loading refuses: ")
    assert "Opaque" in message
    assert "\n" not in message and "\x1b" not in message
    # a trusted file can still be read on request
    assert isinstance(load_checkpoint(path, weights_only=False)["callback"], Opaque)


def test_lightning_checkpoint_is_returned_as_is(tmp_path: Path) -> None:
    path = tmp_path / "lightning.ckpt"
    torch.save(
        {
            "state_dict": {"layer.weight": torch.ones(2, 2)},
            "pytorch-lightning_version": "2.6.0",
            "epoch": 4,
            "global_step": 100,
        },
        path,
    )
    loaded = load_checkpoint(path)
    assert FORMAT_KEY not in loaded
    assert loaded["epoch"] == 4
    assert torch.equal(loaded["state_dict"]["layer.weight"], torch.ones(2, 2))


def test_newer_format_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint({FORMAT_KEY: FORMAT_VERSION + 1, "step": 1}, tmp_path / "new.ckpt")
    with pytest.raises(CheckpointError, match=r"format 2, newer than this busloop reads \(1\)"):
        load_checkpoint(path)


def test_map_location(tmp_path: Path) -> None:
    path = save_checkpoint({"w": torch.ones(2)}, tmp_path / "w.ckpt")
    assert load_checkpoint(path, map_location="cpu")["w"].device.type == "cpu"


# -- RNG ---------------------------------------------------------------------------------


def _draws() -> tuple:
    return (
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(3).tolist(),
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    )


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    # leave a cached gaussian in both random and numpy, so that part is exercised too
    random.gauss(0, 1)
    np.random.randn(1)

    state = rng_state()
    expected = _draws()
    assert isinstance(state["python"], list)
    assert state["torch"].dtype == torch.uint8

    save_checkpoint({"rng": state}, tmp_path / "rng.ckpt")
    loaded = torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"]

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert _draws() != expected

    set_rng_state(loaded)
    assert _draws() == expected
    set_rng_state(load_checkpoint(tmp_path / "rng.ckpt")["rng"])
    assert _draws() == expected


def test_rng_state_python_entry_keeps_its_stored_layout(tmp_path: Path) -> None:
    """The ``python`` entry is ``[version, int64 tensor of the 625 words, gauss_next]``,
    stored with exactly the bytes ``torch.tensor(words, dtype=torch.int64)`` gives."""
    random.seed(7)
    random.random()
    random.gauss(0, 1)
    version, words, gauss_next = random.getstate()
    entry = rng_state()["python"]
    assert entry[0] == version and entry[2] == gauss_next
    tensor = entry[1]
    assert tensor.dtype == torch.int64 and tensor.shape == (625,) and tensor.is_contiguous()
    assert tensor.tolist() == list(words)

    def stored(value: torch.Tensor) -> bytes:
        buffer = io.BytesIO()
        torch.save({"python": value}, buffer)
        return buffer.getvalue()

    assert stored(tensor) == stored(torch.tensor(words, dtype=torch.int64))


def test_versions() -> None:
    found = versions()
    assert found["torch"] == str(torch.__version__)
    assert found["python"].count(".") == 2
    assert found["numpy"] == np.__version__
    assert "busloop" in found
    assert all(type(v) is str for v in found.values())


# -- atomicity under SIGKILL -------------------------------------------------------------

# Imports torch once, then forks one writer per round (a fresh interpreter per round
# would spend seconds importing torch). Each writer saves ~4 MB checkpoints to the same
# path in a tight loop until it is killed.
_WRITER = textwrap.dedent(
    """
    import os, sys
    import torch
    from runtime.checkpoint import save_checkpoint

    path = sys.argv[1]
    for line in sys.stdin:
        round_no = int(line)
        pid = os.fork()
        if pid == 0:
            i = 0
            while True:
                i += 1
                value = round_no * 1_000_000 + i
                save_checkpoint(
                    {
                        "busloop_format": 1,
                        "value": value,
                        "weights": torch.full((1_000_000,), float(value)),
                        "meta": {"tag": "x" * (i % 50), "items": list(range(i % 100))},
                    },
                    path,
                )
        print(pid, flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")
def test_sigkill_during_saves_never_leaves_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    launcher = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert launcher.stdin is not None and launcher.stdout is not None
    rounds = 8
    chooser = random.Random(1234)
    try:
        for round_no in range(1, rounds + 1):
            launcher.stdin.write(f"{round_no}\n")
            launcher.stdin.flush()
            writer = int(launcher.stdout.readline())
            deadline = time.monotonic() + 60
            while not path.exists():
                assert time.monotonic() < deadline, "the writer never produced a checkpoint"
                time.sleep(0.01)
            time.sleep(chooser.uniform(0.0, 0.3))
            os.kill(writer, signal.SIGKILL)
            # the launcher reports when the writer is really gone
            assert launcher.stdout.readline().strip() == "reaped"

            loaded = torch.load(path, weights_only=True)
            value = loaded["value"]
            i = value % 1_000_000
            assert loaded["busloop_format"] == 1
            assert loaded["weights"].shape == (1_000_000,)
            assert bool((loaded["weights"] == float(value)).all())
            assert loaded["meta"] == {"tag": "x" * (i % 50), "items": list(range(i % 100))}
            assert load_checkpoint(path)["value"] == value
    finally:
        launcher.stdin.close()
        try:
            launcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
        launcher.stdout.close()


# A training run whose ModelCheckpoint keeps the latest file (top 1, monitor None) of a large
# model (~128 MB of weights): at its second save it prints "writing" and the test SIGKILLs it
# while the new file's bytes are going to disk.
_TRAINER = textwrap.dedent(
    """
    import sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from compat import ModelCheckpoint
    from runtime import Callback, Runtime
    from runtime.tracking import NullTracker

    class Announce(Callback):
        def on_save_checkpoint(self, runtime, checkpoint):
            if runtime.state.epoch == 1:
                print("writing", flush=True)

    class Big(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4, 2)
            self.register_buffer("table", torch.arange(32 * 2**20, dtype=torch.float32))

        def forward(self, x):
            return self.head(x)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    config = {"optimizer": {"name": "SGD", "params": {"lr": 0.1}},
              "trainer": {"epochs": 3, "num_sanity_val_steps": 0, "accelerator": "cpu"}}
    callbacks = [ModelCheckpoint(dirpath=sys.argv[1], filename="{epoch}"), Announce()]
    rt = Runtime(Big(), callbacks, config, loss="torch.nn.functional:cross_entropy", tracker=NullTracker())
    rt.fit(DataLoader(data, batch_size=8))
    """
)


@pytest.mark.slow
def test_sigkill_while_a_large_checkpoint_is_written_keeps_the_previous_one(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", _TRAINER, str(folder)], stdout=subprocess.PIPE, env=env, text=True)
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "writing"
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in folder.glob(".*.tmp")):  # bytes are being written
            assert time.monotonic() < deadline and child.poll() is None, "the second write never started"
            time.sleep(0.001)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["epoch=0.ckpt"]  # not replaced, not half-written
    partial = list(folder.glob(".*.tmp"))
    assert partial and partial[0].stat().st_size < (folder / "epoch=0.ckpt").stat().st_size
    previous = torch.load(folder / "epoch=0.ckpt", weights_only=True)
    assert previous["epoch"] == 0 and previous["global_step"] == 2
    assert torch.equal(previous["state_dict"]["table"], torch.arange(32 * 2**20, dtype=torch.float32))
    assert load_checkpoint(folder / "epoch=0.ckpt")["loop"]["epoch_done"]


# -- write cost --------------------------------------------------------------------------


def test_the_fast_pickler_writes_exactly_the_bytes_of_a_plain_torch_save() -> None:
    """save_checkpoint pickles with runtime.fast_pickle (plain values skip torch's storage
    test): the bytes must be those torch.save writes on its own, shared tensors included."""
    import io

    from runtime import fast_pickle

    checkpoint = _full_checkpoint()
    shared = torch.arange(6.0)
    checkpoint["views"] = [shared, shared[2:], {"again": shared}, torch.Size([2, 3]), torch.float16]
    checkpoint["more"] = {
        "parameter": torch.nn.Parameter(torch.ones(2)),
        "uint16": torch.zeros(3, dtype=torch.uint16),  # pickled with an untyped storage
        "bf16": OrderedDict(w=torch.zeros(2, dtype=torch.bfloat16)),
        "device": torch.device("cpu"),
        "complex": 1 + 2j,
        "empty": torch.empty(0),
    }
    plain, fast = io.BytesIO(), io.BytesIO()
    torch.save(checkpoint, plain)
    torch.save(checkpoint, fast, pickle_module=fast_pickle)
    assert fast.getvalue() == plain.getvalue()
    fast.seek(0)
    loaded = torch.load(fast, weights_only=True)
    assert torch.equal(loaded["views"][1], shared[2:]) and loaded["views"][3] == torch.Size([2, 3])


def _tensor_zoo() -> dict:
    """Tensors of every kind the fast pickler reduces itself, and of kinds it leaves to torch."""
    from runtime import fast_pickle

    base = torch.arange(24.0).reshape(4, 6)
    tagged = torch.ones(3)
    tagged.note = "an attribute"  # type: ignore[attr-defined]  # torch pickles the tensor's state
    hooked = torch.ones(2, requires_grad=True)
    hooked.register_hook(lambda grad: grad)
    zoo: dict = {f"dtype {dtype}": torch.ones(3).to(dtype) for dtype in sorted(fast_pickle.FAST_DTYPES, key=str)}
    zoo.update(
        {
            "transposed": base.t(),
            "strided view": base[1:, ::2],
            "offset view": base.view(-1)[5:9],
            "same storage again": base,
            "scalar": torch.tensor(2.5),
            "empty": torch.empty(0, 3),
            "requires grad": torch.ones(2, requires_grad=True),
            "conjugate": torch.tensor([1 + 2j, 3 - 1j]).conj(),
            "negative": torch.tensor([1 + 2j]).conj().imag,
            "tagged": tagged,
            "hooked": hooked,
            "parameter": torch.nn.Parameter(torch.zeros(2)),
            "uint16": torch.zeros(2, dtype=torch.uint16),
            "sparse": torch.eye(3).to_sparse(),
            "meta": torch.empty(2, device="meta"),
            "not a leaf": torch.ones(2, requires_grad=True) * 2,
            "inference": torch.inference_mode()(torch.ones)(2),
            "channels last": torch.ones(1, 2, 3, 3).to(memory_format=torch.channels_last),
            "from numpy": torch.from_numpy(np.arange(5)),
            "frombuffer": torch.frombuffer(bytearray(b"abcdefgh"), dtype=torch.int16),
            "twice": [base[0], base[0]],
        }
    )
    return zoo


def test_the_fast_pickler_reduces_every_kind_of_tensor_as_torch_does() -> None:
    """Plain tensors are reduced by fast_pickle itself (views, offsets, conjugate / negative
    bits, requires_grad, every dtype it takes), others by torch: the bytes are torch.save's."""
    from runtime import fast_pickle

    zoo = _tensor_zoo()
    plain, fast = io.BytesIO(), io.BytesIO()
    with pytest.warns(UserWarning, match="backward hook"):
        torch.save(zoo, plain)
    with pytest.warns(UserWarning, match="backward hook"):  # torch's own reduction still runs for it
        torch.save(zoo, fast, pickle_module=fast_pickle)
    assert fast.getvalue() == plain.getvalue()
    fast.seek(0)
    loaded = torch.load(fast, weights_only=False)
    assert loaded["conjugate"].is_conj() and torch.equal(loaded["conjugate"], zoo["conjugate"])
    assert loaded["transposed"].stride() == (1, 6) and loaded["tagged"].note == "an attribute"


def test_the_fast_pickler_reduces_plain_tensors_without_torchs_reduction(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is taken (torch's reduction is never asked) and the file loads the same."""
    from runtime import fast_pickle

    if fast_pickle._SET_ID is None:
        pytest.skip("this Python's pickler has no per-instance persistent_id: torch reduces every tensor")
    checkpoint = {"weights": torch.randn(3, 4), "rng": rng_state(), "shared": [torch.ones(2)] * 2}
    expected = io.BytesIO()
    torch.save(checkpoint, expected)

    def refuse(self: torch.Tensor, protocol: int) -> None:
        raise AssertionError("torch's reduction was asked")

    monkeypatch.setattr(torch.Tensor, "__reduce_ex__", refuse)
    fast = io.BytesIO()
    torch.save(checkpoint, fast, pickle_module=fast_pickle)
    assert fast.getvalue() == expected.getvalue()
    tagged = torch.ones(1)
    tagged.note = "state"  # type: ignore[attr-defined]  # not a plain tensor: torch reduces it
    with pytest.raises(AssertionError, match="reduction was asked"):
        torch.save({"t": tagged}, io.BytesIO(), pickle_module=fast_pickle)


def test_the_fast_pickler_refuses_a_storage_outside_a_tensor() -> None:
    """It looks for storages only inside tensors (a checkpoint holds no other: the content
    check refuses them), so a bare one is an error, never wrongly written bytes."""
    import io
    import pickle

    from runtime import fast_pickle

    with pytest.raises(pickle.PicklingError, match="storage outside a tensor"):
        torch.save({"s": torch.zeros(2).untyped_storage()}, io.BytesIO(), pickle_module=fast_pickle)


@pytest.mark.parametrize(
    ("checkpoint", "key_path"),
    [
        ({"a": [1, {"b": (2, object())}]}, "a[1].b[1]"),
        ({3: {"x": [[set()]]}}, "3.x[0][0]"),
        (OrderedDict(top=[{"k": b"ok", "bad": 1j, "worse": object()}]), "top[0].worse"),
    ],
)
def test_the_refusal_names_nested_key_paths(tmp_path: Path, checkpoint: dict, key_path: str) -> None:
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(checkpoint, tmp_path / "x.ckpt")
    assert f": {key_path}: <class " in str(info.value)


class _OrderedSub(OrderedDict):
    """Not exactly an OrderedDict: pickled by its own reduction."""


def _ordered_dict_zoo() -> dict:
    """OrderedDicts of every kind a checkpoint can hold, and kinds the fast pickler leaves alone."""
    model, _ = _model_and_optimizer()
    with_attributes = OrderedDict(a=1)
    with_attributes.note = {"kept": [1, 2]}  # type: ignore[attr-defined]  # pickled as its state
    shadowing = OrderedDict(a=1, b=2)
    shadowing.items = functools.partial(iter, [("only", 0)])  # type: ignore[method-assign]  # pickle calls it
    own_state = OrderedDict(a=1)
    own_state.__getstate__ = functools.partial(dict, instead=True)  # type: ignore[method-assign]  # the state
    shared = OrderedDict(x=torch.ones(2))
    return {
        "empty": OrderedDict(),
        "items": OrderedDict([("b", 2), ("a", [1, OrderedDict()])]),
        "state_dict": model.state_dict(),  # holds _metadata as an attribute
        "with attributes": with_attributes,
        "shadowing items": shadowing,
        "own __getstate__": own_state,
        "subclass": _OrderedSub(z=1),
        "shared twice": [shared, shared],
        "tensors": [torch.ones(3), torch.zeros(2, dtype=torch.int64)],  # an empty one each (hooks)
    }


def _saved_as_torch_saves_it(obj: object) -> bytes:
    """``torch.save`` of ``obj`` through fast_pickle, asserted equal to a plain torch.save's bytes."""
    from runtime import fast_pickle

    plain, fast = io.BytesIO(), io.BytesIO()
    torch.save(obj, plain)
    torch.save(obj, fast, pickle_module=fast_pickle)
    assert fast.getvalue() == plain.getvalue()
    return fast.getvalue()


def test_the_fast_pickler_reduces_ordered_dicts_as_pickle_does() -> None:
    """fast_pickle reduces an OrderedDict itself (its own reduction asks copyreg._slotnames, in
    Python, every time): the bytes are those of a plain torch.save for every kind, shared and
    attributed ones included, and it loads to equal values."""
    zoo = _ordered_dict_zoo()
    loaded = torch.load(io.BytesIO(_saved_as_torch_saves_it(zoo)), weights_only=False)
    assert loaded["with attributes"].note == {"kept": [1, 2]}
    assert loaded["state_dict"]._metadata == zoo["state_dict"]._metadata
    assert list(loaded["shadowing items"].items()) == [("only", 0)]
    assert loaded["own __getstate__"].instead is True
    assert loaded["shared twice"][0] is loaded["shared twice"][1]


def test_the_fast_pickler_takes_its_ordered_dict_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OrderedDicts of a checkpoint never reach copyreg._slotnames (so the shortcut runs),
    and a dispatch-table reducer registered for OrderedDict still decides, as in pickle."""
    import copyreg

    from runtime import fast_pickle

    checkpoint = _full_checkpoint()
    expected = io.BytesIO()
    torch.save(checkpoint, expected)
    slotnames = copyreg._slotnames  # type: ignore[attr-defined]

    def refuse(cls: type) -> list[str]:
        if cls is OrderedDict:
            raise AssertionError("OrderedDict's own reduction ran")
        return slotnames(cls)

    monkeypatch.setattr(copyreg, "_slotnames", refuse)
    fast = io.BytesIO()
    torch.save(checkpoint, fast, pickle_module=fast_pickle)
    assert fast.getvalue() == expected.getvalue()

    monkeypatch.setattr(copyreg, "_slotnames", slotnames)
    monkeypatch.setitem(copyreg.dispatch_table, OrderedDict, lambda od: (dict, (list(od.items()),)))
    written = _saved_as_torch_saves_it(checkpoint)
    assert type(torch.load(io.BytesIO(written), weights_only=False)["model"]) is dict  # the reducer ran


@pytest.mark.parametrize("size", [8, 300_000], ids=["under the write buffer", "over it"])
def test_a_saved_file_holds_exactly_the_bytes_of_torch_save(tmp_path: Path, size: int) -> None:
    """save_checkpoint writes through its own (larger) buffer: the file's bytes are those a
    plain torch.save of the same dict gives, for a checkpoint smaller than the buffer and for
    one whose tensor is larger (written past the buffer)."""
    from runtime.checkpoint import WRITE_BUFFER_BYTES

    checkpoint = _full_checkpoint()
    checkpoint["big"] = torch.arange(size, dtype=torch.float32)
    assert (size * 4 > WRITE_BUFFER_BYTES) == (size > 8)
    path = save_checkpoint(checkpoint, tmp_path / "x.ckpt")
    expected = io.BytesIO()
    torch.save(checkpoint, expected)
    assert path.read_bytes() == expected.getvalue()
    assert torch.equal(torch.load(path, weights_only=True)["big"], checkpoint["big"])


def _check_item_by_item(value: Any, path: str = "") -> str | None:
    """The content check written plainly, recursively and item by item in order (the oracle
    for ``check_weights_only_safe``, which builds the key path only on the way out of an
    error): the key path and problem of the first unsafe key or value, or None."""
    scalars = (str, int, float, bool, complex, bytes, type(None))
    leaves = (*scalars, torch.Tensor, torch.nn.Parameter, torch.Size, torch.dtype, torch.device)
    if type(value) in leaves:
        return None
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in scalars and type(key) is not tuple:
                return f"{path or '<checkpoint>'}: key {key!r} of {type(key)}"
            step = key if isinstance(key, str) else repr(key)
            found = _check_item_by_item(item, f"{path}.{step}" if path else step)
            if found:
                return found
        return None
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            found = _check_item_by_item(item, f"{path}[{index}]")
            if found:
                return found
        return None
    return f"{path or '<checkpoint>'}: {type(value)}"


_leaf = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.text(max_size=3), st.none(), st.booleans(),
    st.just(torch.zeros(1)), st.just(torch.Size([2])), st.just(torch.float32),
    st.just(np.float32(1.0)), st.just(Opaque()), st.just(frozenset({1})), st.just({1, 2}),
)  # fmt: skip
_key = st.one_of(
    st.text(max_size=3), st.integers(), st.tuples(st.integers()), st.just(frozenset({2})), st.just(Opaque())
)  # fmt: skip
_content = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(_key, inner, max_size=4),
        st.dictionaries(st.text(max_size=2), inner, max_size=3).map(OrderedDict),
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(_content)
def test_the_content_check_names_the_first_problem_the_plain_walk_finds(content: Any) -> None:
    expected = _check_item_by_item(content)
    if expected is None:
        check_weights_only_safe(content)
        return
    with pytest.raises(CheckpointError) as info:
        check_weights_only_safe(content)
    assert str(info.value).startswith(expected), (str(info.value), expected)
