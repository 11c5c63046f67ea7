"""O-Voxel IO (TRELLIS2_SPEC §3.6, §3.3, §1.8): .vxz byte layout, SVO, filters, npz/ply, quantisation, errors."""
import io
import json
import struct

import numpy as np
import pytest

from pixal3d.ovoxel import io as vio
from pixal3d.ovoxel.io._morton import morton_decode, morton_encode
from pixal3d.ovoxel.io.svo import decode_neighbor_filter, decode_parent_filter, decode_svo, \
    encode_neighbor_filter, encode_parent_filter, encode_svo
from pixal3d.ovoxel.io.vxz import vxz_bytes

try:
    import zstandard  # noqa: F401
    HAVE_ZSTD = True
except ImportError:
    HAVE_ZSTD = False


def _voxels(n=300, hi=40, seed=0):
    rng = np.random.default_rng(seed)
    c = np.unique(rng.integers(0, hi, (n, 3)), axis=0)
    rng.shuffle(c)
    return c, {"base_color": rng.integers(0, 256, (len(c), 3), dtype=np.uint8),
               "alpha": rng.integers(0, 256, (len(c), 1), dtype=np.uint8)}


def _sorted(c, a):
    o = np.lexsort(np.asarray(c).T[::-1])
    return np.asarray(c)[o], {k: v[o] for k, v in a.items()}


def test_morton_codes():
    # x is the most significant bit of every 3-bit group; group 0 is the coarsest level
    c = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0], [3, 5, 6], [1023, 1023, 1023]])
    # (3, 5, 6) = x 011, y 101, z 110 → groups (0,1,1)=3, (1,0,1)=5, (1,1,0)=6 → 0b011_101_110
    assert morton_encode(c).tolist() == [4, 2, 1, 32, 0b011101110, 2 ** 30 - 1]
    rng = np.random.default_rng(0)
    r = rng.integers(0, 2 ** 21, (500, 3))
    assert np.array_equal(morton_decode(morton_encode(r)), r)


def test_morton_agrees_with_sparse_encode_seq():
    import torch

    from pixal3d.sparse.serialize import encode_seq
    c = np.random.default_rng(1).integers(0, 1024, (200, 3))
    ref = encode_seq(torch.from_numpy(c).int()).long().numpy()
    assert np.array_equal(ref, morton_encode(c))


def test_hand_built_vxz_bytes():
    # voxels (1,0,0) → code 0b000_100 = 4 and (2,3,1) → groups (1,1,0)=6, (0,1,1)=3 → code 51 at chunk_size 4
    # (depth 2). SVO pre-order: root mask bits {0, 6} = 0x41, then node 0 mask {4} = 0x10, node 6 mask {3} = 0x08.
    coords = np.array([[2, 3, 1], [1, 0, 0]])
    attrs = {"a": np.array([[9], [7]], np.uint8)}
    header = ('{"num_voxel": 2, "chunk_size": 4, "filter": "none", "compression": "none", "compression_level": 0, '
              '"raw_size": 26, "compressed_size": 5, "compress_ratio": 5.2, "attr_interleave": "as_is", '
              '"attr": [["a", 1]], "chunks": [{"idx": [0, 0, 0], "svo": [0, 3], "a": [3, 2], "ptr": [0, 5]}]}')
    expect = b"VXZ\x00" + struct.pack(">I", 8 + len(header)) + header.encode() + bytes([0x41, 0x10, 0x08, 7, 9])
    assert vxz_bytes(coords, attrs, chunk_size=4, compression="none") == expect
    c, a = vio.read_vxz(io.BytesIO(expect))
    assert c.tolist() == [[1, 0, 0], [2, 3, 1]] and a["a"][:, 0].tolist() == [7, 9]
    assert vio.read_vxz_info(io.BytesIO(expect))["num_voxel"] == 2


def test_chunks_are_lexicographic_and_read_order():
    coords = np.array([[5, 0, 0], [0, 0, 5], [0, 5, 0], [1, 1, 1], [0, 0, 0]])
    a = {"v": np.arange(5, dtype=np.uint8)[:, None]}
    buf = vxz_bytes(coords, a, chunk_size=4, compression="none")
    info = vio.read_vxz_info(io.BytesIO(buf))
    assert [ch["idx"] for ch in info["chunks"]] == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]]
    c, out = vio.read_vxz(io.BytesIO(buf))
    assert c.tolist() == [[0, 0, 0], [1, 1, 1], [0, 0, 5], [0, 5, 0], [5, 0, 0]]  # chunk order, then Morton
    assert out["v"][:, 0].tolist() == [4, 3, 1, 2, 0]


@pytest.mark.parametrize("filt", ["none", "parent", "neighbor"])
@pytest.mark.parametrize("inter", ["none", "as_is", "all"])
@pytest.mark.parametrize("comp", ["none", "deflate", "lzma", "zstd"])
def test_vxz_round_trip(filt, inter, comp):
    c, a = _voxels()
    kw = dict(chunk_size=32, filter=filt, attr_interleave=inter, compression=comp)
    if comp == "zstd" and not HAVE_ZSTD:
        with pytest.raises(ImportError, match="zstandard"):
            vxz_bytes(c, a, **kw)
        return
    buf = vxz_bytes(c, a, **kw)
    info = vio.read_vxz_info(io.BytesIO(buf))
    assert info["filter"] == filt and info["attr_interleave"] == inter and info["compression"] == comp
    assert info["attr"] == [["base_color", 3], ["alpha", 1]] and info["raw_size"] == c.size * 4 + len(c) * 4
    keys = set().union(*[set(ch) for ch in info["chunks"]]) - {"idx", "ptr", "svo"}
    assert keys == {"none": {"base_color_0", "base_color_1", "base_color_2", "alpha_0"},
                    "as_is": {"base_color", "alpha"}, "all": {"attr"}}[inter]
    c2, a2 = vio.read_vxz(io.BytesIO(buf))
    (s1, b1), (s2, b2) = _sorted(c, a), _sorted(c2, a2)
    assert np.array_equal(s1, s2) and all(np.array_equal(b1[k], b2[k]) for k in a)


def test_compressed_streams_match_python_codecs():
    import lzma
    import zlib
    c, a = _voxels(50, 8)
    for comp in ("lzma", "deflate"):
        buf = vxz_bytes(c, a, chunk_size=8, compression=comp)
        info = vio.read_vxz_info(io.BytesIO(buf))
        blob = buf[8 + len(json.dumps(info)):]
        ch = info["chunks"][0]
        s, n = ch["alpha"]
        raw = blob[ch["ptr"][0] + s: ch["ptr"][0] + s + n]
        if comp == "lzma":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9}])
        else:
            d = zlib.decompressobj(wbits=-15)
        codes = np.sort(morton_encode(c))
        order = np.argsort(morton_encode(c))
        assert d.decompress(raw) == a["alpha"][order].tobytes() and len(codes) == len(c)


def test_svo_round_trip_and_structure():
    codes = np.array([0, 1, 2, 9, 63, 64, 511])
    svo = encode_svo(codes, 3)
    assert svo[0] == 0b10000011  # root children: groups 0 (0..63), 1 (64) and 7 (511)
    assert np.array_equal(decode_svo(svo, 3), codes)
    assert encode_svo(np.zeros(0, np.int64), 3).tolist() == [0]
    rng = np.random.default_rng(3)
    many = np.unique(rng.integers(0, 8 ** 5, 3000))
    assert np.array_equal(decode_svo(encode_svo(many, 5), 5), many)


def test_parent_filter_by_hand():
    # three leaves under the root at depth 1: root value = first leaf, then sibling-to-sibling deltas (u8 wrap)
    assert encode_parent_filter(np.array([0, 1, 2]), 1, np.array([[10], [5], [20]], np.uint8))[:, 0].tolist() == \
        [10, 251, 15]
    # depth 2, codes 4 and 51 (two level-1 nodes with one leaf each): [value(root), value(c6) − value(c0)]
    d = encode_parent_filter(np.array([4, 51]), 2, np.array([[7], [9]], np.uint8))
    assert d[:, 0].tolist() == [7, 2]
    rng = np.random.default_rng(4)
    codes = np.unique(rng.integers(0, 8 ** 4, 700))
    attr = rng.integers(0, 256, (len(codes), 3), dtype=np.uint8)
    assert np.array_equal(decode_parent_filter(codes, 4, encode_parent_filter(codes, 4, attr)), attr)


def test_neighbor_filter_by_hand():
    c = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]])
    a = np.array([[10], [15], [30], [100]], np.uint8)
    # (1,1,0): −y and −xy are both active; −xy comes later in the reference's list and wins
    assert encode_neighbor_filter(c, 4, a)[:, 0].tolist() == [10, 5, 20, 90]
    rng = np.random.default_rng(5)
    cc = np.unique(rng.integers(0, 16, (900, 3)), axis=0)
    aa = rng.integers(0, 256, (len(cc), 2), dtype=np.uint8)
    assert np.array_equal(decode_neighbor_filter(cc, 16, encode_neighbor_filter(cc, 16, aa)), aa)


def test_corrupt_and_truncated_files(tmp_path):
    c, a = _voxels(80, 16)
    good = vxz_bytes(c, a, chunk_size=16, compression="lzma")
    bad_cases = {
        "magic": b"VXY" + good[3:],
        "version": good[:3] + b"\x01" + good[4:],
        "short": good[:6],
        "header_len": good[:4] + struct.pack(">I", len(good) + 10) + good[8:],
        "truncated_blob": good[:-7],
        "json": good[:8] + b"#" + good[9:],
        "header_keys": b"VXZ\x00" + struct.pack(">I", 10) + b"{}",
    }
    # (raw LZMA2/deflate streams carry no checksum, so garbled payload bytes are not always detectable)
    for name, data in bad_cases.items():
        with pytest.raises(vio.VxzFormatError):
            vio.read_vxz(io.BytesIO(data))
    svo_only = vxz_bytes(c, a, chunk_size=16, compression="none")
    info = vio.read_vxz_info(io.BytesIO(svo_only))
    start = 8 + len(json.dumps(info))
    broken = bytearray(svo_only)
    assert broken[start] == 0xFF  # 80 voxels in one 16³ chunk occupy all 8 root octants
    broken[start] = 0x00  # an empty root: the rest of the SVO stream becomes trailing garbage
    with pytest.raises(vio.VxzFormatError, match="SVO|stream|bytes"):
        vio.read_vxz(io.BytesIO(bytes(broken)))
    with pytest.raises(FileNotFoundError):
        vio.read_vxz(tmp_path / "missing.vxz")


def test_writer_rejects_bad_input(tmp_path):
    c, a = _voxels(20, 8)
    with pytest.raises(ValueError, match="uint8"):
        vxz_bytes(c, {"x": a["alpha"].astype(np.float32)})
    with pytest.raises(ValueError, match="duplicate"):
        vxz_bytes(np.concatenate([c, c[:1]]), {"x": np.zeros((len(c) + 1, 1), np.uint8)})
    with pytest.raises(ValueError, match="chunk_size"):
        vxz_bytes(c, a, chunk_size=24)
    with pytest.raises(ValueError, match="filter"):
        vxz_bytes(c, a, filter="median")
    with pytest.raises(ValueError, match="compression"):
        vxz_bytes(c, a, compression="bz2")
    with pytest.raises(ValueError, match="shape"):
        vxz_bytes(c, {"x": np.zeros(len(c), np.uint8)})
    p = tmp_path / "a.vxz"
    vio.write_vxz(p, c, a)
    with pytest.raises(FileExistsError):
        vio.write_vxz(p, c, a, overwrite=False)


def test_empty_voxel_set():
    buf = vxz_bytes(np.zeros((0, 3), np.int64), {"x": np.zeros((0, 2), np.uint8)})
    c, a = vio.read_vxz(io.BytesIO(buf))
    assert c.shape == (0, 3) and a["x"].shape == (0, 2)


@pytest.mark.parametrize("ext", [".vxz", ".npz", ".ply"])
def test_dispatch_round_trip(tmp_path, ext):
    c, a = _voxels(200, 300)
    a["roughness"] = np.arange(len(c), dtype=np.uint16)[:, None]  # npz/ply keep other dtypes
    if ext == ".vxz":
        del a["roughness"]
    p = tmp_path / f"v{ext}"
    vio.write(p, c, a)
    c2, a2 = vio.read(p)
    assert c2.dtype == np.int32 and set(a2) == set(a)
    (s1, b1), (s2, b2) = _sorted(c, a), _sorted(c2, a2)
    assert np.array_equal(s1, s2)
    for k in a:
        assert b2[k].dtype == a[k].dtype and np.array_equal(b1[k], b2[k])


def test_ply_header_and_errors(tmp_path):
    c = np.array([[1, 2, 3]])
    p = tmp_path / "x.ply"
    vio.write_ply(p, c, {"base_color": np.array([[1, 2, 3]], np.uint8)})
    head = p.read_bytes().split(b"end_header")[0].decode()
    assert "format binary_little_endian 1.0" in head and "property float x" in head
    assert "property uchar base_color_2" in head
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        vio.read_ply(p)
    with pytest.raises(ValueError, match="unsupported voxel file type"):
        vio.read(tmp_path / "x.obj")
    with pytest.raises(ValueError, match="uint16"):
        vio.write_npz(tmp_path / "x.npz", np.array([[70000, 0, 0]]), {})


def test_dual_vertex_quantisation():
    R = 4
    coords = np.array([[0, 0, 0], [3, 2, 1]])
    local = np.array([[0.0, 0.5, 1.0], [0.999, 0.25, 0.0004]])
    dv = (coords + local) / R
    q = vio.quantize_dual_vertices(dv, coords, R)
    assert q.tolist() == [[0, 127, 255], [254, 63, 0]]  # truncation of local·255
    assert np.allclose(vio.dequantize_dual_vertices(q), q / 255)
    assert np.allclose(vio.dequantize_dual_vertices(q, coords, R), (coords + q / 255) / R)
    with pytest.raises(ValueError, match="outside their voxels"):
        vio.quantize_dual_vertices(dv + 0.5, coords, R)
    flags = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]], bool)
    packed = vio.pack_intersected(flags)
    assert packed[:, 0].tolist() == [1, 6, 7, 0]
    assert np.array_equal(vio.unpack_intersected(packed), flags)


_NO_NUMBA_READ = r"""
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("numba blocked by the test")
sys.meta_path.insert(0, _Block())
import numpy as np
from pixal3d.ovoxel.io.vxz import read_vxz
c, a = read_vxz(sys.argv[1])
assert "numba" not in sys.modules
np.savez(sys.argv[2], coords=c, **a)
"""


def test_read_vxz_without_numba(tmp_path):
    """GPU training machines may lack numba (llvmlite): .vxz decoding must give the same arrays without it."""
    import subprocess
    import sys
    from pathlib import Path
    rng = np.random.default_rng(3)
    coords = np.unique(rng.integers(0, 64, (3000, 3)), axis=0).astype(np.int32)
    attrs = {"base_color": rng.integers(0, 256, (len(coords), 3)).astype(np.uint8),
             "alpha": rng.integers(0, 256, (len(coords), 1)).astype(np.uint8)}
    f = tmp_path / "a.vxz"
    vio.write_vxz(f, coords, attrs, chunk_size=32, filter="neighbor")
    out = tmp_path / "a.npz"
    root = str(Path(__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-c", _NO_NUMBA_READ, str(f), str(out)], check=True,
                   env={**__import__("os").environ, "PYTHONPATH": root})
    c0, a0 = vio.read_vxz(f)
    got = np.load(out)
    np.testing.assert_array_equal(got["coords"], c0)
    for k in attrs:
        np.testing.assert_array_equal(got[k], a0[k])
    # and both equal what was written (the reader may reorder voxels: compare in lexicographic order)
    o_in, o_out = np.lexsort(coords.T[::-1]), np.lexsort(got["coords"].T[::-1])
    np.testing.assert_array_equal(got["coords"][o_out], coords[o_in])
    for k in attrs:
        np.testing.assert_array_equal(got[k][o_out], attrs[k][o_in])
