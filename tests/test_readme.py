"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path: Path) -> None:
    text = README.read_text()
    code = re.search(r"## Twenty lines of Python\n\n```python\n(.*?)```", text, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), str(README), "exec"), namespace)  # noqa: S102 - our own README
    state = namespace["state"]
    assert state.epoch == 5 and state.metrics["val/loss"] < 0.3  # type: ignore[attr-defined]
    assert (tmp_path / "model.ckpt").exists()
