"""GradCamCallback: heatmaps compared with an independent HiResCAM computation, state restored,
images logged, segmentation, and a bad layer index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from callbacks.gradcam import GradCamCallback, hirescam
from conftest import TinyCNN, image_config, make_image_loader
from runtime import Runtime
from runtime.bus import CallbackError


def _independent_hirescam(model: nn.Module, layer: nn.Module, x: torch.Tensor, score: callable) -> np.ndarray:  # type: ignore[valid-type]
    """HiResCAM by hand: activation x d(score)/d(activation), summed over channels, ReLU,
    min-max scaled per image (to a max of exactly 1), bilinearly resized to the input."""
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        model.eval()
        out = model(x)
        (grad,) = torch.autograd.grad(score(out), store["a"])
    finally:
        handle.remove()
    cam = (grad * store["a"]).sum(1).clamp(min=0).detach()
    cam = cam - cam.flatten(1).min(1).values[:, None, None]
    cam = cam / cam.flatten(1).max(1).values.clamp(min=1e-12)[:, None, None]
    return F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].numpy()


def test_heatmaps_match_an_independent_computation_and_state_is_restored() -> None:
    model = TinyCNN()
    for p in model.features[0].parameters():
        p.requires_grad_(False)  # a frozen layer stays frozen
    model.features[1].eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5) if p.requires_grad else None  # accumulated grads stay
    layer = model.features[3]
    x = next(iter(make_image_loader(6, batch_size=6)))[0]

    heat = hirescam(model, layer, x, class_idx=2, task="classification")
    assert heat.shape == (6, 8, 8) and heat.min() >= 0 and heat.max() <= 1
    assert [p.requires_grad for p in model.parameters()] == [False, False] + [True] * 6
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters() if p.requires_grad)
    assert model.training and not model.features[1].training
    assert not layer._forward_hooks and not layer._backward_hooks  # hooks removed

    expected = _independent_hirescam(model, layer, x, lambda out: out[:, 2].sum())
    assert np.abs(heat - expected).max() < 1e-4


class TinySegmenter(nn.Module):
    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]


def test_segmentation_target_is_the_pixels_predicted_as_the_class() -> None:
    model = TinySegmenter()
    x = next(iter(make_image_loader(4, batch_size=4)))[0]
    heat = hirescam(model, model.body[1], x, class_idx=1, task="segmentation")

    def score(out: torch.Tensor) -> torch.Tensor:
        mask = (out.argmax(1) == 1).float().detach()
        return (out[:, 1] * mask).sum()

    expected = _independent_hirescam(model, model.body[1], x, score)
    assert np.abs(heat - expected).max() < 1e-4


def test_gradcam_images_are_logged_during_validation(tmp_path: Path) -> None:
    cam = GradCamCallback(target_layer=5, class_idx=1, log_n_batches=2, max_images=3)
    cfg = image_config(tmp_path)
    cfg["trainer"].update(epochs=2, num_sanity_val_steps=1)
    cfg["trainer"]["preprocessing"] = {"normalize": {"params": {"mean": [0.5], "std": [0.5]}}}
    rt = Runtime(TinyCNN(), [cam], cfg)
    rt.fit(make_image_loader(32), make_image_loader(48, seed=1))
    assert cam.logged == [("gradcam/val_batch_0", 2), ("gradcam/val_batch_1", 2),
                          ("gradcam/val_batch_0", 4), ("gradcam/val_batch_1", 4)]  # fmt: skip
    png = rt.run_dir / "images" / "gradcam" / "val_batch_1" / "4.png"
    image = np.asarray(Image.open(png))
    assert image.shape == (96, 3 * 96 + 2 * 2, 3)  # three 8x8 tiles enlarged to 96 px
    assert image[:, 96:98].min() == 255  # white separator


def test_a_bad_layer_index_fails_before_training(tmp_path: Path) -> None:
    rt = Runtime(TinyCNN(), [GradCamCallback(target_layer=42)], image_config(tmp_path))
    with pytest.raises(CallbackError) as info:
        rt.fit(make_image_loader(32), make_image_loader(16))
    assert "GradCamCallback" in str(info.value) and "'setup'" in str(info.value)
    message = str(info.value.original)
    assert "target_layer=42: the model has 11 modules (0..10)" in message and "5=features.3 (Conv2d)" in message
    assert rt.state.global_step == 0
    with pytest.raises(ValueError, match="task must be one of classification, segmentation"):
        GradCamCallback(target_layer=1, task="detection")
