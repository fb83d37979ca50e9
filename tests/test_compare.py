import math

import numpy as np
import pytest

from serlib.studies import compare


def rec(kind, fold, seed, ua, test_speakers=None, protocol="speaker_independent", val=None):
    return {"kind": kind, "seed": seed, "corpus": {"name": "ravdess"},
            "metrics": {"ua": ua, "val": {"ua": ua if val is None else val}},
            "split": {"protocol": protocol, "fold": fold, "seed": 0,
                      "meta": {"fingerprint": "f", "n_folds": 3, "test_speakers": test_speakers or [f"A{fold}"]}}}


def test_same_split_table_averages_seeds_within_a_fold_first():
    recs = [rec("hf", 0, 1, 0.40), rec("hf", 0, 2, 0.50), rec("hf", 1, 1, 0.60),
            rec("moma", 0, 0, 0.30), rec("moma", 1, 0, 0.50), rec("moma", 2, 0, 0.70),
            rec("hf", 0, 9, 0.99, protocol="random_80_20"), {"status": "error"}]
    t = compare.same_split_table(recs).set_index("experiment")
    assert math.isclose(t.loc["hf", "fold 0"], 45.0) and math.isclose(t.loc["hf", "mean of folds"], 52.5)
    assert t.loc["hf", "n runs"] == 3 and t.loc["hf", "n folds"] == 2 and math.isnan(t.loc["hf", "fold 2"])
    assert math.isclose(t.loc["moma", "std over folds"], 20.0)
    tests = compare.same_split_tests(recs).iloc[0]
    assert (tests["a"], tests["b"], tests["n folds"]) == ("hf", "moma", 2)  # fold 2 is moma's only
    assert math.isclose(tests["mean diff (pp)"], 12.5) and tests["a better in"] == "2/2"


def test_records_of_one_fold_on_different_splits_are_refused():
    with pytest.raises(ValueError, match="different splits"):
        compare.fold_means([rec("hf", 0, 1, 0.4, ["A1"]), rec("moma", 0, 0, 0.3, ["A2"])])


def test_no_records_gives_empty_frames():
    assert compare.same_split_table([]).empty and compare.same_split_tests([]).empty


def test_best_speaker_independent_needs_every_fold_and_states_its_recipe():
    """A higher mean on fewer folds never wins; the row names the recipe from the record's config and the goal."""
    cfg = {"model": "moma", "model_kwargs": {"hidden": 8}, "features": "mfcc", "view": "utterances",
           "train": {"epochs": 3, "lr": 0.01}}
    recs = [rec("hf", 0, 0, 0.99), rec("hf", 1, 0, 0.99)]  # two of three folds: left out however good
    recs += [{**rec("moma", f, s, ua), "config": cfg} for f, s, ua in [(0, 0, 0.5), (1, 0, 0.6), (2, 0, 0.7),
                                                                         (2, 1, 0.5)]]
    recs += [rec("eca", f, 0, 0.4) for f in range(3)]
    table = compare.best_speaker_independent(recs, goal=59.0)
    assert len(table) == 1  # no run carries predictions: no ensemble row
    best = table.iloc[0]
    assert best["experiment"] == "moma" and best["n folds"] == 3 and best["n runs"] == 4
    assert best["form"] == "single runs (fold mean over seeds)"
    assert math.isclose(best["UA mean of folds (%)"], (50 + 60 + 60) / 3) and best["seeds"] == "0 1"
    assert best["goal >= 59"] == False  # noqa: E712 (numpy bool)
    assert best["recipe"] == "moma(hidden=8); features mfcc, view utterances; train epochs=3, lr=0.01"
    assert compare.best_speaker_independent(recs[:2]).empty


def test_best_speaker_independent_adds_the_best_seed_ensemble_on_every_fold():
    def pr(kind, fold, seed, probs):
        r = _pred_rec(kind, fold, seed, probs)
        r["split"]["meta"] = {"fingerprint": "f", "n_folds": 2, "test_speakers": [f"A{fold}"]}
        r["config"] = {"model": kind, "view": "speed_segments", "view_kwargs": {"factors": [0.9, 1.1]}}
        return r

    # "m": seeds 0 and 1 on both folds; each single run scores UA 75, their mean probabilities get all three right
    recs = [pr("m", f, 0, [[0.9, 0.1], [0.2, 0.8], [0.55, 0.45]]) for f in (0, 1)]
    recs += [pr("m", f, 1, [[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]]) for f in (0, 1)]
    # "k": better single runs (UA 100 on fold 0, 75 on fold 1) but two seeds on fold 0 only: no ensemble row
    recs += [pr("k", 0, s, [[0.9, 0.1], [0.2, 0.8], [0.2, 0.8]]) for s in (0, 1)]
    recs += [pr("k", 1, 0, [[0.9, 0.1], [0.2, 0.8], [0.55, 0.45]])]
    t = compare.best_speaker_independent(recs, goal=90.0).set_index("form")
    single, ens = t.loc["single runs (fold mean over seeds)"], t.loc["seed ensemble (mean probabilities)"]
    assert single["experiment"] == "k" and math.isclose(single["UA mean of folds (%)"], 87.5)
    assert ens["experiment"] == "m" and math.isclose(ens["UA mean of folds (%)"], 100.0)
    assert ens["n runs"] == 4 and ens["n folds"] == 2 and ens["seeds"] == "0 1" and ens["goal >= 90"] == True  # noqa
    assert ens["recipe"].startswith("m(); features None, view speed_segments(factors=[0.9, 1.1])")


def test_best_speaker_independent_is_chosen_on_validation_never_on_the_test_set():
    """The higher test UA does not win when its validation UA is lower; an experiment whose runs lack validation
    UAs is not a candidate; the row states the validation UA it was chosen on."""
    recs = [rec("test_lucky", f, 0, 0.70, val=0.40) for f in range(3)]
    recs += [rec("val_best", f, 0, 0.55, val=0.60) for f in range(3)]
    no_val = [rec("no_val", f, 0, 0.90) for f in range(3)]
    no_val[1]["metrics"].pop("val")
    best = compare.best_speaker_independent(recs + no_val).iloc[0]
    assert best["experiment"] == "val_best" and math.isclose(best["UA mean of folds (%)"], 55.0)
    assert math.isclose(best["chosen on: val UA (%)"], 60.0)
    v = compare.validation_means(recs + no_val)
    assert set(v.index) == {"test_lucky", "val_best"} and math.isclose(v["test_lucky"], 40.0)
    assert compare.best_speaker_independent(no_val).empty
    # a validation tie (within rounding) goes to the simpler recipe, whatever the test set says
    tie = [rec("a+speed", f, 0.50, 0.6) for f in range(3)] + [rec("a+speed+tta", f, 0.70, 0.6 + 1e-8) for f in range(3)]
    assert compare.best_speaker_independent(tie).iloc[0]["experiment"] == "a+speed"
    tie[3]["metrics"]["val"]["ua"] = 0.7  # a real validation gain wins
    assert compare.best_speaker_independent(tie).iloc[0]["experiment"] == "a+speed+tta"
    # a tie between equally simple recipes goes to the one whose validation mean rests on more runs, not to the
    # first name (nor to the better test UA)
    tie = ([rec("a+many", f, 0, 0.70, val=0.6 + 1e-8) for f in range(3)]
           + [rec("a+wide", f, s, 0.50, val=0.6) for f in range(3) for s in (0, 1)])
    assert compare.best_speaker_independent(tie).iloc[0]["experiment"] == "a+wide"


def _pred_rec(kind, fold, seed, probs, labels=("a", "b"), truth=("a", "b", "b")):
    from serlib.evaluate import classification_metrics

    pred = [labels[max(range(len(p)), key=p.__getitem__)] for p in probs]
    ua = classification_metrics(list(truth), pred, labels=list(labels))["ua"]
    return {"kind": kind, "status": "ok", "seed": seed, "corpus": {"name": "ravdess", "labels": list(labels)},
            "split": {"protocol": "speaker_independent", "fold": fold}, "metrics": {"ua": ua, "wa": ua, "val": {"ua": ua}},
            "predictions": {"utt_id": ["u1", "u2", "u3"], "label": list(truth), "prob": probs}}


def _pr(kind, fold, seed, probs):
    r = _pred_rec(kind, fold, seed, probs)
    r["val_predictions"] = dict(r["predictions"])
    return r


_A = {0: [[0.6, 0.4], [0.4, 0.6], [0.4, 0.6]], 1: [[0.9, 0.1], [0.95, 0.05], [0.2, 0.8]]}
_B = {0: [[0.9, 0.1], [0.2, 0.8], [0.55, 0.45]], 1: [[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]]}


def test_the_best_ensemble_is_chosen_on_its_own_validation_ua_among_runs_that_recorded_it():
    """A's runs are better on validation one by one (87.5 vs 75) but B's ensemble is (100 vs 75): with every run's
    val_predictions the ensemble row is B, chosen by the ensemble's val UA. When A, whose runs lead on validation,
    lacks them on a fold, A's runs' mean val UA chooses (A is never passed over for predating them); a trailing
    experiment without them is not compared, and the row says so."""
    recs = [_pr(k, f, s, p[s]) for k, p in (("A", _A), ("B", _B)) for f in (0, 1) for s in (0, 1)]
    ens = compare.ensemble_table(recs).set_index(["experiment", "fold"])
    assert ens.loc[("A", "mean of folds"), "val ensemble UA (%)"] == pytest.approx(75.0)
    assert ens.loc[("B", "mean of folds"), "val ensemble UA (%)"] == pytest.approx(100.0)
    row = compare.best_speaker_independent(recs).set_index("form").loc["seed ensemble (mean probabilities)"]
    assert row["experiment"] == "B" and row["chosen by"].startswith("the ensemble's val UA (best of 2 ensembles")
    assert row["chosen on: val UA (%)"] == pytest.approx(100.0) and row["n runs"] == 4
    # A's fold 0 keeps one run with validation predictions: A, the leader on its runs' validation, is chosen that way
    a0 = recs[0].pop("val_predictions")
    row = compare.best_speaker_independent(recs).set_index("form").loc["seed ensemble (mean probabilities)"]
    assert row["experiment"] == "A" and row["chosen by"] == "its runs' mean val UA (they lack validation predictions)"
    # B (trailing on its runs' validation) lacks them instead: A's ensemble (75) is the only one compared
    recs[0]["val_predictions"] = a0
    del recs[4]["val_predictions"]
    row = compare.best_speaker_independent(recs).set_index("form").loc["seed ensemble (mean probabilities)"]
    assert row["experiment"] == "A" and "best of 1 ensembles" in row["chosen by"]
    assert "1 experiments without them not compared" in row["chosen by"]
    assert row["chosen on: val UA (%)"] == pytest.approx(75.0)
    for r in recs:
        r.pop("val_predictions", None)
    t = compare.best_speaker_independent(recs).set_index("form")
    row = t.loc["seed ensemble (mean probabilities)"]
    assert row["experiment"] == "A" and row["chosen by"] == "its runs' mean val UA"
    assert row["chosen on: val UA (%)"] == pytest.approx(87.5)
    assert t.loc["single runs (fold mean over seeds)", "chosen by"] == "its runs' mean val UA"


def test_a_pool_of_experiments_competes_as_one_ensemble_on_validation():
    """A pool's ensemble averages every run of its experiments per fold; it is chosen only when its validation UA is
    the highest, and its test UA is the pooled ensemble's."""
    recs = [_pr(k, f, s, p[s]) for k, p in (("A", _A), ("B", _B)) for f in (0, 1) for s in (0, 1)]
    val = {f: compare._ensemble_ua([r for r in recs if r["split"]["fold"] == f], "x", "val_predictions")
           for f in (0, 1)}
    t = compare.best_speaker_independent(recs, pools={"A and B": ["A", "B"]}).set_index("form")
    pooled_val = (val[0] + val[1]) / 2
    if pooled_val > 100.0 - compare.VAL_TIE_PP:  # ties go to the simpler name: B
        raise AssertionError("fixture: the pool must not tie with B")
    assert "seed ensemble (mean probabilities)" in t.index and t.loc["seed ensemble (mean probabilities)",
                                                                     "experiment"] == "B"
    assert "best of 3 ensembles" in t.loc["seed ensemble (mean probabilities)", "chosen by"]
    # A's runs get u1 right and u2, u3 wrong on validation, B's the other way round: each ensemble is at 50, the pool
    # (u1 0.65 for a, u2 and u3 0.35) gets all three
    for r in recs:
        q = [[0.9, 0.1], [0.6, 0.4], [0.6, 0.4]] if r["kind"] == "A" else [[0.4, 0.6], [0.1, 0.9], [0.1, 0.9]]
        r["val_predictions"] = {**r["val_predictions"], "prob": q}
    p_val = np.mean([compare._ensemble_ua([r for r in recs if r["split"]["fold"] == f], "x", "val_predictions")
                     for f in (0, 1)])
    assert p_val == pytest.approx(100.0)
    row = compare.best_speaker_independent(recs, pools={"A and B": ["A", "B"]}).set_index("form").loc[
        "pooled ensemble (mean probabilities)"]
    assert row["experiment"] == "A and B" and row["recipe"] == "pool of A, B" and row["n runs"] == 8
    assert row["chosen on: val UA (%)"] == pytest.approx(p_val)
    test = np.mean([compare._ensemble_ua([r for r in recs if r["split"]["fold"] == f], "x") for f in (0, 1)])
    assert row["UA mean of folds (%)"] == pytest.approx(test)
    # a pool with one experiment that has runs is no pool
    assert (compare.best_speaker_independent(recs, pools={"A and C": ["A", "C"]})["experiment"] != "A and C").all()


def test_ensemble_table_averages_probabilities_not_votes():
    from serlib.studies.compare import ensemble_table

    # seed 0 gets u2 right only barely wrong on u3; seed 1 the other way round; the mean gets both
    r0 = _pred_rec("m", 0, 0, [[0.9, 0.1], [0.2, 0.8], [0.55, 0.45]])
    r1 = _pred_rec("m", 0, 1, [[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    solo = _pred_rec("m", 1, 0, [[0.9, 0.1], [0.2, 0.8], [0.2, 0.8]])  # one run on fold 1: no ensemble there
    t = ensemble_table([r0, r1, solo])
    assert list(t["fold"]) == [0, "mean of folds"]
    row = t.iloc[0]
    assert row["runs"] == 2 and row["ensemble UA (%)"] == pytest.approx(100.0)
    assert row["single-run UA mean (%)"] == pytest.approx(75.0)  # each single run: recall a 1, b 1/2
    assert row["gain (pp)"] == pytest.approx(25.0)
    assert math.isnan(t.iloc[1]["p (paired t over folds)"])  # one fold: no test
    # two folds: the mean row tests the per-fold gains (ensemble vs single-run mean) over the folds
    r2 = _pred_rec("m", 1, 1, [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    two = ensemble_table([r0, r1, solo, r2])
    mean = two.iloc[-1]
    gains = list(two["gain (pp)"][:2])
    from scipy import stats

    assert mean["gain (pp)"] == pytest.approx(sum(gains) / 2) and mean["gain in"] == f"{sum(g > 0 for g in gains)}/2"
    assert mean["p (paired t over folds)"] == pytest.approx(stats.ttest_rel(
        two["ensemble UA (%)"][:2], two["single-run UA mean (%)"][:2]).pvalue, nan_ok=True)
    bad = _pred_rec("m", 0, 2, [[0.9, 0.1]] * 3)
    bad["predictions"]["utt_id"] = ["u1", "u2", "u9"]
    with pytest.raises(ValueError, match="different utterances"):
        ensemble_table([r0, r1, bad])
    assert ensemble_table([solo]).empty


def test_ensemble_size_table_is_the_measured_curve_over_every_subset_of_seeds():
    from itertools import combinations

    from serlib.studies.compare import ensemble_size_table, ensemble_table

    p = {0: [[0.9, 0.1], [0.2, 0.8], [0.55, 0.45]], 1: [[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]],
         2: [[0.4, 0.6], [0.3, 0.7], [0.3, 0.7]], 3: [[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]]}
    recs = [_pred_rec("m", f, s, p[(s + f) % 3]) for f in (0, 1) for s in (0, 1, 2)]
    recs.append(_pred_rec("m", 0, 3, p[3]))  # seed 3 on fold 0 only: not in the curve
    t = ensemble_size_table(recs)
    assert list(t["ensemble size"]) == [1, 2, 3] and list(t["subsets"]) == [3, 3, 1]
    assert set(t["seeds"]) == {"0 1 2"} and set(t["folds"]) == {2}
    single = np.mean([100 * r["metrics"]["ua"] for r in recs[:6]])
    assert t.iloc[0]["UA mean of folds (%)"] == pytest.approx(single)
    full = ensemble_table(recs[:6])
    assert t.iloc[2]["UA mean of folds (%)"] == pytest.approx(full.iloc[-1]["ensemble UA (%)"])
    pairs = [ensemble_table([r for r in recs[:6] if r["seed"] in sub]).iloc[-1]["ensemble UA (%)"]
             for sub in combinations((0, 1, 2), 2)]
    assert t.iloc[1]["UA mean of folds (%)"] == pytest.approx(np.mean(pairs))
    assert t.iloc[1]["min over subsets"] == pytest.approx(min(pairs))
    assert t.iloc[1]["max over subsets"] == pytest.approx(max(pairs))
    assert t.iloc[2]["gain over size k-1 (pp)"] == pytest.approx(t.iloc[2]["UA mean of folds (%)"] - np.mean(pairs))
    assert math.isnan(t.iloc[0]["gain over size k-1 (pp)"])
    assert ensemble_size_table(recs, min_seeds=4).empty


def test_run_records_carry_their_test_predictions(tmp_path):
    from serlib.evaluate import classification_metrics
    from serlib.studies import head_fusion as hf

    exp = hf.paper_experiment("synthetic", profile="quick", selection="val", train={"epochs": 1},
                              model_kwargs={"n_head": 1, "n_size": 4})
    rec = hf.run_study([exp], results_dir=tmp_path, backend="serial")[0]
    p = rec["predictions"]
    labels = rec["corpus"]["labels"]
    assert len(p["utt_id"]) == len(p["label"]) == len(p["prob"]) == rec["metrics"]["n"]
    assert all(abs(sum(row) - 1) < 1e-3 and len(row) == len(labels) for row in p["prob"])
    pred = [labels[max(range(len(r)), key=r.__getitem__)] for r in p["prob"]]
    assert classification_metrics(p["label"], pred, labels=labels)["ua"] == pytest.approx(rec["metrics"]["ua"])
    from serlib.experiment import load_experiment_corpus

    table = load_experiment_corpus("synthetic").table.set_index("utt_id")
    assert len(set(p["utt_id"])) == len(p["utt_id"])
    assert list(table.loc[p["utt_id"], "label"]) == p["label"]  # the true label of each utterance, in order
    # and the validation part's, with the same selected weights: its UA is the validation UA the run selected on
    v = rec["val_predictions"]
    assert not set(v["utt_id"]) & set(p["utt_id"]) and list(table.loc[v["utt_id"], "label"]) == v["label"]
    assert len(v["utt_id"]) == rec["counts"]["utterances"]["val"]
    vpred = [labels[max(range(len(r)), key=r.__getitem__)] for r in v["prob"]]
    assert classification_metrics(v["label"], vpred, labels=labels)["ua"] == pytest.approx(rec["metrics"]["val"]["ua"])


def test_speaker_normalised_runs_get_their_own_best_rows_never_the_headline():
    """A speaker-normalised experiment (it used the test speakers' unlabelled speech) better on validation and test
    does not take the inductive rows; it gets rows of its own, named by setting, with the setting in its recipe, and
    a pool never mixes the two."""
    spk_cfg = {"model": "m", "view": "segments", "view_kwargs": {"speaker_norm": True}}
    recs = [rec("plain", f, 0, 0.50, val=0.50) for f in range(3)]
    recs += [{**rec("plain+spknorm", f, 0, 0.70, val=0.70), "config": spk_cfg} for f in range(3)]
    t = compare.best_speaker_independent(recs)
    assert list(t["setting"]) == [compare.INDUCTIVE, compare.TRANSDUCTIVE]
    assert list(t["experiment"]) == ["plain", "plain+spknorm"]
    assert "per-speaker normalisation" in t.iloc[1]["recipe"] and compare.speaker_normalised(recs[3])
    assert not compare.speaker_normalised(recs[0])
    # per-utterance normalisation uses nothing of another utterance: it competes in the inductive setting, named
    utt_cfg = {"model": "m", "view": "segments", "view_kwargs": {"utterance_norm": True}}
    recs += [{**rec("plain+uttnorm", f, 0, 0.60, val=0.60), "config": utt_cfg} for f in range(3)]
    t = compare.best_speaker_independent(recs)
    assert list(t["experiment"]) == ["plain+uttnorm", "plain+spknorm"]
    assert list(t["setting"]) == [compare.INDUCTIVE, compare.TRANSDUCTIVE]
    assert "per-utterance normalisation" in t.iloc[0]["recipe"] and not compare.speaker_normalised(recs[-1])
    # ensembles: a pool naming experiments of both settings is an ensemble of neither
    recs = [_pr(k, f, s, p[s]) for k, p in (("A", _A), ("B", _B)) for f in (0, 1) for s in (0, 1)]
    for r in recs:
        if r["kind"] == "B":
            r["config"] = spk_cfg
    t = compare.best_speaker_independent(recs, pools={"A+B": ["A", "B"]})
    ens = t[t["form"] != "single runs (fold mean over seeds)"].set_index("setting")["experiment"]
    assert ens.to_dict() == {compare.INDUCTIVE: "A", compare.TRANSDUCTIVE: "B"}
    assert compare.best_speaker_independent([]).empty


def test_a_grouped_pool_weighs_each_model_equally_whatever_its_runs():
    """A pool given as {group: experiments} (compare.every_model_pools: one group per study) averages each group's
    mean probabilities, so three runs of one model do not outvote one run of another; a flat pool weighs runs."""
    def rec(kind, seed, fold, prob, study):
        labels = ["a", "b"]
        pred = {"utt_id": ["u1", "u2"], "label": ["a", "b"], "prob": prob}
        return {"kind": kind, "seed": seed, "status": "ok", "corpus": {"name": "ravdess", "labels": labels},
                "identity": {"study": study}, "split": {"protocol": "speaker_independent", "fold": fold},
                "predictions": pred, "val_predictions": pred}

    runs = []
    for fold in (0, 1):
        # model x: three runs, each sure that both utterances are "a"; model y: one run, sure of the truth
        runs += [rec("x_si", s, fold, [[0.9, 0.1], [0.9, 0.1]], "x") for s in range(3)]
        runs += [rec("y_si", 0, fold, [[0.8, 0.2], [0.05, 0.95]], "y")]
    flat = compare._val_ensembles(runs, 2, {"flat": ["x_si", "y_si"]})["flat"]
    grouped = compare._val_ensembles(runs, 2, {"grouped": {"x": ["x_si"], "y": ["y_si"]}})["grouped"]
    assert flat["test"] == [50.0, 50.0]  # u2: (3 x 0.1 + 0.95) / 4 = 0.31 for "b": y is outvoted
    assert grouped["test"] == [100.0, 100.0]  # u2: (0.1 + 0.95) / 2 = 0.525 for "b"
    assert grouped["groups"] == {"x_si": "x", "y_si": "y"} and flat["groups"] is None
    # one group alone is no cross-model pool
    assert "alone" not in compare._val_ensembles(runs, 2, {"alone": {"x": ["x_si", "y_si"]}})
    # a record without an identity belongs to the study that owns its experiment name
    assert compare.study_of({"kind": "head_fusion_speaker_independent__lever-x"}) == "head_fusion"
    assert compare.study_of({"kind": "eca_speaker_independent_cpu__x", "identity": {"study": "eca"}}) == "eca"
