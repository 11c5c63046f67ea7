"""Variable-length token batches (TRELLIS2_SPEC.md §1.2): ``VarLenTensor`` and its cat/unbind.

A batch of B sequences of different lengths is stored back to back in one ``feats [T, ...]`` tensor with one
``slice`` per sample. :class:`pixal3d.sparse.SparseTensor` extends it with voxel coordinates.
"""
from typing import Callable, List, Optional, Sequence

import torch

__all__ = ["VarLenTensor", "varlen_cat", "varlen_unbind"]


def _layout_from_lengths(lengths: Sequence[int]) -> List[slice]:
    layout, start = [], 0
    for n in lengths:
        layout.append(slice(start, start + int(n)))
        start += int(n)
    return layout


def _parse_to_args(args, kwargs):
    """Splits ``to(...)`` arguments the way ``torch.Tensor.to`` accepts them into ``(device, dtype, extra)``."""
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    for a in args:
        if isinstance(a, torch.dtype):
            if dtype is not None:
                raise TypeError("to() received two dtypes")
            dtype = a
        elif isinstance(a, (str, torch.device, int)):
            if device is not None:
                raise TypeError("to() received two devices")
            device = a
        elif isinstance(a, torch.Tensor):
            device, dtype = a.device, a.dtype
        else:
            raise TypeError(f"to() cannot interpret argument {a!r}; pass a device and/or a dtype")
    extra = {k: kwargs.pop(k) for k in ("non_blocking", "copy") if k in kwargs}
    if kwargs:
        raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
    return device, dtype, extra


def _batch_index_list(idx, batch_size: int) -> List[int]:
    """Normalises a batch selector (int, slice, list of ints, bool/long tensor) to a list of batch indices."""
    if isinstance(idx, bool):
        raise TypeError("a bool is not a batch index; use an int, slice, list of ints or a bool/long tensor")
    if isinstance(idx, int):
        out = [idx]
    elif isinstance(idx, slice):
        out = list(range(*idx.indices(batch_size)))
    elif isinstance(idx, (list, tuple)):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            raise TypeError(f"batch index lists must contain ints only, got {idx!r}")
        out = list(idx)
    elif isinstance(idx, torch.Tensor):
        if idx.dtype == torch.bool:
            if tuple(idx.shape) != (batch_size,):
                raise ValueError(f"a bool batch mask must have shape ({batch_size},), got {tuple(idx.shape)}")
            out = torch.nonzero(idx).reshape(-1).tolist()
        elif idx.dtype in (torch.int32, torch.int64):
            if idx.dim() > 1:
                raise ValueError(f"a long batch index must be 0-d or 1-d, got shape {tuple(idx.shape)}")
            out = idx.reshape(-1).tolist()
        else:
            raise TypeError(f"batch index tensors must be bool or int32/int64, got {idx.dtype}")
    else:
        raise TypeError(f"unsupported batch index type {type(idx).__name__}; use int, slice, list or tensor")
    norm = []
    for i in out:
        j = i + batch_size if i < 0 else i
        if not 0 <= j < batch_size:
            raise IndexError(f"batch index {i} out of range for batch size {batch_size}")
        norm.append(j)
    if not norm:
        raise ValueError("batch selection is empty; a sparse tensor needs at least one batch element")
    return norm


class VarLenTensor:
    """A batch of variable-length sequences stored as one tensor (TRELLIS2_SPEC.md §1.2).

    Args:
        feats: ``[T, ...]`` all tokens, batch element after batch element.
        layout: one ``slice`` per batch element into the rows of ``feats`` (contiguous, in order). None means a
            single sequence covering all rows.

    Derived quantities (cached and shared with tensors made by :meth:`replace`): ``seqlen`` long ``[B]``,
    ``cum_seqlen`` int32 ``[B+1]`` (flash-attn varlen format), ``batch_boardcast_map`` long ``[T]`` (batch index per
    token; alias ``batch_index``).

    Raises:
        TypeError/ValueError: ``feats`` not a tensor, or ``layout`` not contiguous slices covering ``feats``.
    """

    def __init__(self, feats: torch.Tensor, layout: Optional[List[slice]] = None):
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
        if feats.dim() < 1:
            raise ValueError("feats must have a token dimension: shape [T, ...]")
        if layout is None:
            layout = [slice(0, feats.shape[0])]
        else:
            layout = list(layout)
            start = 0
            for i, s in enumerate(layout):
                if not isinstance(s, slice) or s.start != start or s.stop is None or s.stop < s.start:
                    raise ValueError(f"layout[{i}]={s!r} is not the contiguous slice starting at {start}; layouts "
                                     "are consecutive slices, one per batch element")
                start = s.stop
            if start != feats.shape[0]:
                raise ValueError(f"layout covers {start} rows but feats has {feats.shape[0]}")
        self.feats = feats
        self._layout = layout
        self._cache = {}

    # ---------------------------------------------------------------- construction helpers
    @staticmethod
    def layout_from_seqlen(seqlen: Sequence[int]) -> List[slice]:
        """Consecutive slices for the given sequence lengths."""
        return _layout_from_lengths(seqlen)

    @staticmethod
    def from_tensor_list(tensor_list: List[torch.Tensor]) -> "VarLenTensor":
        """Concatenates ``[T_b, ...]`` tensors into one VarLenTensor with B sequences."""
        feats = torch.cat(tensor_list, dim=0)
        return VarLenTensor(feats, _layout_from_lengths([t.shape[0] for t in tensor_list]))

    def to_tensor_list(self) -> List[torch.Tensor]:
        """The per-sample feature views ``[T_b, ...]``."""
        return [self.feats[s] for s in self.layout]

    # ---------------------------------------------------------------- bookkeeping
    def _get(self, key):
        return self._cache.get(key)

    def _put(self, key, value):
        self._cache[key] = value

    @property
    def layout(self) -> List[slice]:
        return self._layout

    def __len__(self) -> int:
        return len(self.layout)

    @property
    def batch_size(self) -> int:
        return len(self.layout)

    @property
    def shape(self) -> torch.Size:
        """``[B, *feats.shape[1:]]``."""
        return torch.Size([len(self.layout), *self.feats.shape[1:]])

    def dim(self) -> int:
        return len(self.shape)

    @property
    def ndim(self) -> int:
        return self.dim()

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def seqlen(self) -> torch.Tensor:
        """Tokens per sample, long ``[B]``."""
        v = self._get("seqlen")
        if v is None or v.device != self.device:
            v = torch.tensor([s.stop - s.start for s in self.layout], dtype=torch.long, device=self.device)
            self._put("seqlen", v)
        return v

    @property
    def cum_seqlen(self) -> torch.Tensor:
        """Cumulative token counts, int32 ``[B+1]`` starting at 0 (``cu_seqlens`` of flash-attn varlen)."""
        v = self._get("cum_seqlen")
        if v is None or v.device != self.device:
            v = torch.zeros(len(self.layout) + 1, dtype=torch.int32, device=self.device)
            v[1:] = torch.cumsum(self.seqlen, 0).to(torch.int32)
            self._put("cum_seqlen", v)
        return v

    @property
    def batch_boardcast_map(self) -> torch.Tensor:
        """Batch index of every token, long ``[T]`` (the reference's spelling, kept for compatibility)."""
        v = self._get("batch_boardcast_map")
        if v is None or v.device != self.device:
            # output_size (known on the host) spares repeat_interleave a device->host read of the total
            v = torch.repeat_interleave(torch.arange(len(self.layout), device=self.device), self.seqlen,
                                        output_size=self.feats.shape[0])
            self._put("batch_boardcast_map", v)
        return v

    @property
    def batch_index(self) -> torch.Tensor:
        """Alias of :attr:`batch_boardcast_map`."""
        return self.batch_boardcast_map

    # ---------------------------------------------------------------- derivation
    def replace(self, feats: torch.Tensor) -> "VarLenTensor":
        """Same layout (and shared cache), new features ``[T, ...]``.

        Raises:
            ValueError: ``feats`` has a different number of rows.
        """
        if feats.shape[0] != self.feats.shape[0]:
            raise ValueError(f"replace() needs {self.feats.shape[0]} rows, got {feats.shape[0]}")
        out = VarLenTensor.__new__(VarLenTensor)
        out.feats = feats
        out._layout = self._layout
        out._cache = self._cache
        return out

    def to(self, *args, **kwargs):
        """Moves/casts the features like ``torch.Tensor.to`` (coordinates, if any, keep int32)."""
        device, dtype, extra = _parse_to_args(args, dict(kwargs))
        return self.replace(self.feats.to(device=device, dtype=dtype, **extra))

    def type(self, dtype: torch.dtype):
        """Casts the features to ``dtype``."""
        return self.replace(self.feats.type(dtype))

    def float(self):
        return self.type(torch.float32)

    def half(self):
        return self.type(torch.float16)

    def bfloat16(self):
        return self.type(torch.bfloat16)

    def double(self):
        return self.type(torch.float64)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=None):
        return self.to(torch.device("cuda") if device is None else device)

    def detach(self):
        return self.replace(self.feats.detach())

    def reshape(self, *feat_shape):
        """Reshapes the per-token feature dims: ``feats.reshape(T, *feat_shape)``."""
        if len(feat_shape) == 1 and isinstance(feat_shape[0], (tuple, list, torch.Size)):
            feat_shape = tuple(feat_shape[0])
        return self.replace(self.feats.reshape(self.feats.shape[0], *feat_shape))

    def unbind(self, dim: int):
        return varlen_unbind(self, dim)

    def to_dense(self, max_length: Optional[int] = None):
        """Pads to ``[B, L, ...]`` (zeros past each sequence) and returns ``(dense, mask [B, L] bool)``."""
        B = len(self)
        L = int(self.seqlen.max()) if max_length is None else int(max_length)
        pos = torch.arange(L, device=self.device).unsqueeze(0).expand(B, L)
        mask = pos < self.seqlen.unsqueeze(1)
        dense = self.feats.new_zeros((B, L, *self.feats.shape[1:]))
        starts = self.cum_seqlen[:-1].long().unsqueeze(1)
        src = (starts + pos)[mask]
        dense[mask] = self.feats[src]
        return dense, mask

    # ---------------------------------------------------------------- arithmetic
    def _broadcast_other(self, other):
        if isinstance(other, VarLenTensor):
            if other.feats.shape[0] != self.feats.shape[0]:
                raise ValueError(f"elementwise op between tensors with {self.feats.shape[0]} and "
                                 f"{other.feats.shape[0]} tokens; both must have the same layout")
            return other.feats
        if isinstance(other, torch.Tensor):
            # A tensor broadcastable to [B, C...] is treated per sample (e.g. a [B, C] modulation vector).
            try:
                expanded = torch.broadcast_to(other, self.shape)
            except RuntimeError:
                return other
            return expanded[self.batch_boardcast_map]
        return other

    def _elemwise(self, other, op: Callable):
        return self.replace(op(self.feats, self._broadcast_other(other)))

    def __neg__(self):
        return self.replace(-self.feats)

    def __add__(self, other):
        return self._elemwise(other, torch.add)

    __radd__ = __add__

    def __sub__(self, other):
        return self._elemwise(other, torch.sub)

    def __rsub__(self, other):
        return self._elemwise(other, lambda a, b: torch.sub(b, a))

    def __mul__(self, other):
        return self._elemwise(other, torch.mul)

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self._elemwise(other, torch.div)

    def __rtruediv__(self, other):
        return self._elemwise(other, lambda a, b: torch.div(b, a))

    # ---------------------------------------------------------------- batch selection
    def __getitem__(self, idx) -> "VarLenTensor":
        """Selects batch elements (int, slice, list of ints, bool mask ``[B]`` or long ``[k]``), renumbered 0..k-1."""
        sel = _batch_index_list(idx, len(self))
        parts = [self.feats[self.layout[i]] for i in sel]
        return VarLenTensor(torch.cat(parts, 0).contiguous(), _layout_from_lengths([p.shape[0] for p in parts]))

    # ---------------------------------------------------------------- per-sample reductions
    def reduce(self, op: str, dim=None, keepdim: bool = False) -> torch.Tensor:
        """Reduces over feature dims ``dim`` then over each sample's tokens (``mean``/``sum``/``prod``).

        With ``dim=None`` (or 0 included) it is the plain reduction of ``feats``. Otherwise returns ``[B, ...]``.
        """
        if op not in ("mean", "sum", "prod"):
            raise ValueError(f"unsupported reduction {op!r}; use 'mean', 'sum' or 'prod'")
        if isinstance(dim, int):
            dim = (dim,)
        fn = getattr(torch, op)
        red = fn(self.feats) if dim is None else \
            (self.feats.mean(dim=dim, keepdim=keepdim) if op == "mean" else
             self.feats.sum(dim=dim, keepdim=keepdim) if op == "sum" else
             self._prod_dims(dim, keepdim))
        if dim is None or 0 in dim:
            return red
        return torch.segment_reduce(red, reduce=op, lengths=self.seqlen)

    def _prod_dims(self, dim, keepdim):
        out = self.feats
        for d in sorted((d % self.feats.dim() for d in dim), reverse=True):
            out = out.prod(dim=d, keepdim=keepdim)
        return out

    def mean(self, dim=None, keepdim: bool = False) -> torch.Tensor:
        return self.reduce("mean", dim, keepdim)

    def sum(self, dim=None, keepdim: bool = False) -> torch.Tensor:
        return self.reduce("sum", dim, keepdim)

    def prod(self, dim=None, keepdim: bool = False) -> torch.Tensor:
        return self.reduce("prod", dim, keepdim)

    def std(self, dim=None, keepdim: bool = False) -> torch.Tensor:
        """Population std per sample, ``sqrt(E[x^2] - E[x]^2)`` (the reference's formula, §1.2)."""
        m = self.mean(dim, keepdim=True)
        m2 = self.replace(self.feats ** 2).mean(dim, keepdim=True)
        return (m2 - m ** 2).sqrt()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"


def varlen_cat(inputs: List[VarLenTensor], dim: int = 0) -> VarLenTensor:
    """Concatenates batches (``dim=0``) or features of same-layout tensors (other dims)."""
    if not inputs:
        raise ValueError("varlen_cat needs at least one tensor")
    if dim == 0:
        lengths = [s.stop - s.start for t in inputs for s in t.layout]
        return VarLenTensor(torch.cat([t.feats for t in inputs], 0), _layout_from_lengths(lengths))
    return inputs[0].replace(torch.cat([t.feats for t in inputs], dim=dim))


def varlen_unbind(input: VarLenTensor, dim: int) -> List[VarLenTensor]:
    """Splits into per-sample tensors (``dim=0``) or unbinds a feature dim."""
    if dim == 0:
        return [input[i] for i in range(len(input))]
    return [input.replace(f) for f in input.feats.unbind(dim)]
