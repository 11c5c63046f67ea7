"""Flow-matching trainers by their reference names (TRELLIS2_SPEC §5.3, PIXAL3D_SPEC §8)."""
from .flow_matching import FlowMatchingTrainer, SparseFlowMatchingTrainer
from .mixins import ClassifierFreeGuidanceMixin, ImageConditionedMixin, ImageConditionedProjMixin

__all__ = ["FlowMatchingTrainer", "SparseFlowMatchingTrainer", "FlowMatchingCFGTrainer",
           "SparseFlowMatchingCFGTrainer", "ImageConditionedFlowMatchingCFGTrainer",
           "ImageConditionedSparseFlowMatchingCFGTrainer", "ImageConditionedProjFlowMatchingCFGTrainer",
           "ImageConditionedProjSparseFlowMatchingCFGTrainer"]


class FlowMatchingCFGTrainer(ClassifierFreeGuidanceMixin, FlowMatchingTrainer):
    """Dense flow matching with condition dropout (``p_uncond``)."""


class SparseFlowMatchingCFGTrainer(ClassifierFreeGuidanceMixin, SparseFlowMatchingTrainer):
    """Sparse flow matching with condition dropout (``p_uncond``)."""


class ImageConditionedFlowMatchingCFGTrainer(ImageConditionedMixin, FlowMatchingCFGTrainer):
    """TRELLIS.2 sparse-structure stage: image tokens as cross-attention context, CFG dropout."""


class ImageConditionedSparseFlowMatchingCFGTrainer(ImageConditionedMixin, SparseFlowMatchingCFGTrainer):
    """TRELLIS.2 shape / texture SLat stages: image tokens, CFG dropout, ``concat_cond`` passed through."""


class ImageConditionedProjFlowMatchingCFGTrainer(ImageConditionedProjMixin, FlowMatchingCFGTrainer):
    """Pixal3D sparse-structure stage: ``{'global', 'proj'}`` condition, CFG dropout to zeros."""


class ImageConditionedProjSparseFlowMatchingCFGTrainer(ImageConditionedProjMixin, SparseFlowMatchingCFGTrainer):
    """Pixal3D shape / texture SLat stages: sparse ``proj`` on the latent's voxels, CFG dropout per token."""
