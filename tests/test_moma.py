import math

import pytest
import torch

from serlib.models.moma import MOMA, MOMAConfig, attention_smoothness

N_FEAT, N_CLASSES = 5, 3


def small_config(**kw) -> MOMAConfig:
    base = dict(
        n_classes=N_CLASSES,
        n_features=N_FEAT,
        lstm_hidden=16,
        lstm_layers=2,
        context=8,
        n_views=3,
        proj_dim=16,
        dropout=0.0,
    )
    base.update(kw)
    return MOMAConfig(**base)


def batch(T=20, lengths=(20, 13, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), N_FEAT, T, generator=g)
    lengths = torch.tensor(lengths)
    return x * (torch.arange(T)[None, None, :] < lengths[:, None, None]), lengths


def test_config_defaults_follow_paper():
    c = MOMAConfig(n_classes=4)
    paper = (23, 512, 2, 128, 3, 1024)
    assert (c.n_features, c.lstm_hidden, c.lstm_layers, c.context, c.n_views, c.proj_dim) == paper
    assert c.gamma_mode == "free"
    with pytest.raises(ValueError):
        MOMAConfig(gamma_mode="bad")


def test_shapes():
    torch.manual_seed(0)
    model = MOMA(small_config())
    x, lengths = batch()
    logits, aux = model(x, lengths)
    assert logits.shape == (3, N_CLASSES)
    assert aux["attn1"].shape == (3, 20) and aux["attn2"].shape == (3, 20)
    assert aux["attn2_views"].shape == (3, 3, 20)
    assert aux["gammas"].shape == (3,)
    assert model(x)[0].shape == (3, N_CLASSES)  # lengths=None


@pytest.mark.parametrize("gamma_mode", ["free", "softmax"])
def test_attention_sums_to_one_on_valid_frames_and_zero_on_padding(gamma_mode):
    torch.manual_seed(0)
    model = MOMA(small_config(gamma_mode=gamma_mode)).eval()
    x, lengths = batch()
    with torch.no_grad():
        _, aux = model(x, lengths)
    ones = torch.ones(3)
    torch.testing.assert_close(aux["attn1"].sum(-1), ones)
    torch.testing.assert_close(aux["attn2_views"].sum(-1), torch.ones(3, 3))
    # the mixture sums to sum(gammas): 1 only when the gammas are softmax-normalised
    torch.testing.assert_close(aux["attn2"].sum(-1), aux["gammas"].sum().expand(3))
    if gamma_mode == "softmax":
        torch.testing.assert_close(aux["attn2"].sum(-1), ones)
    for b, L in enumerate(lengths.tolist()):
        assert (aux["attn1"][b, L:] == 0).all()
        assert (aux["attn2"][b, L:] == 0).all()
        assert (aux["attn2_views"][b, :, L:] == 0).all()
        assert (aux["attn1"][b, :L] > 0).all()
    # views differ (differently initialised blocks)
    assert not torch.allclose(aux["attn2_views"][:, 0], aux["attn2_views"][:, 1])


@pytest.mark.parametrize("residual", ["frame", "context"])
def test_padding_invariance_eval(residual):
    torch.manual_seed(0)
    model = MOMA(small_config(residual=residual)).eval()
    x, lengths = batch()
    with torch.no_grad():
        logits, aux = model(x, lengths)
        x_pad = torch.cat([x, torch.zeros(3, N_FEAT, 9)], dim=-1)
        logits_pad, aux_pad = model(x_pad, lengths)
        torch.testing.assert_close(logits_pad, logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(aux_pad["attn2"][:, :20], aux["attn2"], atol=1e-6, rtol=0)
        for b, L in enumerate(lengths.tolist()):
            alone, _ = model(x[b : b + 1, :, :L], torch.tensor([L]))
            torch.testing.assert_close(alone[0], logits[b], atol=1e-5, rtol=0)


def test_gammas_are_trainable_and_returned():
    torch.manual_seed(0)
    model = MOMA(small_config())
    assert isinstance(model.gamma, torch.nn.Parameter)
    assert any(p is model.gamma for p in model.parameters())
    x, lengths = batch()
    logits, aux = model(x, lengths)
    torch.testing.assert_close(aux["gammas"], model.gamma)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    assert model.gamma.grad is not None and model.gamma.grad.abs().sum() > 0
    before = model.gamma.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    assert not torch.equal(before, model.gamma.detach())
    soft = MOMA(small_config(gamma_mode="softmax"))
    torch.testing.assert_close(soft(x, lengths)[1]["gammas"].sum(), torch.tensor(1.0))


def test_training_steps_reduce_loss_on_tiny_task():
    # label = which third of the (valid) sequence holds a burst on feature 0: needs time-aware pooling
    torch.manual_seed(0)
    n, T = 48, 18
    lengths = torch.randint(12, T + 1, (n,))
    y = torch.randint(0, 3, (n,))
    x = 0.3 * torch.randn(n, N_FEAT, T)
    for i in range(n):
        L = int(lengths[i])
        start = int(y[i]) * L // 3
        x[i, 0, start : start + 2] += 3.0
    x = x * (torch.arange(T)[None, None, :] < lengths[:, None, None])
    model = MOMA(small_config(lstm_layers=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x, lengths)[0], y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_attention_smoothness_known_answers():
    L = 8
    uniform = torch.full((L,), 1.0 / L)
    r = attention_smoothness(uniform)
    torch.testing.assert_close(r["entropy"], torch.tensor(math.log(L)))
    torch.testing.assert_close(r["normalized_entropy"], torch.tensor(1.0))
    torch.testing.assert_close(r["total_variation"], torch.tensor(0.0))

    onehot = torch.zeros(L)
    onehot[3] = 1.0
    r = attention_smoothness(onehot)
    torch.testing.assert_close(r["entropy"], torch.tensor(0.0))
    torch.testing.assert_close(r["total_variation"], torch.tensor(2.0))

    # batched with padding: uniform over the 5 valid frames, padding ignored; scale does not matter
    a = torch.tensor([[0.2] * 5 + [0.0] * 3, [0.3] * 5 + [9.0] * 3])
    r = attention_smoothness(a, torch.tensor([5, 5]))
    torch.testing.assert_close(r["entropy"], torch.full((2,), math.log(5)))
    torch.testing.assert_close(r["total_variation"], torch.zeros(2))
    # a peaked vector is less smooth than a uniform one
    peaked = torch.softmax(torch.tensor([0.0, 0, 0, 4, 0, 0, 0, 0]), 0)
    rp = attention_smoothness(peaked)
    assert rp["entropy"] < math.log(L) and rp["total_variation"] > 0
