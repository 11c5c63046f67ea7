"""Training machinery on CPU: exact resume, loss decrease, NaN stop, config errors, atomic checkpoints, gloo DDP,
export (TRELLIS2_SPEC §5.1-5.3, PIXAL3D_SPEC §8)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixal3d.datasets.synthetic import write_synthetic_dataset
from pixal3d.trainers import basic as basic_mod
from pixal3d.trainers.checkpoint import atomic_save, latest_step
from pixal3d.trainers.launch import ConfigError, main

REPO = Path(__file__).resolve().parents[1]
DENSE = REPO / "configs/train/tiny/ss_flow_tiny_cpu.json"
SPARSE = REPO / "configs/train/tiny/slat_shape_flow_tiny_cpu.json"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return json.dumps(write_synthetic_dataset(tmp_path_factory.mktemp("data"), num_instances=8))


def _config(tmp_path, base, name="cfg.json", **trainer_args):
    cfg = json.loads(Path(base).read_text())
    cfg["trainer"]["args"].update(trainer_args)
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


def _losses(run_dir):
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]  # a resumed run rewrites later steps; keep the newest
    return out


def _train(cfg, out, data_dir, *extra):
    torch.set_num_threads(1)
    main(["--config", str(cfg), "--output_dir", str(out), "--data_dir", data_dir, "--deterministic",
          "--auto_retry", "0", *extra])


@pytest.mark.parametrize("base", [DENSE, SPARSE], ids=["dense", "sparse"])
def test_resume_after_crash_is_exact(tmp_path, data_dir, base, monkeypatch):
    # 5 samples pass the filters; batch 2 (dense) / 4 (sparse) → the step-3 checkpoint is in the middle of an epoch
    cfg = _config(tmp_path, base, max_steps=7, i_save=3)
    _train(cfg, tmp_path / "full", data_dir)
    reference = _losses(tmp_path / "full")
    assert sorted(reference) == list(range(1, 8))

    real_step = basic_mod.BasicTrainer.run_step

    def crashing(self, batch):
        if self.step == 4:  # dies during step 5, after the step-3 checkpoint
            raise RuntimeError("simulated crash")
        return real_step(self, batch)
    monkeypatch.setattr(basic_mod.BasicTrainer, "run_step", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(cfg, tmp_path / "crashed", data_dir)
    monkeypatch.setattr(basic_mod.BasicTrainer, "run_step", real_step)
    assert latest_step(tmp_path / "crashed" / "ckpts") == 3
    _train(cfg, tmp_path / "crashed", data_dir, "--ckpt", "latest")
    resumed = _losses(tmp_path / "crashed")
    for s in range(1, 8):
        assert resumed[s] == reference[s], f"step {s}: {resumed[s]!r} != {reference[s]!r}"
    a = torch.load(tmp_path / "full/ckpts/denoiser_step0000007.pt")
    b = torch.load(tmp_path / "crashed/ckpts/denoiser_step0000007.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_with_checkpoint_and_resumes_exactly(tmp_path, data_dir, monkeypatch):
    cfg = _config(tmp_path, DENSE, max_steps=6, i_save=100)
    _train(cfg, tmp_path / "full", data_dir)
    reference = _losses(tmp_path / "full")
    # the budget runs out after step 4: a checkpoint must be written there although i_save is 100
    monkeypatch.setattr(basic_mod.BasicTrainer, "_past_deadline", lambda self, deadline: self.step >= 4)
    _train(cfg, tmp_path / "cut", data_dir, "--max_minutes", "60")
    assert latest_step(tmp_path / "cut" / "ckpts") == 4
    assert "time budget of" in (tmp_path / "cut" / "log.txt").read_text()
    monkeypatch.undo()
    _train(cfg, tmp_path / "cut", data_dir, "--ckpt", "latest")
    resumed = _losses(tmp_path / "cut")
    assert [resumed[s] for s in range(1, 7)] == [reference[s] for s in range(1, 7)]


def test_zero_time_budget_trains_nothing(tmp_path, data_dir):
    cfg = _config(tmp_path, DENSE, max_steps=6, i_save=100)
    _train(cfg, tmp_path / "run", data_dir, "--max_minutes", "0")
    assert latest_step(tmp_path / "run" / "ckpts") == 0


def test_loss_decreases(tmp_path, data_dir):
    cfg = _config(tmp_path, DENSE, max_steps=30, i_save=1000, p_uncond=0.0)
    _train(cfg, tmp_path / "run", data_dir)
    losses = _losses(tmp_path / "run")
    first = sum(losses[s] for s in range(1, 7)) / 6
    last = sum(losses[s] for s in range(25, 31)) / 6
    assert last < 0.85 * first, (first, last)


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path, data_dir, monkeypatch):
    from pixal3d.trainers.flow_matching import FlowMatchingTrainer
    real = FlowMatchingTrainer.training_losses

    def poisoned(self, **batch):
        terms, status = real(self, **batch)
        if self.step == 2:
            terms["loss"] = terms["loss"] * float("nan")
        return terms, status
    monkeypatch.setattr(FlowMatchingTrainer, "training_losses", poisoned)
    cfg = _config(tmp_path, DENSE, max_steps=5, i_save=2)
    with pytest.raises(basic_mod.NonFiniteLossError, match=r"step 3.*batch \['0"):
        _train(cfg, tmp_path / "run", data_dir)
    assert latest_step(tmp_path / "run" / "ckpts") == 2
    torch.load(tmp_path / "run/ckpts/misc_step0000002.pt", weights_only=False)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(extra=1), "unknown top-level"),
    (lambda c: c["trainer"]["args"].update(learning_rate=1), "learning_rate"),
    (lambda c: c["models"]["denoiser"]["args"].update(num_layers=2), "num_layers"),
    (lambda c: c["dataset"]["args"].update(img_size=2), "img_size"),
    (lambda c: c["trainer"].update(name="NoSuchTrainer"), "unknown trainer"),
    (lambda c: c["trainer"]["args"].update(output_dir="x"), "command line"),
])
def test_config_errors(tmp_path, data_dir, edit, match):
    cfg = json.loads(DENSE.read_text())
    edit(cfg)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=match):
        _train(p, tmp_path / "run", data_dir)


def test_atomic_save_survives_crash(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.ones(3)}, path)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise KeyboardInterrupt("killed during save")
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_two_process_gloo_ddp_and_export(tmp_path, data_dir):
    cfg = _config(tmp_path, DENSE, max_steps=4, i_save=4, i_ddpcheck=2, i_print=2)
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(cfg), "--output_dir", str(out),
                        "--data_dir", data_dir, "--device", "cpu", "--num_gpus", "2", "--master_port", "29517",
                        "--auto_retry", "0"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "2 process(es), batch 4 (2/process" in log and "finished at step 4" in log
    misc = torch.load(out / "ckpts/misc_step0000004.pt", weights_only=False)
    assert misc["world_size"] == 2 and len(misc["rng"]) == 2
    assert not torch.equal(misc["rng"][0]["torch"], misc["rng"][1]["torch"])  # ranks draw different noise
    # export the EMA weights and load them back through from_pretrained
    from pixal3d.models.pretrained import from_pretrained
    from pixal3d.trainers.export import export_checkpoint
    export_checkpoint(out, tmp_path / "exp" / "ss_flow")
    model = from_pretrained(tmp_path / "exp" / "ss_flow")
    ema = torch.load(out / "ckpts/denoiser_ema0.99_step0000004.pt")
    for k, v in model.state_dict().items():
        if k in ema:
            assert torch.equal(v.float(), ema[k].float()), k
