"""VAE trainers (TRELLIS2_SPEC §5.4): shape SC-VAE, texture SC-VAE, dense sparse-structure VAE."""
from .base import VaeTrainerBase
from .pbr_vae import PbrVaeTrainer
from .shape_vae import ShapeVaeTrainer
from .sparse_structure_vae import SparseStructureVaeTrainer

__all__ = ["VaeTrainerBase", "ShapeVaeTrainer", "PbrVaeTrainer", "SparseStructureVaeTrainer"]
