"""GradCamCallback: Grad-CAM heatmaps of the first validation batches, logged as images.

For the first ``log_n_batches`` validation batches of each validation run (sanity checks
excluded) it computes HiResCAM (the reference's variant: the element-wise product of the
target layer's activations and their gradients, summed over channels, ReLU, scaled to
[0, 1] and resized to the input) with the ``grad-cam`` package (the ``gradcam`` extra) on
the module at index ``target_layer`` of ``list(model.named_modules())``, for class
``class_idx``: the class score for ``task="classification"``, the summed score of the pixels
predicted as that class for ``task="segmentation"``. The heatmaps are overlaid on the
de-normalised inputs (``trainer.preprocessing.normalize``) and logged through the tracker
as one strip per batch, ``gradcam/val_batch_<i>`` at the global step (the local tracker
writes ``images/gradcam/val_batch_<i>/<step>.png``, TensorBoard gets ``add_image``).

Nothing leaks into training: parameter gradients are not computed (the input carries the
gradient instead) and the ``.grad`` of every parameter is put back, hooks are removed, and
each parameter's ``requires_grad`` and each module's train/eval mode are restored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from runtime.callback import Callback
from runtime.config import Config
from runtime.loop import Runtime
from runtime.module import inputs_of
from runtime.registry import register

log = logging.getLogger("busloop.callbacks")

__all__ = ["GradCamCallback", "hirescam", "overlay"]

TASKS = ("classification", "segmentation")


@contextmanager
def _isolated(model: nn.Module) -> Iterator[None]:
    """Parameters frozen and their grads kept aside; modes and flags restored after."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    for p, _, _ in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
        for module, training in modes:
            module.training = training


def hirescam(
    model: nn.Module, layer: nn.Module, inputs: torch.Tensor, class_idx: int, task: str
) -> np.ndarray:
    """HiResCAM heatmaps (N, H, W) in [0, 1] for ``inputs`` (N, C, H, W), via grad-cam."""
    try:
        from pytorch_grad_cam import HiResCAM
        from pytorch_grad_cam.utils.model_targets import (
            ClassifierOutputTarget,
            SemanticSegmentationTarget,
        )
    except ImportError:
        raise RuntimeError(
            "GradCamCallback needs the grad-cam package: pip install 'busloop[gradcam]'"
        ) from None
    with _isolated(model), torch.enable_grad():
        x = inputs.detach().clone().requires_grad_(True)
        if task == "segmentation":
            with torch.no_grad():
                predicted = model.eval()(x).argmax(1)
            masks = [(p == class_idx).float().cpu().numpy() for p in predicted]
            targets: list[Any] = [SemanticSegmentationTarget(class_idx, m) for m in masks]
        else:
            targets = [ClassifierOutputTarget(class_idx)] * len(x)
        with HiResCAM(model=model, target_layers=[layer]) as cam:
            return np.asarray(cam(input_tensor=x, targets=targets), dtype=np.float32)


def _denormalize(inputs: torch.Tensor, config: Config) -> np.ndarray:
    """Inputs (N, C, H, W) back to [0, 1] RGB images (N, H, W, 3)."""
    images = inputs.detach().float().cpu()
    normalize = config.trainer.preprocessing.normalize
    if normalize is not None and normalize.active:
        mean = torch.tensor(normalize.params.mean).view(1, -1, 1, 1)
        std = torch.tensor(normalize.params.std).view(1, -1, 1, 1)
        images = images * std + mean
    images = images.clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images[:, :3].permute(0, 2, 3, 1).numpy()


def overlay(images: np.ndarray, heatmaps: np.ndarray, min_size: int = 96) -> np.ndarray:
    """One uint8 HWC strip: each image with its heatmap (JET) blended, enlarged to ``min_size``."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    tiles = []
    for image, heatmap in zip(images, heatmaps, strict=True):
        tile = show_cam_on_image(image.astype(np.float32), heatmap, use_rgb=True)
        factor = max(1, -(-min_size // max(tile.shape[:2])))
        size = (tile.shape[1] * factor, tile.shape[0] * factor)
        tiles.append(np.asarray(Image.fromarray(tile).resize(size, Image.Resampling.NEAREST)))
        tiles.append(np.full((size[1], 2, 3), 255, dtype=np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


@register()
class GradCamCallback(Callback):
    """Log HiResCAM heatmaps of the first ``log_n_batches`` validation batches.

    ``target_layer``: index into ``list(model.named_modules())`` (0 is the model itself;
    ``busloop callbacks`` users: print that list to pick one, usually the last conv).
    ``class_idx``: the class explained. ``task``: "classification" or "segmentation".
    ``max_images``: samples per batch strip. After a batch, :attr:`heatmaps` holds the last
    heatmaps (N, H, W) and :attr:`logged` the (tag, step) pairs logged.
    """

    def __init__(
        self,
        target_layer: int,
        class_idx: int = 0,
        log_n_batches: int = 1,
        task: str = "classification",
        max_images: int = 8,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if log_n_batches < 1 or max_images < 1 or class_idx < 0:
            raise ValueError("log_n_batches and max_images must be >= 1 and class_idx >= 0")
        self.target_layer = target_layer
        self.class_idx = class_idx
        self.log_n_batches = log_n_batches
        self.task = task
        self.max_images = max_images
        self.heatmaps: np.ndarray | None = None
        self.logged: list[tuple[str, int]] = []
        self._done = 0

    def layer(self, model: nn.Module) -> nn.Module:
        """The target module; ValueError listing the valid range for a bad index."""
        modules = list(model.named_modules())
        if not -len(modules) <= self.target_layer < len(modules):
            some = ", ".join(f"{i}={n or '<model>'} ({type(m).__name__})" for i, (n, m) in enumerate(modules))
            raise ValueError(
                f"target_layer={self.target_layer}: the model has {len(modules)} modules "
                f"(0..{len(modules) - 1}): {some}"
            )
        return modules[self.target_layer][1]

    def on_setup(self, runtime: Runtime, stage: str) -> None:
        self.layer(runtime.model)  # a bad index fails before any training

    def on_validation_epoch_start(self, runtime: Runtime) -> None:
        self._done = 0

    def on_validation_batch_end(
        self, runtime: Runtime, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if runtime.state.sanity_checking or self._done >= self.log_n_batches:
            return
        self._done += 1
        inputs = inputs_of(batch)
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
            log.warning("GradCamCallback: needs image batches (N, C, H, W); skipping")
            self._done = self.log_n_batches
            return
        inputs = inputs[: self.max_images]
        model = runtime.model
        self.heatmaps = hirescam(model, self.layer(model), inputs, self.class_idx, self.task)
        if runtime.tracker is None:
            return
        image = overlay(_denormalize(inputs, runtime.config), self.heatmaps)
        tag, step = f"gradcam/val_batch_{batch_idx}", runtime.state.global_step
        runtime.tracker.log_image(tag, image, step)
        self.logged.append((tag, step))
