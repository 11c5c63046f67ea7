"""The demo-model chain (``scripts/train_demo.py``, issue 9), piece by piece.

The whole chain needs Blender renders and several training runs (minutes even at micro scale), so these tests check
its parts: the configs (in sync with their generator, valid once materialised), the held-out split, the latent
statistics, the image-encoder round trip (the trainer's encoder and the pipeline's ``image_cond_models`` entry are
the same network with the same weights), and export -> ``pipeline.json`` -> ``from_pretrained`` -> a cascade run.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import make_demo_configs as mdc  # noqa: E402
import train_demo as td  # noqa: E402

SUBS_NORM = {"mean": [0.0] * mdc.DEMO["latent_channels"], "std": [1.0] * mdc.DEMO["latent_channels"]}


def _subs(tmp_path):
    return {"$DEMO_DINOV3": str(tmp_path / "pipe" / "dinov3"), "$DEMO_HELDOUT": str(tmp_path / "heldout.txt"),
            "$DEMO_SHAPE_NORM": SUBS_NORM, "$DEMO_TEX_NORM": SUBS_NORM}


def test_configs_match_their_generator():
    built = mdc.build_configs()
    files = sorted(p.stem for p in (REPO / "configs" / "demo").glob("*.json"))
    assert files == sorted(built)
    for stage, cfg in built.items():
        on_disk = json.loads((REPO / "configs" / "demo" / f"{stage}.json").read_text())
        assert on_disk == json.loads(json.dumps(cfg)), f"configs/demo/{stage}.json is stale: rerun make_demo_configs"


def test_materialize_validates_and_rejects_leftover_placeholders(tmp_path):
    for stage in mdc.build_configs():
        cfg = td.materialize(stage, _subs(tmp_path), {"max_steps": 3})
        assert cfg["trainer"]["args"]["max_steps"] == 3
        assert "$DEMO" not in json.dumps(cfg)
        assert cfg["dataset"]["args"]["skip_list"] == str(tmp_path / "heldout.txt")
    with pytest.raises(ValueError, match="placeholders"):
        td.materialize("shape_flow", {"$DEMO_DINOV3": "x", "$DEMO_HELDOUT": "y"}, {})


def test_demo_resolutions_are_consistent():
    """SS decoder output = latent grid; SC-VAE levels map the O-Voxel grid to it; flows see the right grids."""
    from pixal3d.models import get_model_class
    c = mdc.build_configs()
    d = mdc.DEMO
    ss_dec = c["ss_vae"]["models"]["decoder"]["args"]
    assert d["ss_latent_resolution"] * 2 ** (len(ss_dec["channels"]) - 1) == d["latent_grid"]
    assert d["ovoxel_resolution"] // 2 ** d["scvae_levels"] == d["latent_grid"]
    dec = get_model_class("FlexiDualGridVaeDecoder")(**c["shape_vae"]["models"]["decoder"]["args"])
    assert d["latent_grid"] * 2 ** dec.num_upsamples == d["ovoxel_resolution"]
    assert c["shape_flow"]["models"]["denoiser"]["args"]["resolution"] == d["latent_grid"]
    assert c["ss_flow"]["models"]["denoiser"]["args"]["resolution"] == d["ss_latent_resolution"]
    assert c["tex_flow"]["models"]["denoiser"]["args"]["in_channels"] == 2 * d["latent_channels"]


def test_choose_heldout_is_fixed_and_checked():
    assets = {f"{i:064x}": f"a{i}" for i in range(48)}
    a = td.choose_heldout(assets, 6, seed=0)
    assert a == td.choose_heldout(dict(reversed(list(assets.items()))), 6, seed=0)
    assert len(set(a)) == 6 and set(a) <= set(assets)
    assert a != td.choose_heldout(assets, 6, seed=1)
    with pytest.raises(ValueError):
        td.choose_heldout(assets, 48, seed=0)


def test_latent_stats_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(3.0, 2.0, size=(n, 5)).astype(np.float32) for n in (7, 30, 1)]
    files = []
    for i, a in enumerate(arrays):
        files.append(tmp_path / f"{i}.npz")
        np.savez(files[-1], feats=a, coords=np.zeros((len(a), 3), np.uint8))
    st = td.latent_stats(files)
    allx = np.concatenate(arrays).astype(np.float64)
    np.testing.assert_allclose(st["mean"], allx.mean(0), atol=2e-6)
    np.testing.assert_allclose(st["std"], allx.std(0), atol=2e-6)
    assert st["rows"] == 38 and st["files"] == 3
    np.savez(tmp_path / "z.npz", z=rng.normal(size=(4, 2, 2, 2)))
    assert len(td.latent_stats([tmp_path / "z.npz"], key="z")["mean"]) == 4
    with pytest.raises(ValueError):
        td.latent_stats([])


def _stats():
    n = mdc.DEMO["latent_channels"]
    return {"shape": {"mean": [0.1] * n, "std": [2.0] * n}, "tex": {"mean": [0.0] * n, "std": [1.5] * n}}


def test_image_encoder_round_trip(tmp_path):
    """The encoder the flow trainers build from the materialised config and the one the pipeline builds from
    pipeline.json (relative 'dinov3' inside the folder) give identical features; the weights are the saved ones."""
    from pixal3d.pipelines.image_to_3d import _build_extractor
    from pixal3d.trainers.flow_matching.mixins import build_cond_encoder
    pipe = tmp_path / "pipe"
    td.write_dino(pipe / "dinov3")
    first = (pipe / "dinov3" / "model.safetensors").read_bytes()
    td.write_dino(pipe / "dinov3", seed=123)  # kept once written: the flows depend on these weights
    assert (pipe / "dinov3" / "model.safetensors").read_bytes() == first
    # pipeline.json needs the checkpoints; fake their presence to write it (its content is what is tested here)
    for stem in td.PIPELINE_MODELS.values():
        (pipe / "ckpts").mkdir(exist_ok=True)
        (pipe / "ckpts" / f"{stem}.json").write_text("{}")
    spec = json.loads(td.write_pipeline_json(pipe, _stats()).read_text())["args"]["image_cond_models"]
    torch.manual_seed(0)
    img = torch.rand(2, 3, mdc.DEMO["image_size"], mdc.DEMO["image_size"])
    cam = (torch.tensor([0.7, 0.9]), torch.tensor([2.0, 1.6]), torch.tensor([1.0, 0.8]))
    outs = {}
    for stage, pipe_stage in (("ss_flow", "ss"), ("shape_flow", "shape_1024"), ("tex_flow", "tex_1024")):
        tspec = td.materialize(stage, _subs(tmp_path), {})["trainer"]["args"]["image_cond_model"]
        trainer_enc = build_cond_encoder(tspec, "cpu")
        pipe_enc = _build_extractor(spec[pipe_stage], {}, str(pipe)).eval()
        assert pipe_enc.grid_resolution == trainer_enc.grid_resolution
        g1, p1 = trainer_enc(img, *cam)
        g2, p2 = pipe_enc(img, *cam)
        assert torch.equal(g1, g2) and torch.equal(p1, p2)
        assert p1.shape == (2, trainer_enc.grid_resolution ** 3, mdc.DEMO["dino"]["hidden_size"])
        assert p1.abs().sum() > 0
        outs[pipe_stage] = p1
    # another backbone (other seed) gives other features: the saved weights file is really what is used
    td.write_dino(tmp_path / "other" / "dinov3", seed=1)
    other = _build_extractor(spec["ss"], {}, str(tmp_path / "other")).eval()
    assert not torch.allclose(other(img, *cam)[1], outs["ss"])


def _fake_run(run_dir: Path, stage: str, model: str, seed: int, tmp_path: Path, step: int = 3):
    """A train.py-shaped run folder (config.json + EMA checkpoint) with randomly initialised weights."""
    from pixal3d.models import get_model_class
    from pixal3d.trainers.checkpoint import ema_ckpt_path, misc_ckpt_path
    cfg = td.materialize(stage, _subs(tmp_path), {})
    (run_dir / "ckpts").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    entry = cfg["models"][model]
    net = get_model_class(entry["name"])(**entry["args"])
    with torch.no_grad():  # zero-initialised output layers would make every output equal: perturb all weights
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    torch.save(net.state_dict(), ema_ckpt_path(run_dir / "ckpts", model, 0.999, step))
    torch.save({}, misc_ckpt_path(run_dir / "ckpts", step))
    return net


def test_export_pipeline_json_and_cascade(tmp_path):
    """export_bf16 -> pipeline.json -> Pixal3DImageTo3DPipeline.from_pretrained -> the '1024' single-level cascade
    produces a mesh at the demo resolution; the exported weights are the EMA ones rounded to bfloat16."""
    from safetensors import safe_open

    from pixal3d.models import from_pretrained
    from pixal3d.pipelines.image_to_3d import Pixal3DImageTo3DPipeline
    pipe = tmp_path / "pipe"
    td.write_dino(pipe / "dinov3")
    runs = tmp_path / "runs"
    nets = {}
    for stage, model, stem in (("ss_vae", "decoder", "ss_dec"), ("shape_vae", "decoder", "shape_dec"),
                               ("tex_vae", "decoder", "tex_dec"), ("ss_flow", "denoiser", "ss_flow"),
                               ("shape_flow", "denoiser", "shape_flow"), ("tex_flow", "denoiser", "tex_flow")):
        run = runs / stage
        if not run.exists():
            for m in td.materialize(stage, _subs(tmp_path), {})["models"]:
                n = _fake_run(run / m, stage, m, seed=len(nets), tmp_path=tmp_path)
                nets[(stage, m)] = n
        td.export_bf16(run / model, model, pipe / "ckpts" / stem, weights="ema")
        with safe_open(str(pipe / "ckpts" / f"{stem}.safetensors"), framework="pt") as f:
            dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        assert torch.bfloat16 in dtypes and torch.float32 not in dtypes
        loaded = from_pretrained(pipe / "ckpts" / stem)
        ref = nets[(stage, model)].state_dict()
        for k, v in loaded.state_dict().items():
            if k in ref and v.is_floating_point():
                assert v.dtype == torch.float32
                assert torch.equal(v, ref[k].to(torch.bfloat16).float()), k
    td.write_pipeline_json(pipe, _stats(), steps=1)
    cfg = json.loads((pipe / "pipeline.json").read_text())
    assert cfg["args"]["default_pipeline_type"] == "1024"
    p = Pixal3DImageTo3DPipeline.from_pretrained(str(pipe), device="cpu")
    assert p.available_pipeline_types() == ["1024"]
    g = mdc.DEMO["latent_grid"]
    assert p._occupancy_resolution() == g
    dec = p.models["sparse_structure_decoder"]
    orig_forward = dec.forward

    def blob(z):
        """The real decoder runs (shape checked), then a deterministic 4³ cube replaces its random occupancy."""
        logits = orig_forward(z)
        assert logits.shape == (1, 1, g, g, g)
        logits = torch.full_like(logits, -1.0)
        logits[..., g // 2 - 2:g // 2 + 2, g // 2 - 2:g // 2 + 2, g // 2 - 2:g // 2 + 2] = 1.0
        return logits
    dec.forward = blob
    from PIL import Image
    img = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    img.paste((200, 40, 40, 255), (30, 30, 66, 66))
    meshes, (shape, tex, res) = p.run(img, return_latent=True, seed=1)
    assert res == mdc.DEMO["ovoxel_resolution"]
    assert shape.feats.shape == (64, mdc.DEMO["latent_channels"]) and tex.feats.shape == shape.feats.shape
    assert len(meshes) == 1 and meshes[0].attrs.shape[1] == 6


def test_export_weights_policy(tmp_path):
    """'auto' exports the EMA only once it has forgotten its random start (0.999^t < 1 %), else the raw weights."""
    from pixal3d.trainers.checkpoint import misc_ckpt_path
    run = tmp_path / "run"
    (run / "ckpts").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"trainer": {"args": {"ema_rate": 0.999}}}))
    torch.save({}, misc_ckpt_path(run / "ckpts", 600))          # 0.999^600 = 0.55 of the init left
    assert td.choose_export_weights(run, "auto") is None
    assert td.choose_export_weights(run, "ema") == 0.999 and td.choose_export_weights(run, "raw") is None
    torch.save({}, misc_ckpt_path(run / "ckpts", 5000))         # 0.999^5000 = 0.7 %
    assert td.choose_export_weights(run, "auto") == 0.999
    with pytest.raises(ValueError, match="weights must be"):
        td.choose_export_weights(run, "best")


def test_parallel_groups_run_concurrently(tmp_path, monkeypatch):
    """--parallel trains the pending VAEs together (then the other steps in order); without it, one at a time."""
    import threading
    import time as _time
    for parallel in (True, False):
        a = td.build_parser().parse_args(["--work", str(tmp_path / f"w{parallel}"), "--scale", "micro", "--device",
                                          "cpu"] + (["--parallel"] if parallel else []))
        chain = td.Chain(a)
        chain.mark("ss_vae")                       # done before: skipped, not run again
        live, peak, order = set(), [0], []
        lock = threading.Lock()

        def one(step):
            with lock:
                live.add(step)
                peak[0] = max(peak[0], len(live))
                order.append(step)
            _time.sleep(0.2)
            with lock:
                live.discard(step)
        monkeypatch.setattr(chain, "_one", one)
        chain.execute(["ss_vae", "shape_vae", "tex_vae", "export_vae"])
        assert sorted(order[:2]) == ["shape_vae", "tex_vae"] and order[2] == "export_vae"
        assert peak[0] == (2 if parallel else 1)


def test_loss_plot_joins_successive_runs(tmp_path):
    import plot_demo_losses as pdl

    def metrics(folder, rows):
        d = tmp_path / folder / "runs" / "shape_flow"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # run 1: steps 1-3 (step 2 logged twice after a resume: the last value wins); run 2 continues from 1
    metrics("w1", [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 9.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 1.5}])
    metrics("w2", [{"step": 1, "loss": 1.4}, {"step": 2, "loss": 1.2, "other": 0}])
    files = [tmp_path / w / "runs" / "shape_flow" / "metrics.jsonl" for w in ("w1", "missing", "w2")]
    assert pdl.join_runs(files) == ([1, 2, 3, 4, 5], [3.0, 2.0, 1.5, 1.4, 1.2], [4])
    out = pdl.plot_losses([tmp_path / "w1", tmp_path / "w2"], tmp_path / "fig.png")
    assert out.is_file() and out.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        pdl.plot_losses(tmp_path / "missing", tmp_path / "fig2.png")
