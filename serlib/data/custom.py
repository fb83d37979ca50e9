"""Bring your own corpus: a CSV of ``path,label,speaker`` (+ optional ``session,gender,utt_id``).

Paths are relative to the CSV's folder, or to ``root`` when given (absolute paths are kept as they are).
``utt_id`` defaults to the path without its extension; ``gender`` accepts F/M/female/male (anything else -> "").
Rows whose file is missing or not audio are listed in ``corpus.skipped``; rows with an empty path, label or
speaker too. Other columns of the CSV are carried into the table unchanged.

Example::

    write_custom_manifest([{"path": "a/1.wav", "label": "happy", "speaker": "s1"}], "my.csv")
    corpus = load_custom("my.csv", name="mine")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from serlib.data.corpus import COLUMNS, Corpus, DataError
from serlib.data.manifest import finish_table, info_columns, probe_or_skip

REQUIRED = ("path", "label", "speaker")
OPTIONAL = ("session", "gender", "utt_id")
_GENDER = {"f": "F", "female": "F", "w": "F", "m": "M", "male": "M"}


def _read(csv_path: Path) -> pd.DataFrame:
    if not csv_path.is_file():
        raise DataError(f"custom manifest not found: {csv_path}")
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path} lacks required columns {missing} (needs {', '.join(REQUIRED)})")
    if df.empty:
        raise DataError(f"{csv_path} lists no rows")
    return df


def load_custom(
    manifest_csv: str | Path,
    *,
    root: str | Path | None = None,
    name: str | None = None,
    labels: Sequence[str] | None = None,
) -> Corpus:
    """A :class:`Corpus` from a CSV; ``labels`` fixes the class order (default: sorted unique labels)."""
    csv_path = Path(manifest_csv).expanduser()
    df = _read(csv_path)
    base = Path(root).expanduser() if root is not None else csv_path.parent
    if not base.is_dir():
        raise DataError(f"custom corpus root does not exist: {base}")
    name = name or csv_path.stem
    extra_cols = [c for c in df.columns if c not in REQUIRED + OPTIONAL and c not in COLUMNS]
    rows: list[dict] = []
    skipped: list[dict] = []
    seen: dict[str, str] = {}
    allowed = set(labels) if labels is not None else None
    for i, rec in enumerate(df.to_dict("records")):
        rel = str(rec["path"]).strip().replace("\\", "/")
        where = rel or f"{csv_path.name} row {i + 2}"
        empty = [c for c in REQUIRED if not str(rec[c]).strip()]
        if empty:
            skipped.append(
                {"path": where, "reason": f"empty {', '.join(empty)} in {csv_path.name} row {i + 2}"}
            )
            continue
        label = str(rec["label"]).strip()
        if allowed is not None and label not in allowed:
            skipped.append({"path": rel, "reason": f"label {label!r} not in the given labels"})
            continue
        utt_id = str(rec.get("utt_id", "")).strip() or str(Path(rel).with_suffix("")).replace("\\", "/")
        if utt_id in seen:
            skipped.append({"path": rel, "reason": f"duplicate utt_id {utt_id!r} (first at {seen[utt_id]})"})
            continue
        info = probe_or_skip(base, rel, skipped)
        if info is None:
            continue
        seen[utt_id] = rel
        rows.append(
            {
                "path": rel,
                "utt_id": utt_id,
                "label": label,
                "speaker": str(rec["speaker"]).strip(),
                "gender": _GENDER.get(str(rec.get("gender", "")).strip().lower(), ""),
                "session": str(rec.get("session", "")).strip(),
                **info_columns(info),
                **{c: rec[c] for c in extra_cols},
            }
        )
    table = finish_table(name, base, rows, skipped, COLUMNS + ["format_mismatch"] + extra_cols)
    order = tuple(labels) if labels is not None else tuple(sorted(table["label"].unique()))
    return Corpus(name, base, table, order, skipped)


def write_custom_manifest(rows: Iterable[dict] | pd.DataFrame, csv_path: str | Path) -> Path:
    """Write rows (dicts or a DataFrame with at least ``path,label,speaker``) as a CSV ``load_custom`` reads."""
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"rows lack required columns {missing}")
    df["path"] = df["path"].astype(str).str.replace("\\", "/", regex=False)
    first = [c for c in REQUIRED + OPTIONAL if c in df.columns]
    df = df[first + [c for c in df.columns if c not in first]]
    out = Path(csv_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, lineterminator="\n")
    return out


__all__ = ["load_custom", "write_custom_manifest"]
