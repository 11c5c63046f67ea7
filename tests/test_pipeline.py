"""End-to-end image -> 3D on CPU with a tiny random-weight pipeline folder (the real loading code)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gltf_check import validate_glb

from pixal3d.pipelines.cascade import choose_hr_grid, occupancy_to_coords, quantize_hr_coords
from pixal3d.pipelines.image_to_3d import Pixal3DImageTo3DPipeline
from pixal3d.pipelines.random_pipeline import write_random_pipeline

REPO = Path(__file__).resolve().parents[1]
IMAGES = sorted((REPO / "tests" / "data" / "images").glob("*.png"))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_random_pipeline(tmp_path_factory.mktemp("tiny") / "pipe")


@pytest.fixture(scope="module")
def pipe(tiny_folder):
    return Pixal3DImageTo3DPipeline.from_pretrained(str(tiny_folder))


def test_occupancy_to_coords_max_pools_like_the_reference():
    logits = -torch.ones(1, 1, 4, 4, 4)
    logits[0, 0, 3, 0, 1] = 1.0  # -> latent voxel (1, 0, 0) on a 2³ grid
    logits[0, 0, 0, 2, 2] = 1.0  # -> (0, 1, 1)
    c = occupancy_to_coords(logits, 2)
    assert c.dtype == torch.int32 and c.tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]
    assert occupancy_to_coords(logits, 4).tolist() == [[0, 0, 2, 2], [0, 3, 0, 1]]
    with pytest.raises(ValueError, match="multiple"):
        occupancy_to_coords(logits, 3)


def test_quantize_hr_coords_round_vs_floor():
    fine = torch.tensor([[0, 0, 255, 511], [0, 1, 256, 510], [1, 7, 7, 7]], dtype=torch.int32)
    # Pixal3D: round((c + 0.5)/512 · (G − 1)); TRELLIS.2: floor((c + 0.5)/512 · G), G = 64
    # hand-computed: e.g. round(256.5/512·63) = round(31.56) = 32, floor(256.5/512·64) = floor(32.06) = 32,
    # round(7.5/512·63) = round(0.92) = 1, floor(7.5/512·64) = floor(0.94) = 0
    assert quantize_hr_coords(fine, 512, 64, "round").tolist() == [[0, 0, 31, 63], [0, 0, 32, 63], [1, 1, 1, 1]]
    assert quantize_hr_coords(fine, 512, 64, "floor").tolist() == [[0, 0, 31, 63], [0, 0, 32, 63], [1, 0, 0, 0]]
    dup = torch.tensor([[0, 2, 2, 2], [0, 3, 3, 3]], dtype=torch.int32)  # both fall in latent voxel (0,0,0)
    assert quantize_hr_coords(dup, 512, 64, "floor").tolist() == [[0, 0, 0, 0]]
    with pytest.raises(ValueError, match="mode"):
        quantize_hr_coords(fine, 512, 64, "nearest")


def test_choose_hr_grid_steps_down_until_the_tokens_fit():
    g = torch.Generator().manual_seed(0)
    fine = torch.unique(torch.randint(0, 512, (20000, 3), generator=g), dim=0)
    fine = torch.cat([torch.zeros(len(fine), 1, dtype=torch.long), fine], 1).int()
    n1536 = len(quantize_hr_coords(fine, 512, 96, "round"))
    coords, res = choose_hr_grid(fine, 512, 1536, n1536, "round")  # 1536 does not fit: one step down
    assert res == 1408 and len(coords) == len(quantize_hr_coords(fine, 512, 88, "round"))
    _, res = choose_hr_grid(fine, 512, 1536, 10 ** 9, "round")
    assert res == 1536
    _, res = choose_hr_grid(fine, 512, 1024, 1, "round")  # never below 1024
    assert res == 1024


@pytest.mark.parametrize("ptype", ["512", "1024_cascade"])
def test_run_produces_mesh_and_pbr_voxels(pipe, ptype):
    meshes, (shape, tex, res) = pipe.run(str(IMAGES[0]), pipeline_type=ptype, seed=3, return_latent=True)
    m = meshes[0]
    assert res == (32 if ptype == "512" else 64)
    assert m.faces.shape[1] == 3 and len(m.faces) > 0
    assert np.isfinite(m.vertices).all() and np.abs(m.vertices).max() <= 0.5 + 2.0 / res
    assert m.attrs.shape[1] == 6 and set(m.layout) == {"base_color", "metallic", "roughness", "alpha"}
    assert torch.equal(shape.coords, tex.coords)
    assert shape.coords[:, 1:].max() < res // 4


def test_max_num_tokens_lowers_the_1536_cascade_resolution(pipe):
    """1536_cascade targets 3x the 512-level output (96 here) and steps down by a quarter of it (8) until the tokens
    fit, never below 2x (64): the tiny pipeline's scaled version of 1536 -> 1408 -> ... -> 1024 (§4.5 / §6.3)."""
    img = str(IMAGES[0])
    _, (full, _, res) = pipe.run(img, pipeline_type="1536_cascade", seed=3, return_latent=True)
    assert res == 96 and full.coords[:, 1:].max() < 24  # 49152 tokens are plenty: the full 24³ latent grid
    n96 = len(full.coords)
    _, (shape, tex, res) = pipe.run(img, pipeline_type="1536_cascade", seed=3, return_latent=True, max_num_tokens=n96)
    assert res == 88 and len(shape.coords) < n96 and shape.coords[:, 1:].max() < 22  # one step down: 22³ grid
    assert torch.equal(shape.coords, tex.coords)
    meshes, (shape, _, res) = pipe.run(img, pipeline_type="1536_cascade", seed=3, return_latent=True,
                                       max_num_tokens=1)
    assert res == 64 and shape.coords[:, 1:].max() < 16  # floor: the 1024_cascade grid
    assert meshes[0].voxel_size[0] == pytest.approx(1 / 64)


def test_same_seed_same_output_different_seed_differs(pipe):
    a = pipe.run(str(IMAGES[0]), pipeline_type="512", seed=7)[0]
    b = pipe.run(str(IMAGES[0]), pipeline_type="512", seed=7)[0]
    c = pipe.run(str(IMAGES[0]), pipeline_type="512", seed=8)[0]
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.attrs, b.attrs)
    assert a.vertices.shape != c.vertices.shape or not np.array_equal(a.vertices, c.vertices)


def test_num_samples_batches_the_stages(pipe):
    out = pipe.run(str(IMAGES[0]), pipeline_type="512", seed=1, num_samples=2)
    assert len(out) == 2


def test_unsupported_pipeline_type_is_a_clear_error(pipe):
    with pytest.raises(ValueError, match="not supported by these weights"):
        pipe.run(str(IMAGES[0]), pipeline_type="2048_cascade")


def test_missing_checkpoint_file_names_it(tiny_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    (broken / "ckpts" / "tex_dec.safetensors").unlink()
    with pytest.raises((FileNotFoundError, ValueError), match="tex_dec"):
        Pixal3DImageTo3DPipeline.from_pretrained(str(broken))


def test_pipeline_json_without_models_is_rejected(tmp_path):
    (tmp_path / "pipeline.json").write_text(json.dumps({"name": "X", "args": {}}))
    with pytest.raises(ValueError, match="models"):
        Pixal3DImageTo3DPipeline.from_pretrained(str(tmp_path))


def _inference(*args):
    return subprocess.run([sys.executable, str(REPO / "inference.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def test_inference_cli_writes_a_glb_and_refuses_to_overwrite(tiny_folder, tmp_path):
    out = tmp_path / "a.glb"
    r = _inference("--image", IMAGES[0], "--model", tiny_folder, "--output", out, "--texture_size", 128,
                   "--resolution", 512, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:4] == b"glTF" and len(data) > 1000
    report = validate_glb(out)  # Khronos validator: no errors
    info = report["info"]
    assert info["totalTriangleCount"] > 0 and info["materialCount"] == 1 and info["hasTextures"]
    r = _inference("--image", IMAGES[0], "--model", tiny_folder, "--output", out, "--device", "cpu")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert out.read_bytes() == data


@pytest.mark.parametrize("content,msg", [(b"", "empty"), (b"not an image at all", "image")])
def test_inference_cli_rejects_bad_images(tiny_folder, tmp_path, content, msg):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    r = _inference("--image", bad, "--model", tiny_folder, "--output", tmp_path / "x.glb", "--device", "cpu")
    assert r.returncode == 2 and msg in r.stderr.lower()
    assert not (tmp_path / "x.glb").exists()


def test_inference_cli_missing_model_folder(tmp_path):
    r = _inference("--image", IMAGES[0], "--model", tmp_path / "nope", "--output", tmp_path / "x.glb")
    assert r.returncode == 2 and "could not load the model" in r.stderr
