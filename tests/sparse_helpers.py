"""Random sparse inputs shared by the tests/test_sparse_*.py files."""
import torch


def random_sparse_coords(batch: int, res, density: float, gen: torch.Generator, min_per_batch: int = 1):
    """Unique, batch-sorted int32 coords ``[N, 4]`` with about ``density`` of a ``res`` grid active per sample."""
    res = (res, res, res) if isinstance(res, int) else tuple(res)
    out = []
    for b in range(batch):
        occ = torch.rand(res, generator=gen) < density
        xyz = torch.nonzero(occ)
        if xyz.shape[0] < min_per_batch:
            xyz = torch.tensor([[0, 0, 0]])
        bcol = torch.full((xyz.shape[0], 1), b)
        out.append(torch.cat([bcol, xyz], 1))
    return torch.cat(out, 0).to(torch.int32)


def shuffle_within_batches(coords: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random row permutation that keeps batches contiguous and ordered (coords need not be xyz-sorted)."""
    perm = []
    for b in coords[:, 0].unique().tolist():
        rows = torch.nonzero(coords[:, 0] == b).reshape(-1)
        perm.append(rows[torch.randperm(rows.numel(), generator=gen)])
    return torch.cat(perm)


def dense_of(feats: torch.Tensor, coords: torch.Tensor, batch: int, dims) -> torch.Tensor:
    """Scatter ``feats [N, C]`` into a zero dense ``[B, C, X, Y, Z]`` tensor (independent of SparseTensor)."""
    X, Y, Z = dims
    out = torch.zeros(batch, X, Y, Z, feats.shape[1], dtype=feats.dtype)
    c = coords.long()
    out[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = feats
    return out.permute(0, 4, 1, 2, 3)


def gather_dense(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Rows ``dense[b, :, x, y, z]`` for every coordinate -> ``[N, C]``."""
    c = coords.long()
    return dense.permute(0, 2, 3, 4, 1)[c[:, 0], c[:, 1], c[:, 2], c[:, 3]]
