"""Model registry: a name -> (module, config class) map, so experiments pick a model by config string."""

from __future__ import annotations

import dataclasses
import importlib

from torch import nn

# name: (module, model class, config class)
MODELS: dict[str, tuple[str, str, str]] = {
    "reference": ("serlib.models.reference", "ReferenceCNN", "ReferenceCNNConfig"),
    "head_fusion": ("serlib.models.head_fusion", "HeadFusionACNN", "HeadFusionConfig"),
    "cldnn_attention": ("serlib.models.cldnn_attention", "CLDNNAttention", "CLDNNAttentionConfig"),
    "moma": ("serlib.models.moma", "MOMA", "MOMAConfig"),
    "eca_cnn": ("serlib.models.eca_cnn", "ECACNN", "ECACNNConfig"),
}


def model_classes(name: str):
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    mod, cls, cfg = MODELS[name]
    module = importlib.import_module(mod)
    return getattr(module, cls), getattr(module, cfg)


def build_model(name: str, *, n_classes: int, n_features: int, **kwargs) -> tuple[nn.Module, dict]:
    """Instantiate model ``name``; returns the model and its resolved config as a dict (for the run record)."""
    model_cls, config_cls = model_classes(name)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(kwargs) - fields
    if unknown:
        raise TypeError(f"{name}: unknown config keys {sorted(unknown)}; known: {sorted(fields)}")
    config = config_cls(n_classes=n_classes, n_features=n_features, **kwargs)
    return model_cls(config), dataclasses.asdict(config)
