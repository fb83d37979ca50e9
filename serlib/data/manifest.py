"""Manifests: one CSV row per utterance with its relative path, labels and a sha256 of the file bytes.

A manifest pins what a corpus folder held when results were produced. ``write_manifest`` records it,
``check_against_manifest`` compares a freshly scanned corpus with it and says exactly what differs, and
``manifest_hash`` is the short identity that run records store.

Paths in a manifest are POSIX paths relative to ``corpus.root`` (the folder each adapter documents):

* RAVDESS: the folder holding the ``Actor_NN/`` folders, i.e. ``<data_root>/ravdess/Audio_Speech_Actors_01-24``;
* ESC-50: the folder holding ``meta/`` and ``audio/``, i.e. ``<data_root>/esc50``;
* IEMOCAP: the ``IEMOCAP_full_release`` folder.

This module also holds the header-only probe every adapter scans with (:func:`probe_audio`), so that a bad
file becomes a counted, reported skip at scan time instead of a crash in the middle of training.

Command line: ``python -m serlib manifest ravdess /path/to/ravdess data_manifests/ravdess.csv [--check --hashes]``
(:mod:`serlib.cli`; this module imports no corpus adapter, so the adapters can import it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from serlib.data.audio import AudioError, AudioInfo, audio_info
from serlib.data.corpus import Corpus, DataError

MANIFEST_COLUMNS = [
    "path",
    "utt_id",
    "label",
    "speaker",
    "gender",
    "session",
    "duration",
    "sample_rate",
    "channels",
    "sha256",
]
# Fields compared row by row by ``check_against_manifest`` (duration with a tolerance, the others exactly).
_COMPARED = ["utt_id", "label", "speaker", "gender", "session", "sample_rate", "channels", "duration"]
_DURATION_TOL = 1e-3  # manifests round durations to 4 decimals

REPO_MANIFEST_DIR = Path(__file__).resolve().parents[2] / "data_manifests"


# ----------------------------------------------------------------------------------------------------------
# Header-only probing used by every adapter


def probe_audio(path: str | Path) -> AudioInfo:
    """``audio_info`` (which checks WAV headers for truncation); raises :class:`AudioError` naming the file."""
    return audio_info(path)


AUDIO_SUFFIXES = (".wav", ".flac")  # the layouts the adapters read; FLAC copies come from ``serlib pack``


def audio_rel(root: Path, rel: str) -> str:
    """``rel`` as the corpus names it (a ``.wav`` path), or the same path with ``.flac`` when only that file exists
    (a lossless copy written by ``serlib pack``). The table then holds the path actually read."""
    p = PurePosixPath(rel)
    if p.suffix.lower() == ".wav" and not (Path(root) / rel).exists():
        alt = p.with_suffix(".flac").as_posix()
        if (Path(root) / alt).exists():
            return alt
    return rel


def probe_or_skip(root: Path, rel: str, skipped: list[dict]) -> AudioInfo | None:
    """Probe ``root / rel``; on failure append ``{"path": rel, "reason": ...}`` to ``skipped`` and return None."""
    try:
        return probe_audio(Path(root) / rel)
    except AudioError as exc:
        skipped.append({"path": rel, "reason": exc.reason})
        return None


def info_columns(info: AudioInfo) -> dict:
    """The per-file columns every adapter copies from the header."""
    return {
        "duration": float(info.duration),
        "sample_rate": int(info.sample_rate),
        "channels": int(info.channels),
        "format_mismatch": bool(info.format_mismatch),
    }


def finish_table(
    name: str, root: Path, rows: list[dict], skipped: list[dict], columns: list[str]
) -> pd.DataFrame:
    """Rows -> table, or a :class:`DataError` that lists why nothing was usable."""
    if not rows:
        detail = ""
        if skipped:
            shown = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
            more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
            detail = f"; {len(skipped)} file(s) skipped: {shown}{more}"
        raise DataError(f"{name}: no usable audio under {root}{detail}")
    return pd.DataFrame(rows, columns=columns)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Manifests


def build_manifest(corpus: Corpus, *, hashes: bool = True) -> pd.DataFrame:
    """One row per utterance: :data:`MANIFEST_COLUMNS`, sorted by path. ``sha256`` is "" when ``hashes=False``."""
    t = corpus.table
    df = pd.DataFrame(
        {
            "path": t["path"].astype(str).str.replace("\\", "/", regex=False),
            "utt_id": t["utt_id"].astype(str),
            "label": t["label"].astype(str),
            "speaker": t["speaker"].astype(str),
            "gender": t["gender"].fillna("").astype(str),
            "session": t["session"].fillna("").astype(str),
            "duration": t["duration"].astype(float).round(4),
            "sample_rate": t["sample_rate"].astype(int),
            "channels": t["channels"].astype(int),
        }
    )
    df["sha256"] = [sha256_file(corpus.root / p) for p in df["path"]] if hashes else ""
    return df.sort_values("path", kind="stable").reset_index(drop=True)


def write_manifest(corpus: Corpus, csv_path: str | Path) -> Path:
    """Write :func:`build_manifest` to ``csv_path`` (LF line endings, UTF-8) and return the path."""
    out = Path(csv_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    build_manifest(corpus).to_csv(out, index=False, lineterminator="\n")
    return out


def read_manifest(csv_path: str | Path) -> pd.DataFrame:
    p = Path(csv_path)
    if not p.is_file():
        raise DataError(f"manifest not found: {p}")
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns and c != "sha256"]
    if missing:
        raise DataError(f"manifest {p} lacks columns {missing}")
    return df


def manifest_hash(csv_path: str | Path) -> str:
    """sha256 (hex) of the manifest's bytes with line endings normalised to LF: what run records store."""
    p = Path(csv_path)
    if not p.is_file():
        raise DataError(f"manifest not found: {p}")
    return hashlib.sha256(p.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def default_manifest(name: str) -> Path | None:
    """The manifest shipped in the repository's ``data_manifests/`` for ``name``, if there is one."""
    from serlib.records import safe_name

    p = REPO_MANIFEST_DIR / f"{safe_name(name)}.csv"
    return p if p.is_file() else None


@dataclass
class ManifestReport:
    """What differs between a scanned corpus and a manifest. Empty lists mean agreement."""

    corpus: str
    manifest: str
    n_manifest: int
    n_corpus: int
    # rows the manifest lists but the corpus lacks: {"path", "why"}
    missing: list[dict] = field(default_factory=list)
    # corpus paths the manifest does not list
    extra: list[str] = field(default_factory=list)
    # field -> [(path, manifest value, corpus value)]
    mismatches: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    # [(path, manifest sha256, file sha256)]
    hash_mismatches: list[tuple[str, str, str]] = field(default_factory=list)
    hashes_checked: bool = False

    @property
    def label_mismatches(self) -> list[tuple[str, str, str]]:
        return self.mismatches.get("label", [])

    @property
    def speaker_mismatches(self) -> list[tuple[str, str, str]]:
        return self.mismatches.get("speaker", [])

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or any(self.mismatches.values()) or self.hash_mismatches)

    def summary(self, limit: int = 10) -> str:
        """Every problem, by kind, with up to ``limit`` examples each."""
        head = (
            f"{self.corpus} vs {self.manifest}: manifest {self.n_manifest} rows, corpus {self.n_corpus} rows"
            f"{', hashes checked' if self.hashes_checked else ''}"
        )
        if self.ok:
            return head + ": OK"
        lines = [head + ": MISMATCH"]

        def block(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines.extend(f"    {s}" for s in items[:limit])
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")

        block("missing (in manifest, not in corpus)", [f"{m['path']}: {m['why']}" for m in self.missing])
        block("extra (in corpus, not in manifest)", list(self.extra))
        for name, rows in self.mismatches.items():
            block(f"{name} mismatches", [f"{p}: manifest {a!r}, corpus {b!r}" for p, a, b in rows])
        block(
            "sha256 mismatches",
            [f"{p}: manifest {a[:12]}.., file {b[:12]}.." for p, a, b in self.hash_mismatches],
        )
        return "\n".join(lines)

    def raise_if_bad(self) -> None:
        if not self.ok:
            raise DataError(self.summary())


def check_against_manifest(
    corpus: Corpus, csv_path: str | Path, *, check_hashes: bool = False
) -> ManifestReport:
    """Compare ``corpus`` with the manifest at ``csv_path``: counts, missing/extra files, field and hash mismatches."""
    man = read_manifest(csv_path).set_index("path", drop=False)
    cur = build_manifest(corpus, hashes=False).set_index("path", drop=False)
    if man.index.duplicated().any():
        raise DataError(
            f"manifest {csv_path} lists paths more than once: {man.index[man.index.duplicated()][:5].tolist()}"
        )
    rep = ManifestReport(corpus.name, str(csv_path), len(man), len(cur), hashes_checked=check_hashes)

    skipped = {s["path"]: s["reason"] for s in corpus.skipped}
    for p in man.index.difference(cur.index, sort=False):
        if p in skipped:
            why = f"skipped by the adapter: {skipped[p]}"
        elif (corpus.root / p).exists():
            why = "file exists but the adapter did not list it"
        else:
            why = "file not found"
        rep.missing.append({"path": p, "why": why})
    rep.extra = sorted(cur.index.difference(man.index, sort=False))

    common = man.index.intersection(cur.index, sort=False)
    m, c = man.loc[common], cur.loc[common]
    for col in _COMPARED:
        if col not in man.columns:
            continue
        if col == "duration":
            a = pd.to_numeric(m[col], errors="coerce")
            bad = ~((a - c[col].astype(float)).abs() <= _DURATION_TOL)
        else:
            bad = m[col].astype(str) != c[col].astype(str)
        rows = [(p, str(m.at[p, col]), str(c.at[p, col])) for p in common[bad.to_numpy()]]
        if rows:
            rep.mismatches[col] = rows
    if check_hashes and "sha256" in man.columns:
        for p in common:
            want = man.at[p, "sha256"]
            got = sha256_file(corpus.root / p)
            if want != got:
                rep.hash_mismatches.append((p, want, got))
    return rep


# ----------------------------------------------------------------------------------------------------------


__all__ = [
    "MANIFEST_COLUMNS",
    "ManifestReport",
    "build_manifest",
    "check_against_manifest",
    "default_manifest",
    "manifest_hash",
    "probe_audio",
    "read_manifest",
    "sha256_file",
    "write_manifest",
]
