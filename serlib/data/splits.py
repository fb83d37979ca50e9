"""Train / validation / test splits: every protocol of the five papers, plus an honest speaker-independent one.

(Over 450 lines on purpose: every protocol the five papers use, with their shared balancing and disjointness checks,
in one place, so that all models are split by one code path.)

Every protocol is a function ``protocol(corpus, *, ..., seed) -> list[Split]`` and is deterministic given the
corpus table and the seed. A :class:`Split` stores utterance ids (not row positions), so it survives a table
reorder and can be saved as JSON beside a run record; :meth:`Split.indices` turns it back into row positions.

==================  ===========================================================================================
registry name       protocol
==================  ===========================================================================================
random_80_20        Head Fusion: random 80/20 by utterance, stratified by label, speakers shared
kfold5_3_1_1        FACA (RAVDESS): 5 stratified random folds; fold i test, fold i+1 validation, 3 train
kfold10_8_1_1       FACA (IEMOCAP): the same with 10 folds (8/1/1)
random_kfold5       ECA: 5 stratified random folds, train/test (optional validation carved from train)
loso_session        CA-SER CV-5: leave one session out (validation: the next session)
loso_speaker        CA-SER CV-10: leave one speaker out (validation: the next speaker)
session5_test       MOMA: sessions 1-4 train, session 5 test
speaker_independent ours, for every corpus: speakers partitioned into folds (gender-balanced); fold i test,
                    fold i+1 validation, the rest train. IEMOCAP-like corpora (speakers nested in sessions):
                    one fold per session, i.e. test = both speakers of one session, validation = the next session.
                    Unbalanced speakers: packed into folds balancing utterance counts (see speaker_folds).
loso_speaker_ho...  loso_speaker_holdout: leave one speaker out, selection on held-out utterances of the training
                    speakers (for 2-speaker corpora; NOT speaker-independent selection)
==================  ===========================================================================================

Each split's ``meta["speaker_independent"]`` says whether it promises that no speaker appears in two parts; for
group-based protocols the promise is checked on the table when the split is made, and
:func:`assert_speaker_disjoint` re-checks it (e.g. in a run) and names the overlapping speakers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import pandas as pd
from sklearn.model_selection import (
    KFold,
    ShuffleSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
    StratifiedShuffleSplit,
)

from serlib.data.corpus import Corpus

PARTS = ("train", "val", "test")


class SpeakerOverlapError(AssertionError):
    """A split that should be speaker-independent shares speakers between parts. ``overlap`` maps
    ``"train&test"``-style pair names to the shared speakers."""

    def __init__(self, name: str, overlap: dict[str, list[str]]):
        self.overlap = overlap
        detail = "; ".join(f"{k}: {v[:10]}{' ...' if len(v) > 10 else ''}" for k, v in overlap.items())
        super().__init__(f"split {name}: speakers shared between parts ({detail})")


@dataclass
class Split:
    """One train / validation / test partition of a corpus, by utterance id (``val`` may be empty)."""

    name: str
    protocol: str
    fold: int
    seed: int | None
    train: list[str]
    val: list[str]
    test: list[str]
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict (lists of str, plain ints)."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        d = dict(d)
        for part in PARTS:
            d[part] = [str(u) for u in d.get(part, [])]
        d.setdefault("meta", {})
        return cls(**d)

    def part(self, name: str) -> list[str]:
        if name not in PARTS:
            raise KeyError(f"unknown part {name!r}; expected one of {PARTS}")
        return getattr(self, name)

    def indices(self, corpus: Corpus) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row positions in ``corpus.table`` of (train, val, test), each a sorted int64 array.

        Raises ``KeyError`` naming utterances that are not in the corpus (a split made on another table).
        """
        pos = pd.Series(np.arange(len(corpus.table)), index=corpus.table["utt_id"].astype(str).to_numpy())
        out = []
        for part in PARTS:
            ids = self.part(part)
            found = pos.reindex(ids)
            if found.isna().any():
                missing = [u for u, m in zip(ids, found.isna()) if m]
                raise KeyError(
                    f"split {self.name}: {len(missing)} {part} utterance(s) not in corpus {corpus.name}: {missing[:5]}"
                )
            out.append(np.sort(found.to_numpy(dtype=np.int64)))
        return out[0], out[1], out[2]

    def summary(self, corpus: Corpus, by: str = "label") -> pd.DataFrame:
        """Counts per part (rows train/val/test) and value of column ``by`` ("label", "speaker", "gender",
        "session"), plus ``total`` and ``speakers`` (distinct speakers in the part) columns."""
        t = corpus.table
        rows = {}
        for part, idx in zip(PARTS, self.indices(corpus)):
            sub = t.iloc[idx]
            counts = sub[by].astype(str).value_counts()
            rows[part] = counts
        df = pd.DataFrame(rows).T.fillna(0).astype(int)
        order = list(corpus.labels) if by == "label" else sorted(set(t[by].astype(str)), key=_natural_key)
        df = df.reindex(index=list(PARTS), columns=order, fill_value=0)
        df["total"] = df.sum(axis=1)
        df["speakers"] = [t.iloc[idx]["speaker"].nunique() for idx in self.indices(corpus)]
        return df


# --------------------------------------------------------------------------------------------------- helpers


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _natural_key(s: str):
    """Sort "2" before "10" and "Ses2" before "Ses10"."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", str(s)) if p != ""]


def _ids(corpus: Corpus, idx: np.ndarray) -> list[str]:
    return corpus.table["utt_id"].astype(str).to_numpy()[np.sort(np.asarray(idx, dtype=np.int64))].tolist()


def _speaker_overlap(corpus: Corpus, parts: dict[str, np.ndarray]) -> dict[str, list[str]]:
    spk = corpus.table["speaker"].astype(str).to_numpy()
    sets = {k: set(spk[v]) for k, v in parts.items()}
    names = list(sets)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = sorted(sets[a] & sets[b], key=_natural_key)
            if common:
                out[f"{a}&{b}"] = common
    return out


def _make(
    corpus: Corpus,
    protocol: str,
    fold: int,
    seed: int | None,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    *,
    speaker_independent: bool,
    **meta,
) -> Split:
    """Build a Split; a speaker-independent promise is verified against the table."""
    parts = {"train": train, "val": val, "test": test}
    if speaker_independent:
        overlap = _speaker_overlap(corpus, parts)
        if overlap:
            raise SpeakerOverlapError(f"{protocol}/fold{fold}", overlap)
    if min(len(train), len(test)) == 0:
        raise ValueError(f"{protocol}/fold{fold}: empty train or test part")
    spk = corpus.table["speaker"].astype(str).to_numpy()
    full_meta = {
        "corpus": corpus.name,
        "fingerprint": corpus.fingerprint(),
        "speaker_independent": bool(speaker_independent),
        "test_speakers": sorted(set(spk[test]), key=_natural_key),
        "val_speakers": sorted(set(spk[val]), key=_natural_key),
    }
    full_meta.update(meta)
    return Split(
        name=f"{protocol}/fold{fold}",
        protocol=protocol,
        fold=int(fold),
        seed=None if seed is None else int(seed),
        train=_ids(corpus, train),
        val=_ids(corpus, val),
        test=_ids(corpus, test),
        meta=_jsonable(full_meta),
    )


def _carve(idx: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, carved) with ``n`` carved rows, stratified by ``y`` when possible."""
    idx = np.asarray(idx, dtype=np.int64)
    if n <= 0:
        return idx, np.array([], dtype=np.int64)
    if n >= len(idx):
        raise ValueError(f"cannot carve {n} of {len(idx)} rows and keep any")
    dummy = np.zeros(len(idx))
    try:
        a, b = next(StratifiedShuffleSplit(n_splits=1, test_size=n, random_state=seed).split(dummy, y[idx]))
    except ValueError:  # a class with one member, or fewer carved rows than classes
        a, b = next(ShuffleSplit(n_splits=1, test_size=n, random_state=seed).split(dummy))
    return np.sort(idx[a]), np.sort(idx[b])


def _stratified_folds(y: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Test-row arrays of k folds: stratified by label (group-disjoint when ``groups`` given)."""
    dummy = np.zeros(len(y))
    if groups is not None:
        if len(set(groups)) < k:
            raise ValueError(f"{k} folds need at least {k} groups, got {len(set(groups))}")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return [np.sort(te) for _, te in splitter.split(dummy, y, groups)]
    if np.bincount(y).max() < k:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
        return [np.sort(te) for _, te in splitter.split(dummy)]
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [np.sort(te) for _, te in splitter.split(dummy, y)]


def _group_values(corpus: Corpus, column: str) -> np.ndarray:
    if column not in corpus.table.columns:
        raise ValueError(f"corpus {corpus.name} has no column {column!r}")
    g = corpus.table[column].astype(str).to_numpy()
    if (g == "").any() or (g == "nan").any():
        raise ValueError(
            f"corpus {corpus.name}: {int(((g == '') | (g == 'nan')).sum())} rows have no {column}"
        )
    return g


def _speakers_by_fraction(speakers: Sequence[str], frac: float, rng: np.random.Generator) -> list[str]:
    """``round(frac * n)`` speakers (at least 1, leaving at least 1) drawn from ``speakers``."""
    speakers = sorted(set(speakers), key=_natural_key)
    if len(speakers) < 2:
        raise ValueError("need at least 2 training speakers to carve validation speakers")
    n = int(np.clip(round(frac * len(speakers)), 1, len(speakers) - 1))
    return sorted(rng.permutation(speakers)[:n].tolist(), key=_natural_key)


def _match_group(groups: Sequence[str], wanted: str, column: str) -> str:
    """``wanted`` itself if present, else the one group whose last number equals it ("5" ~ "Ses05")."""
    groups = sorted(set(groups), key=_natural_key)
    if str(wanted) in groups:
        return str(wanted)
    nums = re.findall(r"\d+", str(wanted))
    if nums:
        hits = [
            g for g in groups if re.findall(r"\d+", g) and int(re.findall(r"\d+", g)[-1]) == int(nums[-1])
        ]
        if len(hits) == 1:
            return hits[0]
    raise ValueError(f"no unique {column} matching {wanted!r} among {groups}")


# -------------------------------------------------------------------------------------------------- protocols


def random_holdout(
    corpus: Corpus, *, test_frac: float = 0.2, val_frac: float = 0.0, seed: int = 0
) -> list[Split]:
    """Head Fusion protocol: one random utterance-level split, stratified by label; speakers are shared.

    ``test_frac`` and ``val_frac`` are fractions of the whole corpus (0.2 / 0.1 gives 70/10/20); the validation
    part is carved from the training part (stratified) and is what a validation-selected result uses.
    """
    if not 0 < test_frac < 1 or not 0 <= val_frac < 1 - test_frac:
        raise ValueError(f"bad fractions test_frac={test_frac} val_frac={val_frac}")
    y, n = corpus.y, len(corpus)
    all_idx = np.arange(n)
    n_test = int(round(test_frac * n))
    rest, test = _carve(all_idx, y, n_test, seed)
    train, val = _carve(rest, y, int(round(val_frac * n)), seed + 1)
    protocol = f"random_{round(100 * (1 - test_frac))}_{round(100 * test_frac)}"
    return [
        _make(
            corpus,
            protocol,
            0,
            seed,
            train,
            val,
            test,
            speaker_independent=False,
            test_frac=test_frac,
            val_frac=val_frac,
        )
    ]


def kfold_train_val_test(
    corpus: Corpus, *, k: int = 5, seed: int = 0, groups: str | None = None
) -> list[Split]:
    """FACA protocol: k random stratified folds; split i has fold i as test, fold (i+1) % k as validation and the
    other k-2 folds as training (5 folds: 3/1/1, 10 folds: 8/1/1).

    ``groups`` (a column name, e.g. "speaker") makes the folds group-disjoint (sklearn StratifiedGroupKFold) and
    the splits speaker-independent when the column is, or nests in, the speaker.
    """
    if k < 3:
        raise ValueError("kfold_train_val_test needs k >= 3")
    g = _group_values(corpus, groups) if groups else None
    folds = _stratified_folds(corpus.y, k, seed, g)
    protocol = f"kfold{k}_{k - 2}_1_1" + (f"_by_{groups}" if groups else "")
    out = []
    for i in range(k):
        test, val = folds[i], folds[(i + 1) % k]
        train = np.sort(np.concatenate([folds[j] for j in range(k) if j not in (i, (i + 1) % k)]))
        indep = bool(groups) and not _speaker_overlap(corpus, {"train": train, "val": val, "test": test})
        out.append(
            _make(corpus, protocol, i, seed, train, val, test, speaker_independent=indep, k=k, groups=groups)
        )
    return out


def random_kfold(corpus: Corpus, *, k: int = 5, seed: int = 0, val_frac: float = 0.0) -> list[Split]:
    """ECA protocol: k random stratified folds, fold i test and the rest training. ``val_frac`` (fraction of the
    whole corpus) moves a stratified random validation part out of each training part."""
    if k < 2:
        raise ValueError("random_kfold needs k >= 2")
    y, n = corpus.y, len(corpus)
    folds = _stratified_folds(y, k, seed)
    out = []
    for i in range(k):
        rest = np.sort(np.concatenate([folds[j] for j in range(k) if j != i]))
        train, val = _carve(rest, y, int(round(val_frac * n)), seed + 1000 + i)
        out.append(
            _make(
                corpus,
                f"random_kfold{k}",
                i,
                seed,
                train,
                val,
                folds[i],
                speaker_independent=False,
                k=k,
                val_frac=val_frac,
            )
        )
    return out


def _val_groups(
    val: str | float | None, groups: list[str], i: int, train_speakers: list[str], seed: int
) -> tuple[str, list[str]]:
    """Resolve a validation policy to ("groups"|"speakers"|"none", values)."""
    if val is None or val == "none":
        return "none", []
    if val == "next":
        return "groups", [groups[(i + 1) % len(groups)]]
    if isinstance(val, (int, float)) and not isinstance(val, bool):
        rng = np.random.default_rng([int(seed), int(i)])
        return "speakers", _speakers_by_fraction(train_speakers, float(val), rng)
    raise ValueError(f"val must be 'next', 'none' or a fraction of training speakers, got {val!r}")


def leave_one_group_out(
    corpus: Corpus, *, column: str = "session", val: str | float | None = "next", seed: int = 0
) -> list[Split]:
    """CA-SER protocols: one split per value of ``column`` ("session": CV-5 on IEMOCAP, "speaker": CV-10), that
    group being the test part.

    ``val``: "next" = the next group in natural order (wrapping), "none" = no validation part, a float = that
    fraction of the training speakers (at least one) drawn with ``seed``. Speaker independence is promised when the
    table shows it (always for column="speaker"; for sessions when every speaker lives in one session).
    """
    g = _group_values(corpus, column)
    groups = sorted(set(g), key=_natural_key)
    if len(groups) < (3 if val == "next" else 2):
        raise ValueError(f"corpus {corpus.name}: too few {column} groups ({len(groups)}) for leave-one-out")
    spk = corpus.table["speaker"].astype(str).to_numpy()
    out = []
    for i, grp in enumerate(groups):
        test = np.flatnonzero(g == grp)
        rest = np.flatnonzero(g != grp)
        kind, vals = _val_groups(val, groups, i, spk[rest].tolist(), seed)
        if kind == "groups":
            in_val = np.isin(g[rest], vals)
        elif kind == "speakers":
            in_val = np.isin(spk[rest], vals)
        else:
            in_val = np.zeros(len(rest), bool)
        train, vpart = rest[~in_val], rest[in_val]
        indep = not _speaker_overlap(corpus, {"train": train, "val": vpart, "test": test})
        out.append(
            _make(
                corpus,
                f"loso_{column}",
                i,
                seed,
                train,
                vpart,
                test,
                speaker_independent=indep,
                column=column,
                test_group=grp,
                val_policy=str(val),
                val_groups=vals if kind == "groups" else [],
            )
        )
    return out


def session_holdout(
    corpus: Corpus, *, test_session: str = "5", val: str | float | None = "none", seed: int = 0
) -> list[Split]:
    """MOMA protocol: one session held out for test (IEMOCAP session 5), the others train.

    ``test_session`` matches the ``session`` column exactly or by its number ("5" ~ "Ses05"). ``val``: "none"
    (the paper), a session id (e.g. "4"), or a float fraction of training speakers drawn with ``seed``.
    """
    g = _group_values(corpus, "session")
    groups = sorted(set(g), key=_natural_key)
    tgrp = _match_group(groups, test_session, "session")
    test = np.flatnonzero(g == tgrp)
    rest = np.flatnonzero(g != tgrp)
    spk = corpus.table["speaker"].astype(str).to_numpy()
    if val is None or val == "none":
        in_val, vgrp = np.zeros(len(rest), bool), []
    elif isinstance(val, (int, float)) and not isinstance(val, bool):
        vspk = _speakers_by_fraction(spk[rest].tolist(), float(val), np.random.default_rng([int(seed), 0]))
        in_val, vgrp = np.isin(spk[rest], vspk), []
    else:
        vgrp = [_match_group([x for x in groups if x != tgrp], str(val), "session")]
        in_val = np.isin(g[rest], vgrp)
    train, vpart = rest[~in_val], rest[in_val]
    indep = not _speaker_overlap(corpus, {"train": train, "val": vpart, "test": test})
    return [
        _make(
            corpus,
            f"session{test_session}_test",
            0,
            seed,
            train,
            vpart,
            test,
            speaker_independent=indep,
            test_group=tgrp,
            val_policy=str(val),
            val_groups=vgrp,
        )
    ]


def _default_n_folds(n_speakers: int) -> int:
    """About 4 speakers per fold for large corpora (RAVDESS 24 -> 6), 2 for mid-size, 1 for tiny ones."""
    if n_speakers >= 12:
        return n_speakers // 4
    if n_speakers >= 6:
        return n_speakers // 2
    return n_speakers


def _speaker_table(corpus: Corpus) -> pd.DataFrame:
    t = corpus.table[["speaker", "gender", "session"]].astype(str)
    return t.groupby("speaker", sort=False).agg(
        gender=("gender", lambda s: s.mode().iloc[0]),
        n_sessions=("session", "nunique"),
        session=("session", "first"),
    )


def _session_nested(spk: pd.DataFrame) -> bool:
    """True when every speaker lives in one session and sessions hold several speakers (IEMOCAP-like)."""
    n_sess = spk["session"].nunique()
    return bool((spk["n_sessions"] == 1).all() and (spk["session"] != "").all() and 3 <= n_sess < len(spk))


class TooFewSpeakersError(ValueError):
    """A corpus has too few speakers for the speaker-independent protocol; the message names the alternative."""


BALANCE_MODES = ("auto", "round_robin", "utterances")


def speaker_independent(corpus: Corpus, *, n_folds: int | None = None, seed: int = 0,
                        balance: str = "auto") -> list[Split]:
    """Our honest protocol for every corpus: speakers (never utterances) are dealt into ``n_folds`` folds; split i
    has fold i as test, fold (i+1) % n as validation (model selection) and the other folds as training.

    - Speakers nested in sessions (IEMOCAP: 5 sessions x 2 speakers) and ``n_folds`` None or equal to the number
      of sessions: one fold per session, so test = both speakers of a session and validation = the next session
      (their dialogues never cross parts). ``seed`` does not change these folds.
    - Otherwise speakers are shuffled with ``seed`` within each gender and dealt round-robin (males, then females,
      continuing the deal), so folds differ in size by at most one speaker and are gender-balanced: RAVDESS's
      24 actors give 6 folds of 2 M + 2 F. Default ``n_folds``: n // 4 for >= 12 speakers, n // 2 for 6-11,
      n (leave one speaker out) for 3-5.
    - ``balance``: ``"round_robin"`` is the deal above; ``"utterances"`` packs speakers into folds balancing
      utterance counts, then gender, then labels (:func:`serlib.data.speaker_folds.balanced_speaker_folds`), and
      stores ``fold_sizes`` / ``balance`` in each split's meta; ``"auto"`` (default) deals round-robin when every
      speaker's clip count is within 10 % of the largest (RAVDESS: 60 each, so its committed folds are unchanged)
      or when each fold holds one speaker, and packs otherwise.
    - Fewer than 3 speakers: :class:`TooFewSpeakersError`, naming :func:`loso_speaker_holdout`.
    """
    from serlib.data.speaker_folds import balanced_speaker_folds, counts_are_even

    if balance not in BALANCE_MODES:
        raise ValueError(f"balance={balance!r}: choose one of {BALANCE_MODES}")
    spk = _speaker_table(corpus)
    n_spk = len(spk)
    if n_spk < 3:
        raise TooFewSpeakersError(
            f"corpus {corpus.name}: speaker-independent splits need >= 3 speakers (test, validation and training "
            f"speakers), got {n_spk}. Protocol 'loso_speaker_holdout' runs leave-one-speaker-out with model "
            "selection on held-out utterances of the training speaker(s): the test speaker is unseen, but the "
            "selection is NOT speaker-independent")
    speaker_col = corpus.table["speaker"].astype(str).to_numpy()
    sessions = sorted(set(spk["session"]), key=_natural_key)
    if _session_nested(spk) and n_folds in (None, len(sessions)):
        mode = "session"
        fold_speakers = [sorted(spk.index[spk["session"] == s], key=_natural_key) for s in sessions]
    else:
        mode = "speaker"
        k = _default_n_folds(n_spk) if n_folds is None else int(n_folds)
        if not 3 <= k <= n_spk:
            raise ValueError(f"n_folds must be in [3, {n_spk}] for {n_spk} speakers, got {k}")
        counts = corpus.table["speaker"].astype(str).value_counts()
        packed = balance == "utterances" or (balance == "auto" and k < n_spk and not counts_are_even(counts))
        if packed:
            mode = "speaker_balanced"
            fold_speakers = balanced_speaker_folds(corpus.table, k, seed=seed, key=_natural_key)
    if mode == "speaker":
        rng = np.random.default_rng(seed)
        order: list[str] = []
        for gen in ("M", "F"):
            order += rng.permutation(sorted(spk.index[spk["gender"] == gen], key=_natural_key)).tolist()
        other = sorted(spk.index[~spk["gender"].isin(["M", "F"])], key=_natural_key)
        order += rng.permutation(other).tolist() if other else []
        fold_speakers = [sorted(order[i::k], key=_natural_key) for i in range(k)]
    k = len(fold_speakers)
    fold_of = {s: i for i, ss in enumerate(fold_speakers) for s in ss}
    row_fold = np.array([fold_of[s] for s in speaker_col])
    extra = {}
    if mode == "speaker_balanced":  # only here: the other modes' meta (and so their split hashes) stay as committed
        extra = {"balance": "utterances", "fold_sizes": np.bincount(row_fold, minlength=k).tolist()}
    out = []
    for i in range(k):
        j = (i + 1) % k
        test, val = np.flatnonzero(row_fold == i), np.flatnonzero(row_fold == j)
        train = np.flatnonzero((row_fold != i) & (row_fold != j))
        genders = {g: int((spk.loc[fold_speakers[i], "gender"] == g).sum()) for g in ("M", "F")}
        out.append(
            _make(
                corpus,
                "speaker_independent",
                i,
                seed,
                train,
                val,
                test,
                speaker_independent=True,
                mode=mode,
                n_folds=k,
                test_genders=genders,
                test_sessions=sessions[i : i + 1] if mode == "session" else [],
                folds=[list(f) for f in fold_speakers],
                **extra,
            )
        )
    return out


HOLDOUT_SELECTION = ("held-out utterances of the training speaker(s): the test speaker is unseen, but model "
                     "selection is NOT speaker-independent")


def loso_speaker_holdout(corpus: Corpus, *, val_frac: float = 0.2, seed: int = 0) -> list[Split]:
    """For corpora too small for :func:`speaker_independent` (2 speakers): leave one speaker out for test, and carve
    ``val_frac`` of the other speakers' utterances (stratified by label, drawn with ``seed``) as the validation
    part for model selection. The test speaker is never trained on, but validation and training share speakers,
    so the selection is not speaker-independent: ``meta["speaker_independent"]`` is False, ``meta["selection"]``
    says so, ``meta["test_speaker_unseen"]`` is True."""
    if not 0 < val_frac < 1:
        raise ValueError(f"val_frac must be in (0, 1), got {val_frac}")
    g = _group_values(corpus, "speaker")
    speakers = sorted(set(g), key=_natural_key)
    if len(speakers) < 2:
        raise ValueError(f"corpus {corpus.name}: loso_speaker_holdout needs >= 2 speakers, got {len(speakers)}")
    out = []
    for i, spk in enumerate(speakers):
        test, rest = np.flatnonzero(g == spk), np.flatnonzero(g != spk)
        train, val = _carve(rest, corpus.y, int(round(val_frac * len(rest))), seed + i)
        out.append(_make(corpus, "loso_speaker_holdout", i, seed, train, val, test, speaker_independent=False,
                         test_speaker_unseen=True, selection=HOLDOUT_SELECTION, val_frac=val_frac))
    return out


# --------------------------------------------------------------------------------------------------- registry

PROTOCOLS: dict[str, Callable[..., list[Split]]] = {
    "random_80_20": partial(random_holdout, test_frac=0.2),
    "kfold5_3_1_1": partial(kfold_train_val_test, k=5),
    "kfold10_8_1_1": partial(kfold_train_val_test, k=10),
    "random_kfold5": partial(random_kfold, k=5),
    "loso_session": partial(leave_one_group_out, column="session"),
    "loso_speaker": partial(leave_one_group_out, column="speaker"),
    "session5_test": partial(session_holdout, test_session="5"),
    "speaker_independent": speaker_independent,
    "loso_speaker_holdout": loso_speaker_holdout,
}


def make_splits(name: str, corpus: Corpus, seed: int = 0, **kw) -> list[Split]:
    """The splits of registered protocol ``name`` (see :data:`PROTOCOLS`); ``kw`` overrides its options."""
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name](corpus, seed=seed, **kw)


def assert_speaker_disjoint(split: Split, corpus: Corpus) -> None:
    """Raise :class:`SpeakerOverlapError` (an AssertionError) naming the speakers any two parts share."""
    tr, va, te = split.indices(corpus)
    overlap = _speaker_overlap(corpus, {"train": tr, "val": va, "test": te})
    if overlap:
        raise SpeakerOverlapError(split.name, overlap)


def assert_partition(split: Split, corpus: Corpus) -> None:
    """Raise ``AssertionError`` if an utterance is in two parts or a corpus utterance is in none."""
    parts = [set(split.part(p)) for p in PARTS]
    for a in range(3):
        for b in range(a + 1, 3):
            common = parts[a] & parts[b]
            if common:
                raise AssertionError(
                    f"split {split.name}: {PARTS[a]} and {PARTS[b]} share {sorted(common)[:5]}"
                )
    missing = set(corpus.table["utt_id"].astype(str)) - set().union(*parts)
    if missing:
        raise AssertionError(
            f"split {split.name}: {len(missing)} utterances in no part, e.g. {sorted(missing)[:5]}"
        )
