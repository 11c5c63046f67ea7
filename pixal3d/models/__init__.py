"""The released networks, addressable by their reference class names.

A checkpoint's ``name.json`` is ``{"name": <class name>, "args": {...}}``; ``from_pretrained`` looks the class up here.
Classes are imported lazily so that importing ``pixal3d.models`` stays cheap.
"""
import importlib

# class name -> module that defines it (the names users and the released JSON files know)
_CLASSES = {
    "SparseStructureEncoder": "pixal3d.models.sparse_structure_vae",
    "SparseStructureDecoder": "pixal3d.models.sparse_structure_vae",
    "SparseStructureFlowModel": "pixal3d.models.sparse_structure_flow",
    "SLatFlowModel": "pixal3d.models.structured_latent_flow",
    "ElasticSLatFlowModel": "pixal3d.models.structured_latent_flow",
    "SparseUnetVaeEncoder": "pixal3d.models.sc_vaes.sparse_unet_vae",
    "SparseUnetVaeDecoder": "pixal3d.models.sc_vaes.sparse_unet_vae",
    "FlexiDualGridVaeEncoder": "pixal3d.models.sc_vaes.fdg_vae",
    "FlexiDualGridVaeDecoder": "pixal3d.models.sc_vaes.fdg_vae",
}

__all__ = sorted(_CLASSES) + ["from_pretrained", "get_model_class"]


def get_model_class(name: str):
    """Returns the model class registered under ``name``.

    Raises:
        KeyError: ``name`` is not a known model class (the message lists the known ones).
    """
    if name not in _CLASSES:
        raise KeyError(f"unknown model class {name!r}; known classes: {', '.join(sorted(_CLASSES))}")
    return getattr(importlib.import_module(_CLASSES[name]), name)


def __getattr__(name):
    if name in _CLASSES:
        return get_model_class(name)
    if name == "from_pretrained":
        from .pretrained import from_pretrained
        return from_pretrained
    raise AttributeError(f"module 'pixal3d.models' has no attribute {name!r}")
