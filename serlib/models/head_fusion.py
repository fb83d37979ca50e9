"""Head Fusion ACNN (Xu, Zhang, Zhang, IEEE Access 2021): an attention CNN on MFCC "images".

(Over 450 lines on purpose: the faithful Eq. 1 kernel and the code variant's fused op carry hand-written backward
passes that must sit beside the model they are parity-tested with.)

Input ``x`` is an MFCC segment (B, F, T), e.g. 26 x 63 for 2 s at 16 kHz with hop 512. It is treated as a one-channel
image (B, 1, F, T) and goes through:

* two parallel first convolutions, kernel (10, 2) with padding (4, 0) and kernel (2, 8) with padding (0, 3), 1 -> 8
  channels each, BatchNorm + ReLU, concatenated to 16 channels. Both branches give (F - 1, T - 1) for every input
  size (the paddings were chosen that way), so the concatenation never needs cropping; a crop to the common size is kept
  as a guard;
* ``n_middle_convs`` 3x3 convolutions (padding 1) with channels 32, 48, 64, 80 (the paper's four; more layers repeat 80,
  fewer take a prefix), each BatchNorm + ReLU, max-pool 2 after the first two. 26 x 63 -> (80, 6, 15), so the attention
  sees P = H * W = 90 feature points;
* an attention layer over the P points, chosen by ``HeadFusionConfig.attention``:

  - ``"head_fusion"`` (the paper, Eq. 1-2): ``n_size`` groups of ``n_head`` heads. Head ``h`` of group ``g`` has its own
    1x1-conv projections Q, K (width ``head_dim``) and V (width ``value_dim``, default 1) and computes
    ``X_attn = softmax(Q K^T / sqrt(head_dim)) V`` (Eq. 1, softmax over keys), a (P, value_dim) map. The ``n_head``
    maps of a group are averaged (Eq. 2), giving one map "with several points of attention", which global average
    pooling turns into one feature point. With ``value_dim=1`` a feature point is a scalar (as in Fig. 3 and in the
    authors' code, whose classifier takes exactly ``n_size`` inputs); the ``n_size`` points are concatenated and fed
    to a linear classifier. All ``n_size * n_head`` heads are computed in one batched call.
  - ``"head_fusion_code"``: the authors' public code (``MACNN``), kept for comparison: per head Q, K, V are 1x1 convs
    80 -> ``n_size``; ``softmax(Q * K)`` is an element-wise product normalised over the ``n_size`` channels (not over
    keys), multiplied element-wise by V; ReLU, then GAP over heads and positions gives ``n_size`` points -> linear.
  - ``"self_attention"``: the paper's baseline, conventional multi-head self-attention over the P points
    (``n_head`` heads of width ``head_dim``, concatenated, output projection back to 80 channels), GAP, linear.
  - ``"none"``: GAP + linear (Table 6 "without attention").

Design choice: ``head_dim`` (Q/K width per head) defaults to 8 for head fusion. The paper gives no width; the code's
per-group width is 1 (one channel per head and group). Width 32 or 80 would cost 1.3 M or 3.3 M projection parameters
for 64 x 4 heads and 5-12x the compute of the conv stack, while the run time of Eq. 1 is dominated by the
``n_size * n_head`` P x P softmaxes, not by the width. With 8 the attention layer has 1377 parameters per head
(2 * 8 + 1 output channels of an 80 -> . 1x1 conv).

Parameter counts (``count_parameters``, n_classes=8, defaults otherwise; the conv stack holds 93,168 of them; no
attention: 93,816; self-attention with 4 heads: 119,736; the code's variant with 4 x 64: 155,896):

============  ===========  ===========  ===========
head fusion   n_size=32    n_size=64    n_size=128
============  ===========  ===========  ===========
n_head=1        137,496      181,816      270,456
n_head=2        181,560      269,944      446,712
n_head=4        269,688      446,200      799,224
n_head=8        445,944      798,712    1,504,248
============  ===========  ===========  ===========

(head fusion, head_dim 8, value_dim 1; ``tests/test_head_fusion.py`` checks this table against an independent formula.)

Cost: Eq. 1 has ``n_size * n_head`` P x P maps per sample (256 x 90 x 90 for the final model), and nothing but their
pooled outputs reaches the classifier. Because V has width ``value_dim`` (1) and the group outputs are global-average
pooled over queries, a feature point only needs the attention each key receives, averaged over queries:
``point_g = mean_h sum_j (mean_i A_h[i, j]) v_h[j]``. :class:`_HeadFusionPoints` computes exactly that (the softmax is
still taken row-wise, over keys) in cache-sized blocks of heads, with a hand-written backward that recomputes each
block's maps instead of storing them. Two float-level tricks, neither changing the maths: ``exp(s - max) = 2 ** (log2(e)
(s - max))`` with ``log2(e)`` folded into the score GEMM (torch's ``exp2`` is ~4x faster than its ``exp`` on CPU), and
keys padded to a multiple of 32 with ``-inf`` scores (torch's row max is ~5x faster on such rows). The Q/K/V 1x1 conv is
run as one GEMM. Measured on the shared 2-core CPU of this project (batch 32, 26 x 63, n_head 4, n_size 64, with
flush-denormal): a training step went from 0.82 s to 0.37 s on one thread and from ~0.49 s to ~0.22 s on two
(``scaled_dot_product_attention`` with V padded to ``head_dim`` before); about 21 s per RAVDESS epoch including the test
pass (``benchmarks/head_fusion.py``). The step is now bound by the Q/K/V projection GEMM (~6 GFLOP forward + backward)
and the 2 x 8192 90 x 90 maps per batch. ``forward(..., return_attention=True)`` computes the maps explicitly for
plots and tests.

Issue 18 (same maths, checked against the previous implementation, frozen in ``tests/reference_head_fusion_v0.py``,
by ``tests/test_head_fusion_parity.py``: logits, every gradient and the BatchNorm statistics to 1e-5): the conv
stack runs channels-last, the parallel first convs as one zero-padded (10, 8) conv with one BatchNorm, max-pool before
ReLU, BatchNorm folded into the convs in eval mode; 1x1 convs are GEMMs on the channels-last map; the code variant's
attention + GAP is one autograd op; the plot-only outputs (per-query ``fused_output``, group-0 maps) are computed only
with ``return_maps`` (default: when not training; the trainer asks for them only in ``predict_with_aux``). The Eq. 1
kernel keeps its cache-sized blocks: computing all 8192 maps of a batch in one batched op (265 MB per tensor, same
points and gradients) is 2.9x slower on this CPU (memory traffic; ``results/benchmarks/head_fusion_eq1_kernel.json``).
``benchmarks/head_fusion_speed.py`` times the model against the authors' code (``results/benchmarks/head_fusion_speed.json``).

On the CPU the same function runs by default as a fused C kernel (``head_fusion_eq1.c`` through
:mod:`serlib.models._eq1_native`: compiled with the system's C compiler on first use, about a second, and cached under
``$SERLIB_CACHE/native``; without a compiler, or with ``SERLIB_EQ1_NATIVE=0`` or ``EQ1_IMPL = "blocked"``, the torch
function above runs). Per map and query it computes the row of scores, its max, ``exp2`` (a polynomial, relative error
below 2e-7), the row sum and the key weights in one pass over a row held in registers and L1, and the backward
recomputes each row the same way and accumulates dq and dk there: no P x P map is ever written, and the torch function's
separate passes (GEMM, max, exp, sums, GEMMs with K = 8) become one. Heads are split between torch's threads. The
library is built with ``-ffp-contract=fast``: under ``-std=c11`` gcc otherwise emits no fused multiply-add at all, so
every dot product of the kernels was a multiply and an add; ``exp2``'s rounding and 2^n are AVX-512 ``vrndscaleps`` /
``vscalefps`` (issue 18: ``results/benchmarks/head_fusion_speed_run7.json`` measures the step with both, ``run6``
without). That path also runs the projection GEMM in chunks of whole heads of at most ``PROJ_CHUNK_BYTES`` (glibc maps
every allocation above 32 MiB afresh, so the 50 MB projection and its gradient were page-faulted in on every step).
``results/benchmarks/head_fusion_speed_run3.json`` records the step against the authors' code with the kernel and with
the torch function, at one and two threads, and an inductor-compiled forward (slower than both: not used). The step is
then bound by what the model computes, not by how: the kernel's multiply-adds (the scores, dq and dk are each 8 per map
entry) and the 80 -> 4352-channel projection GEMM forward and backward.

Issue 18, the Jacobian in the forward: with ``value_dim`` 1 a map's output and the gradient reaching it are both
scalars, so the backward's ``T_ij = w_i A_ij (z_j - y_i) / sqrt(d)`` is ``dpoint * T1_ij``, ``T1_ij = w_i A_ij (v_j -
o_i) / sqrt(d)``, ``o_i = sum_j A_ij v_j``. In training the C forward (``hf_eq1_fwdjac``) computes the points and, from
the same scores and exponentials, ``dq``, ``dk`` and ``c`` per unit of ``dpoint`` (saved in the layout of the
projection); the backward only scales it by ``dpoint``. Every map is computed once per step instead of
twice. That kernel holds 16 queries in the lanes of a vector and runs over the keys one at a time: each row's max and
sums are lane-wise (no horizontal reduction per row), ``dq`` accumulates in registers and ``dk = T1^T q`` is one pass
over the map's stored ``T1`` at its end. Inference without per-query outputs (``hf_eq1_fwdpts``) uses ``point =
sum_i w_i o_i`` and writes only the points. Both compute the Q/K/V projection themselves
(:class:`_eq1_native.NativeProjectedPoints`, ``FUSED_PROJECTION``): a map's 2d + 1 rows from its sample's (C, P)
features in register tiles, samples outermost so that a sample's features stay in cache across the heads; the
(GH, 2d + 1, B, P) projection is never written; the backward scales the Jacobian and sums the bias gradient in one C
pass (``hf_eq1_scale_jac``), and the projection's GEMMs (dW, dx) take the scaled Jacobian. Per-query outputs (the
plots), ``value_dim`` above 1 and ``_eq1_native.JACOBIAN_IN_FORWARD = False`` keep the projection GEMM and the row-wise
forward and backward kernels. Same function (``tests/test_head_fusion_parity.py``);
``results/benchmarks/head_fusion_speed_run8.json`` times the step each way.

The code variant (``"head_fusion_code"``) uses the same library on the CPU: its Q/K/V projection is one GEMM
without bias into a (B * P, 3 * n_head * n_size) matrix, and one C pass per segment adds the bias, takes the channel
softmax, ReLU and GAP (``hf_code_forward``); the backward recomputes the softmax per row and writes dq, dk, dv and
the bias gradient in one pass (``hf_code_backward``), where the torch ops (:class:`_CodeAttentionPoints`, the
fallback) take about ten passes over the (B, P, n_head, n_size) tensors and an addmm that first copies the bias
into the output. ``tests/test_head_fusion_parity.py`` checks both paths against the reference and each other.

In training, each conv's BatchNorm (batch statistics), 2x2 max-pool and ReLU run on the CPU as two C passes forward
(the per-channel sums; normalise, pool and ReLU at once) and two backward (the two per-channel sums of the gradient;
dx), the pool's window maxima found again instead of stored (``NativeBatchNormReLU``; ``NATIVE_BN = False`` or
``EQ1_IMPL = "blocked"`` keeps torch's batch_norm / max_pool2d / relu). The running statistics are updated by
torch's rule; the parity tests compare them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from serlib.models import _eq1_native

__all__ = [
    "ATTENTION_KINDS",
    "HeadFusionACNN",
    "HeadFusionConfig",
    "conv_output_shape",
    "count_parameters",
    "middle_channels",
]

AttentionKind = Literal["head_fusion", "self_attention", "none", "head_fusion_code"]
ATTENTION_KINDS: tuple[str, ...] = ("head_fusion", "self_attention", "none", "head_fusion_code")

FIRST_CHANNELS = 8  # per parallel branch; 16 after concatenation
BASE_MIDDLE_CHANNELS: tuple[int, ...] = (32, 48, 64, 80)
N_POOLED_LAYERS = 2  # max-pool 2x2 after the first two middle convs
DEFAULT_HEAD_FUSION_DIM = 8


def middle_channels(n_middle_convs: int) -> tuple[int, ...]:
    """Output channels of the 3x3 convs: a prefix of (32, 48, 64, 80), extended with 80s beyond four."""
    if n_middle_convs < 1:
        raise ValueError(f"n_middle_convs must be >= 1, got {n_middle_convs}")
    base = BASE_MIDDLE_CHANNELS
    return base[:n_middle_convs] + (base[-1],) * max(0, n_middle_convs - len(base))


def conv_output_shape(n_features: int, n_frames: int, *, n_middle_convs: int = 4) -> tuple[int, int]:
    """(H, W) of the map the attention sees, for an (n_features, n_frames) input."""
    h, w = n_features - 1, n_frames - 1  # both first-conv branches give (F - 1, T - 1)
    for _ in range(min(N_POOLED_LAYERS, n_middle_convs)):
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"input {n_features}x{n_frames} is too small for the conv stack (gives {h}x{w})")
    return h, w


@dataclass
class HeadFusionConfig:
    """Hyper-parameters of :class:`HeadFusionACNN` (paper's final model: head fusion, n_head=4, n_size=64)."""

    n_classes: int = 8
    n_features: int = 26  # MFCC bins
    attention: AttentionKind = "head_fusion"
    n_head: int = 4
    n_size: int = 64  # number of fused feature points (groups); the code's `attention_hidden`
    attn_hidden: int | None = None  # Q/K width per head; None: 8 (head fusion), ceil(80 / n_head) (self-att.)
    value_dim: int = 1  # V width per head (head fusion): 1 makes each feature point a scalar, as in the paper
    n_middle_convs: int = 4  # 3x3 convs after the parallel first convs (Table 6 varies it)
    dropout: float = 0.0  # on the points before the classifier (the code defines 0.5, never applies it)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        for name in ("n_classes", "n_features", "n_head", "n_size", "value_dim", "n_middle_convs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.attn_hidden is not None and self.attn_hidden < 1:
            raise ValueError(f"attn_hidden must be >= 1 or None, got {self.attn_hidden}")

    @property
    def channels(self) -> int:
        """Channels of the map the attention sees (80 for the paper's stack)."""
        return middle_channels(self.n_middle_convs)[-1]

    @property
    def head_dim(self) -> int:
        """Resolved Q/K width per head."""
        if self.attn_hidden is not None:
            return self.attn_hidden
        if self.attention == "self_attention":
            return math.ceil(self.channels / self.n_head)
        return DEFAULT_HEAD_FUSION_DIM


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; BatchNorm running statistics are buffers and not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _conv_bn(c_in: int, c_out: int, kernel: tuple[int, int], padding: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=padding), nn.BatchNorm2d(c_out), nn.ReLU())


def _parallel_conv_bn_relu(a: nn.Sequential, b: nn.Sequential, x: torch.Tensor) -> torch.Tensor | None:
    """``cat(relu(bn_a(conv_a(x))), relu(bn_b(conv_b(x))))`` as one conv, one batch_norm and one ReLU.

    The two kernels are zero-padded into one common kernel placed so that every output position reads the same
    input pixels as in its branch (the paper's (10, 2) pad (4, 0) and (2, 8) pad (0, 3) become one (10, 8) kernel
    with pad (4, 3)); BatchNorm is per channel, so one batch_norm over the 16 channels, with the two modules'
    statistics concatenated (and written back in training), is the two BatchNorms. Gradients reach the two original
    weights through the padding. Returns None when the branches cannot be merged (other strides, output sizes or
    BatchNorm settings); the caller then runs them separately."""
    ca, ba, cb, bb = a[0], a[1], b[0], b[1]
    if any(c.stride != (1, 1) or c.dilation != (1, 1) or c.groups != 1 or c.bias is None or c.padding_mode != "zeros"
           or not isinstance(c.padding, tuple) for c in (ca, cb)):
        return None
    if any(n.momentum is None or not n.affine or not n.track_running_stats for n in (ba, bb)) or (
            ba.eps != bb.eps or ba.momentum != bb.momentum or ba.training != bb.training):
        return None
    (ka_h, ka_w), (kb_h, kb_w) = ca.kernel_size, cb.kernel_size
    (pa_h, pa_w), (pb_h, pb_w) = ca.padding, cb.padding
    if ka_h - 2 * pa_h != kb_h - 2 * pb_h or ka_w - 2 * pa_w != kb_w - 2 * pb_w:  # different output sizes
        return None
    p_h, p_w = max(pa_h, pb_h), max(pa_w, pb_w)
    k_h, k_w = ka_h + 2 * (p_h - pa_h), ka_w + 2 * (p_w - pa_w)
    w = torch.cat((F.pad(ca.weight, (p_w - pa_w, p_w - pa_w, p_h - pa_h, p_h - pa_h)),
                   F.pad(cb.weight, (p_w - pb_w, p_w - pb_w, p_h - pb_h, p_h - pb_h))))
    assert w.shape[-2:] == (k_h, k_w)
    mean = torch.cat((ba.running_mean, bb.running_mean))
    var = torch.cat((ba.running_var, bb.running_var))
    gamma, beta, bias = torch.cat((ba.weight, bb.weight)), torch.cat((ba.bias, bb.bias)), torch.cat((ca.bias, cb.bias))
    if ba.training:
        y = F.conv2d(x, w, bias, padding=(p_h, p_w))
        native = _native_bn_relu(y, gamma, beta, ba.eps, False)
        if native is None:
            y = F.relu_(F.batch_norm(y, mean, var, gamma, beta, True, ba.momentum, ba.eps))
        else:
            y, batch_mean, batch_var = native
            _update_running(mean, var, batch_mean, batch_var, y.numel() // y.shape[1], ba.momentum)
        with torch.no_grad():  # running statistics back into the two modules, as their own forward would
            n = ba.num_features
            for bn, sl in ((ba, slice(0, n)), (bb, slice(n, None))):
                bn.running_mean.copy_(mean[sl])
                bn.running_var.copy_(var[sl])
                bn.num_batches_tracked.add_(1)
        return y
    scale = gamma * torch.rsqrt(var + ba.eps)
    y = F.conv2d(x, w * scale.view(-1, 1, 1, 1), (bias - mean) * scale + beta, padding=(p_h, p_w))
    return F.relu_(y)  # in place: neither batch_norm nor conv needs its output for backward


NATIVE_BN = True  # training-mode BatchNorm + pool + ReLU by the C kernels where they run (see _native_bn_relu)


def _native_bn_relu(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float,
                    pool: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``relu([max_pool2d](batch_norm(y, training=True)))`` by :class:`serlib.models._eq1_native.NativeBatchNormReLU`
    (the output, the batch mean and the biased batch variance), or None where the C kernels do not run: off
    (``NATIVE_BN``, or ``EQ1_IMPL`` "blocked" / "dense", which keep the whole model in torch ops), not float32 on the
    CPU in channels-last, or a single value per channel (torch's batch_norm then raises its error)."""
    if not NATIVE_BN or EQ1_IMPL not in ("auto", "native") or y.numel() <= y.shape[1]:
        return None
    if not _eq1_native.bn_usable(y) or gamma.dtype != torch.float32 or beta.dtype != torch.float32:
        return None
    return _eq1_native.NativeBatchNormReLU.apply(y, gamma, beta, eps, pool)


def _update_running(mean: torch.Tensor, var: torch.Tensor, batch_mean: torch.Tensor, batch_var: torch.Tensor,
                    count: int, momentum: float) -> None:
    """BatchNorm's running-statistics update (torch's rule: the unbiased batch variance), in place."""
    with torch.no_grad():
        mean.mul_(1.0 - momentum).add_(batch_mean.to(mean.dtype), alpha=momentum)
        var.mul_(1.0 - momentum).add_(batch_var.to(var.dtype) * (count / (count - 1)), alpha=momentum)


def _conv_bn_relu(block: nn.Sequential, x: torch.Tensor, *, pool: bool = False) -> torch.Tensor:
    """``block`` = (Conv2d, BatchNorm2d, ReLU) applied to x, with a 2x2 max-pool before the ReLU when ``pool``
    (``relu(pool(y)) == pool(relu(y))``, gradients included). Training (or BatchNorm without running statistics):
    conv then batch_norm, exactly as the modules do (running statistics updated the same way). Eval: BatchNorm folded
    into the conv, ``w' = w * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``."""
    conv, bn = block[0], block[1]
    if bn.training and bn.track_running_stats and bn.affine and bn.momentum is not None:
        y = conv(x)
        native = _native_bn_relu(y, bn.weight, bn.bias, bn.eps, pool)
        if native is not None:
            out, batch_mean, batch_var = native
            _update_running(bn.running_mean, bn.running_var, batch_mean, batch_var, y.numel() // y.shape[1],
                            bn.momentum)
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
            return out
        y = bn(y)
    elif bn.training or bn.running_mean is None:
        y = bn(conv(x))
    else:
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        w = conv.weight * scale.view(-1, 1, 1, 1)
        y = F.conv2d(x, w, (bias - bn.running_mean) * scale + bn.bias, conv.stride, conv.padding, conv.dilation,
                     conv.groups)
    if pool:
        y = F.max_pool2d(y, 2)
    return F.relu_(y)  # in place: batch_norm and max_pool backward do not need their output


def _valid_widths(lengths: torch.Tensor, n_pools: int, width: int) -> torch.Tensor:
    """Valid columns of the attention map for `lengths` valid input frames: (T - 1) // 2**n_pools, in [1, width]."""
    return ((lengths.long() - 1) // (2**n_pools)).clamp(1, width)


def _received(attn: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Attention received per key, averaged over (valid) queries: (..., P, P) -> (..., P)."""
    if key_mask is None:
        return attn.mean(dim=-2)
    m = key_mask.to(attn.dtype)  # (B, P); queries share the key mask
    shape = (m.shape[0],) + (1,) * (attn.dim() - 3) + (m.shape[1], 1)
    return (attn * m.view(shape)).sum(dim=-2) / m.sum(dim=-1).view(shape[:-2] + (1,))


_LOG2E = math.log2(math.e)
KEY_PAD = 32  # key axis padded to a multiple of this (torch's last-axis max is much faster then)
BLOCK_HEADS = 64  # maps per block (heads of one sample): 64 x 90 x 96 floats = 2.2 MB, near cache-sized
# How Eq. 1 runs: "native" (the fused C kernel of head_fusion_eq1.c through serlib.models._eq1_native: one pass per
# map, nothing of size P x P stored; built with gcc on first use and cached, float32 on the CPU only), "blocked" (the
# custom autograd function below in torch ops: no P x P map kept, cache-sized blocks), "dense" (every sample and head
# in a few batched ops through autograd, float32: launch-bound GPUs want few big kernels and have the memory for the
# maps) or "auto" (dense on CUDA; native on the CPU when it builds, else blocked). Same function every way
# (tests/test_head_fusion_parity.py: logits and gradients within 1e-5).
EQ1_IMPL = "auto"
EQ1_IMPLS = ("auto", "native", "blocked", "dense")
PROJ_CHUNK_BYTES = 16 * 2**20  # the native path's projection GEMM in chunks of whole heads at most this large
# value_dim 1 without plot maps, native: the Q/K/V projection inside the C kernel (NativeProjectedPoints), map by map,
# instead of a GEMM writing the (GH, 2d + 1, B, P) projection for the kernel to read. False: the GEMM, as before
FUSED_PROJECTION = True


def _blocks(b: int, gh: int, block: int):
    """(sample, h0, h1) blocks covering every (sample, head)."""
    for i in range(b):
        for h0 in range(0, gh, block):
            yield i, h0, min(gh, h0 + block)


class _HeadFusionPoints(torch.autograd.Function):
    """Eq. 1 + GAP over queries for every head, without storing the P x P maps.

    proj (GH, 2d + dv, B, P): the Q/K/V projections of every head (``GH = n_size * n_head``), the 1x1 conv computed
    as one GEMM. w (B, P): query weights of the GAP (rows sum to 1), or None for 1/P. bias (B, Pk): additive key
    bias (0 or -inf) for masked keys, or None; Pk = P padded to a multiple of KEY_PAD (padding keys get -inf).

    Returns ``points`` (B, GH, dv) = sum_i w_i (A v)_i (differentiable) and ``u`` (B, GH, P, dv) = A v per query
    (for plots, not differentiable; an empty tensor unless ``want_u``), A = softmax_j(q_i . k_j / sqrt(d)). Forward: points = sum_j c_j v_j with
    c_j = sum_i w_i A_ij; backward: dS_ij = w_i A_ij (z_j - (A z)_i) with z = v . dpoints, recomputing A block by
    block (one sample's heads at a time) so that every P x P map stays in cache.
    """

    @staticmethod
    def _maps(proj, bias, i, h0, h1, d, kpad, qbuf, rowmax=None):
        """One block: unnormalised maps E (n, P, Pk) = exp(s - max_j s) (computed as exp2 of log2(e) s), the row
        maxima (n, P, 1) in log2 units and q^T (n, d, P). With ``rowmax`` given (backward), it is reused."""
        n, p = h1 - h0, proj.shape[-1]
        qt = proj[h0:h1, :d, i]  # (n, d, P)
        kp = kpad[:n]
        kp[..., :p].copy_(proj[h0:h1, d : 2 * d, i])
        q = torch.mul(qt.transpose(1, 2), d**-0.5 * _LOG2E, out=qbuf[:n])  # dense (n, P, d), log2(e) / sqrt(d) folded in
        if bias is None:
            e = torch.bmm(q, kp)
            e[..., p:] = float("-inf")  # padding keys
        else:
            e = torch.baddbmm(bias[i].view(1, 1, -1), q, kp)
        if rowmax is None:
            rowmax = e.amax(dim=-1, keepdim=True)
        e.sub_(rowmax).exp2_()
        return e, rowmax, qt

    @staticmethod
    def forward(ctx, proj, w, bias, d: int, block: int, want_u: bool = True):
        gh, ch, b, p = proj.shape
        dv = ch - 2 * d
        pk = -(-p // KEY_PAD) * KEY_PAD
        c = proj.new_empty(gh, b, p)
        u = proj.new_empty((b, gh, p, dv) if want_u else (0,))
        rowmax = proj.new_empty(gh, b, p, 1)
        rowsum = proj.new_empty(gh, b, p, 1)
        n_max = min(gh, block)
        kpad = proj.new_zeros(n_max, d, pk)
        vpad = proj.new_zeros(n_max, dv, pk) if want_u else None
        qbuf = proj.new_empty(n_max, p, d)
        for i, h0, h1 in _blocks(b, gh, block):
            n = h1 - h0
            e, rowmax[h0:h1, i], _ = _HeadFusionPoints._maps(proj, bias, i, h0, h1, d, kpad, qbuf)
            r = rowsum[h0:h1, i] = e.sum(dim=-1, keepdim=True)
            inv = r.reciprocal()
            row = inv if w is None else inv * w[i].view(1, p, 1)
            c[h0:h1, i] = torch.bmm(row.transpose(1, 2), e)[:, 0, :p]  # c_j = sum_i w_i A_ij
            if not want_u:
                continue
            vp = vpad[:n]
            vp[..., :p].copy_(proj[h0:h1, 2 * d :, i])
            if dv == 1:
                u[i, h0:h1] = (e * vp).sum(dim=-1, keepdim=True).mul_(inv)
            else:
                u[i, h0:h1] = torch.bmm(e, vp.transpose(1, 2)).mul_(inv)
        if w is None:
            c.div_(p)
        points = torch.einsum("gbp,gebp->bge", c, proj[:, 2 * d :])
        ctx.d, ctx.block = d, block
        ctx.save_for_backward(proj, w, bias, c, rowmax, rowsum)
        ctx.mark_non_differentiable(u)
        return points, u

    @staticmethod
    def backward(ctx, dpoints, du):
        proj, w, bias, c, rowmax, rowsum = ctx.saved_tensors
        d, block = ctx.d, ctx.block
        gh, ch, b, p = proj.shape
        pk = -(-p // KEY_PAD) * KEY_PAD
        scale = d**-0.5
        dp = dpoints.permute(1, 2, 0)  # (GH, dv, B)
        grad = torch.empty_like(proj)
        grad[:, 2 * d :] = c.unsqueeze(1) * dp.unsqueeze(-1)  # dv_j = c_j dpoint
        z = (proj[:, 2 * d :] * dp.unsqueeze(-1)).sum(dim=1)  # (GH, B, P): z_j = v_j . dpoint
        n_max = min(gh, block)
        kpad = proj.new_zeros(n_max, d, pk)
        zpad = proj.new_zeros(n_max, 1, pk)
        qbuf = proj.new_empty(n_max, p, d)
        for i, h0, h1 in _blocks(b, gh, block):
            n = h1 - h0
            e, _, qt = _HeadFusionPoints._maps(proj, bias, i, h0, h1, d, kpad, qbuf, rowmax[h0:h1, i])
            r = rowsum[h0:h1, i]
            zp = zpad[:n]
            zp[:, 0, :p] = z[h0:h1, i]
            t = e * zp  # E_ij z_j
            y = t.sum(dim=-1, keepdim=True).div_(r)  # (A z)_i
            t.addcmul_(e, y, value=-1.0)  # E_ij (z_j - (A z)_i) = r_i dS_ij / w_i
            row = (scale / p) / r if w is None else (scale * w[i].view(1, p, 1)) / r  # (n, P, 1)
            rowt = row.transpose(1, 2)  # (n, 1, P)
            grad[h0:h1, :d, i] = torch.bmm(kpad[:n], t.transpose(1, 2)).mul_(rowt)  # dq^T (n, d, P)
            grad[h0:h1, d : 2 * d, i] = torch.bmm(qt * rowt, t)[..., :p]  # dk^T (n, d, P)
        return grad, None, None, None, None, None


def _head_fusion_dense(proj: torch.Tensor, w: torch.Tensor | None, key_mask: torch.Tensor | None, d: int,
                       want_u: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`_HeadFusionPoints`' function in plain batched ops (autograd keeps the (B, GH, P, P) maps), computed in
    float32 also under autocast: ``points`` (B, GH, dv) and ``u`` (B, GH, P, dv) (empty unless ``want_u``)."""
    with torch.autocast(device_type=proj.device.type, enabled=False):
        t = proj.float().permute(2, 0, 3, 1)  # (B, GH, P, 2d + dv)
        q, k, v = t[..., :d], t[..., d : 2 * d], t[..., 2 * d :]
        s = torch.matmul(q * d**-0.5, k.transpose(-1, -2))  # (B, GH, P, P)
        if key_mask is not None:
            s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        a = torch.softmax(s, dim=-1)
        if w is None:
            c = a.mean(dim=2, keepdim=True)  # (B, GH, 1, P): c_j = sum_i w_i A_ij
        else:
            c = torch.matmul(w.float()[:, None, None, :], a)
        points = torch.matmul(c, v).squeeze(2)  # (B, GH, dv)
        u = torch.matmul(a, v).detach() if want_u else proj.new_empty((0,))
    return points, u


def _eq1_impl(proj: torch.Tensor, head_dim: int) -> str:
    """The implementation ``EQ1_IMPL`` resolves to for ``proj`` and ``head_dim``: "native", "blocked" or "dense"."""
    if EQ1_IMPL not in EQ1_IMPLS:
        raise ValueError(f"EQ1_IMPL must be one of {EQ1_IMPLS}, not {EQ1_IMPL!r}")
    if EQ1_IMPL == "native" and not _eq1_native.usable(proj, head_dim):
        why = _eq1_native.unavailable_reason() or (f"needs float32 on the CPU and head_dim <= "
                                                   f"{_eq1_native.MAX_HEAD_DIM}, got {proj.dtype} on {proj.device}, "
                                                   f"head_dim {head_dim}")
        raise RuntimeError(f"EQ1_IMPL='native' is unavailable: {why}; use 'auto' or 'blocked'")
    if EQ1_IMPL != "auto":
        return EQ1_IMPL
    if proj.is_cuda:
        return "dense"
    return "native" if _eq1_native.usable(proj, head_dim) else "blocked"


class _CodeAttentionPoints(torch.autograd.Function):
    """The code variant's attention and GAP in one op: proj (3, B, P, n_head, n_size) (q, k, v, each contiguous),
    gap (B, P) weights or None (1 / P) -> points (B, n_size) = sum_p gap_p mean_h relu(softmax_c(q * k) * v), and the
    softmax weights (B, P, n_head, n_size) (not differentiable). The backward writes dq, dk, dv straight into one
    contiguous gradient buffer laid out like proj (autograd through ``unbind`` would stack three copies)."""

    @staticmethod
    def forward(ctx, proj, gap):
        q, k, v = proj.unbind(dim=0)
        wts = torch.softmax(q * k, dim=-1)  # the code's F.softmax(Q * K) on (B, C, H, W): over channels
        r = (wts * v).clamp_(min=0)  # code: heads concatenated along H, ReLU, GAP == mean over heads and positions
        n_head = proj.shape[3]
        if gap is None:
            points = r.mean(dim=(1, 2))
        else:
            points = torch.einsum("bpnc,bp->bc", r, gap) / n_head
        ctx.save_for_backward(proj, gap, wts, r)
        ctx.mark_non_differentiable(wts)
        return points, wts

    @staticmethod
    def backward(ctx, dpoints, dwts):
        proj, gap, wts, r = ctx.saved_tensors
        _, b, p, n_head, _ = proj.shape
        q, k, v = proj.unbind(dim=0)
        if gap is None:
            dr = (dpoints / (p * n_head)).view(b, 1, 1, -1)
        else:
            dr = (gap / n_head).view(b, p, 1, 1) * dpoints.view(b, 1, 1, -1)
        # ReLU backward, autograd's own rule (gradient where the output is > 0); torch.where is ~50x slower here
        do = torch.ops.aten.threshold_backward(dr.expand_as(r), r, 0)
        grad = torch.empty_like(proj)
        torch.mul(do, wts, out=grad[2])  # dv
        ds = torch._softmax_backward_data(do.mul_(v), wts, -1, wts.dtype)  # dw = do * v, then softmax backward
        torch.mul(ds, k, out=grad[0])  # dq
        torch.mul(ds, q, out=grad[1])  # dk
        return grad, None


class HeadFusionACNN(nn.Module):
    """ACNN with head fusion (or the baseline attentions). ``forward(x (B, F, T), lengths=None) -> (logits, aux)``."""

    def __init__(self, config: HeadFusionConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or HeadFusionConfig()
        self.conv1a = _conv_bn(1, FIRST_CHANNELS, (10, 2), (4, 0))
        self.conv1b = _conv_bn(1, FIRST_CHANNELS, (2, 8), (0, 3))
        layers: list[nn.Module] = []
        c_in = 2 * FIRST_CHANNELS
        for i, c_out in enumerate(middle_channels(cfg.n_middle_convs)):
            layers.append(_conv_bn(c_in, c_out, (3, 3), (1, 1)))
            if i < N_POOLED_LAYERS:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.middle = nn.Sequential(*layers)
        c, d = cfg.channels, cfg.head_dim
        self.qkv: nn.Conv2d | None = None
        self.out_proj: nn.Conv2d | None = None
        if cfg.attention == "head_fusion":
            self.qkv = nn.Conv2d(c, cfg.n_size * cfg.n_head * (2 * d + cfg.value_dim), 1)
            n_points = cfg.n_size * cfg.value_dim
        elif cfg.attention == "head_fusion_code":
            self.qkv = nn.Conv2d(c, 3 * cfg.n_head * cfg.n_size, 1)
            n_points = cfg.n_size
        elif cfg.attention == "self_attention":
            self.qkv = nn.Conv2d(c, 3 * cfg.n_head * d, 1)
            self.out_proj = nn.Conv2d(cfg.n_head * d, c, 1)
            n_points = c
        else:
            n_points = c
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(n_points, cfg.n_classes)
        self.to(memory_format=torch.channels_last)  # conv weights in oneDNN's native layout (see ``features``)

    # ----------------------------------------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Conv stack: x (B, F, T) -> (B, C, H, W), in channels-last memory format.

        Same maths as conv -> BatchNorm -> ReLU [-> max-pool 2] per layer, computed in a cheaper order and layout:
        channels-last activations (oneDNN's native layout: no reorders per call, vectorised BatchNorm and pooling),
        max-pool before ReLU (the two commute, values and gradients alike, and ReLU then touches a quarter of the
        map), and in eval mode each BatchNorm folded into its conv's weights and bias (one op instead of two).
        """
        assert x.dim() == 3 and x.shape[1] == self.config.n_features, (
            f"expected (B, {self.config.n_features}, T), got {tuple(x.shape)}"
        )
        x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
        h = _parallel_conv_bn_relu(self.conv1a, self.conv1b, x)
        if h is None:  # kernels that cannot share one conv: the two branches, concatenated
            xa, xb = _conv_bn_relu(self.conv1a, x), _conv_bn_relu(self.conv1b, x)
            if xa.shape[-2:] != xb.shape[-2:]:  # not reached with the paper's paddings; guard for edited kernels
                hh, ww = min(xa.shape[-2], xb.shape[-2]), min(xa.shape[-1], xb.shape[-1])
                xa, xb = xa[..., :hh, :ww], xb[..., :hh, :ww]
            h = torch.cat((xa, xb), dim=1)
        layers = list(self.middle)
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.MaxPool2d):
                continue
            pool = i + 1 < len(layers) and isinstance(layers[i + 1], nn.MaxPool2d)
            h = _conv_bn_relu(layer, h, pool=pool)
        return h

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        return_attention: bool = False,
        return_maps: bool | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x (B, F, T) MFCC; lengths (B,) valid frames or None. Returns logits (B, n_classes) and aux.

        With ``lengths`` the attention ignores keys, and GAP ignores points, whose column lies beyond
        ``(length - 1) // 4`` (the valid width after the two pools); the convs near the edge still see padding, so a
        padded input is close to, not equal to, the unpadded one. Fixed 2-s segments need no lengths.

        ``return_maps``: compute the plot-only aux entries (``head_maps``, ``fused_map``, ``fused_output``); None (the
        default) means "when not training", so a training step never pays for them; :class:`serlib.train.Trainer`
        passes ``return_maps=False`` for plain predictions. ``return_attention=True`` implies ``return_maps``.

        aux (all tensors detached):

        * ``points`` (B, n_points): the pooled feature points fed to the classifier (always);
        * ``head_maps`` (B, n_head, H, W) and ``fused_map`` (B, H, W) for plots. Head fusion and self-attention: the
          attention each feature point receives, averaged over queries, per head of group 0, and its head mean (Eq. 2);
          head_fusion_code: the channel-softmax weights of channel 0 per head, and their mean;
        * ``fused_output`` (B, n_size, value_dim, H, W) (head fusion only): the fused map of each group, Eq. 2 applied
          to the Eq. 1 outputs, before GAP;
        * ``attention`` (B, G, n_head, P, P), P = H * W, only with ``return_attention=True``: softmax over keys (last
          axis); G = n_size for head fusion, 1 for self-attention. For head_fusion_code (B, n_head, n_size, H, W).
        """
        cfg = self.config
        maps = bool(return_attention or (not self.training if return_maps is None else return_maps))
        feat = self.features(x)
        b, c, h, w = feat.shape
        key_mask = None  # (B, P) True where the feature point comes from valid frames
        if lengths is not None:
            assert lengths.shape == (b,), f"lengths must be (B,)={b}, got {tuple(lengths.shape)}"
            n_pools = min(N_POOLED_LAYERS, cfg.n_middle_convs)
            valid_w = _valid_widths(lengths.to(feat.device), n_pools, w)
            col_ok = torch.arange(w, device=feat.device)[None, :] < valid_w[:, None]  # (B, W)
            key_mask = col_ok[:, None, :].expand(b, h, w).reshape(b, h * w)

        aux: dict[str, torch.Tensor] = {}
        if cfg.attention == "head_fusion":
            points = self._head_fusion(feat, key_mask, aux, maps, return_attention)
        elif cfg.attention == "head_fusion_code":
            points = self._head_fusion_code(feat, key_mask, aux, maps, return_attention)
        elif cfg.attention == "self_attention":
            points = self._self_attention(feat, key_mask, aux, maps, return_attention)
        else:
            points = self._gap(_points_last(feat).transpose(1, 2), key_mask)  # (B, C)
        aux["points"] = aux["embedding"] = points  # the utterance (segment) representation, as every model
        logits = self.fc(self.dropout(points))
        assert logits.shape == (b, cfg.n_classes)
        aux["points"] = points
        return logits, {k: v.detach() for k, v in aux.items()}  # aux is for plots: never keeps the graph alive

    # ----------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _gap(t: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Mean over the last (P) axis, over valid points only when masked: (B, ..., P) -> (B, ...)."""
        if key_mask is None:
            return t.mean(dim=-1)
        m = key_mask.to(t.dtype).view((t.shape[0],) + (1,) * (t.dim() - 2) + (t.shape[-1],))
        return (t * m).sum(dim=-1) / m.sum(dim=-1)

    @staticmethod
    def _sdpa(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_q)) v over keys; q, k (B, N, P, d), v (B, N, P, dv) -> (B, N, P, dv)."""
        dv, d = v.shape[-1], q.shape[-1]
        mask = None if key_mask is None else key_mask[:, None, None, :]
        # equal widths let torch use its fused, memory-light CPU kernel
        vp = F.pad(v, (0, d - dv)).contiguous() if dv < d else v
        return F.scaled_dot_product_attention(q, k, vp, attn_mask=mask, scale=d**-0.5)[..., :dv]

    @staticmethod
    def _attention_matrix(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Explicit Eq. 1 weights: q, k (..., P, d) -> (..., P, P), rows sum to 1 over valid keys."""
        scores = torch.einsum("...pd,...qd->...pq", q * q.shape[-1] ** -0.5, k)
        if key_mask is not None:
            shape = (key_mask.shape[0],) + (1,) * (scores.dim() - 2) + (key_mask.shape[1],)
            scores = scores.masked_fill(~key_mask.view(shape), float("-inf"))
        return scores.softmax(dim=-1)

    def _pointwise(self, feat: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """A 1x1 conv as one GEMM on the channels-last map: (B, C, H, W) -> (B, P, C_out)."""
        return F.linear(_points_last(feat), conv.weight.view(conv.out_channels, -1), conv.bias)

    def _projections(self, feat: torch.Tensor) -> torch.Tensor:
        """Head-fusion 1x1-conv projections as one GEMM: (B, C, H, W) -> (GH, 2d + dv, B, P), GH = n_size * n_head,
        in the channel order of ``qkv`` (group, head, [q | k | v])."""
        cfg = self.config
        assert self.qkv is not None and cfg.attention == "head_fusion"
        b, c, h, w = feat.shape
        x = _points_last(feat).reshape(b * h * w, c)  # a view for channels-last maps
        y = torch.addmm(self.qkv.bias.unsqueeze(1), self.qkv.weight.view(self.qkv.out_channels, c), x.t())
        return y.view(cfg.n_size * cfg.n_head, 2 * cfg.head_dim + cfg.value_dim, b, h * w)

    def _projection_chunks(self, feat: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`_projections` as GEMMs over consecutive ranges of whole heads, each output at most
        ``PROJ_CHUNK_BYTES``: [(GH_k, 2d + dv, B, P)], concatenated along heads they are ``_projections(feat)``.

        Same values, cheaper memory: glibc serves allocations above 32 MiB by fresh mmaps, so a 50 MB projection
        (batch 32) and its 50 MB gradient would be page-faulted in anew on every step; chunks stay in the heap."""
        cfg = self.config
        assert self.qkv is not None and cfg.attention == "head_fusion"
        b, c, h, w = feat.shape
        gh, ch = cfg.n_size * cfg.n_head, 2 * cfg.head_dim + cfg.value_dim
        x = _points_last(feat).reshape(b * h * w, c).t()  # a view for channels-last maps
        weight, bias = self.qkv.weight.view(gh, ch, c), self.qkv.bias.view(gh, ch)
        n = min(gh, max(1, math.ceil(gh * ch * b * h * w * feat.element_size() / PROJ_CHUNK_BYTES)))
        bounds = [gh * i // n for i in range(n + 1)]
        return [torch.addmm(bias[h0:h1].reshape(-1, 1), weight[h0:h1].reshape(-1, c), x).view(h1 - h0, ch, b, h * w)
                for h0, h1 in zip(bounds[:-1], bounds[1:])]

    def _projected_points(self, feat: torch.Tensor, weights: torch.Tensor | None,
                          bias: torch.Tensor | None) -> torch.Tensor:
        """Eq. 1 + GAP with the projection inside the C kernel (:class:`_eq1_native.NativeProjectedPoints`):
        (B, GH, 1), over head ranges whose Jacobian is at most ``PROJ_CHUNK_BYTES`` (see :meth:`_projection_chunks`)."""
        cfg = self.config
        b, c, h, w = feat.shape
        gh, ch = cfg.n_size * cfg.n_head, 2 * cfg.head_dim + cfg.value_dim
        x = _points_last(feat).reshape(b * h * w, c)  # a view for channels-last maps
        weight, bias_proj = self.qkv.weight.view(gh, ch, c), self.qkv.bias.view(gh, ch)
        xp = _eq1_native.padded_channel_major(x, b)
        jacobian = torch.is_grad_enabled() and (x.requires_grad or self.qkv.weight.requires_grad
                                                or self.qkv.bias.requires_grad)
        n = 1  # without a gradient nothing of the projection's size is written: all heads in one call
        if jacobian:
            n = min(gh, max(1, math.ceil(gh * ch * b * h * w * feat.element_size() / PROJ_CHUNK_BYTES)))
        bounds = [gh * i // n for i in range(n + 1)]
        return torch.cat([_eq1_native.NativeProjectedPoints.apply(
            x, weight[h0:h1].reshape(-1, c), bias_proj[h0:h1].reshape(-1), weights, bias, b, cfg.head_dim, xp, jacobian)
            for h0, h1 in zip(bounds[:-1], bounds[1:])], dim=1)

    def split_qkv(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head-fusion projections of feat (B, C, H, W): q, k (B, n_size, n_head, P, d), v (B, n_size, n_head, P, dv)."""
        return self._split(self._projections(feat))

    def _split(self, proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(GH', 2d + dv, B, P) -> q, k, v (B, GH' / n_head, n_head, P, .)."""
        cfg = self.config
        gh, ch, b, p = proj.shape
        d = cfg.head_dim
        t = proj.permute(2, 0, 3, 1).reshape(b, gh // cfg.n_head, cfg.n_head, p, ch)
        return t[..., :d], t[..., d : 2 * d], t[..., 2 * d :]

    def _head_fusion(self, feat, key_mask, aux, maps, return_attention) -> torch.Tensor:
        cfg = self.config
        b, _, h, w = feat.shape
        g, nh, p, dv = cfg.n_size, cfg.n_head, h * w, cfg.value_dim
        weights = bias = None
        if key_mask is not None:
            bias = feat.new_full((b, -(-p // KEY_PAD) * KEY_PAD), float("-inf"))
            bias[:, :p].masked_fill_(key_mask, 0.0)
            m = key_mask.to(feat.dtype)
            weights = m / m.sum(dim=-1, keepdim=True)  # GAP over valid queries
        impl, proj = _eq1_impl(feat, cfg.head_dim), None
        if (impl == "native" and FUSED_PROJECTION and not maps and dv == 1 and feat.dtype == torch.float32
                and (_eq1_native.JACOBIAN_IN_FORWARD or not torch.is_grad_enabled())
                and not torch.is_autocast_enabled("cpu")):
            pts = self._projected_points(feat, weights, bias)
            return pts.reshape(b, g, nh).mean(dim=2)  # Eq. 2 + GAP -> n_size points
        if impl == "native":
            chunks = self._projection_chunks(feat)
            if chunks[0].dtype == torch.float32:  # (not under a lower-precision autocast)
                res = [_eq1_native.NativePoints.apply(pc, weights, bias, cfg.head_dim, maps) for pc in chunks]
                pts = torch.cat([r[0] for r in res], dim=1)
                u = torch.cat([r[1] for r in res], dim=1) if maps else None
                if maps:
                    proj = torch.cat(chunks).detach()
            else:
                impl, proj = "blocked", torch.cat(chunks)
        if impl != "native":
            proj = self._projections(feat) if proj is None else proj  # (n_size * n_head, 2d + dv, B, P)
            if impl == "dense":
                pts, u = _head_fusion_dense(proj, weights, key_mask, cfg.head_dim, maps)
                pts = pts.to(proj.dtype)
            else:
                pts, u = _HeadFusionPoints.apply(proj, weights, bias, cfg.head_dim, BLOCK_HEADS, maps)
        points = pts.reshape(b, g, nh, dv).mean(dim=2).reshape(b, g * dv)  # Eq. 2 + GAP -> n_size points
        if not maps:
            return points
        fused = u.reshape(b, g, nh, p, dv).mean(dim=2)  # Eq. 2: (B, n_size, P, dv)
        aux["fused_output"] = fused.transpose(-1, -2).reshape(b, g, dv, h, w)
        with torch.no_grad():  # plotting maps: group 0 only, cheap (n_head P x P maps)
            q, k, _ = self._split(proj.detach()[:nh])  # group 0: (B, 1, n_head, P, d)
            a0 = self._attention_matrix(q[:, 0], k[:, 0], key_mask)  # (B, n_head, P, P)
            aux["head_maps"] = _received(a0, key_mask).view(b, nh, h, w)
            aux["fused_map"] = aux["head_maps"].mean(dim=1)
            if return_attention:
                q, k, _ = self._split(proj.detach())
                aux["attention"] = self._attention_matrix(q, k, key_mask)  # (B, n_size, n_head, P, P)
        return points

    def _head_fusion_code(self, feat, key_mask, aux, maps, return_attention) -> torch.Tensor:
        """The code's attention on the channels-last map: one GEMM for every head's Q, K, V (channel order
        (head, [q | k | v], n_size) as in ``qkv``), the channel softmax over the contiguous last axis."""
        cfg = self.config
        b, _, h, w = feat.shape
        p = h * w
        nh, ns, c = cfg.n_head, cfg.n_size, feat.shape[1]
        x = _points_last(feat).reshape(b * p, c)  # a view of the channels-last map
        gap = None  # (B, P) GAP weights of the valid points (rows sum to 1), None for 1 / P
        if key_mask is not None:
            m = key_mask.to(feat.dtype)
            gap = m / m.sum(dim=-1, keepdim=True)
        want = maps or return_attention
        if _eq1_impl(feat, 1) == "native" and ns <= _eq1_native.MAX_CODE_SIZE:
            # the fused C kernel on one (B * P, 3 * head * n_size) GEMM output, columns [q | k | v] each (head, n_size)
            # (the kernel adds the bias as it reads y: addmm would copy it into y first, one more pass over y)
            wt = self.qkv.weight.view(nh, 3, ns, c).transpose(0, 1).reshape(3 * nh * ns, c)
            y = torch.mm(x, wt.t())
            if y.dtype == torch.float32:  # (not under a lower-precision autocast)
                bias = self.qkv.bias.view(nh, 3, ns).transpose(0, 1).reshape(-1)
                points, weights = _eq1_native.NativeCodePoints.apply(y, bias, gap, b, p, nh, want)
                if want:
                    self._code_maps(weights, aux, return_attention, h, w)
                return points
        # the qkv channels (head, [q | k | v], n_size) regrouped as (3, head * n_size): one batched GEMM whose three
        # outputs are contiguous (B * P, head * n_size) blocks (element-wise ops on interleaved views are ~10x slower)
        wt = self.qkv.weight.view(nh, 3, ns, c).transpose(0, 1).reshape(3, nh * ns, c)
        bias = self.qkv.bias.view(nh, 3, ns).transpose(0, 1).reshape(3, 1, nh * ns)
        proj = torch.baddbmm(bias, x.expand(3, b * p, c), wt.transpose(1, 2)).view(3, b, p, nh, ns)
        points, weights = _CodeAttentionPoints.apply(proj, None if gap is None else gap.to(proj.dtype))
        if want:
            self._code_maps(weights, aux, return_attention, h, w)
        return points

    def _code_maps(self, weights: torch.Tensor, aux: dict, return_attention: bool, h: int, w: int) -> None:
        """The code variant's plot entries from its channel-softmax weights (B, P, n_head, n_size)."""
        cfg = self.config
        wmap = weights.detach().permute(0, 2, 3, 1).reshape(weights.shape[0], cfg.n_head, cfg.n_size, h, w)
        aux["head_maps"] = wmap[:, :, 0]
        aux["fused_map"] = aux["head_maps"].mean(dim=1)
        if return_attention:
            aux["attention"] = wmap

    def _self_attention(self, feat, key_mask, aux, maps, return_attention) -> torch.Tensor:
        cfg = self.config
        b, _, h, w = feat.shape
        nh, d, p = cfg.n_head, cfg.head_dim, h * w
        qkv = self._pointwise(feat, self.qkv).view(b, p, 3, nh, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)  # (B, n_head, P, d)
        out = self._sdpa(q.contiguous(), k.contiguous(), v.contiguous(), key_mask)  # (B, n_head, P, d)
        assert self.out_proj is not None
        out = F.linear(out.transpose(1, 2).reshape(b, p, nh * d),
                       self.out_proj.weight.view(self.out_proj.out_channels, -1), self.out_proj.bias)  # (B, P, C)
        if maps or return_attention:
            with torch.no_grad():
                a = self._attention_matrix(q, k, key_mask)  # n_head P x P maps: cheap
                aux["head_maps"] = _received(a, key_mask).view(b, nh, h, w)
                aux["fused_map"] = aux["head_maps"].mean(dim=1)
            if return_attention:
                aux["attention"] = a.unsqueeze(1)
        return self._gap(out.transpose(1, 2), key_mask)


def _points_last(feat: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, P, C), P = H * W: a view when ``feat`` is channels-last, a copy otherwise."""
    b, c, h, w = feat.shape
    return feat.permute(0, 2, 3, 1).reshape(b, h * w, c)


# found by serlib.models.registry: model name -> (model class, its config dataclass)
SERLIB_MODELS = {"head_fusion": (HeadFusionACNN, HeadFusionConfig)}
