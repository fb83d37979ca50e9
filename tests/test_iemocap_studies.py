"""Every study's paper protocol on IEMOCAP, end to end on a generated miniature release (the real one is licensed and
absent): the corpus each paper used (improvised only, its label mapping), its split, one quick-profile run per study
with its record. 5 sessions x 13 listed utterances (see mini_iemocap.UTTERANCES): the 4-class set with exc merged
keeps 10 per session (5 improvised), the Head Fusion set (exc -> happy, hap dropped) 8 (4 improvised)."""

from __future__ import annotations

import warnings

import pytest
from mini_iemocap import make_mini_iemocap

from serlib.studies import eca, faca, head_fusion, moma
from serlib.studies.common import run_study

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    # 2.5-s clips: Head Fusion drops utterances <= 2 s (the authors' code) and cuts 2-s segments
    return str(make_mini_iemocap(tmp_path_factory.mktemp("iemocap"), sessions=(1, 2, 3, 4, 5), missing_wavs=(),
                                 duration=2.5))


def _run(exp, tmp_path, monkeypatch):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the loader warns that 50 utterances are not the release's 5531
        recs = run_study([exp], results_dir=tmp_path / "results", n_jobs=1, progress=False)
    assert len(recs) == 1 and recs[0]["status"] == "ok", recs[0].get("error")
    rec = recs[0]
    assert sorted((tmp_path / "results").rglob("*.json"))  # the record is on disk
    n = rec["counts"]["utterances"]
    return rec, n["train"] + n["val"] + n["test"], n


@pytest.mark.parametrize(("study", "n_utts", "name"), [
    ("head_fusion", 20, "iemocap_head_fusion_improvised"),
    ("eca", 25, "iemocap_4class_exc_merged_improvised"),
])
def test_improvised_papers_use_improvised_iemocap(release, tmp_path, monkeypatch, study, n_utts, name):
    module = {"head_fusion": head_fusion, "eca": eca}[study]
    exp = module.paper_experiment("iemocap", release, profile="quick").replace(folds=(0,))
    rec, total, _ = _run(exp, tmp_path, monkeypatch)
    assert rec["corpus"]["name"] == name and total == n_utts == rec["corpus"]["n_utts"]
    assert rec["corpus"]["labels"] == ["neutral", "happy", "sad", "angry"]
    assert all("impro" in u for part in ("train", "val", "test") for u in rec["split"][part])
    assert rec["split"]["protocol"] == exp.protocol == ("random_80_20" if study == "head_fusion" else "random_kfold5")
    # other corpora are taken whole: no IEMOCAP-only keyword leaks into their experiments
    assert module.paper_experiment("ravdess").corpus_kwargs == {}


def test_faca_ten_fold_cv_on_iemocap(release, tmp_path, monkeypatch):
    exp = faca.paper_experiment("faca", "iemocap", release, profile="quick").replace(folds=(0,))
    rec, total, n = _run(exp, tmp_path, monkeypatch)
    assert rec["split"]["protocol"] == "kfold10_8_1_1" and rec["corpus"]["name"] == "iemocap_4class_exc_merged"
    assert total == 50 and (n["train"], n["val"], n["test"]) == (40, 5, 5)  # 8 / 1 / 1 folds of 5 utterances
    assert any("script" in u for u in rec["split"]["train"])  # the FACA paper uses scripted utterances too


def test_moma_session5_test_on_iemocap(release, tmp_path, monkeypatch):
    rec, total, n = _run(moma.paper_experiment("iemocap", release, profile="quick"), tmp_path, monkeypatch)
    assert rec["split"]["protocol"] == "session5_test" and total == 50
    assert n["test"] == 10 and all(u.startswith("Ses05") for u in rec["split"]["test"])
    assert not any(u.startswith("Ses05") for u in rec["split"]["train"])


def test_noise_study_on_improvised_iemocap(release, tmp_path, monkeypatch):
    """The noise study (issue 14) on the paper's IEMOCAP (improvised, Head Fusion's 4 classes), design a with synthetic
    noise: the corpus the paper used, and every category's noisy test condition recorded."""
    from serlib.noise import CATEGORIES
    from serlib.studies import noise

    exps = noise.experiments("iemocap", release, profile="quick", protocols=("paper",), designs=("a",),
                             source={"kind": "synthetic"})
    assert [e.arm for e in exps] == ["a"] and exps[0].corpus_kwargs == head_fusion.PAPER_CORPUS_KWARGS["iemocap"]
    rec, total, _ = _run(exps[0].replace(folds=(0,)), tmp_path, monkeypatch)
    assert rec["corpus"]["name"] == "iemocap_head_fusion_improvised" and total == 20
    assert all("impro" in u for part in ("train", "val", "test") for u in rec["split"][part])
    assert {k.split("|")[0] for k in rec["metrics"]["conditions"]} >= set(CATEGORIES)
