"""The CLI in a real pseudo-terminal: log records print above the live progress bar.

``busloop train`` runs in a pty 140 columns wide (python's ``pty`` module); its output is
fed to a VT100 emulator (``pyte``) and the raw byte stream is checked too: no log record
may start on a line that the bar has drawn on (issue #16 saw ``loss: 0.0009[11/29/26
17:17:27] INFO Artifact (checkpoint) ...`` on one line at every epoch).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

pyte = pytest.importorskip("pyte")

REPO = Path(__file__).resolve().parents[1]
COLUMNS, ROWS = 140, 3000
BAR = "━"


def _run_in_pty(args: list[str], cwd: Path) -> tuple[int, bytes]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(COLUMNS), LINES="50", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "tests" / "scripts"), str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("NO_COLOR", None)
    child = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", *args], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif child.poll() is not None:
                break
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        os.close(master)
    return child.returncode, b"".join(chunks)


@pytest.mark.slow
def test_log_records_never_share_a_line_with_the_live_bar(tmp_path: Path) -> None:
    config = {
        "model": {"factory": "interrupt_job:build_model"},
        "data": {"factory": "interrupt_job:build_loaders", "params": {"sleep": 0.004}},
        "loss": "torch.nn.functional:cross_entropy",
        "optimizer": {"name": "SGD", "params": {"lr": 0.05}},
        "trainer": {"epochs": 4, "batch_size": 8, "seed": 0, "accelerator": "cpu", "smart_cfg_auto_populate": False, "val_check_interval": 0.5,
                    "callbacks": [{"name": "UploadCheckpoint"}]},
        "tracker": {"save_directory": "runs", "run_name": "pty"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    code, raw = _run_in_pty(["train", "job.yaml"], tmp_path)
    text = raw.decode("utf-8", "replace")
    assert code == 0, text[-3000:]
    assert BAR in text  # the bar was live

    # the raw stream: every record starts on a fresh line, or right after the bar was erased
    records = [m.start() for m in re.finditer(r"INFO|WARNING", text)]
    assert len(records) >= 4
    for start in records:
        line_start = max(text.rfind("\n", 0, start), text.rfind("\r", 0, start), text.rfind("\x1b[2K", 0, start))
        assert BAR not in text[line_start:start], repr(text[max(0, start - 160) : start + 60])

    # the screen as a terminal shows it
    screen = pyte.Screen(COLUMNS, ROWS)
    pyte.ByteStream(screen).feed(raw)
    lines = [line.rstrip() for line in screen.display if line.strip()]
    assert any("Artifact (checkpoint)" in line for line in lines), "\n".join(lines)
    assert not [line for line in lines if BAR in line and ("INFO" in line or "Artifact" in line)]
    assert any(line.startswith("[Epoch 4/4]") for line in lines), "\n".join(lines)
