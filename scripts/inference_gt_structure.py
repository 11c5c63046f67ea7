"""``inference.py`` with the sparse-structure stage replaced by a given latent's own voxels (a diagnostic).

    python scripts/inference_gt_structure.py LATENT.npz [inference.py arguments ...]

``LATENT.npz`` is a training latent written by the data toolkit (``coords`` uint8 ``[N, 3]`` on the latent grid, in
the same view-aligned frame as the generated structure, e.g. ``shape_latents/<enc>/<sha>/view00.npz`` for the view
the input image shows). The shape and texture stages then run exactly as in ``inference.py`` on those voxels. Comparing
the result with a normal run tells how much of the geometry error comes from the sparse-structure stage
(docs/DEMO_MODEL.md, session 5). Single-level (``1024``) pipelines only: in a cascade the coords would have to be on
the low-resolution grid.

Raises:
    SystemExit: no latent path, or a latent without ``coords``.
"""
import runpy
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    latent, args = sys.argv[1], sys.argv[2:]
    with np.load(latent) as z:
        if "coords" not in z:
            raise SystemExit(f"{latent} has no 'coords' array (keys: {list(z.keys())}); pass a toolkit latent .npz")
        xyz = torch.as_tensor(z["coords"].astype(np.int32))
    sys.path.insert(0, str(REPO))
    from pixal3d.pipelines import image_to_3d

    def given_structure(self, image, camera, num_samples, grid, params):
        if int(xyz.max()) >= grid:
            raise ValueError(f"latent coords reach {int(xyz.max())}, outside the {grid}³ structure grid")
        rows = [torch.cat([torch.full((len(xyz), 1), b, dtype=torch.int32), xyz], 1) for b in range(num_samples)]
        return torch.cat(rows).to(self.device)

    image_to_3d.Pixal3DImageTo3DPipeline.sample_sparse_structure = given_structure
    sys.argv = [str(REPO / "inference.py"), *args]
    runpy.run_path(str(REPO / "inference.py"), run_name="__main__")


if __name__ == "__main__":
    main()
