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


def triton_kernel_device():
    """Where the Triton kernel tests run: CUDA if present, the CPU under ``TRITON_INTERPRET=1``, else None (skip)."""
    from pixal3d.sparse.conv_triton import HAS_TRITON, interpreting
    if not HAS_TRITON:
        return None
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu") if interpreting() else None


#: Skip marker of the Triton kernel tests: they run on CUDA, or on CPU inside ``run_interpreter_suite``'s subprocess.
needs_triton_kernel = pytest.mark.skipif(triton_kernel_device() is None, reason="needs triton with CUDA, or the "
                                         "interpreter subprocess of test_interpreter_suite")


def one_rounding_rtol():
    """Bound of a kernel that computes in fp32 and rounds once to the output dtype: half an ulp (``2^-p``
    relative), plus fp32 arithmetic noise; the absolute floor is ``ONE_ROUNDING_ATOL``."""
    return {torch.float32: 1e-5, torch.float16: 2.0 ** -11 + 2.0 ** -20, torch.bfloat16: 2.0 ** -8 + 2.0 ** -20}


ONE_ROUNDING_ATOL = 1e-5


def interpreter_ulps(dtype) -> float:
    """Bound factor: the Triton interpreter casts fp32 -> bf16 by truncation (a full ulp; CUDA rounds to nearest)."""
    from pixal3d.sparse.conv_triton import interpreting
    return 2.0 if dtype == torch.bfloat16 and interpreting() else 1.0


def run_interpreter_suite(test_file, inner_env: str, timeout: int = 900, drop_env=()) -> str:
    """Runs ``test_file``'s ``kernel_`` tests in a subprocess under the Triton interpreter (``TRITON_INTERPRET`` must
    be set before triton is imported, so it cannot run in this process) with ``inner_env=1`` set, so the file does
    not recurse. Asserts it passed and returns its pytest summary line."""
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="1", **{inner_env: "1"})
    for k in drop_env:
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file), "-k",
                        "kernel_"], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = r.stdout.strip().split("\n")[-1]
    assert " passed" in summary, r.stdout[-2000:]
    return summary
