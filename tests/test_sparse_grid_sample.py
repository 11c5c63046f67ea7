"""grid_sample_3d (TRELLIS2_SPEC.md §1.9) vs a brute-force float64 reference and dense ``F.grid_sample``."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from pixal3d.sparse import grid_sample_3d
from sparse_helpers import dense_of, random_sparse_coords


def _brute_force(feats, coords, dims, grid, mode):
    active = {tuple(r): i for i, r in enumerate(coords.tolist())}
    B, L, _ = grid.shape
    out = torch.zeros(B, L, feats.shape[1], dtype=torch.float64)
    for b in range(B):
        for l in range(L):
            q = grid[b, l].tolist()
            if mode == "nearest":
                v = tuple(math.floor(a) for a in q)
                i = active.get((b, *v))
                if i is not None and all(0 <= a < d for a, d in zip(v, dims)):
                    out[b, l] = feats[i]
                continue
            base = [math.floor(a - 0.5) for a in q]
            acc, wsum = torch.zeros(feats.shape[1], dtype=torch.float64), 0.0
            for off in itertools.product((0, 1), repeat=3):
                v = [bb + o for bb, o in zip(base, off)]
                i = active.get((b, *v))
                if i is None or not all(0 <= a < d for a, d in zip(v, dims)):
                    continue
                w = math.prod(1 - abs(a - (c + 0.5)) for a, c in zip(q, v))
                acc += w * feats[i]
                wsum += w
            out[b, l] = acc / max(wsum, 1e-12)
    return out


@pytest.mark.parametrize("mode", ["trilinear", "nearest"])
def test_matches_brute_force(mode):
    gen = torch.Generator().manual_seed(7)
    dims = (5, 6, 4)
    coords = random_sparse_coords(2, dims, 0.4, gen)
    feats = torch.randn(coords.shape[0], 3, generator=gen, dtype=torch.float64)
    grid = torch.rand(2, 60, 3, generator=gen, dtype=torch.float64) * torch.tensor([6.0, 7.0, 5.0]) - 0.5
    out = grid_sample_3d(feats, coords, torch.Size([2, 3, *dims]), grid, mode)
    ref = _brute_force(feats, coords, dims, grid, mode)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_fully_active_grid_equals_dense_border_sampling():
    # with every voxel active, renormalising over in-grid voxels equals border clamping (separable weights)
    gen = torch.Generator().manual_seed(8)
    dims = (4, 5, 3)
    coords = random_sparse_coords(1, dims, 1.1, gen)
    feats = torch.randn(coords.shape[0], 2, generator=gen, dtype=torch.float64)
    q = torch.rand(1, 50, 3, generator=gen, dtype=torch.float64) * torch.tensor(dims, dtype=torch.float64)
    out = grid_sample_3d(feats, coords, (1, 2, *dims), q)
    dense = dense_of(feats, coords, 1, dims)  # [1, C, X, Y, Z]
    norm = 2 * q / torch.tensor(dims, dtype=torch.float64) - 1  # align_corners=False: voxel centres at i + 0.5
    ref = F.grid_sample(dense, norm.flip(-1).view(1, 1, 1, 50, 3), mode="bilinear", padding_mode="border",
                        align_corners=False)
    torch.testing.assert_close(out, ref.view(1, 2, 50).permute(0, 2, 1))


def test_voxel_centre_returns_voxel_and_empty_space_is_zero():
    coords = torch.tensor([[0, 1, 1, 1], [0, 2, 1, 1]], dtype=torch.int32)
    feats = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    grid = torch.tensor([[[1.5, 1.5, 1.5], [2.0, 1.5, 1.5], [1.5, 1.9, 1.5], [6.0, 6.0, 6.0]]], dtype=torch.float64)
    out = grid_sample_3d(feats, coords, (1, 1, 8, 8, 8), grid)[0, :, 0]
    # centre -> exact; midway -> average; off-centre in y with only active neighbours along x -> still 1 (renorm)
    assert out.tolist() == pytest.approx([1.0, 2.0, 1.0, 0.0])


def test_gradient_flows_to_feats():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32)
    feats = torch.tensor([[1.0], [3.0]], requires_grad=True)
    out = grid_sample_3d(feats, coords, (1, 1, 2, 1, 1), torch.tensor([[[1.25, 0.5, 0.5]]]))
    out.sum().backward()
    assert feats.grad.view(-1).tolist() == pytest.approx([0.25, 0.75])


def test_errors():
    c = torch.zeros(1, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="mode"):
        grid_sample_3d(torch.zeros(1, 1), c, (1, 1, 1, 1, 1), torch.zeros(1, 1, 3), mode="cubic")
    with pytest.raises(ValueError, match=r"\[B, L, 3\]"):
        grid_sample_3d(torch.zeros(1, 1), c, (1, 1, 1, 1, 1), torch.zeros(1, 3))
    with pytest.raises(TypeError):
        grid_sample_3d(torch.zeros(1, 1), c, (1, 1, 1, 1, 1), torch.zeros(1, 1, 3, dtype=torch.long))
