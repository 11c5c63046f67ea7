"""Loss helpers of the VAE trainers (TRELLIS2_SPEC §5.4, reference ``utils/loss_utils.py``): KL, SSIM, optional LPIPS,
random training cameras, and the probe that decides whether render losses can run.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["kl_divergence", "ssim", "gaussian_window", "sample_training_camera", "lpips_model",
           "differentiable_renderer_status", "dice_loss"]


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``0.5·mean(μ² + exp(logσ²) − logσ² − 1)`` over all elements (TRELLIS2_SPEC §5.4), float32 scalar."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * torch.mean(mean.pow(2) + logvar.exp() - logvar - 1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``1 − 2·Σ(p·t)/(Σp + Σt)`` with ``p = sigmoid(logits)``, over all elements (TRELLIS v1 SS-VAE ``dice``)."""
    p = torch.sigmoid(logits.float())
    t = target.float()
    return 1 - (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 2-D Gaussian ``[size, size]``."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).to(dtype)


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5, c1: float = 0.01 ** 2,
         c2: float = 0.03 ** 2) -> torch.Tensor:
    """Mean SSIM of images ``[B, C, H, W]`` in [0, 1] (Gaussian window 11, σ 1.5, C1 = 0.01², C2 = 0.03²; zero
    padding, as the reference ``loss_utils.ssim``). The loss term is ``1 − ssim``.

    Raises:
        ValueError: shapes differ or are not 4-D.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two [B, C, H, W] tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    C = a.shape[1]
    w = gaussian_window(window_size, sigma, a.dtype, a.device).expand(C, 1, window_size, window_size)
    pad = window_size // 2
    mu_a = F.conv2d(a, w, padding=pad, groups=C)
    mu_b = F.conv2d(b, w, padding=pad, groups=C)
    s_aa = F.conv2d(a * a, w, padding=pad, groups=C) - mu_a ** 2
    s_bb = F.conv2d(b * b, w, padding=pad, groups=C) - mu_b ** 2
    s_ab = F.conv2d(a * b, w, padding=pad, groups=C) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return m.mean()


def sample_training_camera(radius_range=(2.0, 100.0), generator: Optional[torch.Generator] = None) -> dict:
    """A random training camera (TRELLIS2_SPEC §5.4): ``k ~ U(1/r_max², 1/r_min²)``, ``r = 1/√k``,
    ``fov = 2·asin(0.5/r)`` (radians), origin ``r·normalize(randn(3))`` looking at 0 with up +z,
    ``near ~ U(r − 1, r)``, ``far = near + 2``.

    Returns:
        ``{'camera': pixal3d.renderers.Camera, 'radius', 'fov', 'origin' [3] float64}``.

    Raises:
        ValueError: ``radius_range`` not ``0.5 < r_min <= r_max`` (the unit cube must fit the view).
    """
    from pixal3d.renderers import Camera, extrinsics_look_at, intrinsics_from_fov
    r_min, r_max = float(radius_range[0]), float(radius_range[1])
    if not 0.5 < r_min <= r_max:
        raise ValueError(f"radius_range must satisfy 0.5 < r_min <= r_max, got {radius_range}")
    u = torch.rand(2, generator=generator, dtype=torch.float64)
    k = 1 / r_max ** 2 + (1 / r_min ** 2 - 1 / r_max ** 2) * u[0]
    r = float(1 / torch.sqrt(k))
    fov = 2 * math.asin(0.5 / r)
    d = torch.randn(3, generator=generator, dtype=torch.float64)
    d = d / d.norm().clamp_min(1e-12)
    origin = r * d
    up = [0.0, 0.0, 1.0] if abs(float(d[2])) < 0.999 else [0.0, 1.0, 0.0]
    near = max(1e-3, r - 1 + float(u[1]))
    cam = Camera(extrinsics_look_at(origin.tolist(), [0.0, 0.0, 0.0], up), intrinsics_from_fov(fov, fov), near,
                 near + 2)
    return {"camera": cam, "radius": r, "fov": fov, "origin": origin}


def lpips_model(device):
    """LPIPS(vgg) from the ``lpips`` package on ``device`` (frozen), or ``None`` when the package is missing."""
    try:
        import lpips
    except ImportError:
        return None
    model = lpips.LPIPS(net="vgg", verbose=False).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def differentiable_renderer_status(device) -> tuple:
    """Whether :class:`pixal3d.renderers.MeshRenderer` propagates gradients to vertex positions on ``device``.

    Renders one triangle whose vertices require grad and checks that the depth image has a gradient path. Render
    losses are only computed when this holds; they are never approximated.

    Returns:
        ``(ok: bool, reason: str)``.
    """
    try:
        from pixal3d.renderers import MeshRenderer, RenderMesh, extrinsics_look_at, intrinsics_from_fov, Camera
        backend = "nvdiffrast" if torch.device(device).type == "cuda" else "cpu"
        from pixal3d.renderers import nvdiffrast_available
        if backend == "nvdiffrast" and not nvdiffrast_available():
            backend = "cpu"
        v = torch.tensor([[-0.3, -0.3, 0.0], [0.3, -0.3, 0.0], [0.0, 0.3, 0.0]], dtype=torch.float32,
                         requires_grad=True)
        f = torch.tensor([[0, 1, 2]])
        cam = Camera(extrinsics_look_at([0, 0, 2.0], [0, 0, 0], [0, 1, 0]), intrinsics_from_fov(0.8, 0.8), 1.0, 3.0)
        out = MeshRenderer(8, backend=backend).render(RenderMesh(v, f), cam, ("depth", "normal"))
    except Exception as e:  # noqa: BLE001 - any failure means "cannot render differentiably here"
        return False, f"the mesh renderer failed on a probe triangle ({type(e).__name__}: {e})"
    if out["depth"].grad_fn is None:
        return False, (f"pixal3d.renderers.MeshRenderer ({backend} backend) detaches vertex positions, so rendered "
                       f"mask/depth/normal carry no gradient (a differentiable rasterizer such as nvdiffrast with "
                       f"a gradient-preserving RenderMesh is needed)")
    return True, (f"MeshRenderer ({backend}) is differentiable in depth/normal w.r.t. vertex positions, with the "
                  f"visibility held fixed; the mask term carries no gradient (no antialiasing)")
