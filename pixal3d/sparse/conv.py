"""Submanifold sparse 3-D convolution with the flex_gemm parameter layout (TRELLIS2_SPEC.md §1.4).

For every active voxel p = (b, x, y, z):
    out[p] = bias + sum_{i,j,k in [0,K)} W[:, i, j, k, :] @ in[q],
    q = (b, x + (i - K//2)*d, y + (j - K//2)*d, z + (k - K//2)*d),
with missing neighbours and neighbours outside ``[0, X) x [0, Y) x [0, Z)`` (``spatial_shape``) counting as zero.
This is a cross-correlation (no kernel flip) with flat kernel index ``v = i*Ky*Kz + j*Kz + k``.

Backends (``SPARSE_CONV_BACKEND``, see ``config``): ``triton`` (``conv_triton.py``, implicit GEMM, the default for
CUDA tensors when triton imports) and the portable ``torch`` backend, which builds a neighbour map once per
resolution level (sorted int64 keys + ``searchsorted``), caches it in the tensor's spatial cache, then for each
non-empty kernel offset gathers the neighbour rows, multiplies by ``W_v`` and scatter-adds into the output.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from . import config
from .basic import SparseTensor

__all__ = ["SparseConv3d", "NeighborMap", "build_neighbor_map", "submanifold_conv3d", "resolve_backend"]

IntOr3 = Union[int, Sequence[int]]


def _triple(v: IntOr3, name: str) -> Tuple[int, int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        t = (v, v, v)
    elif isinstance(v, (tuple, list)) and len(v) == 3 and all(isinstance(a, int) for a in v):
        t = tuple(v)
    else:
        raise TypeError(f"{name} must be an int or a 3-tuple of ints, got {v!r}")
    if any(a < 1 for a in t):
        raise ValueError(f"{name} must be >= 1, got {v!r}")
    return t


class NeighborMap:
    """Per-offset gather/scatter pairs of a submanifold conv at one resolution level.

    Attributes:
        n: number of active voxels N.
        kernel_size, dilation: 3-tuples the map was built for.
        pairs: list of ``(v, out_idx long [M_v], in_idx long [M_v])`` for every kernel offset v that has at least one
            active neighbour pair, excluding the centre offset (identity, handled without a gather).
        center: flat index of the centre offset, or None when some kernel dimension is even (no identity offset).
    """

    def __init__(self, n: int, kernel_size, dilation, pairs, center):
        self.n = n
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.pairs = pairs
        self.center = center

    def to(self, device) -> "NeighborMap":
        """The same map with index tensors on ``device``."""
        pairs = [(v, o.to(device), i.to(device)) for v, o, i in self.pairs]
        return NeighborMap(self.n, self.kernel_size, self.dilation, pairs, self.center)

    @property
    def device(self) -> torch.device:
        return self.pairs[0][1].device if self.pairs else torch.device("cpu")

    def num_pairs(self) -> int:
        """Total neighbour pairs (excluding the centre), i.e. the gathered rows per forward."""
        return sum(int(o.numel()) for _, o, _ in self.pairs)


def build_neighbor_map(coords: torch.Tensor, spatial_shape: Sequence[int], kernel_size: IntOr3 = 3,
                       dilation: IntOr3 = 1) -> NeighborMap:
    """Neighbour pairs for a submanifold conv over ``coords [N, 4]`` int32 ``(b, x, y, z)``.

    Offsets run over ``(i - K//2) * d`` per axis (x slowest), matching the flat index ``i*Ky*Kz + j*Kz + k``.
    Voxel keys are ``((b*X + x)*Y + y)*Z + z`` in int64; duplicates are not detected here (validate inputs).
    """
    K = _triple(kernel_size, "kernel_size")
    D = _triple(dilation, "dilation")
    X, Y, Z = (int(s) for s in spatial_shape)
    c = coords.long()
    n = c.shape[0]
    b, x, y, z = c.unbind(1)
    keys = ((b * X + x) * Y + y) * Z + z
    sorted_keys, perm = torch.sort(keys)
    rows = torch.arange(n, device=coords.device)
    center = (K[0] // 2) * K[1] * K[2] + (K[1] // 2) * K[2] + K[2] // 2 if all(k % 2 for k in K) else None
    pairs = []
    if n == 0:
        return NeighborMap(n, K, D, pairs, center)
    for i in range(K[0]):
        dx = (i - K[0] // 2) * D[0]
        for j in range(K[1]):
            dy = (j - K[1] // 2) * D[1]
            for k in range(K[2]):
                dz = (k - K[2] // 2) * D[2]
                v = i * K[1] * K[2] + j * K[2] + k
                if v == center:
                    continue
                nx, ny, nz = x + dx, y + dy, z + dz
                inside = (nx >= 0) & (nx < X) & (ny >= 0) & (ny < Y) & (nz >= 0) & (nz < Z)
                q = ((b * X + nx) * Y + ny) * Z + nz
                pos = torch.searchsorted(sorted_keys, q).clamp_(max=n - 1)
                found = inside & (sorted_keys[pos] == q)
                if not bool(found.any()):
                    continue
                pairs.append((v, rows[found], perm[pos[found]]))
    return NeighborMap(n, K, D, pairs, center)


def _neighbor_cache_key(K, D) -> str:
    d = D[0] if D[0] == D[1] == D[2] else f"{D[0]}x{D[1]}x{D[2]}"
    return f"SubMConv3d_neighbor_cache_{K[0]}x{K[1]}x{K[2]}_dilation{d}"


def get_neighbor_map(x: SparseTensor, kernel_size: IntOr3, dilation: IntOr3) -> NeighborMap:
    """The cached neighbour map of ``x``'s level for this kernel/dilation, built on first use."""
    K = _triple(kernel_size, "kernel_size")
    D = _triple(dilation, "dilation")
    key = _neighbor_cache_key(K, D)
    nmap = x.get_spatial_cache(key)
    if not isinstance(nmap, NeighborMap) or nmap.n != x.coords.shape[0]:
        nmap = build_neighbor_map(x.coords, x.spatial_shape, K, D)
        x.register_spatial_cache(key, nmap)
    elif nmap.pairs and nmap.device != x.device:
        nmap = nmap.to(x.device)
        x.register_spatial_cache(key, nmap)
    return nmap


def submanifold_conv3d(feats: torch.Tensor, nmap: NeighborMap, weight: torch.Tensor,
                       bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gather-GEMM-scatter conv: ``feats [N, Ci]``, ``weight [Co, Kx, Ky, Kz, Ci]``, ``bias [Co]`` -> ``[N, Co]``.

    Differentiable with respect to ``feats``, ``weight`` and ``bias`` through autograd.
    """
    Co, Ci = weight.shape[0], weight.shape[-1]
    w = weight.reshape(Co, -1, Ci)
    if nmap.center is not None:
        out = feats @ w[:, nmap.center].t()
    else:
        out = feats.new_zeros((feats.shape[0], Co))
    for v, out_idx, in_idx in nmap.pairs:
        contrib = feats.index_select(0, in_idx) @ w[:, v].t()
        # in place: no op in the graph needs ``out``'s old value, and copying [N, Co] per offset dominates otherwise
        out.index_add_(0, out_idx, contrib)
    if bias is not None:
        out = out + bias
    return out


_KERNELS = {"torch": submanifold_conv3d}
#: Neighbour-map getters per backend (each caches its own map type in the tensor's spatial cache).
_MAPS = {"torch": get_neighbor_map}

from . import conv_triton  # noqa: E402  (imports this module's helpers; safe without triton installed)

_KERNELS["triton"] = conv_triton.submanifold_conv3d_triton
_MAPS["triton"] = conv_triton.get_triton_map


def resolve_backend(feats: torch.Tensor, kernel_size, requires_grad: bool,
                    channels: Optional[Tuple[int, int]] = None) -> str:
    """The backend that runs this call: ``SPARSE_CONV_BACKEND`` (``auto``/``torch``/``triton``) resolved against the
    tensor. ``triton`` is used when the Triton kernel supports the call (triton imports; CUDA tensor, or CPU under
    ``TRITON_INTERPRET=1``; fp16/bf16/fp32; odd kernel sizes when gradients are needed), otherwise ``torch``; under
    ``auto``, wide exact-fp32 layers (``channels = (Ci, Co)``, see ``conv_triton.preferred_for``) also stay on
    ``torch``. An explicit ``triton`` request that cannot be honoured warns once and runs on ``torch`` (same maths).
    """
    name = config.conv_backend()
    if name == "torch":
        return "torch"
    ok = conv_triton.supports(feats, kernel_size)
    if ok and requires_grad and any(k % 2 == 0 for k in kernel_size):
        ok = False
    if ok and name == "auto" and channels is not None and not conv_triton.preferred_for(feats.dtype, *channels):
        return "torch"
    if ok:
        return "triton"
    if name == "triton":
        reason = ("triton is not installed" if not conv_triton.HAS_TRITON else
                  f"unsupported input ({feats.device.type}, {feats.dtype}, kernel {tuple(kernel_size)})")
        conv_triton.warn_fallback(reason)
    return "torch"


class SparseConv3d(nn.Module):
    """Submanifold sparse conv, flex_gemm layout (TRELLIS2_SPEC.md §1.4). Output coords = input coords.

    Args:
        in_channels, out_channels: Ci, Co.
        kernel_size: K (int or 3-tuple); dilation: d (int or 3-tuple).
        stride: must be 1; padding: must be None (only submanifold convs exist in the reference backend).
        bias: add a learned bias.
        indice_key: accepted for API compatibility; neighbour maps are always cached per resolution level.

    Parameters: ``weight [Co, Kx, Ky, Kz, Ci]`` (kaiming-uniform(a=sqrt(5)) drawn on the torch Conv3d layout
    ``[Co, Ci, K, K, K]`` then permuted), ``bias [Co]`` (uniform +-1/sqrt(Ci*K^3)).

    Forward: ``SparseTensor`` feats ``[N, Ci]`` -> feats ``[N, Co]``, same coords and shared spatial cache.

    Raises:
        ValueError: stride != 1 or padding given (strided/transposed sparse conv is not part of TRELLIS.2), unknown
            ``SPARSE_CONV_BACKEND``, wrong input channel count.
        TypeError: input not a SparseTensor, or feature dtype differing from the weight dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOr3, stride: IntOr3 = 1,
                 dilation: IntOr3 = 1, padding=None, bias: bool = True, indice_key: Optional[str] = None):
        super().__init__()
        if _triple(stride, "stride") != (1, 1, 1):
            raise ValueError(f"SparseConv3d supports only submanifold convolution (stride=1), got stride={stride}; "
                             "use SparseDownsample / SparseSpatial2Channel for resampling")
        if padding is not None:
            raise ValueError(f"SparseConv3d is submanifold (output coords = input coords) and takes no padding, "
                             f"got padding={padding}; leave it as None")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _triple(kernel_size, "kernel_size")
        self.dilation = _triple(dilation, "dilation")
        self.stride = (1, 1, 1)
        self.indice_key = indice_key
        self.weight = nn.Parameter(torch.empty(out_channels, *self.kernel_size, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default torch Conv3d initialisation, drawn on ``[Co, Ci, Kx, Ky, Kz]`` and permuted to the stored layout."""
        w = torch.empty(self.out_channels, self.in_channels, *self.kernel_size)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        with torch.no_grad():
            self.weight.copy_(w.permute(0, 2, 3, 4, 1))
            if self.bias is not None:
                fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1] * self.kernel_size[2]
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if not isinstance(x, SparseTensor):
            raise TypeError(f"SparseConv3d expects a SparseTensor, got {type(x).__name__}")
        if x.feats.dim() != 2 or x.feats.shape[1] != self.in_channels:
            raise ValueError(f"SparseConv3d expects feats [N, {self.in_channels}], got {tuple(x.feats.shape)}")
        if x.feats.dtype != self.weight.dtype:
            raise TypeError(f"SparseConv3d: feats are {x.feats.dtype} but the weights are {self.weight.dtype}; "
                            "cast the input (x.type(dtype)) or the module (.to(dtype)) so they match")
        requires_grad = torch.is_grad_enabled() and (x.feats.requires_grad or self.weight.requires_grad or (
            self.bias is not None and self.bias.requires_grad))
        backend = resolve_backend(x.feats, self.kernel_size, requires_grad,
                                  (self.in_channels, self.out_channels))
        nmap = _MAPS[backend](x, self.kernel_size, self.dilation)
        return x.replace(_KERNELS[backend](x.feats, nmap, self.weight, self.bias))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, bias={self.bias is not None}")
