"""Masking helpers for variable-length, zero-padded frame sequences.

Convention: a boolean mask is True on valid frames and False on padding. Every helper is safe on fully masked
rows (no NaN, no inf): a softmax over nothing is all zeros, a mean or max over nothing is zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskedBiLSTM", "lengths_to_mask", "masked_softmax", "masked_mean", "masked_max", "pooled_lengths",
           "reverse_padded"]


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


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x`` (B, T, D) within its valid length, padding left in place: frame ``t < L``
    goes to ``L - 1 - t``. Its own inverse."""
    B, T = x.shape[:2]
    t = torch.arange(T, device=x.device)[None, :]
    lengths = lengths.to(x.device)[:, None]
    idx = torch.where(t < lengths, lengths - 1 - t, t)  # (B, T)
    return x.gather(1, idx[:, :, None].expand(B, T, x.shape[2]))


class MaskedBiLSTM(nn.Module):
    """A multi-layer bidirectional LSTM over zero-padded ``(B, T, D)`` sequences with valid ``lengths``: at every
    valid frame its output equals ``nn.LSTM(bidirectional=True)`` on the packed sequence; padding frames are zero.

    Why not packing: on CPU, torch runs a packed LSTM step by step outside its fused kernel, 5-15x slower than the
    same LSTM on a padded tensor (``benchmarks/recurrent.py``). Padding sits after the valid frames, so the forward
    direction never sees it before a valid frame; the backward direction runs the same fused kernel on each sequence
    reversed within its length (:func:`reverse_padded`), which puts its padding at the end too. Each (layer,
    direction) is a unidirectional ``nn.LSTM`` with the same parameter shapes as the bidirectional one; dropout
    acts on every layer's output but the last, as in ``nn.LSTM``. :meth:`from_lstm` copies a bidirectional
    ``nn.LSTM``'s weights (the parity test uses it).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers, self.dropout = input_size, hidden_size, num_layers, dropout
        sizes = [input_size] + [2 * hidden_size] * (num_layers - 1)
        self.fwd = nn.ModuleList(nn.LSTM(n, hidden_size, batch_first=True) for n in sizes)
        self.bwd = nn.ModuleList(nn.LSTM(n, hidden_size, batch_first=True) for n in sizes)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> MaskedBiLSTM:
        """A MaskedBiLSTM holding the weights of a bidirectional, batch-first ``nn.LSTM``."""
        assert lstm.bidirectional and lstm.batch_first and lstm.proj_size == 0 and lstm.bias
        out = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout)
        with torch.no_grad():
            for layer in range(lstm.num_layers):
                for mod, suffix in ((out.fwd[layer], ""), (out.bwd[layer], "_reverse")):
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        getattr(mod, f"{name}_l0").copy_(getattr(lstm, f"{name}_l{layer}{suffix}"))
        return out

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T, input_size), lengths (B,) -> (B, T, 2 * hidden_size), zero on padding."""
        mask = lengths_to_mask(lengths, x.shape[1])[:, :, None]
        h = x
        for layer in range(self.num_layers):
            f, _ = self.fwd[layer](h)
            b, _ = self.bwd[layer](reverse_padded(h, lengths))
            h = torch.cat([f, reverse_padded(b, lengths)], dim=-1)
            h = h * mask.to(h.dtype)
            if layer < self.num_layers - 1 and self.dropout > 0:
                h = F.dropout(h, self.dropout, self.training)
        return h
