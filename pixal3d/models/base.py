"""Remembering how a model was built, so that ``save_pretrained`` can write ``{"name", "args"}`` (TRELLIS2_SPEC §2).

A model class opts in by inheriting :class:`ConfigMixin` (before ``nn.Module`` or any base class). Every
``__init__`` defined by such a class is wrapped: the outermost constructor call records the class name and the
arguments the caller passed (positional ones by name, ``**kwargs`` merged in, defaults NOT filled in — exactly the
shape of the released ``ckpts/*.json``). Subclasses that define no ``__init__`` (e.g. ``ElasticSLatFlowModel``)
record their own class name with the parent's arguments.

Models may also declare

* ``_derived_buffers``: names of buffers computed from the config (e.g. ``rope_phases``). ``from_pretrained`` accepts
  files that lack them and recomputes them through :meth:`ConfigMixin.rebuild_derived_buffers`.
"""
import functools
import inspect
import json
from typing import Any, Dict

import torch

__all__ = ["ConfigMixin", "jsonable_args"]


def jsonable_args(args: Dict[str, Any]) -> Dict[str, Any]:
    """A JSON-ready copy of constructor args: tuples become lists, ``torch.dtype`` its name.

    Raises:
        TypeError: a value that JSON cannot represent (names the argument).
    """
    def conv(name, v):
        if isinstance(v, torch.dtype):
            return str(v).replace("torch.", "")
        if isinstance(v, (list, tuple)):
            return [conv(name, a) for a in v]
        if isinstance(v, dict):
            return {str(k): conv(name, a) for k, a in v.items()}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"constructor argument {name!r} = {v!r} ({type(v).__name__}) cannot be written to JSON")
    return {k: conv(k, v) for k, v in args.items()}


def _wrap_init(init):
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        if "_config_recording" not in self.__dict__:
            bound = sig.bind(self, *args, **kwargs)
            recorded = {}
            for name, value in list(bound.arguments.items())[1:]:
                if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif sig.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
                    raise TypeError(f"{type(self).__name__} takes *args; its config cannot be recorded by name")
                else:
                    recorded[name] = value
            # plain attribute writes before nn.Module.__init__ are not allowed, hence __dict__
            self.__dict__["_config_recording"] = True
            self.__dict__["_config"] = {"name": type(self).__name__, "args": recorded}
            try:
                init(self, *args, **kwargs)
            finally:
                self.__dict__.pop("_config_recording", None)
        else:
            init(self, *args, **kwargs)
    return wrapped


class ConfigMixin:
    """Records ``{"name": class name, "args": passed constructor args}`` in ``self.config`` (see module doc)."""

    _derived_buffers: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _wrap_init(cls.__dict__["__init__"])

    @property
    def config(self) -> Dict[str, Any]:
        """``{"name": str, "args": dict}`` — a copy; ``args`` as passed to the constructor."""
        cfg = self.__dict__.get("_config")
        if cfg is None:
            raise AttributeError(f"{type(self).__name__} was not constructed through a ConfigMixin __init__")
        return {"name": cfg["name"], "args": dict(cfg["args"])}

    def config_json(self) -> str:
        """The config as the released ``.json`` files write it (``json.dumps(indent=4)``)."""
        cfg = self.config
        return json.dumps({"name": cfg["name"], "args": jsonable_args(cfg["args"])}, indent=4)

    def rebuild_derived_buffers(self, device=None) -> None:
        """Recomputes the ``_derived_buffers`` on ``device`` (default: the model's parameter device). No-op here."""
