"""Segmentation, fixed-length padding and segment-to-utterance aggregation (pure functions, numpy + torch).

Policies of the papers:

- Head Fusion: 2-s windows, train step 1 s, test step 0.4 s; the remainder shorter than a window is dropped and the
  authors drop utterances of 2 s or less (``min_len=win``). Utterance output = mean of its segments' outputs.
- ECA: every utterance fixed to 6 s by centre zero-padding or centre cropping (:func:`center_pad_or_crop`).
- CA-SER: clips shorter than 3 s are repeated up to 3 s (:func:`tile_to`); longer clips are kept whole.
- Variable-length models: :func:`pad_sequences` + :func:`lengths_to_mask`.

All lengths here are in samples (or frames); convert seconds with ``round(seconds * sr)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

SHORT_POLICIES = ("drop", "pad", "keep_one")


def n_windows(n: int, *, win: int, step: int) -> int:
    """Number of full windows of ``win`` samples every ``step`` in a signal of ``n`` samples."""
    if win <= 0 or step <= 0:
        raise ValueError(f"win and step must be positive, got win={win} step={step}")
    return 0 if n < win else 1 + (n - win) // step


def fixed_windows(y: np.ndarray, *, win: int, step: int, short: str = "drop") -> np.ndarray:
    """Windows of ``win`` samples every ``step`` samples, shape (n, win); the remainder shorter than ``win`` is
    dropped (Head Fusion). A 5.3-s clip at 16 kHz with win 2 s gives 4 windows at step 1 s and 9 at step 0.4 s.

    ``short`` decides what a clip shorter than one window gives:
    "drop" -> no window, shape (0, win); "pad" -> one window, the clip followed by zeros;
    "keep_one" -> one window, the clip repeated until it fills the window (no silence, :func:`tile_to`).
    """
    if short not in SHORT_POLICIES:
        raise ValueError(f"short must be one of {SHORT_POLICIES}, got {short!r}")
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {y.shape}")
    n = n_windows(len(y), win=win, step=step)
    if n > 0:
        return np.lib.stride_tricks.sliding_window_view(y, win)[::step][:n].copy()
    if short == "drop" or len(y) == 0:
        return np.zeros((0, win), dtype=y.dtype)
    if short == "pad":
        out = np.zeros((1, win), dtype=y.dtype)
        out[0, : len(y)] = y
        return out
    return tile_to(y, win)[None, :win]


@dataclass
class SegmentResult:
    """Segments of a batch of utterances.

    segments: (N, win) float32; groups: (N,) int64 index of the source utterance in the input list;
    n_segments: (n_utts,) segments per utterance; too_short_ids: indices of utterances that gave no segment
    (shorter than a window with short="drop", or not longer than ``min_len``).
    """

    segments: np.ndarray
    groups: np.ndarray
    n_segments: np.ndarray
    too_short_ids: list[int]

    @property
    def n_too_short(self) -> int:
        return len(self.too_short_ids)

    @property
    def n_utts(self) -> int:
        return len(self.n_segments)


def segment_batch(
    waves: Sequence[np.ndarray], *, win: int, step: int, short: str = "drop", min_len: int | None = None
) -> SegmentResult:
    """Cut every waveform into windows (:func:`fixed_windows`) and stack them, remembering the source utterance.

    ``min_len``: utterances of ``min_len`` samples or fewer are skipped entirely (the Head Fusion authors drop
    utterances of 2 s or less: ``min_len=win``). Skipped utterances are listed in ``too_short_ids``.
    """
    segs, groups, counts, too_short = [], [], [], []
    for i, y in enumerate(waves):
        y = np.asarray(y, dtype=np.float32)
        w = (
            np.zeros((0, win), np.float32)
            if min_len is not None and len(y) <= min_len
            else fixed_windows(y, win=win, step=step, short=short)
        )
        counts.append(len(w))
        if len(w) == 0:
            too_short.append(i)
            continue
        segs.append(w)
        groups.append(np.full(len(w), i, dtype=np.int64))
    segments = np.concatenate(segs).astype(np.float32, copy=False) if segs else np.zeros((0, win), np.float32)
    group_arr = np.concatenate(groups) if groups else np.zeros(0, np.int64)
    return SegmentResult(segments, group_arr, np.asarray(counts, dtype=np.int64), too_short)


def aggregate_segments(values, groups, *, n_groups: int | None = None, how: str = "mean"):
    """Utterance-level outputs from segment-level ones: ``values`` (N, C), ``groups`` (N,) -> (n_groups, C).

    ``how``: "mean" (Head Fusion: mean of the segments' outputs) or "max". Utterances without segments get NaN
    rows. Works on numpy arrays or torch tensors (returns the same kind).
    """
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    is_torch = isinstance(values, torch.Tensor)
    v = values.detach().cpu().double().numpy() if is_torch else np.asarray(values, dtype=np.float64)
    g = groups.cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
    squeeze = v.ndim == 1
    v = v[:, None] if squeeze else v
    if len(v) != len(g):
        raise ValueError(f"values has {len(v)} rows but groups has {len(g)}")
    n = int(g.max()) + 1 if n_groups is None else int(n_groups)
    if how == "mean":
        sums = np.zeros((n, v.shape[1]))
        np.add.at(sums, g, v)
        counts = np.bincount(g, minlength=n)[:, None].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = sums / counts
    else:
        out = np.full((n, v.shape[1]), -np.inf)
        np.maximum.at(out, g, v)
        out[np.bincount(g, minlength=n) == 0] = np.nan
    out = out[:, 0] if squeeze else out
    if is_torch:
        return torch.as_tensor(out, dtype=values.dtype)
    return out.astype(np.result_type(values.dtype, np.float32)) if hasattr(values, "dtype") else out


def center_pad_or_crop(y, n: int):
    """Fix the last axis to ``n`` samples (ECA's 6 s): centre zero-padding if shorter (left gets
    ``(n - L) // 2`` zeros, right the rest), centre crop if longer (start at ``(L - n) // 2``).
    Accepts numpy arrays or torch tensors."""
    L = y.shape[-1]
    if L == n:
        return y.clone() if isinstance(y, torch.Tensor) else np.array(y, copy=True)
    if L > n:
        start = (L - n) // 2
        out = y[..., start : start + n]
        return out.clone() if isinstance(y, torch.Tensor) else np.array(out, copy=True)
    left = (n - L) // 2
    right = n - L - left
    if isinstance(y, torch.Tensor):
        return torch.nn.functional.pad(y, (left, right))
    pad = [(0, 0)] * (y.ndim - 1) + [(left, right)]
    return np.pad(y, pad)


def tile_to(y, n: int):
    """Repeat a clip shorter than ``n`` samples until it reaches ``n``, then cut to exactly ``n`` (CA-SER's 3-s
    minimum). Clips of ``n`` samples or more are returned unchanged (copied, not cropped). Last axis; numpy
    or torch."""
    L = y.shape[-1]
    if L == 0:
        raise ValueError("cannot tile an empty clip")
    if L >= n:
        return y.clone() if isinstance(y, torch.Tensor) else np.array(y, copy=True)
    reps = -(-n // L)
    if isinstance(y, torch.Tensor):
        return y.repeat(*([1] * (y.ndim - 1)), reps)[..., :n]
    return np.tile(y, [1] * (y.ndim - 1) + [reps])[..., :n]


def pad_sequences(seqs: Sequence, *, pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad feature matrices (F, T_i) to a batch: returns x (B, F, T_max) float32 and lengths (B,) int64."""
    if len(seqs) == 0:
        raise ValueError("pad_sequences needs at least one sequence")
    ts = [torch.as_tensor(s) for s in seqs]
    for i, t in enumerate(ts):
        if t.ndim != 2 or t.shape[0] != ts[0].shape[0]:
            raise ValueError(f"sequence {i} has shape {tuple(t.shape)}; expected (F={ts[0].shape[0]}, T)")
    lengths = torch.tensor([t.shape[1] for t in ts], dtype=torch.long)
    x = torch.full((len(ts), ts[0].shape[0], int(lengths.max())), pad_value, dtype=torch.float32)
    for i, t in enumerate(ts):
        x[i, :, : t.shape[1]] = t.to(torch.float32)
    return x, lengths


def lengths_to_mask(lengths, T: int | None = None) -> torch.Tensor:
    """Boolean mask (B, T), True at valid frames (``t < lengths[b]``); ``T`` defaults to ``max(lengths)``."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {tuple(lengths.shape)}")
    T = int(lengths.max()) if T is None else int(T)
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]
