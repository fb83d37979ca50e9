"""Head Fusion ACNN: shapes, Eq. 1-2 against explicit per-head loops, parameter counts, gradients, a tiny fit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from serlib.models.head_fusion import (
    ATTENTION_KINDS,
    HeadFusionACNN,
    HeadFusionConfig,
    conv_output_shape,
    count_parameters,
    middle_channels,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**kw) -> HeadFusionACNN:
    torch.manual_seed(0)
    return HeadFusionACNN(HeadFusionConfig(**kw))


def _conv_stack_params(n_middle_convs: int) -> int:
    """Independent count: conv weights + biases + BatchNorm affine, from the paper's Table 2 layout."""
    total = (8 * 10 * 2 + 8 + 2 * 8) + (8 * 2 * 8 + 8 + 2 * 8)  # conv1a (10x2), conv1b (2x8), 1 -> 8, + BN
    chans = [16, 32, 48, 64, 80] + [80] * max(0, n_middle_convs - 4)
    for c_in, c_out in zip(chans[:n_middle_convs], chans[1 : n_middle_convs + 1]):
        total += c_out * c_in * 9 + c_out + 2 * c_out
    return total


# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_frames, hw", [(63, (6, 15)), (40, (6, 9))])
@pytest.mark.parametrize("n_head, n_size", [(1, 4), (4, 8), (3, 5)])
def test_output_shapes(n_frames, hw, n_head, n_size):
    m = _model(n_head=n_head, n_size=n_size, n_classes=5)
    x = torch.randn(2, 26, n_frames)
    logits, aux = m(x, return_attention=True)
    h, w = hw
    assert conv_output_shape(26, n_frames) == hw
    assert m.features(x).shape == (2, 80, h, w)
    assert logits.shape == (2, 5)
    assert aux["points"].shape == (2, n_size)
    assert aux["head_maps"].shape == (2, n_head, h, w)
    assert aux["fused_map"].shape == (2, h, w)
    assert aux["fused_output"].shape == (2, n_size, 1, h, w)
    assert aux["attention"].shape == (2, n_size, n_head, h * w, h * w)


def test_parallel_first_convs_agree_on_size():
    """Both branches give (F - 1, T - 1) for any input, so concatenation needs no crop."""
    m = _model()
    for f, t in [(26, 63), (26, 40), (13, 17), (40, 101)]:
        x = torch.randn(1, 1, f, t)
        assert m.conv1a(x).shape[-2:] == m.conv1b(x).shape[-2:] == (f - 1, t - 1)


def test_fusion_equals_mean_of_explicit_heads():
    """Eq. 1 per head with Python loops over groups and heads, Eq. 2 mean, GAP: equals the vectorised forward."""
    m = _model(n_head=3, n_size=4, attn_hidden=5).eval()
    x = torch.randn(2, 26, 30)
    with torch.no_grad():
        logits, aux = m(x, return_attention=True)
        feat = m.features(x)  # (B, 80, H, W)
        b, c, h, w = feat.shape
        X = feat.flatten(2).transpose(1, 2)  # (B, P, C)
        d, dv = 5, 1
        weight = m.qkv.weight.view(4, 3, 2 * d + dv, c)
        bias = m.qkv.bias.view(4, 3, 2 * d + dv)
        points = torch.zeros(b, 4)
        for g in range(4):
            outs = []
            for hd in range(3):
                Wq, Wk, Wv = weight[g, hd, :d], weight[g, hd, d : 2 * d], weight[g, hd, 2 * d :]
                bq, bk, bv = bias[g, hd, :d], bias[g, hd, d : 2 * d], bias[g, hd, 2 * d :]
                Q, K, V = X @ Wq.T + bq, X @ Wk.T + bk, X @ Wv.T + bv  # (B, P, d|dv)
                A = torch.softmax(Q @ K.transpose(1, 2) / math.sqrt(d), dim=-1)  # Eq. 1
                torch.testing.assert_close(aux["attention"][:, g, hd], A, atol=1e-5, rtol=1e-4)
                outs.append(A @ V)  # (B, P, 1)
            fused = torch.stack(outs).mean(dim=0)  # Eq. 2
            torch.testing.assert_close(
                aux["fused_output"][:, g, 0].reshape(b, -1), fused[..., 0], atol=1e-5, rtol=1e-4
            )
            points[:, g] = fused[..., 0].mean(dim=1)  # GAP -> one feature point
        torch.testing.assert_close(aux["points"], points, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logits, m.fc(points), atol=1e-5, rtol=1e-4)
        # plotting maps: attention received by each point (mean over queries) for group 0, fused = head mean
        received = aux["attention"][:, 0].mean(dim=-2).view(b, 3, h, w)
        torch.testing.assert_close(aux["head_maps"], received)
        torch.testing.assert_close(aux["fused_map"], received.mean(dim=1))


def test_attention_rows_sum_to_one_and_are_not_uniform():
    m = _model(n_head=2, n_size=3)
    _, aux = m(torch.randn(2, 26, 63), return_attention=True)
    a = aux["attention"]
    torch.testing.assert_close(a.sum(dim=-1), torch.ones(a.shape[:-1]))
    assert (a >= 0).all()
    assert a.std(dim=-1).mean() > 1e-4  # a real distribution over keys, not a constant 1/P


def test_lengths_mask_padding_keys():
    m = _model(n_head=2, n_size=3).eval()
    x = torch.randn(2, 26, 63)
    x[1, :, 40:] = 0.0
    lengths = torch.tensor([63, 40])
    logits, aux = m(x, lengths, return_attention=True)
    w_valid = (40 - 1) // 4  # 9 of 15 columns
    a = aux["attention"].view(2, 3, 2, -1, 6, 15)
    assert torch.all(a[1, ..., w_valid:] == 0)
    assert torch.all(a[0, ..., w_valid:] > 0)
    torch.testing.assert_close(a.sum(dim=(-1, -2)), torch.ones(a.shape[:-2]))
    # sample 0 is unpadded: the same as without lengths
    logits0, _ = m(x[:1])
    torch.testing.assert_close(logits[:1], logits0, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("n_middle_convs", [1, 2, 3, 4, 5])
def test_middle_conv_variants_build_and_run(n_middle_convs):
    m = _model(n_middle_convs=n_middle_convs, n_head=2, n_size=4)
    logits, aux = m(torch.randn(2, 26, 63), return_maps=True)
    assert logits.shape == (2, 8)
    h, w = conv_output_shape(26, 63, n_middle_convs=n_middle_convs)
    assert aux["fused_map"].shape == (2, h, w)
    assert m.features(torch.randn(1, 26, 63)).shape[1] == middle_channels(n_middle_convs)[-1]
    assert middle_channels(n_middle_convs)[: min(4, n_middle_convs)] == (32, 48, 64, 80)[:n_middle_convs]


@pytest.mark.parametrize("attention", ["none", "self_attention", "head_fusion_code"])
def test_baselines_run(attention):
    m = _model(attention=attention, n_head=4, n_size=16)
    logits, aux = m(torch.randn(3, 26, 63), return_attention=True)
    assert logits.shape == (3, 8)
    if attention == "none":
        assert aux["points"].shape == (3, 80)
        return
    assert aux["head_maps"].shape == (3, 4, 6, 15)
    if attention == "self_attention":
        a = aux["attention"]
        assert a.shape == (3, 1, 4, 90, 90)
        torch.testing.assert_close(a.sum(dim=-1), torch.ones(a.shape[:-1]))
    else:  # the code's softmax runs over channels (n_size), not over keys
        wts = aux["attention"]
        assert wts.shape == (3, 4, 16, 6, 15)
        torch.testing.assert_close(wts.sum(dim=2), torch.ones(3, 4, 6, 15))


def test_none_is_gap_linear():
    m = _model(attention="none").eval()
    x = torch.randn(2, 26, 63)
    with torch.no_grad():
        logits, aux = m(x)
        gap = m.features(x).mean(dim=(2, 3))
    torch.testing.assert_close(aux["points"], gap)
    torch.testing.assert_close(logits, m.fc(gap))


def test_head_fusion_code_matches_authors_formula():
    """softmax(Q*K) over channels, * V, ReLU, concat heads along H, GAP -- written the way the code writes it."""
    m = _model(attention="head_fusion_code", n_head=3, n_size=6).eval()
    x = torch.randn(2, 26, 40)
    with torch.no_grad():
        logits, aux = m(x)
        feat = m.features(x)
        proj = m.qkv(feat).reshape(2, 3, 3, 6, *feat.shape[-2:])
        maps = []
        for hd in range(3):
            Q, K, V = proj[:, hd, 0], proj[:, hd, 1], proj[:, hd, 2]
            maps.append(F.softmax(Q * K, dim=1) * V)  # the code's F.softmax without dim picks dim 1 on 4-D
        ref = F.adaptive_avg_pool2d(F.relu(torch.cat(maps, dim=2)), 1).flatten(1)
    torch.testing.assert_close(aux["points"], ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, m.fc(ref), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_middle_convs", [2, 4, 5])
def test_conv_stack_parameter_count(n_middle_convs):
    m = _model(attention="none", n_middle_convs=n_middle_convs)
    c = middle_channels(n_middle_convs)[-1]
    assert count_parameters(m) == _conv_stack_params(n_middle_convs) + (c + 1) * 8
    assert _conv_stack_params(4) == 93_168


# the docstring table of serlib/models/head_fusion.py
PARAM_TABLE = {
    (1, 32): 137_496, (1, 64): 181_816, (1, 128): 270_456,
    (2, 32): 181_560, (2, 64): 269_944, (2, 128): 446_712,
    (4, 32): 269_688, (4, 64): 446_200, (4, 128): 799_224,
    (8, 32): 445_944, (8, 64): 798_712, (8, 128): 1_504_248,
}  # fmt: skip


@pytest.mark.parametrize("n_head, n_size", sorted(PARAM_TABLE))
def test_head_fusion_parameter_table(n_head, n_size):
    d, dv, c, n_classes = 8, 1, 80, 8
    formula = _conv_stack_params(4) + n_size * n_head * (2 * d + dv) * (c + 1) + (n_size * dv + 1) * n_classes
    assert formula == PARAM_TABLE[n_head, n_size]
    with torch.device("meta"):  # no memory, no init cost
        m = HeadFusionACNN(HeadFusionConfig(n_head=n_head, n_size=n_size))
    assert count_parameters(m) == formula


def test_baseline_parameter_counts():
    conv = _conv_stack_params(4)
    assert (
        count_parameters(_model(attention="self_attention", n_head=4))
        == conv + 3 * 80 * 81 + 80 * 81 + 81 * 8
    )
    assert (
        count_parameters(_model(attention="head_fusion_code", n_head=4, n_size=64))
        == conv + 3 * 4 * 64 * 81 + 65 * 8
    )


# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_gradients_reach_every_parameter(attention):
    m = _model(attention=attention, n_head=2, n_size=4)
    logits, _ = m(torch.randn(4, 26, 40))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for p in m.parameters())


def test_trains_on_learnable_toy_task():
    """Class = which MFCC band carries a bump; a few Adam steps must reduce the loss clearly."""
    torch.manual_seed(0)
    n, n_classes = 32, 4
    y = torch.arange(n) % n_classes
    x = 0.3 * torch.randn(n, 26, 40)
    for i in range(n):
        band = int(y[i]) * 6
        x[i, band : band + 5] += 2.0
    m = _model(n_classes=n_classes, n_head=2, n_size=8)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        logits, _ = m(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    m.eval()
    with torch.no_grad():
        assert (m(x)[0].argmax(1) == y).float().mean() > 0.8


def test_config_validation():
    with pytest.raises(ValueError):
        HeadFusionConfig(attention="multi")
    with pytest.raises(ValueError):
        HeadFusionConfig(n_head=0)
    with pytest.raises(ValueError):
        conv_output_shape(26, 4)
    assert HeadFusionConfig().head_dim == 8
    assert HeadFusionConfig(attention="self_attention", n_head=3).head_dim == 27
    with pytest.raises(AssertionError):
        _model()(torch.randn(2, 20, 63))
