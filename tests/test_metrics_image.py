"""Image metrics against analytic values and a float64 loop implementation (pixal3d.evaluation.image)."""
import math

import numpy as np
import pytest
import torch

from pixal3d.evaluation import image as I


def _ssim_loops(x, y, L=1.0, size=11, sigma=1.5, pad=0):
    """Direct per-position float64 SSIM of single-channel images (the textbook formula)."""
    r = np.arange(size) - size // 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    w = np.outer(g, g)
    if pad:
        x = np.pad(x, pad)
        y = np.pad(y, pad)
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    H, W = x.shape
    vals = []
    for i in range(H - size + 1):
        for j in range(W - size + 1):
            px, py = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_psnr_known_values_and_mask():
    rng = np.random.default_rng(0)
    y = rng.uniform(0.2, 0.8, (8, 9, 3))
    assert I.psnr(y + 0.1, y) == pytest.approx(20.0, abs=1e-9)          # MSE = 0.01
    assert I.psnr(y, y) == math.inf
    assert I.psnr((y * 255).round(), (y * 255).round() + 5, data_range=255) == pytest.approx(
        10 * math.log10(255 ** 2 / 25))
    x = y.copy()
    x[:4] += 0.5  # error only in the top half
    m = np.zeros((8, 9), bool)
    m[4:] = True
    assert I.psnr(x, y, mask=m) == math.inf
    assert I.psnr(x, y, mask=~m) == pytest.approx(10 * math.log10(1 / 0.25))
    assert math.isnan(I.psnr(x, y, mask=np.zeros((8, 9))))
    # batch and channel-first layouts
    b = np.stack([y + 0.1, y + 0.01])
    out = I.psnr(b, np.stack([y, y]))
    assert out.shape == (2,) and np.allclose(out, [20, 40])
    tb = torch.from_numpy(b).permute(0, 3, 1, 2)
    assert np.allclose(I.psnr(tb, torch.from_numpy(np.stack([y, y])).permute(0, 3, 1, 2), channel_axis=1), [20, 40])
    with pytest.raises(ValueError):
        I.psnr(y, y[:, :8])
    with pytest.raises(ValueError):
        I.psnr(y, y, mask=np.ones((8, 8)))


def test_ssim_identical_is_one_and_symmetric():
    rng = np.random.default_rng(1)
    x = rng.random((24, 20, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    assert I.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert I.ssim(x, y) == pytest.approx(I.ssim(y, x), abs=1e-12)
    assert 0 < I.ssim(x, y) < 1


def test_ssim_matches_loop_reference_valid_and_same():
    rng = np.random.default_rng(2)
    x = rng.random((17, 19))
    y = np.clip(0.6 * x + 0.2 + rng.normal(0, 0.05, x.shape), 0, 1)
    assert I.ssim(x, y, channel_axis=None) == pytest.approx(_ssim_loops(x, y), abs=1e-12)
    assert I.ssim(x, y, channel_axis=None, padding="same") == pytest.approx(_ssim_loops(x, y, pad=5), abs=1e-12)
    # multi-channel = mean over channels
    xc = np.stack([x, y, x[::-1]], -1)
    yc = np.stack([y, x, y[::-1]], -1)
    ref = np.mean([_ssim_loops(xc[..., c], yc[..., c]) for c in range(3)])
    assert I.ssim(xc, yc) == pytest.approx(ref, abs=1e-12)
    assert I.ssim(torch.from_numpy(xc).permute(2, 0, 1)[None], torch.from_numpy(yc).permute(2, 0, 1)[None],
                  channel_axis=1)[0] == pytest.approx(ref, abs=1e-12)


def test_ssim_constant_images_luminance_only():
    a, b = 0.3, 0.7
    c1 = 0.01 ** 2
    expect = (2 * a * b + c1) / (a * a + b * b + c1)  # variances are 0 -> the structure term is C2/C2 = 1
    assert I.ssim(np.full((12, 12, 1), a), np.full((12, 12, 1), b)) == pytest.approx(expect, abs=1e-12)


def test_ssim_against_skimage_if_installed():
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed here")
    rng = np.random.default_rng(3)
    x = rng.random((32, 30, 3))
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    ref = skm.structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
    assert I.ssim(x, y) == pytest.approx(ref, abs=1e-6)


def test_ssim_errors_and_window():
    w = I.gaussian_window(11, 1.5)
    assert w.shape == (11, 11) and float(w.sum()) == pytest.approx(1.0) and w[5, 5] == w.max()
    with pytest.raises(ValueError):
        I.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    with pytest.raises(ValueError):
        I.ssim(np.zeros((12, 12, 3)), np.zeros((12, 12, 3)), padding="reflect")
    with pytest.raises(ValueError):
        I.gaussian_window(10)


def test_normal_metrics():
    H, W = 6, 5
    n1 = np.zeros((H, W, 3)); n1[..., 2] = 1          # +z
    n2 = np.zeros((H, W, 3)); n2[..., 0] = 1          # +x
    e1, e2 = (n1 + 1) / 2, (n2 + 1) / 2
    assert I.normal_angular_error(e1, e2) == pytest.approx(90.0)
    assert I.normal_angular_error(e1, e1) == pytest.approx(0.0, abs=1e-6)
    # encoded difference is 0.5 on two channels -> MSE = 2·0.25/3
    assert I.normal_psnr(e1, e2) == pytest.approx(10 * math.log10(3 / 0.5))
    m = np.zeros((H, W)); m[0, 0] = 1
    e3 = e1.copy(); e3[1:] = e2[1:]
    assert I.normal_psnr(e3, e1, mask=m) == math.inf
    with pytest.raises(ValueError):
        I.normal_psnr(e1[..., :2], e2[..., :2])


def test_lpips_clear_error_or_value():
    x = np.random.default_rng(0).random((64, 64, 3))
    try:
        d_same = I.lpips_distance(x, x)
    except I.LPIPSUnavailable as exc:
        assert "lpips" in str(exc).lower()
        pytest.skip(f"LPIPS unavailable here (no package or no offline backbone weights): {exc}")
    assert d_same == pytest.approx(0.0, abs=1e-6)
    assert I.lpips_distance(x, 1 - x) > 0.1


def test_clip_score_optional_dependency():
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="open_clip"):
            I.clip_score(np.zeros((32, 32, 3)), "a chair")
        pytest.skip("open_clip is not installed; only the clear ImportError was checked")
    pytest.skip("open_clip is installed but its weights need network access; not exercised in unit tests")
