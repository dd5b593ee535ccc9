"""Progress bars and the model summary: real runs through Runtime, output captured."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

from callbacks.progress import (
    PRINTED_ATTR,
    EchoFilter,
    LuxonisRichProgressBar,
    LuxonisTQDMProgressBar,
    install_echo_filter,
    publish_matrix,
)
from callbacks.summary import LuxonisModelSummary, summarize_model
from conftest import base_config, make_loader, make_model
from runtime import Callback, Runtime
from runtime.registry import CALLBACKS

ANSI = "\x1b["
CONFUSION = [[5, 1], [2, 8]]


class Metrics(Callback):
    """Logs grouped and ungrouped metrics and publishes a confusion matrix each eval epoch."""

    def _publish(self, runtime: Runtime, prefix: str) -> None:
        runtime.log(f"{prefix}/cls/accuracy", torch.tensor(0.75))
        runtime.log(f"{prefix}/f1", 0.5)
        publish_matrix(runtime, f"{prefix}/confusion", torch.tensor(CONFUSION))

    def on_validation_epoch_end(self, runtime: Runtime) -> None:
        self._publish(runtime, "val")

    def on_test_epoch_end(self, runtime: Runtime) -> None:
        self._publish(runtime, "test")


class TTYStringIO(io.StringIO):
    """A StringIO that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


def _config(tmp_path: Path, **trainer: Any) -> dict[str, Any]:
    cfg = base_config(**trainer)
    cfg["loss"] = "torch.nn.functional:cross_entropy"
    cfg["tracker"] = {"save_directory": str(tmp_path / "runs")}
    return cfg


def _run(callbacks: list[Any], tmp_path: Path, *, test: bool = False, **trainer: Any) -> Path:
    """fit (and test) a small model with a LocalTracker; returns log.txt after closing."""
    cfg = _config(tmp_path, main_metric={"name": "val/cls/accuracy", "mode": "max"}, **trainer)
    with Runtime(make_model(), [Metrics(), *callbacks], cfg) as rt:
        rt.fit(make_loader(64), make_loader(32))
        if test:
            rt.test(make_loader(32))
    assert rt.run_dir is not None
    return rt.run_dir / "log.txt"


def _assert_mirrored(printed: str, log_path: Path) -> None:
    log_lines = log_path.read_text(encoding="utf-8").splitlines()
    for line in printed.splitlines():
        if line.strip():
            assert any(line.rstrip() in entry for entry in log_lines), f"not in log.txt: {line!r}"


def _assert_clean(text: str) -> None:
    assert ANSI not in text
    assert "\r" not in text


# ---------------------------------------------------------------------------- progress bars
@pytest.mark.parametrize("bar_cls", [LuxonisRichProgressBar, LuxonisTQDMProgressBar])
def test_bar_prints_tables_main_metric_and_epoch_lines(tmp_path: Path, bar_cls: type) -> None:
    out = io.StringIO()
    log_path = _run([bar_cls(file=out)], tmp_path, test=True)
    printed = out.getvalue()

    _assert_clean(printed)
    assert printed.count("Validation loss: ") == 2
    assert "Validation metrics: cls" in printed and "accuracy" in printed
    assert "Validation metrics\n" in printed and "f1" in printed
    assert "0.75000" in printed and "0.50000" in printed  # 5 decimals
    assert printed.count("Validation main metric (val/cls/accuracy): 0.75000") == 2
    assert "Test loss: " in printed and "Test metrics: cls" in printed
    assert "Test main metric (test/cls/accuracy): 0.75000" in printed
    for epoch in (1, 2):
        assert f"[Epoch {epoch}/2] Duration: " in printed
    assert printed.count("s | Train Loss: ") == 2
    _assert_mirrored(printed, log_path)


@pytest.mark.parametrize("bar_cls", [LuxonisRichProgressBar, LuxonisTQDMProgressBar])
def test_two_d_metric_is_a_gt_by_pred_table(tmp_path: Path, bar_cls: type) -> None:
    out = io.StringIO()
    _run([bar_cls(file=out)], tmp_path, epochs=1)
    printed = out.getvalue()
    assert "val/confusion (GT x Pred)" in printed
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if "GT \\ Pred" in line)
    cells = [line.replace("|", " ").replace("│", " ").replace("┃", " ").split() for line in lines[header : header + 6]]
    assert cells[0][-2:] == ["0", "1"]
    assert ["0", "5", "1"] in cells and ["1", "2", "8"] in cells


def test_tqdm_default_output_is_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_path = _run([LuxonisTQDMProgressBar()], tmp_path, epochs=1)
    printed = capsys.readouterr().out
    _assert_clean(printed)
    assert "Validation main metric (val/cls/accuracy): 0.75000" in printed
    assert "[Epoch 1/1] Duration: " in printed
    _assert_mirrored(printed, log_path)


def test_rich_default_output_is_stdout_without_ansi(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_path = _run([LuxonisRichProgressBar(), LuxonisModelSummary()], tmp_path, epochs=1)
    printed = capsys.readouterr().out
    _assert_clean(printed)
    assert "Validation metrics: cls" in printed and "Total params" in printed
    # the bar's lines are mirrored as printed; the rich summary's log copy is the plain table
    _assert_mirrored(printed[printed.index("Validation loss: ") :], log_path)
    assert "Total params" in log_path.read_text(encoding="utf-8")


def test_standalone_validate_prints_the_tables(tmp_path: Path) -> None:
    out = io.StringIO()
    cfg = _config(tmp_path, main_metric={"name": "val/cls/accuracy", "mode": "max"})
    with Runtime(make_model(), [Metrics(), LuxonisRichProgressBar(file=out)], cfg) as rt:
        rt.validate(make_loader(32))
    printed = out.getvalue()
    _assert_clean(printed)
    assert "Validation loss: " in printed and "val/confusion (GT x Pred)" in printed
    assert "Validation main metric (val/cls/accuracy): 0.75000" in printed
    assert "Train Loss" not in printed


def test_no_tables_for_the_sanity_check(tmp_path: Path) -> None:
    out = io.StringIO()
    _run([LuxonisTQDMProgressBar(file=out)], tmp_path, epochs=1, num_sanity_val_steps=2)
    assert out.getvalue().count("Validation loss: ") == 1


def test_no_main_metric_line_without_main_metric(tmp_path: Path) -> None:
    out = io.StringIO()
    cfg = _config(tmp_path, epochs=1)
    with Runtime(make_model(), [Metrics(), LuxonisTQDMProgressBar(file=out)], cfg) as rt:
        rt.fit(make_loader(64), make_loader(32))
    assert "main metric" not in out.getvalue()
    assert "Validation loss: " in out.getvalue()


class _CountingTQDM(LuxonisTQDMProgressBar):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.updates: list[tuple[str, int]] = []

    def _update_bar(self, key: str, completed: int, postfix: str) -> None:
        self.updates.append((key, completed))
        super()._update_bar(key, completed, postfix)


def test_live_tqdm_refresh_is_rate_limited(tmp_path: Path) -> None:
    out = TTYStringIO()
    bar = _CountingTQDM(file=out, refresh_interval=3600)
    _run([bar], tmp_path, epochs=2)
    train = [u for u in bar.updates if u[0] == "train"]
    # 4 batches per epoch: the first batch refreshes, then only validation's start and the
    # epoch's end (forced refreshes), never the steps in between
    assert train == [("train", 1), ("train", 4), ("train", 4)] * 2
    assert ("validation", 2) in bar.updates
    assert "Epoch 1/2" in out.getvalue()  # the live bar was drawn
    assert "[Epoch 2/2] Duration: " in out.getvalue()


def test_live_bars_do_not_read_metrics_between_refreshes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import callbacks.progress.bar as progress  # where the bars look _latest_loss up

    reads: list[str] = []
    original = progress._latest_loss

    def spy(runtime: Runtime, prefix: str) -> str:
        reads.append(prefix)
        return original(runtime, prefix)

    monkeypatch.setattr(progress, "_latest_loss", spy)
    bar = LuxonisTQDMProgressBar(file=TTYStringIO(), refresh_interval=3600)
    cfg = _config(tmp_path, epochs=1)
    with Runtime(make_model(), [bar], cfg) as rt:
        rt.fit(make_loader(320), None)  # 20 batches
    assert reads.count("train") == 2  # first batch and epoch end, not per step


def test_live_rich_bar_runs_and_logs_plain_text(tmp_path: Path) -> None:
    out = TTYStringIO()
    console = Console(file=out, force_terminal=True, width=100)
    log_path = _run([LuxonisRichProgressBar(console=console, refresh_interval=0)], tmp_path, test=True)
    printed = out.getvalue()
    assert ANSI in printed  # a terminal gets colours and a live bar
    assert "Validation main metric (val/cls/accuracy)" in printed
    log_text = log_path.read_text(encoding="utf-8")
    assert ANSI not in log_text
    assert "Validation main metric (val/cls/accuracy): 0.75000" in log_text
    assert "GT \\ Pred" in log_text


def test_publish_matrix_rejects_bad_names_and_shapes() -> None:
    rt = Runtime(make_model(), [], base_config())
    with pytest.raises(ValueError, match="start with"):
        publish_matrix(rt, "train/confusion", torch.eye(2))
    with pytest.raises(ValueError, match="2-D"):
        publish_matrix(rt, "val/confusion", torch.ones(3))


def test_echo_filter_keeps_mirrored_lines_off_the_console_handler() -> None:
    logger = logging.getLogger("busloop")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler._busloop_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        install_echo_filter()
        install_echo_filter()
        assert sum(isinstance(f, EchoFilter) for f in handler.filters) == 1
        logging.getLogger("busloop.progress").info("printed", extra={PRINTED_ATTR: True})
        logging.getLogger("busloop.progress").info("not printed")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert stream.getvalue() == "not printed\n"


def test_registered_names() -> None:
    assert CALLBACKS["ModelSummary"] is LuxonisModelSummary
    assert CALLBACKS["LuxonisModelSummary"] is LuxonisModelSummary
    assert CALLBACKS["LuxonisRichProgressBar"] is LuxonisRichProgressBar
    assert CALLBACKS["LuxonisTQDMProgressBar"] is LuxonisTQDMProgressBar


# ---------------------------------------------------------------------------- model summary
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.inner = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.conv(x))  # type: ignore[no-any-return]


class Net(nn.Module):
    example_input_array = torch.zeros(2, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(2))  # owned by the root: "other params"
        self.block.inner[0].eval()  # a module in eval mode must stay so
        self.head.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.block(x)).flatten(1)) * self.scale  # type: ignore[no-any-return]


def _fit_summary(model: nn.Module, tmp_path: Path, callback: LuxonisModelSummary, **trainer: Any) -> Path:
    cfg = _config(tmp_path, epochs=1, **trainer)
    with Runtime(model, [callback], cfg, optimizer=torch.optim.SGD(model.parameters(), lr=0.1)) as rt:
        rt.fit(_image_loader(), None)
    assert rt.run_dir is not None
    return rt.run_dir / "log.txt"


def _image_loader() -> Any:
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.randn(8, 3, 8, 8)
    y = torch.randint(0, 2, (8,))
    return DataLoader(TensorDataset(x, y), batch_size=4)


def _rows(printed: str) -> dict[str, list[str]]:
    """Plain-table rows by layer name."""
    rows = {}
    for line in printed.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 5 and cells[0].isdigit():
            rows[cells[1]] = cells
    return rows


def test_summary_lists_layers_with_counts_modes_and_sizes(tmp_path: Path) -> None:
    model = Net()
    out = io.StringIO()
    summary = LuxonisModelSummary(rich=False, max_depth=2, file=out)
    log_path = _fit_summary(model, tmp_path, summary)
    printed = out.getvalue()
    _assert_clean(printed)
    rows = _rows(printed)

    modules = dict(model.named_modules())
    expected = ["block", "block.conv", "block.inner", "pool", "head"]
    assert list(rows) == expected  # depth <= 2, in module order; inner's children excluded
    for name in expected:
        count = sum(p.numel() for p in modules[name].parameters())
        assert rows[name][3] == str(count), name
        assert rows[name][2] == type(modules[name]).__name__
    assert rows["block.conv"][5:] == ["[2, 3, 8, 8]", "[2, 4, 8, 8]"]
    assert rows["head"][5:] == ["[2, 4]", "[2, 2]"]
    assert rows["block"][4] == "train" and rows["block.inner"][4] == "train"
    assert "other params" in printed  # the root's own parameter

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"{trainable:<5}  Trainable params" in printed
    assert f"{total - trainable:<5}  Non-trainable params" in printed
    assert f"{total:<5}  Total params" in printed
    assert f"{total * 4 / 1e6:,.3f}  Total estimated model params size (MB)" in printed
    assert "Modules in eval mode" in printed
    assert summary.summary is not None
    assert summary.summary.modules_in_eval == 1  # the BatchNorm put in eval
    assert summary.summary.modules_in_train == len(list(model.modules())) - 2
    _assert_mirrored(printed, log_path)


def test_summary_restores_modes_and_rng() -> None:
    model = Net()
    modes = [m.training for m in model.modules()]
    torch.manual_seed(3)
    state = torch.get_rng_state()
    data = summarize_model(model, max_depth=-1, example_input=model.example_input_array)
    assert torch.equal(torch.get_rng_state(), state)
    assert [m.training for m in model.modules()] == modes
    assert data.has_sizes
    assert [layer.name for layer in data.layers] == [n for n, _ in list(model.named_modules())[1:]]
    assert data.total_params == sum(p.numel() for p in model.parameters())
    assert data.non_trainable_params == 2  # head.bias


@pytest.mark.parametrize(("depth", "names"), [(1, ["block", "pool", "head"]), (0, [])])
def test_summary_max_depth(depth: int, names: list[str]) -> None:
    data = summarize_model(Net(), max_depth=depth)
    assert [layer.name for layer in data.layers] == names
    assert not data.has_sizes


def test_summary_uses_config_input_shape(tmp_path: Path) -> None:
    model = Net()
    model.example_input_array = None  # type: ignore[assignment]
    out = io.StringIO()
    _fit_summary(model, tmp_path, LuxonisModelSummary(rich=False, max_depth=1, file=out), input_shape=[3, 8, 8])
    rows = _rows(out.getvalue())
    assert rows["block"][5:] == ["[1, 3, 8, 8]", "[1, 4, 8, 8]"]


def test_summary_without_example_input_has_no_size_columns(tmp_path: Path) -> None:
    out = io.StringIO()
    cfg = _config(tmp_path, epochs=1)
    with Runtime(make_model(), [LuxonisModelSummary(rich=False, file=out)], cfg) as rt:
        rt.fit(make_loader(32), None)
    assert "In sizes" not in out.getvalue()
    assert _rows(out.getvalue())["0"][3] == str(8 * 16 + 16)


def test_rich_summary_is_a_table_and_the_log_gets_the_plain_copy(tmp_path: Path) -> None:
    model = Net()
    out = io.StringIO()
    log_path = _fit_summary(model, tmp_path, LuxonisModelSummary(rich=True, file=out))
    printed = out.getvalue()
    _assert_clean(printed)
    assert "┃" in printed or "|" in printed
    assert "Total params: " in printed and "In sizes" in printed and "block.conv" in printed
    log_rows = _rows(log_path.read_text(encoding="utf-8"))
    assert log_rows["block.conv"][5:] == ["[2, 3, 8, 8]", "[2, 4, 8, 8]"]


def test_summary_survives_a_failing_example_input(tmp_path: Path) -> None:
    model = Net()
    model.example_input_array = torch.zeros(1, 5)  # type: ignore[assignment]
    out = io.StringIO()
    _fit_summary(model, tmp_path, LuxonisModelSummary(rich=False, file=out))
    assert "in/out sizes unknown" in out.getvalue()
    assert "block.conv" in out.getvalue()


class _BatchReceivers(Callback):
    """Records the receiver names of the per-batch events while a fit runs."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def _record(self, runtime: Runtime) -> None:
        for event in ("train_batch_end", "validation_batch_end", "test_batch_end"):
            self.seen.update(f"{event}:{r.__qualname__}" for r in runtime.bus.signal(event).dispatch)

    def on_train_epoch_start(self, runtime: Runtime) -> None:
        self._record(runtime)

    def on_test_start(self, runtime: Runtime) -> None:
        self._record(runtime)


@pytest.mark.parametrize(
    ("bar", "live"),
    [
        (lambda: LuxonisTQDMProgressBar(file=io.StringIO()), False),
        (lambda: LuxonisRichProgressBar(file=io.StringIO()), False),
        (lambda: LuxonisTQDMProgressBar(file=TTYStringIO(), refresh_interval=3600), True),
    ],
)
def test_batch_hooks_are_connected_only_for_a_live_bar(tmp_path: Path, bar: Any, live: bool) -> None:
    """Off a terminal a bar draws nothing per batch, so its per-batch hooks are not
    connected (the batch events cost it nothing); the printed lines are unchanged."""
    progress, receivers = bar(), _BatchReceivers()
    _run([progress, receivers], tmp_path, test=True, epochs=2)
    hooks = {name for name in receivers.seen if ".on_" in name and "Bar" in name}
    assert bool(hooks) is live
    if live:
        assert any(name.startswith("train_batch_end:") for name in hooks)
    printed = progress.file.getvalue() if hasattr(progress, "file") else progress.output.file.getvalue()
    assert "[Epoch 2/2] Duration: " in printed and "Validation loss: " in printed


@pytest.mark.parametrize(
    "text",
    ["Validation loss: 1.23618", "a  b  ", "  lead", "é wide 日本語", "x" * 160, "x" * 161, "[b]x[/b] :smile:", "tab\there", "two\nlines"],
)
def test_plain_text_lines_print_what_rich_prints_off_a_terminal(text: str) -> None:
    """Off a terminal, one-line Text reports skip rich's render pass; the bytes printed are
    the same as rich's (anything it would wrap, expand or colour still goes through rich)."""
    from rich.text import Text

    from callbacks.progress.console import ConsoleOutput

    fast_file, rich_file = io.StringIO(), io.StringIO()
    fast = ConsoleOutput(logging.getLogger("test.fast"), file=fast_file)
    renderables = [Text(text, style="bold"), Text("Validation main metric (acc): 0.50000", style="bold green")]
    fast.print(renderables)
    reference = Console(file=rich_file, highlight=False, width=fast.console.width)
    for renderable in renderables:
        reference.print(renderable)
    assert fast_file.getvalue() == rich_file.getvalue()
    skipped = fast._plain_text_lines(renderables) is not None
    assert skipped is ("\t" not in text and "\n" not in text and len(text) <= 160)


@pytest.mark.parametrize(
    "text",
    [
        "[Epoch 3/4] Duration: 0.12s | Train Loss: 1.23456",
        "a  b  ",
        "é wide 日本語 " * 20,
        "x" * 161,
        "two\nlines\n\nand a blank",
        "ends with a newline\n",
        "tab\there",
        "bell\x07 cr\r back\x08 esc \x1b[1mbold",
        "zero\u200bwidth",
        "",
    ],
)
def test_plain_writes_are_what_rich_writes_off_a_terminal(text: str) -> None:
    """Off a terminal, a console the output made itself is written to directly (no render
    pass) when every line is printable; the bytes are rich's, and anything rich would change
    (tabs, control codes) still goes through rich."""
    from callbacks.progress.console import ConsoleOutput

    fast_file, rich_file = io.StringIO(), io.StringIO()
    fast = ConsoleOutput(logging.getLogger("test.fast"), file=fast_file)
    fast.print_text(text)
    Console(file=rich_file, highlight=False, width=fast.console.width).out(text, highlight=False)
    assert fast_file.getvalue() == rich_file.getvalue()

    direct = all(line.isprintable() for line in text.split("\n"))
    assert fast._write_plain(text + "\n") is direct
    assert fast_file.getvalue() == rich_file.getvalue() + (text + "\n" if direct else "")


def test_a_console_given_to_the_output_is_always_written_through_rich() -> None:
    """A caller's console may record, capture or draw: printing goes through it, never
    around it, so a recording console keeps every line."""
    from callbacks.progress.console import ConsoleOutput

    console = Console(file=io.StringIO(), record=True, highlight=False)
    output = ConsoleOutput(logging.getLogger("test.given"), console=console)
    output.print_text("[Epoch 1/1] Duration: 0.01s | Train Loss: 0.50000")
    assert output._write_plain("x\n") is False
    assert console.export_text() == "[Epoch 1/1] Duration: 0.01s | Train Loss: 0.50000\n"
