"""ESC-50 environmental sounds: ``meta/esc50.csv`` + ``audio/{fold}-{src}-{take}-{target}.wav``.

Used as the noise source of the noise studies. ``label`` is the category (50 classes, ``labels`` ordered by the
``target`` id), ``speaker`` the Freesound source clip (``src_file``: fragments of one recording share it, so
group splits keep them together), ``session`` the official fold. Extra columns: ``fold``, ``target``, ``esc10``,
``take``, ``format_mismatch``.

``root`` is the folder holding ``meta/`` and ``audio/`` (``<data_root>/esc50``, or the unpacked
``ESC-50-master``). A CSV row whose clip is missing or unreadable is listed in ``corpus.skipped`` with the reason
(the shared subset's CSV lists only the clips present; a user's CSV may list more); wav files in ``audio/`` that
the CSV does not list are reported there too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serlib.data.corpus import COLUMNS, Corpus, DataError
from serlib.data.manifest import AUDIO_SUFFIXES, audio_rel, finish_table, info_columns, probe_or_skip

META = "meta/esc50.csv"
AUDIO = "audio"
META_COLUMNS = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
EXTRA_COLUMNS = ["fold", "target", "esc10", "take", "format_mismatch"]


def _read_meta(root: Path) -> pd.DataFrame:
    meta = root / META
    if not meta.is_file():
        raise DataError(f"ESC-50 metadata not found: {meta} (expected {META} and {AUDIO}/ under {root})")
    df = pd.read_csv(meta, dtype=str, keep_default_na=False)
    missing = [c for c in META_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{meta} lacks columns {missing}")
    if df.empty:
        raise DataError(f"{meta} lists no clips")
    return df


def load_esc50(root: str | Path) -> Corpus:
    """Scan ESC-50 under ``root`` (see the module docstring)."""
    r = Path(root).expanduser()
    if not r.is_dir():
        raise DataError(f"ESC-50 root does not exist or is not a folder: {r}")
    meta = _read_meta(r)
    rows: list[dict] = []
    skipped: list[dict] = []
    for rec in meta.itertuples(index=False):
        if "/" in rec.filename or "\\" in rec.filename or rec.filename in ("", ".", ".."):
            skipped.append({"path": f"{AUDIO}/{rec.filename}",
                            "reason": f"{META} names {rec.filename!r}, not a file name inside {AUDIO}/"})
            continue
        rel = audio_rel(r, f"{AUDIO}/{rec.filename}")  # .flac when only a packed copy exists
        try:
            fold, target = int(rec.fold), int(rec.target)
        except ValueError:
            skipped.append({"path": rel, "reason": f"bad fold/target in {META}: {rec.fold!r}/{rec.target!r}"})
            continue
        info = probe_or_skip(r, rel, skipped)
        if info is None:
            continue
        rows.append(
            {
                "path": rel,
                "utt_id": Path(rec.filename).stem,
                "label": rec.category,
                "speaker": str(rec.src_file),
                "gender": "",
                "session": str(fold),
                **info_columns(info),
                "fold": fold,
                "target": target,
                "esc10": str(rec.esc10).strip().lower() == "true",
                "take": str(rec.take),
            }
        )
    listed = {Path(n).stem for n in meta["filename"]}
    audio_dir = r / AUDIO
    if audio_dir.is_dir():
        for f in sorted(f for f in audio_dir.iterdir() if f.suffix.lower() in AUDIO_SUFFIXES):
            if f.stem not in listed:
                skipped.append({"path": f"{AUDIO}/{f.name}", "reason": f"not listed in {META}"})
    table = finish_table("esc50", r, rows, skipped, COLUMNS + EXTRA_COLUMNS)
    by_target = table.drop_duplicates("label").sort_values("target")
    clash = table.groupby("label")["target"].nunique()
    if (clash > 1).any():
        raise DataError(f"{r / META}: categories with several target ids: {clash[clash > 1].index.tolist()}")
    return Corpus("esc50", r, table, tuple(by_target["label"]), skipped)


__all__ = ["load_esc50"]
