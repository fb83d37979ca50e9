"""A deterministic emotional-speech-like corpus: the embedded default and what CI notebooks run on.

It is **not speech** and results on it say nothing about emotion recognition; it exists so every notebook and test
runs end to end on any machine. Each clip is a sequence of voiced "syllables" separated by short pauses:

- a harmonic series (up to 4 kHz) whose amplitudes fall as ``h ** -tilt`` and are shaped by a vowel's formant
  envelope, following an f0 contour (per-syllable accent and slope, utterance declination, slow vibrato);
- optional fricative-like noise bursts at syllable onsets, breath noise, and a little background noise.

Class styles (see :data:`CLASS_STYLES`) differ in f0 level and range, syllable rate, loudness and spectral tilt:
angry is loud, flat-tilted and fast; sad is low, narrow, slow, steep and quiet; happy is high, wide and fast;
neutral sits in the middle. Speakers differ in base f0 (M ~110 Hz, F ~210 Hz), formant scale, tilt and level.
Every utterance also gets a random gain of +-``GAIN_DB`` dB and jittered style parameters, so no single cue
(loudness above all) separates the classes.

Generation is pure numpy; each utterance has its own generator seeded by ``(seed, speaker, class, index)``, so the
output does not depend on generation order and is the same on every machine (written as 16-bit PCM).
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from serlib.data.corpus import Corpus

GENERATOR_VERSION = 1
GAIN_DB = 6.0  # per-utterance random gain, uniform in +-GAIN_DB
BASE_RMS = 0.035  # voiced RMS of a 0 dB utterance
HARMONIC_LIMIT_HZ = 4000.0
NOISE_DBFS = -60.0  # background noise RMS
MANIFEST = "manifest.csv"
SETTINGS = "synthetic.json"

# vowel formants (F1, F2, F3) of an adult male voice, Hz
VOWELS = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]]
)
FORMANT_SIGMA = np.array([110.0, 150.0, 220.0])
FORMANT_GAIN = np.array([1.0, 0.6, 0.35])


@dataclass(frozen=True)
class ClassStyle:
    f0_factor: float  # times the speaker's base f0
    f0_range: float  # semitones of per-syllable accent / slope
    rate: float  # syllables per second
    level_db: float  # loudness offset
    tilt: float  # harmonic amplitude exponent (larger = steeper = darker)
    breath: float  # breath-noise ratio
    pause: float  # mean pause between syllables, s


CLASS_STYLES: dict[str, ClassStyle] = {
    "neutral": ClassStyle(1.00, 1.5, 3.8, 0.0, 1.65, 0.03, 0.12),
    "happy": ClassStyle(1.28, 4.5, 5.0, 2.0, 1.25, 0.03, 0.08),
    "sad": ClassStyle(0.86, 0.8, 2.7, -4.0, 2.3, 0.06, 0.20),
    "angry": ClassStyle(1.15, 3.0, 5.4, 5.0, 0.8, 0.04, 0.07),
    "calm": ClassStyle(0.95, 1.2, 3.2, -2.0, 1.9, 0.04, 0.16),
    "fearful": ClassStyle(1.35, 3.5, 5.5, -1.0, 1.5, 0.07, 0.10),
    "disgust": ClassStyle(0.92, 2.5, 3.0, 0.0, 1.5, 0.05, 0.15),
    "surprised": ClassStyle(1.40, 6.0, 4.5, 2.0, 1.3, 0.03, 0.10),
}


def class_style(name: str) -> ClassStyle:
    """The preset style of ``name``, or a reproducible made-up one for other class names."""
    if name in CLASS_STYLES:
        return CLASS_STYLES[name]
    r = np.random.default_rng(zlib.crc32(name.encode()))
    return ClassStyle(
        float(r.uniform(0.85, 1.4)),
        float(r.uniform(0.8, 5.0)),
        float(r.uniform(2.8, 5.5)),
        float(r.uniform(-4, 5)),
        float(r.uniform(0.9, 2.2)),
        float(r.uniform(0.02, 0.07)),
        float(r.uniform(0.07, 0.2)),
    )


@dataclass(frozen=True)
class Speaker:
    speaker: str
    gender: str
    session: str
    f0: float
    formant_scale: float
    tilt_offset: float
    level_db: float


def _speaker(seed: int, i: int) -> Speaker:
    r = np.random.default_rng([seed, 1, i])
    gender = "M" if i % 2 == 0 else "F"
    f0 = r.normal(110, 10) if gender == "M" else r.normal(210, 18)
    scale = r.normal(1.0, 0.04) if gender == "M" else r.normal(1.15, 0.04)
    return Speaker(
        f"spk{i + 1:02d}",
        gender,
        str(i // 2 + 1),
        float(f0),
        float(scale),
        float(r.uniform(-0.1, 0.1)),
        float(r.uniform(-2, 2)),
    )


def _raised_cosine_envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    a, r = max(1, min(attack, n // 2)), max(1, min(release, n // 2))
    env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    env[n - r :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, r + 1) / r)
    return env


def _highpass_noise(r: np.random.Generator, n: int) -> np.ndarray:
    w = r.standard_normal(n + 1)
    return (w[1:] - w[:-1]) / np.sqrt(2.0)


def _pink_noise(r: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS noise with a 1/f power spectrum (low-frequency heavy, like room noise)."""
    spec = np.fft.rfft(r.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    y = np.fft.irfft(spec / np.sqrt(f), n)
    return y / np.sqrt(np.mean(y**2))


def _syllable(
    r: np.random.Generator,
    n: int,
    f0: float,
    st: ClassStyle,
    spk: Speaker,
    tilt: float,
    f0_range: float,
    sr: int,
    t0: float,
) -> np.ndarray:
    """One voiced syllable of ``n`` samples (unit voiced RMS before the envelope)."""
    t = np.arange(n) / sr
    u = np.linspace(0.0, 1.0, n)
    accent = r.uniform(-0.4, 1.0) * f0_range
    slope = r.normal(0.0, 0.5) * f0_range
    vib = 0.25 * np.sin(2 * np.pi * r.uniform(4.5, 6.5) * (t + t0) + r.uniform(0, 2 * np.pi))
    semis = accent * np.sin(np.pi * u) + slope * (u - 0.5) + vib
    f0_t = f0 * 2.0 ** (semis / 12.0)
    phase = 2 * np.pi * np.cumsum(f0_t) / sr + r.uniform(0, 2 * np.pi)
    H = int(max(1, min(40, HARMONIC_LIMIT_HZ // f0_t.max())))
    h = np.arange(1, H + 1)
    vowel = VOWELS[r.integers(len(VOWELS))] * spk.formant_scale * r.normal(1.0, 0.03)
    fh = h * f0
    env = 0.08 + (FORMANT_GAIN * np.exp(-0.5 * ((fh[:, None] - vowel) / FORMANT_SIGMA) ** 2)).sum(1)
    amp = h ** (-tilt) * env
    amp *= np.sqrt(2.0 / (amp**2).sum())  # sum of sines with unit RMS
    z1 = np.exp(1j * phase)
    zh = z1.copy()
    out = amp[0] * zh.imag
    for a in amp[1:]:
        zh *= z1
        out += a * zh.imag
    return out


def synth_utterance(
    r: np.random.Generator, *, style: ClassStyle, spk: Speaker, duration: float, sr: int
) -> np.ndarray:
    """One clip of ``round(duration * sr)`` samples, float64 in [-1, 1]."""
    n_total = int(round(duration * sr))
    y = np.zeros(n_total)
    # utterance-level jitter of the class style: overlapping classes
    rate = style.rate * r.uniform(0.85, 1.15)
    tilt = max(0.4, style.tilt + spk.tilt_offset + r.normal(0, 0.15))
    f0_utt = spk.f0 * style.f0_factor * r.normal(1.0, 0.04)
    f0_range = style.f0_range * r.uniform(0.8, 1.2)
    decl = r.uniform(0.5, 2.5)  # semitones of declination over the utterance
    pos = int(r.uniform(0.05, 0.25) * sr)
    end = n_total - int(0.08 * sr)
    while pos < end - int(0.08 * sr):
        syl_n = int(sr / rate * r.uniform(0.6, 1.0))
        syl_n = min(syl_n, end - pos)
        # optional fricative-like onset
        if r.random() < 0.4:
            fr_n = min(int(r.uniform(0.03, 0.08) * sr), end - pos - int(0.05 * sr))
            if fr_n > 0:
                fric = _highpass_noise(r, fr_n) * _raised_cosine_envelope(fr_n, fr_n // 4, fr_n // 3)
                y[pos : pos + fr_n] += r.uniform(0.1, 0.35) * fric
                pos += fr_n
                syl_n = min(syl_n, end - pos)
        if syl_n < int(0.05 * sr):
            break
        f0_syl = f0_utt * 2.0 ** (-decl * pos / n_total / 12.0) * r.normal(1.0, 0.03)
        voiced = _syllable(r, syl_n, f0_syl, style, spk, tilt, f0_range, sr, pos / sr)
        voiced += style.breath * _highpass_noise(r, syl_n)
        env = _raised_cosine_envelope(
            syl_n, int(syl_n * r.uniform(0.1, 0.25)), int(syl_n * r.uniform(0.2, 0.4))
        )
        y[pos : pos + syl_n] += voiced * env * r.uniform(0.6, 1.0)
        pos += syl_n + int(r.exponential(style.pause) * sr) + int(0.02 * sr)
    gain_db = style.level_db + spk.level_db + r.uniform(-GAIN_DB, GAIN_DB)
    y *= BASE_RMS * 10.0 ** (gain_db / 20.0)
    y += 10.0 ** (NOISE_DBFS / 20) * _pink_noise(r, n_total)  # room-like background noise
    peak = np.abs(y).max()
    if peak > 0.99:
        y *= 0.99 / peak
    return y


def _settings(**kw) -> dict:
    return {"generator_version": GENERATOR_VERSION, **kw}


def default_synthetic_root() -> Path:
    """``$SERLIB_CACHE/synthetic`` if the variable is set, else ``~/.cache/serlib/synthetic``."""
    env = os.environ.get("SERLIB_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "serlib"
    return base / "synthetic"


def _corpus_from_manifest(
    root: Path, manifest: pd.DataFrame, labels: tuple[str, ...], sr: int, frames: list[int]
) -> Corpus:
    t = manifest.copy()
    t.insert(
        1, "utt_id", [str(Path(p).with_suffix("").as_posix()) for p in t["path"]]
    )  # as the custom loader
    t["duration"] = np.asarray(frames, dtype=np.float64) / sr
    t["sample_rate"] = sr
    t["channels"] = 1
    for c in ("path", "utt_id", "label", "speaker", "session", "gender"):
        t[c] = t[c].astype(str)
    return Corpus("synthetic", root, t, labels, [], synthetic=True)


def make_synthetic(
    root: str | Path | None = None,
    *,
    n_speakers: int = 8,
    n_per_class_per_speaker: int = 6,
    classes: tuple[str, ...] = ("neutral", "happy", "sad", "angry"),
    sr: int = 16000,
    seed: int = 0,
    duration: tuple[float, float] = (2.2, 4.5),
) -> Corpus:
    """Write (or reuse) the synthetic corpus under ``root`` and return it as a :class:`Corpus`.

    Layout: ``root/<speaker>/<speaker>_<class>_<k>.wav`` (16-bit PCM mono) and ``root/manifest.csv`` with columns
    ``path,label,speaker,session,gender`` (paths relative to ``root``: the bring-your-own corpus format).
    Speakers alternate M / F; each consecutive M-F pair forms a session ("1", "2", ...), as in IEMOCAP, so session
    protocols run on it too. If ``root/synthetic.json`` records the same settings and every file exists, nothing
    is rewritten. ``root`` defaults to :func:`default_synthetic_root`.
    """
    root = Path(root) if root is not None else default_synthetic_root()
    classes = tuple(str(c) for c in classes)
    if n_speakers < 1 or n_per_class_per_speaker < 1 or not classes:
        raise ValueError("need at least one speaker, one class and one utterance per class")
    lo, hi = float(duration[0]), float(duration[1])
    if not 0 < lo <= hi:
        raise ValueError(f"bad duration range {duration}")
    settings = _settings(
        n_speakers=n_speakers,
        n_per_class_per_speaker=n_per_class_per_speaker,
        classes=list(classes),
        sr=sr,
        seed=seed,
        duration=[lo, hi],
    )
    cached = _load_cached(root, settings, classes, sr)
    if cached is not None:
        return cached

    root.mkdir(parents=True, exist_ok=True)
    (root / SETTINGS).unlink(missing_ok=True)  # mark incomplete until everything is written
    rows, frames = [], []
    for i in range(n_speakers):
        spk = _speaker(seed, i)
        (root / spk.speaker).mkdir(exist_ok=True)
        for c, label in enumerate(classes):
            style = class_style(label)
            for k in range(n_per_class_per_speaker):
                r = np.random.default_rng([seed, 2, i, c, k])
                dur = r.uniform(lo, hi)
                y = synth_utterance(r, style=style, spk=spk, duration=dur, sr=sr)
                rel = f"{spk.speaker}/{spk.speaker}_{label}_{k:02d}.wav"
                pcm = np.round(np.clip(y, -1.0, 1.0) * 32767.0).astype(np.int16)
                tmp = root / (rel + ".tmp")
                sf.write(str(tmp), pcm, sr, subtype="PCM_16", format="WAV")
                os.replace(tmp, root / rel)
                rows.append(
                    {
                        "path": rel,
                        "label": label,
                        "speaker": spk.speaker,
                        "session": spk.session,
                        "gender": spk.gender,
                    }
                )
                frames.append(len(pcm))
    manifest = pd.DataFrame(rows, columns=["path", "label", "speaker", "session", "gender"])
    manifest.to_csv(root / MANIFEST, index=False, lineterminator="\n")
    speakers = [asdict(_speaker(seed, i)) for i in range(n_speakers)]
    (root / SETTINGS).write_text(
        json.dumps({**settings, "speakers": speakers}, indent=1, sort_keys=True) + "\n"
    )
    return _corpus_from_manifest(root, manifest, classes, sr, frames)


def _load_cached(root: Path, settings: dict, classes: tuple[str, ...], sr: int) -> Corpus | None:
    try:
        stored = json.loads((root / SETTINGS).read_text())
        manifest = pd.read_csv(root / MANIFEST, dtype=str, keep_default_na=False)
    except (OSError, ValueError):
        return None
    if {k: stored.get(k) for k in settings} != settings:
        return None
    try:
        frames = [sf.info(str(root / p)).frames for p in manifest["path"]]
    except Exception:  # a file was deleted or damaged: regenerate
        return None
    return _corpus_from_manifest(root, manifest, classes, sr, frames)
