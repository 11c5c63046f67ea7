"""Shared test helpers: fixture lookup and deterministic, single-threaded torch."""
import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
VENDORED = REPO / "tests" / "fixtures"
SHARED = REPO.parent / "shared"
SHARED_FIXTURES = SHARED / "fixtures"
SHARED_DATA = SHARED / "data"

# CI runs on 2 cores; more threads only add contention.
torch.set_num_threads(int(os.environ.get("PIXAL3D_TEST_THREADS", "1")))


def fixture_path(name: str) -> Path:
    """Path of ``<name>.safetensors``: the vendored copy, else ``../shared/fixtures``; skips (saying why) if neither."""
    for root in (VENDORED, SHARED_FIXTURES):
        p = root / f"{name}.safetensors"
        if p.exists():
            return p
    pytest.skip(f"fixture {name} is neither vendored in tests/fixtures nor present in ../shared/fixtures "
                "(large fixtures are read from ../shared only)")


def load_fixture(name: str):
    """Returns ``(meta: dict | None, tensors: dict[str, Tensor])`` for a parity fixture."""
    from safetensors.torch import load_file
    p = fixture_path(name)
    meta_p = p.with_suffix(".json")
    meta = json.loads(meta_p.read_text()) if meta_p.exists() else None
    return meta, load_file(str(p))


def shared_data_path(rel: str) -> Path:
    """A file under ``../shared/data``, or ``tests/data`` (vendored), else skip saying why."""
    for root in (REPO / "tests" / "data", SHARED_DATA):
        p = root / rel
        if p.exists():
            return p
    pytest.skip(f"{rel} is neither vendored in tests/data nor present in ../shared/data")


def random_sparse_coords(ns, res=6, seed=0):
    """Sparse voxel coords int32 ``[sum(ns), 4]`` ``(b, x, y, z)``: ``ns[b]`` distinct random cells of a ``res``³ grid
    for sample ``b``, sorted per sample (seeded)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b, n in enumerate(ns):
        idx = torch.randperm(res ** 3, generator=g)[:n].sort().values
        rows.append(torch.stack([torch.full_like(idx, b), idx // res ** 2, idx // res % res, idx % res], 1))
    return torch.cat(rows).int()


@pytest.fixture
def no_tf32():
    """fp32 matmuls and convolutions without TF32 for the test (fp32 references on the GPU must be exact fp32)."""
    import torch
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
