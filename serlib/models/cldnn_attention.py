"""CLDNN with multi-head self-attention, Focus-Attention and Calibration-Attention (MHSA-FACA).

Kim, An, Kim, "Improving Speech Emotion Recognition Through Focus and Calibration Attention Mechanisms",
Interspeech 2022. Three variants by one config switch: ``"bmhsa"`` (plain MHSA, Eqs. 1-2), ``"fa"`` (+ focal bias,
Eqs. 3-8), ``"faca"`` (+ per-head calibration, Eqs. 9-13).

Reading of the paper, and choices where it is silent:

* CLDNN: two Conv1d over time (MFCC bins as input channels, kernel 3, 64 channels, same padding), each followed by
  BatchNorm, ReLU (the activation is not named in the paper) and max-pool 2 along time; two BiLSTM layers (256 per
  direction); 8-head self-attention (d_model = 512); masked mean pool over time; FC -> ReLU -> dropout -> FC.
  The attention output goes straight to the pooling (the paper's text names no residual connection).
* Focus attention (Eqs. 3-6): ``i`` in mu_i, sigma_i indexes the *query position* ("at the i-th sequence step"), so
  every head has one centre and one scope per query: ``mu, sigma`` are (B, H, T'). W_p, W_g (d_model x d_model, shared by
  mu and sigma) act on the full projected queries Q and the mean query G (masked mean over valid frames); the result
  tanh(W_p Q_i + W_g G) is split into heads and each head has its own U_c, U_d (d_h), the multi-head adaptation the
  paper refers to. All are ``nn.Linear`` / ``nn.Parameter`` and train (the authors' earlier code kept U_c, U_d outside
  the module, so they never trained).
* m in Eqs. 5-6 is the valid (pooled) length of each sequence (``focus_m="length"``) or a fixed float. Key positions
  P_j are 0-based frame indices 0..T'-1 (as in the authors' earlier code). Eq. 7's denominator sigma^2/2 is clamped
  at ``eps`` so that sigma -> 0 cannot produce inf/NaN.
* Scores are scaled by sqrt(d_h), the per-head width (Eq. 2 applies Eq. 1 per head).
* Calibration (Eqs. 9-13): g_h = global max over the valid entries of head h's map H^o, s = sigmoid(W_s g + b_s) with
  W_s (h x h), H^s = s_h * H^o_h, output H^s V. Calibration applies to the FA maps (MHSA-FACA = MHSA-FA + CA).
* Mixed precision: under ``torch.autocast`` (float16 on CUDA, bfloat16 on CPU) the attention core (scores, Eqs. 3-7
  mu / sigma and the Gaussian bias, the softmax, calibration and H V) runs in float32 with autocast off; only the
  Q / K / V / output projections run in the low precision. In float16 the bias of a small sigma (up to -T^2 / eps)
  overflows to -inf, and a row of -inf gives NaN after the softmax; bfloat16's 8-bit mantissa would place mu in
  [0, m] only to about m / 256 frames.

Padding: padded frames are zeroed before each conv and after each pooling, pooled lengths use floor (no valid frame
ever pools padding), the BiLSTM is exact on padded input (:class:`serlib.models.masking.MaskedBiLSTM`, equal to a
packed LSTM), and every softmax/pool is masked; padded query rows of the attention maps are zero. In **training** mode BatchNorm statistics still see padded zeros, so padding invariance holds in eval mode only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from serlib.models.masking import (
    MaskedBiLSTM,
    check_sequence_input,
    lengths_to_mask,
    masked_max,
    masked_mean,
    masked_softmax,
    pooled_lengths,
)

ATTENTION_VARIANTS = ("bmhsa", "fa", "faca")


@dataclass
class CLDNNAttentionConfig:
    n_classes: int = 4
    n_features: int = 40  # MFCC bins (not stated in the paper; the notebook states what it uses)
    conv_channels: int = 64
    kernel: int = 3
    pool: int = 2  # max-pool kernel = stride along time
    lstm_hidden: int = 256
    lstm_layers: int = 2
    n_heads: int = 8
    d_model: int | None = None  # attention width; None -> 2 * lstm_hidden (the BiLSTM output)
    fc_hidden: int = 256  # not stated in the paper
    dropout: float = 0.2  # not stated in the paper
    attention: str = "faca"  # "bmhsa" | "fa" | "faca"
    focus_m: str | float = "length"  # m of Eqs. 5-6: "length" (valid length per sequence) or a fixed float
    pooling: str = "mean"  # masked mean over time (the only pooling offered)
    eps: float = 1e-6

    def __post_init__(self):
        if self.d_model is None:
            self.d_model = 2 * self.lstm_hidden
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(f"attention must be one of {ATTENTION_VARIANTS}, got {self.attention!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} not divisible by n_heads {self.n_heads}")
        if not (self.focus_m == "length" or isinstance(self.focus_m, (int, float))):
            raise ValueError(f"focus_m must be 'length' or a number, got {self.focus_m!r}")
        if self.kernel % 2 != 1:
            raise ValueError("kernel must be odd (same padding along time)")
        if self.pooling != "mean":
            raise ValueError(f"pooling must be 'mean', got {self.pooling!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def focal_bias(
    mu: torch.Tensor, sigma: torch.Tensor, positions: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """Eq. 7: f_ij = -(P_j - mu_i)^2 / (sigma_i^2 / 2).

    mu, sigma (..., T_q) per query position; positions (T_k,) key positions -> f (..., T_q, T_k).
    The denominator is clamped at ``eps``.
    """
    assert mu.shape == sigma.shape, f"mu {tuple(mu.shape)} vs sigma {tuple(sigma.shape)}"
    diff = positions.to(mu.dtype)[None, :] - mu[..., :, None]  # (..., T_q, T_k)
    return -diff.pow(2) / (sigma[..., :, None].pow(2) / 2).clamp(min=eps)


class FocusAttention(nn.Module):
    """Eqs. 3-6: per head and query position, centre mu and scope sigma in [0, m]."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.W_p = nn.Linear(d_model, d_model)
        self.W_g = nn.Linear(d_model, d_model, bias=False)  # one bias suffices: both terms are summed
        self.U_c = nn.Parameter(torch.empty(n_heads, self.d_head))
        self.U_d = nn.Parameter(torch.empty(n_heads, self.d_head))
        nn.init.xavier_uniform_(self.U_c)
        nn.init.xavier_uniform_(self.U_d)

    def forward(self, q: torch.Tensor, mask: torch.Tensor, m: torch.Tensor):
        """q (B, T, d_model) projected queries, mask (B, T), m (B,) -> mu, sigma (B, H, T) in [0, m]."""
        B, T, _ = q.shape
        g = masked_mean(q, mask[:, :, None], dim=1, keepdim=True)  # (B, 1, d_model), G of Eq. 3
        c = torch.tanh(self.W_p(q) + self.W_g(g))  # (B, T, d_model)
        c = c.view(B, T, self.n_heads, self.d_head)
        mu = torch.einsum("bthd,hd->bht", c, self.U_c)  # Eq. 3
        sigma = torch.einsum("bthd,hd->bht", c, self.U_d)  # Eq. 4
        m = m.to(q.dtype)[:, None, None]
        return m * torch.sigmoid(mu), m * torch.sigmoid(sigma)  # Eqs. 5-6


class CalibrationAttention(nn.Module):
    """Eqs. 10-11: g = global max pool of each head's map, s = sigmoid(W_s g + b_s) in (0, 1)^h."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.W_s = nn.Linear(n_heads, n_heads)

    def forward(self, attn: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """attn (B, H, T, T), pair_mask (B, 1, T, T) valid (query, key) pairs -> s (B, H)."""
        g = masked_max(attn.flatten(2), pair_mask.flatten(2), dim=-1)  # (B, H)
        return torch.sigmoid(self.W_s(g))


class MultiHeadSelfAttention(nn.Module):
    """Masked MHSA (Eqs. 1-2) with optional focal bias (Eq. 8) and calibration (Eqs. 12-13)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        variant: str = "faca",
        focus_m: str | float = "length",
        eps: float = 1e-6,
    ):
        super().__init__()
        assert variant in ATTENTION_VARIANTS
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.variant, self.focus_m, self.eps = variant, focus_m, eps
        self.W_q = nn.Linear(d_model, d_model)
        self.W_k = nn.Linear(d_model, d_model)
        self.W_v = nn.Linear(d_model, d_model)
        self.W_o = nn.Linear(d_model, d_model)
        self.focus = FocusAttention(d_model, n_heads) if variant in ("fa", "faca") else None
        self.calibration = CalibrationAttention(n_heads) if variant == "faca" else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, d_h)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """x (B, T, d_model), lengths (B,) -> out (B, T, d_model), aux dict (maps, mu, sigma, calibration: float32
        or wider, also under autocast)."""
        B, T, _ = x.shape
        mask = lengths_to_mask(lengths, T)  # (B, T)
        q_full, k_full, v_full = self.W_q(x), self.W_k(x), self.W_v(x)  # low precision under autocast
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for a float64 model
        with torch.autocast(device_type=x.device.type, enabled=False):  # the attention core in float32
            q_full, k_full, v_full = q_full.to(dtype), k_full.to(dtype), v_full.to(dtype)
            out, aux = self._attend(q_full, k_full, v_full, mask, lengths)
        return self.W_o(out), aux

    def _attend(self, q_full, k_full, v_full, mask, lengths):
        """Eqs. 1-13 on projected q, k, v (B, T, d_model) in one dtype -> concatenated heads (B, T, d_model), aux."""
        B, T, _ = q_full.shape
        q, k, v = self._heads(q_full), self._heads(k_full), self._heads(v_full)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (B, H, T, T)
        aux: dict[str, torch.Tensor] = {}
        if self.focus is not None:
            if self.focus_m == "length":
                m = lengths.to(q_full.dtype)
            else:
                m = torch.full((B,), float(self.focus_m), dtype=q_full.dtype, device=q_full.device)
            mu, sigma = self.focus(q_full, mask, m)
            positions = torch.arange(T, device=q_full.device)
            scores = scores + focal_bias(mu, sigma, positions, eps=self.eps)  # Eq. 8
            aux["mu"], aux["sigma"] = mu, sigma
        pair_mask = mask[:, None, :, None] & mask[:, None, None, :]  # (B, 1, T, T)
        attn = masked_softmax(scores, pair_mask, dim=-1)  # H^o, Eq. 9; padded query rows are zero
        aux["attn"] = attn
        if self.calibration is not None:
            s = self.calibration(attn, pair_mask)  # (B, H)
            attn = s[:, :, None, None] * attn  # H^s, Eq. 12
            aux["calibration"], aux["attn_calibrated"] = s, attn
        return (attn @ v).transpose(1, 2).reshape(B, T, -1), aux  # Eq. 13, heads concatenated


class CLDNNAttention(nn.Module):
    """MFCC (B, F, T) -> logits (B, n_classes).

    aux: "attn" (B, H, T', T') maps before calibration, "lengths" (B,) valid T' after pooling; for "fa"/"faca":
    "mu", "sigma" (B, H, T'); for "faca": "attn_calibrated" (B, H, T', T'), "calibration" (B, H);
    "embedding" (B, d_model) the pooled attention output.
    """

    def __init__(self, config: CLDNNAttentionConfig):
        super().__init__()
        self.config = c = config
        convs, bns, c_in = [], [], c.n_features
        for _ in range(2):
            convs.append(nn.Conv1d(c_in, c.conv_channels, c.kernel, padding=c.kernel // 2))
            bns.append(nn.BatchNorm1d(c.conv_channels))
            c_in = c.conv_channels
        self.convs, self.bns = nn.ModuleList(convs), nn.ModuleList(bns)
        self.pool = nn.MaxPool1d(c.pool)
        self.lstm = MaskedBiLSTM(c.conv_channels, c.lstm_hidden, c.lstm_layers, dropout=c.dropout if c.lstm_layers > 1 else 0.0)
        self.proj = (
            nn.Identity() if c.d_model == 2 * c.lstm_hidden else nn.Linear(2 * c.lstm_hidden, c.d_model)
        )
        self.attention = MultiHeadSelfAttention(
            c.d_model, c.n_heads, variant=c.attention, focus_m=c.focus_m, eps=c.eps
        )
        self.drop = nn.Dropout(c.dropout)
        self.fc1 = nn.Linear(c.d_model, c.fc_hidden)
        self.fc2 = nn.Linear(c.fc_hidden, c.n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        c = self.config
        lengths = check_sequence_input(x, lengths, c.n_features)
        B, _, T = x.shape

        if int(pooled_lengths(pooled_lengths(lengths, c.pool, c.pool), c.pool, c.pool).min()) < 1:
            raise ValueError(
                f"sequence too short: need at least {c.pool**2} frames, got {int(lengths.min())}"
            )
        h = x * lengths_to_mask(lengths, T)[:, None, :].to(x.dtype)  # padding is exactly zero before conv 1
        for conv, bn in zip(self.convs, self.bns):
            h = torch.relu(bn(conv(h)))
            h = self.pool(h)  # floor: the last pooled valid frame never covers padding
            lengths = pooled_lengths(lengths, c.pool, c.pool)
            h = h * lengths_to_mask(lengths, h.shape[-1])[:, None, :].to(h.dtype)  # zero padding again
        T2 = h.shape[-1]

        y = self.lstm(h.transpose(1, 2), lengths)  # (B, T', 2*hidden), as a packed LSTM; zero on padding
        y = self.drop(self.proj(y))

        a, aux = self.attention(y, lengths)  # (B, T', d_model)
        mask = lengths_to_mask(lengths, T2)
        pooled = masked_mean(a, mask[:, :, None], dim=1)  # (B, d_model)
        logits = self.fc2(self.drop(torch.relu(self.fc1(self.drop(pooled)))))
        aux["lengths"], aux["embedding"] = lengths, pooled
        assert logits.shape == (B, c.n_classes)
        return logits, aux


# found by serlib.models.registry: model name -> (model class, its config dataclass)
SERLIB_MODELS = {"cldnn_attention": (CLDNNAttention, CLDNNAttentionConfig)}
