"""Speaker folds for corpora whose speakers hold very different numbers of clips.

RAVDESS-like corpora (every speaker with about the same number of clips) keep the round-robin deal of
:func:`serlib.data.splits.speaker_independent` (its committed folds must not change: records reference them by hash).
When speakers' clip counts differ by more than :data:`EVEN_TOLERANCE` (a corpus of 29 speakers with 2 to 80 clips),
dealing speakers round-robin gives folds of very different sizes (test sets of 18 to 114 utterances), so
:func:`balanced_speaker_folds` packs speakers into folds instead:

* speakers are taken largest first (ties broken by a ``seed``-shuffled order, so the folds are deterministic given the
  seed) and each goes to the fold with the fewest utterances; folds whose sizes differ by less than a bucket of
  ``5 %`` of the mean fold size count as equally full, and among those the speaker goes where its gender is rarest,
  then where the label mix moves closest to the corpus's, then to the lowest fold number;
* largest-first packing keeps every fold within one speaker's clip count of the others (the bucket adds at most
  5 % of the mean fold), the bound the tests check.

:func:`fold_report` gives each split's part sizes and warns (:data:`MIN_EVAL_UTTS`) when a validation or test part is
too small to mean much.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

EVEN_TOLERANCE = 0.10  # speakers' clip counts within 10 % of the largest: the round-robin deal is kept
BUCKET = 0.05  # fold sizes closer than 5 % of the mean fold size count as equal (gender / labels decide)
MIN_EVAL_UTTS = 30  # a validation or test part with fewer utterances than this is warned about


def counts_are_even(counts: Sequence[int], tolerance: float = EVEN_TOLERANCE) -> bool:
    """True when every speaker's clip count is within ``tolerance`` (a fraction) of the largest one."""
    counts = np.asarray(counts, dtype=float)
    return bool(len(counts) == 0 or counts.max() - counts.min() <= tolerance * counts.max())


def balanced_speaker_folds(table: pd.DataFrame, k: int, *, seed: int = 0,
                           key=lambda s: s) -> list[list[str]]:
    """Speakers of ``table`` (columns speaker, gender, label) packed into ``k`` folds balancing utterance counts,
    then gender, then labels (see the module docstring). Returns each fold's speakers sorted by ``key``."""
    t = table[["speaker", "gender", "label"]].astype(str)
    per_spk = t.groupby("speaker", sort=False)
    n_utts = per_spk.size()
    gender = per_spk["gender"].agg(lambda s: s.mode().iloc[0])
    labels = sorted(set(t["label"]))
    label_counts = pd.crosstab(t["speaker"], t["label"]).reindex(columns=labels, fill_value=0)
    target = label_counts.sum(axis=0).to_numpy(float)
    target = target / target.sum()
    rng = np.random.default_rng(seed)
    speakers = sorted(n_utts.index, key=key)
    rank = {speakers[i]: r for r, i in enumerate(rng.permutation(len(speakers)))}  # seeded tie-break
    order = sorted(speakers, key=lambda s: (-int(n_utts[s]), rank[s]))
    bucket = max(1.0, BUCKET * len(t) / k)
    load = np.zeros(k)
    lab = np.zeros((k, len(labels)))
    gen = [dict() for _ in range(k)]
    folds: list[list[str]] = [[] for _ in range(k)]
    for s in order:
        row = label_counts.loc[s].to_numpy(float)
        costs = []
        for f in range(k):
            mix = lab[f] + row
            dev = float(np.abs(mix / mix.sum() - target).sum())
            costs.append((int(load[f] // bucket), gen[f].get(gender[s], 0), round(dev, 9), f))
        f = min(costs)[-1]
        folds[f].append(s)
        load[f] += n_utts[s]
        lab[f] += row
        gen[f][gender[s]] = gen[f].get(gender[s], 0) + 1
    return [sorted(f, key=key) for f in folds]


def fold_report(splits, corpus=None) -> tuple[pd.DataFrame, list[str]]:
    """Each split's part sizes (``fold``, ``train``, ``val``, ``test`` utterances; ``test_speakers``), and warnings
    for validation / test parts under :data:`MIN_EVAL_UTTS` utterances (or missing a class of the corpus)."""
    rows, warns = [], []
    labels = None
    if corpus is not None:
        labels = dict(zip(corpus.table["utt_id"].astype(str), corpus.table["label"].astype(str)))
    for s in splits:
        row = {"split": s.name, "train": len(s.train), "val": len(s.val), "test": len(s.test),
               "test_speakers": len(s.meta.get("test_speakers", []))}
        rows.append(row)
        for part in ("val", "test"):
            n = row[part]
            if part == "val" and n == 0:
                continue
            if n < MIN_EVAL_UTTS:
                warns.append(f"{s.name}: {part} part has {n} utterances (< {MIN_EVAL_UTTS})")
            if labels is not None:
                present = {labels[u] for u in s.part(part)}
                missing = sorted(set(labels.values()) - present)
                if missing:
                    warns.append(f"{s.name}: {part} part has no utterance of {missing}")
    return pd.DataFrame(rows), warns
