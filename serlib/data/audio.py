"""Robust audio loading: every failure names the file.

``load_audio`` is the single place where audio is decoded. It accepts any sample rate, mono or multi-channel,
and returns float32 mono at the requested rate. A file whose container does not match its extension
(AIFF named ``.wav``) is read but flagged, so manifests can report it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

TARGET_SR = 16_000

_EXT_FORMAT = {".wav": "WAV", ".flac": "FLAC", ".aif": "AIFF", ".aiff": "AIFF", ".ogg": "OGG"}


class AudioError(ValueError):
    """Raised when a file cannot be used as audio. ``path`` and ``reason`` are kept for skip reports."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str
    format_mismatch: bool  # container differs from what the extension says (e.g. AIFF named .wav)

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def audio_info(path: str | Path) -> AudioInfo:
    """Header facts of ``path``; raises :class:`AudioError` for missing, empty or non-audio files."""
    p = Path(path)
    if not p.exists():
        raise AudioError(p, "file does not exist")
    if p.stat().st_size == 0:
        raise AudioError(p, "file is empty (0 bytes)")
    try:
        info = sf.info(str(p))
    except Exception as exc:  # soundfile raises RuntimeError / LibsndfileError for non-audio
        raise AudioError(p, f"not readable as audio ({type(exc).__name__}: {exc})") from None
    if info.frames <= 0:
        raise AudioError(p, "audio has no samples")
    if info.format == "WAV":
        reason = wav_truncation(p)
        if reason:
            raise AudioError(p, reason)
    expected = _EXT_FORMAT.get(p.suffix.lower())
    mismatch = expected is not None and info.format != expected
    return AudioInfo(str(p), int(info.samplerate), int(info.channels), int(info.frames), info.format, mismatch)


def wav_truncation(path: Path) -> str | None:
    """Reason string when a RIFF/WAVE file's ``data`` chunk declares more bytes than the file holds.

    libsndfile silently clamps such files to the bytes present, so neither ``audio_info`` nor decoding notices;
    this reads only the chunk headers. Returns None for intact, non-RIFF or streaming (unknown length) files.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            hdr = f.read(8)
            cid, csize = hdr[:4], struct.unpack(endian + "I", hdr[4:8])[0]
            if cid == b"data":
                if csize in (0, 0xFFFFFFFF):
                    return None  # written as a stream: length unknown, nothing to compare
                avail = size - (pos + 8)
                if avail < csize:
                    return (
                        f"truncated: the WAV header declares {csize} bytes of audio but the file holds {avail} "
                        f"({100 * avail / csize:.1f}%)"
                    )
                return None
            pos += 8 + csize + (csize & 1)
    return None


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (scipy), exact for any integer rate pair (24414 -> 16000 included)."""
    if orig_sr == target_sr:
        return y
    g = gcd(int(orig_sr), int(target_sr))
    return resample_poly(y, target_sr // g, orig_sr // g).astype(np.float32)


def load_audio(path: str | Path, sr: int = TARGET_SR) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sr`` Hz.

    Multi-channel audio is downmixed by averaging channels; other rates are resampled.
    Raises :class:`AudioError` naming the file when it is missing, empty, truncated or not audio.
    """
    p = Path(path)
    audio_info(p)  # raises with a clear reason
    try:
        y, file_sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(p, f"decoding failed, file may be truncated ({type(exc).__name__}: {exc})") from None
    if y.shape[0] == 0:
        raise AudioError(p, "audio has no samples (truncated?)")
    y = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]
    y = resample(y, int(file_sr), sr)
    if not np.all(np.isfinite(y)):
        raise AudioError(p, "audio contains NaN or infinite samples")
    return np.ascontiguousarray(y, dtype=np.float32)
