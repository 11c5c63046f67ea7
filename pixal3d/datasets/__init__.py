"""Training datasets by their reference class names (TRELLIS2_SPEC §5.5, PIXAL3D_SPEC §7.5).

``get_dataset_class(name)`` is what ``train.py`` uses for the config's ``dataset.name``; see
:mod:`pixal3d.datasets.base` and :mod:`pixal3d.datasets.latents` / :mod:`pixal3d.datasets.voxels` for the on-disk
layout.
"""
from .base import DatasetError, StandardDatasetBase, load_balanced_group_indices, parse_roots, read_metadata
from . import latents as _latents
from . import voxels as _voxels

_CLASSES = {name: getattr(_latents, name) for name in _latents.__all__}
_CLASSES.update({name: getattr(_voxels, name) for name in ("FlexiDualGridDataset", "SparseVoxelPbrDataset",
                                                            "FlexiDualGridViewDataset", "SparseVoxelPbrViewDataset",
                                                            "SparseStructureDataset", "SparseStructureViewDataset")})

__all__ = ["DatasetError", "StandardDatasetBase", "load_balanced_group_indices", "parse_roots", "read_metadata",
           "get_dataset_class"] + sorted(_CLASSES)
globals().update(_CLASSES)


def get_dataset_class(name: str):
    """Returns the dataset class registered under ``name``.

    Raises:
        KeyError: unknown name (the message lists the known datasets).
    """
    if name not in _CLASSES:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(_CLASSES))}")
    return _CLASSES[name]
