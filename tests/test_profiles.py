"""Study profiles (quick / cpu / full) and the ``reproduce`` command that runs each paper's recorded study."""

import json

import pytest

from serlib import cli
from serlib.studies import common, eca, faca, head_fusion, moma

STUDIES = {"head_fusion": head_fusion, "faca": faca, "moma": moma, "eca": eca}


def test_apply_profile_cpu_suffixes_name_and_merges_overrides():
    base = faca.paper_experiment("bmhsa", "synthetic", profile="full")
    cpu = common.apply_profile(base, "cpu", train={}, model={},
                               cpu={"train": {"epochs": 3, "cpu_amp": True}, "model": {"lstm_hidden": 8},
                                    "seeds": (5,), "folds": (1,)})
    assert cpu.name == base.name + "_cpu"
    assert cpu.train["epochs"] == 3 and cpu.train["cpu_amp"] is True and cpu.train["lr"] == base.train["lr"]
    assert cpu.model_kwargs == {**base.model_kwargs, "lstm_hidden": 8}
    assert cpu.seeds == (5,) and cpu.folds == (1,)
    # no cpu settings: the full configuration runs on a CPU as it is
    assert common.apply_profile(base, "cpu", train={}, model={}) == base
    with pytest.raises(ValueError, match="profile"):
        common.apply_profile(base, "gpu", train={}, model={})


@pytest.mark.parametrize("name", list(STUDIES))
def test_cpu_profile_is_named_and_never_the_full_configuration(name):
    module = STUDIES[name]
    full = module.reproduction_experiments("ravdess", profile="full")
    cpu = module.reproduction_experiments("ravdess", profile="cpu")
    assert len(full) == len(cpu) > 0
    if name == "head_fusion":  # the paper's configuration is affordable on a CPU: cpu == full
        assert [e.to_dict() for e in cpu] == [e.to_dict() for e in full]
        return
    for f, c in zip(full, cpu):
        assert c.name != f.name and "_cpu" in c.name
        assert c.train["cpu_amp"] is True and "cpu_amp" not in f.train
        assert c.train["epochs"] < f.train["epochs"]
        assert c.protocol == f.protocol and c.features == f.features
    assert {e.name for e in cpu}.isdisjoint({e.name for e in full})


def test_cpu_profiles_state_what_they_change():
    assert faca.reproduction_experiments("ravdess", profile="cpu")[0].model_kwargs == \
        faca.reproduction_experiments("ravdess", profile="full")[0].model_kwargs  # the paper's CLDNN
    m = moma.reproduction_experiments("ravdess", profile="cpu")
    assert [e.protocol for e in m] == ["speaker_independent"]  # RAVDESS has no IEMOCAP sessions
    assert m[0].model_kwargs["lstm_hidden"] == 128
    assert [e.protocol for e in moma.reproduction_experiments("iemocap", profile="cpu")] == \
        ["session5_test", "speaker_independent"]
    abl = eca.reproduction_experiments("ravdess", profile="cpu", protocols=("paper",))
    assert [e.name.rsplit("__abl-", 1)[1] for e in abl] == [s for s, _ in eca.ALL_STEPS]
    assert all(e.model_kwargs["scale"] == 1 and e.fixed_s == 6.0 and e.seeds == eca.PAPER_SEEDS
               and e.folds == (0,) for e in abl)
    aug = {e.name.rsplit("__abl-", 1)[1]: e for e in abl}
    assert aug["stft_aug"].features == "eca_v8" and aug["stft_aug"].augment_features == ("eca_v7",)
    assert aug["cnn"].augment_features == ()
    # the control: the plain CNN with as many optimiser steps as the 2-version augmented run
    ctl = aug["cnn_matched_steps"]
    assert ctl.train["epochs"] == 2 * aug["cnn"].train["epochs"] and ctl.augment_features == ()
    assert ctl.model_kwargs == aug["cnn"].model_kwargs and ctl.features == aug["cnn"].features


def test_reproduce_command_runs_records_and_resumes(tmp_path, monkeypatch, one_thread, capsys):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))
    argv = ["reproduce", "moma", "--corpus", "synthetic", "--profile", "quick", "--folds", "0",
            "--results", str(tmp_path / "results")]
    assert cli.main(argv) == 0
    paths = sorted(p for p in (tmp_path / "results").rglob("*.json") if p.parent.name != "splits")
    assert len(paths) == 1 and paths[0].parts[-4] == "moma_speaker_independent"
    rec = json.loads(paths[0].read_text())
    assert rec["status"] == "ok" and rec["split"]["protocol"] == "speaker_independent"
    assert "MOMA" in capsys.readouterr().out
    mtime = paths[0].stat().st_mtime_ns
    assert cli.main(argv) == 0  # finished runs are skipped, not rerun
    assert paths[0].stat().st_mtime_ns == mtime


def test_figure_records_script_writes_each_figure(tmp_path, monkeypatch, one_thread):
    """scripts/figure_records.py on the synthetic corpus, quick profile: one JSON per study with its numbers."""
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))
    path = Path(__file__).resolve().parents[1] / "scripts" / "figure_records.py"
    spec = importlib.util.spec_from_file_location("figure_records", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--corpus", "synthetic", "--profile", "quick", "--out", str(tmp_path / "res" / "figures"),
                     "--recorded", str(tmp_path / "none")]) == 0
    peaks = common.load_figure_record(tmp_path / "res", "faca_peak_alignment", "synthetic")
    assert {r["model"] for r in peaks["table"]} == {"BMHSA", "MHSA-FA", "MHSA-FACA"}
    assert all(0 <= r["peak hit rate (%)"] <= 100 for r in peaks["table"])
    assert len(peaks["runs"]) == 3 and all(r["recorded_test_ua"] is None for r in peaks["runs"])
    smooth = common.load_figure_record(tmp_path / "res", "moma_smoothing", "synthetic")
    assert smooth["paired_test_norm_entropy_l2_minus_l1"] is not None and len(smooth["gammas"]) == 3
    ecaw = common.load_figure_record(tmp_path / "res", "eca_channel_weights", "synthetic")
    assert [r["layer"] for r in ecaw["effects"]] == [5, 6]
    assert len(ecaw["mean_weights_by_emotion"]["6"]) == len(ecaw["labels"])
    assert len(peaks["git"]) >= 40 and peaks["profile"] == "quick"
    assert peaks["_path"].endswith("figures/faca_peak_alignment_synthetic.json")
    runs = common.figure_record_runs(peaks)
    assert list(runs["kind"].str.split("_").str[2]) == ["bmhsa", "fa", "faca"] and runs["recorded_test_ua"].isna().all()
    assert common.load_figure_record(tmp_path / "res", "faca_peak_alignment", "ravdess") is None  # not made


@pytest.mark.slow
def test_study_command_runs_a_notebook_on_the_synthetic_corpus_and_records_it(tmp_path, monkeypatch, capsys):
    """The main job without data: a loud synthetic banner, the executed notebook, and study.json with its time."""
    empty = tmp_path / "no_data"
    empty.mkdir()
    monkeypatch.setenv("SERLIB_DATA", str(empty))
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "nb"
    assert cli.main(["study", "--only", "03", "--out", str(out), "--results", str(tmp_path / "res")]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    summary = json.loads((out / "study.json").read_text())
    assert summary["corpus"] == "synthetic" and summary["failed"] == []
    assert list(summary["seconds"]) == ["03_moma.ipynb"] and summary["seconds"]["03_moma.ipynb"] > 0
    assert (out / "03_moma.ipynb").is_file() and len(summary["git"]) >= 40
    assert any((tmp_path / "res").rglob("*.json"))  # the notebook wrote its run records
