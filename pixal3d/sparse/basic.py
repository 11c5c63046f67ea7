"""Sparse voxel tensors (TRELLIS2_SPEC.md §1.2, §1.3).

``SparseTensor`` adds integer voxel coordinates ``(batch, x, y, z)`` per token to a :class:`VarLenTensor`, plus a
per-resolution *spatial cache* shared by every tensor derived through :meth:`SparseTensor.replace`. That sharing is
what lets a VAE decoder reuse the encoder's structure (teacher forcing, texturing), so it must not be broken by
copies.
"""
from fractions import Fraction
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from . import config
from .checks import check_coords, check_unique as _check_unique_rows
from .varlen import VarLenTensor, varlen_cat, varlen_unbind, _batch_index_list, _layout_from_lengths, _parse_to_args

__all__ = ["VarLenTensor", "SparseTensor", "varlen_cat", "varlen_unbind", "sparse_cat", "sparse_unbind"]

Scale = Tuple[Fraction, Fraction, Fraction]
UNIT_SCALE: Scale = (Fraction(1), Fraction(1), Fraction(1))


class SparseTensor(VarLenTensor):
    """Sparse voxel features with integer coordinates (TRELLIS2_SPEC.md §1.2–1.3).

    Args:
        feats: ``[N, C, ...]`` features, any float dtype.
        coords: ``[N, 4]`` int32 rows ``(batch, x, y, z)``; rows of one batch element contiguous, batches in
            increasing order starting at 0 without gaps, coordinates in ``[0, 2**20)``.
        shape: optional ``torch.Size([B, C, ...])``; computed as ``[max(batch)+1, *feats.shape[1:]]`` otherwise.
        scale: resolution level as three ``Fraction``s (1 = finest input level; downsampling multiplies it).
        spatial_cache: the dict ``{str(scale): {key: value}}`` to share (see :meth:`replace`).
        check: validate ``coords`` (cheap O(N) checks); internal operators that build coordinates pass False.
        check_unique: also reject duplicate coordinates (costs a sort; on by default when ``SPARSE_DEBUG=1``).

    Raises:
        TypeError/ValueError: from :func:`pixal3d.sparse.checks.check_coords` naming the offending rows.
    """

    def __init__(self, feats: torch.Tensor, coords: torch.Tensor, shape: Optional[Sequence[int]] = None, *,
                 scale: Optional[Scale] = None, spatial_cache: Optional[dict] = None, check: bool = True,
                 check_unique: bool = False):
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"feats must be a torch.Tensor [N, C...], got {type(feats).__name__}")
        if feats.dim() < 1:
            raise ValueError("feats must have a row dimension: shape [N, C...]")
        if shape is not None:
            shape = torch.Size(shape)
        if check:
            check_coords(coords, feats.shape[0], None if shape is None else shape[0])
            if check_unique or config.debug():
                _check_unique_rows(coords)
        elif coords.shape[0] != feats.shape[0]:
            raise ValueError(f"feats has {feats.shape[0]} rows but coords has {coords.shape[0]}")
        self.feats = feats
        self.coords = coords
        self._shape = shape
        self._scale = UNIT_SCALE if scale is None else tuple(Fraction(s) for s in scale)
        self._spatial_cache = {} if spatial_cache is None else spatial_cache

    # ---------------------------------------------------------------- construction helpers
    @staticmethod
    def from_tensor_list(feats_list: List[torch.Tensor], coords_list: List[torch.Tensor]) -> "SparseTensor":
        """Builds a batch from per-sample ``feats [N_b, C]`` and ``coords [N_b, 3 or 4]`` (batch column rewritten)."""
        if len(feats_list) != len(coords_list):
            raise ValueError("from_tensor_list needs as many coordinate tensors as feature tensors")
        coords = []
        for i, c in enumerate(coords_list):
            xyz = c[:, -3:].to(torch.int32)
            coords.append(torch.cat([torch.full_like(xyz[:, :1], i), xyz], 1))
        return SparseTensor(torch.cat(feats_list, 0), torch.cat(coords, 0))

    def to_tensor_list(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per-sample ``(feats, coords)`` views."""
        return [self.feats[s] for s in self.layout], [self.coords[s] for s in self.layout]

    def validate(self) -> "SparseTensor":
        """Full check including duplicate coordinates (a sort); returns ``self``. Raises ValueError/TypeError."""
        check_coords(self.coords, self.feats.shape[0], self.shape[0], allow_empty_batches=True)
        _check_unique_rows(self.coords)
        return self

    # ---------------------------------------------------------------- spatial cache (§1.3)
    def register_spatial_cache(self, key: str, value) -> None:
        """Stores ``value`` under ``key`` at this tensor's resolution level (shared with ``replace`` copies)."""
        self._spatial_cache.setdefault(str(self._scale), {})[key] = value

    def get_spatial_cache(self, key: Optional[str] = None):
        """The value for ``key`` at this level (None if absent), or the whole per-level dict when ``key`` is None."""
        level = self._spatial_cache.get(str(self._scale), {})
        return level if key is None else level.get(key)

    def clear_spatial_cache(self) -> None:
        """Detaches this tensor from its shared cache (a fresh empty dict)."""
        self._spatial_cache = {}

    def _get(self, key):
        return self.get_spatial_cache(key)

    def _put(self, key, value):
        self.register_spatial_cache(key, value)

    # ---------------------------------------------------------------- geometry
    @property
    def shape(self) -> torch.Size:
        """``[B, *feats.shape[1:]]``."""
        if self._shape is None:
            b = int(self.coords[:, 0].max()) + 1 if self.coords.shape[0] else 0
            self._shape = torch.Size([b, *self.feats.shape[1:]])
        return self._shape

    @property
    def layout(self) -> List[slice]:
        """One slice per batch element, from ``bincount(coords[:, 0])``; cached at this level."""
        layout = self.get_spatial_cache("layout")
        if layout is None:
            counts = torch.bincount(self.coords[:, 0].long(), minlength=self.shape[0])
            layout = _layout_from_lengths(counts.tolist())
            self.register_spatial_cache("layout", layout)
        return layout

    @property
    def spatial_shape(self) -> torch.Size:
        """``coords[:, 1:].max(0) + 1`` over the whole batch (cached under ``shape`` like the reference)."""
        s = self.get_spatial_cache("shape")
        if s is None:
            s = torch.Size((self.coords[:, 1:].max(0)[0] + 1).tolist())
            self.register_spatial_cache("shape", s)
        return s

    # ---------------------------------------------------------------- derivation
    def replace(self, feats: torch.Tensor, coords: Optional[torch.Tensor] = None) -> "SparseTensor":
        """New features (and optionally coordinates at the same level), sharing ``_scale`` and the SAME
        ``_spatial_cache`` dict (load-bearing: §1.3).

        New ``coords`` must describe the same voxel set level (the cached layout/neighbour maps are reused); only
        their shape is checked here.

        Raises:
            ValueError: row counts of ``feats``/``coords`` differ from the tensor's.
        """
        if coords is None:
            coords = self.coords
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"replace(): feats has {feats.shape[0]} rows but coords has {coords.shape[0]}")
        out = SparseTensor.__new__(SparseTensor)
        out.feats = feats
        out.coords = coords
        out._shape = torch.Size([self._shape[0], *feats.shape[1:]]) if self._shape is not None else None
        out._scale = self._scale
        out._spatial_cache = self._spatial_cache
        return out

    def to(self, *args, **kwargs) -> "SparseTensor":
        """Like ``torch.Tensor.to``: the device applies to feats and coords, the dtype to feats only."""
        device, dtype, extra = _parse_to_args(args, dict(kwargs))
        feats = self.feats.to(device=device, dtype=dtype, **extra)
        coords = self.coords.to(device=device, **extra) if device is not None else self.coords
        return self.replace(feats, coords)

    def detach(self) -> "SparseTensor":
        return self.replace(self.feats.detach(), self.coords.detach())

    def to_dense(self) -> torch.Tensor:
        """Dense ``[B, C..., X, Y, Z]`` (zeros at inactive voxels), ``X, Y, Z = spatial_shape``."""
        X, Y, Z = self.spatial_shape
        out = self.feats.new_zeros((self.shape[0], X, Y, Z, *self.feats.shape[1:]))
        c = self.coords.long()
        out[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = self.feats
        nfeat = self.feats.dim() - 1
        return out.permute(0, *range(4, 4 + nfeat), 1, 2, 3).contiguous()

    def dense(self) -> torch.Tensor:
        """Alias of :meth:`to_dense`."""
        return self.to_dense()

    @staticmethod
    def full(aabb: Sequence[int], dim: Tuple[int, int], value, dtype: torch.dtype = torch.float32,
             device=None) -> "SparseTensor":
        """Every voxel of the inclusive box ``aabb = (x0, y0, z0, x1, y1, z1)``, for ``dim = (B, C)`` samples and
        channels, filled with ``value``. Rows are ordered (b, x, y, z) lexicographically."""
        if len(aabb) != 6:
            raise ValueError(f"aabb must be (x0, y0, z0, x1, y1, z1), got {aabb!r}")
        B, C = dim
        axes = [torch.arange(int(aabb[i]), int(aabb[i + 3]) + 1) for i in range(3)]
        xyz = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        b = torch.arange(B).repeat_interleave(xyz.shape[0]).unsqueeze(1)
        coords = torch.cat([b, xyz.repeat(B, 1)], 1).to(dtype=torch.int32, device=device)
        feats = torch.full((coords.shape[0], C), value, dtype=dtype, device=device)
        return SparseTensor(feats, coords)

    # ---------------------------------------------------------------- arithmetic
    def _merged_cache(self, other: "SparseTensor") -> dict:
        # Like the reference: a new top-level dict whose per-level dicts are SELF's (updated in place with other's
        # entries), so caches later registered on the result at an existing level are visible to ``self`` too.
        merged = dict(self._spatial_cache)
        for level, entries in other._spatial_cache.items():
            if level in merged:
                if merged[level] is not entries:
                    merged[level].update(entries)
            else:
                merged[level] = entries
        return merged

    def _elemwise(self, other, op: Callable) -> "SparseTensor":
        if isinstance(other, SparseTensor):
            if other.coords is not self.coords:
                if other.coords.shape != self.coords.shape:
                    raise ValueError(f"elementwise op between sparse tensors with {self.coords.shape[0]} and "
                                     f"{other.coords.shape[0]} voxels; they must share coordinates")
                if config.debug() and not torch.equal(other.coords, self.coords):
                    raise ValueError("elementwise op between sparse tensors with different coordinates")
            out = self.replace(op(self.feats, other.feats))
            out._spatial_cache = self._merged_cache(other)
            return out
        return self.replace(op(self.feats, self._broadcast_other(other)))

    # ---------------------------------------------------------------- batch selection
    def __getitem__(self, idx) -> "SparseTensor":
        """Selects batch elements (int, slice, list, bool mask ``[B]``, long ``[k]``); batches renumbered 0..k-1.
        The result has a fresh spatial cache."""
        sel = _batch_index_list(idx, self.shape[0])
        layout = self.layout
        feats, coords, lengths = [], [], []
        for new_b, old_b in enumerate(sel):
            c = self.coords[layout[old_b]].clone()
            c[:, 0] = new_b
            coords.append(c)
            feats.append(self.feats[layout[old_b]])
            lengths.append(c.shape[0])
        out = SparseTensor(torch.cat(feats, 0).contiguous(), torch.cat(coords, 0).contiguous(),
                           torch.Size([len(sel), *self.shape[1:]]), scale=self._scale, check=False)
        out.register_spatial_cache("layout", _layout_from_lengths(lengths))
        return out

    def __repr__(self) -> str:
        return (f"SparseTensor(shape={tuple(self.shape)}, voxels={self.coords.shape[0]}, dtype={self.dtype}, "
                f"device={self.device}, scale={tuple(str(s) for s in self._scale)})")


def sparse_cat(inputs: List[SparseTensor], dim: int = 0) -> SparseTensor:
    """Concatenates sparse tensors.

    ``dim=0``: stacks batches (batch indices of later inputs offset by the earlier batch sizes; fresh cache).
    Other ``dim`` (e.g. -1): concatenates the features of tensors with identical coordinates, in list order, keeping
    the first tensor's cache (``concat_cond`` puts the noise first).

    Raises:
        ValueError: empty list, or feature concatenation of tensors with different voxel counts.
    """
    if not inputs:
        raise ValueError("sparse_cat needs at least one SparseTensor")
    if dim == 0:
        coords, offset = [], 0
        for t in inputs:
            c = t.coords.clone()
            c[:, 0] += offset
            coords.append(c)
            offset += t.shape[0]
        return SparseTensor(torch.cat([t.feats for t in inputs], 0), torch.cat(coords, 0),
                            torch.Size([offset, *inputs[0].shape[1:]]))
    n = inputs[0].feats.shape[0]
    for i, t in enumerate(inputs):
        if t.feats.shape[0] != n:
            raise ValueError(f"sparse_cat(dim={dim}): input {i} has {t.feats.shape[0]} voxels, input 0 has {n}; "
                             "feature concatenation needs identical coordinates")
    return inputs[0].replace(torch.cat([t.feats for t in inputs], dim=dim))


def sparse_unbind(input: SparseTensor, dim: int) -> List[SparseTensor]:
    """Per-sample tensors (``dim=0``) or one tensor per slice of a feature dim (shared cache)."""
    if dim == 0:
        return [input[i] for i in range(input.shape[0])]
    return [input.replace(f) for f in input.feats.unbind(dim)]
