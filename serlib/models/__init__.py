"""Models, one file per paper's model family, each with its config dataclass beside the module.

Every model follows ``forward(x (B, F, T), lengths=None) -> (logits, aux)``.
"""

from serlib.models.head_fusion import HeadFusionACNN, HeadFusionConfig, count_parameters

__all__ = ["HeadFusionACNN", "HeadFusionConfig", "count_parameters"]
