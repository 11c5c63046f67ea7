"""The TRELLIS.2 family end to end on CPU: a tiny random-weight folder with cross-attention flow models and the
reference's single ``image_cond_model`` entry, through ``Trellis2ImageTo3DPipeline`` and ``inference.py``."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gltf_check import validate_glb
from PIL import Image

from pixal3d.pipelines.image_to_3d import Trellis2ImageTo3DPipeline
from pixal3d.pipelines.random_pipeline import TINY_PRESET, write_random_pipeline

REPO = Path(__file__).resolve().parents[1]
IMAGE = sorted((REPO / "tests" / "data" / "images").glob("*.png"))[0]


@pytest.fixture(scope="module")
def t2_folder(tmp_path_factory):
    return write_random_pipeline(tmp_path_factory.mktemp("t2") / "pipe", family="trellis2")


@pytest.fixture(scope="module")
def t2_pipe(t2_folder):
    return Trellis2ImageTo3DPipeline.from_pretrained(str(t2_folder))


def test_folder_has_the_trellis2_schema(t2_folder):
    args = json.loads((t2_folder / "pipeline.json").read_text())["args"]
    assert args["image_cond_model"]["name"] == "DinoV3FeatureExtractor" and "image_cond_models" not in args
    width = TINY_PRESET["dino"]["hidden_size"]
    for key, path in args["models"].items():
        if "flow" in key:
            cfg = json.loads((t2_folder / f"{path}.json").read_text())
            cfg = cfg.get("args", cfg)
            assert cfg["image_attn_mode"] == "cross" and cfg["cond_channels"] == width, key
            assert cfg.get("proj_in_channels") in (None, width)
    with pytest.raises(ValueError, match="family"):
        write_random_pipeline(t2_folder.parent / "x", family="trellis3")


def test_condition_is_the_dinov3_token_sequence_at_512_and_1024(t2_pipe):
    img = t2_pipe.preprocess_image(str(IMAGE))
    width = TINY_PRESET["dino"]["hidden_size"]
    # CLS + 4 registers + (S/16)² patches, like the reference's 1029 / 4101 tokens
    assert tuple(t2_pipe._cond("ss", img, None, 2).shape) == (2, 1 + 4 + 32 ** 2, width)
    assert tuple(t2_pipe._cond("tex_1024", img, None, 1).shape) == (1, 1 + 4 + 64 ** 2, width)


@pytest.mark.parametrize("ptype,res", [("512", 32), ("1024_cascade", 64)])
def test_trellis2_run_produces_mesh_and_pbr_voxels(t2_pipe, ptype, res):
    assert t2_pipe.available_pipeline_types() == ["512", "1024", "1024_cascade", "1536_cascade"]
    meshes, (shape, tex, got) = t2_pipe.run(str(IMAGE), pipeline_type=ptype, seed=5, return_latent=True)
    m = meshes[0]
    assert got == res and len(m.faces) > 0 and np.isfinite(m.vertices).all()
    assert m.attrs.shape[1] == 6 and np.isfinite(m.attrs).all()
    assert torch.equal(shape.coords, tex.coords) and shape.coords[:, 1:].max() < res // 4
    again = t2_pipe.run(str(IMAGE), pipeline_type=ptype, seed=5)[0]
    assert np.array_equal(m.vertices, again.vertices)


def test_trellis2_uses_the_unscaled_crop(t2_pipe, tmp_path):
    """TRELLIS.2 crops exactly the alpha bbox (scale 1.0; Pixal3D uses 1.1)."""
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[20:61, 30:71] = (255, 0, 0, 255)  # 41 x 41 object
    out = t2_pipe.preprocess_image(Image.fromarray(rgba, "RGBA"))
    assert out.size == (40, 40)  # side 2*(40//2) around the bbox centre, nothing added


def test_inference_cli_trellis2_glb_passes_the_validator_and_writes_a_preview(t2_folder, tmp_path):
    out, preview = tmp_path / "t2.glb", tmp_path / "t2.png"
    r = subprocess.run([sys.executable, str(REPO / "inference.py"), "--image", str(IMAGE), "--model", str(t2_folder),
                        "--pipeline", "trellis2", "--output", str(out), "--resolution", "512", "--device", "cpu",
                        "--texture_size", "128", "--preview", str(preview), "--preview_resolution", "64"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    info = validate_glb(out)["info"]
    assert info["totalTriangleCount"] > 0 and info["materialCount"] == 1 and info["hasTextures"]
    grid = np.asarray(Image.open(preview))
    assert grid.shape == (2 * 64, 4 * 64, 3)  # 8 frames, 4 per row
    for k in range(8):
        tile = grid[(k // 4) * 64:(k // 4 + 1) * 64, (k % 4) * 64:(k % 4 + 1) * 64]
        assert (tile != 255).any(axis=-1).sum() > 20, f"frame {k} is empty"
