"""Cheap validation of sparse coordinates (TRELLIS2_SPEC.md §1.2).

The reference only asserts these invariants in debug mode and otherwise produces silently wrong results (wrong
layout, wrong neighbours), so they are checked here with clear errors instead.
"""
import torch

#: Exclusive upper bound on a voxel coordinate. The reference comment says [0, 1023]; larger grids are allowed as
#: long as the hash keys b*X*Y*Z + ... still fit in int64.
MAX_COORD = 2 ** 20


def _rows(mask: torch.Tensor, limit: int = 5) -> str:
    idx = torch.nonzero(mask.reshape(-1)).reshape(-1)[:limit].tolist()
    more = " ..." if int(mask.sum()) > limit else ""
    return f"{idx}{more}"


def check_coords(coords: torch.Tensor, n_rows: int = None, batch_size: int = None,
                 allow_empty_batches: bool = False) -> None:
    """Validates sparse coordinates ``[N, 4]`` int32 rows ``(batch, x, y, z)``.

    Args:
        coords: the coordinate tensor.
        n_rows: expected number of rows (the feature count), or None.
        batch_size: the declared batch size, or None for ``max(batch) + 1``.
        allow_empty_batches: when False, every batch index in ``[0, B)`` must own at least one row.

    Raises:
        TypeError: ``coords`` is not a tensor or not int32.
        ValueError: wrong shape, rows/feature mismatch, unordered or non-contiguous batches, gaps in batch indices,
            negative or too-large coordinates. The message lists the first offending rows and the fix.
    """
    if not isinstance(coords, torch.Tensor):
        raise TypeError(f"coords must be a torch.Tensor [N, 4] int32, got {type(coords).__name__}")
    if coords.dtype != torch.int32:
        raise TypeError(f"coords must be int32 (batch, x, y, z), got {coords.dtype}; convert with coords.int()")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must have shape [N, 4] with rows (batch, x, y, z), got {tuple(coords.shape)}")
    if n_rows is not None and coords.shape[0] != n_rows:
        raise ValueError(f"feats has {n_rows} rows but coords has {coords.shape[0]}; they must describe the same "
                         "voxels row by row")
    n = coords.shape[0]
    if n == 0:
        if batch_size is None:
            raise ValueError("empty coords: a SparseTensor needs at least one voxel, or an explicit shape")
        return
    b = coords[:, 0]
    bad = coords < 0
    if bool(bad.any()):
        raise ValueError(f"negative coordinates in rows {_rows(bad.any(1))}; batch indices and voxel coordinates "
                         "must be >= 0 (shift the grid so that its minimum corner is 0)")
    bad = coords[:, 1:] >= MAX_COORD
    if bool(bad.any()):
        raise ValueError(f"coordinates >= {MAX_COORD} in rows {_rows(bad.any(1))}; voxel coordinates must lie in "
                         f"[0, {MAX_COORD})")
    if n > 1:
        step = b[1:] - b[:-1]
        bad = step < 0
        if bool(bad.any()):
            raise ValueError(f"batch indices decrease at rows {_rows(bad)} (row i+1 has a smaller batch than row i); "
                             "rows must be grouped by batch in increasing batch order (sort by coords[:, 0], "
                             "stably)")
        if not allow_empty_batches:
            bad = step > 1
            if bool(bad.any()):
                raise ValueError(f"gap in batch indices after rows {_rows(bad)}: some batch index between them owns "
                                 "no voxel; renumber the batches to 0..B-1 without gaps")
    first, last = int(b[0]), int(b[-1])
    if not allow_empty_batches and first != 0:
        raise ValueError(f"batch indices start at {first} (row 0), so batches 0..{first - 1} are empty; "
                         "renumber the batches to start at 0")
    if batch_size is not None:
        if last >= batch_size:
            raise ValueError(f"batch index {last} (row {n - 1}) is >= the declared batch size {batch_size}")
        if not allow_empty_batches and last != batch_size - 1:
            raise ValueError(f"declared batch size {batch_size} but the last batch index is {last}: batches "
                             f"{last + 1}..{batch_size - 1} are empty")


def check_unique(coords: torch.Tensor) -> None:
    """Raises ValueError if two rows of ``coords [N, 4]`` are equal (costs a sort; used on user-facing inputs).

    Raises:
        ValueError: naming the first duplicated rows and how to remove them.
    """
    if coords.shape[0] < 2:
        return
    c = coords.long()
    key = ((c[:, 0] * MAX_COORD + c[:, 1]) * MAX_COORD + c[:, 2]) * MAX_COORD + c[:, 3] \
        if int(c[:, 0].max()) < 8 else None
    if key is None:  # batch index too large for a single int64 key: fall back to unique over rows
        uniq, inverse, counts = torch.unique(c, dim=0, return_inverse=True, return_counts=True)
        dup = counts[inverse] > 1
    else:
        order = torch.argsort(key)
        sk = key[order]
        same = sk[1:] == sk[:-1]
        dup = torch.zeros(c.shape[0], dtype=torch.bool, device=c.device)
        dup[order[1:][same]] = True
        dup[order[:-1][same]] = True
    if bool(dup.any()):
        raise ValueError(f"duplicate voxel coordinates in rows {_rows(dup)}; each (batch, x, y, z) may appear only "
                         "once (merge duplicates, e.g. with torch.unique(coords, dim=0, return_inverse=True) and "
                         "a scatter-reduce of their features)")
