"""Issue 16, "every test utterance counts": the Head Fusion path (2-s segments, utterances <= 2 s dropped) keeps the
authors' policy only under the paper's protocol; under any other protocol every val / test utterance is evaluated
(short ones zero-padded, or tiled, to one window) and the record counts them.

The corpus is built in ``tmp_path`` through the bring-your-own manifest: 4 speakers x 2 labels x 4 tones, half of
them under 2 s (0.7 - 1.6 s), one exactly 2 s, the rest 2.5 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from serlib.data.custom import load_custom, write_custom_manifest
from serlib.data.splits import make_splits
from serlib.experiment import (
    Experiment,
    build_views,
    experiment_record_path,
    record_path_of,
    run_experiment,
    short_policy_of,
)
from serlib.studies import head_fusion as hf

pytestmark = pytest.mark.usefixtures("one_thread")
SR = 16_000
LABELS = ("calm", "loud")
SHORT_S = (0.7, 1.0, 1.3, 1.6)


def _duration(k: int, label: str, j: int) -> float:
    """Utterances j = 0, 1 are short (under 2 s), j = 2 is exactly 2 s (not longer than min_len_s, one full window),
    j = 3 is 2.5 s."""
    return {0: SHORT_S[k % 4], 1: SHORT_S[(k + 1 + (label == "loud")) % 4], 2: 2.0, 3: 2.5}[j]


@pytest.fixture(scope="module")
def corpus_csv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("short_corpus")
    (root / "audio").mkdir()
    rows = []
    for k in range(4):
        for label in LABELS:
            for j in range(4):
                n = int(round(_duration(k, label, j) * SR))
                f = (300.0 if label == "calm" else 1200.0) * (1 + 0.03 * k + 0.01 * j)
                y = (0.3 * np.sin(2 * np.pi * f * np.arange(n) / SR)).astype(np.float32)
                sf.write(root / "audio" / f"s{k}_{label}_{j}.wav", y, SR, subtype="FLOAT")
                rows.append({"path": f"audio/s{k}_{label}_{j}.wav", "label": label, "speaker": f"S{k}"})
    return write_custom_manifest(rows, root / "manifest.csv")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path_factory.getbasetemp() / "every_utt_cache"))


def _si(csv, **kw) -> Experiment:
    return hf.speaker_independent_experiment("custom", str(csv), profile="quick", folds=(0,),
                                             train={"epochs": 1, "batch_size": 8}, **kw)


def _paper(csv, **kw) -> Experiment:
    return hf.paper_experiment("custom", str(csv), profile="quick", selection="val", folds=(0,),
                               train={"epochs": 1, "batch_size": 8}, **kw)


def _parts(exp, corpus):
    split = make_splits(exp.protocol, corpus, seed=exp.split_seed, **exp.protocol_kwargs)[0]
    return split, dict(zip(("train", "val", "test"), split.indices(corpus)))


def _short_rows(corpus, idx, limit=2.0) -> set[int]:
    """Rows of ``idx`` whose audio (read here with soundfile) is under ``limit`` seconds."""
    return {int(i) for i in idx if sf.info(str(corpus.paths[i])).frames < limit * SR}


def test_the_corpus_is_what_the_issue_describes(corpus_csv):
    corpus = load_custom(corpus_csv)
    assert len(corpus) == 32 and len(_short_rows(corpus, range(32))) == 16


def test_speaker_independent_test_set_is_every_utterance_of_the_test_speakers(corpus_csv):
    corpus = load_custom(corpus_csv)
    exp = _si(corpus_csv)
    assert exp.min_len_s == 2.0 and exp.short_policy == "auto" and short_policy_of(exp)[0] == "pad"
    split, parts = _parts(exp, corpus)
    v = build_views(exp, corpus, split)
    for name, data in (("val", v.val), ("test", v.test)):
        idx = parts[name]
        assert len(idx) > 0 and _short_rows(corpus, idx)  # the fold has short utterances to keep
        assert set(data.groups.tolist()) == {int(i) for i in idx}, name  # every utterance of those speakers
        per_utt = np.bincount(data.groups.numpy(), minlength=len(corpus))
        for i in _short_rows(corpus, idx):
            assert per_utt[i] == 1, (name, i)  # a short one gives exactly one (padded) window
    # training keeps the authors' policy: nothing not longer than 2 s
    dur = {i: sf.info(str(corpus.paths[i])).frames / SR for i in range(len(corpus))}
    assert {int(i) for i in parts["train"] if dur[i] > 2.0} == set(v.train.groups.tolist())
    sp = v.counts["short_policy"]
    assert sp["policy"] == "pad" and "not the paper's protocol" in sp["why"]
    assert sp["padded"] == {p: len(_short_rows(corpus, parts[p])) if p != "train" else 0 for p in parts}
    assert sp["dropped"] == {"train": len([i for i in parts["train"] if dur[i] <= 2.0]), "val": 0, "test": 0}
    assert sp["kept_not_longer_than_min_len"] == {p: len([i for i in parts[p] if dur[i] <= 2.0])
                                                  for p in ("val", "test")}
    # the training-part skips say why, and name no val / test utterance
    train_paths = set(corpus.table["path"].astype(str).iloc[parts["train"]])
    length_skips = [s for s in v.skips if s["stage"] in ("policy", "segment")]
    assert length_skips and all(s["path"] in train_paths and "training part" in s["reason"] for s in length_skips)


def test_a_zero_padded_window_is_the_clip_then_silence(corpus_csv):
    """The padded test window's features equal those of the clip followed by zeros up to 2 s, computed here."""
    from serlib.data.audio import load_audio
    from serlib.features import PRESETS, compute

    corpus = load_custom(corpus_csv)
    exp = _si(corpus_csv, normalize=False)
    split, parts = _parts(exp, corpus)
    v = build_views(exp, corpus, split)
    i = min(_short_rows(corpus, parts["test"]))
    y = load_audio(corpus.paths[i], sr=SR)
    padded = np.zeros(2 * SR, np.float32)
    padded[: len(y)] = y
    want = compute(PRESETS[exp.features], padded[None]).numpy()[0]
    got = v.test.x[v.test.groups == i].numpy()
    assert got.shape == (1, *want.shape)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
    tiled = build_views(exp.replace(short_policy="tile"), corpus, split)
    assert set(tiled.test.groups.tolist()) == set(v.test.groups.tolist())
    assert tiled.counts["short_policy"]["policy"] == "tile"
    assert not np.allclose(tiled.test.x[tiled.test.groups == i].numpy(), got)  # repeated, not silence


def test_paper_protocol_keeps_the_authors_drop_and_says_so(corpus_csv):
    corpus = load_custom(corpus_csv)
    exp = _paper(corpus_csv)
    assert exp.protocol == "random_80_20" and short_policy_of(exp)[0] == "paper"
    split, parts = _parts(exp, corpus)
    v = build_views(exp, corpus, split)
    dur = {i: sf.info(str(corpus.paths[i])).frames / SR for i in range(len(corpus))}
    for name, data in (("train", v.train), ("val", v.val), ("test", v.test)):
        assert set(data.groups.tolist()) == {int(i) for i in parts[name] if dur[i] > 2.0}, name
    sp = v.counts["short_policy"]
    assert sp["policy"] == "paper" and "paper's protocol" in sp["why"] and "min_len_s=2 s" in sp["why"]
    assert sp["dropped"] == {p: len([i for i in parts[p] if dur[i] <= 2.0]) for p in parts}
    assert sp["dropped"]["test"] > 0 and sp["padded"] == {"train": 0, "val": 0, "test": 0}
    assert v.counts["dropped_min_len"] == sum(d <= 2.0 for d in dur.values())
    # the same split with short_policy="pad" evaluates every test utterance
    padded = build_views(exp.replace(short_policy="pad"), corpus, split)
    assert set(padded.test.groups.tolist()) == {int(i) for i in parts["test"]}


def test_the_record_says_how_many_were_padded(corpus_csv, tmp_path):
    corpus = load_custom(corpus_csv)
    si = _si(corpus_csv)
    (rec_si,) = run_experiment(si, results_dir=tmp_path, corpus=corpus)
    # (best_test selection: the 10 % validation part of 32 utterances may be all short, hence empty, under "paper")
    paper = hf.paper_experiment("custom", str(corpus_csv), profile="quick", selection="best_test",
                                train={"epochs": 1, "batch_size": 8})
    (rec_paper,) = run_experiment(paper, results_dir=tmp_path, corpus=corpus)
    on_disk = json.loads(Path(rec_si["_path"]).read_text())
    _, parts = _parts(si, corpus)
    sp = on_disk["counts"]["short_policy"]
    assert sp["policy"] == "pad" and sp["padded"]["test"] == len(_short_rows(corpus, parts["test"])) > 0
    assert sp["padded"]["val"] == len(_short_rows(corpus, parts["val"]))
    # the metrics are over every test utterance: the confusion matrix counts all of them
    assert int(np.sum(on_disk["metrics"]["confusion"])) == len(parts["test"])
    _, pparts = _parts(paper, corpus)
    psp = json.loads(Path(rec_paper["_path"]).read_text())["counts"]["short_policy"]
    n_long = len([i for i in pparts["test"] if sf.info(str(corpus.paths[i])).frames > 2 * SR])
    assert psp["policy"] == "paper" and psp["dropped"]["test"] == len(pparts["test"]) - n_long > 0
    assert int(np.sum(rec_paper["metrics"]["confusion"])) == n_long


def test_short_policy_leaves_record_paths_alone(corpus_csv, tmp_path):
    """The default ("auto") is path-neutral: a record written before the field existed keeps its path."""
    corpus = load_custom(corpus_csv)
    exp = _si(corpus_csv)
    split, _ = _parts(exp, corpus)
    path = experiment_record_path(exp, corpus, split, 0, tmp_path)
    old_style = {k: v for k, v in exp.to_dict().items() if k != "short_policy"}
    record = {"kind": exp.name, "corpus": {"name": corpus.name}, "config": old_style, "seed": 0,
              "split": {"protocol": exp.protocol, "fold": split.fold}}
    assert record_path_of(record, tmp_path) == path
    assert experiment_record_path(exp.replace(short_policy="tile"), corpus, split, 0, tmp_path) != path
    with pytest.raises(ValueError, match="short_policy"):
        exp.replace(short_policy="zeros")


def test_noisy_test_copies_keep_the_short_utterances(corpus_csv):
    """The noise study's view (noisy copies of the test part) evaluates the same utterances as the clean view."""
    from serlib.studies import noise as ns

    corpus = load_custom(corpus_csv)
    exps = ns.experiments("custom", str(corpus_csv), profile="quick", protocols=["speaker_independent"],
                          designs=["e"], source={"kind": "synthetic"})
    exp = exps[0].replace(folds=(0,))
    split, parts = _parts(exp, corpus)
    v = build_views(exp, corpus, split)
    assert set(v.test.groups.tolist()) == {int(i) for i in parts["test"]}
    assert v.counts["short_policy"]["padded"]["test"] == len(_short_rows(corpus, parts["test"])) > 0


@pytest.mark.realdata
@pytest.mark.slow
def test_ravdess_views_are_unchanged(ravdess_root, tmp_path, monkeypatch):
    """No RAVDESS utterance is under 2 s (shortest 2.94 s), so the speaker-independent Head Fusion view is the one
    the committed records were made with: same utterances and segment counts as the committed fold-0 record, and
    the same tensors as the paper's drop policy gives."""
    from serlib.experiment import load_experiment_corpus
    from serlib.studies.common import load_records

    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    repo = Path(__file__).resolve().parents[1]
    corpus = load_experiment_corpus("ravdess", str(ravdess_root.parent))
    exp = hf.speaker_independent_experiment("ravdess", str(ravdess_root.parent))
    split = make_splits(exp.protocol, corpus, seed=exp.split_seed)[0]
    v = build_views(exp, corpus, split)
    old = build_views(exp.replace(short_policy="paper"), corpus, split)
    for a, b in ((v.train, old.train), (v.val, old.val), (v.test, old.test)):
        assert torch.equal(a.groups, b.groups) and torch.equal(a.x, b.x)
    sp = v.counts["short_policy"]
    assert sp["policy"] == "pad" and sum(sp["padded"].values()) == 0 and sum(sp["dropped"].values()) == 0
    recs = [r for r in load_records(repo / "results") if r["kind"] == exp.name and r["split"]["fold"] == 0]
    assert recs, "no committed head_fusion_speaker_independent fold-0 record"
    for r in recs:
        assert r["counts"]["segments"] == v.counts["segments"]
        assert r["counts"]["utterances"] == v.counts["utterances"]
