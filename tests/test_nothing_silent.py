"""Issue 15, "Nothing silent": every test names the item it covers and failed before the fix.

Corpora are built in ``tmp_path`` (a few 0.6-s tones through the bring-your-own manifest), downloads come from a
local HTTP server on 127.0.0.1, and training runs are one or two epochs of the reference model on CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from serlib import cache as feature_cache
from serlib.data.corpus import DataError
from serlib.data.custom import load_custom, write_custom_manifest
from serlib.data.splits import make_splits
from serlib.experiment import (
    Experiment,
    NonFiniteFeaturesError,
    build_views,
    checkpoint_dir,
    experiment_record_path,
    run_experiment,
    run_one,
    segment_features,
)
from serlib.records import load_records, read_record
from serlib.train import ArrayData, CheckpointMismatchError, NonFiniteLossError, TrainConfig, Trainer

SR = 16_000
DUR = 0.6
LABELS = ("calm", "loud")


def _tone(label: str, speaker: int, j: int, dur: float = DUR) -> np.ndarray:
    t = np.arange(int(dur * SR)) / SR
    f = (300.0 if label == "calm" else 1200.0) * (1 + 0.03 * speaker + 0.01 * j)
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def make_corpus(root: Path, *, speakers: int = 4, per: int = 2, special: dict | None = None) -> Path:
    """``root/audio/s<k>_<label>_<j>.wav`` + ``root/manifest.csv``; ``special`` maps a file name to an array (or a
    callable writing the file) replacing its tone."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(speakers):
        for label in LABELS:
            for j in range(per):
                name = f"s{k}_{label}_{j}.wav"
                spec = (special or {}).get(name)
                if callable(spec):
                    spec(audio / name)
                else:
                    y = _tone(label, k, j) if spec is None else spec
                    sf.write(audio / name, y, SR, subtype="FLOAT" if y.dtype == np.float32 else "PCM_16")
                rows.append({"path": f"audio/{name}", "label": label, "speaker": f"S{k}"})
    return write_custom_manifest(rows, root / "manifest.csv")


def _exp(csv: Path, **kw) -> Experiment:
    base = dict(name="ns", corpus="custom", data_root=str(csv), protocol="speaker_independent", folds=(0,),
                features="head_fusion_mfcc", view="segments", win_s=0.5, train_step_s=0.25, test_step_s=0.25,
                model="reference", train=dict(epochs=2, batch_size=8, progress=False))
    base.update(kw)
    return Experiment(**base)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))


def _rewrite_same_length(path: Path, y: np.ndarray) -> None:
    """Replace a file's audio in place, same format and length (what "fixing a file" does)."""
    before = path.stat().st_size
    sf.write(path, y, SR, subtype="FLOAT")
    assert path.stat().st_size == before


# ------------------------------------------------------------------------------------------------ item 1
def test_item1_content_hash_changes_after_in_place_edit(tmp_path):
    csv = make_corpus(tmp_path)
    c0 = load_custom(csv)
    h0 = c0.content_hash()
    assert c0.content_hash() == h0  # stable
    _rewrite_same_length(tmp_path / "audio" / "s1_calm_0.wav", _tone("loud", 1, 0))
    c1 = load_custom(csv)
    assert c1.fingerprint() == c0.fingerprint()  # names, labels and durations are all the same...
    assert c1.content_hash() != h0  # ...but the bytes are not


def test_item1_stale_features_rebuilt_after_in_place_edit(tmp_path):
    from serlib import features as F

    csv = make_corpus(tmp_path)
    preset = F.PRESETS["head_fusion_mfcc"]
    corpus = load_custom(csv)
    before = segment_features(corpus, preset, win_s=0.5, step_s=0.25, short="pad")
    i = int(np.flatnonzero(corpus.table["path"] == "audio/s1_calm_0.wav")[0])
    _rewrite_same_length(tmp_path / "audio" / "s1_calm_0.wav", _tone("loud", 1, 0))
    corpus = load_custom(csv)
    after = segment_features(corpus, preset, win_s=0.5, step_s=0.25, short="pad")
    rows = before["groups"] == i
    assert not np.allclose(before["x"][rows], after["x"][rows])  # new features for the fixed file
    others = before["groups"] != i
    np.testing.assert_array_equal(before["x"][others], after["x"][others])


def test_item1_content_digests_are_memoised_and_fast_to_check(tmp_path):
    csv = make_corpus(tmp_path)
    corpus = load_custom(csv)
    old = time.time() - 60  # files older than the racy window are memoised
    for p in corpus.paths:
        os.utime(p, (old, old))
    corpus.content_hash()
    memo = json.loads((tmp_path / "cache" / feature_cache.DIGEST_MEMO).read_text())
    assert {str(p.resolve()) for p in corpus.paths} <= set(memo)
    calls = []
    real = feature_cache._hash_file
    feature_cache._hash_file = lambda p, *a: calls.append(p) or real(p, *a)
    try:
        corpus.content_hash()
        assert calls == []  # unchanged files are not read again
        _rewrite_same_length(tmp_path / "audio" / "s0_calm_0.wav", _tone("loud", 0, 0))
        corpus.content_hash()
        assert [Path(p).name for p in calls] == ["s0_calm_0.wav"]
    finally:
        feature_cache._hash_file = real


def test_item1_experiment_reruns_a_record_made_from_other_audio(tmp_path):
    csv = make_corpus(tmp_path)
    exp = _exp(csv, train=dict(epochs=1, batch_size=8, progress=False))
    (first,) = run_experiment(exp, results_dir=tmp_path / "res", skip_existing=True)
    assert first["corpus"]["content_hash"] == load_custom(csv).content_hash()
    (same,) = run_experiment(exp, results_dir=tmp_path / "res", skip_existing=True)
    assert same["created"] == first["created"] and same["_path"] == first["_path"]  # unchanged audio: reused
    _rewrite_same_length(tmp_path / "audio" / "s0_loud_1.wav", _tone("calm", 0, 1))
    time.sleep(1.1)  # "created" has one-second resolution
    with pytest.warns(UserWarning, match="other audio"):
        (again,) = run_experiment(exp, results_dir=tmp_path / "res", skip_existing=True)
    assert again["_path"] == first["_path"]  # record paths depend on the configuration only
    assert again["corpus"]["content_hash"] == load_custom(csv).content_hash() != first["corpus"]["content_hash"]
    assert read_record(again["_path"])["created"] == again["created"] != first["created"]


def test_item1_record_without_content_hash_is_taken_as_current(tmp_path):
    """Committed records predate content hashes: they are still found and reused (their path did not move)."""
    csv = make_corpus(tmp_path)
    exp = _exp(csv, train=dict(epochs=1, batch_size=8, progress=False))
    (first,) = run_experiment(exp, results_dir=tmp_path / "res", skip_existing=True)
    rec = read_record(first["_path"])
    del rec["corpus"]["content_hash"]
    Path(first["_path"]).write_text(json.dumps(rec))
    (again,) = run_experiment(exp, results_dir=tmp_path / "res", skip_existing=True)
    assert again["created"] == first["created"]


# ------------------------------------------------------------------------------------------------ item 2
def _huge(path: Path) -> None:
    """A float WAV with samples near 1e25: decodes to finite audio whose features overflow to NaN / inf."""
    sf.write(path, _tone("calm", 0, 0) * np.float32(3e25), SR, subtype="FLOAT")


def test_item2_nonfinite_features_are_skipped_and_named(tmp_path):
    csv = make_corpus(tmp_path, special={"s2_calm_0.wav": _huge})
    exp = _exp(csv, train=dict(epochs=1, batch_size=8, progress=False))
    (record,) = run_experiment(exp, results_dir=tmp_path / "res")
    assert record["status"] == "ok"
    assert record["counts"]["nonfinite"] == 1
    (skip,) = [s for s in record["skips"] if s["path"] == "audio/s2_calm_0.wav"]
    assert "NaN or infinite" in skip["reason"] and skip["stage"] == "features"
    assert record["history"][0]["train_loss"] is not None and np.isfinite(record["history"][0]["train_loss"])


def test_item2_nonfinite_policy_fail_names_the_file(tmp_path):
    csv = make_corpus(tmp_path, special={"s2_calm_0.wav": _huge})
    exp = _exp(csv, nonfinite="fail")
    corpus = load_custom(csv)
    with pytest.raises(NonFiniteFeaturesError, match="s2_calm_0.wav"):
        build_views(exp, corpus, make_splits(exp.protocol, corpus)[0])


def test_item2_nonfinite_loss_stops_the_trainer():
    x = torch.randn(16, 4)
    x[3, 1] = float("nan")
    data = ArrayData(x=x, y=torch.arange(16) % 2)
    model = torch.nn.Linear(4, 2)
    with pytest.raises(NonFiniteLossError, match="epoch 1") as info:
        Trainer(model, TrainConfig(epochs=3, select="last", progress=False, device="cpu")).fit(data)
    assert info.value.epoch == 1 and info.value.history == []


def test_item2_nonfinite_loss_gives_a_failed_record_no_table_counts(tmp_path, monkeypatch):
    import serlib.experiment as E

    csv = make_corpus(tmp_path)
    exp = _exp(csv, train=dict(epochs=2, batch_size=8, progress=False))
    (good,) = run_experiment(exp, results_dir=tmp_path / "res")
    # the same configuration under another name, with a loss that turns NaN (what 1e25 samples did before)
    monkeypatch.setattr(E, "_make_loss", lambda *a: lambda logits, y: torch.nn.functional.cross_entropy(logits, y)
                        * float("nan"))
    with pytest.warns(UserWarning, match="run FAILED"):
        (bad,) = run_experiment(exp.replace(name="ns_nan"), results_dir=tmp_path / "res")
    assert bad["status"] == "failed" and "non-finite training loss" in bad["reason"]
    assert bad["metrics"] == {} and bad["extra"]["failed_epoch"] == 1
    on_disk = read_record(bad["_path"])
    assert on_disk["status"] == "failed"
    table = load_records(tmp_path / "res")
    assert table["kind"].tolist() == ["ns"]  # the failed run is not counted
    assert set(load_records(tmp_path / "res", include_failed=True)["status"]) == {"ok", "failed"}
    from serlib.studies.common import load_study_records

    assert [r["kind"] for r in load_study_records(tmp_path / "res", "ns")] == ["ns"]
    assert good["status"] == "ok"


# ------------------------------------------------------------------------------------------------ item 3
def _zip(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _esc50_zip(tmp_path, www) -> str:
    sf.write(tmp_path / "tone.wav", _tone("calm", 0, 0), SR, subtype="PCM_16")
    wav = (tmp_path / "tone.wav").read_bytes()
    meta = "filename,fold,target,category,esc10,src_file,take\n1-100-A-0.wav,1,0,dog,True,100,A\n"
    return _zip(www / "esc.zip", {"ESC-50-x/meta/esc50.csv": meta.encode(), "ESC-50-x/audio/1-100-A-0.wav": wav})


def test_item3_esc50_from_the_cli_unverified_prints_the_hash_then_pins(tmp_path, http_server, monkeypatch,
                                                                      capsys):
    from serlib.cli import main
    from serlib.data import download as dl

    base, www, _ = http_server
    sha = _esc50_zip(tmp_path, www)
    monkeypatch.setattr(dl, "ESC50_URL", f"{base}/esc.zip")
    dest = tmp_path / "data"
    assert main(["download", "--root", str(dest), "--corpora", "esc50"]) == 1  # no hash, no flag: refused
    assert "FAILED" in capsys.readouterr().out and not (dest / "esc50").exists()
    assert main(["download", "--root", str(dest), "--corpora", "esc50", "--allow-unverified"]) == 0
    out = capsys.readouterr().out
    assert f"--sha256 {sha.split(':')[1]}" in out and (dest / "esc50" / "meta" / "esc50.csv").is_file()
    dest2 = tmp_path / "data2"
    assert main(["download", "--root", str(dest2), "--corpora", "esc50", "--sha256", sha.split(":")[1]]) == 0
    assert (dest2 / "esc50" / "audio" / "1-100-A-0.wav").is_file()
    assert main(["download", "--root", str(tmp_path / "d3"), "--corpora", "esc50", "--sha256", "0" * 64]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_item3_one_corpus_failing_keeps_the_other(tmp_path, http_server, monkeypatch, capsys):
    from serlib import cli
    from serlib.data import download as dl

    base, www, _ = http_server
    sha = _esc50_zip(tmp_path, www)
    monkeypatch.setattr(dl, "ESC50_URL", f"{base}/esc.zip")
    monkeypatch.setattr(dl, "RAVDESS_URL", f"{base}/missing.zip")  # 404
    dest = tmp_path / "data"
    code = cli.main(["download", "--root", str(dest), "--sha256", sha.split(":")[1]])
    out = capsys.readouterr().out
    assert code == 1 and "ravdess -> FAILED" in out
    assert (dest / "esc50" / "meta" / "esc50.csv").is_file()
    # and the study's --download path keeps what succeeded instead of falling back to synthetic audio
    monkeypatch.setenv("SERLIB_DATA", str(tmp_path / "unused"))  # restored after the test (_offer_download sets it)
    monkeypatch.setattr(dl, "ESC50_KNOWN_HASH", sha)
    cli._offer_download(tmp_path / "data4", assume_yes=True)
    assert os.environ["SERLIB_DATA"] == str(tmp_path / "data4")
    assert (tmp_path / "data4" / "esc50" / "meta" / "esc50.csv").is_file()


# ------------------------------------------------------------------------------------------------ item 4
def _rows(tmp_path, rows):
    audio = tmp_path / "audio"
    audio.mkdir(exist_ok=True)
    for r in rows:
        p = tmp_path / r["path"]
        if not p.exists() and ".." not in r["path"]:
            sf.write(p, _tone("calm", 0, 0), SR)
    return write_custom_manifest(rows, tmp_path / "m.csv")


def test_item4_same_file_through_two_spellings_is_refused_naming_both_rows(tmp_path):
    csv = _rows(tmp_path, [{"path": "audio/a1.wav", "label": "happy", "speaker": "s1"},
                           {"path": "audio/b.wav", "label": "sad", "speaker": "s1"},
                           {"path": "audio/../audio/a1.wav", "label": "sad", "speaker": "s2"}])
    with pytest.raises(DataError, match=r"rows 2 \('audio/a1.wav'\) and 4 \('audio/../audio/a1.wav'\)"):
        load_custom(csv)


def test_item4_label_and_speaker_case_variants_are_merged_with_a_warning(tmp_path):
    csv = _rows(tmp_path, [{"path": f"audio/{i}.wav", "label": lab, "speaker": spk} for i, (lab, spk) in
                           enumerate([("happy", "S1"), ("Happy", "s1"), ("HAPPY", "S2"), ("happy", "S2"),
                                      ("sad", "S1"), ("sad", "s2")])])
    with pytest.warns(UserWarning, match="differ only in case") as w:
        corpus = load_custom(csv)
    msg = str(w[0].message)
    assert "label 'Happy' -> 'happy'" in msg and "label 'HAPPY' -> 'happy'" in msg
    assert "speaker 's1' -> 'S1'" in msg and "speaker 's2' -> 'S2'" in msg
    assert corpus.labels == ("happy", "sad")
    assert sorted(corpus.table["speaker"].unique()) == ["S1", "S2"]
    with pytest.raises(DataError, match="differ only in case"):
        load_custom(csv, case="refuse")


# ------------------------------------------------------------------------------------------------ item 5
def _kill_after_epoch(monkeypatch, n: int):
    """Make training die (as a killed process would) right after epoch ``n`` has been checkpointed."""
    real = Trainer._run_epoch

    def run_epoch(self, *a, **kw):
        real(self, *a, **kw)
        if self.epoch == n:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Trainer, "_run_epoch", run_epoch)


def test_item5_a_killed_run_resumes_and_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    csv = make_corpus(tmp_path)
    exp = _exp(csv, train=dict(epochs=3, batch_size=8, progress=False))
    corpus = load_custom(csv)
    split = make_splits(exp.protocol, corpus)[0]
    full = run_one(exp, corpus, split, 0, results_dir=None)
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            run_one(exp, corpus, split, 0, results_dir=None, checkpoint_root=tmp_path / "ck")
    resumed = run_one(exp, corpus, split, 0, results_dir=None, checkpoint_root=tmp_path / "ck")
    assert resumed["extra"]["resumed"] is True
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx([h["train_loss"] for h in full["history"]])
    assert resumed["metrics"]["ua"] == pytest.approx(full["metrics"]["ua"])


def test_item5_cli_resumes_by_default_and_refuses_another_config(tmp_path, monkeypatch, capsys):
    from serlib.cli import main

    csv = make_corpus(tmp_path)
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps(_exp(csv, train=dict(epochs=2, batch_size=8, lr=1e-3, progress=False)).to_dict()))
    args = ["experiment", "--config", str(cfg), "--results", str(tmp_path / "res")]
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            main(args)
    ckpt = checkpoint_dir("ns", "speaker_independent/fold0", 0, tmp_path / "cache" / "checkpoints")
    assert (ckpt / "last.pt").is_file()  # under $SERLIB_CACHE/checkpoints by default
    code = main(args + ["--set", 'train={"epochs": 2, "batch_size": 8, "lr": 0.01, "progress": false}'])
    err = capsys.readouterr().err
    assert code == 2 and "train.lr: 0.001 -> 0.01" in err and len(err.strip().splitlines()) == 1
    assert main(args) == 0
    (path,) = [p for p in (tmp_path / "res").rglob("*.json") if p.parent.name != "splits"]
    assert read_record(path)["extra"]["resumed"] is True


def test_item5_trainer_refuses_to_resume_with_another_seed_or_lr(tmp_path):
    data = ArrayData(x=torch.randn(16, 4), y=torch.arange(16) % 2)
    cfg = dict(epochs=2, select="last", progress=False, device="cpu", checkpoint_dir=str(tmp_path / "ck"))
    Trainer(torch.nn.Linear(4, 2), TrainConfig(**cfg)).fit(data)
    for change in ({"seed": 1}, {"lr": 0.01}):
        with pytest.raises(CheckpointMismatchError, match=next(iter(change))):
            Trainer(torch.nn.Linear(4, 2), TrainConfig(**cfg, **change)).fit(data, resume=True)
    Trainer(torch.nn.Linear(4, 2), TrainConfig(**{**cfg, "epochs": 3})).fit(data, resume=True)  # more epochs: fine


# ------------------------------------------------------------------------------------------------ item 6
def test_item6_manifest_paths_stay_inside_the_root(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    outside = tmp_path / "outside.wav"
    sf.write(outside, _tone("calm", 0, 0), SR)
    rows = [{"path": "audio/a.wav", "label": "x", "speaker": "s1"}]
    (root / "audio").mkdir()
    sf.write(root / "audio" / "a.wav", _tone("calm", 0, 0), SR)
    for bad in ("../outside.wav", "audio/../../outside.wav", str(outside)):
        csv = write_custom_manifest(rows + [{"path": bad, "label": "y", "speaker": "s2"}], root / "m.csv")
        with pytest.raises(DataError, match="allow_outside_root=True"):
            load_custom(csv)
        corpus = load_custom(csv, allow_outside_root=True)  # the explicit opt-out reads it
        assert len(corpus) == 2 and Path(corpus.paths[1]).resolve() == outside.resolve()


def test_item6_experiment_names_cannot_escape_their_folders(tmp_path):
    csv = make_corpus(tmp_path)
    exp = _exp(csv, name="../../escaped", train=dict(epochs=1, batch_size=8, progress=False))
    corpus = load_custom(csv)
    split = make_splits(exp.protocol, corpus)[0]
    ck, res = tmp_path / "run" / "ck", tmp_path / "run" / "res"
    record = run_one(exp, corpus, split, 0, results_dir=res, checkpoint_root=ck)
    assert Path(record["_path"]).resolve().is_relative_to(res.resolve())
    written = [p for p in tmp_path.rglob("*") if "escaped" in p.name]
    assert written and all(p.resolve().is_relative_to((tmp_path / "run").resolve()) for p in written)
    assert checkpoint_dir("../x", "a/b", 0, ck).parent == ck


# ------------------------------------------------------------------------------------------------ item 7
def test_item7_ravdess_names_with_non_ascii_digits_are_skipped(tmp_path):
    from serlib.data.ravdess import load_ravdess

    actor = tmp_path / "Actor_01"
    actor.mkdir()
    sf.write(actor / "03-01-01-01-01-01-01.wav", _tone("calm", 0, 0), SR)
    arabic = "٠٣-٠١-٠١-٠١-٠١-٠١-٠١.wav"  # the same utterance in Arabic-Indic digits
    sf.write(actor / arabic, _tone("loud", 0, 0), SR)
    corpus = load_ravdess(tmp_path)
    assert corpus.table["path"].tolist() == ["Actor_01/03-01-01-01-01-01-01.wav"]
    assert [s["path"] for s in corpus.skipped] == [f"Actor_01/{arabic}"]
    assert "does not match" in corpus.skipped[0]["reason"]


def test_item7_padded_silent_and_mismatched_files_are_counted_and_listed(tmp_path):
    def aiff(path):
        sf.write(path, _tone("calm", 3, 1), SR, format="AIFF", subtype="PCM_16")

    csv = make_corpus(tmp_path, special={"s1_loud_1.wav": np.zeros(int(DUR * SR), np.float32),
                                         "s3_calm_1.wav": aiff})
    corpus = load_custom(csv)
    assert "format_mismatch" in corpus.report() and "audio/s3_calm_1.wav" in corpus.report()
    exp = _exp(csv, win_s=1.0, train_step_s=0.5, test_step_s=0.5, train=dict(epochs=1, batch_size=8, progress=False))
    (record,) = run_experiment(exp, results_dir=tmp_path / "res")
    c = record["counts"]
    assert c["silent"] == 1 and c["format_mismatch"] == 1
    assert c["padded_short"] == len(corpus) - 1  # every 0.6-s clip but the skipped silent one fills a 1-s window
    assert {"path": "audio/s1_loud_1.wav", "reason": "audio is all zeros (silent='skip')", "stage": "decode"} \
        in record["skips"]
    flags = {(f["path"], f["flag"].split(":")[0]) for f in record["flags"]}
    assert ("audio/s3_calm_1.wav", "format_mismatch") in flags and ("audio/s0_calm_0.wav", "padded") in flags
    (kept,) = run_experiment(exp.replace(silent="keep"), results_dir=None)
    assert kept["counts"]["silent"] == 1 and all(s["path"] != "audio/s1_loud_1.wav" for s in kept["skips"])
    assert any(f["path"] == "audio/s1_loud_1.wav" and "all-zero" in f["flag"] for f in kept["flags"])


def test_item7_every_skip_in_a_record_names_the_file_and_reason(tmp_path):
    def empty(path):
        path.write_bytes(b"")

    csv = make_corpus(tmp_path, special={"s0_calm_1.wav": empty})
    with pytest.warns(UserWarning, match="1 file"):
        (record,) = run_experiment(_exp(csv, train=dict(epochs=1, batch_size=8, progress=False)), results_dir=None,
                                   corpus=load_custom(csv))
    assert record["counts"]["skipped_at_scan"] == 1
    assert record["skips"] == [{"path": "audio/s0_calm_1.wav", "reason": "file is empty (0 bytes)", "stage": "scan"}]


def test_item7_stale_tmp_files_are_cleaned(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    old, young = folder / "abc.npz.tmp-1-dead", folder / "abd.npz.tmp-2-beef"
    for p in (old, young):
        p.write_bytes(b"PK half")
    t = time.time() - 86400  # a day old
    os.utime(old, (t, t))
    feature_cache.cached_arrays({"k": 1}, lambda: {"x": np.arange(3)}, root=folder)
    assert not old.exists() and young.exists()  # a young one may be another process's write in progress


def test_item7_study_with_a_missing_data_root_is_a_one_line_error(tmp_path, capsys):
    from serlib.cli import main

    code = main(["study", "--data-root", str(tmp_path / "typo"), "--out", str(tmp_path / "nb")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "typo" in err and "does not exist" in err
    assert not (tmp_path / "nb").exists()  # nothing ran on the synthetic corpus


def test_item7_cli_errors_are_one_line_unless_traceback(tmp_path, capsys, monkeypatch):
    from serlib.cli import main

    missing = tmp_path / "nope.csv"
    assert main(["manifest", "custom", str(missing), str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(missing) in err and "Traceback" not in err
    with pytest.raises(DataError):
        main(["manifest", "custom", str(missing), str(tmp_path / "out.csv"), "--traceback"])
    monkeypatch.setenv("SERLIB_DEBUG", "1")
    with pytest.raises(DataError):
        main(["manifest", "custom", str(missing), str(tmp_path / "out.csv")])
    monkeypatch.delenv("SERLIB_DEBUG")
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps({"name": "x", "learning_rate": 1}))
    assert main(["experiment", "--config", str(cfg)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_item7_record_paths_unchanged_by_the_new_policy_fields(tmp_path):
    """The new Experiment fields (nonfinite, silent) at their defaults leave committed records' paths alone."""
    from serlib.experiment import record_path_of

    csv = make_corpus(tmp_path)
    exp = _exp(csv)
    corpus = load_custom(csv)
    split = make_splits(exp.protocol, corpus)[0]
    path = experiment_record_path(exp, corpus, split, 0, tmp_path)
    old_style = {k: v for k, v in exp.to_dict().items() if k not in ("nonfinite", "silent")}
    record = {"kind": exp.name, "corpus": {"name": corpus.name}, "config": old_style, "seed": 0,
              "split": {"protocol": exp.protocol, "fold": split.fold}}
    assert record_path_of(record, tmp_path) == path
    assert experiment_record_path(exp.replace(silent="keep"), corpus, split, 0, tmp_path) != path



def test_item6_esc50_meta_cannot_name_files_outside_audio(tmp_path):
    from serlib.data.esc50 import load_esc50

    (tmp_path / "meta").mkdir()
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "1-100-A-0.wav", _tone("calm", 0, 0), SR)
    sf.write(tmp_path / "secret.wav", _tone("loud", 0, 0), SR)
    (tmp_path / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n1-100-A-0.wav,1,0,dog,True,100,A\n"
        "../secret.wav,1,0,dog,True,101,A\n")
    corpus = load_esc50(tmp_path)
    assert corpus.table["path"].tolist() == ["audio/1-100-A-0.wav"]
    assert any(s["path"] == "audio/../secret.wav" and "not a file name" in s["reason"] for s in corpus.skipped)


def test_item5_default_mode_replaces_another_runs_checkpoint_with_a_warning(tmp_path):
    """Study runners (notebooks) use the default ``resume="matching"``: a checkpoint another configuration left in
    the same folder is never resumed from, and never stops the run."""
    csv = make_corpus(tmp_path)
    corpus = load_custom(csv)
    exp = _exp(csv, train=dict(epochs=1, batch_size=8, lr=1e-3, progress=False))
    split = make_splits(exp.protocol, corpus)[0]
    run_one(exp, corpus, split, 0, results_dir=None, checkpoint_root=tmp_path / "ck")
    other = exp.replace(train=dict(epochs=1, batch_size=8, lr=1e-2, progress=False))
    with pytest.warns(UserWarning, match=r"not resumed, another run made it \(.*train.lr: 0.001 -> 0.01"):
        record = run_one(other, corpus, split, 0, results_dir=None, checkpoint_root=tmp_path / "ck")
    assert record["extra"]["resumed"] is False
    fresh = run_one(other, corpus, split, 0, results_dir=None)
    assert record["history"][0]["train_loss"] == pytest.approx(fresh["history"][0]["train_loss"])
    again = run_one(other, corpus, split, 0, results_dir=None, checkpoint_root=tmp_path / "ck")
    assert again["extra"]["resumed"] is True  # its own checkpoint now: resumed (finished, so nothing retrained)
    assert again["metrics"]["ua"] == pytest.approx(record["metrics"]["ua"])


def test_item2_summaries_never_count_a_failed_run():
    from serlib.evaluate import summarize_runs

    ok = {"status": "ok", "metrics": {"ua": 0.5}, "corpus": {"name": "c"}, "split": {}}
    failed = {"status": "failed", "reason": "non-finite training loss", "metrics": {"ua": 0.125},
              "corpus": {"name": "c"}, "split": {}}
    assert summarize_runs([ok, failed])["n"].tolist() == [1]
    frame = __import__("pandas").DataFrame([{"status": "ok", "ua": 0.5}, {"status": "failed", "ua": 0.125}])
    assert summarize_runs(frame)["mean"].tolist() == [0.5]
