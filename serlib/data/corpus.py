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
        return "\n".join(lines)
