"""Mesh and PBR dumps of raw assets with trimesh (no Blender), and their conversion back to trimesh scenes.

Frame (TRELLIS2_SPEC §3.1, PIXAL3D_SPEC §2.1): the **Blender world**, Z up. glTF/GLB and OBJ files are Y up and are
rotated ``(x, y, z) → (x, −z, y)`` exactly as Blender's importers do (glTF always; OBJ with the default forward −Z /
up Y); PLY/STL/OFF are taken as Z up (Blender's defaults). Node transforms are applied (``trimesh.Scene.dump``);
skinning/animation is not (bind pose). The whole asset is then normalised into ``[-0.5, 0.5]³``:
``v_dump = v_world·scale + offset`` with ``scale = 0.99999 / max extent`` and ``offset = −center·scale``.

``mesh_dumps/{sha}.pickle`` = ``{'objects': [{'vertices': f32 [V,3], 'faces': i32 [F,3]}], 'scale': float,
'offset': f64 [3]}``.

``pbr_dumps/{sha}.pickle`` = ``{'objects': [{'name', 'vertices', 'faces', 'normals': f32 [F,3,3] (per corner),
'uvs': f32 [F,3,2] or None (OpenGL convention: v up, texel y = (1 − v)·H), 'mat_ids': i32 [F] (−1 = none)}],
'materials': [material], 'scale', 'offset'}`` with ``material`` =
``{'name', 'baseColorFactor': [r,g,b], 'alphaFactor', 'alphaMode': 'OPAQUE'|'MASK'|'BLEND', 'alphaCutoff',
'metallicFactor', 'roughnessFactor', 'emissiveFactor': [r,g,b], 'baseColorTexture', 'alphaTexture',
'metallicTexture', 'roughnessTexture', 'emissiveTexture', 'normalTexture'}``, each texture ``None`` or
``{'image': PNG bytes, 'channel': None | int (the channel read for scalar maps: metallic 2 = B, roughness 1 = G,
alpha 3 = A), 'interpolation': 'Linear'|'Closest', 'extension': 'REPEAT'|'EXTEND'|'MIRROR'}`` (trimesh does not
expose glTF samplers, so all textures are recorded as Linear/REPEAT, which is also what the trimesh voxeliser uses).
Both dumps of an asset share bit-identical vertices and faces.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["Y_UP_TO_Z_UP", "extract_asset", "mesh_dump_from_asset", "pbr_dump_from_asset", "load_dump",
           "save_dump", "dump_to_trimesh_scene", "dump_vertices_faces", "texture_counts"]

#: glTF/OBJ Y-up → Blender Z-up: ``(x, y, z) → (x, −z, y)``.
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
_Y_UP_TYPES = (".glb", ".gltf", ".obj")
_MARGIN = 0.99999


def _png(image, mode: Optional[str] = None) -> bytes:
    if mode is not None and image.mode != mode:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _tex(png: bytes, channel: Optional[int] = None) -> dict:
    return {"image": png, "channel": channel, "interpolation": "Linear", "extension": "REPEAT"}


def _material_dict(material, name: str) -> dict:
    """A trimesh material → the dump's material dict (factors in [0, 1], textures as PNG bytes)."""
    import trimesh.visual.material as tm

    if isinstance(material, tm.MultiMaterial):
        material = material.to_pbr()
    if isinstance(material, tm.SimpleMaterial):
        pbr = material.to_pbr()
        if pbr.metallicFactor is None:   # an MTL diffuse surface is a dielectric (as pixal3d.ovoxel does)
            pbr.metallicFactor = 0.0
        material = pbr
    if not isinstance(material, tm.PBRMaterial):
        raise TypeError(f"unsupported material type {type(material).__name__}")
    m = material
    bcf = (np.asarray(m.baseColorFactor, dtype=np.float64) / 255.0) if m.baseColorFactor is not None else np.ones(4)
    if bcf.shape[0] == 3:
        bcf = np.concatenate([bcf, [1.0]])
    mode = m.alphaMode if m.alphaMode in ("OPAQUE", "MASK", "BLEND") else "OPAQUE"
    out = {
        "name": name,
        "baseColorFactor": [float(x) for x in bcf[:3]],
        "alphaFactor": float(bcf[3]),
        "alphaMode": mode,
        "alphaCutoff": float(m.alphaCutoff) if m.alphaCutoff is not None else 0.5,
        "metallicFactor": float(m.metallicFactor) if m.metallicFactor is not None else 1.0,
        "roughnessFactor": float(m.roughnessFactor) if m.roughnessFactor is not None else 1.0,
        "emissiveFactor": ([float(x) for x in np.asarray(m.emissiveFactor, dtype=np.float64)[:3]]
                           if m.emissiveFactor is not None else [0.0, 0.0, 0.0]),
        "baseColorTexture": None, "alphaTexture": None, "metallicTexture": None, "roughnessTexture": None,
        "emissiveTexture": None, "normalTexture": None,
    }
    if m.baseColorTexture is not None:
        img = m.baseColorTexture
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        png = _png(img, "RGBA" if has_alpha else "RGB")
        out["baseColorTexture"] = _tex(png)
        if has_alpha and mode != "OPAQUE":
            out["alphaTexture"] = _tex(png, 3)
    if m.metallicRoughnessTexture is not None:
        png = _png(m.metallicRoughnessTexture, "RGB")
        out["metallicTexture"] = _tex(png, 2)
        out["roughnessTexture"] = _tex(png, 1)
    if getattr(m, "emissiveTexture", None) is not None:
        out["emissiveTexture"] = _tex(_png(m.emissiveTexture, "RGB"))
    if getattr(m, "normalTexture", None) is not None:
        out["normalTexture"] = _tex(_png(m.normalTexture, "RGB"))
    return out


def _material_key(md: dict):
    import hashlib
    parts = []
    for k in sorted(md):
        v = md[k]
        if isinstance(v, dict):
            v = (hashlib.sha1(v["image"]).hexdigest(), v.get("channel"), v.get("interpolation"), v.get("extension"))
        elif isinstance(v, list):
            v = tuple(v)
        parts.append((k, v))
    return tuple(parts)


def extract_asset(path, with_materials: bool = True) -> dict:
    """Loads an asset file and returns its normalised PBR dump (see the module docstring).

    Args:
        path: ``.glb/.gltf/.obj/.ply/.stl/.off`` file (loaded by :func:`pixal3d.ovoxel.load_mesh`).
        with_materials: also convert materials/UVs/normals (False: vertices/faces only, for the mesh dump).

    Raises:
        FileNotFoundError, ValueError: unreadable, empty or degenerate asset (no triangles, non-finite vertices,
            zero extent).
    """
    import trimesh
    from pixal3d.ovoxel import load_mesh

    path = Path(path)
    scene = load_mesh(path)
    rot = Y_UP_TO_Z_UP if path.suffix.lower() in _Y_UP_TYPES else np.eye(3)
    objects, materials, mat_index, mat_cache = [], [], {}, {}
    for i, g in enumerate(scene.dump()):
        if not isinstance(g, trimesh.Trimesh) or len(g.faces) == 0:
            continue
        v = np.asarray(g.vertices, dtype=np.float64)
        if not np.isfinite(v).all():
            raise ValueError(f"geometry {i} ({g.metadata.get('name', '?')}) has non-finite vertices")
        f = np.asarray(g.faces, dtype=np.int64)
        obj = {"name": str(g.metadata.get("name", f"object_{i}")), "vertices": v @ rot.T, "faces": f}
        if with_materials:
            vis = g.visual
            mat = getattr(vis, "material", None) if isinstance(vis, trimesh.visual.TextureVisuals) else None
            uv = getattr(vis, "uv", None) if mat is not None else None
            if mat is None:
                mid = -1
            else:
                md = mat_cache.get(id(mat))
                if md is None:
                    md = mat_cache[id(mat)] = _material_dict(mat, str(getattr(mat, "name", None)
                                                                      or f"material_{len(mat_cache)}"))
                key = _material_key(md)   # scene.dump() copies materials per instance: dedupe by content
                if key not in mat_index:
                    mat_index[key] = len(materials)
                    materials.append(md)
                mid = mat_index[key]
            obj["uvs"] = (np.asarray(uv, dtype=np.float32)[f] if uv is not None and len(uv) == len(v) else None)
            obj["normals"] = (np.asarray(g.vertex_normals, dtype=np.float64) @ rot.T).astype(np.float32)[f]
            obj["mat_ids"] = np.full(len(f), mid, np.int32)
        objects.append(obj)
    if not objects:
        raise ValueError(f"{path} has no triangle geometry")
    allv = np.concatenate([o["vertices"] for o in objects])
    lo, hi = allv.min(0), allv.max(0)
    extent = float((hi - lo).max())
    if not extent > 0:
        raise ValueError(f"{path}: all vertices coincide (zero extent)")
    scale = _MARGIN / extent
    offset = -(lo + hi) / 2 * scale
    for o in objects:
        o["vertices"] = (o["vertices"] * scale + offset).astype(np.float32)
        o["faces"] = o["faces"].astype(np.int32)
    return {"objects": objects, "materials": materials, "scale": scale, "offset": offset}


def mesh_dump_from_asset(path) -> dict:
    """``{'objects': [{'vertices', 'faces'}], 'scale', 'offset'}`` (the ``mesh_dumps`` format)."""
    d = extract_asset(path, with_materials=False)
    return {"objects": [{"vertices": o["vertices"], "faces": o["faces"]} for o in d["objects"]],
            "scale": d["scale"], "offset": d["offset"]}


def pbr_dump_from_asset(path) -> dict:
    """The ``pbr_dumps`` format (see the module docstring)."""
    return extract_asset(path, with_materials=True)


def save_dump(dump: dict, path) -> None:
    """Pickles a dump atomically (temp file + rename)."""
    import os
    from .runner import atomic_path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    with open(tmp, "wb") as fh:
        pickle.dump(dump, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def load_dump(path) -> dict:
    """Unpickles a mesh/PBR dump and checks it has ``objects`` with ``vertices``/``faces``.

    Raises:
        FileNotFoundError: missing file. ValueError: malformed dump.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dump {path} is missing (run dump_mesh / dump_pbr first)")
    with open(path, "rb") as fh:
        d = pickle.load(fh)
    if not isinstance(d, dict) or not d.get("objects") or any("vertices" not in o or "faces" not in o
                                                             for o in d["objects"]):
        raise ValueError(f"{path} is not a mesh/PBR dump (needs 'objects' with 'vertices' and 'faces')")
    return d


def dump_vertices_faces(dump: dict) -> Tuple[np.ndarray, np.ndarray]:
    """All objects merged: ``(vertices float32 [V, 3], faces int64 [F, 3])`` (indices offset per object)."""
    vs, fs, off = [], [], 0
    for o in dump["objects"]:
        vs.append(np.asarray(o["vertices"], np.float32))
        fs.append(np.asarray(o["faces"], np.int64) + off)
        off += len(o["vertices"])
    return np.concatenate(vs), np.concatenate(fs)


def _pil(png: bytes):
    from PIL import Image
    im = Image.open(io.BytesIO(png))
    im.load()
    return im


def _channel_image(tex: dict):
    """Single channel (``L``) PIL image of a scalar-map texture."""
    im = _pil(tex["image"])
    ch = tex.get("channel")
    if ch is None:
        return im.convert("L")
    bands = im.convert("RGBA").split()
    return bands[int(ch)]


def _trimesh_material(m: dict):
    """The dump material → ``trimesh.visual.material.PBRMaterial`` read by ``pixal3d.ovoxel``'s voxeliser."""
    import trimesh.visual.material as tm
    from PIL import Image

    rgba = list(m["baseColorFactor"]) + [m.get("alphaFactor", 1.0)]
    kw = dict(name=m.get("name"), baseColorFactor=np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8),
              metallicFactor=float(m["metallicFactor"]), roughnessFactor=float(m["roughnessFactor"]),
              emissiveFactor=np.asarray(m.get("emissiveFactor", [0, 0, 0]), np.float64),
              alphaMode=m.get("alphaMode", "OPAQUE"), alphaCutoff=float(m.get("alphaCutoff", 0.5)))
    bc = m.get("baseColorTexture")
    at = m.get("alphaTexture")
    if bc is not None:
        img = _pil(bc["image"]).convert("RGBA")
        if at is not None:
            a = _channel_image(at).resize(img.size)
            img.putalpha(a)
        kw["baseColorTexture"] = img
    elif at is not None:
        a = _channel_image(at)
        img = Image.new("RGBA", a.size, (255, 255, 255, 255))
        img.putalpha(a)
        kw["baseColorTexture"] = img
    mt, rt = m.get("metallicTexture"), m.get("roughnessTexture")
    if mt is not None or rt is not None:
        if (mt is not None and rt is not None and mt["image"] == rt["image"]
                and (mt.get("channel"), rt.get("channel")) == (2, 1)):
            kw["metallicRoughnessTexture"] = _pil(mt["image"]).convert("RGB")
        else:
            size = (_channel_image(mt) if mt is not None else _channel_image(rt)).size
            chans = [Image.new("L", size, 0),
                     _channel_image(rt).resize(size) if rt is not None else Image.new("L", size, 255),
                     _channel_image(mt).resize(size) if mt is not None else Image.new("L", size, 255)]
            kw["metallicRoughnessTexture"] = Image.merge("RGB", chans)
    if m.get("emissiveTexture") is not None:
        kw["emissiveTexture"] = _pil(m["emissiveTexture"]["image"]).convert("RGB")
    if m.get("normalTexture") is not None:
        kw["normalTexture"] = _pil(m["normalTexture"]["image"]).convert("RGB")
    return tm.PBRMaterial(**kw)


def dump_to_trimesh_scene(dump: dict, transform: Optional[np.ndarray] = None):
    """A PBR dump → ``trimesh.Scene`` for :func:`pixal3d.ovoxel.textured_mesh_to_volumetric_attr`.

    One unwelded geometry per (object, material): vertices ``v[faces]`` (float64, optionally mapped by the ``[4, 4]``
    ``transform`` first), per-corner UVs and normals (normals rotated by ``transform[:3, :3]``), the material
    converted back to a ``PBRMaterial`` (faces with ``mat_id == −1`` get no material, i.e. the voxeliser's default
    material: base colour 0.8, metallic 0, roughness 0.5, OPAQUE).

    Raises:
        ValueError: a ``mat_id`` outside the material list.
    """
    import trimesh

    mats = [_trimesh_material(m) for m in dump.get("materials", [])]
    scene = trimesh.Scene()
    for oi, o in enumerate(dump["objects"]):
        v = np.asarray(o["vertices"], np.float64)
        if transform is not None:
            from .view_align import apply_affine
            v = apply_affine(v, transform)
        f = np.asarray(o["faces"], np.int64)
        mids = np.asarray(o.get("mat_ids", np.full(len(f), -1)), np.int64)
        if mids.size and (mids.max() >= len(mats) or mids.min() < -1):
            raise ValueError(f"object {oi}: mat_ids reference material {mids.max()} but the dump has {len(mats)}")
        nrm = o.get("normals")
        uvs = o.get("uvs")
        for mid in np.unique(mids):
            sel = np.nonzero(mids == mid)[0]
            tri = v[f[sel]].reshape(-1, 3)
            faces = np.arange(len(tri), dtype=np.int64).reshape(-1, 3)
            vn = None
            if nrm is not None:
                vn = np.asarray(nrm, np.float64)[sel].reshape(-1, 3)
                if transform is not None:
                    vn = vn @ np.asarray(transform, np.float64)[:3, :3].T
            if mid >= 0:
                uv = (np.asarray(uvs, np.float64)[sel].reshape(-1, 2) if uvs is not None
                      else np.zeros((len(tri), 2)))
                visual = trimesh.visual.TextureVisuals(uv=uv, material=mats[mid])
            else:
                visual = None
            g = trimesh.Trimesh(vertices=tri, faces=faces, vertex_normals=vn, visual=visual, process=False,
                                validate=False)
            scene.add_geometry(g, geom_name=f"obj{oi}_mat{mid}")
    return scene


def texture_counts(dump: dict) -> Dict[str, int]:
    """Materials (used by at least one face) with a base-colour / metallic / roughness / alpha texture:
    ``num_basecolor_tex``, ``num_metallic_tex``, ``num_roughness_tex``, ``num_alpha_tex``."""
    used = set()
    for o in dump["objects"]:
        if "mat_ids" in o:
            used |= set(int(x) for x in np.unique(o["mat_ids"]) if x >= 0)
    mats = [dump["materials"][i] for i in sorted(used)]
    keys = {"num_basecolor_tex": "baseColorTexture", "num_metallic_tex": "metallicTexture",
            "num_roughness_tex": "roughnessTexture", "num_alpha_tex": "alphaTexture"}
    return {k: sum(m.get(t) is not None for m in mats) for k, t in keys.items()}
