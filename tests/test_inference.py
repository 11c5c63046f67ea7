"""inference.py helpers: MoGe-2 FOV estimation (maths and the missing-package path), turntable previews (§6.6) and
the CLI's argument errors."""
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from pixal3d.conditioning.camera import DEFAULT_FOV, distance_from_fov
from pixal3d.conditioning.fov import estimate_fov
from pixal3d.pipelines.preview import (TRELLIS2_PREVIEW_DISTANCE, TRELLIS2_PREVIEW_FOV, check_preview_path,
                                       frames_to_grid, render_turntable, write_preview)
from pixal3d.renderers import RenderMesh

REPO = Path(__file__).resolve().parents[1]
IMAGE = sorted((REPO / "tests" / "data" / "images").glob("*.png"))[0]


# ---------------------------------------------------------------------------------------------------------- FOV
class FakeMoGe(torch.nn.Module):
    """Returns fixed normalised intrinsics, like ``MoGeModel.infer`` (``K[0,0] = fx / W``)."""

    def __init__(self, k00, k11=None):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.k = torch.tensor([[k00, 0, 0.5], [0, k11 or k00, 0.5], [0, 0, 1]], dtype=torch.float32)
        self.seen = []

    def infer(self, image):
        self.seen.append(image)
        return {"intrinsics": self.k * self.scale, "points": torch.zeros(*image.shape[1:], 3)}


@pytest.mark.parametrize("k00", [0.5, 1.0, 2.5])
def test_estimate_fov_from_normalised_intrinsics(k00):
    model = FakeMoGe(k00, k11=0.7)
    img = Image.new("RGB", (40, 30), (255, 128, 0))
    fov = estimate_fov(img, model=model)
    assert fov == pytest.approx(2 * math.atan(1 / (2 * k00)), rel=1e-6)
    (x,) = model.seen
    assert x.shape == (3, 30, 40) and x.dtype == torch.float32  # [3, H, W] in [0, 1]
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))


def test_estimate_fov_k00_half_is_ninety_degrees():
    assert math.degrees(estimate_fov(Image.new("RGB", (8, 8)), model=FakeMoGe(0.5))) == pytest.approx(90.0)


def test_estimate_fov_rejects_bad_model_output():
    class NoK:
        def infer(self, image):
            return {"points": None}
    with pytest.raises(ValueError, match="intrinsics"):
        estimate_fov(Image.new("RGB", (8, 8)), model=NoK())
    with pytest.raises(ValueError, match="K\\[0,0\\]"):
        estimate_fov(Image.new("RGB", (8, 8)), model=FakeMoGe(-1.0))


def test_estimate_fov_without_moge_logs_the_default(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "moge", None)  # import fails as if the package were absent
    monkeypatch.setitem(sys.modules, "moge.model.v2", None)
    with caplog.at_level(logging.INFO, logger="pixal3d.conditioning.fov"):
        fov = estimate_fov(Image.new("RGB", (8, 8)))
    assert fov == DEFAULT_FOV
    text = caplog.text
    assert "not installed" in text and f"{DEFAULT_FOV:.4f}" in text and "--fov" in text
    with caplog.at_level(logging.INFO, logger="pixal3d.conditioning.fov"):
        assert estimate_fov(Image.new("RGB", (8, 8)), default=0.2) == 0.2


# ------------------------------------------------------------------------------------------------------ preview
def _box(centre, size=0.2, colour=(0.9, 0.1, 0.1)):
    m = trimesh.creation.box(extents=[size] * 3)
    m.apply_translation(centre)
    return RenderMesh(m.vertices, m.faces, vertex_attrs=np.tile(colour, (len(m.vertices), 1)))


def _fg(frame):
    """Foreground pixels (not the white background): mask, centroid (col, row), pixel count."""
    fg = (frame != 255).any(-1)
    rows, cols = np.nonzero(fg)
    return fg, (cols.mean() + 0.5, rows.mean() + 0.5), fg.sum()


def _project(p, fov, d, size):
    """Pinhole projection in the view frame (camera at (0, 0, d) looking -z, up +y): pixel (col, row)."""
    f = size / (2 * math.tan(fov / 2))
    return size / 2 + f * p[0] / (d - p[2]), size / 2 - f * p[1] / (d - p[2])


def test_turntable_frame0_reproduces_the_input_view_then_turns_about_y():
    fov, size = DEFAULT_FOV, 64
    d = distance_from_fov(fov)
    frames = render_turntable(_box((0.25, 0.1, 0.0)), fov, d, num_frames=8, resolution=size, backend="cpu")
    assert len(frames) == 8 and all(f.shape == (size, size, 3) and f.dtype == np.uint8 for f in frames)
    _, c0, n0 = _fg(frames[0])
    u, v = _project((0.25, 0.1, 0.0), fov, d, size)
    assert abs(c0[0] - u) < 1.5 and abs(c0[1] - v) < 1.5  # right of and above the centre, where the pinhole puts it
    fg, _, _ = _fg(frames[0])
    r, g, _ = frames[0][fg].astype(int).mean(0)
    assert r > 3 * g  # the vertex colour (red) is what is drawn, shaded
    assert frames[0][fg][:, 0].max() >= 225  # a face looking at the camera gets the full headlight (0.9 * 255)
    _, c4, _ = _fg(frames[4])  # half a turn: mirrored to the left
    assert abs(c4[0] - (size - u)) < 1.5 and abs(c4[1] - v) < 1.5
    # a quarter turn (x -> -z) puts it behind the centre: centred and smaller; three quarters: in front, larger
    _, c2, n2 = _fg(frames[2])
    _, c6, n6 = _fg(frames[6])
    assert abs(c2[0] - size / 2) < 1.5 and abs(c6[0] - size / 2) < 1.5
    assert n2 < n0 < n6


def test_turntable_trellis2_frame_looks_from_minus_y_with_z_up():
    size = 64
    fov, d = TRELLIS2_PREVIEW_FOV, TRELLIS2_PREVIEW_DISTANCE
    up = render_turntable(_box((0.0, 0.0, 0.3)), fov, d, num_frames=1, resolution=size, frame="trellis2",
                          backend="cpu")[0]
    _, c, _ = _fg(up)
    u, v = _project((0.0, 0.3, 0.0), fov, d, size)  # Z-up world (0, 0, .3) is view (0, .3, 0): image top
    assert abs(c[0] - u) < 1.5 and abs(c[1] - v) < 1.5 and c[1] < size / 2
    near = render_turntable(_box((0.0, -0.4, 0.0)), fov, d, num_frames=1, resolution=size, frame="trellis2",
                            backend="cpu")[0]
    far = render_turntable(_box((0.0, 0.4, 0.0)), fov, d, num_frames=1, resolution=size, frame="trellis2",
                           backend="cpu")[0]
    assert _fg(near)[2] > 1.3 * _fg(far)[2]  # -Y faces the front camera
    with pytest.raises(ValueError, match="frame"):
        render_turntable(_box((0, 0, 0)), fov, d, frame="blender")


def test_preview_png_grid_and_path_checks(tmp_path, monkeypatch):
    frames = [np.full((6, 5, 3), 10 * k, np.uint8) for k in range(8)]
    grid = np.asarray(frames_to_grid(frames))
    assert grid.shape == (12, 20, 3) and grid[0, 0, 0] == 0 and grid[6, 15, 0] == 70  # frame 7: row 1, col 3
    out = write_preview(tmp_path / "sub" / "p.png", frames)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), grid)
    with pytest.raises(ValueError, match=r"\.png"):
        check_preview_path(tmp_path / "p.gif")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(RuntimeError, match="imageio-ffmpeg"):
        check_preview_path(tmp_path / "p.mp4")


# ---------------------------------------------------------------------------------------------------------- CLI
def _inference(*args):
    return subprocess.run([sys.executable, str(REPO / "inference.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def test_cli_rejects_a_bad_preview_before_generating(tmp_path):
    r = _inference("--image", IMAGE, "--model", tmp_path, "--output", tmp_path / "x.glb", "--preview",
                   tmp_path / "x.gif")
    assert r.returncode == 2 and "--preview" in r.stderr and ".png" in r.stderr
    assert not (tmp_path / "x.glb").exists()


def _camera_file(tmp_path, **cam):
    p = tmp_path / "camera.json"
    p.write_text(json.dumps(cam))
    return p


def test_load_camera_reads_and_validates(tmp_path):
    sys.path.insert(0, str(REPO))
    from inference import load_camera
    cam = load_camera(_camera_file(tmp_path, camera_angle_x=0.4, distance=3, mesh_scale=0.9))
    assert cam == {"camera_angle_x": 0.4, "distance": 3.0, "mesh_scale": 0.9}
    assert load_camera(_camera_file(tmp_path, camera_angle_x=0.4, distance=3))["mesh_scale"] == 1.0
    with pytest.raises(ValueError, match=r"missing keys \['distance'\]"):
        load_camera(_camera_file(tmp_path, camera_angle_x=0.4))
    with pytest.raises(ValueError, match=r"unknown keys \['fov'\]"):
        load_camera(_camera_file(tmp_path, camera_angle_x=0.4, distance=3, fov=1))
    with pytest.raises(ValueError, match="distance must be a positive number"):
        load_camera(_camera_file(tmp_path, camera_angle_x=0.4, distance=-1))
    with pytest.raises(ValueError, match="radians"):
        load_camera(_camera_file(tmp_path, camera_angle_x=40, distance=3))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_camera(tmp_path / "bad.json")


def test_cli_camera_conflicts_fail_before_loading(tmp_path):
    cam = _camera_file(tmp_path, camera_angle_x=0.4, distance=3)
    r = _inference("--image", IMAGE, "--model", tmp_path, "--output", tmp_path / "x.glb", "--camera", cam,
                   "--fov", "0.4")
    assert r.returncode == 2 and "drop --fov" in r.stderr
    r = _inference("--image", IMAGE, "--model", tmp_path, "--output", tmp_path / "x.glb", "--camera", cam,
                   "--pipeline", "trellis2")
    assert r.returncode == 2 and "--camera is for the Pixal3D pipeline" in r.stderr
    r = _inference("--image", IMAGE, "--model", tmp_path, "--output", tmp_path / "x.glb", "--camera",
                   _camera_file(tmp_path, camera_angle_x=0.4))
    assert r.returncode == 2 and "missing keys" in r.stderr
    assert not (tmp_path / "x.glb").exists()
