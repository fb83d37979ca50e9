"""MOMA: BiLSTM encoder + residual attention layer + mixture of multi-view attention (Interspeech 2020).

Reading of the paper (Eqs. 1-9), and choices where it is silent:

* Encoder: 2-layer BiLSTM, 512 per direction -> Y (B, T, 1024), exact on padded input
  (:class:`serlib.models.masking.MaskedBiLSTM`, equal to a packed LSTM), so padding never enters it.
* Attention block (Eqs. 4-5): M = masked mean of Y over valid frames, repeated over time (broadcast);
  E = tanh(W_h Y) * tanh(W_m M) with W_h, W_m: 1024 -> ``context`` (128, "a context vector of size 128");
  a = masked softmax over time of W_e E, W_e: context -> 1. So a is one weight per frame (B, T).
* Layer 1 residual (Eq. 6, "this attention is projected onto Y as Y' and added as a skip connection"; "the attention
  projection is of size [frames] x 1024"): ``residual="frame"`` (default) takes Y'_t = a_t * Y_t, the attention
  projected onto each frame, and Y1 = Y + Y'. ``residual="context"`` is the other reading: Y' = sum_t a_t Y_t
  repeated over time.
* Layer 2 (Eqs. 7-9): ``n_views`` blocks of the same form on Y1, each with its own (independently, randomly
  initialised) W_hn, W_mn, W_en; a_att2 = sum_n gamma_n a_n. The paper calls the gammas "control parameters",
  "initialised randomly" and trained by back-propagation, with no normalisation: ``gamma_mode="free"`` (default,
  gammas ~ U(0, 1) at init, so a_att2 sums to sum(gammas), not to 1). ``gamma_mode="softmax"`` normalises them.
* Read-out: the mixed attention pools Y1, c = sum_t a_att2_t Y1_t (B, 1024) (= sum_n gamma_n c_n), then
  "projected to 1024 nodes" (Linear + ReLU + dropout; the activation is our choice), then a linear classifier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from serlib.models.masking import (
    MaskedBiLSTM,
    check_sequence_input,
    lengths_to_mask,
    masked_mean,
    masked_softmax,
)

__all__ = ["MOMA", "MOMAConfig", "AttentionBlock", "attention_smoothness"]

GAMMA_MODES = ("free", "softmax")
RESIDUAL_MODES = ("frame", "context")


@dataclass
class MOMAConfig:
    n_classes: int = 4
    n_features: int = 23  # log-Mel filterbank bins
    lstm_hidden: int = 512  # per direction -> Y is 2 * lstm_hidden wide
    lstm_layers: int = 2
    context: int = 128  # attention context size (W_h, W_m output width)
    n_views: int = 3
    proj_dim: int = 1024
    dropout: float = 0.2  # not stated in the paper
    gamma_mode: str = "free"  # "free" (paper) | "softmax"
    residual: str = "frame"  # "frame": Y + a * Y (default reading of Eq. 6) | "context": Y + sum_t a_t Y_t

    def __post_init__(self):
        if self.gamma_mode not in GAMMA_MODES:
            raise ValueError(f"gamma_mode must be one of {GAMMA_MODES}, got {self.gamma_mode!r}")
        if self.residual not in RESIDUAL_MODES:
            raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {self.residual!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class AttentionBlock(nn.Module):
    """Eqs. 4-5 (or 7-8 for one view): Y (B, T, D), mask (B, T) -> a (B, T), a softmax over valid frames."""

    def __init__(self, d_in: int, context: int):
        super().__init__()
        self.W_h = nn.Linear(d_in, context)
        self.W_m = nn.Linear(d_in, context)
        self.W_e = nn.Linear(context, 1)

    def forward(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = masked_mean(y, mask[:, :, None], dim=1, keepdim=True)  # (B, 1, D): M, broadcast = "repeated"
        e = torch.tanh(self.W_h(y)) * torch.tanh(self.W_m(m))  # (B, T, context), Eq. 4
        return masked_softmax(self.W_e(e).squeeze(-1), mask, dim=-1)  # (B, T), Eq. 5


class MOMA(nn.Module):
    """log-Mel (B, F, T) -> logits (B, n_classes).

    aux: "attn1" (B, T) layer-1 attention; "attn2" (B, T) the gamma mixture; "attn2_views" (B, n_views, T);
    "gammas" (n_views,) the effective mixing weights; "embedding" (B, proj_dim).
    """

    def __init__(self, config: MOMAConfig):
        super().__init__()
        self.config = c = config
        d = 2 * c.lstm_hidden
        self.lstm = MaskedBiLSTM(c.n_features, c.lstm_hidden, c.lstm_layers, dropout=c.dropout if c.lstm_layers > 1 else 0.0)
        self.layer1 = AttentionBlock(d, c.context)
        self.views = nn.ModuleList(AttentionBlock(d, c.context) for _ in range(c.n_views))
        self.gamma = nn.Parameter(torch.rand(c.n_views))  # "initialised randomly"
        self.proj = nn.Linear(d, c.proj_dim)
        self.drop = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(c.proj_dim, c.n_classes)

    def gammas(self) -> torch.Tensor:
        """Effective mixing weights (n_views,)."""
        return torch.softmax(self.gamma, dim=0) if self.config.gamma_mode == "softmax" else self.gamma

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        c = self.config
        lengths = check_sequence_input(x, lengths, c.n_features)
        B, _, T = x.shape
        mask = lengths_to_mask(lengths, T)

        y = self.lstm(x.transpose(1, 2), lengths)  # (B, T, D), as a packed LSTM; exactly zero on padding

        a1 = self.layer1(y, mask)  # (B, T)
        if c.residual == "frame":
            y1 = y + a1[:, :, None] * y  # Eq. 6 with Y'_t = a_t Y_t
        else:
            y1 = y + (a1[:, :, None] * y).sum(1, keepdim=True) * mask[:, :, None].to(y.dtype)
        y1 = self.drop(y1)

        views = torch.stack([view(y1, mask) for view in self.views], dim=1)  # (B, N, T), Eq. 8
        gammas = self.gammas()
        a2 = torch.einsum("n,bnt->bt", gammas, views)  # Eq. 9
        pooled = torch.einsum("bt,btd->bd", a2, y1)  # (B, D)
        z = self.drop(torch.relu(self.proj(pooled)))  # "projected to 1024 nodes"
        logits = self.classifier(z)
        assert logits.shape == (B, c.n_classes)
        return logits, {"attn1": a1, "attn2": a2, "attn2_views": views, "gammas": gammas, "embedding": z}


def attention_smoothness(a: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """How spread out / smooth attention vectors are, over their valid frames.

    a (B, T) or (T,); lengths (B,) valid frames (None: all). Each row is first normalised to a distribution over its
    valid frames, p = |a| / sum |a| (so free-gamma mixtures, which need not sum to 1, compare fairly).
    Returns (B,) tensors (or 0-d for 1-D input):
    "entropy" -sum p log p in nats (log L for a uniform vector, 0 for a one-hot one);
    "normalized_entropy" entropy / log L in [0, 1] (1 when L == 1);
    "total_variation" sum_t |p_{t+1} - p_t| (0 for uniform, up to 2 for a one-hot).
    """
    squeeze = a.dim() == 1
    a = a[None] if squeeze else a
    assert a.dim() == 2, f"expected (B, T) or (T,), got {tuple(a.shape)}"
    B, T = a.shape
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=a.device)
    mask = lengths_to_mask(lengths.to(a.device), T)
    w = a.detach().abs() * mask.to(a.dtype)
    p = w / w.sum(-1, keepdim=True).clamp(min=torch.finfo(a.dtype).tiny)
    entropy = -(torch.where(p > 0, p * torch.log(p.clamp(min=torch.finfo(a.dtype).tiny)), 0.0)).sum(-1)
    log_len = torch.log(lengths.to(a.device, a.dtype))
    normalized = torch.where(log_len > 0, entropy / log_len.clamp(min=1e-12), torch.ones_like(entropy))
    pair_valid = (mask[:, 1:] & mask[:, :-1]).to(a.dtype)
    tv = ((p[:, 1:] - p[:, :-1]).abs() * pair_valid).sum(-1)
    out = {"entropy": entropy, "normalized_entropy": normalized, "total_variation": tv}
    return {k: v[0] for k, v in out.items()} if squeeze else out


# found by serlib.models.registry: model name -> (model class, its config dataclass)
SERLIB_MODELS = {"moma": (MOMA, MOMAConfig)}
