"""The main job as a newcomer types it: `bash scripts/study.sh DATA_ROOT` with relative paths, from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from serlib import cli
from serlib.experiment import load_experiment_corpus, stratified_subset
from serlib.studies import eca, faca, head_fusion, moma
from serlib.studies.common import QUICK_CORPUS

REPO = Path(__file__).resolve().parents[1]
STUDY_SH = REPO / "scripts" / "study.sh"


def _study_sh(*args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "SERLIB_CACHE": os.environ.get("SERLIB_CACHE", str(REPO / "build" / "cache"))}
    env.pop("SERLIB_DATA", None)
    return subprocess.run(["bash", str(STUDY_SH), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_readme_command_with_a_relative_data_root_that_does_not_exist_is_one_clear_error():
    missing = f"../serlib-no-data-{uuid.uuid4().hex[:8]}"
    res = _study_sh(missing, cwd=REPO)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "does not exist" in ln]
    assert len(lines) == 1 and str((REPO.parent / missing[3:]).resolve()) in lines[0], res.stderr
    assert "SYNTHETIC" not in res.stdout  # no silent fallback to the synthetic corpus


def test_relative_paths_resolve_against_the_callers_directory(tmp_path):
    """Run from another directory with relative DATA_ROOT, --out and --results (no notebook selected: only the
    path handling and study.json run)."""
    (tmp_path / "data").mkdir()
    res = _study_sh("data", "--out", "nb", "--results=res", "--only", "no-such-notebook", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((tmp_path / "nb" / "study.json").read_text())
    assert summary["data_root"] == str(tmp_path / "data") and summary["corpus"] == "synthetic"
    assert summary["out"] == str(tmp_path / "nb") and summary["results"] == str(tmp_path / "res")
    assert summary["runs"] == [] and summary["torch_threads"] == 1 and len(summary["load_before"]) == 3
    assert "SYNTHETIC" in res.stdout


def test_explicit_missing_data_root_is_an_error_in_process(tmp_path, capsys):
    assert cli.main(["study", "--data-root", str(tmp_path / "nope"), "--out", str(tmp_path / "nb")]) == 1
    err = capsys.readouterr().err
    assert f"data root {tmp_path / 'nope'} does not exist" in err and not (tmp_path / "nb").exists()


def test_quick_subset_keeps_every_speaker_and_class():
    corpus = load_experiment_corpus("synthetic")
    sub = stratified_subset(corpus, 2)
    counts = sub.table.groupby(["speaker", "label"]).size()
    assert len(counts) == corpus.table.groupby(["speaker", "label"]).ngroups and set(counts) == {2}
    assert sub.labels == corpus.labels and sub.fingerprint() != corpus.fingerprint()
    again = load_experiment_corpus("synthetic", per_speaker_class=2)
    assert list(again.table["utt_id"]) == list(sub.table["utt_id"])  # fixed: the same utterances every time


@pytest.mark.parametrize("make", [
    lambda p: head_fusion.paper_experiment("ravdess", "/data", profile=p),
    lambda p: head_fusion.speaker_independent_experiment("ravdess", "/data", profile=p),
    lambda p: faca.variant_experiments(corpus="ravdess", data_root="/data", profile=p)[0],
    lambda p: moma.paper_experiment("ravdess", "/data", profile=p),
    lambda p: eca.paper_experiment("ravdess", "/data", profile=p),
])
def test_only_the_quick_profile_on_ravdess_takes_the_subset(make):
    assert make("quick").corpus_kwargs.items() >= QUICK_CORPUS["ravdess"].items()
    for profile in ("cpu", "full"):
        assert "per_speaker_class" not in make(profile).corpus_kwargs


@pytest.mark.parametrize("corpus", ["synthetic", "iemocap"])
def test_other_corpora_are_taken_whole_on_the_quick_profile(corpus):
    for exp in (head_fusion.paper_experiment(corpus, None, profile="quick"),
                eca.paper_experiment(corpus, None, profile="quick"), moma.paper_experiment(corpus, None, profile="quick")):
        assert "per_speaker_class" not in exp.corpus_kwargs


@pytest.mark.slow
@pytest.mark.realdata
def test_readme_command_with_the_relative_real_data_root_runs_notebook_00(tmp_path):
    if not (REPO.parent / "shared" / "data" / "ravdess").is_dir():
        pytest.skip("../shared/data/ravdess not beside the repo")
    res = _study_sh("../shared/data", "--only", "00", "--out", str(tmp_path / "nb"), "--results",
                    str(tmp_path / "res"), cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((tmp_path / "nb" / "study.json").read_text())
    assert summary["corpus"] == "ravdess" and [r["status"] for r in summary["runs"]] == ["ok"]
    executed = (tmp_path / "nb" / "00_data.ipynb").read_text()
    assert "ravdess: 1440 utterances" in executed and "ravdess (192 utterances), speaker_independent/fold0: UA" in executed


def test_study_kernels_use_encrypted_transport_where_zmq_can():
    """No "Kernel is running over TCP without encryption" warning from every notebook's kernel."""
    import zmq

    km = cli._kernel_manager_class()(kernel_name="python3")
    assert km.transport_encryption == ("auto" if zmq.has("curve") else "disabled")


def test_threads_are_recorded_and_the_environment_restored(tmp_path, monkeypatch):
    monkeypatch.delenv("SERLIB_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    (tmp_path / "data").mkdir()
    assert cli.main(["study", "--data-root", str(tmp_path / "data"), "--only", "no-such-notebook", "--threads", "2",
                     "--out", str(tmp_path / "nb"), "--results", str(tmp_path / "res")]) == 0
    assert json.loads((tmp_path / "nb" / "study.json").read_text())["torch_threads"] == 2
    assert "SERLIB_THREADS" not in os.environ and os.environ["OMP_NUM_THREADS"] == "7"


def test_studies_sharing_an_option_name_share_its_flag_with_every_choice(monkeypatch):
    """``--parts`` belongs to ECA-CNN (ablation, grid_slice, speed) and CA-SER (ablation, layer_sweep): the flag takes
    every study's choices (it used to take the first study's only, so ECA's grid_slice and speed were refused), and
    the study that runs checks the values against its own."""
    seen = []
    monkeypatch.setattr(cli, "cmd_reproduce", lambda args: seen.append((args.paper, args.parts)) or 0)
    assert cli.main(["reproduce", "eca", "--parts", "grid_slice", "speed"]) == 0
    assert cli.main(["reproduce", "ca_ser", "--parts", "layer_sweep"]) == 0
    assert seen == [("eca", ["grid_slice", "speed"]), ("ca_ser", ["layer_sweep"])]
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "eca", "--parts", "grids"])
    with pytest.raises(ValueError, match="parts must be among"):
        eca.reproduction_experiments("ravdess", parts=("layer_sweep",))
