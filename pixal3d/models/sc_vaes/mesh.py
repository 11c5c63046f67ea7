"""The minimal triangle mesh returned by the shape SC-VAE decoder (TRELLIS2_SPEC §2.7, §3.4)."""
from dataclasses import dataclass

import torch

__all__ = ["Mesh"]


@dataclass
class Mesh:
    """A triangle soup in the normalised object frame.

    Attributes:
        vertices: float ``[V, 3]``, positions in the ``[-0.5, 0.5]³`` cube (Z-up, §3.1); may include unreferenced
            vertices (one per active voxel, as the reference extraction leaves them).
        faces: int64 ``[F, 3]`` vertex indices; orientation is arbitrary (the dual grid is unsigned).

    Raises:
        ValueError: wrong shapes or non-integer faces.
    """

    vertices: torch.Tensor
    faces: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.vertices, torch.Tensor) or self.vertices.dim() != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"Mesh.vertices must be a tensor [V, 3], got {getattr(self.vertices, 'shape', None)}")
        if (not isinstance(self.faces, torch.Tensor) or self.faces.dim() != 2 or self.faces.shape[1] != 3
                or self.faces.is_floating_point()):
            raise ValueError(f"Mesh.faces must be an integer tensor [F, 3], got "
                             f"{getattr(self.faces, 'dtype', None)} {getattr(self.faces, 'shape', None)}")

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    def to(self, device) -> "Mesh":
        """The same mesh on ``device``."""
        return Mesh(self.vertices.to(device), self.faces.to(device))
