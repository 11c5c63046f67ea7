"""Trainer mixins: classifier-free guidance dropout, image conditioning, Pixal3D projection conditioning."""
from .classifier_free_guidance import ClassifierFreeGuidanceMixin, drop_cond, zeros_like_cond
from .cond_encoders import TinyImageEncoder, TinyProjImageEncoder, build_cond_encoder
from .image_conditioned import ImageConditionedMixin
from .image_conditioned_proj import ImageConditionedProjMixin

__all__ = ["ClassifierFreeGuidanceMixin", "drop_cond", "zeros_like_cond", "TinyImageEncoder", "TinyProjImageEncoder",
           "build_cond_encoder", "ImageConditionedMixin", "ImageConditionedProjMixin"]
