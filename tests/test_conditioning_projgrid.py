"""ProjGrid back-projection (PIXAL3D_SPEC §2.2): fixture parity, closed form, sparse helper."""
import math

import numpy as np
import pytest
import torch

from conftest import load_fixture
import torch.nn.functional as F

from pixal3d.conditioning.proj_grid import ProjGrid, bilinear_taps, gather_grid_features


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_projgrid_fixture():
    meta, t = load_fixture("px_projgrid")
    pg = ProjGrid(**meta["args"])
    assert torch.equal(pg.grid_points, t["param.grid_points"])
    assert torch.equal(pg.front_view_transform_matrix, t["param.front_view_transform_matrix"])
    out = pg(t["in.features_bhwc"], t["in.camera_angle_x"], t["in.distance"], t["in.mesh_scale"])
    assert out.shape == t["out.proj"].shape
    assert _rel(out, t["out.proj"]) < 1e-5
    # the BCHW path is the same computation
    out2 = pg(t["in.features_bhwc"].permute(0, 3, 1, 2), t["in.camera_angle_x"], t["in.distance"],
              t["in.mesh_scale"], BHWC=False)
    torch.testing.assert_close(out2, out)


def test_projgrid_closed_form_float64():
    # Closed form of §2.2 evaluated independently in float64 with a manual bilinear tap.
    r, s, fov, d, ms = 4, 64, 0.9, 2.3, 0.85
    pg = ProjGrid(r, s)
    h = w = 8
    fmap = torch.randn(1, h, w, 3)
    out = pg(fmap, torch.tensor([fov]), torch.tensor([d]), torch.tensor([ms]))[0].double()
    f_px = s / (2 * math.tan(fov / 2))
    fm = fmap[0].double().numpy()
    lin = np.linspace(-1, 1, r)
    for i in range(r):
        for j in range(r):
            for k in range(r):
                x, y, z = lin[i] / (2 * ms), lin[j] / (2 * ms), lin[k] / (2 * ms)
                depth = d - z
                u = s / 2 + f_px * x / depth
                v = s / 2 - f_px * y / depth
                # normalised -> feature-map pixel centres (align_corners=False), border clamp
                px = np.clip(((u + 0.5) / s) * w - 0.5, 0, w - 1)
                py = np.clip(((v + 0.5) / s) * h - 0.5, 0, h - 1)
                x0, y0 = int(np.floor(px)), int(np.floor(py))
                x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
                ax, ay = px - x0, py - y0
                ref = ((1 - ay) * ((1 - ax) * fm[y0, x0] + ax * fm[y0, x1]) +
                       ay * ((1 - ax) * fm[y1, x0] + ax * fm[y1, x1]))
                np.testing.assert_allclose(out[(i * r + j) * r + k].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_projgrid_sparse_helper_equals_dense_gather():
    torch.manual_seed(0)
    r = 6
    pg = ProjGrid(r, 128)
    fmap = torch.randn(2, 5, 8, 8)  # BCHW
    fov, dist, ms = torch.tensor([0.5, 1.1]), torch.tensor([2.2, 1.4]), torch.tensor([1.0, 0.7])
    dense = pg(fmap, fov, dist, ms, BHWC=False)
    coords = torch.cat([torch.cat([torch.full((n, 1), b), torch.randint(0, r, (n, 3))], 1)
                        for b, n in ((0, 30), (1, 17))]).int()
    coords = coords[torch.randperm(coords.shape[0])]  # any row order
    sparse = pg.project_coords(fmap, coords, fov, dist, ms, BHWC=False)
    ref = gather_grid_features(dense, coords, r)
    torch.testing.assert_close(sparse, ref, rtol=0, atol=1e-6)
    c = coords[0].long()
    torch.testing.assert_close(ref[0], dense[c[0], (c[1] * r + c[2]) * r + c[3]])


def test_projgrid_token_order_is_x_major():
    # A feature map that encodes the pixel column: tokens with larger x (i index) must see larger u.
    pg = ProjGrid(3, 64)
    col = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 8, 8, 1)
    out = pg(col, 0.8, 2.0, 1.0)[0, :, 0].view(3, 3, 3)
    assert (out[2] > out[0]).all()                 # +x -> right
    row = torch.arange(8.0).view(1, 8, 1, 1).expand(1, 8, 8, 1)
    out = pg(row, 0.8, 2.0, 1.0)[0, :, 0].view(3, 3, 3)
    assert (out[:, 2] < out[:, 0]).all()           # +y -> up (smaller row index)


def test_projgrid_errors():
    pg = ProjGrid(4, 64)
    with pytest.raises(ValueError, match="transform_matrix"):
        pg(torch.zeros(1, 4, 4, 2), 0.5, 2.0, 1.0, transform_matrix=torch.eye(4))
    with pytest.raises(ValueError, match="one value per batch"):
        pg(torch.zeros(2, 4, 4, 2), torch.tensor([0.5, 0.6, 0.7]), 2.0, 1.0)
    with pytest.raises(ValueError, match="coords"):
        pg.project_coords(torch.zeros(1, 4, 4, 2), torch.tensor([[0, 4, 0, 0]]), 0.5, 2.0)
    with pytest.raises(ValueError, match="radians"):
        pg(torch.zeros(1, 4, 4, 2), 45.0, 2.0, 1.0)
    with pytest.raises(ValueError):
        ProjGrid(1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_bilinear_taps_reproduce_grid_sample(dtype):
    """The four taps and weights, summed, give grid_sample (bilinear, border, align_corners=False), including points
    outside the map (border clamp), on the last row/column and exactly on pixel centres."""
    g = torch.Generator().manual_seed(0)
    h, w, c = 7, 9, 5
    fmap = torch.randn(1, c, h, w, generator=g, dtype=torch.float64)
    grid = torch.cat([torch.rand(200, 2, generator=g, dtype=torch.float64) * 3 - 1.5,
                      torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1 - 1 / w, 1 - 1 / h], [-1 + 1 / w, 0.0]],
                                   dtype=torch.float64)]).to(dtype)
    # reference: the same rounded inputs, sampled in float64 (CPU grid_sample does bf16 coordinate maths in bf16;
    # CUDA, which the 16-bit path serves, does it in float32 like bilinear_taps)
    ref = F.grid_sample(fmap.to(dtype).double(), grid.double().view(1, -1, 1, 2), mode="bilinear",
                        padding_mode="border", align_corners=False)[0, :, :, 0].T
    pix, wts = bilinear_taps(grid, h, w)
    assert pix[..., 0].max() < h and pix[..., 1].max() < w and pix.min() >= 0
    torch.testing.assert_close(wts.sum(1), torch.ones_like(wts[:, 0]), rtol=0, atol=1e-6)
    vals = fmap[0].permute(1, 2, 0)[pix[..., 0], pix[..., 1]].to(dtype).to(wts.dtype)
    got = (vals * wts[..., None]).sum(1).to(dtype)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_project_coords_at_equals_project_coords_on_the_full_map(dtype):
    """A feature map given only as a per-pixel function (how NAF is evaluated) projects like the built map, with one
    camera per batch item and each distinct tap computed once."""
    g = torch.Generator().manual_seed(1)
    pg = ProjGrid(8, 32)
    fmap = torch.randn(2, 6, 20, 20, generator=g, dtype=torch.float64).to(dtype)
    coords = torch.cat([torch.cat([torch.full((40, 1), b), torch.randint(0, 8, (40, 3), generator=g)], 1)
                        for b in (1, 0)]).int()
    cam = (torch.tensor([0.6, 1.1]), torch.tensor([1.4, 0.9]), torch.tensor([1.0, 0.8]))
    ref = pg.project_coords(fmap, coords, *cam, BHWC=False)
    calls = []

    def rows(px):
        calls.append(px)
        return fmap[px[:, 0], :, px[:, 1], px[:, 2]]

    got = pg.project_coords_at(rows, coords, *cam, batch=2, map_size=(20, 20), dtype=dtype, device="cpu")
    assert got.dtype == dtype and got.shape == ref.shape
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    (px,) = calls
    assert len(torch.unique(px, dim=0)) == len(px) <= 4 * len(coords)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_project_coords_at_matches_cuda_grid_sample(dtype):
    """16-bit maps on CUDA, where grid_sample does its coordinate maths in float32 as bilinear_taps does."""
    g = torch.Generator().manual_seed(2)
    pg = ProjGrid(64, 1024).cuda()
    fmap = torch.randn(1, 16, 1024, 1024, generator=g).to("cuda", dtype)
    coords = torch.cat([torch.zeros(3000, 1, dtype=torch.long), torch.randint(0, 64, (3000, 3), generator=g)], 1)
    coords = coords.int().cuda()
    cam = (0.4, 2.9, 0.95)
    ref = pg.project_coords(fmap, coords, *cam, BHWC=False)
    got = pg.project_coords_at(lambda px: fmap[px[:, 0], :, px[:, 1], px[:, 2]], coords, *cam, batch=1,
                               map_size=(1024, 1024), dtype=dtype, device="cuda")
    # both round once to 16 bits from a float32 sum of the same four taps
    torch.testing.assert_close(got.float(), ref.float(), rtol=1e-2, atol=1e-2)
    assert ((got.float() - ref.float()).abs() > 0).float().mean() < 0.05
