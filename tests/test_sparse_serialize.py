"""Z-order / Hilbert codes of TRELLIS2_SPEC.md §1.8: hand-computed codes, round trips, curve properties."""
import pytest
import torch

from pixal3d.sparse import decode_seq, encode_seq


def test_z_order_hand_examples():
    coords = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [2, 0, 0], [3, 5, 7], [1023, 1023, 1023]])
    # x is the most significant bit of each 3-bit group: (1,0,0) -> 0b100 = 4; (2,0,0) -> 0b100_000 = 32
    # (3,5,7): x=011, y=101, z=111 -> groups (bit2: 0,1,1)(bit1: 1,0,1)(bit0: 1,1,1) = 0b011_101_111 = 239
    expected = [4, 2, 1, 7, 32, 239, 2 ** 30 - 1]
    codes = encode_seq(coords)
    assert codes.tolist() == expected and codes.dtype == torch.int64
    assert decode_seq(codes).tolist() == coords.tolist()


def test_permute():
    c = torch.tensor([[1, 0, 0]])
    assert encode_seq(c, permute=(2, 1, 0)).item() == 1  # x becomes the least significant axis
    assert encode_seq(c, permute=(1, 0, 2)).item() == 2
    r = torch.randint(0, 1024, (500, 3), generator=torch.Generator().manual_seed(0))
    for mode in ("z_order", "hilbert"):
        for perm in [(0, 1, 2), (2, 0, 1), (1, 2, 0)]:
            assert torch.equal(decode_seq(encode_seq(r, perm, mode), perm, mode), r)
    assert torch.equal(encode_seq(r, (2, 0, 1)), encode_seq(r[:, [2, 0, 1]]))


def test_z_order_sorts_octree_blocks_contiguously():
    # all cells of an aligned 2^k block occupy one contiguous code range
    grid = torch.stack(torch.meshgrid(*[torch.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3)
    order = torch.argsort(encode_seq(grid))
    block = (grid[order] // 4)
    block_id = block[:, 0] * 4 + block[:, 1] * 2 + block[:, 2]
    assert torch.all(block_id.reshape(8, 64) == block_id.reshape(8, 64)[:, :1])


def test_hilbert_hand_examples():
    # first cells of the 10-bit curve, checked against a scalar transcription of O-Voxel's hilbert.cu loop
    assert encode_seq(torch.tensor([[0, 0, 0]]), mode="hilbert").item() == 0
    assert encode_seq(torch.tensor([[0, 0, 1]]), mode="hilbert").item() == 1
    assert encode_seq(torch.tensor([[1, 0, 0]]), mode="hilbert").item() == 7


def test_hilbert_is_a_continuous_bijection():
    codes = torch.arange(8 ** 4)
    pts = decode_seq(codes, mode="hilbert")
    assert pts.max().item() == 15 and pts.min().item() == 0  # first 8^4 codes fill a 16^3 block
    assert torch.unique(pts, dim=0).shape[0] == 8 ** 4
    assert torch.all((pts[1:] - pts[:-1]).abs().sum(1) == 1)  # consecutive cells are face neighbours
    assert torch.equal(encode_seq(pts, mode="hilbert"), codes)
    r = torch.randint(0, 1024, (2000, 3), generator=torch.Generator().manual_seed(1))
    assert torch.equal(decode_seq(encode_seq(r, mode="hilbert"), mode="hilbert"), r)


def test_errors():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        encode_seq(torch.tensor([[0, 0, 0], [0, 1024, 0]]))
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        encode_seq(torch.tensor([[-1, 0, 0]]))
    with pytest.raises(ValueError, match="mode"):
        encode_seq(torch.zeros(1, 3, dtype=torch.long), mode="peano")
    with pytest.raises(ValueError, match="permutation"):
        encode_seq(torch.zeros(1, 3, dtype=torch.long), permute=(0, 0, 1))
    with pytest.raises(TypeError):
        encode_seq(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\[N\]"):
        decode_seq(torch.zeros(1, 3, dtype=torch.long))
