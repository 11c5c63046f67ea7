"""Blender (bpy) side of ``render_cond``: renders the conditioning views of one PBR dump with Cycles on the CPU.

Run by ``pixal3d.data.render`` in a subprocess (``python render_cond.py JOB.json``) with ``bpy`` importable (Blender
4.2–4.5 as a Python module, ``pip install bpy``); never imported by the package. The job JSON holds: ``dump`` (PBR dump
pickle, Blender-world Z-up frame, unit-cube normalised), ``out_dir`` (folder for ``NNN.png`` + ``transforms.json``),
``resolution``, ``samples``, ``probe_samples``, ``denoise``, ``threads``, ``max_retries``, ``max_border_px``,
``lighting`` (``points`` | ``hdri``), ``hdri_files``, ``seed``, ``scale``/``offset`` (the dump's normalisation),
and ``views``: ``[{'yaw', 'pitch', 'fov', 'radius', 'lights', 'world_strength', 'hdri', 'hdri_rotation'}]``.

Per view (PIXAL3D_SPEC §7.1): camera at ``radius·(cos yaw cos pitch, sin yaw cos pitch, sin pitch)`` looking at the
origin, sensor 32 mm, ``lens = 16/tan(fov/2)``; the retry loop renders a cheap probe (``probe_samples``), measures
the smallest distance of ``alpha > 0`` pixels to the border, and scales the radius by 1.1 (touching) or 0.9
(farther than ``max_border_px``) up to ``max_retries`` times, FOV fixed; then the final render (``samples``, RGBA,
transparent film) is written.
"""
import json
import math
import os
import pickle
import sys
import time

import numpy as np


def _log(msg):
    print(f"[render_cond.bpy] {msg}", file=sys.stderr, flush=True)


def main(job_path):
    import bpy
    from mathutils import Matrix
    from PIL import Image

    sys.path.insert(0, os.environ.get("PIXAL3D_REPO", os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))))
    from pixal3d.data.cameras import border_distance, camera_position, look_at_c2w, retry_radius

    job = json.load(open(job_path))
    out_dir = job["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    tmp_dir = os.path.join(out_dir, "_tmp")
    os.makedirs(tmp_dir, exist_ok=True)

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    with open(job["dump"], "rb") as fh:
        dump = pickle.load(fh)

    # ---------------------------------------------------------------- materials
    image_cache = {}

    def load_image(tex, colorspace):
        key = (id(tex["image"]), colorspace)
        if key not in image_cache:
            path = os.path.join(tmp_dir, f"tex_{len(image_cache)}.png")
            with open(path, "wb") as fh:
                fh.write(tex["image"])
            img = bpy.data.images.load(path)
            img.colorspace_settings.name = colorspace
            img.alpha_mode = "CHANNEL_PACKED"
            image_cache[key] = img
        return image_cache[key]

    def build_material(m):
        mat = bpy.data.materials.new(m.get("name") or "material")
        mat.use_nodes = True
        nt = mat.node_tree
        bsdf = nt.nodes["Principled BSDF"]
        links = nt.links

        def tex_node(tex, colorspace):
            n = nt.nodes.new("ShaderNodeTexImage")
            n.image = load_image(tex, colorspace)
            n.interpolation = "Closest" if tex.get("interpolation") == "Closest" else "Linear"
            ext = tex.get("extension", "REPEAT")
            n.extension = ext if ext in ("REPEAT", "EXTEND", "CLIP", "MIRROR") else "REPEAT"
            return n

        def scalar(tex, factor, colorspace="Non-Color"):
            n = tex_node(tex, colorspace)
            ch = tex.get("channel")
            if ch == 3:
                out = n.outputs["Alpha"]
            elif ch is None:
                out = n.outputs["Color"]
            else:
                sep = nt.nodes.new("ShaderNodeSeparateColor")
                links.new(n.outputs["Color"], sep.inputs[0])
                out = sep.outputs[int(ch)]
            if factor != 1.0:
                mul = nt.nodes.new("ShaderNodeMath")
                mul.operation = "MULTIPLY"
                links.new(out, mul.inputs[0])
                mul.inputs[1].default_value = factor
                out = mul.outputs[0]
            return out

        def color(tex, factor, colorspace):
            n = tex_node(tex, colorspace)
            out = n.outputs["Color"]
            if any(abs(f - 1.0) > 1e-6 for f in factor):
                mul = nt.nodes.new("ShaderNodeVectorMath")
                mul.operation = "MULTIPLY"
                links.new(out, mul.inputs[0])
                mul.inputs[1].default_value = tuple(factor)
                out = mul.outputs[0]
            return out

        bcf = list(m["baseColorFactor"])
        if m.get("baseColorTexture") is not None:
            links.new(color(m["baseColorTexture"], bcf, "sRGB"), bsdf.inputs["Base Color"])
        else:
            bsdf.inputs["Base Color"].default_value = (*bcf, 1.0)
        mode = m.get("alphaMode", "OPAQUE")
        if mode != "OPAQUE":
            if m.get("alphaTexture") is not None:
                a = scalar(m["alphaTexture"], float(m.get("alphaFactor", 1.0)))
                if mode == "MASK":
                    gt = nt.nodes.new("ShaderNodeMath")
                    gt.operation = "GREATER_THAN"
                    links.new(a, gt.inputs[0])
                    gt.inputs[1].default_value = float(m.get("alphaCutoff", 0.5)) - 1e-6
                    a = gt.outputs[0]
                links.new(a, bsdf.inputs["Alpha"])
            else:
                af = float(m.get("alphaFactor", 1.0))
                bsdf.inputs["Alpha"].default_value = (
                    (1.0 if af >= float(m.get("alphaCutoff", 0.5)) else 0.0) if mode == "MASK" else af)
        for key, sock in (("metallic", "Metallic"), ("roughness", "Roughness")):
            f = float(m[f"{key}Factor"])
            if m.get(f"{key}Texture") is not None:
                links.new(scalar(m[f"{key}Texture"], f), bsdf.inputs[sock])
            else:
                bsdf.inputs[sock].default_value = f
        if m.get("normalTexture") is not None:
            nm = nt.nodes.new("ShaderNodeNormalMap")
            links.new(tex_node(m["normalTexture"], "Non-Color").outputs["Color"], nm.inputs["Color"])
            links.new(nm.outputs["Normal"], bsdf.inputs["Normal"])
        ef = list(m.get("emissiveFactor", [0, 0, 0]))
        if max(ef) > 0:
            if m.get("emissiveTexture") is not None:
                links.new(color(m["emissiveTexture"], ef, "sRGB"), bsdf.inputs["Emission Color"])
            else:
                bsdf.inputs["Emission Color"].default_value = (*ef, 1.0)
            bsdf.inputs["Emission Strength"].default_value = 1.0
        return mat

    materials = [build_material(m) for m in dump.get("materials", [])]
    default = bpy.data.materials.new("default")
    default.use_nodes = True
    dbsdf = default.node_tree.nodes["Principled BSDF"]
    dbsdf.inputs["Base Color"].default_value = (0.8, 0.8, 0.8, 1.0)
    dbsdf.inputs["Metallic"].default_value = 0.0
    dbsdf.inputs["Roughness"].default_value = 0.5

    # ---------------------------------------------------------------- meshes
    for oi, o in enumerate(dump["objects"]):
        v = np.asarray(o["vertices"], np.float32)
        f = np.asarray(o["faces"], np.int64)
        me = bpy.data.meshes.new(f"mesh_{oi}")
        me.vertices.add(len(v))
        me.vertices.foreach_set("co", v.ravel())
        me.loops.add(3 * len(f))
        me.loops.foreach_set("vertex_index", f.astype(np.int32).ravel())
        me.polygons.add(len(f))
        me.polygons.foreach_set("loop_start", np.arange(0, 3 * len(f), 3, dtype=np.int32))
        me.update(calc_edges=True)
        uvs = o.get("uvs")
        if uvs is not None:
            layer = me.uv_layers.new(name="UVMap")
            layer.data.foreach_set("uv", np.asarray(uvs, np.float32).ravel())
        mids = np.asarray(o.get("mat_ids", np.full(len(f), -1)), np.int64)
        used = sorted(set(mids.tolist()))
        slot = {m: i for i, m in enumerate(used)}
        for m in used:
            me.materials.append(materials[m] if m >= 0 else default)
        me.polygons.foreach_set("material_index", np.array([slot[m] for m in mids.tolist()], np.int32))
        # validate first: custom normals on invalid topology (e.g. a face repeating a vertex) crash Blender
        me.validate(clean_customdata=False)
        if o.get("normals") is not None and len(me.polygons) == len(f) and len(me.loops) == 3 * len(f):
            try:
                me.shade_smooth()
                n = np.asarray(o["normals"], np.float64).reshape(-1, 3)
                nn = np.linalg.norm(n, axis=1, keepdims=True)
                n = np.where(nn > 1e-12, n / np.maximum(nn, 1e-12), 0.0)
                me.normals_split_custom_set(n.tolist())
            except Exception as e:  # noqa: BLE001 - fall back to Blender's own normals
                _log(f"custom normals skipped for object {oi}: {e}")
        elif o.get("normals") is not None:
            _log(f"object {oi}: invalid faces removed by validate(); using Blender's normals")
        obj = bpy.data.objects.new(f"object_{oi}", me)
        scene.collection.objects.link(obj)

    # ---------------------------------------------------------------- render settings
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.render.resolution_x = scene.render.resolution_y = int(job["resolution"])
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 1.0
    scene.cycles.diffuse_bounces = 1
    scene.cycles.glossy_bounces = 1
    scene.cycles.transparent_max_bounces = 3
    scene.cycles.transmission_bounces = 3
    scene.cycles.use_adaptive_sampling = False
    scene.view_settings.view_transform = "Standard"
    scene.render.threads_mode = "FIXED"
    scene.render.threads = max(1, int(job.get("threads", 1)))

    cam_data = bpy.data.cameras.new("Camera")
    cam_data.sensor_width = 32.0
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.clip_start = 0.01
    cam_data.clip_end = 1000.0
    cam = bpy.data.objects.new("Camera", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam

    world = bpy.data.worlds.new("World")
    scene.world = world
    world.use_nodes = True
    wnt = world.node_tree
    bg = wnt.nodes["Background"]
    hdri_cache = {}

    def set_world(view):
        for n in list(wnt.nodes):
            if n.type in ("TEX_ENVIRONMENT", "MAPPING", "TEX_COORD"):
                wnt.nodes.remove(n)
        if job["lighting"] == "hdri":
            env = wnt.nodes.new("ShaderNodeTexEnvironment")
            path = view["hdri"]
            if path not in hdri_cache:
                hdri_cache[path] = bpy.data.images.load(path)
            env.image = hdri_cache[path]
            tc = wnt.nodes.new("ShaderNodeTexCoord")
            mp = wnt.nodes.new("ShaderNodeMapping")
            mp.inputs["Rotation"].default_value = (0.0, 0.0, float(view["hdri_rotation"]))
            wnt.links.new(tc.outputs["Generated"], mp.inputs["Vector"])
            wnt.links.new(mp.outputs["Vector"], env.inputs["Vector"])
            wnt.links.new(env.outputs["Color"], bg.inputs["Color"])
            bg.inputs["Strength"].default_value = float(view.get("world_strength", 1.0))
        else:
            bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
            bg.inputs["Strength"].default_value = float(view.get("world_strength", 0.0))

    def set_lights(view):
        for ob in [ob for ob in scene.objects if ob.type == "LIGHT"]:
            data = ob.data
            bpy.data.objects.remove(ob, do_unlink=True)
            bpy.data.lights.remove(data)
        for i, lt in enumerate(view.get("lights", [])):
            ld = bpy.data.lights.new(f"light_{i}", type="POINT")
            ld.energy = float(lt["energy"])
            ld.shadow_soft_size = float(lt["radius"])
            lo = bpy.data.objects.new(f"light_{i}", ld)
            lo.location = tuple(lt["location"])
            scene.collection.objects.link(lo)

    def render(path, samples, denoise):
        scene.cycles.samples = int(samples)
        scene.cycles.use_denoising = bool(denoise)
        scene.render.filepath = path
        bpy.ops.render.render(write_still=True)

    frames = []
    res = int(job["resolution"])
    for i, view in enumerate(job["views"]):
        t0 = time.time()
        set_lights(view)
        set_world(view)
        fov = float(view["fov"])
        cam_data.lens = 16.0 / math.tan(fov / 2.0)
        radius = float(view["radius"])
        retries = 0
        probe = os.path.join(tmp_dir, "probe.png")
        for attempt in range(int(job["max_retries"]) + 1):
            cam.matrix_world = Matrix(look_at_c2w(camera_position(view["yaw"], view["pitch"], radius)).tolist())
            if int(job["max_retries"]) == 0:
                break
            render(probe, job["probe_samples"], False)
            alpha = np.asarray(Image.open(probe))[..., 3]
            new_r, ok = retry_radius(radius, border_distance(alpha), float(job["max_border_px"]))
            if ok or attempt == int(job["max_retries"]):
                break
            radius = new_r
            retries += 1
        c2w = look_at_c2w(camera_position(view["yaw"], view["pitch"], radius))
        cam.matrix_world = Matrix(c2w.tolist())
        name = f"{i:03d}.png"
        render(os.path.join(out_dir, name), job["samples"], job["denoise"])
        frames.append({"file_path": name, "camera_angle_x": fov, "transform_matrix": c2w.tolist(),
                       "radius": radius, "original_radius": float(view["radius"]), "retries": retries,
                       "yaw": float(view["yaw"]), "pitch": float(view["pitch"]),
                       "lighting": {k: view[k] for k in ("lights", "world_strength", "hdri", "hdri_rotation")
                                    if k in view}})
        _log(f"view {i}: radius {view['radius']:.3f} -> {radius:.3f} ({retries} retries), {time.time() - t0:.1f} s")

    meta = {"aabb": [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]], "scale": job.get("scale"), "offset": job.get("offset"),
            "renderer": f"blender {bpy.app.version_string} cycles cpu", "resolution": res,
            "samples": int(job["samples"]), "lighting_mode": job["lighting"], "frames": frames}
    tmp_json = os.path.join(out_dir, ".transforms.json.tmp")
    with open(tmp_json, "w") as fh:
        json.dump(meta, fh, indent=1)
    for name in os.listdir(tmp_dir):
        os.remove(os.path.join(tmp_dir, name))
    os.rmdir(tmp_dir)
    os.replace(tmp_json, os.path.join(out_dir, "transforms.json"))


if __name__ == "__main__":
    main(sys.argv[-1])
