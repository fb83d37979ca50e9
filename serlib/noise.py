"""Noise mixing for the Head Fusion paper's noise studies (ESC-50 noise added to speech): pure torch functions.

One noise clip per utterance (:func:`make_condition` draws it, deterministically given a seed), tiled when
shorter than the utterance and started at a time offset (:func:`tile_noise`), scaled by the amplitude factor AF
and added (:func:`mix`). Every function is batched where it makes sense and runs on whatever device its tensors
are on.

SNR, recorded per utterance by :func:`mix` (both are computed on the clean speech and the AF-scaled noise, before
any clipping):

* ``snr_eq3_db``: the paper's Eq. 3, ``20 log10( mean|s| / (mean|n| * AF) )`` (mean absolute amplitudes);
* ``snr_power_db``: the usual power SNR, ``10 log10( mean s^2 / mean (AF n)^2 )``.

A condition (the list of ``(utterance, noise clip, offset, AF)``) is stored once, named by
:func:`condition_hash`, so a record that references the hash can re-create the noisy data exactly.

Bad noise clips: :func:`check_noise` raises :class:`NoiseError` naming the clip when it is empty, shorter than
``MIN_NOISE_S`` or silent (mean absolute amplitude below ``SILENCE_ABS``). Callers that draw from a corpus filter
with :func:`usable_noise`, which returns the usable ids and a counted skip list ``[{"noise", "reason"}]``; a clip
never reaches :func:`mix` silently (:func:`mix` raises on silent noise rows with AF > 0 as well).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

CATEGORIES = ("D-S", "D-L", "C-S", "C-L")
CLIP_POLICIES = ("rescale", "clip", "none")
MIN_NOISE_S = 0.1  # a clip shorter than this cannot be tiled meaningfully (it would be a buzz at 1/len Hz)
SILENCE_ABS = 1e-5  # mean |x| below this (about -100 dBFS) counts as digital silence


class NoiseError(ValueError):
    """A noise clip that cannot be used; ``noise`` names the clip and ``reason`` says why."""

    def __init__(self, noise: str, reason: str):
        self.noise = str(noise)
        self.reason = reason
        super().__init__(f"noise clip {noise}: {reason}")


def check_noise(noise, *, sr: int, name: str = "<unnamed>", min_s: float = MIN_NOISE_S) -> None:
    """Raise :class:`NoiseError` naming ``name`` if the 1-D clip is empty, shorter than ``min_s`` or silent."""
    x = torch.as_tensor(noise)
    if x.ndim != 1:
        raise NoiseError(name, f"expected a 1-D waveform, got shape {tuple(x.shape)}")
    n_min = int(round(min_s * sr))
    if x.numel() == 0:
        raise NoiseError(name, "clip is empty (0 samples); drop it from the noise list")
    if x.numel() < n_min:
        raise NoiseError(
            name,
            f"clip has {x.numel()} samples, fewer than {n_min} ({min_s} s at {sr} Hz); drop it or lower min_s",
        )
    if not torch.isfinite(x).all():
        raise NoiseError(name, "clip contains NaN or infinite samples")
    if float(x.abs().mean()) < SILENCE_ABS:
        raise NoiseError(name, f"clip is silent (mean |x| < {SILENCE_ABS}); Eq. 3's SNR would be infinite")


def usable_noise(clips: Mapping[str, object], *, sr: int, min_s: float = MIN_NOISE_S):
    """Split ``{noise_id: waveform}`` into usable ids (sorted) and a counted skip list ``[{"noise", "reason"}]``."""
    ok, skipped = [], []
    for nid in sorted(clips):
        try:
            check_noise(clips[nid], sr=sr, name=nid, min_s=min_s)
        except NoiseError as e:
            skipped.append({"noise": nid, "reason": e.reason})
        else:
            ok.append(nid)
    return ok, skipped


def tile_noise(noise: torch.Tensor, n_samples: int, offset_samples: int = 0, *, name: str = "<unnamed>"):
    """``noise`` (L,) -> (n_samples,) with ``out[i] = noise[(offset_samples + i) % L]``.

    The clip is repeated (concatenated with itself, as the paper does) when shorter than what is needed, and
    the start is shifted by ``offset_samples`` (wrapping around the clip). An empty clip raises :class:`NoiseError`.
    """
    x = torch.as_tensor(noise)
    if x.ndim != 1:
        raise NoiseError(name, f"expected a 1-D waveform, got shape {tuple(x.shape)}")
    L = x.shape[0]
    if L == 0:
        raise NoiseError(name, "clip is empty (0 samples); cannot tile it")
    if n_samples < 0 or offset_samples < 0:
        raise ValueError(f"n_samples and offset_samples must be >= 0, got {n_samples}, {offset_samples}")
    idx = (torch.arange(n_samples, device=x.device) + int(offset_samples)) % L
    return x[idx]


def _lengths_mask(B: int, N: int, lengths, device) -> torch.Tensor:
    if lengths is None:
        return torch.ones(B, N, dtype=torch.bool, device=device)
    lens = torch.as_tensor(lengths, device=device).reshape(-1)
    assert lens.shape == (B,), f"lengths must be ({B},), got {tuple(lens.shape)}"
    return torch.arange(N, device=device)[None, :] < lens[:, None]


def mix(speech: torch.Tensor, noise: torch.Tensor, af, *, clip: str = "rescale", lengths=None):
    """Add ``af * noise`` to ``speech``; return ``(noisy, info)``.

    speech, noise: (B, N) on one device (noise already tiled/offset to N samples, see :func:`tile_noise`).
    af: a float or a (B,) tensor of amplitude factors (AF = 0 leaves the row clean; its SNRs are +inf).
    lengths: optional (B,) valid lengths of padded rows; only ``[:length]`` enters the SNRs and the peak, and the
    padding of the output stays exactly zero.

    Clipping policy (``clip``), applied after adding, per utterance:

    * ``"rescale"`` (default): if the mixture's peak exceeds 1.0, the whole mixture (speech and noise together) is
      divided by its peak, so nothing clips and the SNR is unchanged; ``info["scale"]`` holds the factor (1.0 when
      untouched).
    * ``"clip"``: samples are hard-clipped to [-1, 1]; ``info["n_clipped"]`` counts them. The effective SNR then
      differs from the recorded one (which is computed before clipping).
    * ``"none"``: the sum is returned as is.

    info (each (B,), on the input device): ``af``, ``snr_eq3_db`` (Eq. 3, mean absolute amplitudes),
    ``snr_power_db`` (power ratio), ``scale``, ``n_clipped``. A row whose noise is silent while AF > 0 raises
    :class:`NoiseError` (naming the row index).
    """
    if clip not in CLIP_POLICIES:
        raise ValueError(f"clip must be one of {CLIP_POLICIES}, got {clip!r}")
    assert speech.ndim == 2 and speech.shape == noise.shape, (
        f"speech and noise must both be (B, N), got {tuple(speech.shape)} and {tuple(noise.shape)}"
    )
    B, N = speech.shape
    dev, dt = speech.device, speech.dtype
    a = torch.as_tensor(af, dtype=dt, device=dev)
    a = a.expand(B).clone() if a.ndim == 0 else a.reshape(-1)
    assert a.shape == (B,), f"af must be a float or ({B},), got {tuple(a.shape)}"
    if (a < 0).any():
        raise ValueError(f"af must be >= 0, got {a.tolist()}")
    m = _lengths_mask(B, N, lengths, dev).to(dt)
    count = m.sum(1).clamp_min(1)
    noise = noise.to(dt) * m
    speech = speech * m
    scaled = a[:, None] * noise
    s_abs = speech.abs().sum(1) / count
    n_abs = noise.abs().sum(1) / count
    silent = (n_abs < SILENCE_ABS) & (a > 0)
    if silent.any():
        rows = torch.nonzero(silent).flatten().tolist()
        raise NoiseError(f"rows {rows}", "noise is silent over the utterance (Eq. 3's SNR would be infinite)")
    s_pow = speech.pow(2).sum(1) / count
    n_pow = scaled.pow(2).sum(1) / count
    inf = torch.full_like(a, math.inf)
    snr_eq3 = torch.where(a > 0, 20 * torch.log10(s_abs / (n_abs * a).clamp_min(1e-30)), inf)
    snr_pow = torch.where(a > 0, 10 * torch.log10(s_pow / n_pow.clamp_min(1e-30)), inf)
    noisy = speech + scaled
    scale = torch.ones_like(a)
    n_clipped = torch.zeros(B, dtype=torch.long, device=dev)
    if clip == "rescale":
        peak = noisy.abs().amax(1)
        scale = torch.where(peak > 1.0, 1.0 / peak, scale)
        noisy = noisy * scale[:, None]
    elif clip == "clip":
        n_clipped = (noisy.abs() > 1.0).sum(1)
        noisy = noisy.clamp(-1.0, 1.0)
    info = {"af": a, "snr_eq3_db": snr_eq3, "snr_power_db": snr_pow, "scale": scale, "n_clipped": n_clipped}
    return noisy, info


def _pick(key: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n


def make_condition(
    utt_ids: Sequence[str], noise_ids: Sequence[str], *, af: float, offset_s: float, seed: int
) -> list[dict]:
    """One noise clip per utterance: ``[{"utt", "noise", "offset_s", "af"}]`` in the order of ``utt_ids``.

    The clip of each utterance is ``sorted(noise_ids)[sha256(f"{seed}|{utt}") % len(noise_ids)]``: deterministic
    given the seed, independent of the order of both lists and of numpy's generator, and an utterance keeps its
    clip when others are added or removed.
    """
    pool = sorted(set(map(str, noise_ids)))
    if not pool:
        raise ValueError("make_condition: noise_ids is empty (every clip skipped?); nothing to draw from")
    if af < 0 or offset_s < 0:
        raise ValueError(f"af and offset_s must be >= 0, got af={af}, offset_s={offset_s}")
    if len(set(utt_ids)) != len(utt_ids):
        raise ValueError("make_condition: utt_ids contains duplicates")
    return [
        {
            "utt": str(u),
            "noise": pool[_pick(f"{seed}|{u}", len(pool))],
            "offset_s": float(offset_s),
            "af": float(af),
        }
        for u in utt_ids
    ]


def condition_hash(condition: Sequence[Mapping]) -> str:
    """16 hex digits of the sha256 of the condition's canonical JSON (rows sorted by utterance)."""
    rows = sorted(
        (
            {
                "utt": str(r["utt"]),
                "noise": str(r["noise"]),
                "offset_s": float(r["offset_s"]),
                "af": float(r["af"]),
            }
            for r in condition
        ),
        key=lambda r: r["utt"],
    )
    blob = json.dumps(rows, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_condition(condition: Sequence[Mapping], folder: str | Path) -> Path:
    """Store the condition once as ``<folder>/<condition_hash>.json`` (kept if already there); return the path."""
    h = condition_hash(condition)
    p = Path(folder) / f"{h}.json"
    if not p.is_file():
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"hash": h, "rows": list(map(dict, condition))}, indent=1) + "\n")
        tmp.replace(p)
    return p


def read_condition(path: str | Path) -> list[dict]:
    """Read a stored condition; raises ``ValueError`` naming the file when its content does not match its hash."""
    p = Path(path)
    d = json.loads(p.read_text())
    rows = d["rows"]
    if condition_hash(rows) != d.get("hash"):
        raise ValueError(
            f"{p}: condition rows do not match the stored hash {d.get('hash')}; the file was edited"
        )
    return rows


def split_noise_types(
    categories: Mapping[str, str], *, train_frac: float = 0.8, seed: int
) -> tuple[list[str], list[str]]:
    """Split noise types (ESC-50 classes) into train and test types, within each category (the paper's Fig. 4(c)).

    categories: ``{type: category}``. Per category the types are shuffled (seeded by ``seed`` and the category's
    name) and the first ``round(train_frac * n)`` go to training, clamped so that a category with 2 or more types
    has at least one on each side (a category with one type goes to training). Returns sorted, disjoint lists.
    """
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must lie in (0, 1), got {train_frac}")
    by_cat: dict[str, list[str]] = {}
    for t, c in categories.items():
        by_cat.setdefault(str(c), []).append(str(t))
    train, test = [], []
    for c in sorted(by_cat):
        types = sorted(by_cat[c])
        rng = np.random.default_rng([int(seed), _pick(c, 2**32)])
        types = [types[i] for i in rng.permutation(len(types))]
        n = len(types)
        k = n if n == 1 else min(max(int(round(train_frac * n)), 1), n - 1)
        train += types[:k]
        test += types[k:]
    return sorted(train), sorted(test)


__all__ = [
    "CATEGORIES",
    "CLIP_POLICIES",
    "MIN_NOISE_S",
    "NoiseError",
    "check_noise",
    "condition_hash",
    "make_condition",
    "mix",
    "read_condition",
    "split_noise_types",
    "tile_noise",
    "usable_noise",
    "write_condition",
]
