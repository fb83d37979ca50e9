"""Issue 16, test-time speed perturbation (``serlib tta``): a saved segments run evaluated again with its test
utterances played at several speeds. The clean factor alone reproduces the run's own record; the averaged record is
a run record of its own that the levers table pairs with the run; a checkpoint that is not the record's model, or
audio that changed, is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from serlib.cli import main
from serlib.experiment import record_path_of
from serlib.studies import compare
from serlib.studies import head_fusion as hf
from serlib.studies.common import load_records
from serlib.tta import speed_tta

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """A quick Head Fusion lever run (authors' attention) on the synthetic corpus, fold 0, with its checkpoint."""
    out = tmp_path_factory.mktemp("tta")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["reproduce", "head_fusion", "--corpus", "synthetic", "--profile", "quick", "--protocols",
                   "speaker_independent", "--levers", "authors_attention", "--arms", "lever-authors_attention",
                   "--folds", "0", "--results", str(out / "results"), "--save-model", str(out / "ckpt")])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    (rec,) = [p for p in (out / "results").rglob("*.json") if "splits" not in p.relative_to(out).parts]
    return {"out": out, "record": rec}


def test_the_clean_factor_alone_reproduces_the_run(saved):
    src = json.loads(saved["record"].read_text())
    r = speed_tta(saved["record"], factors=(1.0,))
    assert r["predictions"]["utt_id"] == src["predictions"]["utt_id"]
    assert np.abs(np.asarray(r["predictions"]["prob"]) - np.asarray(src["predictions"]["prob"])).max() <= 2e-3
    assert r["metrics"]["ua"] == pytest.approx(src["metrics"]["ua"], abs=1e-6)
    assert r["metrics"]["clean"]["ua"] == pytest.approx(src["metrics"]["ua"], abs=1e-6)
    assert r["metrics"]["val_clean"]["ua"] == pytest.approx(src["metrics"]["val"]["ua"], abs=1e-6)


def test_cli_writes_a_record_the_levers_table_pairs_with_the_run(saved, capsys):
    results = saved["out"] / "results"
    assert main(["tta", str(saved["record"]), "--results", str(results)]) == 0
    assert "1 test-time speed perturbation records written" in capsys.readouterr().out
    recs = load_records(results)
    (t,) = [r for r in recs if r["kind"].endswith("+tta")]
    src = next(r for r in recs if not r["kind"].endswith("+tta"))
    assert t["identity"]["arm"] == "lever-authors_attention+tta" and t["config"]["tta"] == {"factors": [0.9, 1.0, 1.1]}
    assert t["extra"]["tta_source"]["config_hash"] == src["config_hash"] and t["seed"] == src["seed"]
    assert record_path_of(t, results).resolve() == Path(t["_path"]).resolve()  # the path is its config's hash
    assert t["split"]["test"] == src["split"]["test"] and t["split"]["val"] == src["split"]["val"]
    raw = json.loads(Path(t["_path"]).read_text())["split"]  # stored by reference: the run's own split file
    assert raw["ref"] == json.loads(saved["record"].read_text())["split"]["ref"]
    assert set(t["metrics"]["per_factor"]) == {"0.9", "1", "1.1"}
    assert t["counts"]["tta"]["test"]["1"]["utterances"] == len(src["predictions"]["utt_id"])
    # the averaged probabilities are the mean of the three copies' (each a distribution)
    prob = np.asarray(t["predictions"]["prob"])
    assert np.allclose(prob.sum(1), 1, atol=1e-3)
    assert "test-time speed factors [0.9, 1.0, 1.1]" in compare.recipe(t)
    v = t["val_predictions"]  # the validation part's averaged probabilities: its UA is the record's validation UA
    labels = t["corpus"]["labels"]
    from serlib.evaluate import classification_metrics

    vpred = [labels[int(np.argmax(row))] for row in v["prob"]]
    assert classification_metrics(v["label"], vpred, labels=labels)["ua"] == pytest.approx(t["metrics"]["val"]["ua"])
    assert v["utt_id"] == src["val_predictions"]["utt_id"]
    lev = hf.levers_table(recs)
    row = lev[lev["lever"] == "authors_attention+tta"].iloc[0]
    assert row["against"] == "authors_attention" and row["n pairs"] == 1
    # written once: a second call keeps it
    assert main(["tta", str(saved["record"]), "--results", str(results)]) == 0
    assert "0 test-time" in capsys.readouterr().out


def test_a_checkpoint_that_is_not_the_records_model_is_refused(saved, tmp_path):
    rec = json.loads(saved["record"].read_text())
    rec["predictions"]["prob"] = np.roll(np.asarray(rec["predictions"]["prob"]), 1, axis=1).tolist()
    bad = tmp_path / "results" / "x" / "ravdess" / "speaker_independent" / Path(saved["record"]).name
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="does not reproduce its record"):
        speed_tta(bad)


def test_changed_audio_is_refused_and_non_segment_runs_are_named(saved, tmp_path):
    rec = json.loads(saved["record"].read_text())
    rec["corpus"]["content_hash"] = "0" * 16
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="not what the run was trained and tested on"):
        speed_tta(bad)
    rec = json.loads(saved["record"].read_text())
    rec["config"]["view"] = "fixed"
    bad.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="needs a segments run"):
        speed_tta(bad)
    assert main(["tta", str(bad), "--results", str(tmp_path / "r")]) == 2


def test_a_file_that_is_not_a_run_record_is_named(saved, tmp_path, capsys):
    rec = json.loads(saved["record"].read_text())
    del rec["config"]
    bad = tmp_path / "no_config.json"
    bad.write_text(json.dumps(rec))
    assert main(["tta", str(bad), "--results", str(tmp_path / "r")]) == 2
    assert "no_config.json: not a serlib run record" in capsys.readouterr().err
    bad.write_text("[1, 2]")
    assert main(["tta", str(bad), "--results", str(tmp_path / "r")]) == 2
    capsys.readouterr()
    bad.write_text("{truncated")
    assert main(["tta", str(bad), "--results", str(tmp_path / "r")]) == 2
    assert main(["val-predictions", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("no_config.json: not JSON") == 2


def test_val_predictions_are_backfilled_from_the_checkpoint_and_only_when_it_reproduces_the_run(saved, tmp_path,
                                                                                                capsys):
    """``serlib val-predictions``: an older run record (no ``val_predictions``) gets the ones its run would have
    written, from its checkpoint, and nothing else changes; a record the checkpoint does not reproduce is refused."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(saved["out"] / "results", results)
    (rec_file,) = [p for p in results.rglob("*.json") if "splits" not in p.relative_to(results).parts
                   and "+tta" not in str(p)]
    orig = json.loads(rec_file.read_text())
    old = {k: v for k, v in orig.items() if k != "val_predictions"}
    rec_file.write_text(json.dumps(old, indent=1))
    assert main(["val-predictions", str(rec_file)]) == 0
    assert "1 run records given their validation predictions" in capsys.readouterr().out
    text = rec_file.read_text()
    new = json.loads(text)
    assert list(new)[:len(old)] == list(old) and not text.endswith("\n")  # its key order and layout are kept
    assert new["val_predictions"]["utt_id"] == orig["val_predictions"]["utt_id"]
    assert new["val_predictions"]["label"] == orig["val_predictions"]["label"]
    assert np.abs(np.asarray(new["val_predictions"]["prob"]) - np.asarray(orig["val_predictions"]["prob"])).max() \
        <= 2e-3
    assert set(new["extra"]["val_predictions_backfill"]) == {"git", "created", "checks"}
    del new["extra"]["val_predictions_backfill"]
    rest = {k: v for k, v in new.items() if k != "val_predictions"}
    assert json.dumps(rest, indent=1) == json.dumps(old, indent=1)  # nothing else changed, nor moved
    assert main(["val-predictions", str(rec_file)]) == 0  # has them now: left alone
    assert "0 run records given" in capsys.readouterr().out
    # a TTA record of the backfilled run does not inherit the backfill note (its validation predictions are its own)
    t = speed_tta(rec_file, (0.9, 1.0))
    assert "val_predictions_backfill" not in t["extra"] and t["val_predictions"]["utt_id"] == vp_ids(orig)
    # a record whose selected validation UA the checkpoint does not give: refused, the file untouched; the other
    # records of the call are still done, and the exit code says one failed
    bad = {**old, "metrics": {**old["metrics"], "val": {**old["metrics"]["val"], "ua": old["metrics"]["val"]["ua"] / 2}}}
    rec_file.write_text(json.dumps(bad))
    other = rec_file.with_name("copy_" + rec_file.name)
    other.write_text(json.dumps(old, indent=1))
    assert main(["val-predictions", str(rec_file), str(other)]) == 2
    err = capsys.readouterr().err
    assert "is not the" in err and "1 of 2 records not given validation predictions" in err
    assert json.loads(rec_file.read_text()) == bad
    assert json.loads(other.read_text())["val_predictions"]["utt_id"] == vp_ids(orig)


def vp_ids(record: dict) -> list[str]:
    return record["val_predictions"]["utt_id"]
