"""Layers shared by the networks: ``norm`` (fp32 norms), ``attention`` (backends, RoPE, dense/sparse attention),
``transformer`` (modulated DiT blocks, embedders, Pixal3D projection conditioning), ``fused_adaln`` (one-pass
Triton kernels for the blocks' adaLN norms and gated residuals), ``utils`` (precision helpers) and ``spatial``
(dense pixel shuffle). Submodules are imported on demand."""
