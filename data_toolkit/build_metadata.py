"""Build or update ``R/metadata.csv`` from a folder of assets, and/or merge the steps' records (``--finalize``).

Usage::

    python -m data_toolkit.build_metadata --input /path/to/assets3d --root R      # scan (sha256, local_path, license)
    python -m data_toolkit.build_metadata --root R --finalize                      # merge every new_records/ folder

Scanning keeps the status columns of assets already listed and adds new assets; a file whose sha256 equals an
earlier file's is reported and skipped (one row per sha256).
"""
try:
    from . import _bootstrap  # noqa: F401
except ImportError:  # run as a file
    import _bootstrap  # noqa: F401

import argparse
import sys
import time
from pathlib import Path

from pixal3d.data.metadata import ROOT_METADATA_COLUMNS, finalize, read_csv, scan_assets, write_csv


def main(argv=None):
    """Runs the scan and/or the merge; returns ``{'assets': n, 'new': n, 'duplicates': n, 'merged': {...}}``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="dataset root (created if missing)")
    p.add_argument("--input", default=None, help="folder of assets to scan (glb/gltf/obj/ply/stl/off)")
    p.add_argument("--finalize", action="store_true", help="merge new_records/part_*.csv into each metadata.csv")
    p.add_argument("--default_aesthetic_score", type=float, default=None,
                   help="aesthetic_score for assets that have none (the datasets filter on it; default: empty)")
    args = p.parse_args(argv)
    if not args.input and not args.finalize:
        p.error("give --input to scan assets and/or --finalize to merge records")
    t0 = time.time()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    out = {"assets": 0, "new": 0, "duplicates": 0, "merged": {}}
    if args.input:
        meta = root / "metadata.csv"
        cols, rows = read_csv(meta) if meta.is_file() else (list(ROOT_METADATA_COLUMNS), {})
        cols += [c for c in ROOT_METADATA_COLUMNS if c not in cols]
        seen = {}
        for a in scan_assets(args.input):
            if a["sha256"] in seen:
                print(f"[build_metadata] duplicate content: {a['local_path']} == {seen[a['sha256']]} (skipped)",
                      file=sys.stderr)
                out["duplicates"] += 1
                continue
            seen[a["sha256"]] = a["local_path"]
            row = rows.get(a["sha256"])
            if row is None:
                row = rows[a["sha256"]] = {}
                out["new"] += 1
            row.update(a)
        if args.default_aesthetic_score is not None:
            for r in rows.values():
                if not r.get("aesthetic_score"):
                    r["aesthetic_score"] = args.default_aesthetic_score
        write_csv(meta, cols, (rows[k] for k in sorted(rows)))
        out["assets"] = len(rows)
    if args.finalize:
        out["merged"] = finalize(root)
    n_merged = sum(out["merged"].values())
    print(f"[build_metadata] {out['assets']} assets listed ({out['new']} new, {out['duplicates']} duplicates "
          f"skipped); {n_merged} records merged in {len(out['merged'])} folders; {time.time() - t0:.1f} s",
          flush=True)
    return out


if __name__ == "__main__":
    main()
