"""``ClassifierFreeGuidanceMixin`` (TRELLIS2_SPEC §5.3, PIXAL3D_SPEC §8): per-sample condition dropout to zeros."""
import torch

__all__ = ["ClassifierFreeGuidanceMixin", "zeros_like_cond", "drop_cond"]


def _is_sparse(x) -> bool:
    return hasattr(x, "feats") and hasattr(x, "coords")


def zeros_like_cond(cond):
    """The negative condition: zeros of the same structure (tensor, SparseTensor, list, dict of those)."""
    if isinstance(cond, dict):
        return {k: zeros_like_cond(v) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(zeros_like_cond(v) for v in cond)
    if _is_sparse(cond):
        return cond.replace(torch.zeros_like(cond.feats))
    return torch.zeros_like(cond)


def drop_cond(cond, drop: torch.Tensor):
    """Replaces the condition of samples with ``drop[b] = True`` by zeros.

    Dense tensors and lists are indexed by their first dimension (the batch); SparseTensors (per-voxel conditions such
    as Pixal3D's sparse ``proj``) are masked per token through their batch index ``coords[:, 0]``. Dicts apply the
    same mask to every key.
    """
    if isinstance(cond, dict):
        return {k: drop_cond(v, drop) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        if len(cond) != drop.shape[0]:
            raise ValueError(f"list condition has {len(cond)} entries for a batch of {drop.shape[0]}")
        return type(cond)(torch.zeros_like(c) if d else c for c, d in zip(cond, drop.tolist()))
    if _is_sparse(cond):
        keep = (~drop.to(cond.feats.device))[cond.coords[:, 0].long()].to(cond.feats.dtype).unsqueeze(-1)
        return cond.replace(cond.feats * keep)
    if cond.shape[0] != drop.shape[0]:
        raise ValueError(f"condition batch {cond.shape[0]} != latent batch {drop.shape[0]}; per-token conditions must "
                         f"be SparseTensors so the dropout can follow the batch index")
    keep = (~drop.to(cond.device)).to(cond.dtype).view(-1, *[1] * (cond.dim() - 1))
    return cond * keep


class ClassifierFreeGuidanceMixin:
    """With probability ``p_uncond`` per sample, the condition is replaced by the negative condition (zeros).

    Args:
        p_uncond: dropout probability in [0, 1].

    Raises:
        ValueError: ``p_uncond`` outside [0, 1].
    """

    def __init__(self, *args, p_uncond: float = 0.1, **kwargs):
        if not 0 <= p_uncond <= 1:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        self.p_uncond = float(p_uncond)
        super().__init__(*args, **kwargs)

    def get_cond(self, cond, x_0, extras: dict):
        """Encodes through the parent classes, then drops whole samples to zeros."""
        cond = super().get_cond(cond, x_0, extras)
        if cond is None or self.p_uncond == 0:
            return cond
        batch = int(x_0.shape[0])
        drop = torch.rand(batch, device=self.device) < self.p_uncond
        return drop_cond(cond, drop)

    def inference_cond(self, batch: dict):
        """``(cond, zeros_like(cond), extras)`` with no dropout."""
        cond, _, extras = super().inference_cond(batch)
        return cond, zeros_like_cond(cond), extras
