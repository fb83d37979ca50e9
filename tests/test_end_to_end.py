"""The whole path on the synthetic corpus: corpus -> split -> cached features -> trainer -> metrics -> record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serlib.data.splits import assert_speaker_disjoint, make_splits
from serlib.experiment import Experiment, build_views, load_experiment_corpus, run_experiment


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return load_experiment_corpus("synthetic", root=tmp_path_factory.mktemp("synthetic"))


def _exp(**kw) -> Experiment:
    base = dict(name="reference_e2e", corpus="synthetic", protocol="speaker_independent", folds=(0,),
                features="head_fusion_mfcc", view="segments", model="reference",
                train=dict(epochs=15, batch_size=32, lr=2e-3, progress=False))
    return Experiment(**{**base, **kw})


@pytest.mark.slow
def test_reference_model_learns_speaker_independent(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))
    exp = _exp()
    (record,) = run_experiment(exp, results_dir=tmp_path / "results", corpus=synthetic)
    m = record["metrics"]
    chance = 1 / len(synthetic.labels)
    # well above chance on unseen speakers (measured ~0.7-0.8 here; chance 0.25)
    assert m["ua"] > chance + 0.25, m
    assert record["selection"] == "val"
    split = make_splits("speaker_independent", synthetic, seed=0)[0]
    assert record["split"]["test"] == split.test
    assert_speaker_disjoint(split, synthetic)
    # the record holds what makes the number traceable
    on_disk = json.loads(Path(record["_path"]).read_text())
    for key in ("config", "seed", "git", "corpus", "split", "metrics", "counts", "timings", "environment"):
        assert key in on_disk, key
    assert on_disk["corpus"]["fingerprint"] == synthetic.fingerprint()
    assert on_disk["corpus"]["synthetic"] is True
    assert set(on_disk["metrics"]["per_class_recall"]) == set(synthetic.labels)
    assert sum(map(sum, on_disk["metrics"]["confusion"])) == len(split.test)
    assert on_disk["counts"]["utterances"]["test"] == len(split.test)
    # rerunning with skip_existing reads the record instead of training again
    (again,) = run_experiment(exp, results_dir=tmp_path / "results", corpus=synthetic, skip_existing=True)
    assert again["metrics"]["ua"] == pytest.approx(m["ua"])
    assert again["created"] == on_disk["created"]


def test_too_short_clips_are_counted(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))
    # 5-s windows: every synthetic clip (2.2-4.5 s) is too short; with short="drop" nothing is left to train on
    exp = _exp(win_s=5.0, short="drop", train=dict(epochs=1, progress=False))
    with pytest.raises(ValueError, match="empty train or test"):
        run_experiment(exp, results_dir=None, corpus=synthetic)
    exp = _exp(win_s=4.0, short="drop", train=dict(epochs=1, progress=False))
    (record,) = run_experiment(exp, results_dir=None, corpus=synthetic)
    short = synthetic.table["duration"].to_numpy() < 4.0
    tr, va, te = make_splits(exp.protocol, synthetic, seed=exp.split_seed)[0].indices(synthetic)
    # speaker-independent: short training clips are dropped, short val / test ones padded (short_policy "auto")
    assert record["counts"]["too_short"] == int(short[tr].sum()) > 0
    assert record["counts"]["short_policy"]["padded"] == {"train": 0, "val": int(short[va].sum()),
                                                          "test": int(short[te].sum())}
    split = make_splits(exp.protocol, synthetic, seed=exp.split_seed)[0]
    paper = build_views(exp.replace(short_policy="paper"), synthetic, split)  # short="drop" for every part
    assert paper.counts["too_short"] == int(short.sum())


def test_sequence_and_fixed_views_run(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))
    for view, feats in (("sequence", "moma_fbank23"), ("fixed", "eca_v3")):
        exp = _exp(view=view, features=feats, fixed_s=3.0, train=dict(epochs=1, progress=False))
        (record,) = run_experiment(exp, results_dir=None, corpus=synthetic)
        assert record["counts"]["utterances"]["test"] == 48
        assert 0.0 <= record["metrics"]["ua"] <= 1.0


def test_cli_experiment_writes_records(synthetic, tmp_path, monkeypatch, capsys):
    from serlib.cli import main

    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps({"name": "cli_smoke", "corpus": "synthetic", "folds": [1],
                               "corpus_kwargs": {"root": str(synthetic.root)},
                               "train": {"epochs": 1, "progress": False}}))
    assert main(["experiment", "--config", str(cfg), "--results", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert "speaker_independent/fold1 seed 0: UA" in out
    assert list((tmp_path / "res").rglob("*.json"))
