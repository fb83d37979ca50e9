"""FLAC roots (issue 18): the adapters read a corpus whose wav files are FLAC; ``serlib pack`` writes such a copy,
checked, with a manifest. Small generated corpora, no real data needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mini_iemocap import make_mini_iemocap

from serlib.cli import main as cli_main
from serlib.data.audio import load_audio
from serlib.data.corpus import DataError
from serlib.data.pack import pack_corpus
from serlib.data.registry import load_corpus

SR = 16_000


def _tone(seed: int, seconds: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(scale=0.2, size=int(seconds * SR))).clip(-1, 1)


def _make_ravdess(root: Path) -> Path:
    for actor in (1, 2):
        d = root / f"Actor_{actor:02d}"
        d.mkdir(parents=True)
        for emo in (1, 3, 5):
            name = f"03-01-{emo:02d}-01-01-01-{actor:02d}.wav"
            sf.write(d / name, _tone(actor * 10 + emo), SR, subtype="PCM_16")
    (root / "Actor_02" / "03-01-02-01-01-01-07.wav").write_bytes(b"RIFF")  # wrong actor: skipped, counted
    return root


def _make_esc50(root: Path) -> Path:
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for k, (cat, target) in enumerate((("dog", 0), ("rain", 10), ("dog", 0))):
        name = f"1-{100 + k}-A-{target}.wav"
        sf.write(root / "audio" / name, _tone(k), SR, subtype="PCM_24")
        rows.append(f"{name},1,{target},{cat},False,{100 + k},A")
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def _to_flac(src: Path, dst: Path) -> Path:
    """A FLAC copy written independently of serlib.data.pack (soundfile only)."""
    for f in src.rglob("*"):
        rel = f.relative_to(src)
        if f.is_dir():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if f.suffix == ".wav" and f.stat().st_size > 100:
            data, sr = sf.read(f, dtype="int32")
            sf.write((dst / rel).with_suffix(".flac"), data, sr, format="FLAC", subtype=sf.info(f).subtype)
        else:
            (dst / rel).write_bytes(f.read_bytes())
    return dst


def _same_corpus(a, b) -> None:
    cols = ["utt_id", "label", "speaker", "session", "sample_rate", "channels"]
    assert a.table[cols].astype(str).equals(b.table[cols].astype(str))
    np.testing.assert_allclose(a.table["duration"], b.table["duration"], rtol=0, atol=1e-9)
    assert a.labels == b.labels
    for i in range(len(a)):
        np.testing.assert_array_equal(load_audio(a.abspath(i)), load_audio(b.abspath(i)))


@pytest.fixture
def corpora(tmp_path):
    return {
        "ravdess": _make_ravdess(tmp_path / "ravdess"),
        "esc50": _make_esc50(tmp_path / "esc50"),
        "iemocap": make_mini_iemocap(tmp_path / "iemo") / "IEMOCAP_full_release",
    }


@pytest.mark.parametrize("name", ["ravdess", "esc50", "iemocap"])
def test_flac_copy_loads_as_the_same_corpus(name, corpora, tmp_path):
    wav = load_corpus(name, corpora[name])
    flac = load_corpus(name, _to_flac(corpora[name], tmp_path / f"{name}_flac"))
    assert len(wav) > 0
    assert all(p.endswith(".flac") for p in flac.table["path"])
    _same_corpus(wav, flac)
    assert [s["path"] for s in flac.skipped] == [s["path"] for s in wav.skipped]
    # the fingerprint hashes relative paths: format-dependent by design (documented in serlib.data.pack)
    assert flac.fingerprint() != wav.fingerprint()
    assert flac.fingerprint() == load_corpus(name, tmp_path / f"{name}_flac").fingerprint()


def test_wav_is_read_when_both_exist(corpora):
    root = corpora["esc50"]
    first = next((root / "audio").glob("*.wav"))
    sf.write(first.with_suffix(".flac"), _tone(99), SR, subtype="PCM_16")
    c = load_corpus("esc50", root)
    assert all(p.endswith(".wav") for p in c.table["path"])


@pytest.mark.parametrize("name", ["ravdess", "esc50", "iemocap"])
def test_pack_writes_checked_flac_copy_and_manifest(name, corpora, tmp_path):
    out = tmp_path / f"{name}_packed"
    rec = pack_corpus(name, corpora[name], out)
    src, packed = load_corpus(name, corpora[name]), load_corpus(name, out)
    _same_corpus(src, packed)
    assert rec["flac"] == len(src) and rec["copied_verbatim"] == 0
    assert json.loads((out / "pack.json").read_text())["packed_fingerprint"] == packed.fingerprint()
    assert rec["source_fingerprint"] == src.fingerprint()
    assert (out / "manifest.csv").is_file()
    assert rc_check(name, out) == 0
    with pytest.raises(DataError, match="not empty"):
        pack_corpus(name, corpora[name], out)


def rc_check(name: str, out: Path) -> int:
    return cli_main(["manifest", name, str(out), str(out / "manifest.csv"), "--check", "--hashes"])


def test_pack_cli_and_float_wavs_copied_verbatim(tmp_path, capsys):
    root = _make_ravdess(tmp_path / "r")
    f = next((root / "Actor_01").glob("*.wav"))
    sf.write(f, _tone(5).astype(np.float32), SR, subtype="FLOAT")  # FLAC cannot hold float samples bit for bit
    assert cli_main(["pack", "ravdess", str(root), str(tmp_path / "out")]) == 0
    assert "checked" in capsys.readouterr().out
    rec = json.loads((tmp_path / "out" / "pack.json").read_text())
    assert rec["copied_verbatim"] == 1 and rec["flac"] == 5
    assert (tmp_path / "out" / f.relative_to(root)).is_file()
