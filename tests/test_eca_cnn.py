import math

import numpy as np
import pytest
import torch
from torch import nn

from serlib.models.eca_cnn import (
    CHANNEL_PATTERNS,
    ECA,
    ECACNN,
    ECACNNConfig,
    adaptive_eca_kernel,
    eca_weights_by_class,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_paper_eca_adds_exactly_14_parameters():
    for scale in (1, 4):
        plain = ECACNN(ECACNNConfig(scale=scale, eca_layers=()))
        eca = ECACNN(ECACNNConfig(scale=scale, eca_layers=(5, 6), eca_kernel=7))
        assert n_params(eca) - n_params(plain) == 14
    plain = ECACNN(ECACNNConfig(scale=1, eca_layers=()))
    # the defaults are the paper's best: ECA after blocks 5 and 6, kernel 7
    assert n_params(ECACNN(ECACNNConfig(scale=1))) - n_params(plain) == 14
    four_k3 = ECACNN(ECACNNConfig(scale=1, eca_layers=(3, 4, 5, 6), eca_kernel=3))
    assert n_params(four_k3) - n_params(plain) == 12
    original = ECACNN(ECACNNConfig(scale=1, eca_variant="original"))  # adaptive k = 5 at 128 channels + BN
    assert n_params(original) - n_params(plain) == 2 * (5 + 2)


def test_channel_widths_follow_the_pattern():
    assert ECACNNConfig(scale=1).channels == CHANNEL_PATTERNS["doubling"] == (8, 16, 32, 64, 128, 128)
    assert ECACNNConfig(scale=4).channels == (32, 64, 128, 256, 512, 512)
    assert ECACNNConfig(scale=8).channels[-1] == 1024
    assert ECACNNConfig(channel_pattern=(1, 2, 3, 4, 5, 6), scale=2).channels == (2, 4, 6, 8, 10, 12)
    model = ECACNN(ECACNNConfig(scale=2))
    assert model.fc1.in_features == model.fc1.out_features == 256  # FC width = last conv's channels
    assert model.fc2.out_features == 4


@pytest.mark.parametrize(("scale", "n_frames"), [(1, 601), (2, 601), (1, 100), (3, 100), (2, 32)])
def test_shapes(scale, n_frames):
    torch.manual_seed(0)
    cfg = ECACNNConfig(scale=scale, n_classes=4)
    model = ECACNN(cfg)
    x = torch.randn(2, 64, n_frames)
    logits, aux = model(x)
    assert logits.shape == (2, 4)
    assert set(aux["eca_weights"]) == {5, 6}
    for layer, w in aux["eca_weights"].items():
        assert w.shape == (2, cfg.channels[layer - 1])
    assert aux["embedding"].shape == (2, cfg.channels[-1])
    logits2, _ = model(x, lengths=torch.tensor([n_frames, n_frames // 2]))  # accepted, unused
    torch.testing.assert_close(logits2, logits)


def test_input_checks():
    model = ECACNN(ECACNNConfig(scale=1))
    with pytest.raises(AssertionError):
        model(torch.randn(2, 40, 100))  # wrong number of mel bins
    with pytest.raises(AssertionError):
        model(torch.randn(2, 64, 20))  # too short for five 2x2 poolings


def test_channel_weights_lie_in_open_unit_interval():
    torch.manual_seed(0)
    model = ECACNN(ECACNNConfig(scale=1, eca_layers=(1, 3, 5, 6)))
    _, aux = model(torch.randn(3, 64, 100) * 5)
    assert set(aux["eca_weights"]) == {1, 3, 5, 6}
    for w in aux["eca_weights"].values():
        assert (w > 0).all() and (w < 1).all()


def test_no_eca_layers_gives_empty_weights():
    _, aux = ECACNN(ECACNNConfig(scale=1, eca_layers=()))(torch.randn(1, 64, 64))
    assert aux["eca_weights"] == {}


def test_he_initialisation_statistics():
    torch.manual_seed(0)
    model = ECACNN(ECACNNConfig(scale=2))
    checked = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.numel() >= 100:
            fan_in = m.weight[0].numel()
            expected = math.sqrt(2.0 / fan_in)
            assert m.weight.std().item() == pytest.approx(expected, rel=0.2), m
            assert abs(m.weight.mean().item()) < 0.2 * expected
            if m.bias is not None:
                assert (m.bias == 0).all()
            checked += 1
    assert checked == 8  # six convs, two linears
    assert all(b[0].bias is None for b in model.blocks)  # BatchNorm follows each conv


def test_eca_matches_hand_computation():
    # C = 5 channels, kernel 3, zero padding 1: z_j = a m_{j-1} + b m_j + c m_{j+1}, w = sigmoid(z)
    eca = ECA(kernel_size=3)
    a, b, c = 0.5, -1.0, 2.0
    with torch.no_grad():
        eca.conv.weight.copy_(torch.tensor([[[a, b, c]]]))
    x = torch.arange(1 * 5 * 2 * 3, dtype=torch.float32).reshape(1, 5, 2, 3) / 10 - 1.0
    m = [float(x[0, j].mean()) for j in range(5)]
    padded = [0.0] + m + [0.0]
    z = [a * padded[j] + b * padded[j + 1] + c * padded[j + 2] for j in range(5)]
    w_hand = torch.tensor([[1 / (1 + math.exp(-zj)) for zj in z]])
    out, w = eca(x)
    torch.testing.assert_close(w, w_hand)
    torch.testing.assert_close(out, x * w_hand[:, :, None, None])
    assert sum(p.numel() for p in eca.parameters()) == 3  # no bias, no BatchNorm


def test_adaptive_kernel_follows_eca_net_formula():
    # ECA-Net: t = int(|(log2 C + 1) / 2|), odd -> t, even -> t + 1
    assert [adaptive_eca_kernel(c) for c in (16, 32, 64, 128, 256, 512, 1024)] == [3, 3, 3, 5, 5, 5, 5]
    cfg = ECACNNConfig.original_eca(scale=4)
    assert cfg.eca_layers == (1, 2, 3, 4, 5, 6) and cfg.use_batchnorm_in_eca
    model = ECACNN(cfg)
    assert [model.eca[str(i)].kernel_size for i in range(1, 7)] == [
        adaptive_eca_kernel(c) for c in (32, 64, 128, 256, 512, 512)
    ]
    assert ECACNN(ECACNNConfig.original_eca(scale=1, eca_kernel=7)).eca["3"].kernel_size == 7


@pytest.mark.parametrize("variant", ["paper", "original"])
def test_variants_run_and_gradients_reach_eca(variant):
    torch.manual_seed(0)
    model = ECACNN(ECACNNConfig(scale=1, eca_variant=variant, dropout=0.1))
    has_bn = variant == "original"
    assert all((m.bn is not None) == has_bn for m in model.eca.values())
    x, y = torch.randn(4, 64, 64), torch.tensor([0, 1, 2, 3])
    logits, aux = model(x)
    nn.functional.cross_entropy(logits, y).backward()
    for eca in model.eca.values():
        g = eca.conv.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    model.eval()
    logits_eval, _ = model(x)
    assert torch.isfinite(logits_eval).all()


def test_config_validation():
    for bad in (
        dict(scale=0),
        dict(scale=9),
        dict(eca_layers=(7,)),
        dict(eca_layers=(5, 5)),
        dict(eca_variant="se"),
        dict(eca_kernel=4),
        dict(channel_pattern=(8, 16)),
        dict(channel_pattern="tripling"),
    ):
        with pytest.raises(ValueError):
            ECACNNConfig(**bad)
    d = ECACNNConfig().to_dict()
    assert d["channels"] == [32, 64, 128, 256, 512, 512] and d["eca_layers"] == (5, 6)


def test_eca_weights_by_class_on_tiny_input():
    torch.manual_seed(0)
    model = ECACNN(ECACNNConfig(scale=1))
    model.train()
    x = torch.randn(7, 64, 40)
    y = np.array([0, 1, 1, 2, 0, 2, 2])  # class 3 absent
    out = eca_weights_by_class(model, x, y, (5, 6), batch_size=3)
    assert model.training  # mode restored
    assert set(out) == {5, 6}
    model.eval()
    with torch.no_grad():
        _, aux = model(x)
    for layer in (5, 6):
        assert out[layer].shape == (4, model.config.channels[layer - 1])
        w = aux["eca_weights"][layer].double().numpy()
        for c in range(3):
            np.testing.assert_allclose(out[layer][c], w[y == c].mean(axis=0), rtol=1e-6)
        assert np.isnan(out[layer][3]).all()
    assert set(eca_weights_by_class(model, x, y)) == {5, 6}  # default: every ECA layer
    with pytest.raises(ValueError):
        eca_weights_by_class(model, x, y, (4,))
