import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from serlib.losses import WeightedFocalLoss, inverse_frequency_weights, make_loss


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(12, 4) * 3, torch.randint(0, 4, (12,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gamma0_uniform_equals_cross_entropy(batch, reduction):
    logits, y = batch
    ref = F.cross_entropy(logits, y, reduction=reduction)
    torch.testing.assert_close(WeightedFocalLoss(gamma=0.0, reduction=reduction)(logits, y), ref)
    ones = WeightedFocalLoss(gamma=0.0, weight=torch.ones(4), reduction=reduction)(logits, y)
    torch.testing.assert_close(ones, ref)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gamma0_weighted_equals_weighted_cross_entropy(batch, reduction):
    logits, y = batch
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    ref = F.cross_entropy(logits, y, weight=w, reduction=reduction)
    torch.testing.assert_close(WeightedFocalLoss(gamma=0.0, weight=w, reduction=reduction)(logits, y), ref)


def test_focal_down_weights_easy_examples():
    # a confident correct example: p_y = 0.99 -> the focal term (0.01)^2 shrinks its loss 10^4-fold
    easy = torch.tensor([[math.log(99.0), 0.0]])
    hard = torch.tensor([[0.0, math.log(99.0)]])  # confidently wrong: p_y = 0.01
    y = torch.tensor([0])
    ce_easy, fl_easy = F.cross_entropy(easy, y), WeightedFocalLoss(gamma=2.0)(easy, y)
    ce_hard, fl_hard = F.cross_entropy(hard, y), WeightedFocalLoss(gamma=2.0)(hard, y)
    assert fl_easy < ce_easy
    torch.testing.assert_close(fl_easy / ce_easy, torch.tensor(0.01**2))
    torch.testing.assert_close(fl_hard / ce_hard, torch.tensor(0.99**2))
    assert fl_hard / ce_hard > 1000 * (fl_easy / ce_easy)


def test_focal_never_exceeds_cross_entropy(batch):
    logits, y = batch
    fl = WeightedFocalLoss(gamma=2.0, reduction="none")(logits, y)
    ce = F.cross_entropy(logits, y, reduction="none")
    assert (fl <= ce + 1e-7).all() and (fl < ce).all()


def test_hand_computation_two_examples():
    # example 1: logits (ln 3, 0), target 0 -> p = 3/4; example 2: logits (0, 0), target 1 -> p = 1/2
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    w = torch.tensor([1.0, 3.0])
    l1 = 1.0 * (1 / 4) ** 2 * -math.log(3 / 4)
    l2 = 3.0 * (1 / 2) ** 2 * -math.log(1 / 2)
    loss = WeightedFocalLoss(gamma=2.0, weight=w, reduction="none")
    torch.testing.assert_close(loss(logits, y), torch.tensor([l1, l2], dtype=torch.float64))
    mean = WeightedFocalLoss(gamma=2.0, weight=w)(logits, y)
    assert mean.item() == pytest.approx((l1 + l2) / (1.0 + 3.0), rel=1e-12)
    summed = WeightedFocalLoss(gamma=2.0, weight=w, reduction="sum")(logits, y)
    assert summed.item() == pytest.approx(l1 + l2, rel=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_gradients_finite_for_extreme_logits(gamma):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [80.0, -80.0, 0.0], [0.0, 0.0, 0.0]])
    logits.requires_grad_(True)
    y = torch.tensor([0, 0, 0, 2])  # confidently right, confidently wrong, right, uncertain
    loss = WeightedFocalLoss(gamma=gamma, weight=torch.tensor([1.0, 2.0, 0.5]))(logits, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[1].abs().sum() > 0  # the confidently wrong example still pushes


def test_gradient_matches_finite_differences():
    torch.manual_seed(1)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1, 0])
    loss = WeightedFocalLoss(gamma=2.0, weight=torch.tensor([1.0, 2.0, 0.5]))
    assert torch.autograd.gradcheck(lambda z: loss(z, y), (logits,))


def test_weight_is_a_buffer_and_validated():
    loss = WeightedFocalLoss(weight=torch.tensor([1.0, 2.0]))
    assert "weight" in dict(loss.named_buffers())
    with pytest.raises(AssertionError):
        loss(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        WeightedFocalLoss(gamma=-1.0)
    with pytest.raises(ValueError):
        WeightedFocalLoss(reduction="avg")


def test_inverse_frequency_weights_hand_checked():
    y = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2]  # counts 3, 2, 7 of N = 12
    raw = inverse_frequency_weights(y, 3, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([12 / 3, 12 / 2, 12 / 7]))
    w = inverse_frequency_weights(np.array(y), 3)
    mean_raw = (4 + 6 + 12 / 7) / 3
    torch.testing.assert_close(w, torch.tensor([4 / mean_raw, 6 / mean_raw, (12 / 7) / mean_raw]))
    assert w.mean().item() == pytest.approx(1.0, rel=1e-6)
    assert w.dtype == torch.float32
    # the paper's IEMOCAP counts: the rarest class (angry, 289) gets the largest weight
    counts = {0: 289, 1: 608, 2: 947, 3: 1099}
    y_iemocap = torch.cat([torch.full((n,), c) for c, n in counts.items()])
    w4 = inverse_frequency_weights(y_iemocap, 4)
    assert torch.argsort(w4, descending=True).tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(w4[0] / w4[3], torch.tensor(1099 / 289))


def test_inverse_frequency_weights_absent_class_warns_and_is_zero():
    with pytest.warns(UserWarning, match="absent"):
        w = inverse_frequency_weights([0, 0, 0, 1], 3)
    torch.testing.assert_close(w, torch.tensor([0.5, 1.5, 0.0]))  # raw 4/3, 4, - -> mean 8/3
    with pytest.raises(ValueError):
        inverse_frequency_weights([0, 3], 3)
    with pytest.raises(ValueError):
        inverse_frequency_weights([], 3)


def test_make_loss(batch):
    logits, y = batch
    assert isinstance(make_loss("ce"), nn.CrossEntropyLoss)
    focal = make_loss("focal", gamma=1.5)
    assert isinstance(focal, WeightedFocalLoss) and focal.weight is None and focal.gamma == 1.5
    wf = make_loss("weighted_focal", y_train=y, n_classes=4)
    torch.testing.assert_close(wf.weight, inverse_frequency_weights(y, 4))
    assert wf.gamma == 2.0
    wce = make_loss("weighted_ce", y_train=y.numpy(), n_classes=4)
    torch.testing.assert_close(wce(logits, y), F.cross_entropy(logits, y, weight=wf.weight))
    assert make_loss("weighted_focal", y_train=[0, 1, 1, 2]).weight.shape == (3,)  # n_classes inferred
    with pytest.raises(ValueError, match="y_train"):
        make_loss("weighted_focal")
    with pytest.raises(ValueError, match="unknown"):
        make_loss("hinge")


def test_auxiliary_loss_adds_alpha_times_the_same_loss_on_aux_logits(batch):
    logits, y = batch
    aux_logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    loss = make_loss("focal", gamma=0.5, alpha=0.4)
    focal = WeightedFocalLoss(0.5)
    total = loss(logits, y, aux={"aux_logits": aux_logits})
    torch.testing.assert_close(total, focal(logits, y) + 0.4 * focal(aux_logits, y))
    torch.testing.assert_close(loss(logits, y, aux=None), focal(logits, y))  # evaluation: the logits alone
    assert isinstance(make_loss("focal", gamma=0.5, alpha=0.0), WeightedFocalLoss)  # alpha 0: no wrapper
    ce = make_loss("ce", alpha=1.0)
    torch.testing.assert_close(ce(logits, y, aux={"aux_logits": aux_logits}),
                               F.cross_entropy(logits, y) + F.cross_entropy(aux_logits, y))
    with pytest.raises(ValueError, match="no auxiliary head"):  # never a silently dropped term
        loss(logits, y, aux={"aux_logits": None})
    with pytest.raises(ValueError, match="alpha"):
        make_loss("focal", alpha=-0.1)
