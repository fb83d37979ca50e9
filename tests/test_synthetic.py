"""The synthetic corpus: bitwise determinism, layout, caching, and class cues that are real but not trivial."""

from __future__ import annotations

import json
import os

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from serlib.data.synthetic import (
    CLASS_STYLES,
    Speaker,
    class_style,
    default_synthetic_root,
    make_synthetic,
    synth_utterance,
)

SR = 16000
CLASSES = ("neutral", "happy", "sad", "angry")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_synthetic(
        tmp_path_factory.mktemp("syn") / "c", n_speakers=4, n_per_class_per_speaker=6, seed=0
    )


def _stats(path) -> tuple[float, float, float, float]:
    """(dB RMS, long-term-spectrum centroid Hz, zero-crossing rate, median f0 of loud frames Hz)."""
    y, sr = sf.read(path)
    rms_db = 20 * np.log10(np.sqrt(np.mean(y**2)))
    power = (np.abs(librosa.stft(y, n_fft=1024)) ** 2).mean(axis=1)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=1024)
    centroid = float((power * freqs).sum() / power.sum())
    zcr = float(np.mean(np.abs(np.diff(np.signbit(y).astype(np.int8)))))
    f0 = librosa.yin(y, fmin=60, fmax=500, sr=sr, frame_length=1024, hop_length=512)
    frame_rms = librosa.feature.rms(y=y, frame_length=1024, hop_length=512)[0][: len(f0)]
    return rms_db, centroid, zcr, float(np.median(f0[frame_rms > 0.3 * frame_rms.max()]))


@pytest.fixture(scope="module")
def stats(corpus) -> pd.DataFrame:
    df = pd.DataFrame([_stats(p) for p in corpus.paths], columns=["rms_db", "centroid", "zcr", "f0"])
    df["label"] = corpus.table["label"].to_numpy()
    return df


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_two_generations_are_byte_identical(tmp_path):
    kw = dict(n_speakers=2, n_per_class_per_speaker=2, seed=7)
    a, b = make_synthetic(tmp_path / "a", **kw), make_synthetic(tmp_path / "b", **kw)
    assert _files(a.root) == _files(b.root) and len(_files(a.root)) == 2 * 4 * 2 + 2
    for rel in _files(a.root):
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    pd.testing.assert_frame_equal(a.table, b.table)
    c = make_synthetic(tmp_path / "c", **{**kw, "seed": 8})
    wav = a.table["path"].iloc[0]
    assert (a.root / wav).read_bytes() != (c.root / wav).read_bytes()


def test_layout_counts_and_manifest(corpus):
    t = corpus.table
    assert corpus.name == "synthetic" and corpus.synthetic is True and corpus.labels == CLASSES
    assert len(corpus) == 4 * 4 * 6
    assert (t.groupby(["speaker", "label"]).size() == 6).all() and t["speaker"].nunique() == 4
    spk = t.groupby("speaker")[["gender", "session"]].first()
    assert spk["gender"].tolist() == ["M", "F", "M", "F"] and spk["session"].tolist() == ["1", "1", "2", "2"]
    assert t["utt_id"].is_unique
    manifest = pd.read_csv(corpus.root / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(manifest.columns) == ["path", "label", "speaker", "session", "gender"]
    assert manifest["path"].tolist() == t["path"].tolist()
    assert all(p.startswith(s + "/") for p, s in zip(manifest["path"], manifest["speaker"]))
    info = sf.info(str(corpus.paths[0]))
    assert info.samplerate == SR and info.channels == 1 and info.subtype == "PCM_16" and info.format == "WAV"


def test_manifest_reads_back_through_the_custom_loader(corpus):
    custom = pytest.importorskip("serlib.data.custom")
    back = custom.load_custom(corpus.root / "manifest.csv", labels=CLASSES)
    cols = ["path", "utt_id", "label", "speaker", "session", "gender", "sample_rate", "channels"]
    pd.testing.assert_frame_equal(back.table[cols], corpus.table[cols], check_dtype=False)
    np.testing.assert_allclose(back.table["duration"], corpus.table["duration"])
    assert back.skipped == []


def test_durations_in_range_and_match_files(corpus):
    d = corpus.table["duration"]
    assert d.between(2.2, 4.5).all() and d.std() > 0.3
    for i in (0, 50, 95):
        assert sf.info(str(corpus.abspath(i))).frames == round(d.iloc[i] * SR)


def test_clips_are_sane_audio(corpus):
    y, _ = sf.read(corpus.paths[3])
    assert np.abs(y).max() < 1.0 and np.abs(y).max() > 0.01
    frame_rms = librosa.feature.rms(y=y, frame_length=1024, hop_length=512)[0]
    assert frame_rms.min() < 0.05 * frame_rms.max()  # pauses between syllables


def test_reuse_without_rewriting_and_regenerate_on_change(tmp_path):
    root = tmp_path / "s"
    kw = dict(n_speakers=2, n_per_class_per_speaker=1)
    a = make_synthetic(root, **kw)
    wav = a.abspath(0)
    os.utime(wav, (1_000_000, 1_000_000))
    b = make_synthetic(root, **kw)
    assert wav.stat().st_mtime == 1_000_000  # reused, not rewritten
    pd.testing.assert_frame_equal(a.table, b.table)
    stored = json.loads((root / "synthetic.json").read_text())
    assert stored["seed"] == 0 and stored["n_speakers"] == 2 and len(stored["speakers"]) == 2
    c = make_synthetic(root, **kw, seed=1)  # other settings: regenerated
    assert wav.stat().st_mtime != 1_000_000 and json.loads((root / "synthetic.json").read_text())["seed"] == 1
    wav.unlink()
    d = make_synthetic(root, **kw, seed=1)  # a missing file triggers regeneration
    assert wav.exists() and len(d) == len(c)


def test_default_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path))
    assert default_synthetic_root() == tmp_path / "synthetic"
    monkeypatch.delenv("SERLIB_CACHE")
    assert default_synthetic_root().parts[-3:] == (".cache", "serlib", "synthetic")


def test_known_f0_of_one_utterance():
    """A neutral utterance of a 150-Hz speaker has a median f0 near 150 Hz (utterance jitter is a few %)."""
    spk = Speaker("x", "M", "1", 150.0, 1.0, 0.0, 0.0)
    y = synth_utterance(np.random.default_rng(3), style=CLASS_STYLES["neutral"], spk=spk, duration=3.0, sr=SR)
    assert y.shape == (48000,) and np.abs(y).max() <= 0.99
    f0 = librosa.yin(y, fmin=60, fmax=500, sr=SR, frame_length=1024, hop_length=512)
    rms = librosa.feature.rms(y=y, frame_length=1024, hop_length=512)[0][: len(f0)]
    assert 130 < np.median(f0[rms > 0.3 * rms.max()]) < 170


def test_classes_differ_in_the_intended_direction(stats):
    m = stats.groupby("label").mean()
    assert m.loc["happy", "f0"] > m.loc["neutral", "f0"] > m.loc["sad", "f0"]
    assert m.loc["angry", "f0"] > m.loc["neutral", "f0"]
    assert m.loc["angry", "rms_db"] > m.loc["neutral", "rms_db"] > m.loc["sad", "rms_db"]
    assert m.loc["angry", "centroid"] > m.loc["neutral", "centroid"] > m.loc["sad", "centroid"]
    assert m.loc["angry", "zcr"] > m.loc["sad", "zcr"]


def test_loudness_overlaps_between_classes(stats):
    """Per-utterance gain: the loudest sad clip is louder than the quietest angry clip."""
    assert stats.loc[stats.label == "sad", "rms_db"].max() > stats.loc[stats.label == "angry", "rms_db"].min()


def test_summary_stats_are_informative_but_not_trivial(stats):
    X = stats[["rms_db", "centroid", "zcr"]].to_numpy()
    y = stats["label"].to_numpy()
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    acc = cross_val_score(pipe, X, y, cv=StratifiedKFold(4, shuffle=True, random_state=0)).mean()
    assert 0.4 < acc < 0.95, acc  # chance is 0.25
    loud_only = cross_val_score(pipe, X[:, :1], y, cv=StratifiedKFold(4, shuffle=True, random_state=0)).mean()
    assert loud_only < 0.7, loud_only


def test_unknown_class_names_get_reproducible_styles(tmp_path):
    assert class_style("bored") == class_style("bored") and class_style("bored") != class_style("excited")
    c = make_synthetic(tmp_path / "x", n_speakers=1, n_per_class_per_speaker=1, classes=("bored", "excited"))
    assert c.labels == ("bored", "excited") and len(c) == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_synthetic(tmp_path, n_speakers=0)
    with pytest.raises(ValueError):
        make_synthetic(tmp_path, duration=(3.0, 2.0))
