"""Attention-map figures (Head Fusion: the fused map of Eq. 2 and its heads, on the conv map's grid)."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np


def attention_maps(fused_map, head_maps=None, *, mfcc=None, title: str = "", cmap: str = "viridis"):
    """The fused attention map (H, W) beside each head's map (n_head, H, W), optionally under the input MFCC (F, T).

    Maps are the attention each feature point receives, averaged over queries (``aux["fused_map"]`` /
    ``aux["head_maps"]`` of :class:`serlib.models.head_fusion.HeadFusionACNN`); rows are the pooled MFCC axis, columns
    pooled time. Returns the figure.
    """
    fused = np.asarray(fused_map, dtype=float)
    heads = [] if head_maps is None else list(np.asarray(head_maps, dtype=float))
    n = 1 + len(heads) + (mfcc is not None)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n + 0.6, 2.4), squeeze=False)
    axes = list(axes[0])
    if mfcc is not None:
        ax = axes.pop(0)
        ax.imshow(np.asarray(mfcc), origin="lower", aspect="auto", cmap="magma")
        ax.set_title("input MFCC")
        ax.set_xlabel("frame")
        ax.set_ylabel("MFCC bin")
    vmax = max([fused.max()] + [h.max() for h in heads])
    for ax, (name, m) in zip(axes, [("fused (Eq. 2)", fused)] + [(f"head {i}", h) for i, h in enumerate(heads)]):
        im = ax.imshow(m, origin="lower", aspect="auto", cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(name)
        ax.set_xlabel("time (pooled)")
    axes[0].set_ylabel("MFCC (pooled)")
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention received")
    if title:
        fig.suptitle(title)
    return fig


def figure_png(fig, *, dpi: int = 90, close: bool = True) -> bytes:
    """A figure rendered to PNG bytes (for ipywidgets outputs); closes it by default."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        plt.close(fig)
    return buf.getvalue()


__all__ = ["attention_maps", "figure_png"]
