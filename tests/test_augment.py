"""SpecAugment-style masking and mixup (serlib.augment) and the trainer's use of them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from serlib.augment import mixup, mixup_loss, spec_augment
from serlib.train import ArrayData, TrainConfig, Trainer, set_seed


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_spec_augment_masks_whole_bands_and_spans_within_the_width():
    x = torch.ones(64, 20, 50)  # (B, F, T)
    out = spec_augment(x, generator=gen(), freq_masks=1, freq_width=5, time_masks=1, time_width=7)
    assert out.shape == x.shape and torch.equal(x, torch.ones(64, 20, 50))  # input untouched
    zero = out == 0
    for b in range(64):
        rows = zero[b].all(dim=1)  # a masked frequency bin is zero at every frame
        cols = zero[b].all(dim=0)  # a masked frame is zero at every bin
        # every zero lies in a masked row or column, and each mask is one contiguous run no wider than asked
        assert torch.equal(zero[b], rows[:, None] | cols[None, :])
        for mask, width in ((rows, 5), (cols, 7)):
            idx = mask.nonzero().flatten()
            assert len(idx) <= width
            if len(idx):
                assert int(idx[-1] - idx[0]) + 1 == len(idx)
    # widths are drawn from 0..width: over 64 examples both some wide and some empty masks occur
    n_rows = zero.all(dim=2).sum(dim=1)
    assert n_rows.max() == 5 and n_rows.min() == 0


def test_spec_augment_axes_lengths_determinism_and_off():
    x = torch.randn(16, 30, 12)  # (B, T, F): time first, as the recurrent models take it
    a = spec_augment(x, generator=gen(3), time_masks=2, time_width=10, freq_masks=0, freq_width=4,
                     freq_axis=-1, time_axis=1, lengths=torch.full((16,), 8))
    b = spec_augment(x, generator=gen(3), time_masks=2, time_width=10, freq_masks=0, freq_width=4,
                     freq_axis=-1, time_axis=1, lengths=torch.full((16,), 8))
    assert torch.equal(a, b)
    changed = (a != x).any(dim=2)  # (B, T): masked frames
    assert changed.any() and not changed[:, 8:].any()  # only frames inside the valid length
    assert spec_augment(x, generator=gen(), time_masks=3, time_width=0) is x
    with pytest.raises(ValueError, match="two different non-batch axes"):
        spec_augment(x, generator=gen(), time_masks=1, time_width=2, freq_axis=1, time_axis=1)


def test_mixup_mixes_pairs_with_one_beta_draw_and_mixes_the_loss():
    x = torch.arange(8, dtype=torch.float32).view(8, 1).repeat(1, 3)
    y = torch.arange(8)
    xm, y_a, y_b, lam, lengths = mixup(x, y, alpha=0.4, generator=gen(1), lengths=torch.arange(1, 9))
    assert 0.0 <= lam <= 1.0 and torch.equal(y_a, y)
    assert torch.allclose(xm, lam * x + (1 - lam) * x[y_b])  # y == index, so y_b is the partner permutation
    assert torch.equal(lengths, torch.maximum(torch.arange(1, 9), y_b + 1))
    logits = torch.randn(8, 8)
    want = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y_b)
    assert torch.allclose(mixup_loss(F.cross_entropy, logits, y_a, y_b, lam), want)
    # Beta(alpha, alpha): small alpha puts lam near 0 or 1, alpha 1 is uniform
    g = gen(7)
    lams = torch.tensor([mixup(x, y, alpha=0.1, generator=g)[3] for _ in range(400)])
    assert ((lams < 0.1) | (lams > 0.9)).float().mean() > 0.6
    lams = torch.tensor([mixup(x, y, alpha=1.0, generator=g)[3] for _ in range(400)])
    assert abs(float(lams.mean()) - 0.5) < 0.05 and 0.2 < float((lams < 0.3).float().mean()) < 0.4
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, y, alpha=0.0, generator=g)


class Spy(nn.Module):
    """Linear classifier on (B, F, T) that keeps every training input it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6 * 10, 2)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, lengths=None):
        if self.training:
            self.inputs.append(x.detach().clone())
        return self.lin(x.flatten(1)), {}


def data(n: int, seed: int) -> ArrayData:
    g = gen(seed)
    y = torch.arange(n) % 2
    return ArrayData(x=torch.randn(n, 6, 10, generator=g) + y[:, None, None].float(), y=y)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=2, batch_size=8, lr=1e-2, device="cpu", progress=False, seed=2), **kw})


def test_trainer_masks_training_batches_only_and_is_reproducible():
    train, val = data(32, 1), data(8, 2)
    set_seed(0)
    m = Spy()
    Trainer(m, cfg(specaug_freq_masks=1, specaug_freq_width=3, specaug_time_masks=1, specaug_time_width=4)).fit(
        train, val)
    assert len(m.inputs) == 8  # 2 epochs x 4 batches, no evaluation input recorded
    assert any((x == 0).all(dim=2).any() for x in m.inputs)  # whole frequency bands zeroed in training batches
    set_seed(0)
    again = Spy()
    Trainer(again, cfg(specaug_freq_masks=1, specaug_freq_width=3, specaug_time_masks=1, specaug_time_width=4)).fit(
        train, val)
    assert all(torch.equal(a, b) for a, b in zip(m.inputs, again.inputs))
    set_seed(0)
    plain = Spy()
    Trainer(plain, cfg()).fit(train, val)
    assert not any((x == 0).all(dim=2).any() for x in plain.inputs)


def test_trainer_mixup_changes_inputs_and_resumes_the_same_stream(tmp_path):
    train, val = data(32, 1), data(8, 2)
    common = dict(mixup_alpha=0.4, specaug_time_masks=1, specaug_time_width=3, epochs=4)
    set_seed(0)
    full = Trainer(Spy(), cfg(**common))
    r_full = full.fit(train, val)
    seen = torch.cat(full.model.inputs[:4])  # the first epoch's 32 training inputs
    unchanged = sum(any(torch.equal(row, o) for o in train.x) for row in seen)
    assert unchanged <= 4  # mixed with a partner (one whose partner is itself stays as it was)
    set_seed(0)
    Trainer(Spy(), cfg(**{**common, "epochs": 2}, checkpoint_dir=str(tmp_path))).fit(train, val)
    set_seed(99)
    resumed = Trainer(Spy(), cfg(**common, checkpoint_dir=str(tmp_path)))
    r_res = resumed.fit(train, val, resume=True)
    assert [h["train_loss"] for h in r_full.history] == [h["train_loss"] for h in r_res.history]


def test_augmentation_config_checks():
    with pytest.raises(ValueError, match="mixup_alpha"):
        TrainConfig(mixup_alpha=-1)
    with pytest.raises(ValueError, match="specaug_time_width"):
        TrainConfig(specaug_time_width=-2)
    assert not TrainConfig().augments and TrainConfig(mixup_alpha=0.2).augments
    assert not TrainConfig(specaug_time_masks=2).augments  # width 0: nothing to mask


def test_a_checkpoint_from_before_the_augmentation_fields_still_resumes(tmp_path):
    train, val = data(32, 1), data(8, 2)
    set_seed(0)
    Trainer(Spy(), cfg(checkpoint_dir=str(tmp_path))).fit(train, val)
    path = tmp_path / "last.pt"
    ckpt = torch.load(path, weights_only=False)
    for k in [k for k in ckpt["config"] if k.startswith(("specaug_", "mixup_"))]:
        del ckpt["config"][k]  # as written before these fields existed
    del ckpt["rng"]["augment"]
    torch.save(ckpt, path)
    result = Trainer(Spy(), cfg(epochs=3, checkpoint_dir=str(tmp_path))).fit(train, val, resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    with pytest.raises(Exception, match="mixup_alpha"):  # a real change of the field is still refused
        Trainer(Spy(), cfg(epochs=4, mixup_alpha=0.2, checkpoint_dir=str(tmp_path))).fit(train, val, resume=True)
