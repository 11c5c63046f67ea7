#!/usr/bin/env python
"""Export every shared 3D asset through the O-Voxel pipeline to a validated GLB, with per-step timings.

For each asset folder under ``--assets`` (default ``../shared/data/assets3d``; the main file is taken from
``MANIFEST.tsv`` when present, else the first mesh file in the folder):

  1. ``load``      ``load_mesh`` + ``normalize_scene`` (§3.1: bbox centre, 0.99999 / max extent -> [-0.5, 0.5]³)
  2. ``pbr_voxel`` ``textured_mesh_to_volumetric_attr(scene, grid_size=R, aabb=unit cube)`` -> PBR voxels (§3.5)
  3. ``to_ovoxel`` ``mesh_to_flexible_dual_grid`` of the flattened scene at R (toolkit weights 1 / 0.2 / 1e-2)
  4. ``to_mesh``   ``flexible_dual_grid_to_mesh(coords, dual·R − coords, intersected, None, aabb, grid_size=R)``
  5. ``to_glb``    ``to_glb(..., decimation_target=--faces, texture_size=--texture)`` (clean-up, QEM, xatlas, bake)
  6. ``export``    ``export_glb`` -> ``<out>/glb/<asset>.glb``
  7. ``validate``  ``node tests/tools/validate_gltf.js`` (Khronos glTF validator): errors / warnings / infos

Each asset runs in its own child process (``--worker``) with a wall-clock limit (``--timeout``), so a crash, an
out-of-memory kill or a hang is recorded as a failure with its reason and the run goes on. Rows are appended to
``<out>/report.jsonl``; a run skips assets whose GLB and successful report row both exist (resumable); failed assets
are retried unless ``--skip-failed``. At the end ``<out>/report.md`` (per-asset table + totals) and
``<out>/report.json`` are (re)written from the rows; ``--summarize`` only rewrites them.

Usage:
  nice -n 10 python scripts/export_all_assets.py --out /tmp/pixal3d_reports/export256
  python scripts/export_all_assets.py --out DIR --only khronos_suzanne quaternius_barrel
  python scripts/export_all_assets.py --out DIR --summarize
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
import resource
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ASSETS = REPO.parent / "shared" / "data" / "assets3d"
VALIDATOR = REPO / "tests" / "tools" / "validate_gltf.js"
MESH_EXTS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
STEPS = ("load", "pbr_voxel", "to_ovoxel", "to_mesh", "to_glb", "export", "validate")
LAYOUT = {"base_color": slice(0, 3), "metallic": slice(3, 4), "roughness": slice(4, 5), "alpha": slice(5, 6)}


# ----------------------------------------------------------------------------------------------------------------------
# asset discovery
# ----------------------------------------------------------------------------------------------------------------------
def read_manifest(assets_root: Path) -> dict:
    """``{asset: {"file": Path, "category": str, "triangles": int}}`` from ``MANIFEST.tsv`` next to the assets folder
    (empty dict when there is none)."""
    man = assets_root.parent / "MANIFEST.tsv"
    out = {}
    if not man.is_file():
        return out
    with man.open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row.get("kind") != "3d":
                continue
            rel = Path(row["rel_path"])
            name = rel.parts[1] if len(rel.parts) > 2 else rel.stem
            cat = {"yes": "full-PBR", "baseColor-only": "baseColor-only",
                   "no-textures": "factor-only"}.get(row.get("pbr_textures", ""), row.get("pbr_textures", "?"))
            out[name] = {"file": assets_root.parent / rel, "category": cat,
                         "triangles": int(row["triangles"]) if row.get("triangles", "").isdigit() else None}
    return out


def find_assets(assets_root: Path) -> dict:
    """Every asset folder (or loose mesh file) under ``assets_root`` -> ``{name, file, category, triangles}``."""
    if not assets_root.is_dir():
        raise SystemExit(f"error: assets folder not found: {assets_root}")
    manifest = read_manifest(assets_root)
    assets = {}
    for p in sorted(assets_root.iterdir()):
        if p.is_dir():
            info = manifest.get(p.name)
            if info is not None and info["file"].is_file():
                assets[p.name] = dict(info)
                continue
            mesh = next((m for ext in MESH_EXTS for m in sorted(p.glob(f"*{ext}"))), None)
            if mesh is not None:
                assets[p.name] = {"file": mesh, "category": "?", "triangles": None}
        elif p.suffix.lower() in MESH_EXTS:
            assets[p.stem] = {"file": p, "category": "?", "triangles": None}
    return assets


# ----------------------------------------------------------------------------------------------------------------------
# one asset (runs in a child process)
# ----------------------------------------------------------------------------------------------------------------------
def validate_glb(path: Path, timeout: float = 300) -> dict:
    """Khronos validator summary ``{errors, warnings, infos, hints, codes}`` (codes: message code -> count, errors and
    warnings only). Raises RuntimeError when node / the validator cannot run."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; the Khronos glTF validator runs on node")
    r = subprocess.run([node, str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=timeout,
                       cwd=str(REPO))
    if r.returncode == 2 or not r.stdout.strip():
        raise RuntimeError(f"validator could not run (rc={r.returncode}): {r.stderr.strip()[:500]}")
    rep = json.loads(r.stdout)
    iss = rep["issues"]
    codes = {}
    for m in iss.get("messages", []):
        if m.get("severity") in (0, 1):
            key = f"{'E' if m['severity'] == 0 else 'W'}:{m['code']}"
            codes[key] = codes.get(key, 0) + 1
    return {"errors": iss["numErrors"], "warnings": iss["numWarnings"], "infos": iss["numInfos"],
            "hints": iss["numHints"], "codes": codes}


def to_glb_substeps(log: str) -> dict:
    """Durations of to_glb's stages from its ``verbose`` log lines ``[to_glb   12.34s] cleaned: ...``: the time from
    the previous line to each stage's line, keyed by the stage's first word (cleaned, decimated, unwrapped, baked,
    textures, done)."""
    out, prev = {}, 0.0
    for line in log.splitlines():
        m = re.match(r"\[to_glb\s+([0-9.]+)s\]\s+(\w+)", line)
        if m:
            t = float(m.group(1))
            out[m.group(2)] = round(t - prev, 3)
            prev = t
    return out


def process_asset(name: str, mesh_file: Path, out_dir: Path, res: int, faces: int, texture: int) -> dict:
    """Run steps 1-7 for one asset; returns the report row (raises on the first failing step, with the step named)."""
    import warnings

    import numpy as np
    import torch

    from pixal3d.ovoxel import (export_glb, flexible_dual_grid_to_mesh, load_mesh, mesh_to_flexible_dual_grid,
                                normalize_scene, textured_mesh_to_volumetric_attr, to_glb)

    torch.set_num_threads(1)
    box = [[-0.5] * 3, [0.5] * 3]
    row = {"asset": name, "file": str(mesh_file), "res": res, "face_budget": faces, "texture": texture,
           "seconds": {}}
    caught = []

    def step(label, fn):
        t = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                out = fn()
            caught.extend(f"{label}: {x.message}" for x in w)
        except Exception as exc:
            raise RuntimeError(f"step '{label}' failed: {type(exc).__name__}: {exc}") from exc
        row["seconds"][label] = round(time.perf_counter() - t, 4)
        return out

    scene = step("load", lambda: normalize_scene(load_mesh(mesh_file)))
    coords, attrs = step("pbr_voxel", lambda: textured_mesh_to_volumetric_attr(scene, grid_size=res, aabb=box))
    row["pbr_voxels"] = int(len(coords))
    if len(coords) == 0:
        raise RuntimeError("step 'pbr_voxel' produced no voxels")
    mesh = scene.to_mesh() if hasattr(scene, "to_mesh") else scene.dump(concatenate=True)
    v, f = np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64)
    row["input_faces"] = int(len(f))
    vox, dual, inter = step("to_ovoxel", lambda: mesh_to_flexible_dual_grid(
        v, f, grid_size=res, aabb=box, face_weight=1.0, boundary_weight=0.2, regularization_weight=1e-2))
    row["ovoxel_voxels"] = int(len(vox))
    local = dual * res - vox.to(dual.dtype)
    row["local_out_of_unit"] = int(((local < 0) | (local > 1)).any(1).sum())
    mv, mf = step("to_mesh", lambda: flexible_dual_grid_to_mesh(vox, local, inter, None, box, grid_size=res))
    row["dual_mesh_faces"] = int(len(mf))
    feats = np.concatenate([attrs["base_color"], attrs["metallic"], attrs["roughness"], attrs["alpha"]],
                           1).astype(np.float32) / 255.0
    log = io.StringIO()

    def bake():
        with contextlib.redirect_stdout(log):
            return to_glb(mv.numpy(), mf.numpy(), feats, coords, LAYOUT, box, grid_size=res,
                          decimation_target=faces, texture_size=texture, verbose=True)

    glb = step("to_glb", bake)
    row["to_glb_substeps"] = to_glb_substeps(log.getvalue())
    row["glb_faces"] = int(len(glb.faces))
    row["glb_vertices"] = int(len(glb.vertices))
    glb_path = out_dir / "glb" / f"{name}.glb"
    step("export", lambda: export_glb(glb, glb_path, overwrite=True))
    row["glb_bytes"] = glb_path.stat().st_size
    row["validator"] = step("validate", lambda: validate_glb(glb_path))
    row["glb"] = str(glb_path)
    row["total_s"] = round(sum(row["seconds"].values()), 4)
    row["slowest_step"] = max(row["seconds"], key=row["seconds"].get)
    row["warnings"] = sorted(set(caught))[:20]
    return row


def worker_main(args) -> int:
    """Child process: process one asset and write its row as JSON to ``--row-file``."""
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    try:
        row = process_asset(args.worker, Path(args.file), args.out, args.res, args.faces, args.texture)
        rc = 0
    except Exception as exc:  # recorded, the parent goes on
        row = {"asset": args.worker, "file": args.file, "res": args.res,
               "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        rc = 1
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(args.row_file).write_text(json.dumps(row))
    return rc


# ----------------------------------------------------------------------------------------------------------------------
# parent: loop, resume, report
# ----------------------------------------------------------------------------------------------------------------------
def load_rows(path: Path) -> dict:
    """Last row per asset from the JSONL report (later rows override earlier ones)."""
    rows = {}
    if path.is_file():
        for i, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                print(f"warning: {path}:{i + 1} is not valid JSON; ignored", file=sys.stderr)
                continue
            rows[r["asset"]] = r
    return rows


def run_one(name: str, info: dict, args) -> dict:
    row_file = args.out / "rows" / f"{name}.json"
    row_file.parent.mkdir(parents=True, exist_ok=True)
    row_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--file", str(info["file"]),
           "--out", str(args.out), "--res", str(args.res), "--faces", str(args.faces),
           "--texture", str(args.texture), "--row-file", str(row_file)]
    log = args.out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=args.timeout, cwd=str(REPO))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    if row_file.is_file():
        row = json.loads(row_file.read_text())
    elif rc is None:
        row = {"asset": name, "file": str(info["file"]), "res": args.res,
               "error": f"TimeoutExpired: no result within --timeout {args.timeout:.0f} s (child killed)"}
    else:
        tail = log.read_text()[-800:] if log.is_file() else ""
        row = {"asset": name, "file": str(info["file"]), "res": args.res,
               "error": f"child exited with rc={rc} without a result (killed? out of memory?); log tail: {tail}"}
    row.setdefault("wall_s", round(time.perf_counter() - t0, 3))
    row["category"] = info.get("category", "?")
    row["manifest_triangles"] = info.get("triangles")
    return row


def _fmt_s(x):
    return "–" if x is None else f"{x:.2f}"


def write_summary(rows: dict, args) -> None:
    """``report.json`` (all rows + aggregates) and ``report.md`` (per-asset table, per-step totals)."""
    ok = {k: r for k, r in rows.items() if "error" not in r}
    agg = {"assets": len(rows), "ok": len(ok), "failed": len(rows) - len(ok)}
    if ok:
        agg["step_seconds_total"] = {s: round(sum(r["seconds"].get(s, 0) for r in ok.values()), 2) for s in STEPS}
        agg["step_seconds_median"] = {}
        for s in STEPS:
            vals = sorted(r["seconds"].get(s, 0) for r in ok.values())
            agg["step_seconds_median"][s] = round(vals[len(vals) // 2], 3)
        agg["slowest_step_overall"] = max(agg["step_seconds_total"], key=agg["step_seconds_total"].get)
        agg["slowest_step_counts"] = {}
        for r in ok.values():
            agg["slowest_step_counts"][r["slowest_step"]] = agg["slowest_step_counts"].get(r["slowest_step"], 0) + 1
        agg["validator_errors_total"] = sum(r["validator"]["errors"] for r in ok.values())
        agg["validator_warnings_total"] = sum(r["validator"]["warnings"] for r in ok.values())
        agg["assets_with_validator_errors"] = sorted(k for k, r in ok.items() if r["validator"]["errors"])
        codes = {}
        for r in ok.values():
            for c, n in r["validator"]["codes"].items():
                codes[c] = codes.get(c, 0) + n
        agg["validator_codes"] = codes
        agg["total_seconds"] = round(sum(r["total_s"] for r in ok.values()), 1)
        agg["peak_rss_mb_max"] = max(r.get("peak_rss_mb", 0) for r in ok.values())
    hdr = ("| asset | category | in faces | PBR voxels | O-Voxel voxels | dual-mesh faces | GLB faces | "
           + " | ".join(f"{s} s" for s in STEPS) + " | total s | slowest | peak MB | val. err | val. warn |")
    lines = [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    for k in sorted(rows):
        r = rows[k]
        if "error" in r:
            reason = r["error"].replace("|", "/").replace("\n", " ")[:160]
            lines.append(f"| {k} | {r.get('category', '?')} | FAILED: {reason} |")
            continue
        sec = r["seconds"]
        lines.append(f"| {k} | {r['category']} | {r['input_faces']} | {r['pbr_voxels']} | {r['ovoxel_voxels']} | "
                     f"{r['dual_mesh_faces']} | {r['glb_faces']} | "
                     + " | ".join(_fmt_s(sec.get(s)) for s in STEPS)
                     + f" | {r['total_s']:.1f} | {r['slowest_step']} | {r.get('peak_rss_mb', 0):.0f} | "
                       f"{r['validator']['errors']} | {r['validator']['warnings']} |")
    if ok:
        lines.append("| **total** | | | | | | | " + " | ".join(f"{agg['step_seconds_total'][s]:.1f}" for s in STEPS)
                     + f" | {agg['total_seconds']:.1f} | {agg['slowest_step_overall']} | "
                       f"{agg['peak_rss_mb_max']:.0f} | {agg['validator_errors_total']} | "
                       f"{agg['validator_warnings_total']} |")
    cfg = next(iter(ok.values()), {})
    res, faces, tex = cfg.get("res", args.res), cfg.get("face_budget", args.faces), cfg.get("texture", args.texture)
    md = [f"# O-Voxel export of the shared assets at {res}³ (face budget {faces}, texture {tex})",
          "", f"{agg['ok']} of {agg['assets']} assets exported; {agg['failed']} failed.", "", *lines, ""]
    subs = [r["to_glb_substeps"] for r in ok.values() if r.get("to_glb_substeps")]
    if subs:
        keys = list(dict.fromkeys(k for d in subs for k in d))
        agg["to_glb_substeps_total"] = {k: round(sum(d.get(k, 0) for d in subs), 2) for k in keys}
        md += [f"to_glb stages summed over the {len(subs)} assets that logged them (s; each = time since the "
               "previous stage): " + ", ".join(f"{k} {v:.1f}" for k, v in agg["to_glb_substeps_total"].items()), ""]
    if ok:
        md += [f"Validator message codes (errors E / warnings W, summed): {json.dumps(agg['validator_codes'])}", ""]
    (args.out / "report.md").write_text("\n".join(md))
    (args.out / "report.json").write_text(json.dumps({"config": {"res": res, "faces": faces, "texture": tex},
                                                      "aggregate": agg, "rows": rows}, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="folder of asset folders")
    ap.add_argument("--out", type=Path, required=True, help="output folder (GLBs, report.jsonl/json/md, logs)")
    ap.add_argument("--res", type=int, default=256, help="grid resolution R (PBR voxels and dual grid)")
    ap.add_argument("--faces", type=int, default=500_000, help="to_glb face budget (decimation_target)")
    ap.add_argument("--texture", type=int, default=1024, help="to_glb texture size")
    ap.add_argument("--timeout", type=float, default=1800, help="per-asset wall-clock limit in seconds")
    ap.add_argument("--only", nargs="*", default=None, help="asset names to run (default: all)")
    ap.add_argument("--skip-failed", action="store_true", help="do not retry assets whose last row is a failure")
    ap.add_argument("--summarize", action="store_true", help="only rewrite report.md/report.json from the rows")
    ap.add_argument("--no-progress", action="store_true")
    # child-process mode (internal)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--row-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.res < 8 or args.faces < 4 or args.texture < 8:
        ap.error("--res must be >= 8, --faces >= 4, --texture >= 8")
    if args.worker:
        return worker_main(args)

    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "report.jsonl"
    rows = load_rows(jsonl)
    if args.summarize:
        write_summary(rows, args)
        print(f"{len(rows)} rows -> {args.out / 'report.md'}")
        return 0
    if not VALIDATOR.is_file() or not (REPO / "node_modules" / "gltf-validator").is_dir():
        ap.error(f"the Khronos validator is not available ({VALIDATOR}, node_modules/gltf-validator); run `npm ci`")
    assets = find_assets(args.assets)
    if args.only:
        missing = sorted(set(args.only) - set(assets))
        if missing:
            ap.error(f"unknown assets: {', '.join(missing)}")
        assets = {k: assets[k] for k in args.only}
    todo = []
    for name, info in assets.items():
        r = rows.get(name)
        if r is not None and "error" not in r and Path(r.get("glb", "")).is_file():
            continue
        if r is not None and "error" in r and args.skip_failed:
            continue
        todo.append(name)
    print(f"{len(assets)} assets, {len(assets) - len(todo)} already done, {len(todo)} to run -> {args.out}")
    from tqdm import tqdm
    bar = tqdm(todo, disable=args.no_progress, desc=f"export@{args.res}")
    for name in bar:
        bar.set_postfix_str(name)
        row = run_one(name, assets[name], args)
        rows[name] = row
        with jsonl.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if "error" in row:
            msg = f"{time.strftime('%H:%M:%S')} {name}: {row['error'][:1000]}"
            with (args.out / "failures.log").open("a") as fh:
                fh.write(msg + "\n")
            tqdm.write(f"FAILED {msg[:300]}")
        else:
            tqdm.write(f"{name}: {row['ovoxel_voxels']} vox, {row['glb_faces']} faces, {row['total_s']:.1f} s "
                       f"(slowest {row['slowest_step']}), validator {row['validator']['errors']} err / "
                       f"{row['validator']['warnings']} warn")
        write_summary(rows, args)
    write_summary(rows, args)
    n_fail = sum("error" in r for r in rows.values() if r["asset"] in assets)
    print(f"done: {len(assets) - n_fail} ok, {n_fail} failed -> {args.out / 'report.md'}")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
