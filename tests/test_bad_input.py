"""Bad input through the adapters and ``load_audio``: every failure is a DataError, an AudioError naming the file,
or a counted skip with a reason -- never a silent drop. Built in a fake RAVDESS tree whose names parse."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from serlib.data.audio import AudioError, load_audio
from serlib.data.corpus import DataError
from serlib.data.esc50 import load_esc50
from serlib.data.manifest import probe_audio
from serlib.data.ravdess import load_ravdess

DUR = 0.5  # seconds of every generated file

# utt_id -> what was written (see ``fake_ravdess``)
GOOD = {
    "03-01-01-01-01-01-01": "16k",
    "03-01-02-01-01-01-01": "24414",
    "03-01-02-01-01-02-01": "44100",
    "03-01-02-01-02-01-01": "48000",
    "03-01-02-01-02-02-01": "96000",
    "03-01-03-01-01-01-01": "stereo",
    "03-01-04-01-01-01-01": "zeros",
    "03-01-05-01-01-01-01": "aiff",
    "03-01-01-01-01-01-02": "16k actor 2",
}
BAD = {  # path -> words the skip reason must contain
    "Actor_01/03-01-06-01-01-01-01.wav": "empty",
    "Actor_01/03-01-07-01-01-01-01.wav": "truncated",
    "Actor_01/03-01-08-01-01-01-01.wav": "not readable as audio",
    "Actor_01/hello.wav": "does not match the RAVDESS pattern",
    "Actor_01/03-02-01-01-01-01-01.wav": "not audio-only speech",
    "Actor_02/03-01-01-02-01-01-01.wav": "folder Actor_02",
}


def _sine(sr: int, dur: float = DUR, f: float = 220.0) -> np.ndarray:
    t = np.arange(int(round(dur * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


@pytest.fixture(scope="module")
def fake_ravdess(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_ravdess")
    a1 = root / "Audio_Speech_Actors_01-24" / "Actor_01"
    a2 = root / "Audio_Speech_Actors_01-24" / "Actor_02"
    a1.mkdir(parents=True)
    a2.mkdir(parents=True)
    sf.write(a1 / "03-01-01-01-01-01-01.wav", _sine(16000), 16000, subtype="PCM_16")
    for name, sr in [
        ("03-01-02-01-01-01-01", 24414),
        ("03-01-02-01-01-02-01", 44100),
        ("03-01-02-01-02-01-01", 48000),
        ("03-01-02-01-02-02-01", 96000),
    ]:
        sf.write(a1 / f"{name}.wav", _sine(sr), sr, subtype="PCM_16")
    x = _sine(16000)
    sf.write(a1 / "03-01-03-01-01-01-01.wav", np.stack([x, -0.5 * x], axis=1), 16000, subtype="FLOAT")
    sf.write(a1 / "03-01-04-01-01-01-01.wav", np.zeros(8000, np.float32), 16000, subtype="PCM_16")
    sf.write(a1 / "03-01-05-01-01-01-01.wav", _sine(16000), 16000, format="AIFF", subtype="PCM_16")
    (a1 / "03-01-06-01-01-01-01.wav").write_bytes(b"")
    sf.write(a1 / "full.tmp", _sine(16000), 16000, format="WAV", subtype="PCM_16")
    data = (a1 / "full.tmp").read_bytes()
    (a1 / "03-01-07-01-01-01-01.wav").write_bytes(data[: len(data) // 2])  # header still says 8000 frames
    (a1 / "full.tmp").unlink()
    (a1 / "03-01-08-01-01-01-01.wav").write_text("this is not audio\n" * 20)
    sf.write(a1 / "hello.wav", _sine(16000), 16000)
    sf.write(a1 / "03-02-01-01-01-01-01.wav", _sine(16000), 16000)  # song, not speech
    (a1 / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden OS file: ignored
    sf.write(a2 / "03-01-01-01-01-01-02.wav", _sine(16000), 16000)
    sf.write(a2 / "03-01-01-02-01-01-01.wav", _sine(16000), 16000)  # actor 01 in Actor_02's folder
    return root


@pytest.fixture(scope="module")
def corpus(fake_ravdess):
    return load_ravdess(fake_ravdess)


def test_missing_root_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "ravdess"
    for loader in (load_ravdess, load_esc50):
        with pytest.raises(DataError, match="nowhere"):
            loader(missing)


def test_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no RAVDESS speech"):
        load_ravdess(tmp_path)
    with pytest.raises(DataError, match="esc50.csv"):
        load_esc50(tmp_path)


def test_folder_with_only_bad_files_says_why(tmp_path):
    (tmp_path / "Actor_03").mkdir()
    (tmp_path / "Actor_03" / "03-01-01-01-01-01-03.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"no usable audio.*03-01-01-01-01-01-03\.wav: file is empty"):
        load_ravdess(tmp_path)


def test_good_files_kept_bad_files_counted_with_reasons(corpus):
    assert set(corpus.table["utt_id"]) == set(GOOD)
    reasons = {s["path"]: s["reason"] for s in corpus.skipped}
    assert set(reasons) == set(BAD), "every bad file is reported, nothing else"
    for path, words in BAD.items():
        assert words in reasons[path], (path, reasons[path])
    report = corpus.report()
    assert f"skipped {len(BAD)} file(s)" in report and "03-01-07-01-01-01-01.wav: truncated" in report


def test_root_forms_give_the_same_corpus(fake_ravdess, corpus):
    inner = load_ravdess(fake_ravdess / "Audio_Speech_Actors_01-24")
    assert inner.root == corpus.root and inner.fingerprint() == corpus.fingerprint()
    assert corpus.table["path"].str.match(r"^Actor_\d\d/").all()


def test_zero_byte_and_text_files_raise_audio_error_naming_the_file(fake_ravdess):
    a1 = fake_ravdess / "Audio_Speech_Actors_01-24" / "Actor_01"
    for name, reason in [("03-01-06-01-01-01-01.wav", "empty"), ("03-01-08-01-01-01-01.wav", "not readable")]:
        with pytest.raises(AudioError, match=reason) as err:
            load_audio(a1 / name)
        assert name in str(err.value) and err.value.path.endswith(name)


def test_truncated_wav_is_caught_by_the_header_probe(fake_ravdess):
    # libsndfile silently clamps a truncated WAV to the bytes present, so the scan must catch it.
    path = fake_ravdess / "Audio_Speech_Actors_01-24" / "Actor_01" / "03-01-07-01-01-01-01.wav"
    assert sf.info(str(path)).frames < 8000
    with pytest.raises(AudioError, match="truncated") as err:
        probe_audio(path)
    assert "03-01-07-01-01-01-01.wav" in str(err.value)


def test_aiff_named_wav_is_loaded_and_flagged(corpus):
    t = corpus.table.set_index("utt_id")
    assert bool(t.at["03-01-05-01-01-01-01", "format_mismatch"]) is True
    assert not t.drop(index="03-01-05-01-01-01-01")["format_mismatch"].any()
    y = load_audio(corpus.root / t.at["03-01-05-01-01-01-01", "path"])
    np.testing.assert_allclose(y, _sine(16000), atol=1e-3)


@pytest.mark.parametrize(
    "utt,sr",
    [
        ("03-01-02-01-01-01-01", 24414),
        ("03-01-02-01-01-02-01", 44100),
        ("03-01-02-01-02-01-01", 48000),
        ("03-01-02-01-02-02-01", 96000),
    ],
)
def test_other_rates_load_at_16k_with_the_right_duration(corpus, utt, sr):
    row = corpus.table.set_index("utt_id").loc[utt]
    assert row["sample_rate"] == sr
    assert row["duration"] == pytest.approx(DUR, abs=1.0 / sr)
    y = load_audio(corpus.root / row["path"])
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - DUR * 16000) <= 1
    # Still a 220 Hz sine after resampling (interior samples; edges carry filter transients).
    np.testing.assert_allclose(y[400:-400], _sine(16000)[400 : len(y) - 400], atol=0.02)


def test_stereo_is_downmixed_by_averaging(corpus):
    row = corpus.table.set_index("utt_id").loc["03-01-03-01-01-01-01"]
    assert row["channels"] == 2
    y = load_audio(corpus.root / row["path"])
    assert y.ndim == 1
    np.testing.assert_allclose(y, 0.25 * _sine(16000), atol=1e-6)


def test_all_zero_audio_loads_finite(corpus):
    row = corpus.table.set_index("utt_id").loc["03-01-04-01-01-01-01"]
    y = load_audio(corpus.root / row["path"])
    assert len(y) == 8000 and np.isfinite(y).all() and not y.any()


def test_esc50_missing_clip_and_unlisted_file_are_reported(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "audio").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100-A-0.wav,1,0,dog,True,100,A\n"
        "1-200-A-1.wav,1,1,rooster,False,200,A\n"
        "2-300-A-0.wav,2,0,dog,True,300,A\n"
    )
    sf.write(tmp_path / "audio" / "1-100-A-0.wav", _sine(16000), 16000)
    sf.write(tmp_path / "audio" / "2-300-A-0.wav", _sine(44100), 44100)
    sf.write(tmp_path / "audio" / "9-999-A-5.wav", _sine(16000), 16000)
    c = load_esc50(tmp_path)
    assert len(c) == 2 and c.labels == ("dog",)
    reasons = {s["path"]: s["reason"] for s in c.skipped}
    assert reasons == {
        "audio/1-200-A-1.wav": "file does not exist",
        "audio/9-999-A-5.wav": "not listed in meta/esc50.csv",
    }
