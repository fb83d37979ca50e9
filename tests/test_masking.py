import pytest
import torch
from torch import nn

from serlib.models.masking import (
    MaskedBiLSTM,
    lengths_to_mask,
    masked_max,
    masked_mean,
    masked_softmax,
    pooled_lengths,
    reverse_padded,
)


def test_lengths_to_mask_known_answer():
    mask = lengths_to_mask(torch.tensor([3, 0, 5]), 5)
    expected = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)


def test_masked_softmax_matches_softmax_on_valid_part_and_ignores_padding():
    torch.manual_seed(0)
    scores = torch.randn(2, 6)
    lengths = torch.tensor([4, 6])
    mask = lengths_to_mask(lengths, 6)
    p = masked_softmax(scores, mask, dim=-1)
    torch.testing.assert_close(p[0, :4], torch.softmax(scores[0, :4], -1))
    torch.testing.assert_close(p[1], torch.softmax(scores[1], -1))
    assert torch.all(p[0, 4:] == 0)
    # changing padded scores (even to huge values) changes nothing
    scores2 = scores.clone()
    scores2[0, 4:] = 1e6
    torch.testing.assert_close(masked_softmax(scores2, mask, dim=-1), p)


def test_masked_softmax_fully_masked_row_is_zero_and_gradient_finite():
    scores = torch.randn(2, 3, requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    p = masked_softmax(scores, mask, dim=-1)
    assert torch.all(p[1] == 0) and not torch.isnan(p).any()
    torch.testing.assert_close(p[0].sum(), torch.tensor(1.0))
    (p * torch.arange(3.0)).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert torch.all(scores.grad[1] == 0)


def test_masked_softmax_broadcast_mask_over_heads():
    scores = torch.randn(2, 4, 5, 5)
    mask = lengths_to_mask(torch.tensor([2, 5]), 5)[:, None, None, :]
    p = masked_softmax(scores, mask, dim=-1)
    assert torch.all(p[0, ..., 2:] == 0)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 5))


def test_masked_mean_and_max_padding_invariant_and_empty_safe():
    x = torch.tensor([[1.0, 3.0, 100.0], [-2.0, -4.0, 7.0], [5.0, 5.0, 5.0]])
    mask = lengths_to_mask(torch.tensor([2, 2, 0]), 3)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([2.0, -3.0, 0.0]))
    torch.testing.assert_close(masked_max(x, mask, dim=1), torch.tensor([3.0, -2.0, 0.0]))
    # (B, T, D) with a (B, T, 1) mask, keepdim
    x3 = torch.arange(12.0).view(2, 3, 2)
    m3 = lengths_to_mask(torch.tensor([1, 3]), 3)[:, :, None]
    mean = masked_mean(x3, m3, dim=1, keepdim=True)
    assert mean.shape == (2, 1, 2)
    torch.testing.assert_close(mean[:, 0], torch.tensor([[0.0, 1.0], [8.0, 9.0]]))
    torch.testing.assert_close(masked_max(x3, m3, dim=1), torch.tensor([[0.0, 1.0], [10.0, 11.0]]))


def test_pooled_lengths_matches_maxpool_valid_windows():
    lengths = torch.tensor([0, 1, 2, 3, 7, 8, 9])
    torch.testing.assert_close(pooled_lengths(lengths, 2, 2), torch.tensor([0, 0, 1, 1, 3, 4, 4]))
    torch.testing.assert_close(pooled_lengths(lengths, 3, 1), torch.tensor([0, 0, 0, 1, 5, 6, 7]))
    # every pooled valid frame equals the pooling of the unpadded sequence
    pool = nn.MaxPool1d(3, stride=2)
    x = torch.randn(1, 1, 11)
    for L in range(3, 12):
        n = int(pooled_lengths(torch.tensor([L]), 3, 2))
        padded = x.clone()
        padded[..., L:] = 1e3
        torch.testing.assert_close(pool(padded)[..., :n], pool(x[..., :L])[..., :n])
        assert n == pool(x[..., :L]).shape[-1]


# ------------------------------------------------------------------------------------------------ MaskedBiLSTM
def test_reverse_padded_reverses_within_length_and_is_its_own_inverse():
    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    lengths = torch.tensor([3, 5])
    r = reverse_padded(x, lengths)
    assert r[0, :, 0].tolist() == [2.0, 1.0, 0.0, 3.0, 4.0]  # padding frames 3, 4 stay in place
    assert r[1, :, 0].tolist() == [9.0, 8.0, 7.0, 6.0, 5.0]
    assert torch.equal(reverse_padded(r, lengths), x)


@pytest.mark.parametrize("layers", [1, 2])
def test_masked_bilstm_equals_packed_lstm_outputs_and_gradients(layers):
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 5, num_layers=layers, batch_first=True, bidirectional=True)
    ours = MaskedBiLSTM.from_lstm(lstm)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in lstm.parameters())
    lengths = torch.tensor([9, 4, 7, 1])
    x = torch.randn(4, 9, 6) * lengths_to_mask(lengths, 9)[:, :, None]
    x_ref = x.clone().requires_grad_(True)
    packed = nn.utils.rnn.pack_padded_sequence(x_ref, lengths, batch_first=True, enforce_sorted=False)
    ref, _ = nn.utils.rnn.pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=9)
    x_ours = x.clone().requires_grad_(True)
    out = ours(x_ours, lengths)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert torch.all(out[1, 4:] == 0) and torch.all(out[3, 1:] == 0)
    w = torch.randn_like(ref)
    (ref * w).sum().backward()
    (out * w).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.bwd[0].weight_hh_l0.grad, lstm.weight_hh_l0_reverse.grad, atol=1e-5, rtol=1e-4)


def test_masked_bilstm_output_at_valid_frames_ignores_what_padding_holds():
    torch.manual_seed(1)
    m = MaskedBiLSTM(3, 4, num_layers=2).eval()
    lengths = torch.tensor([5, 3])
    x = torch.randn(2, 8, 3)
    y = torch.where(lengths_to_mask(lengths, 8)[:, :, None], x, torch.randn(2, 8, 3) * 100)
    torch.testing.assert_close(m(x, lengths), m(y, lengths))
