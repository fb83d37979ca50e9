"""Classification losses: weighted focal loss (Lin et al. 2017) with inverse-frequency class weights.

Used by the ECA-CNN paper (Kim & Kwon, Sec. IV-D): FL = -w_y (1 - p_y)^gamma log p_y, with w the reciprocal of
each class's training-set frequency. The paper's gamma is lost from the text; we default to gamma = 2, the value
Lin et al. recommend.

:class:`AuxiliaryLoss` adds ``alpha`` times the same loss on an auxiliary head's logits (a model's
``aux["aux_logits"]``, e.g. CA-SER's MFCC-branch head); :func:`make_loss` wraps with it when ``alpha > 0``. It takes
the trainer's ``aux`` argument (see :class:`serlib.train.Trainer`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REDUCTIONS = ("mean", "sum", "none")
LOSS_NAMES = ("ce", "weighted_ce", "focal", "weighted_focal")
AUX_KEY = "aux_logits"  # where a model's aux dict carries an auxiliary head's logits (B, C)


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


class AuxiliaryLoss(nn.Module):
    """``base(logits, y) + alpha * base(aux[key], y)``: a main loss plus ``alpha`` times the same loss on an
    auxiliary classification head's logits (B, C), taken from the model's aux dict.

    Called by :class:`serlib.train.Trainer` as ``loss(logits, y, aux=aux)`` while training. ``aux=None`` (what the
    trainer passes when it evaluates) gives the main term alone. A training ``aux`` without a tensor at ``key`` is an
    error, never a silently dropped term: the model has no auxiliary head, so ``alpha`` must be 0.
    """

    def __init__(self, base: nn.Module, alpha: float, key: str = AUX_KEY):
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 for an auxiliary loss, got {alpha}")
        self.base, self.alpha, self.key = base, float(alpha), key

    def forward(self, logits: torch.Tensor, target: torch.Tensor, aux: dict | None = None) -> torch.Tensor:
        main = self.base(logits, target)
        if aux is None:
            return main
        extra = aux.get(self.key)
        if not isinstance(extra, torch.Tensor):
            raise ValueError(f"loss alpha={self.alpha} weighs an auxiliary head, but the model returned no "
                             f"aux[{self.key!r}] logits (it has no auxiliary head): set alpha to 0 (--loss.alpha 0)")
        return main + self.alpha * self.base(extra.float(), target)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, key={self.key!r}"


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
    alpha: float = 0.0,
) -> nn.Module:
    """Build a loss by name: "ce", "weighted_ce", "focal" (unweighted) or "weighted_focal".

    The weighted losses need ``y_train`` (training labels, for :func:`inverse_frequency_weights`);
    ``n_classes`` defaults to ``max(y_train) + 1`` (pass it when the last class may be absent). ``gamma`` applies
    to the focal losses. ``alpha > 0`` adds ``alpha`` times the same loss on the model's auxiliary head
    (:class:`AuxiliaryLoss`); these keywords are what ``--loss.FIELD`` sets.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
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
        base = nn.CrossEntropyLoss()
    elif name == "weighted_ce":
        base = nn.CrossEntropyLoss(weight=weight)
    else:
        base = WeightedFocalLoss(gamma=gamma, weight=weight)
    return AuxiliaryLoss(base, alpha) if alpha > 0 else base
