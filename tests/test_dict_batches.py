"""Dict batches: a model with two named, variable-length inputs trains and predicts through the unchanged Trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from serlib.train import ArrayData, TrainConfig, Trainer, accuracy_score


class TwoInputs(nn.Module):
    """Masked means of two sequences of different lengths, concatenated, then a linear layer."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, int]] = []
        self.linear = nn.Linear(3 + 5, 2)

    @staticmethod
    def _mean(x, lengths):
        mask = (torch.arange(x.shape[-1])[None, :] < lengths[:, None]).float()
        return (x * mask[:, None, :]).sum(-1) / lengths[:, None].float()

    def forward(self, a, a_lengths, b, b_lengths):
        self.seen.append((a.shape[-1], b.shape[-1]))
        return self.linear(torch.cat([self._mean(a, a_lengths), self._mean(b, b_lengths)], 1)), {}


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    a_len = torch.randint(3, 12, (n,), generator=g)
    b_len = torch.randint(2, 30, (n,), generator=g)
    a = torch.zeros(n, 3, 12)
    b = torch.zeros(n, 5, 30)
    for i in range(n):
        a[i, :, : a_len[i]] = torch.randn(3, int(a_len[i]), generator=g) + 2 * y[i]
        b[i, :, : b_len[i]] = torch.randn(5, int(b_len[i]), generator=g) - y[i]
    return ArrayData(x={"a": a, "a_lengths": a_len, "b": b, "b_lengths": b_len}, y=y)


def test_two_input_model_trains_and_predicts():
    torch.manual_seed(0)
    data = _data()
    model = TwoInputs()
    trainer = Trainer(model, TrainConfig(epochs=15, batch_size=8, lr=5e-2, select="last", progress=False),
                      score_fn=accuracy_score)
    result = trainer.fit(data, None, data)
    assert result.test_logits.shape == (40, 2)
    # each batch is cropped to its own longest item, per input
    assert all(ta <= 12 and tb <= 30 for ta, tb in model.seen) and any(ta < 12 for ta, _ in model.seen)
    assert accuracy_score(trainer.predict(data), data)["score"] > 0.9


def test_dict_data_subset_to_and_checks():
    data = _data(10)
    sub = data.subset([0, 3])
    assert len(sub) == 2 and sub.x["a"].shape == (2, 3, 12) and torch.equal(sub.x["b_lengths"],
                                                                             data.x["b_lengths"][[0, 3]])
    x, y, lengths = data.batch(slice(0, 4))
    assert lengths is None and x["a"].shape[-1] == int(data.x["a_lengths"][:4].max())
    with pytest.raises(ValueError, match="must have as many"):
        ArrayData(x={"a": torch.zeros(3, 2), "b": torch.zeros(4, 2)}, y=torch.zeros(3))
    with pytest.raises(ValueError, match="carries its lengths"):
        ArrayData(x={"a": torch.zeros(3, 2)}, y=torch.zeros(3), lengths=torch.ones(3))


def test_augmentation_of_dict_batches_is_a_clear_error():
    trainer = Trainer(TwoInputs(), TrainConfig(epochs=1, batch_size=8, mixup_alpha=0.2, select="last",
                                               progress=False), score_fn=accuracy_score)
    with pytest.raises(TypeError, match="one \\(B, F, T\\) feature tensor per batch.*dict"):
        trainer.fit(_data(), None, None)
