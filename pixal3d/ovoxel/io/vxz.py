"""The .vxz sparse-voxel container, byte-compatible with ``o_voxel.io.vxz`` (TRELLIS2_SPEC §3.6).

Layout: ``b'VXZ'``, version byte 0, big-endian uint32 ``bin_start`` (= 8 + JSON length), the UTF-8 JSON header
(``json.dumps`` with default separators), then the binary blob. Voxels are split into chunks of ``chunk_size³``
(chunks in lexicographic order of their index); per chunk the voxels are sorted by local Morton code and stored as an
SVO stream followed by the attribute streams, each compressed on its own. ``chunks[i].ptr`` is relative to the blob,
the other offsets to the chunk start.
"""
from __future__ import annotations

import io
import json
import lzma
import os
import struct
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ._morton import morton_decode, morton_encode
from .svo import VxzFormatError, decode_neighbor_filter, decode_parent_filter, decode_svo, \
    encode_neighbor_filter, encode_parent_filter, encode_svo

__all__ = ["write_vxz", "read_vxz", "read_vxz_info", "VxzFormatError"]

DEFAULT_COMPRESSION_LEVEL = {"none": 0, "deflate": 9, "lzma": 9, "zstd": 22}
FILTERS = ("none", "parent", "neighbor")
INTERLEAVES = ("none", "as_is", "all")
MAGIC = b"VXZ"
VERSION = 0


def _zstd():
    try:
        import zstandard
    except ImportError as exc:
        raise ImportError("compression='zstd' needs the 'zstandard' package: pip install zstandard "
                          "(or use 'lzma' / 'deflate' / 'none')") from exc
    return zstandard


def _compress(data: bytes, algo: str, level: int) -> bytes:
    if algo == "none":
        return data
    if algo == "deflate":
        c = zlib.compressobj(level, wbits=-15)
        return c.compress(data) + c.flush()
    if algo == "lzma":
        c = lzma.LZMACompressor(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": level}])
        return c.compress(data) + c.flush()
    if algo == "zstd":
        c = _zstd().ZstdCompressor(level=level, write_checksum=False, write_content_size=True)
        return c.compress(data)
    raise ValueError(f"unknown compression {algo!r}; use one of {list(DEFAULT_COMPRESSION_LEVEL)}")


def _decompress(data: bytes, algo: str, level: int, what: str) -> bytes:
    try:
        if algo == "none":
            return data
        if algo == "deflate":
            d = zlib.decompressobj(wbits=-15)
            out = d.decompress(data) + d.flush()
            if not d.eof:
                raise VxzFormatError("deflate stream ended early")
            return out
        if algo == "lzma":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW,
                                      filters=[{"id": lzma.FILTER_LZMA2, "preset": level or 9}])
            out = d.decompress(data)
            if not d.eof:
                raise VxzFormatError("LZMA2 stream ended early")
            return out
        if algo == "zstd":
            return _zstd().ZstdDecompressor().decompress(data)
    except (zlib.error, lzma.LZMAError) as exc:
        raise VxzFormatError(f"corrupt {algo} data in stream {what!r}: {exc}") from exc
    except VxzFormatError as exc:
        raise VxzFormatError(f"stream {what!r}: {exc} (truncated or corrupt file)") from exc
    raise VxzFormatError(f"unknown compression {algo!r} in the header")


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_chunk_size(chunk_size) -> int:
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 2 or chunk_size > 1024 \
            or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two in [2, 1024], got {chunk_size!r}")
    return int(chunk_size).bit_length() - 1


def write_vxz(file, coords, attrs: Dict[str, np.ndarray], chunk_size: int = 256, filter: str = "none",
              compression: str = "lzma", compression_level: Optional[int] = None, attr_interleave: str = "as_is",
              num_threads: int = -1, overwrite: bool = True) -> None:
    """Write voxels to a .vxz file (§3.6), byte-identical to the reference writer for the same inputs.

    Args:
        file: path or binary file object.
        coords: int ``[N, 3]`` voxel indices (numpy or torch), unique, ``>= 0``.
        attrs: name → uint8 ``[N, C]`` (dict order is the stored order).
        chunk_size: power of two in [2, 1024].
        filter: 'none', 'parent' (octree parent deltas) or 'neighbor' (raster-neighbour deltas).
        compression: 'none', 'deflate' (raw, level 9), 'lzma' (raw LZMA2, preset 9) or 'zstd' (needs ``zstandard``).
        compression_level: ``None`` (or 0) → the default of the algorithm, as the reference.
        attr_interleave: 'none' (a stream per channel, ``{name}_{i}``), 'as_is' (a stream per attribute),
            'all' (one stream ``attr``).
        num_threads: accepted for API compatibility; chunks are written sequentially.
        overwrite: if False, refuse to replace an existing file.
    Raises:
        ValueError: bad shapes/dtypes, duplicate or negative coordinates, unknown modes.
        ImportError: 'zstd' without the ``zstandard`` package.
        FileExistsError: the file exists and ``overwrite`` is False.
    """
    del num_threads
    coords = _as_numpy(coords)
    if coords.ndim != 2 or coords.shape[1] != 3 or not np.issubdtype(coords.dtype, np.integer):
        raise ValueError(f"coords must be an integer array [N, 3], got {coords.dtype} {coords.shape}")
    coords = coords.astype(np.int64)
    if coords.size and coords.min() < 0:
        raise ValueError("coords must be non-negative voxel indices")
    attrs = {k: _as_numpy(v) for k, v in attrs.items()}
    for k, v in attrs.items():
        if v.dtype != np.uint8:
            raise ValueError(f"attribute {k!r} must be uint8 (quantise it first), got {v.dtype}")
        if v.ndim != 2 or v.shape[0] != len(coords):
            raise ValueError(f"attribute {k!r} must have shape [N={len(coords)}, C], got {v.shape}")
    if filter not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
    if attr_interleave not in INTERLEAVES:
        raise ValueError(f"attr_interleave must be one of {INTERLEAVES}, got {attr_interleave!r}")
    if compression not in DEFAULT_COMPRESSION_LEVEL:
        raise ValueError(f"compression must be one of {list(DEFAULT_COMPRESSION_LEVEL)}, got {compression!r}")
    if compression == "zstd":
        _zstd()
    depth = _check_chunk_size(chunk_size)
    level = compression_level or DEFAULT_COMPRESSION_LEVEL[compression]

    info = {
        "num_voxel": int(len(coords)),
        "chunk_size": int(chunk_size),
        "filter": filter,
        "compression": compression,
        "compression_level": level,
        "raw_size": int(coords.size * 4 + sum(v.size for v in attrs.values())),
        "compressed_size": 0,
        "compress_ratio": 0.0,
        "attr_interleave": attr_interleave,
        "attr": [[k, int(v.shape[1])] for k, v in attrs.items()],
        "chunks": [],
    }
    all_attr = np.concatenate(list(attrs.values()), axis=1) if attrs else np.zeros((len(coords), 0), np.uint8)
    chunk_idx = coords // chunk_size
    local = coords % chunk_size
    uchunks, inverse = np.unique(chunk_idx, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    blob = bytearray()
    for ci, cxyz in enumerate(uchunks.tolist()):
        sel = np.flatnonzero(inverse == ci)
        codes = morton_encode(local[sel])
        order = np.argsort(codes, kind="stable")
        codes = codes[order]
        if np.any(np.diff(codes) == 0):
            raise ValueError(f"duplicate voxel coordinates in chunk {cxyz}; a .vxz stores each voxel once")
        a = all_attr[sel][order]
        svo = encode_svo(codes, depth)
        if filter == "parent":
            a = encode_parent_filter(codes, depth, a)
        elif filter == "neighbor":
            a = encode_neighbor_filter(local[sel][order], chunk_size, a)
        streams = {"svo": svo.tobytes()}
        ch = 0
        for k, c in info["attr"]:
            if attr_interleave == "none":
                for i in range(c):
                    streams[f"{k}_{i}"] = np.ascontiguousarray(a[:, ch + i]).tobytes()
            elif attr_interleave == "as_is":
                streams[k] = np.ascontiguousarray(a[:, ch:ch + c]).tobytes()
            ch += c
        if attr_interleave == "all":
            streams["attr"] = np.ascontiguousarray(a).tobytes()
        chunk_info = {"idx": cxyz}
        data = bytearray()
        for k, raw in streams.items():
            comp = _compress(raw, compression, level)
            chunk_info[k] = [len(data), len(comp)]
            data += comp
        chunk_info["ptr"] = [len(blob), len(data)]
        blob += data
        info["chunks"].append(chunk_info)
    info["compressed_size"] = len(blob)
    info["compress_ratio"] = info["raw_size"] / len(blob) if len(blob) else 0.0

    header = json.dumps(info).encode()
    payload = MAGIC + bytes([VERSION]) + struct.pack(">I", len(header) + 8) + header + bytes(blob)
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.write_bytes(payload)
    else:
        file.write(payload)


def _read_bytes(file) -> bytes:
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f".vxz file not found: {path}")
        return path.read_bytes()
    if isinstance(file, (bytes, bytearray)):
        return bytes(file)
    return file.read()


def _parse_header(data: bytes) -> Tuple[dict, int]:
    if len(data) < 8:
        raise VxzFormatError(f"file is {len(data)} bytes, shorter than the 8-byte .vxz preamble")
    if data[:3] != MAGIC:
        raise VxzFormatError(f"not a .vxz file: magic {data[:3]!r}, expected b'VXZ'")
    if data[3] != VERSION:
        raise VxzFormatError(f"unsupported .vxz version {data[3]} (only version 0 exists)")
    bin_start = struct.unpack(">I", data[4:8])[0]
    if bin_start < 8 or bin_start > len(data):
        raise VxzFormatError(f"header length field {bin_start} is inconsistent with the file size {len(data)} "
                             "(truncated file?)")
    try:
        info = json.loads(data[8:bin_start].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VxzFormatError(f"corrupt JSON header: {exc}") from exc
    for key in ("num_voxel", "chunk_size", "filter", "compression", "attr_interleave", "attr", "chunks"):
        if key not in info:
            raise VxzFormatError(f"JSON header lacks the required key {key!r}")
    return info, bin_start


def read_vxz_info(file) -> dict:
    """The JSON header of a .vxz file as a dict (no decompression). Raises :class:`VxzFormatError`."""
    if isinstance(file, (str, os.PathLike)):
        with open(_existing(file), "rb") as f:
            head = f.read(8)
            if len(head) == 8 and head[:3] == MAGIC:
                head += f.read(max(struct.unpack(">I", head[4:8])[0] - 8, 0))
            return _parse_header(head)[0]
    return _parse_header(_read_bytes(file))[0]


def _existing(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f".vxz file not found: {p}")
    return p


def read_vxz(file, num_threads: int = -1) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Read a .vxz file (§3.6).

    Returns:
        ``coords`` int32 ``[N, 3]`` in chunk order then local Morton order, and name → uint8 ``[N, C]``.
    Raises:
        FileNotFoundError; VxzFormatError for bad magic/version, truncated or corrupt header/streams, or
        inconsistent counts; ImportError for zstd files without ``zstandard``.
    """
    del num_threads
    data = _read_bytes(file)
    info, bin_start = _parse_header(data)
    blob = data[bin_start:]
    if info.get("compressed_size", len(blob)) > len(blob):
        raise VxzFormatError(f"the blob has {len(blob)} bytes but the header announces {info['compressed_size']} "
                             "(truncated file)")
    chunk_size = info["chunk_size"]
    try:
        depth = _check_chunk_size(chunk_size)
    except ValueError as exc:
        raise VxzFormatError(str(exc)) from exc
    comp, level, inter, filt = info["compression"], info.get("compression_level"), info["attr_interleave"], \
        info["filter"]
    if filt not in FILTERS:
        raise VxzFormatError(f"unknown filter {filt!r} in the header")
    if inter not in INTERLEAVES:
        raise VxzFormatError(f"unknown attr_interleave {inter!r} in the header")
    attr_spec = [(str(k), int(c)) for k, c in info["attr"]]
    total_c = sum(c for _, c in attr_spec)

    coords_all, attr_all = [], []
    for chunk in info["chunks"]:
        off, length = chunk["ptr"]
        if off < 0 or off + length > len(blob):
            raise VxzFormatError(f"chunk {chunk.get('idx')} points past the end of the blob (truncated file)")
        cdata = blob[off:off + length]

        def stream(key):
            if key not in chunk:
                raise VxzFormatError(f"chunk {chunk.get('idx')} lacks the stream {key!r}")
            s, n = chunk[key]
            if s < 0 or s + n > len(cdata):
                raise VxzFormatError(f"stream {key!r} of chunk {chunk.get('idx')} exceeds the chunk (truncated)")
            return np.frombuffer(_decompress(cdata[s:s + n], comp, level, key), np.uint8)

        codes = decode_svo(stream("svo"), depth)
        n = len(codes)
        if inter == "none":
            cols = [stream(f"{k}_{i}") for k, c in attr_spec for i in range(c)]
            if any(len(col) != n for col in cols):
                raise VxzFormatError(f"chunk {chunk.get('idx')}: a channel stream length differs from the "
                                     f"{n} voxels of its SVO")
            a = np.stack(cols, axis=1) if cols else np.zeros((n, 0), np.uint8)
        elif inter == "as_is":
            parts = []
            for k, c in attr_spec:
                s = stream(k)
                if len(s) != n * c:
                    raise VxzFormatError(f"chunk {chunk.get('idx')}: stream {k!r} has {len(s)} bytes, expected "
                                         f"{n}×{c}")
                parts.append(s.reshape(n, c))
            a = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.uint8)
        else:
            s = stream("attr")
            if len(s) != n * total_c:
                raise VxzFormatError(f"chunk {chunk.get('idx')}: stream 'attr' has {len(s)} bytes, expected "
                                     f"{n}×{total_c}")
            a = s.reshape(n, total_c)
        local = morton_decode(codes)
        if filt == "parent":
            a = decode_parent_filter(codes, depth, a)
        elif filt == "neighbor":
            a = decode_neighbor_filter(local, chunk_size, a)
        coords_all.append(local + np.asarray(chunk["idx"], np.int64) * chunk_size)
        attr_all.append(np.asarray(a, np.uint8))
    coords = np.concatenate(coords_all).astype(np.int32) if coords_all else np.zeros((0, 3), np.int32)
    merged = np.concatenate(attr_all) if attr_all else np.zeros((0, total_c), np.uint8)
    if len(coords) != info["num_voxel"]:
        raise VxzFormatError(f"decoded {len(coords)} voxels but the header says num_voxel={info['num_voxel']}")
    out, ch = {}, 0
    for k, c in attr_spec:
        out[k] = np.ascontiguousarray(merged[:, ch:ch + c])
        ch += c
    return coords, out


def vxz_bytes(coords, attrs, **kwargs) -> bytes:
    """:func:`write_vxz` into memory; returns the file's bytes."""
    buf = io.BytesIO()
    write_vxz(buf, coords, attrs, **kwargs)
    return buf.getvalue()
