"""A small synthetic dataset written in the real on-disk layout (:mod:`pixal3d.datasets.latents`), for tests and
smoke runs of the training configs on CPU. The latents are random but structured (a per-channel pattern plus noise)
so a flow model has something to learn."""
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_synthetic_dataset"]


def _write_csv(path: Path, rows: list) -> None:
    cols = sorted({k for r in rows for k in r} - {"sha256"})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sha256"] + cols)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _camera(rng, distance):
    yaw = rng.uniform(0, 2 * np.pi)
    pos = np.array([np.cos(yaw) * distance, np.sin(yaw) * distance, 0.3 * distance])
    fwd = -pos / np.linalg.norm(pos)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -fwd, pos  # Blender camera-to-world (looks along -Z)
    return m


def write_synthetic_dataset(root, num_instances: int = 8, ss_channels: int = 8, ss_resolution: int = 4,
                           slat_channels: int = 8, slat_grid: int = 4, num_views: int = 2, image_size: int = 32,
                           seed: int = 0) -> dict:
    """Writes ``root/{base,ss_latent,shape_latent,pbr_latent,render_cond}`` and returns the ``--data_dir`` dict
    ``{"synthetic": {role: folder}}``.

    Each instance has TRELLIS.2 latents (``{sha}.npz``) and Pixal3D per-view latents (``{sha}/view{VV}.npz`` +
    ``view{VV}_scale.json``), ``num_views`` RGBA renders with ``transforms.json``, and metadata rows with every
    column the datasets filter on. Sparse latents live on a ``slat_grid``³ grid (``resolution = 16·slat_grid``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    roles = {r: root / r for r in ("base", "ss_latent", "shape_latent", "pbr_latent", "render_cond")}
    for d in roles.values():
        d.mkdir(parents=True, exist_ok=True)
    pattern = rng.standard_normal((ss_channels, 1, 1, 1)).astype(np.float32)
    rows = {r: [] for r in roles}
    for i in range(num_instances):
        sha = f"{i:04d}" + "a" * 60
        rows["base"].append({"sha256": sha, "aesthetic_score": 4.0 + (i % 3)})
        z = pattern + 0.5 * rng.standard_normal((ss_channels,) + (ss_resolution,) * 3).astype(np.float32)
        np.savez(roles["ss_latent"] / f"{sha}.npz", z=z)
        n = int(rng.integers(4, slat_grid ** 3 // 2))
        flat = rng.choice(slat_grid ** 3, n, replace=False)
        coords = np.stack(np.unravel_index(np.sort(flat), (slat_grid,) * 3), 1).astype(np.uint8)
        feats = {r: (coords.mean(1, keepdims=True) / slat_grid + 0.3 * rng.standard_normal((n, slat_channels)))
                 .astype(np.float32) for r in ("shape_latent", "pbr_latent")}
        for r in ("shape_latent", "pbr_latent"):
            np.savez(roles[r] / f"{sha}.npz", feats=feats[r], coords=coords)
        ss_row = {"sha256": sha, "ss_latent_encoded": True}
        sh_row = {"sha256": sha, "shape_latent_encoded": True, "shape_latent_tokens": n}
        pb_row = {"sha256": sha, "pbr_latent_encoded": True, "pbr_latent_tokens": n, "num_basecolor_tex": i % 2,
                  "num_metallic_tex": 1, "num_roughness_tex": 1}
        cond = roles["render_cond"] / sha
        cond.mkdir(exist_ok=True)
        frames = []
        for v in range(num_views):
            scale = {"sha256": sha, "view_idx": v, "total_scale": float(rng.uniform(0.8, 1.2))}
            for r, row in (("ss_latent", ss_row), ("shape_latent", sh_row), ("pbr_latent", pb_row)):
                (roles[r] / sha).mkdir(exist_ok=True)
                if r == "ss_latent":
                    np.savez(roles[r] / sha / f"view{v:02d}.npz", z=np.flip(z, axis=1 + v % 3).copy())
                else:
                    np.savez(roles[r] / sha / f"view{v:02d}.npz", feats=feats[r][::-1].copy(), coords=coords)
                    row[f"{r}_view{v:02d}_tokens"] = n
                (roles[r] / sha / f"view{v:02d}_scale.json").write_text(json.dumps(scale))
                row[f"{r}_view{v:02d}_encoded"] = True
            img = np.zeros((image_size, image_size, 4), np.uint8)
            lo, hi = image_size // 4, 3 * image_size // 4
            img[lo:hi, lo + v:hi, :3] = rng.integers(0, 255, 3, dtype=np.uint8)
            img[lo:hi, lo + v:hi, 3] = 255
            Image.fromarray(img, "RGBA").save(cond / f"{v:03d}.png")
            frames.append({"file_path": f"{v:03d}.png", "camera_angle_x": 0.7,
                           "transform_matrix": _camera(rng, 2.0 + v).tolist()})
        (cond / "transforms.json").write_text(json.dumps({"aabb": [[-0.5] * 3, [0.5] * 3], "frames": frames}))
        rows["ss_latent"].append(ss_row)
        rows["shape_latent"].append(sh_row)
        rows["pbr_latent"].append(pb_row)
        rows["render_cond"].append({"sha256": sha, "cond_rendered": True})
    for r, d in roles.items():
        _write_csv(d / "metadata.csv", rows[r])
    return {"synthetic": {r: str(d) for r, d in roles.items()}}


def main(argv=None):
    """``python -m pixal3d.datasets.synthetic OUT_DIR``: writes the dataset and prints its ``--data_dir`` JSON."""
    import argparse
    ap = argparse.ArgumentParser(description="Write a small synthetic training dataset in the real on-disk layout.")
    ap.add_argument("root")
    ap.add_argument("--num_instances", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(json.dumps(write_synthetic_dataset(args.root, num_instances=args.num_instances, seed=args.seed)))


if __name__ == "__main__":
    main()
