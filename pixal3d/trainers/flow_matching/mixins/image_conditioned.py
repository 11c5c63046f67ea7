"""``ImageConditionedMixin`` (TRELLIS2_SPEC §5.3): the dataset's image becomes DINO (or test-encoder) tokens inside
the loss; the encoder is built lazily on the trainer's device and is not trained or saved."""
import torch

from .cond_encoders import build_cond_encoder

__all__ = ["ImageConditionedMixin"]


class ImageConditionedMixin:
    """Encodes ``cond`` images ``[B, 3, S, S]`` in [0, 1] with ``image_cond_model``.

    Args:
        image_cond_model: ``{'name', 'args'}`` of an encoder (see :mod:`.cond_encoders`), or ``None`` when the dataset
            already provides features (``cond`` is then passed through unchanged).
    """

    def __init__(self, *args, image_cond_model=None, **kwargs):
        self.image_cond_model_spec = image_cond_model
        self._image_cond_model = None
        super().__init__(*args, **kwargs)

    @property
    def image_cond_model(self):
        """The frozen encoder (built on first use), or None."""
        if self._image_cond_model is None and self.image_cond_model_spec is not None:
            self._image_cond_model = build_cond_encoder(self.image_cond_model_spec, self.device)
        return self._image_cond_model

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` → ``[B, L, C]`` tokens."""
        return self.image_cond_model(image)

    def get_cond(self, cond, x_0, extras: dict):
        """Images → tokens (when an encoder is configured), then the parent classes (CFG dropout)."""
        if self.image_cond_model_spec is not None:
            if cond is None:
                raise ValueError("the dataset gave no 'cond' images but image_cond_model is set; use an "
                                 "ImageConditioned* dataset")
            cond = self.encode_image(cond)
        return super().get_cond(cond, x_0, extras)
