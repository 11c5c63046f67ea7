"""Datasets read the on-disk layout written by ``write_synthetic_dataset`` through the real readers
(TRELLIS2_SPEC §5.5, PIXAL3D_SPEC §7.5), plus the sampler and micro-batch balancing (§5.2)."""
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from pixal3d.datasets import DatasetError, get_dataset_class, load_balanced_group_indices
from pixal3d.datasets.synthetic import write_synthetic_dataset
from pixal3d.sparse import SparseTensor
from pixal3d.trainers.sampler import ResumableSampler


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), num_instances=6, num_views=2, image_size=32)


def test_ss_view_dataset_items_and_camera(roots):
    ds = get_dataset_class("ViewImageConditionedSparseStructureLatentView")(json.dumps(roots), image_size=16,
                                                                            min_aesthetic_score=4.5)
    assert len(ds) == 4  # aesthetic 4.0 rows (i % 3 == 0) are filtered out
    item = ds[0]
    assert item["x_0"].shape == (8, 4, 4, 4) and item["cond"].shape == (3, 16, 16)
    assert 0 <= float(item["cond"].min()) and float(item["cond"].max()) <= 1
    meta = json.loads((Path(roots["synthetic"]["render_cond"]) / item["_id"] / "transforms.json").read_text())
    norms = [float(torch.tensor(f["transform_matrix"])[:3, 3].norm()) for f in meta["frames"]]
    assert item["camera_distance"] in [pytest.approx(n) for n in norms]  # ‖T[:3, 3]‖ of the chosen view
    assert item["camera_angle_x"] == pytest.approx(meta["frames"][0]["camera_angle_x"])
    assert 0.8 <= item["mesh_scale"] <= 1.2
    ds.set_epoch(0)
    again = ds[0]
    assert torch.equal(again["x_0"], item["x_0"])  # per-(seed, epoch, index) randomness is reproducible
    batch = ds.collate_fn([ds[i] for i in range(4)], split_size=2)
    assert len(batch) == 2 and batch[0]["x_0"].shape == (2, 8, 4, 4, 4)
    assert batch[0]["camera_distance"].dtype == torch.float32 and len(batch[0]["_ids"]) == 2


def test_pbr_dataset_sparse_collate(roots):
    norm = {"mean": [0.0] * 8, "std": [2.0] * 8}
    ds = get_dataset_class("ImageConditionedSLatPbr")(roots, resolution=64, image_size=16, max_tokens=64,
                                                      min_aesthetic_score=None, pbr_slat_normalization=norm,
                                                      shape_slat_normalization=norm)
    assert len(ds) == 6
    items = [ds[i] for i in range(6)]
    raw = dict(__import__("numpy").load(Path(roots["synthetic"]["pbr_latent"]) / f"{items[0]['_id']}.npz"))
    assert torch.allclose(items[0]["x_0"], torch.from_numpy(raw["feats"]) / 2)
    mbs = ds.collate_fn(items, split_size=3)
    assert len(mbs) == 3
    for mb in mbs:
        assert isinstance(mb["x_0"], SparseTensor) and mb["x_0"].coords is mb["concat_cond"].coords
        assert mb["x_0"].coords.dtype == torch.int32 and mb["x_0"].shape[0] == 2
    loads = [sum(ds.item_load(items[i]) for i in range(6) if items[i]["_id"] in mb["_ids"]) for mb in mbs]
    assert max(loads) - min(loads) <= max(ds.item_load(it) for it in items)


def test_filters_and_errors(roots, tmp_path):
    cls = get_dataset_class("SLatShape")
    with open(Path(roots["synthetic"]["shape_latent"]) / "metadata.csv") as f:
        tokens = sorted(int(r["shape_latent_tokens"]) for r in csv.DictReader(f))
    budget = tokens[2]
    assert len(cls(roots, resolution=64, max_tokens=budget, min_aesthetic_score=None)) == \
        sum(t <= budget for t in tokens) < 6  # token budget
    full = get_dataset_class("SLatPbr")(roots, resolution=64, full_pbr=True, min_aesthetic_score=None)
    assert len(full) == 3  # num_basecolor_tex = i % 2
    with pytest.raises(DatasetError, match="not a folder"):
        cls({"s": {"shape_latent": str(tmp_path / "nope")}})
    with pytest.raises(DatasetError, match="lacks \\['shape_latent'\\]"):
        cls({"s": {"base": roots["synthetic"]["base"]}})
    with pytest.raises(DatasetError, match="no instance passes"):
        cls(roots, resolution=64, min_aesthetic_score=100)
    with pytest.raises(DatasetError, match="coords outside"):
        cls(roots, resolution=32, min_aesthetic_score=None)[0]
    # a role folder without metadata.csv, and one lacking the filter column
    bad = tmp_path / "bad"
    shutil.copytree(roots["synthetic"]["shape_latent"], bad)
    (bad / "metadata.csv").unlink()
    with pytest.raises(DatasetError, match="metadata.csv is missing"):
        cls({"s": {"shape_latent": str(bad)}})
    with open(bad / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([["sha256", "other"], ["x", "1"]])
    with pytest.raises(DatasetError, match="shape_latent_encoded"):
        cls({"s": {"shape_latent": str(bad)}}, min_aesthetic_score=None)


def test_resumable_sampler_partitions_and_resumes():
    data = list(range(7))
    ranks = [ResumableSampler(data, seed=3, rank=r, world_size=3) for r in range(3)]
    seen = sorted(i for s in ranks for i in s)
    assert len(seen) == 9 and set(seen) == set(range(7))  # padded to a multiple of 3, covers everything
    s = ResumableSampler(data, seed=3)
    first = list(s)
    s.advance(4)
    state = s.state_dict()
    t = ResumableSampler(data, seed=3)
    t.load_state_dict(state)
    assert list(t) == first[4:]
    t.set_epoch(1)
    assert sorted(t) == list(range(7)) and list(t) != first
    with pytest.raises(ValueError, match="empty"):
        ResumableSampler([])


def test_endless_stream_matches_per_epoch_loaders_and_resumes():
    """The one-loader stream equals what one drop_last loader per epoch gave, and a stream rebuilt from the state
    after any number of consumed batches continues it exactly."""
    import itertools
    data, bs = list(range(11)), 3
    s = ResumableSampler(data, seed=5)
    want = []
    for e in range(4):  # the old order: epoch e's permutation, cut to whole batches
        s.set_epoch(e)
        order = list(s)
        want += [(e, i) for i in order[: len(order) // bs * bs]]
    s.set_epoch(0)
    got = list(itertools.islice(s.endless(bs), len(want)))
    assert got == want
    for k in range(1, 11):
        t = ResumableSampler(data, seed=5)
        for _ in range(k):
            t.advance_batch(bs)
        u = ResumableSampler(data, seed=5)
        u.load_state_dict(t.state_dict())
        assert list(itertools.islice(u.endless(bs), 6)) == want[k * bs: k * bs + 6], k
    with pytest.raises(ValueError, match="no full batch"):
        next(ResumableSampler(data[:2]).endless(bs))


def test_load_balanced_groups():
    groups = load_balanced_group_indices([10, 1, 1, 9, 5, 5], 2)
    assert sorted(i for g in groups for i in g) == list(range(6)) and all(len(g) == 3 for g in groups)
    sums = [sum([10, 1, 1, 9, 5, 5][i] for i in g) for g in groups]
    assert abs(sums[0] - sums[1]) <= 2
