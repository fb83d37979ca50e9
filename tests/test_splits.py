"""Split protocols: determinism, partitions, speaker independence (and that its check can fail), fold shapes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from serlib.data.corpus import Corpus
from serlib.data.splits import (
    PROTOCOLS,
    SpeakerOverlapError,
    Split,
    assert_partition,
    assert_speaker_disjoint,
    kfold_train_val_test,
    leave_one_group_out,
    make_splits,
    random_holdout,
    random_kfold,
    session_holdout,
    speaker_independent,
)

RAV_LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
IEM_LABELS = ("neutral", "happy", "sad", "angry")


def _corpus(rows: list[dict], labels, name: str) -> Corpus:
    t = pd.DataFrame(rows)
    t["duration"] = 3.0
    t["sample_rate"] = 16000
    t["channels"] = 1
    return Corpus(name, "/nonexistent", t, tuple(labels))


@pytest.fixture(scope="module")
def ravdess_like() -> Corpus:
    """24 actors x 60 utterances, odd actors male, the RAVDESS label mix (neutral 4, others 8 per actor)."""
    per_actor = ["neutral"] * 4 + [lab for lab in RAV_LABELS[1:] for _ in range(8)]
    rows = []
    for a in range(1, 25):
        for k, lab in enumerate(per_actor):
            rows.append(
                dict(
                    path=f"Actor_{a:02d}/{k}.wav",
                    utt_id=f"A{a:02d}_{k:02d}",
                    label=lab,
                    speaker=f"Actor_{a:02d}",
                    gender="M" if a % 2 else "F",
                    session="",
                )
            )
    return _corpus(rows, RAV_LABELS, "ravdess_like")


@pytest.fixture(scope="module")
def iemocap_like() -> Corpus:
    """5 sessions x 2 speakers (F, M), 30 utterances per speaker with an uneven label mix."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(1, 6):
        for g in ("F", "M"):
            labs = rng.choice(IEM_LABELS, size=30, p=[0.35, 0.3, 0.2, 0.15])
            for k, lab in enumerate(labs):
                rows.append(
                    dict(
                        path=f"S{s}/{g}{k}.wav",
                        utt_id=f"Ses0{s}_{g}{k:03d}",
                        label=str(lab),
                        speaker=f"Ses0{s}{g}",
                        gender=g,
                        session=str(s),
                    )
                )
    return _corpus(rows, IEM_LABELS, "iemocap_like")


def _parts_sets(split: Split):
    return set(split.train), set(split.val), set(split.test)


# ------------------------------------------------------------------------------------------ all protocols


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_protocol_partitions_and_is_deterministic(name, iemocap_like):
    a = make_splits(name, iemocap_like, seed=3)
    b = make_splits(name, iemocap_like, seed=3)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    for s in a:
        assert_partition(s, iemocap_like)
        tr, va, te = _parts_sets(s)
        assert not (tr & va or tr & te or va & te)
        assert tr | va | te == set(iemocap_like.table["utt_id"])
        assert len(s.train) + len(s.val) + len(s.test) == len(iemocap_like)
        if s.meta["speaker_independent"]:
            assert_speaker_disjoint(s, iemocap_like)


def test_expected_fold_counts(iemocap_like, ravdess_like):
    assert len(make_splits("kfold5_3_1_1", ravdess_like)) == 5
    assert len(make_splits("kfold10_8_1_1", iemocap_like)) == 10
    assert len(make_splits("random_kfold5", iemocap_like)) == 5
    assert len(make_splits("loso_session", iemocap_like)) == 5
    assert len(make_splits("loso_speaker", iemocap_like)) == 10
    assert len(make_splits("session5_test", iemocap_like)) == 1
    assert len(make_splits("random_80_20", iemocap_like)) == 1
    assert len(make_splits("speaker_independent", ravdess_like)) == 6
    assert len(make_splits("speaker_independent", iemocap_like)) == 5


@pytest.mark.parametrize("name", ["random_80_20", "kfold5_3_1_1", "random_kfold5", "speaker_independent"])
def test_random_protocols_depend_on_seed(name, ravdess_like):
    a = make_splits(name, ravdess_like, seed=0)
    b = make_splits(name, ravdess_like, seed=1)
    assert [s.test for s in a] != [s.test for s in b]


def test_unknown_protocol_raises(iemocap_like):
    with pytest.raises(KeyError, match="unknown protocol"):
        make_splits("nope", iemocap_like)


# ------------------------------------------------------------------------------------- speaker independence


def test_random_holdout_shares_speakers_and_the_check_catches_it(ravdess_like):
    (s,) = random_holdout(ravdess_like, seed=0)
    assert s.meta["speaker_independent"] is False
    with pytest.raises(SpeakerOverlapError) as exc:
        assert_speaker_disjoint(s, ravdess_like)
    assert set(exc.value.overlap["train&test"]) == set(ravdess_like.table["speaker"])  # every actor leaks
    assert "Actor_01" in str(exc.value)


def test_random_holdout_sizes_and_stratification(ravdess_like):
    (s,) = random_holdout(ravdess_like, seed=0)
    assert len(s.test) == 288 and len(s.train) == 1152 and s.val == []
    assert s.protocol == "random_80_20"
    summ = s.summary(ravdess_like)
    # stratified: every class is 20 % of its count in test (96 neutral -> 19 or 20, 192 others -> 38 or 39)
    assert summ.loc["test", "neutral"] in (19, 20)
    for lab in RAV_LABELS[1:]:
        assert summ.loc["test", lab] in (38, 39)
    (v,) = random_holdout(ravdess_like, seed=0, val_frac=0.1)
    assert (len(v.train), len(v.val), len(v.test)) == (1008, 144, 288)
    assert set(v.test) == set(s.test)  # the validation part comes out of train only


def test_speaker_independent_ravdess_folds(ravdess_like):
    splits = speaker_independent(ravdess_like, seed=0)
    gender = ravdess_like.table.groupby("speaker")["gender"].first()
    tests = []
    for i, s in enumerate(splits):
        assert s.meta["speaker_independent"] is True and s.meta["mode"] == "speaker"
        assert_speaker_disjoint(s, ravdess_like)
        ts = s.meta["test_speakers"]
        assert len(ts) == 4 and sorted(gender[ts]) == ["F", "F", "M", "M"]
        assert s.meta["val_speakers"] == splits[(i + 1) % 6].meta["test_speakers"]
        assert (len(s.train), len(s.val), len(s.test)) == (16 * 60, 240, 240)
        summ = s.summary(ravdess_like)
        assert summ.loc["test", "speakers"] == 4 and summ.loc["train", "speakers"] == 16
        tests += ts
    assert sorted(tests) == sorted(gender.index)  # each actor is tested exactly once


def test_speaker_independent_iemocap_uses_sessions(iemocap_like):
    splits = speaker_independent(iemocap_like, seed=0)
    for i, s in enumerate(splits):
        assert s.meta["mode"] == "session"
        assert s.meta["test_speakers"] == [f"Ses0{i + 1}F", f"Ses0{i + 1}M"]
        assert s.meta["val_speakers"] == [f"Ses0{(i + 1) % 5 + 1}F", f"Ses0{(i + 1) % 5 + 1}M"]
        assert s.summary(iemocap_like, by="session").loc["train", "speakers"] == 6
    # sessions are fixed: the seed does not matter here
    assert [s.test for s in splits] == [s.test for s in speaker_independent(iemocap_like, seed=9)]


def test_speaker_independent_generic_and_too_few(iemocap_like):
    splits = speaker_independent(iemocap_like, n_folds=10, seed=0)  # leave one speaker out, seeded order
    assert len(splits) == 10 and all(len(s.meta["test_speakers"]) == 1 for s in splits)
    tiny = iemocap_like.subset(iemocap_like.table["speaker"].isin(["Ses01F", "Ses01M"]).to_numpy())
    with pytest.raises(ValueError, match=">= 3 speakers"):
        speaker_independent(tiny)


def test_overlap_detected_when_promise_broken(ravdess_like):
    """A hand-made split that moves one utterance of a test actor into train is caught."""
    s = speaker_independent(ravdess_like, seed=0)[0]
    leaked = s.test[0]
    bad = Split.from_dict({**s.to_dict(), "test": s.test[1:], "train": s.train + [leaked]})
    with pytest.raises(SpeakerOverlapError) as exc:
        assert_speaker_disjoint(bad, ravdess_like)
    assert list(exc.value.overlap) == ["train&test"]
    assert exc.value.overlap["train&test"] == [ravdess_like.table.set_index("utt_id").at[leaked, "speaker"]]


# ------------------------------------------------------------------------------------------ k-fold protocols


def test_kfold_train_val_test_layout(ravdess_like):
    splits = kfold_train_val_test(ravdess_like, k=5, seed=0)
    tests = [set(s.test) for s in splits]
    for i, s in enumerate(splits):
        assert set(s.val) == tests[(i + 1) % 5]
        assert len(s.test) == 288 and len(s.val) == 288 and len(s.train) == 864
        assert s.meta["speaker_independent"] is False
        counts = s.summary(ravdess_like).loc["test", list(RAV_LABELS)]
        assert counts["neutral"] in (19, 20) and counts.drop("neutral").between(38, 39).all()
    assert set().union(*tests) == set(ravdess_like.table["utt_id"])
    ten = kfold_train_val_test(ravdess_like, k=10, seed=0)
    assert {(len(s.train), len(s.val), len(s.test)) for s in ten} == {(1152, 144, 144)}
    assert ten[0].protocol == "kfold10_8_1_1"


def test_kfold_with_speaker_groups_is_speaker_independent(ravdess_like):
    splits = kfold_train_val_test(ravdess_like, k=6, seed=0, groups="speaker")
    for s in splits:
        assert s.meta["speaker_independent"] is True
        assert_speaker_disjoint(s, ravdess_like)


def test_random_kfold_with_val(iemocap_like):
    splits = random_kfold(iemocap_like, k=5, seed=0, val_frac=0.1)
    for s in splits:
        assert len(s.test) == 60 and len(s.val) == 30 and len(s.train) == 210
    assert sorted(u for s in splits for u in s.test) == sorted(iemocap_like.table["utt_id"])


# ----------------------------------------------------------------------------------- IEMOCAP group protocols


def test_loso_session(iemocap_like):
    splits = leave_one_group_out(iemocap_like, column="session", val="next")
    for i, s in enumerate(splits):
        assert s.meta["test_group"] == str(i + 1) and s.meta["speaker_independent"] is True
        summ = s.summary(iemocap_like, by="session")
        assert summ.loc["test", str(i + 1)] == 60 and summ.loc["test", "total"] == 60
        assert summ.loc["val", str((i + 1) % 5 + 1)] == 60 and summ.loc["val", "total"] == 60
        assert summ.loc["train", "total"] == 180
    none = leave_one_group_out(iemocap_like, column="session", val="none")
    assert all(s.val == [] and len(s.train) == 240 for s in none)
    frac = leave_one_group_out(iemocap_like, column="session", val=0.25, seed=0)
    for s in frac:  # 2 of the 8 training speakers validate
        assert len(s.meta["val_speakers"]) == 2 and len(s.val) == 60
        assert_speaker_disjoint(s, iemocap_like)


def test_loso_speaker(iemocap_like):
    splits = leave_one_group_out(iemocap_like, column="speaker")
    assert [s.meta["test_speakers"] for s in splits][:3] == [["Ses01F"], ["Ses01M"], ["Ses02F"]]
    assert splits[0].meta["val_speakers"] == ["Ses01M"] and splits[9].meta["val_speakers"] == ["Ses01F"]
    assert all(s.meta["speaker_independent"] and len(s.train) == 240 for s in splits)


def test_session_holdout(iemocap_like):
    (s,) = session_holdout(iemocap_like)
    assert s.protocol == "session5_test" and s.meta["test_speakers"] == ["Ses05F", "Ses05M"]
    assert len(s.train) == 240 and s.val == [] and len(s.test) == 60
    # session naming styles: "5" finds "Ses05"
    t = iemocap_like.table.copy()
    t["session"] = "Ses0" + t["session"]
    renamed = Corpus("x", "/", t, iemocap_like.labels)
    (r,) = session_holdout(renamed, test_session="5", val="4")
    assert r.test == s.test and r.meta["val_speakers"] == ["Ses04F", "Ses04M"]
    with pytest.raises(ValueError, match="no unique session"):
        session_holdout(renamed, test_session="7")


def test_loso_needs_groups(ravdess_like):
    with pytest.raises(ValueError, match="have no session"):
        leave_one_group_out(ravdess_like, column="session")


# ------------------------------------------------------------------------------------------------ records


def test_to_dict_round_trip_and_indices(iemocap_like):
    s = make_splits("loso_session", iemocap_like)[2]
    d = json.loads(json.dumps(s.to_dict()))
    back = Split.from_dict(d)
    assert back == s
    tr, va, te = back.indices(iemocap_like)
    assert tr.dtype == np.int64 and len(tr) + len(va) + len(te) == len(iemocap_like)
    assert set(iemocap_like.table["session"].iloc[te]) == {"3"}
    assert list(iemocap_like.table["utt_id"].iloc[te]) == s.test
    other = iemocap_like.subset((iemocap_like.table["session"] != "3").to_numpy())
    with pytest.raises(KeyError, match="not in corpus"):
        s.indices(other)
