"""Figures of the recurrent attention studies: MOMA's attention vectors over the waveform (Figs. 2-5) and
MHSA-FACA's Fig. 2 (waveform with its peak, 0.5-s segments, two heads' maps per variant).

Functions take the dicts built by :func:`serlib.studies.moma.attention_vectors` and
:func:`serlib.studies.faca.figure2_data` and return the figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np


def moma_attention(wave: np.ndarray, sr: int, vectors: dict, *, hop: int = 160, labels: Sequence[str] | None = None,
                   title: str = "", show_views: bool = True):
    """Waveform above the layer-1 and layer-2 attention vectors (and the three views weighted by their gammas),
    time-aligned: frame t sits at t * hop / sr seconds. ``vectors`` from ``attention_vectors``."""
    T = int(vectors["length"])
    t_frames = np.arange(T) * hop / sr
    n_rows = 3 if show_views and "views" in vectors else 2
    fig, axes = plt.subplots(n_rows, 1, figsize=(8, 1.6 * n_rows + 0.6), sharex=True)
    wave = np.asarray(wave)[: T * hop]
    axes[0].plot(np.arange(len(wave)) / sr, wave, lw=0.4, color="k")
    axes[0].set_ylabel("amplitude")
    name = (lambda i: labels[i]) if labels is not None else str
    axes[0].set_title(title or f"true {name(vectors['label'])}, predicted {name(vectors['pred'])}", fontsize=10)
    axes[1].plot(t_frames, vectors["attn1"], lw=1, label="layer 1")
    axes[1].plot(t_frames, vectors["attn2"], lw=1, label="layer 2 (gamma mixture)")
    axes[1].axhline(1 / T, color="grey", lw=0.6, ls=":", label="uniform 1/T")
    axes[1].set_ylabel("attention")
    axes[1].legend(fontsize=7, loc="upper right")
    if n_rows == 3:
        for n, (v, g) in enumerate(zip(vectors["views"], vectors["gammas"])):
            axes[2].plot(t_frames, g * v, lw=0.8, label=f"view {n + 1} x gamma {g:.2f}")
        axes[2].set_ylabel("gamma_n a_n")
        axes[2].legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    return fig


def gammas(values: dict[str, Sequence[float]], *, ax=None, title: str = "learned gammas"):
    """Bar chart of the learned mixing weights, one group per run (``{run name: gammas}``)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4 + 0.4 * len(values), 2.6))
    names = list(values)
    n_views = max(len(v) for v in values.values())
    width = 0.8 / n_views
    for n in range(n_views):
        ax.bar(np.arange(len(names)) + (n - (n_views - 1) / 2) * width, [values[k][n] for k in names], width,
               label=f"gamma {n + 1}")
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return ax.figure


def faca_figure2(d: dict, *, cmap: str = "viridis", title: str = ""):
    """FACA Fig. 2: the waveform with its largest-amplitude point and the 0.5-s segment grid (the segment shown is
    shaded), then per variant (rows) the chosen heads' (columns) attention maps on that segment, query x key, with
    the key holding the amplitude peak marked (dashed) and each head's most-attended key (triangle)."""
    variants = list(d["maps"])
    heads = d["heads"]
    fig = plt.figure(figsize=(2.6 * len(heads) + 1.5, 1.9 + 1.9 * len(variants)))
    grid = fig.add_gridspec(1 + len(variants), len(heads), height_ratios=[0.9] + [1.0] * len(variants))
    ax = fig.add_subplot(grid[0, :])
    sr, hop, wave = d["sr"], d["hop"], d["wave"]
    t = np.arange(len(wave)) / sr
    ax.plot(t, wave, lw=0.4, color="k")
    seg_s = d["seg_frames"] * hop / sr
    for b in np.arange(0, len(wave) / sr, seg_s):
        ax.axvline(b, color="grey", lw=0.5, ls=":")
    s0 = d["seg_start"] * hop / sr
    ax.axvspan(s0, s0 + seg_s, color="tab:orange", alpha=0.25, label="segment shown (0.5 s)")
    ax.plot(d["peak_sample"] / sr, wave[d["peak_sample"]], "rv", ms=7, label="largest amplitude")
    ax.set_xlabel("time (s)")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title or "waveform, 0.5-s segments (dotted), and the segment around its peak", fontsize=10)
    for r, v in enumerate(variants):
        for c, h in enumerate(heads):
            a = fig.add_subplot(grid[1 + r, c])
            m = d["maps"][v][c]
            a.imshow(m, cmap=cmap, origin="upper", aspect="equal")
            a.axvline(d["peak_key"], color="r", lw=1, ls="--")
            a.plot(d["keys"][v][c], -0.9, "v", color="w", ms=6, markeredgecolor="k", clip_on=False)
            calib = d.get("calibration", {}).get(v)
            label = f"{d['names'].get(v, v)}, head {h}" + (f" (s={calib[c]:.2f})" if calib is not None else "")
            a.set_title(label, fontsize=8)
            a.set_xticks([])
            a.set_yticks([])
            if c == 0:
                a.set_ylabel("query")
            if r == len(variants) - 1:
                a.set_xlabel(f"key (x{d['pool']} frames)")
    fig.tight_layout()
    return fig


def peak_hit_rates(table, *, ax=None, title: str = "most-attended key at the amplitude peak"):
    """Bars of :func:`serlib.studies.faca.peak_alignment_table`'s hit rates per model and tolerance, with chance."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 2.8))
    tols = sorted(table["tolerance (pooled keys)"].unique())
    models = list(dict.fromkeys(table["model"]))
    width = 0.8 / len(tols)
    for i, tol in enumerate(tols):
        part = table[table["tolerance (pooled keys)"] == tol].set_index("model").reindex(models)
        x = np.arange(len(models)) + (i - (len(tols) - 1) / 2) * width
        ax.bar(x, part["peak hit rate (%)"], width, label=f"within {tol} key(s)")
        ax.hlines(part["chance (%)"], x - width / 2, x + width / 2, color="k", lw=1.2,
                  label="chance" if i == 0 else None)
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_ylabel("% of (segment, head)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return ax.figure


__all__ = ["faca_figure2", "gammas", "moma_attention", "peak_hit_rates"]
