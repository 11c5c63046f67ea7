"""Library code of the data toolkit (``data_toolkit/``): asset scanning and metadata files, the shared step runner
(sharding, worker processes, resumability, failure log), mesh/PBR dumps, conditioning-camera sampling, view alignment
and per-view voxelisation, and latent encoding (TRELLIS2_SPEC §5.7, PIXAL3D_SPEC §7).

Importing this package does not import Blender (``bpy``); only the ``render_cond`` step needs it, in a subprocess.
"""
from .metadata import (MODEL_EXTENSIONS, append_records, file_sha256, finalize, read_csv, read_root_metadata,
                       scan_assets, write_csv)

__all__ = ["MODEL_EXTENSIONS", "append_records", "file_sha256", "finalize", "read_csv", "read_root_metadata",
           "scan_assets", "write_csv"]
