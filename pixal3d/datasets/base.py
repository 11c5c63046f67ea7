"""Dataset base: ``--data_dir`` roots, merged ``metadata.csv`` files, per-item seeded randomness, collation into
load-balanced micro-batches (TRELLIS2_SPEC §5.2, §5.5).

On-disk layout read here (what the data toolkit must write)::

    --data_dir '{"<source>": {"<role>": "<dir>", ...}, ...}'

Every role dir holds a ``metadata.csv`` with a ``sha256`` column; the files of all roles of a source are merged on
``sha256`` (the first role listed wins where two give a value). Roles read by the datasets: ``ss_latent``,
``shape_latent``, ``pbr_latent`` (latent ``.npz`` files directly inside) and ``render_cond``
(``{sha256}/transforms.json`` + images); ``base`` and other roles only contribute metadata. A plain path (or a
comma-separated list) means ``{"<dirname>": {"base": path}}`` with every role at that path.
"""
import csv
import json
import math
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["StandardDatasetBase", "parse_roots", "read_metadata", "load_balanced_group_indices", "DatasetError"]


class DatasetError(ValueError):
    """A dataset folder, metadata column or file that is missing or malformed (the message says which and how to fix)."""


def parse_roots(data_dir) -> Dict[str, Dict[str, str]]:
    """``--data_dir`` → ``{source: {role: dir}}``.

    Accepts the JSON object (string or dict), or a comma-separated list of dataset roots (each becomes one source
    whose every role is that root).

    Raises:
        DatasetError: malformed JSON, a non-dict entry, or a folder that does not exist.
    """
    if isinstance(data_dir, str):
        text = data_dir.strip()
        if text.startswith("{"):
            try:
                data_dir = json.loads(text)
            except json.JSONDecodeError as e:
                raise DatasetError(f"--data_dir is not valid JSON ({e}); expected "
                                   f'{{"source": {{"role": "dir"}}}}') from e
        else:
            data_dir = {Path(p).name or p: {"*": p} for p in text.split(",") if p}
    if not isinstance(data_dir, dict) or not data_dir:
        raise DatasetError(f"--data_dir must map sources to {{role: dir}} dicts, got {data_dir!r}")
    roots = {}
    for source, roles in data_dir.items():
        if not isinstance(roles, dict) or not roles:
            raise DatasetError(f"--data_dir[{source!r}] must be a non-empty {{role: dir}} dict, got {roles!r}")
        for role, d in roles.items():
            if not Path(d).is_dir():
                raise DatasetError(f"--data_dir[{source!r}][{role!r}] = {d!r} is not a folder")
        roots[source] = {r: str(d) for r, d in roles.items()}
    return roots


def _parse_value(v: str):
    if v == "" or v.lower() == "nan":
        return None
    if v in ("True", "true"):
        return True
    if v in ("False", "false"):
        return False
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def read_metadata(role_dirs: Dict[str, str]) -> Dict[str, dict]:
    """Merges the ``metadata.csv`` of every role dir on ``sha256`` → ``{sha256: {column: value}}``.

    Values are parsed: ``True``/``False`` → bool, numbers → int/float, empty/``nan`` → None. Where two role files give
    a column, the role listed first wins unless its value is empty.

    Raises:
        DatasetError: a role dir without ``metadata.csv`` or a file without a ``sha256`` column.
    """
    rows: Dict[str, dict] = {}
    for role, d in role_dirs.items():
        path = Path(d) / "metadata.csv"
        if not path.is_file():
            raise DatasetError(f"{path} is missing: every --data_dir role folder needs a metadata.csv with a "
                               f"sha256 column (written by the data toolkit step that filled role {role!r})")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "sha256" not in reader.fieldnames:
                raise DatasetError(f"{path} has no 'sha256' column")
            for rec in reader:
                row = rows.setdefault(rec["sha256"], {})
                for k, v in rec.items():
                    if k is None or k == "sha256":
                        continue
                    val = _parse_value(v or "")
                    if row.get(k) is None:
                        row[k] = val
    return rows


def load_balanced_group_indices(loads: Sequence[float], num_groups: int, equal_size: bool = True) -> List[List[int]]:
    """Greedy longest-processing-time partition of item indices into ``num_groups`` groups.

    Items are taken from the heaviest; each goes to the lightest group that still has room (with ``equal_size``, at
    most ``ceil(n / num_groups)`` items per group). Groups are returned with their indices sorted.
    """
    n = len(loads)
    if not 1 <= num_groups <= max(n, 1):
        raise ValueError(f"cannot split {n} items into {num_groups} groups")
    cap = math.ceil(n / num_groups) if equal_size else n
    groups: List[List[int]] = [[] for _ in range(num_groups)]
    totals = [0.0] * num_groups
    for i in sorted(range(n), key=lambda k: (-loads[k], k)):
        g = min((j for j in range(num_groups) if len(groups[j]) < cap), key=lambda j: (totals[j], j))
        groups[g].append(i)
        totals[g] += loads[i]
    return [sorted(g) for g in groups]


class StandardDatasetBase(Dataset):
    """Instances ``(source, sha256)`` selected from merged metadata (TRELLIS2_SPEC §5.5).

    Subclasses implement ``filter_metadata(source, rows) -> [sha256, ...]`` and ``get_instance(source, sha256, rng)
    -> dict``; ``roles`` names the role folders they read files from.

    Args:
        roots: ``--data_dir`` value (see :func:`parse_roots`).
        skip_list: sha256 values (or a path to a text file with one per line) to exclude.
        seed: base seed of the per-item randomness (view choice, replacement of failing items).

    Raises:
        DatasetError: missing folders/metadata/columns, or no instance passing the filters.
    """

    roles: Sequence[str] = ()
    max_failures = 10

    def __init__(self, roots, skip_list=None, seed: int = 0):
        self.roots = parse_roots(roots)
        self.seed = int(seed)
        self.epoch = 0
        if isinstance(skip_list, str):
            skip_list = Path(skip_list).read_text().split()
        skip = set(skip_list or [])
        self.instances = []
        self.metadata = {}
        for source, role_dirs in self.roots.items():
            if "*" in role_dirs:
                role_dirs = {r: role_dirs["*"] for r in (*self.roles, "base")}
                self.roots[source] = role_dirs
            missing = [r for r in self.roles if r not in role_dirs]
            if missing:
                raise DatasetError(f"{type(self).__name__} reads roles {list(self.roles)} but --data_dir[{source!r}] "
                                   f"lacks {missing}; add them as \"role\": \"folder\"")
            unique = {}
            for r, d in role_dirs.items():  # a folder serving several roles is read once
                unique.setdefault(os.path.abspath(d), r)
            rows = read_metadata({r: d for d, r in unique.items()})
            self.metadata[source] = rows
            kept = [s for s in self.filter_metadata(source, rows) if s not in skip]
            self.instances += [(source, s) for s in sorted(kept)]
        if not self.instances:
            raise DatasetError(f"{type(self).__name__}: no instance passes the filters in {self.roots}; check the "
                               f"*_encoded / cond_rendered columns of metadata.csv and min_aesthetic_score/max_tokens")

    # ------------------------------------------------------------------ helpers for subclasses
    def role_dir(self, source: str, role: str) -> Path:
        """Folder of ``role`` for ``source``."""
        return Path(self.roots[source][role])

    @staticmethod
    def require_columns(rows: Dict[str, dict], columns: Sequence[str], source: str) -> None:
        """Raises DatasetError if no row has one of ``columns``."""
        present = set().union(*(r.keys() for r in rows.values())) if rows else set()
        missing = [c for c in columns if c not in present]
        if missing:
            raise DatasetError(f"metadata.csv of source {source!r} lacks columns {missing} (present: "
                               f"{sorted(present)}); run the data toolkit step that writes them")

    @staticmethod
    def aesthetic_ok(row: dict, min_score: Optional[float]) -> bool:
        """``aesthetic_score >= min_score`` (missing scores fail; ``None`` disables the filter)."""
        if min_score is None:
            return True
        v = row.get("aesthetic_score")
        return v is not None and v >= min_score

    # ------------------------------------------------------------------ torch Dataset API
    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch mixed into the per-item seeds (the trainer calls it before each epoch's loader)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> dict:
        """The instance at ``index`` as a dict (plus ``'_id'`` = sha256). Randomness comes from
        ``default_rng([seed, epoch, index])``, so an item is reproducible whatever process loads it. A failing item
        is replaced by a random other one (with a warning) up to ``max_failures`` times.

        Raises:
            DatasetError: ``max_failures`` consecutive failures (the last error is chained).
        """
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        last = None
        for _ in range(self.max_failures):
            source, sha = self.instances[index]
            try:
                item = self.get_instance(source, sha, rng)
                item["_id"] = sha
                return item
            except (OSError, KeyError, ValueError) as e:
                last = e
                warnings.warn(f"{type(self).__name__}: skipping {source}/{sha}: {e}")
                index = int(rng.integers(len(self.instances)))
        raise DatasetError(f"{self.max_failures} consecutive items failed to load; last error: {last}") from last

    def filter_metadata(self, source: str, rows: Dict[str, dict]) -> List[str]:
        """sha256 values of ``source`` to use (subclasses)."""
        raise TypeError(f"{type(self).__name__} must define filter_metadata")

    def get_instance(self, source: str, sha256: str, rng: np.random.Generator) -> dict:
        """Loads one instance (subclasses)."""
        raise TypeError(f"{type(self).__name__} must define get_instance")

    # ------------------------------------------------------------------ batching
    sparse_keys: Sequence[str] = ()

    def item_load(self, item: dict) -> float:
        """Cost used to balance micro-batches: the token count of sparse items, 1 for dense ones."""
        return float(item["coords"].shape[0]) if "coords" in item else 1.0

    def collate_fn(self, batch: List[dict], split_size: int = 1) -> List[dict]:
        """Items → ``split_size`` micro-batches balanced by :meth:`item_load` (TRELLIS2_SPEC §5.2).

        Dense tensors are stacked; numbers become float32 tensors ``[B]``; the keys in ``sparse_keys`` become
        :class:`pixal3d.sparse.SparseTensor` batches sharing the items' ``coords``; ``'_ids'`` lists the sha256 values.
        """
        groups = load_balanced_group_indices([self.item_load(b) for b in batch], split_size)
        return [self._collate_group([batch[i] for i in g]) for g in groups]

    def _collate_group(self, items: List[dict]) -> dict:
        from pixal3d.sparse import SparseTensor
        out = {"_ids": [it["_id"] for it in items]}
        coords = None
        if "coords" in items[0]:
            coords = [it["coords"] for it in items]
        for key in items[0]:
            if key in ("_id", "coords"):
                continue
            vals = [it[key] for it in items]
            if key in self.sparse_keys:
                out[key] = SparseTensor.from_tensor_list(vals, coords)
            elif isinstance(vals[0], torch.Tensor):
                out[key] = torch.stack(vals)
            elif isinstance(vals[0], (int, float)):
                out[key] = torch.tensor(vals, dtype=torch.float32)
            else:
                out[key] = vals
        if coords is not None and len(self.sparse_keys) > 1:
            # one coords tensor for all sparse fields, so the models' "same coords" checks are identity checks
            first = out[self.sparse_keys[0]]
            for key in self.sparse_keys[1:]:
                if key in out:
                    out[key] = first.replace(out[key].feats)
        return out
