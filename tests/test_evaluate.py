"""Metrics against hand-computed answers; aggregation; statistics over runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import softmax

from serlib.evaluate import (
    aggregate,
    classification_metrics,
    group_labels,
    make_score_fn,
    mean_std,
    paired_test,
    summarize_runs,
)
from serlib.train import ArrayData

LABELS = ["a", "b", "c"]


def test_metrics_hand_computed():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 2, 2, 0]
    m = classification_metrics(y_true, y_pred, labels=LABELS)
    assert m["confusion"] == [[3, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert m["per_class_recall"] == {"a": 0.75, "b": 0.5, "c": 0.5}
    assert m["ua"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert m["wa"] == pytest.approx(5 / 8)
    # F1: a: P 3/4 R 3/4; b: P 1/2 R 1/2; c: P 1/2 R 1/2
    assert m["macro_f1"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert m["n"] == 8 and m["labels"] == LABELS


def test_string_labels_and_torch_inputs_agree_with_indices():
    y_true, y_pred = [0, 1, 2, 2, 1], [0, 2, 2, 2, 1]
    by_idx = classification_metrics(torch.tensor(y_true), np.asarray(y_pred), labels=LABELS)
    by_name = classification_metrics([LABELS[i] for i in y_true], [LABELS[i] for i in y_pred], labels=LABELS)
    assert by_idx == by_name
    with pytest.raises(ValueError):
        classification_metrics(["a", "z"], ["a", "a"], labels=LABELS)


def test_ua_differs_from_wa_when_imbalanced():
    y_true = [0] * 8 + [1] * 2
    m = classification_metrics(y_true, [0] * 10, labels=["maj", "min"])
    assert m["wa"] == pytest.approx(0.8)
    assert m["ua"] == pytest.approx(0.5)
    assert m["per_class_recall"] == {"maj": 1.0, "min": 0.0}


def test_ua_over_classes_present_in_y_true():
    m = classification_metrics([0, 0, 1, 1], [0, 2, 1, 1], labels=LABELS)  # "c" absent from y_true
    assert m["per_class_recall"]["c"] is None
    assert m["ua"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["confusion"][2] == [0, 0, 0]


def test_aggregate_mean_prob_hand_result():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(4.0)]])
    groups = torch.tensor([5, 5, 2])
    utt, gid = aggregate(logits, groups, how="mean_prob")
    assert gid.tolist() == [2, 5]
    # group 2: softmax([0, ln 4]) = [.2, .8]; group 5: mean([.5, .5], [.75, .25]) = [.625, .375]
    np.testing.assert_allclose(softmax(utt, axis=1), [[0.2, 0.8], [0.625, 0.375]], rtol=1e-6)  # float32 in
    np.testing.assert_allclose(np.exp(utt).sum(1), 1.0)

    utt_l, _ = aggregate(logits.numpy(), groups.numpy(), how="mean_logit")
    np.testing.assert_allclose(utt_l, [[0.0, math.log(4.0)], [math.log(3.0) / 2, 0.0]], rtol=1e-6)
    votes, _ = aggregate(logits, groups, how="vote")
    np.testing.assert_allclose(votes, [[0.0, 1.0], [1.0, 0.0]])  # the [0, 0] tie votes for class 0
    with pytest.raises(ValueError):
        aggregate(logits, groups, how="max")


def test_mean_prob_and_mean_logit_can_disagree():
    logits = np.array([[8.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    groups = np.zeros(3, int)
    assert aggregate(logits, groups, how="mean_logit")[0].argmax() == 0  # mean logits [2.67, 1.33]
    assert aggregate(logits, groups, how="mean_prob")[0].argmax() == 1  # mean probs [0.413, 0.587]
    assert aggregate(logits, groups, how="vote")[0].argmax() == 1  # two of three segments say class 1


def test_group_labels_and_score_fn():
    y = torch.tensor([1, 1, 0, 2, 2, 2])
    groups = torch.tensor([3, 3, 1, 7, 7, 7])
    y_g, gid = group_labels(y, groups)
    assert gid.tolist() == [1, 3, 7] and y_g.tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        group_labels(torch.tensor([0, 1]), torch.tensor([0, 0]))

    logits = torch.tensor(
        [[0, 5, 0], [5, 0, 0], [5, 0, 0], [0, 0, 5], [0, 0, 5], [5, 0, 0]], dtype=torch.float
    )
    data = ArrayData(x=torch.zeros(6, 1), y=y, groups=groups)
    m = make_score_fn(LABELS)(
        logits, data
    )  # utterances: 1 -> a (right), 3 -> tie a/b (a, wrong), 7 -> c (right)
    assert m["score"] == m["ua"] == pytest.approx(2 / 3) and m["wa"] == pytest.approx(2 / 3)
    seg = make_score_fn(LABELS, metric="wa")(logits, ArrayData(x=torch.zeros(6, 1), y=y))
    assert seg["score"] == pytest.approx(4 / 6)  # no groups: segment level


def test_mean_std_uses_ddof_1():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    one = mean_std([0.7])
    assert one["n"] == 1 and one["mean"] == 0.7 and math.isnan(one["std"])
    assert mean_std(np.array([1.0, np.nan, 3.0]))["n"] == 2


def test_paired_test_detects_shift_not_noise(rng):
    base = rng.uniform(0.5, 0.7, size=10)
    shifted = paired_test(base + 1.0 + rng.normal(0, 0.05, size=10), base)
    assert shifted["mean_diff"] == pytest.approx(1.0, abs=0.1)
    assert shifted["p_t"] < 1e-6 and shifted["p_wilcoxon"] < 0.01 and shifted["n"] == 10

    noise = rng.permutation(np.array([0.3, -0.3, 0.1, -0.1, 0.2, -0.2, 0.05, -0.05, 0.4, -0.4]))
    flat = paired_test(base + noise, base)
    assert abs(flat["mean_diff"]) < 1e-12 and flat["p_t"] > 0.5 and flat["p_wilcoxon"] > 0.5

    small = paired_test([1.0, 2.0, 3.0], [0.0, 1.5, 2.0])
    assert small["wilcoxon"] is None and small["p_wilcoxon"] is None and small["p_t"] < 0.2
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0])


def test_summarize_runs_by_group():
    df = pd.DataFrame({"ua": [0.5, 0.7, 0.2, 0.4, 0.9], "config.model": ["x", "x", "y", "y", "y"]})
    s = summarize_runs(df, "ua", by=["config.model"])
    assert s["config.model"].tolist() == ["x", "y"]
    np.testing.assert_allclose(s["mean"], [0.6, 0.5])
    np.testing.assert_allclose(s["std"], [np.std([0.5, 0.7], ddof=1), np.std([0.2, 0.4, 0.9], ddof=1)])
    assert s["n"].tolist() == [2, 3]
    one = summarize_runs(df)
    assert len(one) == 1 and one["mean"].iloc[0] == pytest.approx(0.54)
    with pytest.raises(KeyError):
        summarize_runs(df, "wa")


@pytest.mark.parametrize("how", ["mean_prob", "mean_logit", "vote"])
def test_aggregate_equals_per_utterance_loop(how, rng):
    """The index-op pooling (one bincount) gives exactly what a loop over utterances gives, for unsorted, sparse
    group ids and utterances of 1 to 9 segments."""
    ids = rng.choice(10_000, size=40, replace=False)
    groups = np.repeat(ids, rng.integers(1, 10, size=40))
    rng.shuffle(groups)
    logits = rng.normal(size=(len(groups), 6)) * 3
    utt, gid = aggregate(logits, groups, how=how)
    assert np.array_equal(gid, np.sort(ids))
    # bit-identical to the previous implementation (np.add.at over the segments)
    _, inverse = np.unique(groups, return_inverse=True)
    values = {"mean_prob": softmax(logits, axis=1), "mean_logit": logits, "vote": np.eye(6)[logits.argmax(1)]}[how]
    sums = np.zeros((len(gid), 6))
    np.add.at(sums, inverse, values)
    before = sums / np.bincount(inverse)[:, None]
    assert np.array_equal(utt, np.log(before) if how == "mean_prob" else before)
    for row, g in zip(utt, gid):
        z = logits[groups == g]
        if how == "mean_prob":
            ref = np.log(softmax(z, axis=1).mean(axis=0))
        elif how == "mean_logit":
            ref = z.mean(axis=0)
        else:
            ref = np.eye(6)[z.argmax(axis=1)].mean(axis=0)
        np.testing.assert_allclose(row, ref, rtol=1e-12, atol=1e-12)


def test_utterance_scores_use_group_order_and_index_labels():
    """serlib.experiment.utterance_scores: utterance labels taken by index ops in aggregate's group order; a group
    with mixed labels is an error, not silently the last label."""
    from serlib.experiment import utterance_scores

    labels = ("a", "b", "c")
    groups = torch.tensor([7, 3, 7, 3, 11])
    y = torch.tensor([2, 0, 2, 0, 1])
    logits = torch.tensor([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    data = ArrayData(x=torch.zeros(5, 1), y=y, groups=groups)
    out = utterance_scores(labels)(logits, data)
    assert out["wa"] == pytest.approx(2 / 3) and out["ua"] == pytest.approx(2 / 3)
    bad = ArrayData(x=torch.zeros(5, 1), y=torch.tensor([2, 0, 1, 0, 1]), groups=groups)
    with pytest.raises(ValueError, match="different labels"):
        utterance_scores(labels)(logits, bad)


def test_paired_test_gives_no_p_value_to_differences_without_spread():
    """Two pairs with the same difference: scipy's t is infinite (p = 0); that is no evidence, so p_t is NaN."""
    out = paired_test([50.0, 45.0], [41.0, 36.0])
    assert out["mean_diff"] == 9.0 and out["std_diff"] == 0.0
    assert np.isnan(out["p_t"])
    assert np.isnan(paired_test([0.3 + 0.1, 0.7], [0.1, 0.4])["p_t"])  # 0.3 twice, up to float rounding
    assert not np.isnan(paired_test([50.0, 46.0], [41.0, 36.0])["p_t"])
