"""Bring your own corpus: a CSV of ``path,label,speaker`` (+ optional ``session,gender,utt_id``).

Paths are relative to the CSV's folder, or to ``root`` when given. They are normalised (``audio/../audio/a.wav`` is
``audio/a.wav``) and must stay inside that corpus root: an absolute path or one whose ``..`` leaves the root is a
:class:`DataError` naming the row, unless ``allow_outside_root=True`` is passed explicitly (then such paths are read
where they point, and kept absolute in the table).
``utt_id`` defaults to the normalised path without its extension; ``gender`` accepts F/M/female/male (anything else
-> ""). Other columns of the CSV are carried into the table unchanged.

What bad rows get:

* a row whose file is missing or not audio, or with an empty path, label or speaker: listed in ``corpus.skipped``;
* the same file named twice (two spellings of one path, or two links to one file): a :class:`DataError` naming
  both rows, since their labels may contradict each other;
* labels or speakers that differ only in case (``Happy`` / ``happy`` / ``HAPPY``, ``S1`` / ``s1``): merged into one
  spelling (the most frequent; ties: the first seen; with ``labels=`` the given spelling) with a warning listing
  every merge (``case="merge"``, the default), or refused with a :class:`DataError` (``case="refuse"``). Without this
  they would silently become separate classes, and one speaker two, breaking the speaker-independent split.

Example::

    write_custom_manifest([{"path": "a/1.wav", "label": "happy", "speaker": "s1"}], "my.csv")
    corpus = load_custom("my.csv", name="mine")
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import pandas as pd

from serlib.data.corpus import COLUMNS, Corpus, DataError
from serlib.data.manifest import finish_table, info_columns, probe_or_skip

REQUIRED = ("path", "label", "speaker")
OPTIONAL = ("session", "gender", "utt_id")
_GENDER = {"f": "F", "female": "F", "w": "F", "m": "M", "male": "M"}
CASE_POLICIES = ("merge", "refuse")


def _normalise_path(rel: str, base: Path, where: str, allow_outside_root: bool) -> str:
    """``rel`` with ``.`` / ``..`` folded (POSIX); a DataError when it leaves ``base`` and that is not allowed."""
    if PurePosixPath(rel).is_absolute() or Path(rel).is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        if not allow_outside_root:
            raise DataError(f"{where}: absolute path {rel!r} is outside the corpus root {base}; make it relative to "
                            "the root, or pass allow_outside_root=True to read files anywhere")
        return os.path.normpath(rel).replace("\\", "/")
    norm = os.path.normpath(rel).replace("\\", "/")
    if norm == ".." or norm.startswith("../"):
        if not allow_outside_root:
            raise DataError(f"{where}: path {rel!r} leaves the corpus root {base} through '..'; move the file under "
                            "the root, or pass allow_outside_root=True to read files anywhere")
        return (base / norm).resolve().as_posix()
    return norm


def _case_merges(values: list[str], preferred: Sequence[str] = ()) -> dict[str, str]:
    """spelling -> canonical spelling for values that differ only in case (identity entries left out)."""
    counts = Counter(values)
    groups: dict[str, list[str]] = {}
    for v in dict.fromkeys(values):  # first-seen order
        groups.setdefault(v.casefold(), []).append(v)
    given = {p.casefold(): p for p in preferred}
    out = {}
    for key, spellings in groups.items():
        if len(spellings) < 2 and (key not in given or spellings[0] == given[key]):
            continue
        canon = given.get(key) or max(spellings, key=lambda v: (counts[v], -spellings.index(v)))
        out.update({v: canon for v in spellings if v != canon})
    return out


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
    case: str = "merge",
    allow_outside_root: bool = False,
) -> Corpus:
    """A :class:`Corpus` from a CSV; ``labels`` fixes the class order (default: sorted unique labels).

    ``case``: labels / speakers differing only in case are merged with a warning (``"merge"``) or refused
    (``"refuse"``); ``allow_outside_root``: accept absolute paths and paths leaving the root (see the module
    docstring)."""
    if case not in CASE_POLICIES:
        raise ValueError(f"case={case!r}: choose one of {CASE_POLICIES}")
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
    files: dict[str, tuple[int, str]] = {}  # resolved file -> (csv row, path as written)
    records = df.to_dict("records")
    for rec in records:
        rec["label"], rec["speaker"] = str(rec["label"]).strip(), str(rec["speaker"]).strip()
    merges = {}
    for col, preferred in (("label", labels or ()), ("speaker", ())):
        merge = _case_merges([r[col] for r in records if r[col]], preferred)
        if merge and case == "refuse":
            shown = "; ".join(f"{v!r} vs {c!r}" for v, c in merge.items())
            raise DataError(f"{csv_path}: {col}s differ only in case ({shown}); spell each {col} one way, or load "
                            "with case='merge'")
        merges[col] = merge
    if merges["label"] or merges["speaker"]:
        listed = "; ".join(f"{col} {v!r} -> {c!r}" for col, m in merges.items() for v, c in m.items())
        warnings.warn(f"{csv_path}: merged spellings that differ only in case: {listed} "
                      "(pass case='refuse' to be stopped instead)", stacklevel=2)
    allowed = set(labels) if labels is not None else None
    for i, rec in enumerate(records):
        row_no = f"{csv_path.name} row {i + 2}"
        raw = str(rec["path"]).strip().replace("\\", "/")
        where = raw or row_no
        empty = [c for c in REQUIRED if not str(rec[c]).strip()]
        if empty:
            skipped.append(
                {"path": where, "reason": f"empty {', '.join(empty)} in {row_no}"}
            )
            continue
        rel = _normalise_path(raw, base, row_no, allow_outside_root)
        label = merges["label"].get(rec["label"], rec["label"])
        if allowed is not None and label not in allowed:
            skipped.append({"path": rel, "reason": f"label {label!r} not in the given labels"})
            continue
        real = str((base / rel).resolve())
        if real in files:
            first_row, first_path = files[real]
            raise DataError(f"{csv_path}: rows {first_row} ({first_path!r}) and {i + 2} ({raw!r}) name the same file "
                            f"{real}; list each file once")
        files[real] = (i + 2, raw)
        utt_id = str(rec.get("utt_id", "")).strip() or str(PurePosixPath(rel).with_suffix("")).lstrip("/")
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
                "speaker": merges["speaker"].get(rec["speaker"], rec["speaker"]),
                "gender": _GENDER.get(str(rec.get("gender", "")).strip().lower(), ""),
                "session": str(rec.get("session", "")).strip(),
                **info_columns(info),
                **{c: rec[c] for c in extra_cols},
            }
        )
    table = finish_table(name, base, rows, skipped, COLUMNS + ["format_mismatch"] + extra_cols)
    order = tuple(labels) if labels is not None else tuple(sorted(table["label"].unique()))
    return Corpus(name, base, table, order, skipped)


DROP = ("", "-", "drop")  # label-map targets that drop a class (its rows become counted skips)


def parse_label_map(text: str | dict | None) -> dict[str, str]:
    """A label map from JSON (``'{"calm": "neutral", "surprised": "drop"}'``), a ``a=b,c=d`` list, or a dict.
    A target of ``""``, ``"-"`` or ``"drop"`` drops that class."""
    if text is None or isinstance(text, dict):
        return {str(k): ("" if v is None else str(v)) for k, v in (text or {}).items()}
    text = str(text).strip()
    if text.startswith("{"):
        import json

        try:
            out = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--labels {text!r}: not valid JSON ({exc})") from None
        return parse_label_map(out)
    out = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        src, eq, dst = item.partition("=")
        if not eq or not src.strip():
            raise ValueError(f"--labels: {item!r} is not FROM=TO; write e.g. calm=neutral,surprised=happy")
        out[src.strip()] = dst.strip()
    return out


def relabel(corpus: Corpus, label_map: dict[str, str]) -> Corpus:
    """``corpus`` with labels renamed by ``label_map`` (several old labels may merge into one; unmapped labels stay;
    a target in :data:`DROP` removes the class, its rows listed in ``skipped``). A key that is no label of the
    corpus is a :class:`DataError` (a typo would otherwise silently map nothing). Classes are in sorted order."""
    mapping = parse_label_map(label_map)
    unknown = sorted(set(mapping) - set(corpus.labels))
    if unknown:
        raise DataError(f"label map names labels {unknown} that corpus {corpus.name} does not have "
                        f"(its labels: {list(corpus.labels)})")
    table = corpus.table.copy()
    new = table["label"].map(lambda v: mapping.get(v, v))
    dropped = new.isin(DROP)
    skipped = list(corpus.skipped) + [{"path": p, "reason": f"label {old!r} dropped by the label map"}
                                      for p, old in zip(table.loc[dropped, "path"], table.loc[dropped, "label"])]
    table["label"] = new
    table = table[~dropped.to_numpy()]
    if table.empty:
        raise DataError(f"corpus {corpus.name}: the label map drops every utterance")
    return Corpus(corpus.name, corpus.root, table, tuple(sorted(set(table["label"]))), skipped, corpus.synthetic)


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


__all__ = ["load_custom", "parse_label_map", "relabel", "write_custom_manifest"]
