"""Training-time batch augmentation the trainer applies to any model's input: SpecAugment-style masking and mixup.

Pure functions on tensors; randomness only from the ``torch.Generator`` passed in (the trainer's own, saved in its
checkpoints), so a run is reproducible and a resumed run continues the same stream. Nothing here knows what the
features mean beyond which axis is frequency and which is time.

* :func:`spec_augment`: Park et al. 2019, "SpecAugment": per example, ``freq_masks`` bands of ``0..freq_width``
  consecutive frequency bins and ``time_masks`` spans of ``0..time_width`` frames set to ``fill`` (0: the mean of
  standardised features). Widths and starts are drawn independently per example and mask; a span never leaves the
  feature map (start uniform in ``[0, size - width]``), and with ``lengths`` a time span stays inside the example's
  valid frames.
* :func:`mixup`: Zhang et al. 2018, "mixup": one ``lam ~ Beta(alpha, alpha)`` per batch, ``x' = lam x + (1 - lam)
  x[perm]``; the loss is ``lam L(y) + (1 - lam) L(y[perm])`` (:func:`mixup_loss`), so any loss works, focal included.
* :func:`speed_perturb`: Ko et al. 2015, "Audio augmentation for speech recognition" (Kaldi's speed perturbation):
  a waveform played ``factor`` times faster, tempo and pitch together, by polyphase resampling
  (``scipy.signal.resample_poly``). Deterministic, so its features are computed once per factor and cached
  (:mod:`serlib.speed_perturb` adds the perturbed copies of the training part as a view).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from scipy.signal import resample_poly
from torch import Tensor


def _spans(n: int, masks: int, width: int, size: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``masks`` spans per example: widths uniform in ``0..min(width, size)`` and starts uniform in
    ``0..size - w``. size (n,) long, the axis length per example. Returns start, width: (n, masks) long (CPU)."""
    u_w = torch.rand((n, masks), generator=generator)
    u_s = torch.rand((n, masks), generator=generator)
    cap = torch.clamp(size.view(n, 1), max=width)
    w = torch.floor(u_w * (cap + 1).float()).long()
    s = torch.floor(u_s * (size.view(n, 1) - w + 1).float()).long()
    return s, w


def _band_mask(start: Tensor, width: Tensor, size: int) -> Tensor:
    """(n, size) bool: True inside any of the (n, masks) spans ``[start, start + width)``."""
    idx = torch.arange(size).view(1, 1, size)
    inside = (idx >= start.unsqueeze(-1)) & (idx < (start + width).unsqueeze(-1))
    return inside.any(dim=1)


def spec_augment(x: Tensor, *, generator: torch.Generator, freq_masks: int = 0, freq_width: int = 0,
                 time_masks: int = 0, time_width: int = 0, freq_axis: int = -2, time_axis: int = -1,
                 lengths: Tensor | None = None, fill: float = 0.0) -> Tensor:
    """Frequency and time masking of a batch.

    x: (B, ...) features with a frequency axis and a time axis (``freq_axis`` / ``time_axis``, indices into x's
    dims, negative allowed, neither 0); lengths: (B,) valid frames per example, or None (all). Returns a new tensor
    of x's shape and dtype; x is not modified. With no masks (or widths 0) x itself is returned.
    """
    if x.dim() < 3:
        raise ValueError(f"spec_augment needs (B, ..., F, ..., T, ...) features, got shape {tuple(x.shape)}")
    fa, ta = freq_axis % x.dim(), time_axis % x.dim()
    if 0 in (fa, ta) or fa == ta:
        raise ValueError(f"freq_axis {freq_axis} and time_axis {time_axis} must be two different non-batch axes "
                         f"of a {x.dim()}-d input")
    do_f, do_t = freq_masks > 0 and freq_width > 0, time_masks > 0 and time_width > 0
    if not (do_f or do_t):
        return x
    b, n_f, n_t = x.shape[0], x.shape[fa], x.shape[ta]
    keep = torch.ones((b, n_f, n_t), dtype=torch.bool)
    if do_f:
        s, w = _spans(b, freq_masks, freq_width, torch.full((b,), n_f), generator)
        keep &= ~_band_mask(s, w, n_f).unsqueeze(-1)
    if do_t:
        valid = torch.full((b,), n_t) if lengths is None else lengths.detach().cpu().long().clamp(0, n_t)
        s, w = _spans(b, time_masks, time_width, valid, generator)
        keep &= ~_band_mask(s, w, n_t).unsqueeze(1)
    # (B, F, T) -> x's layout: put F and T at their axes, size-1 elsewhere
    shape = [1] * x.dim()
    shape[0], shape[fa], shape[ta] = b, n_f, n_t
    order = sorted([(fa, 1), (ta, 2)])
    keep = keep.permute(0, *[k for _, k in order]).reshape(shape).to(x.device)
    return torch.where(keep, x, torch.as_tensor(fill, dtype=x.dtype, device=x.device))


def mixup(x: Tensor, y: Tensor, *, alpha: float, generator: torch.Generator,
          lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, float, Tensor | None]:
    """Mix each example with a random partner of the same batch.

    x: (B, ...), y: (B,) labels, lengths: (B,) or None. Returns ``(x_mixed, y, y_partner, lam, lengths_mixed)``
    with ``lam ~ Beta(alpha, alpha)`` drawn once per batch (by the inverse CDF of one uniform from ``generator``)
    and ``lengths_mixed`` the longer of each pair (None without lengths). ``alpha`` must be > 0.
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    from scipy.stats import beta

    u = float(torch.rand((), generator=generator))
    lam = float(beta.ppf(u, alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    mixed = lam * x + (1.0 - lam) * x[perm]
    mixed_lengths = None if lengths is None else torch.maximum(lengths, lengths[perm])
    return mixed.to(x.dtype), y, y[perm], lam, mixed_lengths


def mixup_loss(loss_fn, logits: Tensor, y: Tensor, y_partner: Tensor, lam: float, **kw) -> Tensor:
    """``lam loss_fn(logits, y) + (1 - lam) loss_fn(logits, y_partner)`` (keyword arguments passed to both)."""
    return lam * loss_fn(logits, y, **kw) + (1.0 - lam) * loss_fn(logits, y_partner, **kw)


SPEED_RANGE = (0.5, 2.0)  # factors outside this are almost certainly a typo (0.9 written as 9, or 1.1 as 11)


def speed_fraction(factor: float) -> Fraction:
    """``factor`` as the small fraction p / q the resampler uses (denominator at most 100: 0.9 -> 9/10). Raises
    ValueError outside :data:`SPEED_RANGE`."""
    f = float(factor)
    if not (SPEED_RANGE[0] <= f <= SPEED_RANGE[1]):
        raise ValueError(f"speed factor {factor!r} outside {SPEED_RANGE}: use e.g. 0.9 and 1.1 (10 % slower / faster)")
    return Fraction(f).limit_denominator(100)


def speed_perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """The waveform played ``factor`` times faster (tempo and pitch scale together, as in Kaldi's
    ``speed`` perturbation): wave (n,) float at any rate -> (ceil(n * q / p),) float32 at the same rate, where
    p / q = :func:`speed_fraction` (factor). A tone at f Hz comes out at ``factor * f`` Hz; factor 1 returns a copy."""
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"speed_perturb needs a mono (n,) waveform, got shape {x.shape}")
    frac = speed_fraction(factor)
    if frac == 1:
        return x.copy()
    return resample_poly(x, up=frac.denominator, down=frac.numerator).astype(np.float32)
