"""Corpus adapters, manifests and the registry: known answers on the real shared data (skipped without it),
on a miniature IEMOCAP tree, and on small bring-your-own corpora."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from mini_iemocap import make_mini_iemocap

from serlib.cli import main as cli_main
from serlib.data.corpus import DataError
from serlib.data.custom import load_custom, write_custom_manifest
from serlib.data.esc50 import load_esc50
from serlib.data.iemocap import load_iemocap, parse_utterance
from serlib.data.manifest import (
    REPO_MANIFEST_DIR,
    build_manifest,
    check_against_manifest,
    manifest_hash,
    write_manifest,
)
from serlib.data.ravdess import LABELS as RAVDESS_LABELS
from serlib.data.ravdess import load_ravdess
from serlib.data.registry import CORPORA, data_root, find_corpora, load_corpus

# ---------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def ravdess(ravdess_root):
    return load_ravdess(ravdess_root)


@pytest.fixture(scope="module")
def esc50(esc50_root):
    return load_esc50(esc50_root)


@pytest.mark.realdata
def test_ravdess_counts(ravdess):
    t = ravdess.table
    assert len(t) == 1440 and not ravdess.skipped
    assert (
        ravdess.labels
        == RAVDESS_LABELS
        == ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
    )
    counts = t["label"].value_counts()
    assert counts["neutral"] == 96 and all(counts[lab] == 192 for lab in RAVDESS_LABELS[1:])
    assert t["speaker"].nunique() == 24 and (t.groupby("speaker").size() == 60).all()
    genders = t.drop_duplicates("speaker").set_index("speaker")["gender"]
    assert (genders == "M").sum() == 12 and (genders == "F").sum() == 12
    assert genders["Actor_01"] == "M" and genders["Actor_24"] == "F"
    assert (t["channels"] == 2).sum() == 5
    assert (t["sample_rate"] == 16000).all() and not t["format_mismatch"].any()
    assert t["duration"].between(2.5, 6.0).all()
    assert set(t["session"]) == {""}
    row = t.set_index("utt_id").loc["03-01-06-02-01-02-17"]
    assert (row["label"], row["intensity"], row["statement"], row["repetition"], row["speaker"]) == (
        "fearful",
        2,
        1,
        2,
        "Actor_17",
    )


@pytest.mark.realdata
def test_esc50_subset(esc50):
    t = esc50.table
    assert len(t) == 414 and len(esc50.labels) == 50 and not esc50.skipped
    # labels ordered by target id, and target <-> category one-to-one
    first = t.drop_duplicates("label").set_index("label")["target"]
    assert [first[lab] for lab in esc50.labels] == list(range(50))
    assert esc50.labels[0] == "dog" and esc50.labels[49] == "hand_saw"
    assert t.groupby("label").size().between(8, 12).all()
    assert set(t["session"]) == {str(f) for f in t["fold"]} and (t["fold"] == 4).sum() == 400
    assert (t["speaker"] == t["path"].str.split("-").str[1]).all()


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["ravdess", "esc50"])
def test_shared_copy_matches_repo_manifest(name, request):
    corpus = request.getfixturevalue(name)
    rep = check_against_manifest(corpus, REPO_MANIFEST_DIR / f"{name}.csv", check_hashes=True)
    assert rep.ok, rep.summary()
    assert rep.summary().endswith("OK")
    rep.raise_if_bad()


@pytest.mark.realdata
def test_altered_manifest_row_is_reported(ravdess, tmp_path):
    man = pd.read_csv(REPO_MANIFEST_DIR / "ravdess.csv", dtype=str, keep_default_na=False)
    orig = man.at[5, "path"]
    man.at[5, "path"] = orig.replace(".wav", "-renamed.wav")
    man.at[7, "label"] = "calm" if man.at[7, "label"] != "calm" else "sad"
    csv = tmp_path / "ravdess.csv"
    man.to_csv(csv, index=False)
    rep = check_against_manifest(ravdess, csv)
    assert not rep.ok
    assert rep.missing == [{"path": man.at[5, "path"], "why": "file not found"}]
    assert rep.extra == [orig]
    assert [p for p, _, _ in rep.label_mismatches] == [man.at[7, "path"]]
    with pytest.raises(DataError, match="-renamed.wav: file not found"):
        rep.raise_if_bad()


def test_repo_manifests_are_consistent():
    rav = pd.read_csv(REPO_MANIFEST_DIR / "ravdess.csv", dtype=str, keep_default_na=False)
    assert len(rav) == 1440 and rav["speaker"].nunique() == 24 and rav["path"].is_unique
    assert rav["label"].value_counts().to_dict() == {
        lab: 96 if lab == "neutral" else 192 for lab in RAVDESS_LABELS
    }
    assert rav["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert not rav["path"].str.contains(r"\\|^/").any()
    esc = pd.read_csv(REPO_MANIFEST_DIR / "esc50.csv", dtype=str, keep_default_na=False)
    assert len(esc) == 414 and esc["label"].nunique() == 50 and esc["path"].str.startswith("audio/").all()
    assert len(manifest_hash(REPO_MANIFEST_DIR / "ravdess.csv")) == 64


# ---------------------------------------------------------------------------------------------- IEMOCAP


@pytest.fixture(scope="module")
def mini_iemocap(tmp_path_factory):
    return make_mini_iemocap(tmp_path_factory.mktemp("iemocap"))


def test_iemocap_speaker_is_session_plus_last_token_gender():
    assert parse_utterance("Ses01F_impro01_M003") == {
        "session": "1",
        "gender": "M",
        "speaker": "Ses01M",
        "dialog": "Ses01F_impro01",
        "improvised": True,
    }
    assert parse_utterance("Ses05M_script01_1b_F012")["speaker"] == "Ses05F"
    with pytest.raises(ValueError):
        parse_utterance("Ses01F_impro01")


def test_iemocap_4class(mini_iemocap):
    c = load_iemocap(mini_iemocap)
    t = c.table.set_index("utt_id")
    assert c.labels == ("neutral", "happy", "sad", "angry")
    assert len(t) == 19  # 2 sessions x 10 four-class utterances, one wav missing
    assert t["label"].value_counts().to_dict() == {"happy": 8, "neutral": 4, "angry": 4, "sad": 3}
    assert t.at["Ses01F_impro01_M000", "speaker"] == "Ses01M"  # dialog led by F, spoken by M
    assert t.at["Ses02M_script01_1_F000", "speaker"] == "Ses02F"
    assert t.at["Ses01F_impro01_F001", "label"] == "happy"  # exc merged
    assert t.at["Ses01F_impro01_F001", "emotion_code"] == "exc"
    assert set(t["speaker"]) == {"Ses01F", "Ses01M", "Ses02F", "Ses02M"}
    assert set(t["session"]) == {"1", "2"} and set(t["gender"]) == {"F", "M"}
    assert t["improvised"].sum() == 9 and (t["improvised"] == t["dialog"].str.contains("impro")).all()
    assert c.skipped == [
        {
            "path": "Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_M001.wav",
            "reason": "file does not exist",
        }
    ]
    assert c.excluded == {"fru": 2, "sur": 2, "xxx": 2}
    assert c.root.name == "IEMOCAP_full_release"
    assert (c.root / t.at["Ses01F_impro01_F000", "path"]).is_file()
    assert t.at["Ses01F_impro01_F000", "duration"] == pytest.approx(0.1)


def test_iemocap_improvised_and_head_fusion(mini_iemocap):
    imp = load_iemocap(mini_iemocap / "IEMOCAP_full_release", improvised_only=True)
    assert len(imp) == 9 and imp.table["improvised"].all()
    assert imp.excluded == {"fru": 2, "scripted": 12, "xxx": 2}
    hf = load_iemocap(mini_iemocap, label_set="head_fusion")
    assert hf.labels == ("neutral", "happy", "sad", "angry")
    assert len(hf) == 15 and set(hf.table.loc[hf.table["label"] == "happy", "emotion_code"]) == {"exc"}
    assert hf.excluded == {"fru": 2, "hap": 4, "sur": 2, "xxx": 2}
    everything = load_iemocap(mini_iemocap, label_set="all")
    assert len(everything) == 25 and "excited" in everything.labels and "undecided" in everything.labels
    assert everything.excluded == {}
    with pytest.raises(ValueError, match="label_set"):
        load_iemocap(mini_iemocap, label_set="5class")


def test_iemocap_full_release_with_wrong_counts_warns(tmp_path):
    root = make_mini_iemocap(tmp_path, sessions=(1, 2, 3, 4, 5), missing_wavs=())
    with pytest.warns(UserWarning, match="5531"):
        c = load_iemocap(root)
    assert len(c) == 50
    with pytest.warns(UserWarning, match="2943"):
        load_iemocap(root, improvised_only=True)
    # two sessions are not a full release: no warning
    two = make_mini_iemocap(tmp_path / "two")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_iemocap(two)


def test_iemocap_missing_or_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_iemocap(tmp_path / "absent")
    (tmp_path / "Session1").mkdir()
    with pytest.raises(DataError, match="no EmoEvaluation"):
        load_iemocap(tmp_path)


# ---------------------------------------------------------------------------------------------- custom


@pytest.fixture
def custom_tree(tmp_path):
    t = np.arange(1600) / 16000
    rows = []
    for i, (lab, spk) in enumerate([("sad", "a"), ("happy", "a"), ("sad", "b"), ("happy", "b")]):
        p = tmp_path / "clips" / spk / f"{i}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, (0.1 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
        rows.append(
            {"path": f"clips/{spk}/{i}.wav", "label": lab, "speaker": spk, "gender": "female", "note": i}
        )
    rows.append({"path": "clips/b/missing.wav", "label": "sad", "speaker": "b", "gender": "", "note": 9})
    return tmp_path, rows


def test_custom_corpus(custom_tree):
    root, rows = custom_tree
    csv = write_custom_manifest(rows, root / "my.csv")
    c = load_custom(csv)
    assert c.name == "my" and c.root == root and len(c) == 4
    assert c.labels == ("happy", "sad") and list(c.y) == [1, 0, 1, 0]
    assert c.table["utt_id"].tolist() == ["clips/a/0", "clips/a/1", "clips/b/2", "clips/b/3"]
    assert set(c.table["gender"]) == {"F"} and "note" in c.table.columns
    assert c.skipped == [{"path": "clips/b/missing.wav", "reason": "file does not exist"}]
    c2 = load_custom(csv, name="x", labels=["sad", "happy", "neutral"])
    assert c2.labels == ("sad", "happy", "neutral") and list(c2.y) == [0, 1, 0, 1]


def test_custom_root_argument_and_errors(custom_tree, tmp_path_factory):
    root, rows = custom_tree
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    csv = write_custom_manifest(pd.DataFrame(rows), elsewhere / "list.csv")
    assert len(load_custom(csv, root=root)) == 4
    with pytest.raises(DataError, match="no usable audio"):
        load_custom(csv)  # paths resolved next to the CSV: nothing there
    (elsewhere / "bad.csv").write_text("file,emotion\nx.wav,sad\n")
    with pytest.raises(DataError, match="lacks required columns"):
        load_custom(elsewhere / "bad.csv")
    with pytest.raises(ValueError):
        write_custom_manifest([{"path": "x.wav"}], elsewhere / "y.csv")


# ---------------------------------------------------------------------------------------------- manifests + registry


def test_manifest_roundtrip_and_cli(custom_tree, capsys):
    root, rows = custom_tree
    c = load_custom(write_custom_manifest(rows, root / "my.csv"))
    man = build_manifest(c)
    assert list(man.columns) == [
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
    assert man["duration"].tolist() == [0.1] * 4
    out = write_manifest(c, root / "manifest.csv")
    assert check_against_manifest(c, out, check_hashes=True).ok
    h = manifest_hash(out)
    (root / "clips" / "a" / "0.wav").write_bytes(
        (root / "clips" / "a" / "1.wav").read_bytes()[:-2] + b"\x01\x02"
    )
    rep = check_against_manifest(load_custom(root / "my.csv"), out, check_hashes=True)
    assert not rep.ok and [p for p, _, _ in rep.hash_mismatches] == ["clips/a/0.wav"]
    assert "sha256 mismatches: 1" in rep.summary()
    assert manifest_hash(out) == h

    assert cli_main(["manifest", "custom", str(root / "my.csv"), str(root / "m2.csv")]) == 0
    assert cli_main(["manifest", "custom", str(root / "my.csv"), str(root / "m2.csv"), "--check"]) == 0
    assert "OK" in capsys.readouterr().out
    shutil.copy(root / "clips" / "a" / "1.wav", root / "clips" / "a" / "0.wav")
    assert (
        cli_main(["manifest", "custom", str(root / "my.csv"), str(root / "m2.csv"), "--check", "--check-hashes"])
        == 1
    )
    assert cli_main(["manifest", "ravdess", str(root / "absent"), str(root / "m3.csv")]) == 2


def test_registry(tmp_path, monkeypatch, custom_tree):
    assert set(CORPORA) == {"ravdess", "iemocap", "esc50", "custom"}
    (tmp_path / "data" / "ravdess" / "Audio_Speech_Actors_01-24" / "Actor_01").mkdir(parents=True)
    (tmp_path / "data" / "esc50" / "meta").mkdir(parents=True)
    (tmp_path / "data" / "esc50" / "meta" / "esc50.csv").write_text("filename\n")
    (tmp_path / "data" / "iemocap" / "IEMOCAP_full_release" / "Session3").mkdir(parents=True)
    (tmp_path / "data" / "unrelated").mkdir()
    found = find_corpora(tmp_path / "data")
    assert found == {
        "ravdess": tmp_path / "data" / "ravdess",
        "esc50": tmp_path / "data" / "esc50",
        "iemocap": tmp_path / "data" / "iemocap",
    }
    assert find_corpora(tmp_path / "nothing") == {}

    monkeypatch.delenv("SERLIB_DATA", raising=False)
    assert data_root() is None
    monkeypatch.setenv("SERLIB_DATA", str(tmp_path / "data"))
    assert data_root() == tmp_path / "data" and data_root(tmp_path) == tmp_path
    assert set(find_corpora()) == {"ravdess", "esc50", "iemocap"}

    root, rows = custom_tree
    assert len(load_corpus("custom", write_custom_manifest(rows, root / "r.csv"))) == 4
    with pytest.raises(DataError, match="unknown corpus 'timit'"):
        load_corpus("timit", tmp_path)
