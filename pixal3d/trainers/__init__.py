"""Trainers addressable by their reference class names (TRELLIS2_SPEC §5.2-5.4, PIXAL3D_SPEC §8).

``get_trainer_class(name)`` is what ``train.py`` uses for the config's ``trainer.name``.
"""
import importlib

_CLASSES = {
    "BasicTrainer": "pixal3d.trainers.basic",
    "FlowMatchingTrainer": "pixal3d.trainers.flow_matching",
    "SparseFlowMatchingTrainer": "pixal3d.trainers.flow_matching",
    "FlowMatchingCFGTrainer": "pixal3d.trainers.flow_matching",
    "SparseFlowMatchingCFGTrainer": "pixal3d.trainers.flow_matching",
    "ImageConditionedFlowMatchingCFGTrainer": "pixal3d.trainers.flow_matching",
    "ImageConditionedSparseFlowMatchingCFGTrainer": "pixal3d.trainers.flow_matching",
    "ImageConditionedProjFlowMatchingCFGTrainer": "pixal3d.trainers.flow_matching",
    "ImageConditionedProjSparseFlowMatchingCFGTrainer": "pixal3d.trainers.flow_matching",
    "ShapeVaeTrainer": "pixal3d.trainers.vae",
    "PbrVaeTrainer": "pixal3d.trainers.vae",
    "SparseStructureVaeTrainer": "pixal3d.trainers.vae",
}

__all__ = sorted(_CLASSES) + ["get_trainer_class"]


def get_trainer_class(name: str):
    """Returns the trainer class registered under ``name``.

    Raises:
        KeyError: unknown name (the message lists the known trainers).
    """
    if name not in _CLASSES:
        raise KeyError(f"unknown trainer {name!r}; known trainers: {', '.join(sorted(_CLASSES))}")
    return getattr(importlib.import_module(_CLASSES[name]), name)


def __getattr__(name):
    if name in _CLASSES:
        return get_trainer_class(name)
    raise AttributeError(f"module 'pixal3d.trainers' has no attribute {name!r}")
