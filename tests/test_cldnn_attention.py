import math

import numpy as np
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


# ------------------------------------------------------------------ Eqs. 3-13 in numpy, and mixed precision
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _numpy_attention(mhsa: MultiHeadSelfAttention, x: np.ndarray, length: int) -> dict:
    """The paper's Eqs. 1-13 for one sequence x (T, d) of ``length`` valid steps, in float64 numpy from the module's
    weights, term by term. m of Eqs. 5-6 = ``length``; P_j = j (0-based key positions). Eqs. 3-4 as the module
    implements them: U^T tanh(W_p Q_i + b_p + W_g G), one bias b_p beyond the paper's equations."""
    T, d = x.shape
    H, dh = mhsa.n_heads, mhsa.d_head
    lin = lambda layer, z: z @ _np(layer.weight).T + (_np(layer.bias) if layer.bias is not None else 0.0)  # noqa: E731
    Q, K, V = lin(mhsa.W_q, x), lin(mhsa.W_k, x), lin(mhsa.W_v, x)
    valid = np.arange(T) < length
    out = {"attn": np.zeros((H, T, T)), "mu": np.zeros((H, T)), "sigma": np.zeros((H, T)), "f": np.zeros((H, T, T))}
    if mhsa.focus is not None:
        fa = mhsa.focus
        G = Q[valid].mean(0)  # mean query over the valid steps
        C = np.tanh(lin(fa.W_p, Q) + G @ _np(fa.W_g.weight).T)  # (T, d), shared by Eqs. 3 and 4
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            mu_raw, sigma_raw = C[:, sl] @ _np(fa.U_c[h]), C[:, sl] @ _np(fa.U_d[h])  # Eqs. 3, 4
            mu = length / (1 + np.exp(-mu_raw))  # Eq. 5: m * sigmoid
            sigma = length / (1 + np.exp(-sigma_raw))  # Eq. 6
            P = np.arange(T, dtype=np.float64)
            out["f"][h] = -((P[None, :] - mu[:, None]) ** 2) / (sigma[:, None] ** 2 / 2)  # Eq. 7
            out["mu"][h], out["sigma"][h] = mu * valid, sigma * valid
    for h in range(H):
        sl = slice(h * dh, (h + 1) * dh)
        S = Q[:, sl] @ K[:, sl].T / np.sqrt(dh) + out["f"][h]  # Eq. 8 (Eq. 1 per head, Eq. 2)
        A = np.zeros((T, T))
        for i in range(length):
            e = np.exp(S[i, :length] - S[i, :length].max())
            A[i, :length] = e / e.sum()  # softmax over the valid keys; padded query rows stay zero
        out["attn"][h] = A  # H^o, Eq. 9
    Hs = out["attn"]
    if mhsa.calibration is not None:
        g = np.array([out["attn"][h][:length, :length].max() for h in range(H)])  # Eq. 10: GMP per head
        s = 1 / (1 + np.exp(-lin(mhsa.calibration.W_s, g)))  # Eq. 11
        Hs = s[:, None, None] * out["attn"]  # Eq. 12
        out["calibration"], out["attn_calibrated"] = s, Hs
    concat = np.concatenate([Hs[h] @ V[:, h * dh: (h + 1) * dh] for h in range(H)], axis=1)  # Eq. 13, heads
    out["out"] = lin(mhsa.W_o, concat)
    return out


@pytest.mark.parametrize("variant", ["fa", "faca"])
def test_fa_and_faca_equal_the_papers_equations_in_numpy(variant):
    """Known answer: a 2-sequence batch (T 6, lengths 6 and 4, d 8, 2 heads) through the module (float64) equals
    Eqs. 3-13 computed independently in numpy, for mu, sigma (Eqs. 3-6), the maps (Eqs. 7-9), the calibration
    scores and calibrated maps (Eqs. 10-12) and the output (Eq. 13, W_o)."""
    torch.manual_seed(3)
    mhsa = MultiHeadSelfAttention(8, 2, variant=variant).double()
    with torch.no_grad():  # scores of a few units so that the focal bias and the dot product both matter
        for p in mhsa.focus.parameters():
            p.mul_(2.0)
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    lengths = torch.tensor([6, 4])
    with torch.no_grad():
        got_out, aux = mhsa(x, lengths)
    for b, L in enumerate(lengths.tolist()):
        want = _numpy_attention(mhsa, x[b].numpy(), L)
        np.testing.assert_allclose(aux["mu"][b, :, :L].numpy(), want["mu"][:, :L], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(aux["sigma"][b, :, :L].numpy(), want["sigma"][:, :L], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(aux["attn"][b].numpy(), want["attn"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got_out[b, :L].numpy(), want["out"][:L], rtol=1e-9, atol=1e-12)
        if variant == "faca":
            np.testing.assert_allclose(aux["calibration"][b].numpy(), want["calibration"], rtol=1e-10)
            np.testing.assert_allclose(aux["attn_calibrated"][b].numpy(), want["attn_calibrated"], rtol=1e-9,
                                       atol=1e-12)
        # the focal bias moves the maps: without it (BMHSA on the same weights) they differ
        assert np.abs(want["f"][:, :L, :L]).max() > 0.5
    with torch.no_grad():
        plain = MultiHeadSelfAttention(8, 2, variant="bmhsa").double()
        plain.load_state_dict({k: v for k, v in mhsa.state_dict().items() if k.split(".")[0].startswith("W_")})
        _, aux_plain = plain(x, lengths)
    assert (aux_plain["attn"] - aux["attn"]).abs().max() > 1e-2


def _stressed(variant: str) -> MultiHeadSelfAttention:
    """An FA / FACA layer whose scopes sigma are tiny (U_d very negative): the focal bias reaches about
    -T^2 / eps, beyond float16's range."""
    torch.manual_seed(0)
    mhsa = MultiHeadSelfAttention(16, 2, variant=variant)
    with torch.no_grad():
        mhsa.focus.U_d.fill_(-40.0)
        mhsa.focus.W_p.weight.zero_()
        mhsa.focus.W_p.bias.fill_(1.0)  # tanh(...) = 0.76 everywhere: sigma_raw = -40 * 0.76 * d_h
    return mhsa


def _check_float32_core(variant: str, dtype: torch.dtype, device: str) -> None:
    """Attention maps under autocast(device, dtype): float32, finite, valid rows sum to 1, close to the float32
    maps, for a plain layer and a stressed one (:func:`_stressed`)."""
    for mhsa in (MultiHeadSelfAttention(16, 2, variant=variant), _stressed(variant)):
        mhsa = mhsa.to(device)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(3, 12, 16, generator=g).to(device)
        lengths = torch.tensor([12, 9, 5], device=device)
        with torch.no_grad():
            _, ref = mhsa(x, lengths)
            with torch.autocast(device_type=device, dtype=dtype):
                out, aux = mhsa(x, lengths)
        assert out.dtype == dtype  # the output projection still runs in the low precision
        keys = ["attn", "mu", "sigma"] + (["attn_calibrated", "calibration"] if variant == "faca" else [])
        for key in keys:
            assert aux[key].dtype == torch.float32, key
            assert torch.isfinite(aux[key]).all(), key
        assert torch.isfinite(out.float()).all()
        for b, L in enumerate(lengths.tolist()):
            rows = aux["attn"][b, :, :L].sum(-1)
            torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-6, rtol=0)
        # the projections are rounded to the low precision; everything after them is float32
        torch.testing.assert_close(aux["attn"], ref["attn"], atol=3e-2, rtol=0)
        torch.testing.assert_close(aux["mu"], ref["mu"], atol=0.15, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["fa", "faca"])
def test_attention_weights_are_float32_under_autocast(variant, dtype):
    """Under torch.autocast on the CPU (bfloat16, and float16) the attention maps are computed in float32: finite,
    rows of valid queries sum to 1, close to the float32 maps, also where the focal bias exceeds float16's range."""
    _check_float32_core(variant, dtype, "cpu")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("variant", ["fa", "faca"])
def test_attention_weights_are_float32_under_cuda_float16_autocast(variant):
    """The trainer's CUDA AMP (float16 autocast): the same guarantees on the GPU."""
    _check_float32_core(variant, torch.float16, "cuda")


def test_the_stressed_bias_is_out_of_float16_range():
    """What the float32 core guards against: the same bias computed in float16 overflows and the softmax of such a
    row is NaN."""
    mhsa = _stressed("fa")
    x = torch.randn(1, 12, 16)
    with torch.no_grad():
        _, aux = mhsa(x, torch.tensor([12]))
    f = focal_bias(aux["mu"], aux["sigma"], torch.arange(12), eps=mhsa.eps)
    assert f.min() < -torch.finfo(torch.float16).max  # beyond float16
    f16 = focal_bias(aux["mu"].half(), aux["sigma"].half(), torch.arange(12), eps=mhsa.eps)
    assert torch.isinf(f16).any() and torch.isnan(torch.softmax(f16, -1)).any()
