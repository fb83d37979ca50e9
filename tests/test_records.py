"""Run records: JSON round trip, numpy / torch values, atomic writes, flattening, paths, git revision."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from serlib import report
from serlib.records import (
    SCHEMA_VERSION,
    config_hash,
    environment_info,
    git_revision,
    load_records,
    make_record,
    read_record,
    record_exists,
    record_path,
    to_jsonable,
    write_record,
)

REPO = Path(__file__).resolve().parents[1]
SHA = re.compile(r"^[0-9a-f]{40}(\+dirty)?$")


def a_record(*, seed=0, fold=None, ua=0.6, model="x", selection="val", **kw) -> dict:
    return make_record(
        kind="demo",
        config={"model": model, "train": {"lr": 1e-3, "weight_decay": 1e-7}, "kernels": (3, 5)},
        seed=seed,
        corpus={"name": "toy", "fingerprint": "abc", "manifest_hash": None, "n_utts": 10, "synthetic": True},
        split={"protocol": "random", "fold": fold},
        metrics={
            "ua": ua,
            "wa": 0.7,
            "macro_f1": 0.55,
            "per_class_recall": {"a": 0.5, "b": 0.7},
            "confusion": [[1, 1], [0, 2]],
        },
        history=[{"epoch": 1, "train_loss": 0.9}],
        counts={"too_short": 2},
        timings={"total_s": 1.5},
        selection=selection,
        **kw,
    )


def test_round_trip(tmp_path):
    rec = a_record(ua=0.123456789, extra={"note": "hi"})
    assert rec["schema_version"] == SCHEMA_VERSION and rec["created"].endswith("+00:00")
    assert rec["git"] == "unknown" or SHA.match(rec["git"])
    path = write_record(rec, tmp_path / "r.json")
    back = read_record(path)
    assert back == to_jsonable(rec, rounded=True)
    assert back["metrics"]["ua"] == 0.123457  # rounded to 6 dp
    assert back["config"]["train"]["weight_decay"] == 1e-7  # small values keep significant digits
    assert back["config"]["kernels"] == [3, 5]
    text = path.read_text()
    assert list(json.loads(text)) == sorted(json.loads(text))  # sorted keys
    assert record_exists(path) and not record_exists(tmp_path / "missing.json")


def test_numpy_torch_and_special_values_serialise(tmp_path):
    rec = a_record(
        extra={
            "f32": np.float32(0.25),
            "i64": np.int64(7),
            "b": np.bool_(True),
            "arr": np.arange(3),
            "t": torch.tensor([1.5, 2.5]),
            "t0": torch.tensor(3),
            "nan": float("nan"),
            "inf": np.inf,
            "path": Path("a/b.wav"),
            "set": {"y", "x"},
        }
    )
    back = read_record(write_record(rec, tmp_path / "r.json"))["extra"]
    assert back == {
        "f32": 0.25,
        "i64": 7,
        "b": True,
        "arr": [0, 1, 2],
        "t": [1.5, 2.5],
        "t0": 3,
        "nan": None,
        "inf": None,
        "path": "a/b.wav",
        "set": ["x", "y"],
    }
    assert isinstance(back["i64"], int) and isinstance(back["b"], bool)
    with pytest.raises(TypeError):
        to_jsonable({"bad": object()})


def test_atomic_write_leaves_no_temp(tmp_path):
    out = tmp_path / "deep" / "dir" / "r.json"
    write_record(a_record(), out)
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]
    before = out.read_text()
    with pytest.raises(TypeError):
        write_record({**a_record(), "bad": object()}, out)
    assert [p.name for p in out.parent.iterdir()] == ["r.json"] and out.read_text() == before


def test_atomic_write_gives_a_plain_files_permissions(tmp_path):
    """Not mkstemp's owner-only 0o600: what open() would give under the umask (a shared results folder stays
    readable)."""
    import os
    import stat

    from serlib import records

    old = os.umask(0o022)
    records._umask.cache_clear()
    try:
        plain = tmp_path / "plain.json"
        plain.write_text("{}")
        out = write_record(a_record(), tmp_path / "r.json")
        assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
    finally:
        os.umask(old)
        records._umask.cache_clear()


def test_record_path_is_deterministic_and_readable(tmp_path):
    cfg = {"model": "x", "lr": 1e-3}
    p = record_path(
        tmp_path,
        "headfusion",
        {"corpus": "ravdess", "protocol": "random 80/20", "config": cfg, "seed": 3, "fold": 1},
    )
    assert p == tmp_path / "headfusion" / "ravdess" / "random-80-20" / f"{config_hash(cfg)}_seed3_fold1.json"
    assert p == record_path(
        tmp_path,
        "headfusion",
        {
            "corpus": "ravdess",
            "protocol": "random 80/20",
            "config": dict(reversed(cfg.items())),
            "seed": 3,
            "fold": 1,
        },
    )
    q = record_path(
        tmp_path,
        "noise",
        {
            "corpus": "c",
            "protocol": "p",
            "config_hash": "h",
            "seed": 0,
            "fold": None,
            "noise": "D-S",
            "af": 0.1,
        },
    )
    assert q.name == "h_seed0_af-0.1_noise-D-S.json"
    assert config_hash(cfg) != config_hash({**cfg, "lr": 1e-4})
    with pytest.raises(ValueError):
        record_path(tmp_path, "k", {"corpus": "c", "protocol": "p", "seed": 0})


def test_load_records_flattens(tmp_path):
    for seed, fold, ua, model in ((0, 0, 0.5, "x"), (1, 0, 0.7, "x"), (0, 1, 0.9, "y")):
        rec = a_record(seed=seed, fold=fold, ua=ua, model=model)
        write_record(
            rec,
            record_path(
                tmp_path,
                "demo",
                {"corpus": "toy", "protocol": "p", "config": rec["config"], "seed": seed, "fold": fold},
            ),
        )
    (tmp_path / "demo" / "not_a_record.json").write_text('{"hello": 1}')
    df = load_records(tmp_path)
    assert len(df) == 3
    assert sorted(df["ua"]) == [0.5, 0.7, 0.9] and set(df["wa"]) == {0.7}
    assert {
        "macro_f1",
        "seed",
        "fold",
        "config.model",
        "config.train.lr",
        "per_class_recall.a",
        "corpus",
        "protocol",
        "selection",
        "timings.total_s",
        "counts.too_short",
        "path",
    } <= set(df.columns)
    assert "confusion" not in df.columns and "history" not in df.columns
    assert df.groupby("config.model")["ua"].mean().to_dict() == pytest.approx({"x": 0.6, "y": 0.9})
    assert set(df["config.kernels"]) == {(3, 5)}
    assert len(load_records(str(tmp_path / "**" / "*fold1.json"))) == 1
    assert load_records(tmp_path / "nothing_here").empty


def test_make_record_checks():
    with pytest.raises(ValueError):
        a_record(selection="best")
    with pytest.raises(ValueError):
        make_record(kind="k", config={}, seed=0, corpus={}, split={}, metrics={}, selection="val")


def test_environment_info_keys():
    env = environment_info()
    assert {
        "python",
        "torch",
        "numpy",
        "librosa",
        "device",
        "cpu_count",
        "torch_threads",
        "platform",
        "cuda_name",
    } <= set(env)
    assert env["torch"].split("+")[0] == torch.__version__.split("+")[0]
    json.dumps(env)


def test_git_revision_in_this_repo():
    rev = git_revision(REPO)
    has_head = (
        subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=REPO, capture_output=True
        ).returncode
        == 0
    )
    if has_head:
        assert SHA.match(rev), rev
    else:  # a fresh repository before its first commit
        assert rev == "unknown"
    assert git_revision() == rev  # the default is the checkout holding serlib


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_revision_clean_dirty_and_outside(tmp_path):
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_revision(outside) == "unknown"
    assert git_revision(tmp_path / "missing") == "unknown"

    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        subprocess.run(
            [
                "git",
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.org",
                "-c",
                "commit.gpgsign=false",
                *args,
            ],
            cwd=repo,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    assert git_revision(repo) == "unknown"  # no commit yet
    (repo / "f.txt").write_text("1")
    git("add", "f.txt")
    git("commit", "-q", "-m", "init")
    rev = git_revision(repo)
    assert re.fullmatch(r"[0-9a-f]{40}", rev)
    (repo / "untracked.txt").write_text("u")
    assert git_revision(repo) == rev  # untracked files do not make it dirty
    (repo / "f.txt").write_text("2")
    assert git_revision(repo) == rev + "+dirty"


def test_git_revision_of_a_carried_copy(tmp_path, monkeypatch):
    from serlib.records import git_revision

    monkeypatch.delenv("SERLIB_GIT_REVISION", raising=False)
    assert git_revision(tmp_path) == "unknown"
    monkeypatch.setenv("SERLIB_GIT_REVISION", "a" * 40)
    assert git_revision(tmp_path) == "a" * 40 + "+carried"
    assert git_revision() == "a" * 40 + "+carried"  # also inside a checkout: a carried .git may be stale
    monkeypatch.setenv("SERLIB_GIT_REVISION", "not a sha")
    assert git_revision(tmp_path) == "unknown"


def test_a_run_records_the_revision_of_the_code_it_imported(tmp_path, monkeypatch):
    """A run of an hour took the revision of whatever was committed when it ended."""
    from serlib import experiment, records
    from serlib.studies import head_fusion as hf

    assert experiment.code_revision is records.code_revision and records.code_revision.cache_info().currsize == 1
    monkeypatch.setattr(experiment, "code_revision", lambda: "a" * 40)  # read at import
    monkeypatch.setattr(records, "git_revision", lambda: "z" * 40)  # what make_record would read at the end
    exp = hf.paper_experiment("synthetic", profile="quick", selection="val", train={"epochs": 1},
                              model_kwargs={"n_head": 1, "n_size": 4})
    rec = hf.run_study([exp], results_dir=tmp_path, backend="serial")[0]
    assert rec["git"] == "a" * 40


def test_speed_goals_table_reads_each_goal_from_its_record(tmp_path):
    import json

    from serlib.report import SPEED_GOALS, speed_goals_table

    bench = tmp_path / "benchmarks"
    bench.mkdir()
    assert speed_goals_table(tmp_path).empty  # no record, no row
    (bench / SPEED_GOALS[0][1]).write_text(json.dumps({
        "git": "abcdef123", "device": "cpu", "load_avg_before": [1.96, 1.5, 1.2],
        "epochs": [{"threads": 1, "train_speedup_serlib_over_authors": 1.6,
                                                         "eval_speedup_serlib_over_authors": 1.2}],
        "step": {"threads": 1, "ratios": {"serlib_faithful_over_authors": 2.5}}}))
    t = speed_goals_table(tmp_path)
    assert list(t["measured"]) == [1.6, 1.2, 2.5] and list(t["met"]) == ["yes", "no", "no"]
    assert set(t["torch threads"]) == {"1"} and set(t["git"]) == {"abcdef1"}
    assert set(t["load before"]) == {"2.0"}  # the machine's state during the measurement is shown
    assert {g[1] for g in SPEED_GOALS[:3]} == {SPEED_GOALS[0][1]}  # the three CPU ratios come from one run
    assert "head_fusion_cpu_50_epochs.json" in {g[1] for g in SPEED_GOALS}
    real = speed_goals_table(Path(__file__).resolve().parents[1] / "results")
    assert len(real) == len(SPEED_GOALS)  # every committed goal record resolves its key
    rec = json.loads((bench / SPEED_GOALS[0][1]).read_text())
    (bench / SPEED_GOALS[0][1]).write_text(json.dumps({**rec, "git": "abcdef123+dirty"}))
    assert set(speed_goals_table(tmp_path)["git"]) == {"abcdef1+dirty"}  # a run from an uncommitted tree says so
    assert set(t["accuracy"]) == {""}  # ratios: no accuracy
    fifty = next(g for g in SPEED_GOALS if g[2].startswith("sides."))
    side = fifty[2].split(".")[1]
    (bench / fifty[1]).write_text(json.dumps({"git": "abc", "committed_test_ua": 0.5827, "sides": {
        side: {"seconds_per_run": 400.0, "test_ua": 0.5694}}}))
    row = speed_goals_table(tmp_path).set_index("record").loc[f"results/benchmarks/{fifty[1]}"]
    assert row["accuracy"] == "test UA 56.9 (committed run 58.3)"  # a rerun states its accuracy beside the record's
    committed = tmp_path.parent / "committed.json"  # a committed run of the other attention variant is named
    committed.write_text(json.dumps({"config": {"model_kwargs": {"attention": "head_fusion_code"}}}))
    (bench / fifty[1]).write_text(json.dumps({"git": "abc", "committed_test_ua": 0.5827, "committed_record":
                                             "committed.json", "sides": {side: {"seconds_per_run": 1.0,
                                                                                "test_ua": 0.5694}}}))
    row = speed_goals_table(tmp_path).set_index("record").loc[f"results/benchmarks/{fifty[1]}"]
    assert row["accuracy"] == ("test UA 56.9 (committed head_fusion_code run 58.3)" if side != "head_fusion_code"
                               else "test UA 56.9 (committed run 58.3)")


def test_markdown_keeps_small_p_values_readable():
    """A p-value column never rounds to a bare 0.0: three decimals, or two significant digits below 0.001."""
    df = pd.DataFrame({"diff (pp)": [9.2, 1.0], "p (paired t)": [0.02412, 0.000031]})
    table = report.markdown(df)
    assert "| 9.2 | 0.024 |" in table
    assert "| 1.0 | 3.1e-05 |" in table
    assert report.p_value_text(float("nan")) == ""
