"""pixal3d: one image to a production-ready 3D asset.

A reimplementation of Pixal3D (SIGGRAPH 2026) on the TRELLIS.2 backbone. The package layout mirrors the
architecture:

- ``pixal3d.sparse``        sparse tensors, sparse convolution, resampling, serialisation (the core)
- ``pixal3d.modules``       attention, RoPE, norms and transformer blocks shared by the networks
- ``pixal3d.models``        the released networks (flow DiTs, SS VAE, SC-VAEs) and ``from_pretrained``
- ``pixal3d.ovoxel``        mesh <-> O-Voxel conversion, PBR voxelisation, .vxz IO, GLB export
- ``pixal3d.conditioning``  camera model, ProjGrid back-projection, DINOv3 feature extraction
- ``pixal3d.pipelines``     samplers and the image-to-3D pipelines
- ``pixal3d.trainers`` / ``pixal3d.datasets``  training stack
- ``pixal3d.renderers`` / ``pixal3d.evaluation``  rendering and metrics
"""

__version__ = "0.1.0"
