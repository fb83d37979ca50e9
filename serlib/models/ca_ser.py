"""CA-SER: an MFCC encoder fused with wav2vec 2.0 hidden states by cross-attention (Deeb, Savchenko, Makarov 2024).

Inputs are precomputed features (the wav2vec 2.0 model is frozen; :mod:`serlib.ssl` extracts and caches layer L):

* ``mfcc`` (B, F, T1): 40 MFCC at a 10-ms hop, ``mfcc_lengths`` (B,) valid frames;
* ``w2v2`` (B, D, T2): layer-L hidden states (D = 768 for wav2vec2-base, a 20-ms hop), ``w2v2_lengths`` (B,).

Blocks (sizes are config fields; ``PAPER_*`` and ``CODE_*`` constants name both sources' values):

* MFCC branch (the paper's FEM): BiLSTM -> Linear to ``enc_dim`` -> sinusoidal positions -> ``enc_layers`` transformer
  encoder blocks (self-attention, key padding mask). The paper gives the BiLSTM hidden size 256; the authors' code
  uses 2 layers x 512 per direction, Linear 1024 -> 512, 3 blocks of 4 heads, ff 1024, dropout 0.3. The BiLSTM is
  :class:`MaskedBiLSTM` (exact on padded input).
* wav2vec branch: tanh then Linear D -> ``d_model``.
* Fusion (FFM): multi-head cross-attention, queries from the MFCC branch (Linear ``enc_dim`` -> ``d_model``),
  keys/values from the wav2vec branch, padded wav2vec frames masked (they get exactly zero weight); residual +
  LayerNorm, a 2-layer GELU feed-forward, residual + LayerNorm (code: 8 heads, d 256, ff 1024, dropout 0.4).
* Read-out: mean over the valid MFCC frames -> ``embedding`` (B, d_model) -> dropout -> Linear classifier.
* Auxiliary head (authors' code): mean of the MFCC branch over valid frames -> Linear -> ``aux_logits``; the
  training loss is ``focal(logits) + aux_alpha * focal(aux_logits)`` with focal gamma ``focal_gamma``
  (code: alpha 0.4, gamma 0.5). How the code weighs the two terms beyond alpha is not stated in the paper; we
  add the auxiliary term scaled by alpha (:meth:`CASER.loss`, i.e. :class:`serlib.losses.AuxiliaryLoss`, which is
  also what the trainer applies in the study: its loss ``alpha`` / ``gamma`` and these two fields are one setting,
  kept equal by :mod:`serlib.studies.ca_ser`).

Ablations (``branch``): ``"fusion"`` (the model), ``"mfcc"`` (MFCC branch alone: its pooled encoder output and
classifier; no wav2vec input), ``"w2v2"`` (a linear probe on layer L: mean over valid frames of Linear(tanh(h)),
then a Linear classifier, i.e. a linear map of the mean of tanh(h); no MFCC input). Only the modules a branch
uses are built, so parameter counts are the ablation's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from serlib.losses import AuxiliaryLoss, WeightedFocalLoss
from serlib.models.masking import MaskedBiLSTM, check_sequence_input, lengths_to_mask, masked_mean

__all__ = ["CASER", "CASERConfig", "BRANCHES", "sinusoidal_positions"]

BRANCHES = ("fusion", "mfcc", "w2v2")

# The paper's values where it states them ...
PAPER_N_MFCC = 40
PAPER_W2V2_DIM = 768  # wav2vec2-base hidden size
PAPER_LAYER = 9
PAPER_LSTM_HIDDEN = 256
# ... and the authors' public code's.
CODE_LSTM_HIDDEN = 512  # per direction
CODE_LSTM_LAYERS = 2
CODE_ENC_DIM = 512  # Linear 1024 -> 512 after the BiLSTM
CODE_ENC_LAYERS = 3
CODE_ENC_HEADS = 4
CODE_ENC_FF = 1024
CODE_ENC_DROPOUT = 0.3
CODE_D_MODEL = 256  # cross-attention width
CODE_N_HEADS = 8
CODE_FF = 1024
CODE_DROPOUT = 0.4
CODE_AUX_ALPHA = 0.4
CODE_FOCAL_GAMMA = 0.5


@dataclass
class CASERConfig:
    n_classes: int = 4
    n_features: int = PAPER_N_MFCC  # MFCC coefficients (paper 40)
    w2v2_dim: int = PAPER_W2V2_DIM  # hidden size of the SSL model (wav2vec2-base 768)
    lstm_hidden: int = PAPER_LSTM_HIDDEN  # per direction; paper 256, code 512
    lstm_layers: int = CODE_LSTM_LAYERS  # code 2 (paper silent)
    enc_dim: int = CODE_ENC_DIM  # MFCC encoder width after the BiLSTM projection; code 512
    enc_layers: int = CODE_ENC_LAYERS  # self-attention encoder blocks; code 3
    enc_heads: int = CODE_ENC_HEADS  # code 4
    enc_ff: int = CODE_ENC_FF  # code 1024
    enc_dropout: float = CODE_ENC_DROPOUT  # code 0.3
    d_model: int = CODE_D_MODEL  # cross-attention / fusion width; code 256
    n_heads: int = CODE_N_HEADS  # cross-attention heads; code 8
    ff_dim: int = CODE_FF  # fusion feed-forward hidden; code 1024
    dropout: float = CODE_DROPOUT  # fusion and classifier dropout; code 0.4
    branch: str = "fusion"  # "fusion" | "mfcc" (MFCC branch only) | "w2v2" (linear probe on layer L)
    # The training loss's settings (= the experiment's loss_kwargs alpha / gamma; the study keeps them equal):
    aux_alpha: float = CODE_AUX_ALPHA  # weight of the auxiliary MFCC-branch loss (fusion only); code 0.4
    focal_gamma: float = CODE_FOCAL_GAMMA  # focal loss gamma; code 0.5 (0 = cross-entropy)

    def __post_init__(self):
        if self.branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {self.branch!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        if self.enc_dim % self.enc_heads:
            raise ValueError(f"enc_dim {self.enc_dim} must be divisible by enc_heads {self.enc_heads}")
        if self.aux_alpha < 0 or self.focal_gamma < 0:
            raise ValueError("aux_alpha and focal_gamma must be >= 0")

    @property
    def uses_mfcc(self) -> bool:
        return self.branch in ("fusion", "mfcc")

    @property
    def uses_w2v2(self) -> bool:
        return self.branch in ("fusion", "w2v2")


def sinusoidal_positions(T: int, d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The transformer's sine/cosine position table (T, d) (Vaswani et al. 2017)."""
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return pe.to(dtype)


class CASER(nn.Module):
    """CA-SER. ``forward(mfcc, mfcc_lengths, w2v2, w2v2_lengths) -> (logits (B, C), aux)``.

    aux: ``embedding`` (B, E) the pooled utterance representation (E = d_model for fusion / w2v2, enc_dim for
    mfcc); ``cross_attention`` (B, n_heads, T1, T2) per-head weights of each MFCC frame over the wav2vec frames
    (rows sum to 1 over valid keys, zero on padded keys; rows of padded MFCC frames are meaningless), None outside
    fusion; ``aux_logits`` (B, C) of the MFCC-branch head, None outside fusion. In training mode the
    cross-attention weights are those after attention dropout (as ``nn.MultiheadAttention`` returns them): draw
    maps in eval mode.

    Inputs: ``mfcc`` (B, n_features, T1) with ``mfcc_lengths`` (B,), ``w2v2`` (B, w2v2_dim, T2) with
    ``w2v2_lengths`` (B,), zero-padded on the right; lengths None = all frames valid. ``mfcc`` may be None only for
    ``branch="w2v2"``, ``w2v2`` only for ``branch="mfcc"``. A list of :func:`serlib.ssl.hidden_states` arrays
    (T_i, D) becomes ``w2v2`` by ``serlib.data.segment.pad_sequences([h.T for h in hs])``.
    """

    def __init__(self, config: CASERConfig):
        super().__init__()
        self.config = c = config
        if c.uses_mfcc:
            self.lstm = MaskedBiLSTM(c.n_features, c.lstm_hidden, c.lstm_layers,
                                     dropout=c.enc_dropout if c.lstm_layers > 1 else 0.0)
            self.enc_in = nn.Linear(2 * c.lstm_hidden, c.enc_dim)
            layer = nn.TransformerEncoderLayer(c.enc_dim, c.enc_heads, c.enc_ff, c.enc_dropout, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, c.enc_layers, enable_nested_tensor=False)
            self.mfcc_classifier = nn.Linear(c.enc_dim, c.n_classes)  # aux head (fusion) / the head (mfcc)
        if c.uses_w2v2:
            self.w2v2_proj = nn.Linear(c.w2v2_dim, c.d_model)
        if c.branch == "fusion":
            self.query = nn.Linear(c.enc_dim, c.d_model)
            self.cross = nn.MultiheadAttention(c.d_model, c.n_heads, dropout=c.dropout, batch_first=True)
            self.norm1 = nn.LayerNorm(c.d_model)
            self.ff = nn.Sequential(nn.Linear(c.d_model, c.ff_dim), nn.GELU(), nn.Dropout(c.dropout),
                                    nn.Linear(c.ff_dim, c.d_model))
            self.norm2 = nn.LayerNorm(c.d_model)
        if c.branch != "mfcc":
            self.classifier = nn.Linear(c.d_model, c.n_classes)
        self.drop = nn.Dropout(c.dropout)

    def encode_mfcc(self, mfcc: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """mfcc (B, F, T1), lengths (B,) -> (B, T1, enc_dim), zero on padding."""
        mask = lengths_to_mask(lengths, mfcc.shape[2])
        h = self.enc_in(self.lstm(mfcc.transpose(1, 2), lengths))
        h = h + sinusoidal_positions(h.shape[1], h.shape[2], device=h.device, dtype=h.dtype)[None]
        h = self.encoder(h, src_key_padding_mask=~mask)
        return h * mask[:, :, None].to(h.dtype)

    def forward(
        self,
        mfcc: torch.Tensor | None,
        mfcc_lengths: torch.Tensor | None = None,
        w2v2: torch.Tensor | None = None,
        w2v2_lengths: torch.Tensor | None = None,
    ):
        c = self.config
        out: dict[str, torch.Tensor | None] = {"cross_attention": None, "aux_logits": None}
        if c.uses_mfcc:
            assert mfcc is not None, f"branch {c.branch!r} needs mfcc (B, {c.n_features}, T1)"
            mfcc_lengths = check_sequence_input(mfcc, mfcc_lengths, c.n_features)
            B, T1 = mfcc.shape[0], mfcc.shape[2]
            m_mask = lengths_to_mask(mfcc_lengths, T1)
            m = self.encode_mfcc(mfcc, mfcc_lengths)  # (B, T1, enc_dim)
            m_pooled = masked_mean(m, m_mask[:, :, None], dim=1)  # (B, enc_dim)
            mfcc_logits = self.mfcc_classifier(self.drop(m_pooled))
        if c.uses_w2v2:
            assert w2v2 is not None, f"branch {c.branch!r} needs w2v2 (B, {c.w2v2_dim}, T2)"
            w2v2_lengths = check_sequence_input(w2v2, w2v2_lengths, c.w2v2_dim)
            B, T2 = w2v2.shape[0], w2v2.shape[2]
            w_mask = lengths_to_mask(w2v2_lengths, T2)
            kv = self.w2v2_proj(torch.tanh(w2v2.transpose(1, 2)))  # (B, T2, d_model)
        if c.branch == "mfcc":
            logits, out["embedding"] = mfcc_logits, m_pooled
        elif c.branch == "w2v2":
            emb = masked_mean(kv, w_mask[:, :, None], dim=1)  # (B, d_model)
            logits, out["embedding"] = self.classifier(self.drop(emb)), emb
        else:
            assert w2v2.shape[0] == B, f"batch sizes differ: mfcc {B}, w2v2 {w2v2.shape[0]}"
            q = self.query(m)  # (B, T1, d_model)
            att, weights = self.cross(q, kv, kv, key_padding_mask=~w_mask, need_weights=True,
                                      average_attn_weights=False)
            x = self.norm1(q + self.drop(att))
            x = self.norm2(x + self.drop(self.ff(x)))
            emb = masked_mean(x, m_mask[:, :, None], dim=1)  # (B, d_model)
            logits = self.classifier(self.drop(emb))
            assert weights.shape == (B, c.n_heads, T1, T2)
            out.update(embedding=emb, cross_attention=weights, aux_logits=mfcc_logits)
        assert logits.shape == (B, c.n_classes), f"logits {tuple(logits.shape)}"
        return logits, out

    def loss(self, logits: torch.Tensor, aux: dict, target: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """focal(logits) + aux_alpha * focal(aux_logits) (the auxiliary term only in fusion), gamma focal_gamma:
        ``make_loss("focal", gamma=focal_gamma, alpha=aux_alpha)`` as the trainer calls it."""
        c = self.config
        focal = WeightedFocalLoss(c.focal_gamma, weight).to(logits.device)
        if aux.get("aux_logits") is None or c.aux_alpha == 0:
            return focal(logits, target)
        return AuxiliaryLoss(focal, c.aux_alpha)(logits, target, aux=aux)


SERLIB_MODELS = {"ca_ser": (CASER, CASERConfig)}
