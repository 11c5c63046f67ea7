"""Generic parity harness: every model fixture (``class`` is a registered model) is rebuilt from its JSON ``args``,
loaded strictly from ``param.*``, called as its ``notes`` describe, and compared with ``out.*``
(relative L2 error ≤ 1e-4, NaN fails; sparse outputs compared after sorting rows by (batch, x, y, z)).

Adding a fixture
----------------
* A new fixture of an already-covered class needs no code (it is discovered from tests/fixtures or ../shared).
* A new call convention: write ``call(model, inputs: dict[str, Tensor], meta: dict) -> dict[str, output]`` and put
  ``(call, {output names})`` in ``CALLS`` under the class name. Outputs are dense tensors (compared with ``out.<name>``) or ``SparseTensor``s
  (compared with ``out.<name>`` using coords ``out.<name>_coords`` when the fixture has them, else ``in.coords``).
  A fixture is collected only when its call convention produces every one of its ``out.*`` entries that is not a
  ``*_coords`` entry (``EXTRA_OUTPUTS`` may name derived outputs a convention deliberately leaves out).
"""
import json

import pytest
import torch
from conftest import SHARED_FIXTURES, VENDORED, load_fixture

from pixal3d.models import _CLASSES, get_model_class
from pixal3d.models.pretrained import load_state_dict_checked

REL_TOL = 1e-4


def _sparse(feats, coords):
    from pixal3d.sparse import SparseTensor
    return SparseTensor(feats, coords)


def _image_cond(inp, sparse_coords=None):
    if "in.cond" in inp:
        return inp["in.cond"]
    proj = inp["in.cond_proj"]
    if sparse_coords is not None:
        proj = _sparse(proj, sparse_coords)
    return {"global": inp["in.cond_global"], "proj": proj}


def call_ss_flow(model, inp, meta):
    """``forward(x, t, cond)``; Pixal3D: ``cond = {'global', 'proj'}``."""
    return {"v": model(inp["in.x"], inp["in.t"], _image_cond(inp))}


def call_slat_flow(model, inp, meta):
    """``forward(SparseTensor(feats, coords), t, cond[, concat_cond=SparseTensor(concat_feats, coords)])``."""
    coords = inp["in.coords"]
    concat = _sparse(inp["in.concat_feats"], coords) if "in.concat_feats" in inp else None
    return {"v": model(_sparse(inp["in.feats"], coords), inp["in.t"], _image_cond(inp, coords), concat_cond=concat)}


def call_ss_encoder(model, inp, meta):
    """``forward(x, sample_posterior=False, return_raw=True) -> (z, mean, logvar)``."""
    z, mean, logvar = model(inp["in.x"], sample_posterior=False, return_raw=True)
    return {"z": z, "mean": mean, "logvar": logvar}


def call_ss_decoder(model, inp, meta):
    """``forward(z) -> logits``."""
    return {"logits": model(inp["in.z"])}


# class name -> (call convention, names of the outputs it returns)
CALLS = {
    "SparseStructureFlowModel": (call_ss_flow, {"v"}),
    "SLatFlowModel": (call_slat_flow, {"v"}),
    "ElasticSLatFlowModel": (call_slat_flow, {"v"}),
    "SparseStructureEncoder": (call_ss_encoder, {"z", "mean", "logvar"}),
    "SparseStructureDecoder": (call_ss_decoder, {"logits"}),
}
# outputs of a fixture that a convention may deliberately not produce, per fixture name
EXTRA_OUTPUTS = {}


def _discover():
    found = {}
    for root in (SHARED_FIXTURES, VENDORED):  # vendored copies win
        if not root.is_dir():
            continue
        for p in sorted(root.glob("*.json")):
            try:
                meta = json.loads(p.read_text())
            except ValueError:
                continue
            if not isinstance(meta, dict) or meta.get("class") not in _CLASSES or meta["class"] not in CALLS:
                continue
            found[p.stem] = meta
    return found


def _expected_outputs(meta, name):
    outs = [k for k in meta.get("outputs", {}) if not k.endswith("_coords")]
    return [k for k in outs if k not in EXTRA_OUTPUTS.get(name, ())]


def _covered(name, meta):
    """Whether the class's call convention produces this fixture's outputs (sampler fixtures reuse model classes
    but record sampling trajectories; they are not model-forward fixtures)."""
    return set(_expected_outputs(meta, name)) <= CALLS[meta["class"]][1]


FIXTURES = {n: m for n, m in _discover().items() if _covered(n, m)}


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double(), ref.double()
    if torch.isnan(ours).any():
        return float("nan")
    return ((ours - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _sorted_rows(coords: torch.Tensor, feats: torch.Tensor):
    c = coords.long()
    key = ((c[:, 0] * 1024 + c[:, 1]) * 1024 + c[:, 2]) * 1024 + c[:, 3]
    order = torch.argsort(key)
    return c[order], feats[order]


def test_fixtures_were_found():
    for required in ("ss_flow", "slat_flow_shape", "slat_flow_tex", "px_ss_flow", "px_slat_flow_shape"):
        if (VENDORED / f"{required}.json").exists() or (SHARED_FIXTURES / f"{required}.json").exists():
            assert required in FIXTURES, f"{required} exists but was not collected"


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_model_fixture(name):
    meta, tensors = load_fixture(name)
    cls = get_model_class(meta["class"])
    torch.manual_seed(0)
    model = cls(**meta["args"]).eval()
    params = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    load_state_dict_checked(model, params, strict=True)
    inputs = {k: v for k, v in tensors.items() if k.startswith("in.")}
    with torch.no_grad():
        outs = CALLS[meta["class"]][0](model, inputs, meta)
    for out_name in _expected_outputs(meta, name):
        ref = tensors[f"out.{out_name}"]
        ours = outs[out_name]
        if hasattr(ours, "coords"):  # sparse output
            ref_coords = tensors.get(f"out.{out_name}_coords", tensors.get("in.coords"))
            oc, of = _sorted_rows(ours.coords, ours.feats)
            rc, rf = _sorted_rows(ref_coords, ref)
            assert torch.equal(oc, rc), f"{name}.{out_name}: coordinate sets differ"
            ours, ref = of, rf
        assert tuple(ours.shape) == tuple(ref.shape), f"{name}.{out_name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
        err = _rel_err(ours, ref)
        assert err <= REL_TOL, f"{name}.{out_name}: relative error {err:.3g} > {REL_TOL}"
