"""Classification losses: weighted focal loss (Lin et al. 2017) with inverse-frequency class weights.

Used by the ECA-CNN paper (Kim & Kwon, Sec. IV-D): FL = -w_y (1 - p_y)^gamma log p_y, with w the reciprocal of
each class's training-set frequency. The paper's gamma is lost from the text; we default to gamma = 2, the value
Lin et al. recommend.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REDUCTIONS = ("mean", "sum", "none")
LOSS_NAMES = ("ce", "weighted_ce", "focal", "weighted_focal")


class WeightedFocalLoss(nn.Module):
    """Focal loss with optional class weights: logits (B, C), target (B,) -> scalar (or (B,) for "none").

    loss_i = -w[y_i] * (1 - p_i)^gamma * log p_i, where p_i = softmax(logits_i)[y_i].

    ``reduction="mean"`` follows ``F.cross_entropy(weight=w)``: sum_i loss_i / sum_i w[y_i] (a plain batch mean
    when ``weight`` is None). So with gamma = 0 this is exactly (weighted) cross-entropy. Computed from
    ``log_softmax`` and ``1 - p = -expm1(log p)`` for stability at extreme logits.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, reduction: str = "mean"):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.gamma = float(gamma)
        self.reduction = reduction
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32)
            if weight.dim() != 1 or (weight < 0).any():
                raise ValueError("weight must be a 1-D tensor of non-negative class weights")
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert logits.dim() == 2 and target.shape == (logits.shape[0],), (
            f"expected logits (B, C) and target (B,), got {tuple(logits.shape)}, {tuple(target.shape)}"
        )
        if self.weight is not None:
            assert self.weight.shape == (logits.shape[1],), (
                f"weight has {self.weight.numel()} classes, logits have {logits.shape[1]}"
            )
        logp = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)  # (B,) log p_y
        loss = -logp
        if self.gamma > 0:
            # (1 - p_y)^gamma; the clamp keeps d/dx x^gamma finite at p_y == 1 when gamma < 1
            one_minus_p = (-torch.expm1(logp)).clamp_min(torch.finfo(logp.dtype).tiny)
            loss = one_minus_p.pow(self.gamma) * loss
        w = self.weight.to(logits.dtype)[target] if self.weight is not None else None
        if w is not None:
            loss = w * loss
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / (w.sum() if w is not None else loss.new_tensor(float(loss.numel())))

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, weighted={self.weight is not None}, reduction={self.reduction!r}"


def inverse_frequency_weights(y, n_classes: int, *, normalize: bool = True) -> torch.Tensor:
    """Class weights (n_classes,) float32: w_c = N / n_c, the reciprocal of class c's frequency in ``y``.

    ``normalize=True`` rescales the weights of the present classes to mean 1. A class absent from ``y`` gets
    weight 0 (and a warning): it cannot be learned from this training set anyway.
    """
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).astype(np.int64).ravel()
    if y.size == 0:
        raise ValueError("y is empty")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got range {y.min()}..{y.max()}")
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    if not present.all():
        warnings.warn(
            f"classes {np.flatnonzero(~present).tolist()} are absent from the training labels; weight 0",
            stacklevel=2,
        )
    w = np.zeros(n_classes)
    w[present] = y.size / counts[present]
    if normalize:
        w[present] /= w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


def make_loss(
    name: str,
    *,
    y_train=None,
    n_classes: int | None = None,
    gamma: float = 2.0,
) -> nn.Module:
    """Build a loss by name: "ce", "weighted_ce", "focal" (unweighted) or "weighted_focal".

    The weighted losses need ``y_train`` (training labels, for :func:`inverse_frequency_weights`);
    ``n_classes`` defaults to ``max(y_train) + 1`` (pass it when the last class may be absent).
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose from {LOSS_NAMES}")
    weight = None
    if name.startswith("weighted_"):
        if y_train is None:
            raise ValueError(f"loss {name!r} needs y_train for its class weights")
        y_np = np.asarray(y_train.cpu() if isinstance(y_train, torch.Tensor) else y_train)
        n = int(n_classes) if n_classes is not None else int(y_np.max()) + 1
        weight = inverse_frequency_weights(y_np, n)
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weight)
    return WeightedFocalLoss(gamma=gamma, weight=weight)
