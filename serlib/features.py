"""Batched MFCC / log-Mel features on ``torch.stft`` (CPU or CUDA), equal to librosa 0.11 to a stated tolerance.

Pure functions and module constants; nothing here knows about models or emotions. (Over 450 lines on purpose: the
filterbanks, the STFT, MFCC / log-Mel, the presets of four papers and their length arithmetic are one parity-tested
unit against librosa; split up, a preset would live apart from the functions its parity tolerance is stated for.)

Pipeline (one :class:`FeaturePreset` describes every choice)::

    y (B, T) -> [pre-emphasis as librosa.effects.preemphasis] -> centre padding (librosa: n_fft // 2 each side)
      -> |STFT|^power, window padded to n_fft as librosa -> mel power = librosa.filters.mel @ S
      -> librosa.power_to_db per clip (ref 1.0 or the clip's max, floor amin, clamp at clip max - top_db)
      -> [MFCC: orthonormal DCT-II, keep n_mfcc] -> [L2-normalise each frame vector]

Output is ``(B, n_features, frames)`` (feature bins x frames), the layout the models take.

Zero-padded batches of unequal clips (``compute_with_lengths``): samples beyond a clip's length are treated as zeros
(whatever the array holds there), so the clip's *valid* frames (``preset.n_frames(length)``, librosa's count for that
clip alone) equal librosa on the clip alone when ``pad_mode="constant"``, the librosa 0.11 default; other pad modes
pad each row's own valid samples. The per-clip statistics (``top_db`` clamp, ``ref="max"``) use the valid frames only.
Frames beyond a clip's valid count hold **digital silence under that clip's reference**: their mel power is set to
zero, so a log-Mel frame there is ``max(10 log10(amin) - ref_dB, clip_max_dB - top_db)`` in every bin, an MFCC
frame is the DCT of that constant vector (only c0 non-zero, before the optional frame L2 norm). They never influence
the valid frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import librosa
import numpy as np
import scipy.fft
import scipy.signal
import torch
import torch.nn.functional as F

# Parity with librosa 0.11 (float32 input, as librosa is usually called), asserted by tests/test_features.py for
# every preset; measured over all 1440 RAVDESS clips and every preset. librosa's float32 STFT is numpy's, which is
# accurate to float64 level; torch's float32 FFT is not, which shows in bins near the top_db floor.
LOGMEL_ATOL_DB = 1e-3  # dB, compute_dtype float64 (measured max 1.5e-5: the float32 output rounding)
# dB, compute_dtype float32, the default (measured max 2.2e-3, eca_v1; eca_v3 1.2e-3)
LOGMEL_ATOL_DB_FLOAT32 = 5e-3
MFCC_RTOL_RANGE = 1e-5  # max |ours - librosa| / (max - min of librosa's coefficients) per clip, either dtype
# (measured max 2.2e-6 float32, 1.0e-6 float64, caser_mfcc; head_fusion_mfcc 1.6e-6 / 2.1e-7)


def parity_tolerance(kind: str, compute_dtype: torch.dtype = torch.float32) -> float:
    """The stated tolerance: dB for ``kind="logmel"``, relative to the coefficient range for ``"mfcc"``."""
    if kind == "mfcc":
        return MFCC_RTOL_RANGE
    return LOGMEL_ATOL_DB if compute_dtype == torch.float64 else LOGMEL_ATOL_DB_FLOAT32


# Clips are processed in chunks holding at most this many STFT values (clips x frames x (n_fft // 2 + 1)), which
# bounds memory. On CPU small chunks that stay in cache are fastest (measured on RAVDESS, 1 thread: 2^17..2^18,
# i.e. 1-2 clips of 3.5 s for n_fft 2048, run 2-4x faster than 32-clip chunks).
CHUNK_BINS = {"cpu": 1 << 18, "cuda": 1 << 26}
_NORM_EPS = 1e-12  # frame L2 norm floor: an all-zero frame stays zero instead of NaN

Array = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class FeaturePreset:
    """Every setting that determines the feature numbers. ``notes`` says which choices are a paper's and which ours.

    ``ref="one"`` is librosa's ``ref=1.0``; ``ref="max"`` is ``ref=np.max`` taken per clip. ``top_db`` clamps each
    clip at its own max - top_db (as ``librosa.power_to_db``); ``None`` disables the clamp. ``pre_emphasis`` is the
    ``coef`` of ``librosa.effects.preemphasis`` (including its first-sample convention) or ``None``.
    """

    name: str
    kind: str  # "mfcc" | "logmel"
    n_fft: int
    hop_length: int
    n_mels: int
    win_length: int | None = None  # None = n_fft (librosa default)
    sr: int = 16_000
    n_mfcc: int | None = None  # mfcc only
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"  # librosa 0.11 default
    fmin: float = 0.0
    fmax: float | None = None  # None = sr / 2
    htk: bool = False
    mel_norm: str | None = "slaney"
    power: float = 2.0
    top_db: float | None = 80.0
    ref: str = "one"  # "one" | "max"
    amin: float = 1e-10
    pre_emphasis: float | None = None
    frame_l2norm: bool = False
    dct_norm: str | None = "ortho"
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.win_length is None:
            object.__setattr__(self, "win_length", self.n_fft)
        if self.kind not in ("mfcc", "logmel"):
            raise ValueError(f"{self.name}: kind must be 'mfcc' or 'logmel', got {self.kind!r}")
        if self.kind == "mfcc" and not (self.n_mfcc and 0 < self.n_mfcc <= self.n_mels):
            raise ValueError(
                f"{self.name}: mfcc needs 0 < n_mfcc <= n_mels, got {self.n_mfcc} / {self.n_mels}"
            )
        if self.kind == "logmel" and self.n_mfcc is not None:
            raise ValueError(f"{self.name}: n_mfcc is only for kind='mfcc'")
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(
                f"{self.name}: need 0 < win_length <= n_fft, got {self.win_length} / {self.n_fft}"
            )
        if self.hop_length <= 0:
            raise ValueError(f"{self.name}: hop_length must be positive")
        if self.ref not in ("one", "max"):
            raise ValueError(f"{self.name}: ref must be 'one' or 'max', got {self.ref!r}")
        if self.amin <= 0:
            raise ValueError(f"{self.name}: amin must be positive")

    @property
    def n_features(self) -> int:
        """Feature bins per frame: n_mfcc for MFCC, n_mels for log-Mel."""
        return int(self.n_mfcc) if self.kind == "mfcc" else self.n_mels

    def n_frames(self, n_samples: int) -> int:
        """Frames librosa gives for a clip of ``n_samples`` samples (centre padding n_fft // 2 each side)."""
        n = int(n_samples)
        if self.center:
            return 1 + (n + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length
        if n < self.n_fft:
            raise ValueError(f"{self.name}: {n} samples < n_fft={self.n_fft} with center=False")
        return 1 + (n - self.n_fft) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        """The settings that determine the numbers (``notes`` left out), JSON-ready: a cache-key ingredient."""
        d = asdict(self)
        d.pop("notes")
        return d


def _eca(version: int, win_ms: int) -> FeaturePreset:
    win = 16 * win_ms  # samples at 16 kHz
    return FeaturePreset(
        name=f"eca_v{version}",
        kind="logmel",
        n_fft=1 << (win - 1).bit_length(),
        win_length=win,
        hop_length=160,
        n_mels=64,
        notes=f"ECA (Kim & Kwon) dataset version {version}: window {win_ms} ms / overlap {win_ms - 10} ms, hop 10 ms, "
        "64 mel filters (paper). Ours: Hann window, n_fft = next power of two >= window, Slaney mel, "
        "power dB ref 1.0, top_db 80 (the paper used MATLAB and gives none of these).",
    )


PRESETS: dict[str, FeaturePreset] = {
    p.name: p
    for p in [
        FeaturePreset(
            name="head_fusion_mfcc",
            kind="mfcc",
            n_fft=2048,
            hop_length=512,
            n_mels=128,
            n_mfcc=26,
            notes="Head Fusion (Xu et al. 2021): librosa.feature.mfcc(y, sr=16000, n_mfcc=26), Hann 2048 / hop 512 "
            "(paper + authors' code); everything else librosa defaults (128 mels, power 2, ref 1.0, top_db 80). "
            "A 2-s segment at 16 kHz is 26 x 63.",
        ),
        FeaturePreset(
            name="faca_mfcc",
            kind="mfcc",
            n_fft=512,
            win_length=400,
            hop_length=160,
            n_mels=40,
            n_mfcc=40,
            notes="MHSA-FACA (Kim et al. 2022): MFCC, 16 kHz, 25 ms window, 10 ms hop (authors' earlier code). "
            "Ours: n_fft 512, 40 mels, 40 MFCC (the full DCT of the 40 log-Mel bands), librosa defaults otherwise.",
        ),
        FeaturePreset(
            name="caser_mfcc",
            kind="mfcc",
            n_fft=2048,
            hop_length=160,
            n_mels=128,
            n_mfcc=40,
            htk=True,
            pre_emphasis=0.97,
            frame_l2norm=True,
            notes="CA-SER (Deeb et al. 2024): 40 MFCC, 10 ms hop (paper); pre-emphasis, htk=True, n_fft 2048, "
            "frame L2 norm (authors' code). Ours: pre-emphasis coef 0.97 (librosa default), 128 mels, top_db 80.",
        ),
        FeaturePreset(
            name="moma_fbank23",
            kind="logmel",
            n_fft=512,
            win_length=400,
            hop_length=160,
            n_mels=23,
            notes="MOMA (2020): 23-dimensional log-Mel filterbank (paper). Ours: 25 ms / 10 ms Hann, n_fft 512, "
            "Slaney mel, power dB ref 1.0, top_db 80.",
        ),
        *[_eca(v, w) for v, w in enumerate(range(15, 55, 5), start=1)],
        FeaturePreset(
            name="logmel64",
            kind="logmel",
            n_fft=512,
            win_length=400,
            hop_length=160,
            n_mels=64,
            notes="General-purpose log-Mel (ours): 25 ms / 10 ms Hann, n_fft 512, 64 Slaney mels, dB ref 1.0, top_db 80.",
        ),
    ]
}


def get_preset(preset: str | FeaturePreset) -> FeaturePreset:
    """``preset`` itself, or the named entry of :data:`PRESETS` (clear error listing the names)."""
    if isinstance(preset, FeaturePreset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise KeyError(f"unknown feature preset {preset!r}; known: {sorted(PRESETS)}") from None


# ----------------------------------------------------------------------------------------------- cached constants
@lru_cache(maxsize=64)
def _mel_np(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, htk: bool, norm) -> np.ndarray:
    return librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm, dtype=np.float64
    )


@lru_cache(maxsize=64)
def _dct_np(n_mels: int, n_mfcc: int, norm: str | None) -> np.ndarray:
    """(n_mfcc, n_mels) DCT-II matrix: ``D @ x == scipy.fftpack.dct(x, type=2, norm=norm)[:n_mfcc]``."""
    return scipy.fft.dct(np.eye(n_mels), type=2, norm=norm, axis=0)[:n_mfcc]


@lru_cache(maxsize=64)
def _window_np(window: str, win_length: int, n_fft: int) -> np.ndarray:
    w = scipy.signal.get_window(window, win_length, fftbins=True)
    return librosa.util.pad_center(w, size=n_fft)


MEL_BLOCK = (
    16  # mel filters per block of the block-sparse filterbank product (each block spans only its bins)
)


@lru_cache(maxsize=128)
def _constants(p: FeaturePreset, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Window, mel blocks (lo, hi, W^T[lo:hi, block]) and DCT matrix of ``p`` as tensors on ``device``."""
    mel = _mel_np(p.sr, p.n_fft, p.n_mels, p.fmin, p.fmax, p.htk, p.mel_norm)
    blocks = []
    for m0 in range(0, p.n_mels, MEL_BLOCK):
        nz = np.flatnonzero(mel[m0 : m0 + MEL_BLOCK].any(axis=0))
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 1)
        w = np.ascontiguousarray(mel[m0 : m0 + MEL_BLOCK, lo:hi].T)
        blocks.append((lo, hi, torch.as_tensor(w, dtype=dtype, device=device)))
    out: dict[str, Any] = {
        "window": torch.as_tensor(_window_np(p.window, p.win_length, p.n_fft), dtype=dtype, device=device),
        "mel_blocks": blocks,
    }
    if p.kind == "mfcc":
        out["dct_t"] = torch.as_tensor(
            _dct_np(p.n_mels, p.n_mfcc, p.dct_norm).T.copy(), dtype=dtype, device=device
        )
    return out


# ------------------------------------------------------------------------------------------------------ helpers
def pad_batch(waveforms: Sequence[Array]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad 1-D clips of any lengths into ``(B, T_max)`` float32 plus their lengths ``(B,)`` int64."""
    clips = [
        np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float32)
        for w in waveforms
    ]
    if not clips or any(c.ndim != 1 for c in clips):
        raise ValueError("pad_batch needs a non-empty sequence of 1-D clips")
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    out = np.zeros((len(clips), int(lengths.max())), dtype=np.float32)
    for i, c in enumerate(clips):
        out[i, : len(c)] = c
    return out, lengths


def _as_batch(waveforms: Array | Sequence[Array]) -> Array:
    """A (B, T) array/tensor from a 1-D or 2-D array/tensor or a list of equal-length 1-D clips."""
    if isinstance(waveforms, (list, tuple)):
        lens = {len(w) for w in waveforms}
        if len(lens) != 1:
            raise ValueError(
                f"clips of unequal lengths {sorted(lens)[:5]}...: use compute_with_lengths (it zero-pads) or pad_batch"
            )
        if all(isinstance(w, torch.Tensor) for w in waveforms):
            return torch.stack(list(waveforms))
        return np.stack(
            [np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w) for w in waveforms]
        )
    x = waveforms if isinstance(waveforms, torch.Tensor) else np.asarray(waveforms)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"waveforms must be 1-D (T,) or 2-D (B, T), got shape {tuple(x.shape)}")
    return x


def _preemphasis(y: torch.Tensor, coef: float) -> torch.Tensor:
    """``librosa.effects.preemphasis(y, coef)`` per row, including its first sample ``3 y[0] - y[1]``."""
    out = torch.empty_like(y)
    out[:, 1:] = y[:, 1:] - coef * y[:, :-1]
    y1 = y[:, 1] if y.shape[1] > 1 else torch.zeros_like(y[:, 0])
    out[:, 0] = 3 * y[:, 0] - y1  # lfilter([1, -coef], [1], y, zi=2 y0 - y1): y0 + zi
    return out


def _mel_power(p: FeaturePreset, y: torch.Tensor, lengths: torch.Tensor, k: dict[str, Any]) -> torch.Tensor:
    """(b, L) waveforms with valid lengths (b,) -> (b, frames(L), n_mels) mel power spectrogram (time-major)."""
    b, n = y.shape
    ragged = bool((lengths < n).any())
    valid = torch.arange(n, device=y.device)[None, :] < lengths[:, None] if ragged else None
    if ragged:
        y = y * valid
    if p.pre_emphasis is not None:
        y = _preemphasis(y, p.pre_emphasis)
        if ragged:
            y = y * valid
    if p.center:
        pad = p.n_fft // 2
        if p.pad_mode == "constant" or pad == 0:
            y = F.pad(y, (pad, pad))
        elif not ragged:
            y = F.pad(y[:, None], (pad, pad), mode=p.pad_mode)[:, 0]
        else:  # pad each clip's own valid samples, then zero-fill to the common width
            rows = [
                F.pad(y[i : i + 1, None, : int(lengths[i])], (pad, pad), mode=p.pad_mode)[0, 0]
                for i in range(b)
            ]
            y = torch.stack([F.pad(r, (0, n + 2 * pad - r.shape[0])) for r in rows])
    spec = torch.stft(
        y, n_fft=p.n_fft, hop_length=p.hop_length, window=k["window"], center=False, return_complex=True
    ).transpose(1, 2)  # (b, frames, n_fft // 2 + 1), a contiguous view
    s = spec.real.square() + spec.imag.square() if p.power == 2.0 else spec.abs().pow(p.power)
    # block-sparse mel product: the filters are triangles, each block of MEL_BLOCK filters spans few bins
    return torch.cat([torch.matmul(s[..., lo:hi], w) for lo, hi, w in k["mel_blocks"]], dim=-1)


def _finish(p: FeaturePreset, mel: torch.Tensor, k: dict[str, Any]) -> torch.Tensor:
    """Mel power (b, T, n_mels) with zeros beyond each clip's valid frames -> features (b, T, n_features).

    Zero power is the minimum, so maxima over all frames equal maxima over the valid frames.
    """
    b = mel.shape[0]
    log_spec = 10.0 * torch.log10(torch.clamp(mel, min=p.amin))
    if p.ref == "max":
        ref = mel.reshape(b, -1).amax(dim=1).clamp(min=p.amin)
        log_spec = log_spec - 10.0 * torch.log10(ref)[:, None, None]
    if p.top_db is not None:
        top = log_spec.reshape(b, -1).amax(dim=1)
        log_spec = torch.maximum(log_spec, (top - p.top_db)[:, None, None])
    feats = torch.matmul(log_spec, k["dct_t"]) if p.kind == "mfcc" else log_spec
    if p.frame_l2norm:
        feats = feats / torch.linalg.vector_norm(feats, dim=-1, keepdim=True).clamp(min=_NORM_EPS)
    return feats


def _chunks(order: np.ndarray, frames: np.ndarray, n_bins: int, batch_size: int | None, budget: int):
    """Consecutive pieces of ``order`` of at most ``batch_size`` clips and ``budget`` STFT values each."""
    start = 0
    while start < len(order):
        rows = max(1, budget // (int(frames[order[start]]) * n_bins))
        rows = min(rows, batch_size) if batch_size else rows
        stop = start + rows
        # frames of a chunk are padded to its longest clip
        while stop - start > 1 and int(frames[order[start:stop]].max()) * n_bins * (stop - start) > budget:
            stop -= 1
        yield order[start:stop]
        start = stop


# --------------------------------------------------------------------------------------------------- public API
def compute_with_lengths(
    preset: str | FeaturePreset,
    waveforms: Array | Sequence[Array],
    *,
    lengths: Array | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    sort_by_length: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a batch of clips and their valid frame counts.

    waveforms: (B, T) or (T,) array/tensor, zero-padded when ``lengths`` (B,) gives each row's valid samples; or a
        list of 1-D clips of any lengths (zero-padded here, lengths inferred when not given).
    Returns ``feats`` (B, n_features, preset.n_frames(T)) in ``dtype`` on ``device`` (default: the input's device,
    else CPU) and ``frame_lengths`` (B,) int64 = ``preset.n_frames(lengths)``. Frames beyond a clip's valid count
    hold digital silence under that clip's reference (see the module docstring).
    ``compute_dtype`` is the internal precision: float32 (default) is about twice as fast; float64 matches librosa
    to float32 output rounding (see :func:`parity_tolerance` and the constants above for both). Clips are
    processed in chunks of at most ``batch_size`` clips and :data:`CHUNK_BINS` STFT values (``batch_size=None``: the
    budget alone), sorted by length when ``sort_by_length`` so each chunk is trimmed to its own longest clip (same
    results, less padding work).
    """
    p = get_preset(preset)
    if isinstance(waveforms, (list, tuple)) and len({len(w) for w in waveforms}) > 1:
        waveforms, inferred = pad_batch(waveforms)
        lengths = inferred if lengths is None else lengths
    x = _as_batch(waveforms)
    n_clips, n_samples = int(x.shape[0]), int(x.shape[1])
    if device is None:
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if lengths is None:
        lens = np.full(n_clips, n_samples, dtype=np.int64)
    else:
        lens = np.asarray(
            lengths.detach().cpu() if isinstance(lengths, torch.Tensor) else lengths, dtype=np.int64
        )
        if lens.shape != (n_clips,) or (lens < 1).any() or (lens > n_samples).any():
            raise ValueError(f"lengths must be (B,)={n_clips} values in [1, {n_samples}], got {lens}")
    if n_samples < 1:
        raise ValueError("waveforms have no samples")
    n_out = p.n_frames(n_samples)
    frame_lengths = np.array([p.n_frames(n) for n in lens], dtype=np.int64)
    k = _constants(p, device, compute_dtype)
    out = torch.empty((n_clips, p.n_features, n_out), dtype=dtype, device=device)
    order = np.argsort(-lens, kind="stable") if sort_by_length else np.arange(n_clips)
    for idx in _chunks(
        order, frame_lengths, p.n_fft // 2 + 1, batch_size, CHUNK_BINS.get(device.type, 1 << 22)
    ):
        width = int(lens[idx].max())
        if not p.center:
            width = max(width, min(n_samples, p.n_fft))
        rows = x[torch.as_tensor(idx)] if isinstance(x, torch.Tensor) else x[idx]
        y = torch.as_tensor(rows[:, :width]).to(device=device, dtype=compute_dtype)
        chunk_len = torch.as_tensor(lens[idx], device=device)
        chunk_frames = torch.as_tensor(frame_lengths[idx], device=device)
        mel = _mel_power(p, y, chunk_len, k)  # (b, frames(width), n_mels)
        mel = F.pad(mel, (0, 0, 0, n_out - mel.shape[1]))  # silence beyond this chunk's width
        mel = mel * (torch.arange(n_out, device=device)[None, :, None] < chunk_frames[:, None, None])
        out[torch.as_tensor(idx, device=device)] = _finish(p, mel, k).transpose(1, 2).to(dtype)
    return out, torch.as_tensor(frame_lengths, device=device)


def compute(
    preset: str | FeaturePreset,
    waveforms: Array | Sequence[Array],
    *,
    lengths: Array | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> torch.Tensor:
    """Features (B, n_features, frames) of (B, T) / (T,) waveforms or a list of equal-length clips.

    A 1-D input gives B = 1. ``lengths`` as in :func:`compute_with_lengths` (whose keyword arguments ``kwargs``
    also takes), which returns the valid frame counts too.
    """
    if isinstance(waveforms, (list, tuple)) and len({len(w) for w in waveforms}) > 1 and lengths is None:
        raise ValueError(
            "clips of unequal lengths: use compute_with_lengths (it zero-pads and reports frame counts)"
        )
    return compute_with_lengths(preset, waveforms, lengths=lengths, device=device, dtype=dtype, **kwargs)[0]


def _adhoc(y: Array, kind: str, sr: int, n_fft: int, hop_length: int, n_mels: int, kw: dict) -> torch.Tensor:
    run = {k: kw.pop(k) for k in ("device", "dtype", "compute_dtype", "batch_size") if k in kw}
    p = FeaturePreset(
        name=f"adhoc_{kind}", kind=kind, sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, **kw
    )
    feats = compute(p, y, **run)
    one = (isinstance(y, (np.ndarray, torch.Tensor)) and y.ndim == 1) or (
        not isinstance(y, (np.ndarray, torch.Tensor, list, tuple))
    )
    return feats[0] if one else feats


def mfcc(
    y: Array,
    *,
    sr: int,
    n_mfcc: int,
    n_fft: int = 2048,
    hop_length: int = 512,
    n_mels: int = 128,
    **kwargs: Any,
) -> torch.Tensor:
    """``librosa.feature.mfcc``-like: (n_mfcc, frames) for 1-D ``y``, (B, n_mfcc, frames) for 2-D.

    Defaults are librosa's; ``kwargs`` are further :class:`FeaturePreset` fields or ``device`` / ``dtype`` /
    ``compute_dtype`` / ``batch_size``.
    """
    return _adhoc(y, "mfcc", sr, n_fft, hop_length, n_mels, {"n_mfcc": n_mfcc, **kwargs})


def log_mel(
    y: Array, *, sr: int, n_mels: int, n_fft: int = 2048, hop_length: int = 512, **kwargs: Any
) -> torch.Tensor:
    """``librosa.power_to_db(librosa.feature.melspectrogram(...))``-like: (n_mels, frames) or (B, n_mels, frames)."""
    return _adhoc(y, "logmel", sr, n_fft, hop_length, n_mels, dict(kwargs))


def reference_librosa(preset: str | FeaturePreset, y: np.ndarray) -> np.ndarray:
    """The same features computed by librosa 0.11 alone, for one clip: (n_features, frames), numpy.

    The definition our parity tests and benchmark compare against: ``librosa.effects.preemphasis`` ->
    ``librosa.feature.melspectrogram`` -> ``librosa.power_to_db`` -> ``librosa.feature.mfcc(S=...)`` -> frame L2 norm.
    """
    p = get_preset(preset)
    if p.pre_emphasis is not None:
        y = librosa.effects.preemphasis(y, coef=p.pre_emphasis)
    S = librosa.feature.melspectrogram(
        y=y,
        sr=p.sr,
        n_fft=p.n_fft,
        hop_length=p.hop_length,
        win_length=p.win_length,
        window=p.window,
        center=p.center,
        pad_mode=p.pad_mode,
        power=p.power,
        n_mels=p.n_mels,
        fmin=p.fmin,
        fmax=p.fmax,
        htk=p.htk,
        norm=p.mel_norm,
    )
    feats = librosa.power_to_db(S, ref=np.max if p.ref == "max" else 1.0, amin=p.amin, top_db=p.top_db)
    if p.kind == "mfcc":
        feats = librosa.feature.mfcc(S=feats, n_mfcc=p.n_mfcc, norm=p.dct_norm)
    if p.frame_l2norm:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=0, keepdims=True), _NORM_EPS)
    return feats
