"""Downloads against a local HTTP server on 127.0.0.1 (``conftest.http_server``; never the network): layout, hash
checks, no re-download."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest
import soundfile as sf

from serlib.data import download as dl
from serlib.data.corpus import DataError
from serlib.data.esc50 import load_esc50
from serlib.data.ravdess import load_ravdess


def _wav_bytes(tmp_path, sr=16000):
    p = tmp_path / "tone.wav"
    t = np.arange(sr // 10) / sr
    sf.write(p, (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, subtype="PCM_16")
    return p.read_bytes()


def _zip(path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _ravdess_zip(tmp_path, www, prefix=""):
    wav = _wav_bytes(tmp_path)
    members = {f"{prefix}Actor_{a:02d}/03-01-0{e}-01-01-01-{a:02d}.wav": wav for a in (1, 2) for e in (1, 5)}
    return _zip(www / "rav.zip", members)


def test_ravdess_download_layout_and_no_second_download(tmp_path, http_server):
    base, www, hits = http_server
    sha = _ravdess_zip(tmp_path, www)
    dest = tmp_path / "data"
    root = dl.download_ravdess(dest, url=f"{base}/rav.zip", known_hash=sha)
    assert root == dest / "ravdess" and hits == ["/rav.zip"]
    actors = sorted(p.name for p in (root / "Audio_Speech_Actors_01-24").iterdir())
    assert actors == ["Actor_01", "Actor_02"]
    c = load_ravdess(root)
    assert len(c) == 4 and set(c.table["label"]) == {"neutral", "angry"} and not c.skipped
    leftovers = [p.name for p in (dest / "downloads").iterdir()]
    assert leftovers == [], "staging folder and archive are removed by default"

    again = dl.download_ravdess(dest, url=f"{base}/rav.zip", known_hash=sha)
    assert again == root and hits == ["/rav.zip"], "second call must not download"


def test_ravdess_zip_with_top_folder_and_kept_archive(tmp_path, http_server):
    base, www, hits = http_server
    sha = _ravdess_zip(tmp_path, www, prefix="Audio_Speech_Actors_01-24/")
    root = dl.download_ravdess(tmp_path / "d", url=f"{base}/rav.zip", known_hash=sha, keep_archive=True)
    assert (root / "Audio_Speech_Actors_01-24" / "Actor_02" / "03-01-05-01-01-01-02.wav").is_file()
    assert not (root / "Audio_Speech_Actors_01-24" / "Audio_Speech_Actors_01-24").exists()
    assert (tmp_path / "d" / "downloads" / dl.RAVDESS_ARCHIVE).is_file()


def test_wrong_hash_raises_and_leaves_no_tree(tmp_path, http_server):
    base, www, hits = http_server
    _ravdess_zip(tmp_path, www)
    dest = tmp_path / "data"
    with pytest.raises(ValueError, match="(?i)hash"):
        dl.download_ravdess(dest, url=f"{base}/rav.zip", known_hash="sha256:" + "0" * 64)
    assert hits == ["/rav.zip"]
    assert not (dest / "ravdess").exists()
    assert not (dest / "downloads" / dl.RAVDESS_ARCHIVE).exists()


def test_esc50_download(tmp_path, http_server):
    base, www, hits = http_server
    top = f"ESC-50-{dl.ESC50_COMMIT}/"
    csv = "filename,fold,target,category,esc10,src_file,take\n1-100-A-0.wav,1,0,dog,True,100,A\n"
    sha = _zip(
        www / "esc.zip",
        {
            top + "meta/esc50.csv": csv.encode(),
            top + "audio/1-100-A-0.wav": _wav_bytes(tmp_path),
            top + "README.md": b"# ESC-50\n",
        },
    )
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="known_hash"):
        dl.download_esc50(dest, url=f"{base}/esc.zip")  # no pinned hash and none given
    assert hits == []
    root = dl.download_esc50(dest, url=f"{base}/esc.zip", known_hash=sha)
    assert root == dest / "esc50" and (root / "README.md").is_file()
    c = load_esc50(root)
    assert len(c) == 1 and c.labels == ("dog",)
    assert dl.download_esc50(dest, url=f"{base}/esc.zip", known_hash=sha) == root
    assert hits == ["/esc.zip"]


def test_esc50_unverified_download_reports_its_hash(tmp_path, http_server):
    base, www, hits = http_server
    top = "ESC-50-master/"
    csv = "filename,fold,target,category,esc10,src_file,take\n1-100-A-0.wav,1,0,dog,True,100,A\n"
    sha = _zip(
        www / "esc.zip",
        {top + "meta/esc50.csv": csv.encode(), top + "audio/1-100-A-0.wav": _wav_bytes(tmp_path)},
    )
    with pytest.warns(UserWarning, match=sha.split(":")[1]):
        root = dl.download_esc50(tmp_path / "d", url=f"{base}/esc.zip", allow_unverified=True)
    assert (root / "audio" / "1-100-A-0.wav").is_file()


def test_pinned_constants():
    assert dl.RAVDESS_KNOWN_HASH == "md5:bc696df654c87fed845eb13823edef8a"
    assert "1188976" in dl.RAVDESS_URL and dl.RAVDESS_URL.split("?")[0].endswith(dl.RAVDESS_ARCHIVE)
    assert dl.ESC50_COMMIT in dl.ESC50_URL and len(dl.ESC50_COMMIT) == 40
    assert dl.ESC50_KNOWN_HASH is None  # unverified: see the module docstring
