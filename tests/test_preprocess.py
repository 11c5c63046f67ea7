"""Image preprocessing (PIXAL3D_SPEC §6.2, TRELLIS2_SPEC §4.3) on real and synthetic images."""
import numpy as np
import pytest
from PIL import Image

from conftest import shared_data_path
from pixal3d.conditioning.preprocess import load_image, preprocess_image


def _reference(rgba: np.ndarray, crop_scale: float, bg=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Independent numpy version: bbox of alpha > 204, square crop with zero padding, composite."""
    a = rgba[..., 3]
    ys, xs = np.nonzero(a > 0.8 * 255)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    size = int(max(x1 - x0, y1 - y0) * crop_scale)
    left, top = round(cx - size // 2), round(cy - size // 2)   # Python round = PIL's box rounding
    right, bottom = round(cx + size // 2), round(cy + size // 2)
    out = np.zeros((bottom - top, right - left, 4), np.uint8)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(bottom, rgba.shape[0]), min(right, rgba.shape[1])
    out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = rgba[sy0:sy1, sx0:sx1]
    f = out.astype(np.float32) / 255
    comp = f[..., :3] * f[..., 3:] + np.asarray(bg, np.float32) * (1 - f[..., 3:])
    return (comp * 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["images/gso_chicken_nesting_gt_view000.png", "images/trellis2_04_flowers_in_pot.webp"])
@pytest.mark.parametrize("crop_scale", [1.1, 1.0])
def test_real_rgba_matches_reference(name, crop_scale):
    path = shared_data_path(name)
    out = preprocess_image(path, crop_scale=crop_scale)
    ref = _reference(np.asarray(Image.open(path).convert("RGBA")), crop_scale)
    assert out.mode == "RGB" and out.size[0] == out.size[1]
    np.testing.assert_array_equal(np.asarray(out), ref)


def test_bg_color_and_padding():
    rgba = np.zeros((100, 120, 4), np.uint8)
    rgba[20:60, 30:90] = (200, 100, 50, 255)    # 60 wide x 40 tall object
    out = np.asarray(preprocess_image(Image.fromarray(rgba, "RGBA"), bg_color=(255, 255, 255), crop_scale=1.5))
    assert out.shape == (88, 88, 3)            # int(59 * 1.5)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[44, 44], [200, 100, 50])
    out_f = np.asarray(preprocess_image(Image.fromarray(rgba, "RGBA"), bg_color=(1.0, 1.0, 1.0), crop_scale=1.5))
    np.testing.assert_array_equal(out, out_f)
    with pytest.raises(ValueError):
        preprocess_image(Image.fromarray(rgba, "RGBA"), bg_color=(300, 0, 0))


def test_large_image_is_downscaled_first():
    rgba = np.zeros((1500, 2048, 4), np.uint8)
    rgba[500:1000, 700:1300] = (10, 20, 30, 255)
    out = preprocess_image(Image.fromarray(rgba, "RGBA"), crop_scale=1.0)
    small = np.asarray(Image.fromarray(rgba, "RGBA").resize((1024, 750), Image.LANCZOS))
    np.testing.assert_array_equal(np.asarray(out), _reference(small, 1.0))


def test_rgb_uses_rembg_callable():
    rgb = Image.fromarray(np.full((80, 100, 3), 128, np.uint8))
    calls = []

    def fake_rembg(im):
        calls.append(im.mode)
        mask = np.zeros((80, 100), np.uint8)
        mask[10:50, 20:40] = 255
        out = im.copy()
        out.putalpha(Image.fromarray(mask))
        return out
    out = preprocess_image(rgb, crop_scale=1.0, rembg=fake_rembg)
    assert calls == ["RGB"] and out.size == (38, 38)  # side 2*(39//2): odd sizes lose a pixel, as in the reference
    # an 'L' mask is accepted too; wrong outputs are rejected clearly
    out2 = preprocess_image(rgb, crop_scale=1.0, rembg=lambda im: fake_rembg(im).getchannel("A"))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))
    with pytest.raises(TypeError, match="background remover"):
        preprocess_image(rgb, rembg=lambda im: np.zeros((80, 100)))


def test_grabcut_fallback_on_real_photo():
    path = shared_data_path("images/gso_chicken_nesting_thumb0.jpg")
    with pytest.warns(RuntimeWarning, match="GrabCut"):
        out = preprocess_image(path)
    w, h = out.size
    assert w == h and 100 < w < 640
    arr = np.asarray(out).astype(int)
    # the composite has black where GrabCut found background: the crop border must be mostly black
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    assert (border.sum(-1) == 0).mean() > 0.5
    assert (arr.sum(-1) > 0).mean() > 0.2       # and a sizeable object in the middle


def test_modes(tmp_path):
    base = np.zeros((40, 40), np.uint8)
    base[10:30, 5:25] = 255
    for img in (Image.fromarray(base, "L"), Image.fromarray(np.stack([base, base], -1), "LA"),
                Image.fromarray(base).convert("P")):
        assert load_image(img).mode in ("RGB", "RGBA")
    la = preprocess_image(Image.fromarray(np.stack([base, base], -1), "LA"), crop_scale=1.0)
    assert la.size == (18, 18) and np.asarray(la).min() == 255
    # 16-bit grey is rescaled, not clipped
    i16 = Image.fromarray(base.astype(np.uint16) * 257)
    assert i16.mode == "I;16"
    i16.save(tmp_path / "g16.png")
    loaded = load_image(tmp_path / "g16.png")
    assert loaded.mode == "RGB" and np.asarray(loaded).max() == 255 and np.asarray(loaded)[0, 0, 0] == 0
    # palette with a transparent index keeps its transparency
    p = Image.fromarray(base).convert("P")
    p.info["transparency"] = 0
    assert load_image(p).mode == "RGBA"


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        preprocess_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        preprocess_image(tmp_path / "empty.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        preprocess_image(tmp_path / "notes.txt")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt|truncated|readable"):
        preprocess_image(tmp_path / "trunc.png")
    with pytest.raises(ValueError, match="directory"):
        preprocess_image(tmp_path)
    with pytest.raises(ValueError, match="no foreground"):
        preprocess_image(Image.new("RGBA", (32, 32), (255, 0, 0, 0)))
    with pytest.raises(TypeError):
        preprocess_image(np.zeros((8, 8, 3)))


def test_no_crop_keeps_the_framing_and_composites_on_black():
    """``crop_scale=None`` (a render with a known camera): same size, RGB·alpha on the background, nothing moved."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[10:30, 40:60, 3] = 255
    rgba[30:40, 5:20, 3] = 128
    out = np.asarray(preprocess_image(Image.fromarray(rgba, "RGBA"), crop_scale=None))
    assert out.shape == (64, 64, 3)
    f = rgba.astype(np.float64) / 255
    want = np.round(f[..., :3] * f[..., 3:] * 255)
    np.testing.assert_array_equal(out, want.astype(np.uint8))
    white = np.asarray(preprocess_image(Image.fromarray(rgba, "RGBA"), crop_scale=None, bg_color=(255, 255, 255)))
    np.testing.assert_array_equal(white[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(white[15, 45], rgba[15, 45, :3])


def test_no_crop_needs_a_square_image():
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[10:20, 10:20] = 255
    with pytest.raises(ValueError, match="square"):
        preprocess_image(Image.fromarray(rgba, "RGBA"), crop_scale=None)
    with pytest.raises(ValueError, match="crop_scale"):
        preprocess_image(Image.fromarray(rgba, "RGBA"), crop_scale=0)
