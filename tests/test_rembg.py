"""Learned background removal (BiRefNet wrapper) and the pipeline's lazy build / GrabCut fallback."""
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pixal3d.conditioning.preprocess import grabcut_foreground
from pixal3d.conditioning.rembg import (IMAGENET_MEAN, IMAGENET_STD, BackgroundRemoverUnavailable, BiRefNet,
                                        load_background_remover)
from pixal3d.pipelines.image_to_3d import LazyBackgroundRemover, Pixal3DImageTo3DPipeline


class RedMinusGreen(nn.Module):
    """A tiny segmentation 'network': foreground logit = gain * (normalised red - normalised green), returned like
    BiRefNet as a list of side outputs (coarse first, finest last) at a quarter of the input resolution."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(2.0))
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x)
        logit = self.gain * (x[:, :1] - x[:, 1:2])
        fine = F.avg_pool2d(logit, 4)
        return [F.avg_pool2d(logit, 16), fine]


def _red_on_green(w=300, h=200, box=(60, 40, 200, 150)):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 1] = 255
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = (255, 0, 0)
    return Image.fromarray(arr, "RGB"), box


def test_preprocessing_resizes_and_normalises_like_the_reference():
    net = RedMinusGreen()
    img, (x0, y0, x1, y1) = _red_on_green()
    out = BiRefNet(model=net)(img)
    (x,) = net.inputs
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == torch.float32
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    # centre of the red box and a background corner, mapped to the 1024² input
    cy, cx = int((y0 + y1) / 2 / 200 * 1024), int((x0 + x1) / 2 / 300 * 1024)
    np.testing.assert_allclose(x[0, :, cy, cx].numpy(), (np.array([1.0, 0.0, 0.0]) - mean) / std, rtol=1e-5)
    np.testing.assert_allclose(x[0, :, 3, 3].numpy(), (np.array([0.0, 1.0, 0.0]) - mean) / std, rtol=1e-5)
    # mask resized back to the input size and attached as alpha; colours untouched
    assert out.mode == "RGBA" and out.size == img.size
    np.testing.assert_array_equal(np.asarray(out)[..., :3], np.asarray(img))
    alpha = np.asarray(out.getchannel("A")).astype(int)
    assert alpha[y0 + 5:y1 - 5, x0 + 5:x1 - 5].min() > 240
    outside = np.ones_like(alpha, bool)
    outside[y0 - 5:y1 + 5, x0 - 5:x1 + 5] = False
    assert alpha[outside].max() < 15
    fg = np.argwhere(alpha > 0.8 * 255)
    assert abs(fg[:, 0].min() - y0) <= 2 and abs(fg[:, 0].max() - (y1 - 1)) <= 2
    assert abs(fg[:, 1].min() - x0) <= 2 and abs(fg[:, 1].max() - (x1 - 1)) <= 2


def test_postprocess_sigmoid_truncates_to_8_bit_and_resizes():
    mask = BiRefNet.postprocess(torch.zeros(1, 1, 8, 8), (20, 10))  # sigmoid(0) = 0.5 -> int(127.5) = 127
    assert mask.mode == "L" and mask.size == (20, 10) and set(np.asarray(mask).ravel()) == {127}
    logits = torch.full((1, 1, 4, 4), -5.0)
    logits[..., :, 2:] = 5.0
    m = np.asarray(BiRefNet.postprocess(logits, (4, 4)))
    # 255 * sigmoid(-5) = 1.71 -> 1, 255 * sigmoid(5) = 253.29 -> 253 (truncation, not rounding)
    assert (m[:, :2] == 1).all() and (m[:, 2:] == 253).all()
    with pytest.raises(ValueError, match="single-channel"):
        BiRefNet.postprocess(torch.zeros(1, 2, 4, 4), (4, 4))


def test_model_returning_a_tensor_is_a_clear_error():
    class Plain(nn.Module):
        def forward(self, x):
            return x[:, :1]
    with pytest.raises(TypeError, match="sequence of logit maps"):
        BiRefNet(model=Plain())(Image.new("RGB", (16, 16)))


def test_unsupported_spec_is_reported_before_any_download():
    with pytest.raises(BackgroundRemoverUnavailable, match="unsupported rembg_model name 'U2Net'"):
        load_background_remover({"name": "U2Net", "args": {}})
    with pytest.raises(BackgroundRemoverUnavailable, match="unsupported rembg_model args"):
        load_background_remover({"name": "BiRefNet", "args": {"model_name": "x/y", "threshold": 0.5}})


@pytest.fixture(scope="module")
def tiny_args(tmp_path_factory):
    """pipeline.json args of the random tiny pipeline (samplers + normalisations); no model is loaded."""
    from pixal3d.pipelines.random_pipeline import write_random_pipeline
    folder = write_random_pipeline(tmp_path_factory.mktemp("rembg") / "pipe")
    return json.loads((folder / "pipeline.json").read_text())["args"]


def test_pipeline_builds_the_remover_lazily_and_only_for_rgb(tiny_args, monkeypatch):
    import pixal3d.conditioning.rembg as rembg_mod
    built = []

    def fake_loader(spec):
        built.append(spec["args"]["model_name"])
        return BiRefNet(model=RedMinusGreen())
    monkeypatch.setattr(rembg_mod, "load_background_remover", fake_loader)
    pipe = Pixal3DImageTo3DPipeline({}, {**tiny_args, "rembg_model": {"name": "BiRefNet",
                                                                       "args": {"model_name": "briaai/RMBG-2.0"}}})
    assert isinstance(pipe.rembg, LazyBackgroundRemover) and built == []
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((200, 10, 10, 255), (16, 16, 48, 48))
    pipe.preprocess_image(rgba)
    assert built == []  # a real cut-out never needs the network
    img, (x0, y0, x1, y1) = _red_on_green()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the learned path must not warn
        out = pipe.preprocess_image(img)
    assert built == ["briaai/RMBG-2.0"]
    side = int(1.1 * max(x1 - x0 - 1, y1 - y0 - 1)) // 2 * 2
    assert abs(out.size[0] - side) <= 4 and out.size[0] == out.size[1]
    pipe.preprocess_image(img)
    assert built == ["briaai/RMBG-2.0"]  # built once


def test_loading_failure_falls_back_to_grabcut_with_a_warning(tiny_args, tmp_path):
    missing = tmp_path / "no_such_birefnet"
    pipe = Pixal3DImageTo3DPipeline({}, {**tiny_args, "rembg_model": {"name": "BiRefNet",
                                                                       "args": {"model_name": str(missing)}}})
    img, _ = _red_on_green()
    with pytest.warns(RuntimeWarning) as rec:
        out = pipe.preprocess_image(img)
    msg = " ".join(str(w.message) for w in rec)
    assert "background removal model unavailable" in msg and "GrabCut" in msg
    assert str(missing) in msg and "does not exist" in msg  # what failed and how to fix it
    assert pipe.rembg.error is not None and pipe.rembg.remover is None
    ref = Pixal3DImageTo3DPipeline({}, tiny_args)  # no rembg_model: the plain GrabCut path
    with pytest.warns(RuntimeWarning, match="GrabCut"):
        expected = ref.preprocess_image(img)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    with pytest.warns(RuntimeWarning, match="unavailable"):
        again = pipe.rembg(img)  # the failure is remembered, and still reported
    np.testing.assert_array_equal(np.asarray(again), np.asarray(grabcut_foreground(img)))
