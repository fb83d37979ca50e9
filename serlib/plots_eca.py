"""ECA-CNN study figures: k x version heatmap (Fig. 6), line plots for ECA placement / kernel / augmentation
(Figs. 7-11) and per-emotion ECA channel weights (Fig. 14). Functions take tables / arrays, draw on a new or given
axes, and return the figure. Tables are :func:`serlib.studies.eca.config_table` frames."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

VALUE = "UA mean (%)"


def grid_heatmap(table: pd.DataFrame, *, value: str = VALUE, row: str = "k", col: str = "version", ax=None,
                 title: str = "UA (%) by channel scale k and STFT version"):
    """Fig. 6 as a heatmap: ``value`` per (``row``, ``col``), annotated; cells without runs stay blank."""
    grid = table.pivot_table(index=row, columns=col, values=value, aggfunc="mean")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.5 + 0.75 * max(len(grid.columns), 1), 1.0 + 0.5 * max(len(grid), 1)))
    sns.heatmap(grid, annot=True, fmt=".1f", cmap="viridis", cbar_kws={"label": value}, ax=ax)
    ax.set_xlabel("STFT version" if col == "version" else col)
    ax.set_ylabel("channel scale k" if row == "k" else row)
    ax.set_title(title)
    return ax.figure


def lines(table: pd.DataFrame, *, x: str, hue: str, value: str = VALUE, err: str | None = "UA std (%)", ax=None,
          title: str = "", xlabel: str | None = None, hue_label: str | None = None):
    """One line per ``hue`` value of ``value`` against ``x`` (error bars from ``err`` where finite)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    for key, part in table.groupby(hue, sort=True):
        part = part.sort_values(x)
        yerr = part[err].to_numpy(float) if err and err in part else None
        if yerr is not None and not np.isfinite(yerr).any():
            yerr = None
        ax.errorbar(part[x].astype(str) if part[x].dtype == object else part[x], part[value], yerr=yerr,
                    marker="o", capsize=3, label=f"{hue if hue_label is None else hue_label} {key}".strip())
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(value)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax.figure


def placement(table: pd.DataFrame, *, value: str = VALUE, ax=None,
              title: str = "ECA blocks added from layer 6 backwards (Fig. 8)"):
    """Fig. 8: ``value`` against the number of our ECA blocks (after the last n layers), one line per kernel; the
    table's plain-CNN and original-ECA rows (if any) drawn as horizontal reference lines."""
    ours = table[table["eca_variant"] == "paper"]
    ours = ours.assign(n_eca=ours["eca_layers"].str.len())
    fig = lines(ours, x="n_eca", hue="eca_kernel", value=value, ax=ax, title=title, hue_label="kernel",
                xlabel="ECA after the last n conv blocks (1: layer 6; 2: layers 5-6; ...)")
    ax = fig.axes[0]
    refs = {"CNN (no ECA)": table[table["eca_layers"] == "-"], "original ECA": table[table["eca_variant"] == "original"]}
    for (label, rows), style in zip(refs.items(), ("--", ":")):
        if len(rows):
            ax.axhline(float(rows[value].mean()), ls=style, color="grey" if style == "--" else "k", label=label)
    ax.legend(fontsize="small")
    return fig


def channel_weights(weights: dict[int, np.ndarray], labels: Sequence[str], *, axes=None, title: str = ""):
    """Fig. 14: mean ECA channel weight per channel, one line per emotion, one panel per ECA layer.
    ``weights``: {layer: (n_classes, C)} from :func:`serlib.studies.eca.channel_weights_by_emotion`."""
    layers = sorted(weights)
    if axes is None:
        fig, axes = plt.subplots(len(layers), 1, figsize=(8, 2.2 * len(layers)), squeeze=False)
        axes = axes[:, 0]
    for ax, layer in zip(axes, layers):
        w = np.asarray(weights[layer])
        assert w.ndim == 2 and w.shape[0] == len(labels), f"layer {layer}: expected (n_classes, C), got {w.shape}"
        for k, lab in enumerate(labels):
            ax.plot(np.arange(w.shape[1]), w[k], lw=1, label=lab)
        ax.set_ylabel("mean weight")
        ax.set_title(f"ECA after conv block {layer} ({w.shape[1]} channels)")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("channel")
    axes[0].legend(fontsize="small", ncol=min(4, len(labels)))
    fig = axes[0].figure
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


__all__ = ["channel_weights", "grid_heatmap", "lines", "placement"]
