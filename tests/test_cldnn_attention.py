import math

import pytest
import torch

from serlib.models.cldnn_attention import (
    CLDNNAttention,
    CLDNNAttentionConfig,
    MultiHeadSelfAttention,
    focal_bias,
)

N_FEAT, N_CLASSES = 6, 3


def small_config(attention: str = "faca", **kw) -> CLDNNAttentionConfig:
    base = dict(
        n_classes=N_CLASSES,
        n_features=N_FEAT,
        conv_channels=8,
        lstm_hidden=8,
        lstm_layers=2,
        n_heads=4,
        fc_hidden=8,
        dropout=0.0,
        attention=attention,
    )
    base.update(kw)
    return CLDNNAttentionConfig(**base)


def batch(T=40, lengths=(40, 29, 13), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), N_FEAT, T, generator=g)
    lengths = torch.tensor(lengths)
    x = x * (torch.arange(T)[None, None, :] < lengths[:, None, None])  # zero padding
    return x, lengths


def test_config_defaults_follow_paper():
    c = CLDNNAttentionConfig(n_classes=4, n_features=40)
    assert (c.conv_channels, c.kernel, c.lstm_hidden, c.lstm_layers, c.n_heads) == (64, 3, 256, 2, 8)
    assert c.d_model == 512 and c.attention == "faca" and c.focus_m == "length"
    with pytest.raises(ValueError):
        CLDNNAttentionConfig(attention="nope")


def test_focal_bias_equals_eq7_by_hand():
    mu = torch.tensor([[1.0, 2.5]])
    sigma = torch.tensor([[2.0, 1.0]])
    f = focal_bias(mu, sigma, torch.arange(3))
    # f_ij = -(P_j - mu_i)^2 / (sigma_i^2 / 2), P = 0, 1, 2
    expected = torch.tensor([[[-0.5, 0.0, -0.5], [-12.5, -4.5, -0.5]]])
    torch.testing.assert_close(f, expected)
    assert torch.isfinite(focal_bias(mu, torch.zeros_like(sigma), torch.arange(3))).all()


def _reference_fa_attention(mhsa: MultiHeadSelfAttention, x: torch.Tensor, m: float) -> torch.Tensor:
    """Eqs. 3-8 written out with loops for one unpadded sequence x (T, d): returns (H, T, T)."""
    T, d = x.shape
    H, dh = mhsa.n_heads, mhsa.d_head
    Q = x @ mhsa.W_q.weight.T + mhsa.W_q.bias
    K = x @ mhsa.W_k.weight.T + mhsa.W_k.bias
    G = Q.mean(0)
    fa = mhsa.focus
    out = torch.zeros(H, T, T)
    for h in range(H):
        sl = slice(h * dh, (h + 1) * dh)
        for i in range(T):
            c = torch.tanh(fa.W_p.weight @ Q[i] + fa.W_p.bias + fa.W_g.weight @ G)[sl]
            mu = m * torch.sigmoid(fa.U_c[h] @ c)
            sigma = m * torch.sigmoid(fa.U_d[h] @ c)
            row = torch.zeros(T)
            for j in range(T):
                f = -((j - mu) ** 2) / (sigma**2 / 2)
                row[j] = Q[i, sl] @ K[j, sl] / math.sqrt(dh) + f
            out[h, i] = torch.softmax(row, 0)
    return out


def test_fa_attention_map_matches_equations_on_hand_sized_input():
    torch.manual_seed(1)
    mhsa = MultiHeadSelfAttention(8, 2, variant="fa")
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        _, aux = mhsa(x, torch.tensor([5]))
        ref = _reference_fa_attention(mhsa, x[0], m=5.0)
    torch.testing.assert_close(aux["attn"][0], ref, atol=1e-5, rtol=1e-4)


def test_mu_sigma_in_zero_m_per_head_and_query():
    torch.manual_seed(0)
    model = CLDNNAttention(small_config("fa")).eval()
    x, lengths = batch()
    _, aux = model(x, lengths)
    L = aux["lengths"]
    torch.testing.assert_close(L, torch.tensor([10, 7, 3]))  # two max-pools of 2: floor(floor(L/2)/2)
    B, H, T2 = 3, 4, 10
    for key in ("mu", "sigma"):
        v = aux[key]
        assert v.shape == (B, H, T2)
        assert (v >= 0).all() and (v <= L[:, None, None].float()).all()
    # a fixed m bounds them by m instead
    model_m = CLDNNAttention(small_config("fa", focus_m=2.5)).eval()
    _, aux_m = model_m(x, lengths)
    assert (aux_m["mu"] <= 2.5).all() and (aux_m["sigma"] <= 2.5).all()
    assert aux_m["mu"].max() > 0.5


def test_calibration_scores_in_unit_interval_one_per_head_and_scale_maps():
    torch.manual_seed(0)
    model = CLDNNAttention(small_config("faca")).eval()
    x, lengths = batch()
    _, aux = model(x, lengths)
    s = aux["calibration"]
    assert s.shape == (3, 4)
    assert ((s > 0) & (s < 1)).all()
    torch.testing.assert_close(aux["attn_calibrated"], s[:, :, None, None] * aux["attn"])


@pytest.mark.parametrize("variant", ["fa", "faca"])
def test_every_focus_and_calibration_parameter_gets_gradient(variant):
    torch.manual_seed(0)
    model = CLDNNAttention(small_config(variant))
    x, lengths = batch()
    logits, _ = model(x, lengths)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    modules = [model.attention.focus] + ([model.attention.calibration] if variant == "faca" else [])
    names = []
    for mod in modules:
        for name, p in mod.named_parameters():
            names.append(name)
            assert p.requires_grad and p.grad is not None, name
            assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"
    assert {"W_p.weight", "W_g.weight", "U_c", "U_d"} <= set(names)
    # and they are registered with the model (so an optimiser over model.parameters() trains them)
    all_params = {id(p) for p in model.parameters()}
    assert all(id(p) in all_params for mod in modules for p in mod.parameters())


@pytest.mark.parametrize("variant", ["bmhsa", "fa", "faca"])
def test_variants_run_with_expected_shapes_and_aux(variant):
    torch.manual_seed(0)
    model = CLDNNAttention(small_config(variant))
    x, lengths = batch()
    logits, aux = model(x, lengths)
    assert logits.shape == (3, N_CLASSES) and torch.isfinite(logits).all()
    assert aux["attn"].shape == (3, 4, 10, 10)
    assert ("mu" in aux) == (variant != "bmhsa")
    assert ("calibration" in aux) == (variant == "faca")
    logits_none, _ = model.eval()(x[:1])  # lengths=None: full length
    assert logits_none.shape == (1, N_CLASSES)


@pytest.mark.parametrize("variant", ["bmhsa", "fa", "faca"])
def test_padding_does_not_change_logits_in_eval_mode(variant):
    # eval mode: BatchNorm uses running stats; in training mode its batch statistics see padded zeros.
    torch.manual_seed(0)
    model = CLDNNAttention(small_config(variant))
    x, lengths = batch()
    model.train()
    model(x, lengths)  # move BN running statistics away from their init
    model.eval()
    with torch.no_grad():
        logits, aux = model(x, lengths)
        x_pad = torch.cat([x, torch.zeros(3, N_FEAT, 17)], dim=-1)
        logits_pad, aux_pad = model(x_pad, lengths)
        torch.testing.assert_close(logits_pad, logits, atol=1e-5, rtol=0)
        # each sequence alone, cut to its length, gives the same logits as inside the padded batch
        for b, L in enumerate(lengths.tolist()):
            alone, _ = model(x[b : b + 1, :, :L], torch.tensor([L]))
            torch.testing.assert_close(alone[0], logits[b], atol=1e-5, rtol=0)
        if variant != "bmhsa":
            L2 = aux["lengths"]
            for b in range(3):
                n = int(L2[b])
                torch.testing.assert_close(aux_pad["mu"][b, :, :n], aux["mu"][b, :, :n], atol=1e-5, rtol=0)


def test_masked_positions_get_zero_attention():
    torch.manual_seed(0)
    model = CLDNNAttention(small_config("faca")).eval()
    x, lengths = batch()
    with torch.no_grad():
        _, aux = model(x, lengths)
    for key in ("attn", "attn_calibrated"):
        attn = aux[key]
        for b, n in enumerate(aux["lengths"].tolist()):
            assert (attn[b, :, :, n:] == 0).all(), "attention on padded keys"
            assert (attn[b, :, n:, :] == 0).all(), "padded queries attend"
    rows = aux["attn"][1, :, :7].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))


def test_too_short_sequence_raises():
    model = CLDNNAttention(small_config("bmhsa")).eval()
    with pytest.raises(ValueError, match="too short"):
        model(torch.randn(1, N_FEAT, 3))
