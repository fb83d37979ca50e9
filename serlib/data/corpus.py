"""The corpus table every adapter produces and every split, feature cache and experiment reads.

A :class:`Corpus` is a root folder plus a pandas table with one row per usable utterance:

=============  =====================================================================
column         meaning
=============  =====================================================================
path           path relative to ``root`` (POSIX separators)
utt_id         unique utterance id (string)
label          class name (string, one of ``labels``) -- for ESC-50 the category
speaker        speaker id (string); corpus-unique
gender         "F", "M" or "" when unknown
session        session / fold / group id (string, "" when none)
duration       seconds (float)
sample_rate    Hz of the file on disk (int)
channels       channels of the file on disk (int)
=============  =====================================================================

Adapters may add corpus-specific columns (``improvised``, ``intensity``, ``statement``, ``fold``, ...).
Files that cannot be used are not dropped silently: they are listed in ``skipped`` as
``{"path": ..., "reason": ...}`` and reported by :meth:`Corpus.report`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

COLUMNS = ["path", "utt_id", "label", "speaker", "gender", "session", "duration", "sample_rate", "channels"]


class DataError(RuntimeError):
    """A corpus folder is missing, empty, or inconsistent with its manifest."""


@dataclass
class Corpus:
    name: str
    root: Path
    table: pd.DataFrame
    labels: tuple[str, ...]
    skipped: list[dict] = field(default_factory=list)
    synthetic: bool = False

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        missing = [c for c in COLUMNS if c not in self.table.columns]
        if missing:
            raise ValueError(f"corpus {self.name}: table lacks columns {missing}")
        self.table = self.table.reset_index(drop=True)
        if self.table["utt_id"].duplicated().any():
            dup = self.table.loc[self.table["utt_id"].duplicated(), "utt_id"].tolist()[:5]
            raise ValueError(f"corpus {self.name}: duplicated utt_id {dup}")
        unknown = set(self.table["label"]) - set(self.labels)
        if unknown:
            raise ValueError(f"corpus {self.name}: labels {sorted(unknown)} not in {self.labels}")

    def __len__(self) -> int:
        return len(self.table)

    def abspath(self, i: int) -> Path:
        return self.root / self.table.at[i, "path"]

    @property
    def paths(self) -> list[Path]:
        return [self.root / p for p in self.table["path"]]

    @property
    def y(self):
        """Integer labels in the order of ``labels`` (numpy int64)."""
        index = {lab: k for k, lab in enumerate(self.labels)}
        return self.table["label"].map(index).to_numpy(dtype="int64")

    def subset(self, mask, name: str | None = None, labels: tuple[str, ...] | None = None) -> Corpus:
        """A corpus restricted to the rows where ``mask`` is true (e.g. IEMOCAP improvised only)."""
        table = self.table[mask].reset_index(drop=True)
        labels = labels or tuple(lab for lab in self.labels if lab in set(table["label"]))
        return Corpus(name or self.name, self.root, table, labels, list(self.skipped), self.synthetic)

    def fingerprint(self) -> str:
        """A hash of the table's identity columns: what feature caches and run records key on."""
        cols = ["path", "utt_id", "label", "speaker", "session", "sample_rate", "channels"]
        blob = self.table[cols].astype(str).to_csv(index=False).encode()
        blob += self.table["duration"].round(4).astype(str).str.cat(sep=",").encode()  # content changes move it
        blob += ("|".join(self.labels)).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def content_hash(self) -> str:
        """A hash of every file's bytes (with its path) and the table's identity: changes when any file's content
        changes, even in place with the same length. What feature caches key on and run records store as
        ``corpus.content_hash``.

        Kept apart from :meth:`fingerprint` on purpose: committed records and split metadata store the fingerprint,
        and changing its definition would make every committed record look like it came from other data. Digests
        are memoised by stat signature (:func:`serlib.cache.file_digests`), so repeated calls cost one ``stat`` per
        file."""
        from serlib.cache import file_digests

        digests = file_digests(self.paths)
        blob = "\n".join(f"{p}\t{d}" for p, d in zip(self.table["path"], digests)) + "\n" + self.fingerprint()
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def report(self) -> str:
        """A short human-readable summary, including every skipped file and why."""
        t = self.table
        lines = [
            f"{self.name}: {len(t)} utterances, {t['speaker'].nunique()} speakers, "
            f"{len(self.labels)} classes{' (SYNTHETIC)' if self.synthetic else ''}",
            "  per class: " + ", ".join(f"{lab} {int((t['label'] == lab).sum())}" for lab in self.labels),
        ]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file(s):")
            lines += [f"    {s['path']}: {s['reason']}" for s in self.skipped]
        mismatched = self.format_mismatches()
        if mismatched:
            lines.append(f"  read {len(mismatched)} file(s) whose container differs from the extension "
                         "(format_mismatch, e.g. AIFF named .wav):")
            lines += [f"    {p}" for p in mismatched]
        return "\n".join(lines)

    def format_mismatches(self) -> list[str]:
        """Paths of the kept files whose container differs from their extension (the ``format_mismatch`` column)."""
        if "format_mismatch" not in self.table.columns:
            return []
        flag = self.table["format_mismatch"].astype(str).str.lower().isin(["true", "1"])
        return self.table.loc[flag, "path"].astype(str).tolist()
