"""A small reference CNN: the model used to prove the whole path end to end.

It is not from any paper. Three conv blocks over a (F, T) feature map, masked global average pooling over
time (so variable-length input works), one linear layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class ReferenceCNNConfig:
    n_classes: int = 4
    n_features: int = 26
    channels: tuple[int, ...] = (16, 32, 48)
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


class ReferenceCNN(nn.Module):
    """x (B, F, T) -> logits (B, n_classes); ``lengths`` (B,) masks padded frames in the pooling."""

    def __init__(self, config: ReferenceCNNConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 1
        for c in config.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d((2, 1))]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(c_in, config.n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        assert x.dim() == 3 and x.shape[1] == self.config.n_features, (
            f"expected (B, {self.config.n_features}, T)"
        )
        h = self.body(x.unsqueeze(1))  # (B, C, F', T): time is never pooled, so lengths stay valid
        h = h.mean(dim=2)  # (B, C, T)
        if lengths is not None:
            mask = (torch.arange(h.shape[-1], device=h.device)[None, :] < lengths[:, None]).to(h.dtype)
            pooled = (h * mask[:, None, :]).sum(-1) / mask.sum(-1).clamp(min=1)[:, None]
        else:
            pooled = h.mean(-1)
        return self.head(self.drop(pooled)), {"embedding": pooled}


# found by serlib.models.registry: model name -> (model class, its config dataclass)
SERLIB_MODELS = {"reference": (ReferenceCNN, ReferenceCNNConfig)}
