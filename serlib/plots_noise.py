"""Noise-study figures: one example waveform per noise category (the paper's Fig. 1), UA vs AF per category
(Fig. 8), UA vs noisy units (Fig. 9), the train x test category heatmap (Fig. 10) and the all-model robustness
figure (UA vs SNR per category). Functions take tables (:mod:`serlib.studies.noise`) or arrays, draw on new axes and
return the figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from serlib.noise import CATEGORIES

VALUE = "UA mean (%)"


def category_examples(bank, *, pick: str = "first"):
    """Fig. 1: the first usable clip (sorted ids) of the first type of each category, waveform and frame envelope."""
    from serlib.noise_categories import HOP_S, envelope_db

    fig, axes = plt.subplots(len(CATEGORIES), 1, figsize=(9, 1.6 * len(CATEGORIES)), sharex=True)
    for ax, cat in zip(axes, CATEGORIES):
        types = bank.types(cat)
        ids = bank.pool(types[:1]) if types else []
        if not ids:
            ax.set_title(f"{cat}: no clip")
            continue
        y = bank.clips[ids[0]]
        t = np.arange(len(y)) / bank.sr
        ax.plot(t, y, lw=0.4, color="k")
        env = envelope_db(y, bank.sr)
        ax2 = ax.twinx()
        ax2.plot(np.arange(len(env)) * HOP_S, env, color="tab:orange", lw=0.8)
        ax2.set_ylim(-60, 3)
        ax2.set_ylabel("dB", color="tab:orange")
        ax.set_title(f"{cat}: {bank.type_of[ids[0]]} ({ids[0]})", fontsize=9)
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    return fig


def ua_vs_af(table: pd.DataFrame, *, value: str = VALUE):
    """Fig. 8: UA vs AF per test category (one panel each), one line per noise offset; the clean UA dashed."""
    cats = [c for c in CATEGORIES if c in set(table["category"])]
    fig, axes = plt.subplots(1, max(len(cats), 1), figsize=(3.2 * max(len(cats), 1), 3), sharey=True,
                             squeeze=False)
    clean = table.loc[table["category"] == "clean", value]
    for ax, cat in zip(axes[0], cats):
        part = table[table["category"] == cat]
        for off, g in part.groupby("offset_s"):
            g = g.sort_values("af")
            ax.plot(g["af"], g[value], marker="o", label=f"offset {off:g} s")
        if len(clean):
            ax.axhline(float(clean.mean()), ls="--", color="grey", lw=1, label="clean test")
        ax.set_xscale("log", base=2)
        ax.set_title(cat)
        ax.set_xlabel("AF")
    axes[0][0].set_ylabel("UA (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def ua_vs_units(table: pd.DataFrame, *, value: str = VALUE):
    """Fig. 9(a,b): UA vs the number of noisy training units, per category; noisy test solid, clean test dashed."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for (cat, test), g in table.groupby(["category", "test"]):
        g = g.sort_values("units")
        ax.plot(g["units"], g[value], marker="o", ls="-" if test == "noisy" else "--", label=f"{cat}, {test} test")
    ax.set_xlabel("noisy training units (plus 1 clean)")
    ax.set_ylabel("UA (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def cross_heatmap(table: pd.DataFrame, *, value: str = VALUE):
    """Fig. 10: UA per (training category, test category)."""
    grid = table.pivot_table(index="train category", columns="test category", values=value, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * max(len(grid.columns), 1), 1.2 + 0.5 * max(len(grid), 1)))
    sns.heatmap(grid, annot=True, fmt=".1f", cmap="viridis", cbar_kws={"label": "UA (%)"}, ax=ax)
    ax.set_title("trained with one category's noise, tested on each")
    fig.tight_layout()
    return fig


def robustness_curves(df: pd.DataFrame, *, snr: str = "snr_eq3_db", value: str = "ua"):
    """UA vs mean SNR per category (one panel each), one line per ``model`` (mean over runs and offsets per AF).
    ``df``: rows of :func:`serlib.noise_data.robustness` with a ``model`` column (``ua`` in 0..1 or percent)."""
    cats = [c for c in CATEGORIES if c in set(df["category"])]
    fig, axes = plt.subplots(1, max(len(cats), 1), figsize=(3.2 * max(len(cats), 1), 3), sharey=True,
                             squeeze=False)
    scale = 100.0 if df[value].max() <= 1.0 else 1.0
    for ax, cat in zip(axes[0], cats):
        part = df[df["category"] == cat]
        for model, g in part.groupby("model"):
            m = g.groupby("af").agg(snr=(snr, "mean"), ua=(value, "mean")).sort_values("snr")
            ax.plot(m["snr"], scale * m["ua"], marker="o", label=model)
        ax.set_title(cat)
        ax.set_xlabel("mean SNR, Eq. 3 (dB)" if snr == "snr_eq3_db" else "mean SNR (dB)")
    axes[0][0].set_ylabel("UA (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def listen_pair(corpus, bank, utt: int, category: str, af: float, *, offset_s: float = 0.0, seed: int = 0,
                seconds: float = 3.0):
    """``(clean, noisy, info)`` of utterance row ``utt`` mixed with ``category``'s noise at ``af`` (the first
    ``seconds``), for listening; ``info``: the clip, its type and the SNRs."""
    from serlib.noise_data import NoisyCorpus, condition_for

    uid = str(corpus.table.at[utt, "utt_id"])
    nc = NoisyCorpus(corpus, condition_for({"types": bank.types(category), "af": af, "offset_s": offset_s,
                                            "seed": seed}, [uid], bank), bank)
    noisy = nc.waveforms(bank.sr)[0][0]
    from serlib.data.audio import load_audio

    clean = load_audio(corpus.abspath(utt), sr=bank.sr)
    n = int(seconds * bank.sr)
    s = nc.snr(bank.sr)
    row = nc.condition[0]
    return clean[:n], noisy[:n], {"utt": uid, "noise": row["noise"], "type": bank.type_of[row["noise"]],
                                  "snr_eq3_db": float(s["snr_eq3_db"][0]), "snr_power_db": float(s["snr_power_db"][0])}


def listen_widget(corpus, bank, utt: int = 0, afs=(0.1, 0.2, 0.4, 0.8)):
    """An ipywidgets panel: pick a category and an AF, hear the clean utterance and its noisy copy
    (``IPython.display.Audio``). ``panel.show()`` redraws (callable directly)."""
    import ipywidgets as W
    from IPython.display import Audio

    cat = W.Dropdown(options=list(CATEGORIES), value=CATEGORIES[0], description="category")
    af = W.SelectionSlider(options=list(afs), value=afs[len(afs) // 2], description="AF")
    out = W.Output()

    def show(_=None):
        out.outputs = ()
        clean, noisy, info = listen_pair(corpus, bank, utt, cat.value, af.value)
        out.append_stdout(f"{info['utt']} + {info['noise']} ({info['type']}, {cat.value}), AF {af.value}: "
                          f"SNR {info['snr_eq3_db']:.1f} dB (Eq. 3), {info['snr_power_db']:.1f} dB (power)\n")
        out.append_display_data(Audio(clean, rate=bank.sr, normalize=False))
        out.append_display_data(Audio(noisy, rate=bank.sr, normalize=False))
        return info

    cat.observe(show, "value")
    af.observe(show, "value")
    panel = W.VBox([W.HBox([cat, af]), out])
    panel.show = show
    show()
    return panel


__all__ = ["category_examples", "cross_heatmap", "listen_pair", "listen_widget", "robustness_curves", "ua_vs_af",
           "ua_vs_units"]
