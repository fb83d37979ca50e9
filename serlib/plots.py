"""The figures the notebooks show. Functions take data, draw on a new or given axes, and return the figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns


def class_speaker_counts(corpus, ax=None):
    """Heatmap of utterances per (speaker, class)."""
    table = corpus.table.pivot_table(index="speaker", columns="label", values="utt_id", aggfunc="count",
                                     fill_value=0)
    table = table.reindex(columns=list(corpus.labels), fill_value=0)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.7 * len(corpus.labels), 0.8 + 0.25 * len(table)))
    sns.heatmap(table, annot=len(table) <= 30, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.set_title(f"{corpus.name}: utterances per speaker and class")
    return ax.figure


def durations(corpus, ax=None, bins: int = 40):
    """Histogram of utterance durations per class."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    sns.histplot(data=corpus.table, x="duration", hue="label", bins=bins, multiple="stack", ax=ax)
    ax.set_xlabel("duration (s)")
    ax.set_title(f"{corpus.name}: durations")
    return ax.figure


def waveform_and_features(y: np.ndarray, sr: int, feats: dict[str, np.ndarray], *, hop_s: dict | None = None,
                          title: str = ""):
    """A waveform above its feature maps (each (F, T)), time-aligned."""
    fig, axes = plt.subplots(1 + len(feats), 1, figsize=(9, 2 + 2 * len(feats)), sharex=True)
    t = np.arange(len(y)) / sr
    axes[0].plot(t, y, lw=0.5, color="k")
    axes[0].set_ylabel("amplitude")
    axes[0].set_title(title)
    for ax, (name, f) in zip(axes[1:], feats.items()):
        hop = (hop_s or {}).get(name, len(y) / sr / max(f.shape[1], 1))
        ax.imshow(f, origin="lower", aspect="auto", extent=(0, f.shape[1] * hop, 0, f.shape[0]), cmap="magma")
        ax.set_ylabel(name)
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    return fig


def confusion(conf, labels, *, normalize: bool = True, ax=None, title: str = ""):
    """Confusion matrix (rows true, columns predicted); row-normalised to recall when ``normalize``."""
    conf = np.asarray(conf, dtype=float)
    if normalize:
        conf = conf / np.clip(conf.sum(1, keepdims=True), 1, None)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 0.6 * len(labels), 1.0 + 0.55 * len(labels)))
    sns.heatmap(conf, annot=True, fmt=".2f" if normalize else ".0f", cmap="Blues", xticklabels=labels,
                yticklabels=labels, cbar=False, ax=ax, vmin=0, vmax=1 if normalize else None)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return ax.figure


def history(hist: list[dict], *, ax=None, title: str = ""):
    """Training loss and validation / test score per epoch."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    epochs = [h["epoch"] for h in hist]
    ax.plot(epochs, [h["train_loss"] for h in hist], label="train loss")
    ax.set_xlabel("epoch")
    ax2 = ax.twinx()
    for part, style in (("val", "-"), ("test", "--")):
        if any(part in h for h in hist):
            ax2.plot(epochs, [h.get(part, {}).get("score", np.nan) for h in hist], style, label=f"{part} UA")
    ax2.set_ylabel("UA")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    ax.set_title(title)
    return ax.figure
