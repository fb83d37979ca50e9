"""Six-block CNN with efficient channel attention (ECA) for SER (Kim & Kwon, arXiv 2409.04007, Sci. Rep. 2025).

Architecture (paper Sec. IV-B, Fig. 3): six conv blocks (3x3 conv, stride 1, padding 1, BatchNorm, ReLU);
2x2 average pooling after blocks 1-5, global average pooling after block 6; two fully connected layers whose
width equals the last conv's channels (FC -> ReLU -> dropout -> FC -> logits). All weights He-initialised.

Channel widths: the paper multiplies a base pattern by a scale ``k`` in 1..8, but the table with the base pattern
is lost in the text we have. We use the named pattern ``"doubling"`` = (8, 16, 32, 64, 128, 128): widths double
for five blocks and the sixth keeps the fifth's width (a common VGG-like choice). With k = 4 this gives
(32, 64, 128, 256, 512, 512). Any tuple of six ints may be passed instead.

ECA block (paper Sec. IV-C, Fig. 4/5): GAP over (F, T) -> Conv1d(1, 1, k_eca, no bias, padding k_eca // 2) across
the channel axis -> sigmoid -> rescale the channels. Two variants:

* ``"paper"`` ("our ECA"): no BatchNorm inside, fixed kernel (default 7); the paper's best places it after
  blocks 5 and 6 only, adding exactly 7 + 7 = 14 parameters.
* ``"original"``: ECA-Net (Wang et al., CVPR 2020) as the paper describes it: the kernel adapts to the channel
  count, k = |log2(C) / gamma + b / gamma| rounded to the nearest odd number at or above (gamma=2, b=1), and a
  BatchNorm sits inside the block (the paper: "a key difference from the original ECA is the omission of batch
  normalization"). We place it on the 1-D conv's output, before the sigmoid (``BatchNorm1d(1)``, 2 parameters).
  Note: the official ECA-Net ``eca_layer`` has no BatchNorm of its own; pass ``eca_batchnorm=False`` for that.
  In the paper's experiment the original ECA follows every conv block: :meth:`ECACNNConfig.original_eca`.

``aux["eca_weights"]`` maps each ECA block's 1-based layer index to its (B, C) channel weights (for Fig. 14);
:func:`eca_weights_by_class` averages them per emotion.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

CHANNEL_PATTERNS: dict[str, tuple[int, ...]] = {
    # widths double for five blocks, the sixth keeps the fifth's (our choice: the paper's table is lost)
    "doubling": (8, 16, 32, 64, 128, 128),
}
N_BLOCKS = 6
N_POOLS = 5  # 2x2 average pooling after blocks 1-5: inputs need at least 2**5 = 32 bins and frames
ECA_VARIANTS = ("paper", "original")


def adaptive_eca_kernel(channels: int, *, gamma: float = 2.0, b: float = 1.0) -> int:
    """ECA-Net's kernel size for ``channels``: t = int(|log2(C) / gamma + b / gamma|), made odd (t or t + 1)."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return t if t % 2 else t + 1


@dataclass
class ECACNNConfig:
    """Configuration of :class:`ECACNN`. Widths are ``channel_pattern`` x ``scale``."""

    n_classes: int = 4
    n_features: int = 64  # mel bins
    channel_pattern: str | tuple[int, ...] = "doubling"  # a key of CHANNEL_PATTERNS or six ints
    scale: int = 4  # the paper's k, 1..8
    eca_layers: tuple[int, ...] = (5, 6)  # 1-based conv blocks followed by an ECA block; () = plain CNN
    eca_kernel: int | None = None  # None: the variant's default (paper: 7; original: adaptive per layer)
    eca_variant: str = "paper"  # "paper" | "original"
    eca_batchnorm: bool | None = None  # None: the variant's default (paper: False; original: True)
    dropout: float = 0.0  # between the two FC layers; the paper mentions none
    fc_hidden: int | None = None  # None: the last conv's channels, as in the paper

    def __post_init__(self):
        self.eca_layers = tuple(int(i) for i in self.eca_layers)
        if self.eca_variant not in ECA_VARIANTS:
            raise ValueError(f"eca_variant must be one of {ECA_VARIANTS}, got {self.eca_variant!r}")
        if not 1 <= self.scale <= 8:
            raise ValueError(f"scale (the paper's k) must be in 1..8, got {self.scale}")
        layers = self.eca_layers
        if any(not 1 <= i <= N_BLOCKS for i in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"eca_layers must be distinct indices in 1..{N_BLOCKS}, got {self.eca_layers}")
        if self.eca_kernel is not None and (self.eca_kernel < 1 or self.eca_kernel % 2 == 0):
            raise ValueError(f"eca_kernel must be a positive odd integer, got {self.eca_kernel}")
        if len(self.base_channels) != N_BLOCKS:
            raise ValueError(f"channel_pattern needs {N_BLOCKS} widths, got {self.base_channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def original_eca(cls, **kwargs) -> ECACNNConfig:
        """The paper's "original ECA" run: ECA-Net blocks (adaptive kernel, BatchNorm) after every conv block."""
        kwargs.setdefault("eca_layers", tuple(range(1, N_BLOCKS + 1)))
        kwargs.setdefault("eca_variant", "original")
        return cls(**kwargs)

    @property
    def base_channels(self) -> tuple[int, ...]:
        if isinstance(self.channel_pattern, str):
            if self.channel_pattern not in CHANNEL_PATTERNS:
                raise ValueError(
                    f"unknown channel_pattern {self.channel_pattern!r}; known: {list(CHANNEL_PATTERNS)}"
                )
            return CHANNEL_PATTERNS[self.channel_pattern]
        return tuple(int(c) for c in self.channel_pattern)

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of the six conv blocks."""
        return tuple(c * self.scale for c in self.base_channels)

    def kernel_for(self, channels: int) -> int:
        """ECA kernel size used for a block with ``channels`` channels."""
        if self.eca_kernel is not None:
            return self.eca_kernel
        return 7 if self.eca_variant == "paper" else adaptive_eca_kernel(channels)

    @property
    def use_batchnorm_in_eca(self) -> bool:
        return self.eca_variant == "original" if self.eca_batchnorm is None else bool(self.eca_batchnorm)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


class ECA(nn.Module):
    """Efficient channel attention: x (B, C, H, W) -> (x * w[..., None, None], w) with w (B, C) in (0, 1).

    w = sigmoid(Conv1d_k(GAP(x))) where the 1-D conv (one in/out channel, no bias, zero padding k // 2) slides
    over the channel axis, so each channel's weight depends on its k neighbours. ``batchnorm=True`` adds a
    ``BatchNorm1d(1)`` on the conv output before the sigmoid (the paper's reading of the original ECA).
    """

    def __init__(self, kernel_size: int = 7, *, batchnorm: bool = False):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm1d(1) if batchnorm else None

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> w (B, C)."""
        assert x.dim() == 4, f"expected (B, C, H, W), got {tuple(x.shape)}"
        y = self.conv(x.mean(dim=(2, 3)).unsqueeze(1))  # (B, 1, C)
        if self.bn is not None:
            y = self.bn(y)
        return torch.sigmoid(y.squeeze(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.channel_weights(x)
        return x * w[:, :, None, None], w


class ConvBlock(nn.Sequential):
    """3x3 conv (stride 1, padding 1, no bias: BatchNorm follows) -> BatchNorm2d -> ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
        )


class ECACNN(nn.Module):
    """x (B, n_features, T) log-Mel -> (logits (B, n_classes), aux).

    ``aux["eca_weights"]``: {layer (1-based): (B, C_layer)}; ``aux["embedding"]``: (B, C6) pooled features.
    ``lengths`` is accepted for the common interface but unused: the paper feeds fixed 6 s inputs (centre
    padded/cropped), and the zero padding is part of what the network sees. Needs n_features, T >= 32.
    """

    def __init__(self, config: ECACNNConfig | None = None):
        super().__init__()
        self.config = config = config or ECACNNConfig()
        chans = config.channels
        self.blocks = nn.ModuleList(ConvBlock(c_in, c_out) for c_in, c_out in zip((1,) + chans[:-1], chans))
        self.eca = nn.ModuleDict(
            {
                str(i): ECA(config.kernel_for(chans[i - 1]), batchnorm=config.use_batchnorm_in_eca)
                for i in sorted(config.eca_layers)
            }
        )
        self.pool = nn.AvgPool2d(2, stride=2)
        hidden = config.fc_hidden or chans[-1]
        self.fc1 = nn.Linear(chans[-1], hidden)
        self.drop = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(hidden, config.n_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (kaiming normal, fan_in, ReLU gain) for every conv and linear weight; zero biases; BN to (1, 0)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        cfg = self.config
        assert x.dim() == 3 and x.shape[1] == cfg.n_features, (
            f"expected (B, {cfg.n_features}, T), got {tuple(x.shape)}"
        )
        assert x.shape[2] >= 2**N_POOLS and cfg.n_features >= 2**N_POOLS, (
            f"need at least {2**N_POOLS} bins and frames for {N_POOLS} poolings, got {tuple(x.shape[1:])}"
        )
        if lengths is not None:
            assert lengths.shape == (x.shape[0],), f"lengths must be (B,), got {tuple(lengths.shape)}"
        h = x.unsqueeze(1)  # (B, 1, F, T)
        eca_weights: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks, start=1):
            h = block(h)  # (B, C_i, F / 2**(i-1), T / 2**(i-1))
            if str(i) in self.eca:
                h, eca_weights[i] = self.eca[str(i)](h)
            if i < N_BLOCKS:
                h = self.pool(h)
        emb = h.mean(dim=(2, 3))  # global average pooling: (B, C6)
        logits = self.fc2(self.drop(torch.relu(self.fc1(emb))))
        assert logits.shape == (x.shape[0], cfg.n_classes)
        return logits, {"eca_weights": eca_weights, "embedding": emb}


@torch.no_grad()
def eca_weights_by_class(
    model: ECACNN,
    x: torch.Tensor,
    y: torch.Tensor | np.ndarray,
    layers: tuple[int, ...] | list[int] | None = None,
    *,
    batch_size: int = 64,
) -> dict[int, np.ndarray]:
    """Mean ECA channel weights per class (the paper's Fig. 14), in eval mode.

    x (N, F, T) features, y (N,) integer labels. Returns {layer: array (n_classes, C_layer)}; a class absent
    from ``y`` gets a row of NaN. ``layers`` defaults to every ECA layer of the model.
    """
    layers = sorted(model.config.eca_layers) if layers is None else list(layers)
    missing = [i for i in layers if str(i) not in model.eca]
    if missing:
        raise ValueError(
            f"model has no ECA block after layer(s) {missing}; it has {sorted(model.config.eca_layers)}"
        )
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    assert x.dim() == 3 and y.shape == (x.shape[0],), (
        f"x (N, F, T) and y (N,) needed, got {x.shape}, {y.shape}"
    )
    n_classes = model.config.n_classes
    if y.numel() and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be in 0..{n_classes - 1}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        sums = {i: torch.zeros(n_classes, model.config.channels[i - 1], dtype=torch.float64) for i in layers}
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size]
            _, aux = model(xb)
            for i in layers:
                sums[i].index_add_(0, yb, aux["eca_weights"][i].double().cpu())
    finally:
        model.train(was_training)
    counts = torch.bincount(y, minlength=n_classes).double()[:, None]
    return {i: (sums[i] / counts).numpy() for i in layers}  # 0 / 0 -> NaN for absent classes


# found by serlib.models.registry: model name -> (model class, its config dataclass)
SERLIB_MODELS = {"eca_cnn": (ECACNN, ECACNNConfig)}
