"""Benchmark plumbing of issue #11 (GPU speed), smoke-run on the CPU with tiny models: ``bench/flow_dit.py``'s A/B of
the varlen metadata, and ``bench/pipeline.py --decoder_asset`` (the asset closest to the reference's 2,240 latents),
both with their JSON output."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import decoder_assets  # noqa: E402
import flow_dit  # noqa: E402

TINY = dict(model_channels=64, num_blocks=2, num_heads=2, mlp_ratio=2.0, cond_channels=16, proj_in_channels=16)


@pytest.fixture
def tiny_flow_configs(tmp_path, monkeypatch):
    configs = {}
    for name in ("shape", "tex"):
        cfg = json.loads(flow_dit.CONFIGS[name].read_text())
        cfg["args"].update(TINY)
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(cfg))
        configs[name] = p
    monkeypatch.setattr(flow_dit, "CONFIGS", configs)
    return configs


def test_flow_dit_ab_and_json(tiny_flow_configs, tmp_path):
    out = tmp_path / "flow.json"
    flow_dit.main(["--device", "cpu", "--models", "shape,tex", "--tokens", "300", "--repeats", "1",
                   "--no_parity", "--varlen_meta", "both", "--json", str(out)])
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert [(r["model"], r["varlen_meta"]) for r in rows] == [("shape", "off"), ("shape", "on"), ("tex", "off"),
                                                              ("tex", "on")]
    assert all(r["ms"] > 0 and r["tokens"] == 300 and r["syncs_per_forward"] == -1 for r in rows)
    from pixal3d.modules.attention.sparse_modules import META_CACHE_ENV
    assert META_CACHE_ENV not in os.environ  # the A/B switch is restored


# ---------------------------------------------------------------------------------------------------------------------
# bench/pipeline.py --decoder_asset: the asset closest to the reference's 2,240 latents at 64³
# ---------------------------------------------------------------------------------------------------------------------
def _write_box(path: Path, extents):
    import trimesh
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box(extents=extents).export(str(path))


@pytest.fixture
def toy_assets(tmp_path):
    """Three assets whose O-Voxel sizes at 64³ differ: a rod (~260 cells), a flat plate (~4,300, two faces), a cube
    (~24,000). The plate is closest to 2,240."""
    root = tmp_path / "assets3d"
    _write_box(root / "rod" / "rod.obj", (1.0, 0.02, 0.02))
    _write_box(root / "plate" / "plate.obj", (1.0, 0.5, 0.004))
    _write_box(root / "cube" / "cube.obj", (1.0, 1.0, 1.0))
    return root


def test_rank_and_pick_decoder_asset(toy_assets, tmp_path):
    cache = tmp_path / "cache"
    ranking = decoder_assets.rank_assets(toy_assets, cache, verbose=False)
    est = {n: e["latents_64_est"] for n, e in ranking["assets"].items()}
    assert set(est) == {"rod", "plate", "cube"} and est["rod"] < est["plate"] < est["cube"]
    assert decoder_assets.pick_asset(toy_assets, cache, verbose=False) == "plate"
    assert [n for n, _ in decoder_assets.ranked(ranking, target=10)] == ["rod", "plate", "cube"]
    # the cached ranking alone is enough (the GPU machine has no asset folder)
    assert decoder_assets.pick_asset(tmp_path / "absent", cache, verbose=False) == "plate"
    with pytest.raises(FileNotFoundError, match="no cached ranking"):
        decoder_assets.rank_assets(tmp_path / "absent", tmp_path / "empty", verbose=False)


def test_proxy_matches_exact_latent_count(toy_assets, tmp_path):
    """The 64³ proxy used for ranking agrees with the occupied 64³ cells of the 1024³ O-Voxel (within 1 %)."""
    path = decoder_assets.resolve_structure("plate", toy_assets, tmp_path, verbose=False)
    assert path == decoder_assets.structure_path("plate", tmp_path) and path.is_file()
    data = np.load(path)
    exact = decoder_assets.exact_counts(data["coords"])
    est = decoder_assets.estimate_latents_64(toy_assets / "plate" / "plate.obj")
    assert str(data["name"]) == "plate" and abs(exact["latents_64"] - est) <= 0.01 * est
    assert exact["voxels_1024"] == len(data["coords"]) > 16 * exact["latents_64"]


def _tiny_decoder(key, device):
    """Tiny decoders with the released classes and 4 upsamplings (64³ -> 1024³). The shape decoder keeps exactly one
    child per voxel (constant subdivision logits), so its output size is known and small."""
    from pixal3d.models import get_model_class
    cb = "SparseConvNeXtBlock3d"
    args = dict(model_channels=[16, 16, 8, 8, 8], latent_channels=32, num_blocks=[1, 1, 0, 0, 0],
                block_type=[cb] * 5, up_block_type=["SparseResBlockC2S3d"] * 4, block_args=[{}] * 5)
    torch.manual_seed(0)
    if key == "tex_slat_decoder":
        model = get_model_class("SparseUnetVaeDecoder")(out_channels=6, pred_subdiv=False, **args)
    else:
        model = get_model_class("FlexiDualGridVaeDecoder")(resolution=64, **args)
        with torch.no_grad():
            for stage in model.blocks[:-1]:
                stage[-1].to_subdiv.weight.zero_()
                stage[-1].to_subdiv.bias.copy_(torch.tensor([1.0] + [-1.0] * 7))
    return model.to(device).eval()


def test_pipeline_decoder_asset_auto_reports_counts(toy_assets, tmp_path, monkeypatch):
    import pipeline
    cache = tmp_path / "cache"
    monkeypatch.setattr(decoder_assets, "BENCH_DATA", cache)
    monkeypatch.setattr(pipeline, "random_model", _tiny_decoder)
    out = tmp_path / "pipe.json"
    # a target near the rod's count keeps the 1024³ work small on the CPU (the plate has ~1 M voxels there)
    pipeline.main(["--device", "cpu", "--skip", "cascade,to_mesh", "--decoder_asset", "auto", "--assets",
                   str(toy_assets), "--decoder_target", "200", "--decoder_repeats", "1",
                   "--structure", str(tmp_path / "absent.npz"), "--json", str(out)])
    res = json.loads(out.read_text())
    info = res["decoder_structure"]
    exact = decoder_assets.exact_counts(np.load(decoder_assets.structure_path("rod", cache))["coords"])
    assert info["name"] == "rod" and info["latents_64"] == exact["latents_64"]
    assert info["voxels_1024"] == exact["voxels_1024"] and info["reference"]["latents_64"] == 2240
    tex, shape = res["decoders"]
    assert tex["decoder"] == "tex_slat_decoder" and tex["latents"] == exact["latents_64"]
    assert tex["output_voxels"] == exact["voxels_1024"]  # guided by the asset's own subdivisions
    assert (tex["reference_output_voxels"], shape["reference_output_voxels"]) == (873270, 496555)
    assert shape["output_voxels"] == exact["latents_64"]  # one child per voxel at every level
    assert tex["map_builds_first_call"] == 5  # one neighbour map per level (64³ ... 1024³), none rebuilt
    assert "structure" not in res  # --structure is not needed when only the decoders run
