"""The shared step runner of the data toolkit: sharding, worker processes, resumability, failure log, summary.

A step is a :class:`Step` whose callables are module-level functions (so they pickle into ``spawn`` workers):

* ``setup(args) -> ctx``: parent-side; builds a picklable context dict (output folders, options). It must contain
  ``record_dirs`` (folders whose ``new_records/part_{rank}.csv`` receive the records).
* ``select(ctx, row) -> bool``: whether an asset row (root ``metadata.csv`` + pending records) is eligible, e.g. its
  dump exists.
* ``is_done(ctx, sha) -> bool``: the step's outputs for ``sha`` are complete (resumability; outputs are written
  atomically, the completeness marker last).
* ``process(ctx, sha, row) -> record`` (module-level, it is pickled by reference into workers): does the work; returns the metadata record (dict of columns) or raises.
* ``existing_record(ctx, sha, row) -> record`` (optional): rebuilds the record of an already finished asset whose
  record is missing (e.g. the previous run was killed between the output and the record).

Run order per invocation: eligible assets sorted by sha256 → shard ``[rank::world_size]`` → finished ones skipped →
the rest processed by ``--workers`` processes (``spawn``) with a tqdm bar; each exception becomes a row of
``ROOT/logs/{step}_failures_rank{rank}.csv`` (sha256, local_path, step, error) and the run goes on; per-asset wall
times go to ``ROOT/logs/{step}_times_rank{rank}.csv``; a summary line ends the run.
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from .metadata import append_records, read_csv, read_root_metadata

__all__ = ["Step", "common_parser", "run_step", "atomic_path", "StepSummary"]


@dataclass(frozen=True)
class Step:
    """A data-toolkit step (see the module docstring for the contract of each callable)."""
    name: str
    add_args: Callable[[argparse.ArgumentParser], None]
    setup: Callable[[argparse.Namespace], dict]
    select: Callable[[dict, dict], bool]
    is_done: Callable[[dict, str], bool]
    process: Callable[[dict, str, dict], dict]
    existing_record: Optional[Callable[[dict, str, dict], dict]] = None
    description: str = ""


@dataclass
class StepSummary:
    """Counts of one run: ``done`` (processed now), ``failed``, ``skipped`` (already finished), ``seconds``."""
    step: str
    total: int
    done: int
    failed: int
    skipped: int
    seconds: float
    failure_log: Optional[Path]

    def line(self) -> str:
        s = (f"[{self.step}] done {self.done}, failed {self.failed}, skipped {self.skipped} (of {self.total} in "
             f"this shard) in {self.seconds:.1f} s")
        if self.failed:
            s += f"; failures in {self.failure_log}"
        return s


def atomic_path(path) -> Path:
    """A temporary sibling of ``path`` with the same suffix (write there, then ``os.replace(tmp, path)``)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def common_parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every step shares."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", required=True, help="dataset root (holds metadata.csv from build_metadata)")
    p.add_argument("--rank", type=int, default=0, help="this shard's index")
    p.add_argument("--world_size", type=int, default=1, help="number of shards")
    p.add_argument("--workers", type=int, default=1, help="worker processes (1 = in this process)")
    p.add_argument("--threads", type=int, default=1, help="torch/numba threads per worker")
    p.add_argument("--limit", type=int, default=None, help="process at most this many assets of the shard")
    p.add_argument("--instances", default=None,
                   help="comma-separated sha256 values or prefixes, or asset names, to restrict the run to")
    p.add_argument("--force", action="store_true", help="redo assets whose outputs already exist")
    p.add_argument("--no_progress", action="store_true", help="no tqdm bar")
    return p


def _init_worker(threads: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))
    try:
        import torch
        torch.set_num_threads(max(1, threads))
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        pass


def _timed(name: str, process: Callable, ctx: dict, sha: str, row: dict):
    t0 = time.perf_counter()
    try:
        rec = process(ctx, sha, row)
        if not isinstance(rec, dict):
            raise TypeError(f"step {name} returned {type(rec).__name__}, expected a record dict")
        rec = {"sha256": sha, **rec}
        return sha, rec, None, time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - every failure is logged, the run continues
        msg = f"{type(e).__name__}: {e}".replace("\n", " | ")
        tb = traceback.format_exc(limit=6).replace("\n", " | ")
        return sha, None, (msg[:2000], tb[-3000:]), time.perf_counter() - t0


def _known_shas(folder: Path) -> set:
    known = set()
    if (folder / "metadata.csv").is_file():
        known |= set(read_csv(folder / "metadata.csv")[1])
    for part in (folder / "new_records").glob("part_*.csv"):
        known |= set(read_csv(part)[1])
    return known


def _append_log(path: Path, header: List[str], rows: List[list]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(header)
        w.writerows(rows)


def _match(sel: List[str], sha: str, row: dict) -> bool:
    return any(sha.startswith(s) or row.get("name") == s for s in sel)


def run_step(step: Step, argv=None, parser: argparse.ArgumentParser = None) -> StepSummary:
    """Parses ``argv`` (common options + ``step.add_args``), runs the step and prints a summary line.

    Returns:
        the :class:`StepSummary`.

    Raises:
        FileNotFoundError: no ``ROOT/metadata.csv``. ValueError: bad ``--rank/--world_size/--workers``.
    """
    parser = parser or common_parser(step.description or step.name)
    step.add_args(parser)
    args = parser.parse_args(argv)
    if args.world_size < 1 or not 0 <= args.rank < args.world_size:
        raise ValueError(f"--rank must be in [0, --world_size); got rank {args.rank}, world_size {args.world_size}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    root = Path(args.root)
    t0 = time.perf_counter()
    rows = read_root_metadata(root)
    ctx = step.setup(args)
    record_dirs = [Path(d) for d in ctx["record_dirs"]]
    cands = sorted(s for s, r in rows.items() if step.select(ctx, r))
    if args.instances:
        sel = [s.strip() for s in args.instances.split(",") if s.strip()]
        cands = [s for s in cands if _match(sel, s, rows[s])]
    shard = cands[args.rank::args.world_size]
    if args.limit is not None:
        shard = shard[: args.limit]

    todo, skipped_recs = [], []
    known = None
    for sha in shard:
        if not args.force and step.is_done(ctx, sha):
            if step.existing_record is not None:
                known = _known_shas(record_dirs[0]) if known is None else known
                if sha not in known:
                    try:
                        skipped_recs.append({"sha256": sha, **step.existing_record(ctx, sha, rows[sha])})
                    except Exception as e:  # noqa: BLE001 - an unreadable old output is redone
                        print(f"[{step.name}] {sha[:12]}: existing output unreadable ({e}); redoing",
                              file=sys.stderr)
                        todo.append(sha)
                        continue
            continue
        todo.append(sha)
    n_skipped = len(shard) - len(todo)
    for d in record_dirs:
        append_records(d, args.rank, skipped_recs)

    logs = root / "logs"
    fail_log = logs / f"{step.name}_failures_rank{args.rank}.csv"
    time_log = logs / f"{step.name}_times_rank{args.rank}.csv"
    done = failed = 0
    bar = None
    if not args.no_progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=step.name, unit="asset", file=sys.stderr)

    def handle(result):
        nonlocal done, failed
        sha, rec, err, secs = result
        row = rows[sha]
        if err is None:
            for d in record_dirs:
                append_records(d, args.rank, [rec])
            done += 1
        else:
            failed += 1
            _append_log(fail_log, ["sha256", "local_path", "step", "error", "traceback"],
                        [[sha, row.get("local_path", ""), step.name, err[0], err[1]]])
            if bar is None:
                print(f"[{step.name}] FAILED {sha[:12]} ({row.get('name', '')}): {err[0]}", file=sys.stderr)
        _append_log(time_log, ["sha256", "name", "status", "seconds"],
                    [[sha, row.get("name", ""), "ok" if err is None else "failed", f"{secs:.3f}"]])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(failed=failed)

    if args.workers == 1 or len(todo) <= 1:
        _init_worker(args.threads)
        for sha in todo:
            handle(_timed(step.name, step.process, ctx, sha, rows[sha]))
    else:
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(args.threads,)) as ex:
            futs = {ex.submit(_timed, step.name, step.process, ctx, sha, rows[sha]): sha for sha in todo}
            for fut in as_completed(futs):
                try:
                    handle(fut.result())
                except Exception as e:  # noqa: BLE001 - e.g. a worker killed by the OS
                    handle((futs[fut], None, (f"worker process failed: {type(e).__name__}: {e}", ""), 0.0))
    if bar is not None:
        bar.close()
    summary = StepSummary(step.name, len(shard), done, failed, n_skipped, time.perf_counter() - t0, fail_log)
    print(summary.line(), flush=True)
    return summary


def main_for(step: Step) -> Callable[[Optional[list]], StepSummary]:
    """``main(argv=None)`` for a step script."""
    def main(argv=None):
        return run_step(step, argv)
    return main
