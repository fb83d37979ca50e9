"""Model registry: a name -> (model class, config dataclass) map, so experiments pick a model by config string.

Nothing to edit when a model is added: every module under ``serlib/models/`` (and every module named in
``$SERLIB_PLUGINS``) that defines ``SERLIB_MODELS = {"name": (ModelClass, ConfigClass)}`` is found on first use;
:func:`register_model` adds one from code. Each config is a dataclass with ``n_classes`` and ``n_features`` fields.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil

from torch import nn

_MODELS: dict[str, tuple[type, type]] = {}
_DISCOVERED = False


def register_model(name: str, model_cls: type, config_cls: type) -> None:
    """Register ``model_cls`` (built as ``model_cls(config)``) with its config dataclass under ``name``."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{name}: the config {config_cls.__name__} must be a dataclass")
    old = _MODELS.get(name)
    if old is not None and old != (model_cls, config_cls):
        raise ValueError(f"two models are both named {name!r}: {old[0].__name__} and {model_cls.__name__}")
    _MODELS[name] = (model_cls, config_cls)


def _discover() -> None:
    global _DISCOVERED
    import serlib.models as pkg

    names = [f"serlib.models.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if m.name != "registry"]
    plugins = [m for m in os.environ.get("SERLIB_PLUGINS", "").replace(",", " ").split() if m]
    for name in names + plugins:
        for model_name, (cls, cfg) in getattr(importlib.import_module(name), "SERLIB_MODELS", {}).items():
            register_model(model_name, cls, cfg)
    _DISCOVERED = True


def models() -> dict[str, tuple[type, type]]:
    """Every registered model: name -> (model class, config class)."""
    if not _DISCOVERED:
        _discover()
    return dict(sorted(_MODELS.items()))


def model_classes(name: str):
    known = models()
    if name not in known:
        raise KeyError(f"unknown model {name!r}; known: {sorted(known)}")
    return known[name]


def build_model(name: str, *, n_classes: int, n_features: int, **kwargs) -> tuple[nn.Module, dict]:
    """Instantiate model ``name``; returns the model and its resolved config as a dict (for the run record)."""
    model_cls, config_cls = model_classes(name)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(kwargs) - fields
    if unknown:
        raise TypeError(f"{name}: unknown config keys {sorted(unknown)}; known: {sorted(fields)}")
    config = config_cls(n_classes=n_classes, n_features=n_features, **kwargs)
    return model_cls(config), dataclasses.asdict(config)
