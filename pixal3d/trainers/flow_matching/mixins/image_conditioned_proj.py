"""``ImageConditionedProjMixin`` (PIXAL3D_SPEC §8): global tokens plus per-voxel back-projected image features.

Dense (sparse-structure stage): ``{'global': [B, 5, C], 'proj': [B, G³, C_proj]}``. Sparse (SLat stages):
``'proj'`` is a SparseTensor with ``x_0``'s coords (rows in token order), so the CFG dropout can follow its batch
index. The camera comes from the dataset keys ``camera_angle_x``, ``camera_distance`` and ``mesh_scale`` (§2.3);
``transform_matrix`` is never passed (objects are already rotated to the front view).
"""

from .image_conditioned import ImageConditionedMixin

__all__ = ["ImageConditionedProjMixin"]

CAMERA_KEYS = ("camera_angle_x", "camera_distance", "mesh_scale")


class ImageConditionedProjMixin(ImageConditionedMixin):
    """Builds the Pixal3D ``{'global', 'proj'}`` condition.

    Args:
        image_cond_model: ``{'name', 'args'}`` of a proj encoder (``DinoV3ProjFeatureExtractor`` or
            ``TinyProjImageEncoder``), or ``None`` when the dataset provides ``cond`` as ready
            ``{'global', 'proj'}`` features.
        run_projection_test: accepted for config compatibility (the reference's debug drawing); must be false.
    """

    def __init__(self, *args, run_projection_test: bool = False, **kwargs):
        if run_projection_test:
            raise ValueError("run_projection_test draws debug images in the reference and is not part of this "
                             "trainer; set it to false")
        super().__init__(*args, **kwargs)

    def _camera(self, extras: dict):
        missing = [k for k in CAMERA_KEYS if k not in extras]
        if missing:
            raise ValueError(f"the batch lacks camera keys {missing}; use a ViewImageConditioned* dataset (it "
                             f"reads transforms.json and view*_scale.json)")
        return [extras.pop(k).float() for k in CAMERA_KEYS]

    def get_cond(self, cond, x_0, extras: dict):
        """Images + camera → ``{'global', 'proj'}``, then CFG dropout (parents)."""
        if self.image_cond_model_spec is None:
            for k in CAMERA_KEYS:
                extras.pop(k, None)
            return super(ImageConditionedMixin, self).get_cond(cond, x_0, extras)
        if cond is None:
            raise ValueError("the dataset gave no 'cond' images but image_cond_model is set")
        fov, dist, ms = self._camera(extras)
        enc = self.image_cond_model
        if hasattr(x_0, "coords"):
            z_global, z_proj = enc.forward_sparse(cond, x_0.coords, fov, dist, ms)
            proj = x_0.replace(z_proj)
        else:
            z_global, proj = enc(cond, fov, dist, ms)
        return super(ImageConditionedMixin, self).get_cond({"global": z_global, "proj": proj}, x_0, extras)
