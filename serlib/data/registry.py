"""Which corpora exist, where they are, and how to load one by name.

``data_root()`` is the folder holding the corpora (an explicit argument, else ``$SERLIB_DATA``, else None);
``find_corpora`` looks for ``ravdess/``, ``esc50/`` and ``IEMOCAP_full_release/`` or ``iemocap/`` beneath it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from serlib.data.corpus import Corpus, DataError
from serlib.data.custom import load_custom
from serlib.data.esc50 import load_esc50
from serlib.data.iemocap import load_iemocap
from serlib.data.ravdess import load_ravdess

CORPORA: dict[str, Callable[..., Corpus]] = {
    "ravdess": load_ravdess,
    "iemocap": load_iemocap,
    "esc50": load_esc50,
    "custom": load_custom,
}

# Folder names looked for under a data root, first match wins (compared case-insensitively).
_FOLDERS = {
    "ravdess": ("ravdess", "Audio_Speech_Actors_01-24"),
    "esc50": ("esc50", "ESC-50", "ESC-50-master"),
    "iemocap": ("IEMOCAP_full_release", "iemocap"),
}


def data_root(arg: str | Path | None = None) -> Path | None:
    """``arg`` if given, else ``$SERLIB_DATA`` if set, else None (no existence check)."""
    if arg is not None and str(arg) != "":
        return Path(arg).expanduser()
    env = os.environ.get("SERLIB_DATA")
    return Path(env).expanduser() if env else None


def _looks_like(name: str, p: Path) -> bool:
    if name == "ravdess":
        return any(
            c.is_dir() and any(d.is_dir() and d.name.startswith("Actor_") for d in c.iterdir())
            for c in (p / "Audio_Speech_Actors_01-24", p)
        )
    if name == "esc50":
        return (p / "meta" / "esc50.csv").is_file()
    if name == "iemocap":
        return any(c.is_dir() and any(c.glob("Session[1-5]")) for c in (p / "IEMOCAP_full_release", p))
    return False


def find_corpora(root: str | Path | None = None) -> dict[str, Path]:
    """Corpora found under ``root`` (default :func:`data_root`): name -> the folder to pass to its loader."""
    base = data_root(root)
    if base is None or not base.is_dir():
        return {}
    children = {d.name.lower(): d for d in base.iterdir() if d.is_dir()}
    found: dict[str, Path] = {}
    for name, candidates in _FOLDERS.items():
        for cand in candidates:
            d = children.get(cand.lower())
            if d is not None and _looks_like(name, d):
                found[name] = d
                break
    return found


def load_corpus(name: str, root: str | Path, **kw) -> Corpus:
    """Load corpus ``name`` from ``root`` (for ``custom``: the CSV); ``kw`` go to the loader."""
    try:
        loader = CORPORA[name]
    except KeyError:
        raise DataError(f"unknown corpus {name!r}; known: {', '.join(sorted(CORPORA))}") from None
    return loader(root, **kw)


__all__ = ["CORPORA", "data_root", "find_corpora", "load_corpus"]
