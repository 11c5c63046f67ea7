"""Asset scanning and ``metadata.csv`` bookkeeping of the data toolkit (TRELLIS2_SPEC §5.7).

Layout under a dataset root ``R``::

    R/metadata.csv                    one row per asset: sha256, local_path, file_type, name, license,
                                      aesthetic_score (optional), + the status columns of the resolution-free steps
    R/<step dir>/metadata.csv         rows of the assets that step produced, with that step's columns
    R/<dir>/new_records/part_{rank}.csv   records appended by a step run (one row per finished asset)
    R/<dir>/merged_records/{timestamp}_part_{rank}.csv   parts already merged by ``build_metadata --finalize``
    R/<dir>/statistics.txt            counts written by ``--finalize``

Every value is written as text; booleans as ``True``/``False`` (what ``pixal3d.datasets.base.read_metadata`` parses).
"""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["MODEL_EXTENSIONS", "file_sha256", "scan_assets", "read_csv", "write_csv", "append_records", "finalize",
           "read_root_metadata", "ROOT_METADATA_COLUMNS"]

#: Model file types the toolkit loads (trimesh loaders; FBX has none and is not scanned).
MODEL_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
#: Leading columns of the root ``metadata.csv`` (written by ``build_metadata``).
ROOT_METADATA_COLUMNS = ("sha256", "local_path", "file_type", "name", "license", "aesthetic_score")


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (the asset id, as the reference uses for downloaded files).

    Raises:
        FileNotFoundError: the file does not exist.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _license_from_source_txt(folder: Path) -> Optional[str]:
    p = folder / "SOURCE.txt"
    if not p.is_file():
        return None
    for line in p.read_text(errors="replace").splitlines():
        key, _, val = line.partition(":")
        if key.strip().lower() == "license" and val.strip():
            return val.strip()
    return None


def _manifest_licenses(input_dir: Path) -> List[Tuple[str, str]]:
    """``(rel_path, license)`` pairs of every ``MANIFEST.tsv`` in ``input_dir`` or its parent."""
    out = []
    for d in (input_dir, input_dir.parent):
        p = d / "MANIFEST.tsv"
        if not p.is_file():
            continue
        with open(p, newline="", errors="replace") as f:
            reader = csv.DictReader(f, delimiter="\t")
            if not reader.fieldnames or "rel_path" not in reader.fieldnames or "license" not in reader.fieldnames:
                continue
            out += [(r["rel_path"].strip(), (r["license"] or "").strip()) for r in reader if r.get("rel_path")]
    return out


def scan_assets(input_dir, extensions: Sequence[str] = MODEL_EXTENSIONS, hash_files: bool = True) -> List[dict]:
    """Finds the model files under ``input_dir`` (recursively, sorted) and describes each.

    Args:
        input_dir: folder of assets (e.g. ``assets3d/<name>/<file>.glb``; textures/.bin files beside them are fine).
        extensions: lower-case file suffixes counted as assets.
        hash_files: compute ``sha256`` (else the column is left empty).

    Returns:
        one dict per model file: ``sha256``, ``local_path`` (absolute), ``file_type`` (suffix without dot), ``name``
        (the asset folder name relative to ``input_dir``, or the file stem for files at the top level),
        ``license`` (from ``SOURCE.txt`` beside the file, else a ``MANIFEST.tsv`` in ``input_dir`` or its parent whose
        ``rel_path`` ends the file's path, else empty).

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder.
    """
    root = Path(input_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"asset folder {input_dir} does not exist")
    exts = tuple(e.lower() for e in extensions)
    manifest = _manifest_licenses(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.suffix.lower() not in exts or fn.startswith("."):
                continue
            lic = _license_from_source_txt(p.parent)
            if lic is None:
                posix = p.as_posix()
                lic = next((l for rel, l in manifest if posix.endswith("/" + rel.lstrip("/"))), "")
            rel_parent = p.parent.relative_to(root)
            out.append({
                "sha256": file_sha256(p) if hash_files else "",
                "local_path": str(p),
                "file_type": p.suffix.lower()[1:],
                "name": rel_parent.as_posix() if str(rel_parent) != "." else p.stem,
                "license": lic,
            })
    return out


def read_csv(path) -> Tuple[List[str], Dict[str, dict]]:
    """Reads a metadata CSV → ``(columns, {sha256: row dict of strings})`` (later duplicate rows win).

    Raises:
        FileNotFoundError: missing file. ValueError: no ``sha256`` column.
    """
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "sha256" not in reader.fieldnames:
            raise ValueError(f"{path} has no 'sha256' column (header: {reader.fieldnames})")
        rows: Dict[str, dict] = {}
        for r in reader:
            rows[r["sha256"]] = {k: ("" if v is None else v) for k, v in r.items() if k is not None}
        return list(reader.fieldnames), rows


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_csv(path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    """Writes rows (dicts; missing keys → empty) with the given column order, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(columns))
        for r in rows:
            w.writerow([_fmt(r.get(c)) for c in columns])
    os.replace(tmp, path)


def append_records(folder, rank: int, records: Sequence[dict]) -> Optional[Path]:
    """Appends step records (dicts with ``sha256``) to ``folder/new_records/part_{rank}.csv``.

    A part written earlier with other columns is rewritten with the union of columns. Returns the part path, or
    ``None`` when ``records`` is empty.
    """
    if not records:
        return None
    part = Path(folder) / "new_records" / f"part_{int(rank)}.csv"
    cols = ["sha256"]
    old_rows: List[dict] = []
    if part.is_file():
        with open(part, newline="") as f:
            reader = csv.DictReader(f)
            cols = list(reader.fieldnames or ["sha256"])
            old_rows = list(reader)
    for r in records:
        if "sha256" not in r:
            raise ValueError(f"record without sha256: {r}")
        cols += [k for k in r if k not in cols]
    if old_rows and cols == list(old_rows[0].keys()):
        with open(part, "a", newline="") as f:
            w = csv.writer(f)
            for r in records:
                w.writerow([_fmt(r.get(c)) for c in cols])
    else:
        write_csv(part, cols, old_rows + list(records))
    return part


def _statistics(columns: Sequence[str], rows: Dict[str, dict]) -> str:
    lines = [f"assets: {len(rows)}"]
    for c in columns:
        if c == "sha256":
            continue
        vals = [r.get(c, "") for r in rows.values()]
        n_true = sum(v == "True" for v in vals)
        n_false = sum(v == "False" for v in vals)
        if n_true or n_false:
            lines.append(f"{c}: True {n_true}, False {n_false}, empty {len(vals) - n_true - n_false}")
            continue
        nums = []
        for v in vals:
            try:
                nums.append(float(v))
            except ValueError:
                pass
        if nums:
            lines.append(f"{c}: {len(nums)} values, min {min(nums):g}, mean {sum(nums) / len(nums):g}, "
                         f"max {max(nums):g}")
        else:
            lines.append(f"{c}: {sum(v != '' for v in vals)} non-empty")
    return "\n".join(lines) + "\n"


def merge_folder(folder) -> int:
    """Merges ``folder/new_records/part_*.csv`` into ``folder/metadata.csv`` (rows updated on ``sha256``; later
    records win; empty values never overwrite), moves the parts to ``merged_records/{timestamp}_part_*.csv`` and
    rewrites ``statistics.txt``. Returns the number of merged record rows."""
    folder = Path(folder)
    parts = sorted((folder / "new_records").glob("part_*.csv"))
    meta_path = folder / "metadata.csv"
    cols, rows = (read_csv(meta_path) if meta_path.is_file() else (["sha256"], {}))
    n = 0
    for part in parts:
        pcols, _ = read_csv(part)
        cols += [c for c in pcols if c not in cols]
        with open(part, newline="") as f:
            for rec in csv.DictReader(f):
                row = rows.setdefault(rec["sha256"], {"sha256": rec["sha256"]})
                for k, v in rec.items():
                    if k is not None and v not in (None, ""):
                        row[k] = v
                n += 1
    if parts or not meta_path.is_file():
        write_csv(meta_path, cols, (rows[k] for k in sorted(rows)))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for part in parts:
        dest = folder / "merged_records" / f"{stamp}_{part.name}"
        dest.parent.mkdir(exist_ok=True)
        shutil.move(str(part), str(dest))
    (folder / "statistics.txt").write_text(_statistics(cols, rows))
    return n


def finalize(root) -> Dict[str, int]:
    """Merges every ``new_records`` folder under ``root`` (the root's own included) → ``{folder: rows merged}``.

    Raises:
        FileNotFoundError: ``root`` has no ``metadata.csv`` (run ``build_metadata`` first).
    """
    root = Path(root)
    if not (root / "metadata.csv").is_file():
        raise FileNotFoundError(f"{root}/metadata.csv is missing; run `python -m data_toolkit.build_metadata "
                                f"--input ASSETS --root {root}` first")
    out = {}
    for nr in sorted(root.rglob("new_records")):
        if nr.is_dir():
            out[str(nr.parent)] = merge_folder(nr.parent)
    merge_folder(root)
    return out


def read_root_metadata(root) -> Dict[str, dict]:
    """Rows of ``root/metadata.csv`` plus any not yet merged ``root/new_records`` parts (so steps see the status
    columns of earlier steps without an explicit ``--finalize``).

    Raises:
        FileNotFoundError: no ``metadata.csv`` (run ``build_metadata`` first).
    """
    root = Path(root)
    path = root / "metadata.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `python -m data_toolkit.build_metadata --input ASSETS "
                                f"--root {root}` first")
    _, rows = read_csv(path)
    for part in sorted((root / "new_records").glob("part_*.csv")):
        with open(part, newline="") as f:
            for rec in csv.DictReader(f):
                row = rows.get(rec["sha256"])
                if row is not None:
                    row.update({k: v for k, v in rec.items() if k is not None and v not in (None, "")})
    return rows
