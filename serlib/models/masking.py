"""Masking helpers for variable-length, zero-padded frame sequences.

Convention: a boolean mask is True on valid frames and False on padding. Every helper is safe on fully masked
rows (no NaN, no inf): a softmax over nothing is all zeros, a mean or max over nothing is zero.
"""

from __future__ import annotations

import torch

__all__ = ["lengths_to_mask", "masked_softmax", "masked_mean", "masked_max", "pooled_lengths"]


def lengths_to_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """lengths (B,) valid frame counts -> bool mask (B, T), True where ``t < lengths[b]``."""
    assert lengths.dim() == 1, f"lengths must be (B,), got {tuple(lengths.shape)}"
    positions = torch.arange(T, device=lengths.device)
    return positions[None, :] < lengths.to(positions.device)[:, None]


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``scores`` over ``dim`` restricted to ``mask`` (broadcastable to ``scores``).

    Masked entries get exactly zero probability; a row with no valid entry is all zeros (not NaN), and its
    gradient is zero.
    """
    mask = mask.to(torch.bool).expand_as(scores)
    # A large finite fill (not -inf) keeps fully masked rows finite; the final multiply zeroes them.
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim) * mask.to(scores.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only entries where ``mask`` (broadcastable to ``x``) is True.

    E.g. x (B, T, D) with mask[:, :, None] of a (B, T) mask, dim=1 -> (B, D). Zero where nothing is valid.
    """
    m = mask.to(x.dtype).expand_as(x)
    total = (x * m).sum(dim=dim, keepdim=keepdim)
    count = m.sum(dim=dim, keepdim=keepdim)
    return total / count.clamp(min=1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """Max of ``x`` over ``dim`` among entries where ``mask`` (broadcastable to ``x``) is True.

    Returns values only; zero where nothing is valid.
    """
    m = mask.to(torch.bool).expand_as(x)
    filled = x.masked_fill(~m, torch.finfo(x.dtype).min)
    values = filled.amax(dim=dim, keepdim=keepdim)
    any_valid = m.any(dim=dim, keepdim=keepdim)
    return torch.where(any_valid, values, torch.zeros_like(values))


def pooled_lengths(lengths: torch.Tensor, kernel: int, stride: int | None = None) -> torch.Tensor:
    """Valid lengths after an unpadded pooling (or conv) along time with ``kernel`` and ``stride``.

    ``floor((L - kernel) / stride) + 1`` clamped at 0: exactly the output frames whose window lies entirely inside
    the valid input, so no pooled valid frame ever sees padding (``nn.MaxPool1d`` with ``ceil_mode=False``).
    ``stride`` defaults to ``kernel`` as in torch pooling.
    """
    stride = kernel if stride is None else stride
    assert kernel >= 1 and stride >= 1, "kernel and stride must be >= 1"
    out = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return out.clamp(min=0)


def check_sequence_input(x: torch.Tensor, lengths: torch.Tensor | None, n_features: int) -> torch.Tensor:
    """Assert ``x`` is (B, n_features, T) and return valid ``lengths`` (B,) long on x's device (all T when None)."""
    assert x.dim() == 3 and x.shape[1] == n_features, f"expected (B, {n_features}, T), got {tuple(x.shape)}"
    B, _, T = x.shape
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
    lengths = lengths.to(device=x.device, dtype=torch.long)
    assert lengths.shape == (B,) and int(lengths.max()) <= T and int(lengths.min()) >= 1, "bad lengths"
    return lengths
