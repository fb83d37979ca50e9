"""Your own corpus end to end from the command line (issue 17): a manifest CSV with uneven speakers and a label map
runs `serlib reproduce head_fusion --manifest CSV` serially and with two worker processes; its record reruns from its
config to the same metrics; speaker folds are balanced by utterance counts; a 2-speaker corpus gets a clear message
and the leave-one-speaker-out holdout protocol; the committed RAVDESS / synthetic folds are unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serlib import cli
from serlib.data.corpus import Corpus, DataError
from serlib.data.custom import parse_label_map, relabel, write_custom_manifest
from serlib.data.speaker_folds import MIN_EVAL_UTTS, fold_report
from serlib.data.splits import (
    TooFewSpeakersError,
    assert_partition,
    assert_speaker_disjoint,
    loso_speaker_holdout,
    make_splits,
    speaker_independent,
)
from serlib.experiment import load_experiment_corpus
from serlib.records import split_ref

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 16_000
LABELS = ("neutral", "calm", "happy", "excited", "sad", "angry")
FOUR = "calm=neutral,excited=happy"  # 6 classes merged to 4
CLIPS = {"s1": 15, "s2": 3, "s3": 11, "s4": 5, "s5": 13, "s6": 7, "s7": 9}  # uneven: 3 to 15 clips
TREE = Path(__file__).resolve().parent
SPLIT_REFS = TREE / "data" / "speaker_independent_split_refs.json"


def _tone(label: str, rng: np.random.Generator, seconds: float = 2.2) -> np.ndarray:
    """A clip a little over one 2-s window whose pitch depends on the (merged) class: learnable, and tiny."""
    f0 = {"neutral": 150, "calm": 160, "happy": 300, "excited": 320, "sad": 110, "angry": 450}[label]
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * f0 * rng.uniform(0.95, 1.05) * t) + 0.02 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def _corpus_on_disk(folder: Path, clips: dict[str, int], name: str = "mine.csv") -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for k, (spk, n) in enumerate(clips.items()):
        for j in range(n):
            label = LABELS[(j + k) % len(LABELS)]
            rel = f"audio/{spk}/{spk}_{j:02d}.wav"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(folder / rel, _tone(label, rng), SR)
            rows.append({"path": rel, "label": label, "speaker": spk, "gender": "F" if k % 2 else "M"})
    return write_custom_manifest(rows, folder / name)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("own")
    _corpus_on_disk(folder, CLIPS)
    _corpus_on_disk(folder, {"anna": 8, "ben": 8}, name="two.csv")
    return folder


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SERLIB_THREADS", raising=False)
    monkeypatch.delenv("SERLIB_CUSTOM_CORPUS", raising=False)
    return tmp_path


def _records(results: Path) -> list[dict]:
    out = []
    for p in sorted(results.rglob("*.json")):
        if p.parent.name != "splits":
            out.append({**json.loads(p.read_text()), "_path": str(p)})
    return out


def _fake(speakers: dict[str, int], genders: dict[str, str] | None = None) -> Corpus:
    rows = [{"path": f"{s}/{j}.wav", "utt_id": f"{s}_{j}", "label": LABELS[j % 4], "speaker": s,
             "gender": (genders or {}).get(s, "F" if i % 2 else "M"), "session": ""}
            for i, (s, n) in enumerate(speakers.items()) for j in range(n)]
    t = pd.DataFrame(rows)
    t["duration"], t["sample_rate"], t["channels"] = 3.0, SR, 1
    return Corpus("fake", "/nonexistent", t, LABELS[:4])


# ------------------------------------------------------------------------------------------------ end to end
def test_reproduce_on_a_manifest_serial_and_parallel_and_rerun_from_record(corpus_dir, env, capsys, monkeypatch):
    monkeypatch.setenv("SERLIB_THREADS", "1")  # the serial run with the workers' one thread: equal floats
    csv = corpus_dir / "mine.csv"
    base = ["reproduce", "head_fusion", "--manifest", str(csv), "--name", "my_corpus", "--labels", FOUR,
            "--profile", "quick", "--folds", "0", "--checkpoints", str(env / "ckpt")]
    assert cli.main(base + ["--results", str(env / "serial")]) == 0
    out = capsys.readouterr().out
    assert "my_corpus (63 utterances, 7 speakers, 4 classes: angry, happy, neutral, sad)" in out
    from serlib.sweep import choose_threads

    assert "protocol speaker_independent (speaker_balanced)" in out
    assert f"torch threads: {choose_threads(1)[0]} here" in out  # the choice is printed (and recorded)
    recs = _records(env / "serial")
    assert {r["split"]["protocol"] for r in recs} == {"random_80_20", "speaker_independent"}
    manifest_sha = __import__("hashlib").sha256(csv.read_bytes()).hexdigest()
    for r in recs:
        assert r["status"] == "ok" and r["corpus"]["name"] == "my_corpus"
        assert r["corpus"]["labels"] == ["angry", "happy", "neutral", "sad"]
        assert r["corpus"]["label_map"] == {"calm": "neutral", "excited": "happy"}
        assert r["corpus"]["manifest_hash"] == manifest_sha == r["corpus"]["manifest"]["sha256"]
        assert r["corpus"]["manifest"]["root"] in ("SERLIB_DATA", "repo", "cwd", None)
        assert r["config"]["corpus"] == "custom" and r["config"]["data_root"] == str(csv.resolve())
        assert r["config"]["corpus_kwargs"] == {"name": "my_corpus", "label_map": {"calm": "neutral",
                                                                                   "excited": "happy"}}
        assert r["extra"]["threads"]["torch_threads"] == choose_threads(1)[0]
        assert r["extra"]["threads"]["set_by"] == "serlib.sweep.configure_threads"
        assert r["_path"].split("/")[-3] == "my_corpus"  # the name given, also in the record path

    # the parallel runner: two spawn workers get the custom corpus through the Experiment
    assert cli.main(base + ["--results", str(env / "parallel"), "--n-jobs", "2", "--no-resume"]) == 0
    par = {(r["split"]["protocol"]): r for r in _records(env / "parallel")}
    assert set(par) == {"random_80_20", "speaker_independent"}
    for r in recs:
        p = par[r["split"]["protocol"]]
        assert p["corpus"]["name"] == "my_corpus" and p["corpus"]["manifest_hash"] == manifest_sha
        assert p["extra"]["threads"]["n_jobs"] == 2 and p["extra"]["threads"]["rule"] == "given"
        assert p["metrics"] == r["metrics"]  # the same run wherever it ran
        assert [h["train_loss"] for h in p["history"]] == [h["train_loss"] for h in r["history"]]

    # a record reruns from its own config (fresh training, no checkpoint) to the same metrics
    si = next(r for r in recs if r["split"]["protocol"] == "speaker_independent")
    argv = ["experiment", "--from-record", si["_path"], "--results", str(env / "rerun"), "--no-resume",
            "--checkpoints", str(env / "ckpt2")]
    assert cli.main(argv) == 0
    (again,) = _records(env / "rerun")
    assert Path(again["_path"]).name == Path(si["_path"]).name  # the same run config (record path hash) ...
    assert again["split"]["ref"] == si["split"]["ref"]  # ... on the same fold
    assert again["extra"]["resumed"] is False
    assert [h["train_loss"] for h in again["history"]] == [h["train_loss"] for h in si["history"]]
    assert again["metrics"] == si["metrics"]


def test_manifest_errors_are_clear(corpus_dir, env, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's error: before any data is read
        cli.main(["reproduce", "head_fusion", "--manifest", str(corpus_dir), "--profile", "quick"])
    assert exc.value.code == 2 and "is a folder; pass the CSV file" in capsys.readouterr().err
    assert cli.main(["experiment", "--manifest", str(corpus_dir / "nope.csv")]) == 2
    assert "nope.csv: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "head_fusion", "--name", "x", "--profile", "quick"])
    assert "use it with --manifest" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"\['joy'\] that corpus"):
        load_experiment_corpus("custom", corpus_dir / "mine.csv", label_map={"joy": "happy"})


def test_corpus_custom_data_root_is_the_same_as_manifest(corpus_dir, env):
    a = load_experiment_corpus("custom", corpus_dir / "mine.csv", name="x", label_map=parse_label_map(FOUR))
    args = cli.argparse.Namespace(corpus="custom", data_root=str(corpus_dir / "mine.csv"), manifest=None, name="x",
                                  labels='{"calm": "neutral", "excited": "happy"}')
    from serlib.cli_corpus import corpus_from_args

    corpus, root, kw = corpus_from_args(args)
    b = load_experiment_corpus(corpus, root, **kw)
    assert a.fingerprint() == b.fingerprint() and a.labels == b.labels == ("angry", "happy", "neutral", "sad")


# ------------------------------------------------------------------------------------------------ 2 speakers
def test_two_speakers_get_the_message_and_the_holdout_protocol(corpus_dir, env, capsys):
    csv = corpus_dir / "two.csv"
    base = ["reproduce", "head_fusion", "--manifest", str(csv), "--profile", "quick", "--protocols",
            "speaker_independent", "--folds", "0", "--results", str(env / "r"), "--no-resume"]
    assert cli.main(base) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "need >= 3 speakers" in err and "loso_speaker_holdout" in err
    assert "NOT speaker-independent" in err and "--experiment.protocol loso_speaker_holdout" in err
    assert cli.main(base + ["--experiment.protocol", "loso_speaker_holdout"]) == 0
    out = capsys.readouterr().out
    assert "model selection: held-out utterances of the training speaker" in out
    (rec,) = _records(env / "r")
    assert rec["status"] == "ok" and rec["split"]["protocol"] == "loso_speaker_holdout"
    assert rec["corpus"]["name"] == "two"  # default name: the CSV's stem
    assert rec["split"]["meta"]["speaker_independent"] is False
    assert rec["split"]["meta"]["test_speaker_unseen"] is True
    assert "NOT speaker-independent" in rec["split"]["meta"]["selection"]


def test_holdout_protocol_splits():
    c = _fake({"anna": 20, "ben": 30})
    with pytest.raises(TooFewSpeakersError, match="loso_speaker_holdout"):
        speaker_independent(c)
    splits = loso_speaker_holdout(c, val_frac=0.2, seed=0)
    assert [s.meta["test_speakers"] for s in splits] == [["anna"], ["ben"]]
    for s, (n_test, n_rest) in zip(splits, [(20, 30), (30, 20)]):
        assert_partition(s, c)
        assert len(s.test) == n_test and len(s.val) == round(0.2 * n_rest)
        tr, va, te = (set(c.table.set_index("utt_id").loc[ids, "speaker"]) for ids in (s.train, s.val, s.test))
        assert te.isdisjoint(tr | va) and va <= tr  # unseen test speaker; selection on the training speaker


# ------------------------------------------------------------------------------------------------ balanced folds
def test_uneven_speakers_give_balanced_folds():
    """29 speakers with 2 to 80 clips (the corpus of the issue): folds within one largest speaker of each other,
    far tighter than the round-robin deal; every speaker tested once; genders spread."""
    rng = np.random.default_rng(1)
    sizes = {f"spk{i:02d}": int(rng.integers(2, 81)) for i in range(29)}
    c = _fake(sizes)
    packed = speaker_independent(c, seed=0)
    dealt = speaker_independent(c, seed=0, balance="round_robin")
    size = lambda ss: [len(s.test) for s in ss]  # noqa: E731
    tolerance = max(sizes.values()) + 0.05 * len(c) / len(packed)  # largest speaker + the 5 % bucket
    assert max(size(packed)) - min(size(packed)) <= tolerance
    assert np.std(size(packed)) < np.std(size(dealt)) / 3
    assert packed[0].meta["mode"] == "speaker_balanced" and packed[0].meta["fold_sizes"] == size(packed)
    assert sorted(sp for s in packed for sp in s.meta["test_speakers"]) == sorted(sizes)
    for s in packed:
        assert_speaker_disjoint(s, c) and assert_partition(s, c)
        assert min(s.meta["test_genders"].values()) >= 1
    assert [s.test for s in packed] == [s.test for s in speaker_independent(c, seed=0)]  # deterministic
    assert [s.test for s in packed] != [s.test for s in speaker_independent(c, seed=1)]  # the seed breaks ties


def test_balanced_folds_of_the_test_corpus_and_small_part_warnings():
    c = _fake(CLIPS)
    splits = speaker_independent(c, seed=0)
    sizes = [len(s.test) for s in splits]
    assert len(splits) == 3 and sum(sizes) == 63
    assert max(sizes) - min(sizes) <= max(CLIPS.values())
    table, warns = fold_report(splits, c)
    assert table["test"].tolist() == sizes
    assert any(f"(< {MIN_EVAL_UTTS})" in w and "test part" in w for w in warns)  # ~21 utterances per fold
    big = _fake({f"s{i}": 40 for i in range(8)})
    assert fold_report(speaker_independent(big), big)[1] == []


def test_committed_speaker_independent_folds_are_unchanged():
    """The synthetic corpus's folds come out of the code with the hashes they had before balancing existed, and the
    committed RAVDESS split files are the ones listed (see the next test for the code that makes them)."""
    refs = json.loads(SPLIT_REFS.read_text())
    synth = load_experiment_corpus("synthetic")
    assert [split_ref(s.to_dict()) for s in make_splits("speaker_independent", synth)] == refs["synthetic"]
    committed = sorted(p.stem for p in (TREE.parent / "results" / "splits").glob("*.json")
                       if json.loads(p.read_text())["protocol"] == "speaker_independent")
    assert sorted(refs["ravdess"]) == committed


def test_ravdess_folds_are_the_committed_ones(data_root):
    """RAVDESS (60 clips per actor) keeps the round-robin 6 x (2 F + 2 M) deal: the same split hashes as the
    committed records reference."""
    refs = json.loads(SPLIT_REFS.read_text())
    rav = load_experiment_corpus("ravdess", data_root)
    splits = make_splits("speaker_independent", rav)
    assert [split_ref(s.to_dict()) for s in splits] == refs["ravdess"]
    assert {s.meta["mode"] for s in splits} == {"speaker"} and "fold_sizes" not in splits[0].meta


def test_label_map_parsing_and_drop():
    assert parse_label_map("calm=neutral, excited=happy") == {"calm": "neutral", "excited": "happy"}
    assert parse_label_map('{"calm": "neutral", "sad": null}') == {"calm": "neutral", "sad": ""}
    with pytest.raises(ValueError, match="FROM=TO"):
        parse_label_map("calm")
    c = relabel(_fake({"a": 8, "b": 8, "c": 8}), {"calm": "neutral", "happy": "drop"})
    assert c.labels == ("excited", "neutral") and len(c) == 18
    assert sum("dropped by the label map" in s["reason"] for s in c.skipped) == 6


def test_study_command_passes_the_manifest_to_the_notebooks(corpus_dir, env, monkeypatch):
    """`serlib study --manifest`: papermill gets corpus="custom" and data_root=CSV; the name and label map reach
    every custom Experiment made in the kernels through $SERLIB_CUSTOM_CORPUS (so their records store them)."""
    import papermill

    from serlib.experiment import CUSTOM_CORPUS_ENV, Experiment

    monkeypatch.setenv(CUSTOM_CORPUS_ENV, "")  # restored after the test (cmd_study sets it)
    seen = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda nb, out, parameters, **kw: seen.append(parameters))
    csv = corpus_dir / "mine.csv"
    argv = ["study", "--manifest", str(csv), "--name", "mine4", "--labels", FOUR, "--only", "01",
            "--out", str(env / "nb"), "--results", str(env / "res")]
    assert cli.main(argv) == 0
    assert seen and seen[0]["corpus"] == "custom" and seen[0]["data_root"] == str(csv.resolve())
    exp = Experiment(corpus="custom", data_root=seen[0]["data_root"])  # what a notebook's study function makes
    assert exp.corpus_kwargs == {"name": "mine4", "label_map": {"calm": "neutral", "excited": "happy"}}
    assert load_experiment_corpus(exp.corpus, exp.data_root, **exp.corpus_kwargs).name == "mine4"
    assert json.loads((env / "nb" / "study.json").read_text())["corpus"] == "custom"


def test_experiment_command_on_a_manifest(corpus_dir, env, capsys):
    """`serlib experiment --corpus custom --data-root CSV` (the spelling without --manifest) runs and records."""
    argv = ["experiment", "--corpus", "custom", "--data-root", str(corpus_dir / "mine.csv"), "--labels", FOUR,
            "--results", str(env / "r"), "--checkpoints", str(env / "c"), "--set", 'train={"epochs": 1}',
            "folds=[1]", "model=head_fusion", 'model_kwargs={"n_head": 1, "n_size": 8}']
    assert cli.main(argv) == 0
    assert "protocol speaker_independent (speaker_balanced), folds run: 1" in capsys.readouterr().out
    (rec,) = _records(env / "r")
    assert rec["corpus"]["name"] == "mine" and rec["split"]["fold"] == 1 and len(rec["corpus"]["labels"]) == 4
