"""Export parity on the digits job: max abs difference of each ONNX file (onnxruntime, CPU)
from the PyTorch model of the best checkpoint, over the whole validation split.

    python -m benchmarks.export_parity [--epochs N]

Trains the embedded digits job twice (the TorchScript exporter, then ``dynamo=True``) with
ConvertOnTrainEnd(converters=[fp16, int8]) in a temporary folder and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from runtime.checkpoint import load_checkpoint
from runtime.cli import main as busloop
from runtime.examples.digits import build_loaders, build_model


def _diffs(run: Path) -> dict[str, tuple[float, float]]:
    model = build_model().eval()
    best = next((run / "checkpoints" / "best_val_metric").glob("*.ckpt"))
    model.load_state_dict(load_checkpoint(best)["state_dict"])
    images = torch.cat([batch[0] for batch in build_loaders(batch_size=256)["val"]])
    with torch.no_grad():
        expected = model(images).numpy()
    out = {}
    for path in sorted((run / "export").glob("*.onnx")):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": images.numpy()})[0]
        out[path.name] = (float(np.abs(got - expected).max()), float((got.argmax(1) == expected.argmax(1)).mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for dynamo in (False, True):
            save = Path(folder) / ("dynamo" if dynamo else "torchscript")
            code = busloop([
                "train", f"trainer.epochs={args.epochs}", "trainer.rich_logging=false",
                f"tracker.save_directory={save}", f"exporter.onnx.dynamo={str(dynamo).lower()}",
                "trainer.callbacks=[{name: ConvertOnTrainEnd, params: {converters: [fp16, int8]}}]",
            ])  # fmt: skip
            if code != 0:
                raise SystemExit(code)
            exporter = "dynamo" if dynamo else "TorchScript (legacy)"
            for name, (diff, top1) in _diffs(next(save.iterdir())).items():
                rows.append(f"| {exporter} | {name} | {diff:.3g} | {top1:.2%} |")
    print("| exporter | file | max abs diff vs PyTorch | top-1 agreement |")
    print("| --- | --- | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
