"""The four noise categories of the Head Fusion paper (D-S, D-L, C-S, C-L), derived from the clips' waveforms.

The paper's Table 1 (which ESC-50 class falls in which category) is lost in extraction; its text gives the
criteria (Fig. 1): *discrete* sounds "can be clearly divided into several segments", *continuous* ones are "a
continuous segment"; *short* ones "quickly drop after reaching a high point" (discrete) or show "obvious
fluctuations" (continuous), *long* ones drop slowly or do not fluctuate. :func:`categorize` turns these into
measures on the frame envelope of one clip:

* envelope: RMS of ``FRAME_S`` frames every ``HOP_S``, in dB relative to the clip's loudest frame;
* ``active_frac``: fraction of frames above the gate ``GATE_DB`` (dB below the loudest frame);
* ``n_segments``: runs of active frames after closing gaps shorter than ``MIN_GAP_S``;
* ``decay_s`` (how a segment drops after its high point): median over segments of the time from the segment's
  high point (its first frame within ``PEAK_TOL_DB`` of its loudest, so a steady tone's high point is its onset)
  until the envelope first falls ``SEG_DROP_DB`` below it (or the segment ends);
* ``fluct_s`` (how the envelope fluctuates): median, over the envelope's peaks with a prominence of at least
  ``FLUCT_DB``, of the time the envelope takes to fall ``FLUCT_DB`` below the peak (a peak it never falls from counts
  the time to the clip's end); with no such peak (a steady sound) it is the clip's duration.

Rule: **discrete** if ``active_frac < DISCRETE_MAX_ACTIVE`` (at least half the clip is gated off: the sound has
clear separations), else **continuous**. A discrete clip is **short** if ``decay_s < SHORT_MAX_DECAY_S``; a
continuous one is **short** (obvious fluctuations) if ``fluct_s < SHORT_MAX_FLUCT_S``; otherwise **long**.
The thresholds are round numbers set by hand (there is no ground truth to fit them to); the per-class vote counts
in the published table show how clear-cut each class is.
A class's category is the majority over its clips (a tie goes to the category of the class's median measures).
:func:`load_categories` reads the published table ``data_manifests/esc50_categories.csv`` or a user's own CSV with
columns ``class, category``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import find_peaks

from serlib.noise import CATEGORIES, SILENCE_ABS, NoiseError

FRAME_S = 0.02
HOP_S = 0.01
GATE_DB = -20.0
MIN_GAP_S = 0.05
SEG_DROP_DB = 20.0
PEAK_TOL_DB = 1.0
FLUCT_DB = 10.0
DISCRETE_MAX_ACTIVE = 0.5
SHORT_MAX_DECAY_S = 0.25
SHORT_MAX_FLUCT_S = 0.2
MEASURES = ("active_frac", "n_segments", "decay_s", "fluct_s")

CATEGORY_CSV = Path(__file__).resolve().parents[1] / "data_manifests" / "esc50_categories.csv"


def envelope_db(wave, sr: int) -> np.ndarray:
    """Frame RMS in dB relative to the loudest frame, ``FRAME_S`` frames every ``HOP_S`` (last partial frame padded)."""
    y = np.asarray(wave, dtype=np.float64).reshape(-1)
    win, hop = max(1, int(round(FRAME_S * sr))), max(1, int(round(HOP_S * sr)))
    n = max(1, 1 + int(np.ceil(max(0, len(y) - win) / hop)))
    y = np.pad(y, (0, max(0, (n - 1) * hop + win - len(y))))
    frames = np.lib.stride_tricks.sliding_window_view(y, win)[::hop][:n]
    rms = np.sqrt((frames**2).mean(1))
    return 20 * np.log10(np.maximum(rms, 1e-12) / max(rms.max(), 1e-12))


def _segments(active: np.ndarray, min_gap: int) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, a in enumerate(active):
        if a and start is None:
            start = i
        elif not a and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(active)))
    merged: list[tuple[int, int]] = []
    for s, e in runs:
        if merged and s - merged[-1][1] < min_gap:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def _decay_s(env: np.ndarray, segs: list[tuple[int, int]]) -> float:
    times = []
    for s, e in segs:
        seg = env[s:e]
        p = s + int(np.argmax(seg >= seg.max() - PEAK_TOL_DB))
        below = np.nonzero(env[p:e] <= env[p] - SEG_DROP_DB)[0]
        times.append((below[0] if len(below) else e - p) * HOP_S)
    return float(np.median(times)) if times else 0.0


def _fluct_s(env: np.ndarray) -> float:
    peaks, _ = find_peaks(np.concatenate([[-np.inf], env, [-np.inf]]), prominence=FLUCT_DB)
    peaks = peaks - 1
    if len(peaks) == 0:
        return len(env) * HOP_S
    times = []
    for p in peaks:
        below = np.nonzero(env[p:] <= env[p] - FLUCT_DB)[0]
        times.append((below[0] if len(below) else len(env) - p) * HOP_S)
    return float(np.median(times))


def _rule(active_frac: float, decay_s: float, fluct_s: float) -> str:
    if active_frac < DISCRETE_MAX_ACTIVE:
        return "D-S" if decay_s < SHORT_MAX_DECAY_S else "D-L"
    return "C-S" if fluct_s < SHORT_MAX_FLUCT_S else "C-L"


def categorize(wave, sr: int, *, name: str = "<unnamed>") -> dict:
    """Measures of one clip and its category (see the module docstring). A silent clip raises NoiseError."""
    y = np.asarray(wave, dtype=np.float64).reshape(-1)
    if y.size == 0 or np.abs(y).mean() < SILENCE_ABS:
        raise NoiseError(name, "clip is empty or silent; it has no category")
    env = envelope_db(y, sr)
    active = env > GATE_DB
    segs = _segments(active, int(round(MIN_GAP_S / HOP_S)))
    out = {
        "active_frac": float(active.mean()),
        "n_segments": len(segs),
        "decay_s": _decay_s(env, segs),
        "fluct_s": _fluct_s(env),
    }
    out["category"] = _rule(out["active_frac"], out["decay_s"], out["fluct_s"])
    return out


def class_categories(corpus, *, sr: int = 16_000) -> pd.DataFrame:
    """One row per ESC-50 class (``corpus.labels`` order): category by majority over its clips, median measures,
    votes per category and ``n_clips``. Unreadable or silent clips are skipped and listed in ``df.attrs["skipped"]``
    (``[{"path", "reason"}]``); a class left without clips raises ``ValueError`` naming it."""
    from serlib.data.audio import AudioError, load_audio

    rows, skipped = [], []
    for i in range(len(corpus)):
        rel = corpus.table.at[i, "path"]
        try:
            m = categorize(load_audio(corpus.abspath(i), sr=sr), sr, name=rel)
        except (AudioError, NoiseError) as e:
            skipped.append({"path": rel, "reason": getattr(e, "reason", str(e))})
            continue
        rows.append({"class": corpus.table.at[i, "label"], **m})
    per = pd.DataFrame(rows)
    out = []
    for cls in corpus.labels:
        g = per[per["class"] == cls] if len(per) else per
        if g.empty:
            raise ValueError(f"ESC-50 class {cls!r}: no usable clip (see skipped: {skipped})")
        med = {k: float(g[k].median()) for k in MEASURES}
        votes = g["category"].value_counts()
        top = votes[votes == votes.max()].index.tolist()
        cat = top[0] if len(top) == 1 else _rule(med["active_frac"], med["decay_s"], med["fluct_s"])
        out.append(
            {
                "class": cls,
                "category": cat,
                **med,
                **{f"votes_{c}": int(votes.get(c, 0)) for c in CATEGORIES},
                "n_clips": len(g),
            }
        )
    df = pd.DataFrame(out)
    df.attrs["skipped"] = skipped
    return df


def load_categories(path: str | Path | None = None) -> dict[str, str]:
    """``{class: category}`` from a CSV with columns ``class, category`` (default: the published table)."""
    p = Path(path) if path is not None else CATEGORY_CSV
    if not p.is_file():
        raise FileNotFoundError(
            f"noise category table not found: {p} (regenerate it with scripts/noise_categories.py)"
        )
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    missing = [c for c in ("class", "category") if c not in df.columns]
    if missing:
        raise ValueError(f"{p}: lacks columns {missing} (needs 'class' and 'category')")
    bad = sorted(set(df["category"]) - set(CATEGORIES))
    if bad:
        raise ValueError(f"{p}: unknown categories {bad}; use {list(CATEGORIES)}")
    dup = df.loc[df["class"].duplicated(), "class"].tolist()
    if dup:
        raise ValueError(f"{p}: classes listed twice: {dup}")
    return dict(zip(df["class"], df["category"]))


__all__ = ["MEASURES", "categorize", "class_categories", "envelope_db", "load_categories"]
