"""Segmentation and padding against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serlib.data.segment import (
    aggregate_segments,
    center_pad_or_crop,
    fixed_windows,
    lengths_to_mask,
    n_windows,
    pad_sequences,
    segment_batch,
    tile_to,
)

SR = 16000


def test_head_fusion_window_counts():
    y = np.arange(int(5.3 * SR), dtype=np.float32)  # 84800 samples
    train = fixed_windows(y, win=2 * SR, step=SR)
    test = fixed_windows(y, win=2 * SR, step=int(0.4 * SR))
    assert train.shape == (4, 32000) and test.shape == (9, 32000)
    # windows start at 0, 1, 2, 3 s; the last 0.3 s (beyond 5 s) is dropped
    assert train[:, 0].tolist() == [0, 16000, 32000, 48000]
    assert train[3, -1] == 48000 + 31999
    assert test[:, 0].tolist() == [6400 * k for k in range(9)]
    assert test[8, -1] == 51200 + 31999 < len(y) - 1
    assert n_windows(len(y), win=32000, step=6400) == 9
    assert n_windows(32000, win=32000, step=16000) == 1 and n_windows(31999, win=32000, step=16000) == 0


def test_windows_are_copies_of_the_signal(rng):
    y = rng.standard_normal(1000).astype(np.float32)
    w = fixed_windows(y, win=300, step=250)
    assert w.shape == (3, 300) and w.flags.writeable
    np.testing.assert_array_equal(w[2], y[500:800])
    w[0, 0] = 99.0
    assert y[0] != 99.0


def test_short_clip_policies():
    y = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert fixed_windows(y, win=8, step=4, short="drop").shape == (0, 8)
    np.testing.assert_array_equal(fixed_windows(y, win=8, step=4, short="pad"), [[1, 2, 3, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(
        fixed_windows(y, win=8, step=4, short="keep_one"), [[1, 2, 3, 1, 2, 3, 1, 2]]
    )
    with pytest.raises(ValueError, match="short must be"):
        fixed_windows(y, win=8, step=4, short="zero")
    with pytest.raises(ValueError, match="1-D"):
        fixed_windows(np.zeros((2, 10)), win=4, step=2)


def test_segment_batch_groups_and_too_short():
    waves = [np.ones(10), np.ones(3), np.ones(8), np.ones(4)]
    r = segment_batch(waves, win=4, step=2)
    # 10 samples -> starts 0,2,4,6 (4 windows); 3 -> none; 8 -> 0,2,4 (3); 4 -> 0 (1)
    assert r.segments.shape == (8, 4) and r.segments.dtype == np.float32
    assert r.groups.tolist() == [0, 0, 0, 0, 2, 2, 2, 3]
    assert r.n_segments.tolist() == [4, 0, 3, 1]
    assert r.too_short_ids == [1] and r.n_too_short == 1 and r.n_utts == 4
    # the authors' rule: drop utterances of win samples or less, even one that fits exactly one window
    r2 = segment_batch(waves, win=4, step=2, min_len=4)
    assert r2.too_short_ids == [1, 3] and r2.groups.tolist() == [0, 0, 0, 0, 2, 2, 2]
    r3 = segment_batch(waves, win=4, step=2, short="pad")
    assert r3.too_short_ids == [] and r3.groups.tolist() == [0, 0, 0, 0, 1, 2, 2, 2, 3]
    np.testing.assert_array_equal(r3.segments[4], [1, 1, 1, 0])
    empty = segment_batch([np.ones(2)], win=4, step=2)
    assert empty.segments.shape == (0, 4) and empty.groups.shape == (0,) and empty.n_too_short == 1


def test_aggregate_segments_mean_and_max():
    vals = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]], dtype=np.float32)
    groups = np.array([0, 0, 2])
    m = aggregate_segments(vals, groups, n_groups=4)
    np.testing.assert_allclose(m[[0, 2]], [[2.0, 1.0], [5.0, 5.0]])
    assert np.isnan(m[1]).all() and np.isnan(m[3]).all() and m.dtype == np.float32
    mx = aggregate_segments(vals, groups, how="max")
    np.testing.assert_allclose(mx[[0, 2]], [[3.0, 2.0], [5.0, 5.0]])
    assert mx.shape == (3, 2) and np.isnan(mx[1]).all()
    t = aggregate_segments(torch.tensor(vals), torch.tensor(groups))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    torch.testing.assert_close(t[0], torch.tensor([2.0, 1.0]))


def test_center_pad_or_crop_by_hand():
    y = np.arange(1, 6, dtype=np.float32)  # [1 2 3 4 5]
    np.testing.assert_array_equal(center_pad_or_crop(y, 8), [0, 1, 2, 3, 4, 5, 0, 0])  # left 1, right 2
    np.testing.assert_array_equal(center_pad_or_crop(y, 9), [0, 0, 1, 2, 3, 4, 5, 0, 0])
    np.testing.assert_array_equal(center_pad_or_crop(y, 3), [2, 3, 4])  # start (5-3)//2 = 1
    np.testing.assert_array_equal(center_pad_or_crop(y, 2), [2, 3])  # start 1
    np.testing.assert_array_equal(center_pad_or_crop(y, 5), y)
    six = center_pad_or_crop(np.ones(int(7.5 * SR)), 6 * SR)
    assert six.shape == (96000,)
    out = center_pad_or_crop(torch.arange(1.0, 6.0)[None], 8)
    assert out.shape == (1, 8) and out[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 0]
    assert center_pad_or_crop(torch.arange(1.0, 6.0), 3).tolist() == [2, 3, 4]


def test_tile_to():
    y = np.array([1, 2, 3])
    np.testing.assert_array_equal(tile_to(y, 7), [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(tile_to(y, 3), y)
    np.testing.assert_array_equal(tile_to(np.arange(10), 3), np.arange(10))  # longer clips are not cropped
    assert tile_to(np.ones(int(1.3 * SR)), 3 * SR).shape == (48000,)
    assert tile_to(torch.tensor([1.0, 2.0]), 5).tolist() == [1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="empty"):
        tile_to(np.zeros(0), 4)


def test_pad_sequences_and_mask():
    a = np.ones((3, 4), dtype=np.float64)
    b = torch.full((3, 2), 2.0)
    x, lengths = pad_sequences([a, b])
    assert x.shape == (2, 3, 4) and x.dtype == torch.float32
    assert lengths.tolist() == [4, 2] and lengths.dtype == torch.long
    assert x[1, :, 2:].abs().sum() == 0 and (x[1, :, :2] == 2).all() and (x[0] == 1).all()
    mask = lengths_to_mask(lengths)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert lengths_to_mask(torch.tensor([1, 3]), 5).tolist() == [
        [True, False, False, False, False],
        [True, True, True, False, False],
    ]
    with pytest.raises(ValueError, match="expected"):
        pad_sequences([np.ones((3, 4)), np.ones((2, 4))])
