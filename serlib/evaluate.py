"""Metrics, segment -> utterance aggregation, and statistics over runs (scikit-learn / scipy underneath).

Definitions used everywhere in serlib (papers disagree on the names):

* **UA** (unweighted accuracy) = balanced accuracy = the mean of per-class recalls, over the classes present in
  ``y_true`` (a class absent from the test set has no recall and is left out of the mean, as in
  ``sklearn.metrics.balanced_accuracy_score``).
* **WA** (weighted accuracy) = overall accuracy.
* **macro F1** = unweighted mean of per-class F1, over the same classes as UA (present in ``y_true``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import special, stats
from sklearn import metrics as skm

AGGREGATIONS = ("mean_prob", "mean_logit", "vote")


def _np(a) -> np.ndarray:
    """Torch tensors (any device) and array-likes -> numpy."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _as_indices(y, labels: Sequence[str]) -> np.ndarray:
    """Labels given as class names or as integer indices into ``labels`` -> int64 indices."""
    y = _np(y)
    if y.dtype.kind in "iub":
        y = y.astype(np.int64)
        if y.size and (y.min() < 0 or y.max() >= len(labels)):
            raise ValueError(f"class indices must lie in [0, {len(labels)}), got {y.min()}..{y.max()}")
        return y
    index = {lab: k for k, lab in enumerate(labels)}
    unknown = sorted({str(v) for v in y.tolist()} - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} not in {list(labels)}")
    return np.asarray([index[str(v)] for v in y.tolist()], dtype=np.int64)


# ------------------------------------------------------------------------------------------------ metrics
def classification_metrics(y_true, y_pred, *, labels: Sequence[str]) -> dict:
    """UA, WA, macro F1, per-class recall and confusion matrix.

    y_true, y_pred: (N,) class names or integer indices into ``labels`` (numpy, list or torch).
    Returns ``ua``, ``wa``, ``macro_f1``, ``per_class_recall`` {label: recall, None when the class is absent from
    ``y_true``}, ``confusion`` (list of lists, rows = true class, columns = predicted, in ``labels`` order),
    ``labels`` and ``n``.
    """
    labels = list(labels)
    t, p = _as_indices(y_true, labels), _as_indices(y_pred, labels)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} must be 1-D and of equal length")
    if t.size == 0:
        raise ValueError("no samples")
    present = np.unique(t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        ua = skm.balanced_accuracy_score(t, p)
    cm = skm.confusion_matrix(t, p, labels=np.arange(len(labels)))
    rows = cm.sum(axis=1)
    recall = {lab: (float(cm[k, k] / rows[k]) if rows[k] else None) for k, lab in enumerate(labels)}
    return {
        "ua": float(ua),
        "wa": float(skm.accuracy_score(t, p)),
        "macro_f1": float(skm.f1_score(t, p, labels=present, average="macro", zero_division=0)),
        "per_class_recall": recall,
        "confusion": cm.tolist(),
        "labels": labels,
        "n": int(t.size),
    }


# ------------------------------------------------------------------------------------------------ aggregation
def aggregate(logits, groups, *, how: str = "mean_prob") -> tuple[np.ndarray, np.ndarray]:
    """Segment outputs -> one output per group (utterance), as in Head Fusion's utterance-level test.

    logits: (N, C) segment logits; groups: (N,) group id of each segment (torch or numpy).
    how: ``"mean_prob"``: mean of the segments' softmax, returned as its log (so that ``softmax(utt_logits)`` is the
    mean probability); ``"mean_logit"``: mean of the logits; ``"vote"``: fraction of segments whose argmax is each
    class (ties go to the lowest class index under ``argmax``).
    Returns ``(utt_logits (G, C) float64, group_ids (G,))`` with ``group_ids`` sorted ascending.
    """
    z = _np(logits).astype(np.float64)
    g = _np(groups)
    if z.ndim != 2 or g.shape != (z.shape[0],):
        raise ValueError(f"logits must be (N, C) and groups (N,), got {z.shape} and {g.shape}")
    if how not in AGGREGATIONS:
        raise ValueError(f"how={how!r} not in {AGGREGATIONS}")
    group_ids, inverse = np.unique(g, return_inverse=True)
    if how == "mean_prob":
        values = special.softmax(z, axis=1)
    elif how == "mean_logit":
        values = z
    else:
        values = np.eye(z.shape[1])[z.argmax(axis=1)]
    n_groups, n_classes = len(group_ids), z.shape[1]
    inverse = inverse.reshape(-1)
    # one bincount over (group, class) cells: sums per group without a Python loop over groups
    cells = (inverse[:, None] * n_classes + np.arange(n_classes)[None, :]).ravel()
    sums = np.bincount(cells, weights=values.ravel(), minlength=n_groups * n_classes).reshape(n_groups, n_classes)
    out = sums / np.bincount(inverse, minlength=n_groups)[:, None]
    if how == "mean_prob":
        with np.errstate(divide="ignore"):
            out = np.log(out)
    return out, group_ids


def group_labels(y, groups) -> tuple[np.ndarray, np.ndarray]:
    """``(label of each group, group_ids)`` in the order :func:`aggregate` uses; raises if a group mixes labels."""
    y, g = _np(y), _np(groups)
    group_ids, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    y_group = y[first]
    if np.any(y_group[inverse] != y):
        raise ValueError("some groups contain items with different labels")
    return y_group, group_ids


def make_score_fn(labels: Sequence[str], *, how: str = "mean_prob", metric: str = "ua") -> Callable:
    """A :class:`serlib.train.Trainer` ``score_fn``: aggregate per ``data.groups`` (if any), then
    :func:`classification_metrics`; ``score`` is ``metric`` (``"ua"``, ``"wa"`` or ``"macro_f1"``)."""
    labels = list(labels)

    def score_fn(logits, data) -> dict:
        if data.groups is None:
            y, pred = _np(data.y), _np(logits).argmax(axis=1)
        else:
            utt, _ = aggregate(logits, data.groups, how=how)
            y, pred = group_labels(data.y, data.groups)[0], utt.argmax(axis=1)
        m = classification_metrics(y, pred, labels=labels)
        return {"score": m[metric], **m}

    return score_fn


# ------------------------------------------------------------------------------------------------ over runs
def mean_std(values) -> dict:
    """``{"mean", "std", "n"}`` of finite values; ``std`` is the sample standard deviation (ddof=1), NaN for n < 2."""
    v = _np(values).astype(np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    return {
        "mean": float(v.mean()) if n else float("nan"),
        "std": float(v.std(ddof=1)) if n > 1 else float("nan"),
        "n": n,
    }


def summarize_runs(records, metric: str = "ua", *, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, std (ddof=1) and n of ``metric`` over runs, one row per ``by`` group (a single row when None).

    records: a DataFrame from :func:`serlib.records.load_records` or a list of run-record dicts. Records whose
    ``status`` is not ``"ok"`` (failed runs) are never counted.
    """
    if not isinstance(records, pd.DataFrame):
        from serlib.records import flatten_record

        records = pd.DataFrame([flatten_record(r) for r in records if r.get("status", "ok") == "ok"])
    elif "status" in records.columns:
        records = records[records["status"].fillna("ok") == "ok"]
    if metric not in records.columns:
        raise KeyError(f"metric {metric!r} not among the columns {sorted(records.columns)}")
    by = list(by or [])
    if not by:
        return pd.DataFrame([{"metric": metric, **mean_std(records[metric])}])
    rows = [
        {
            **dict(zip(by, key if isinstance(key, tuple) else (key,))),
            "metric": metric,
            **mean_std(part[metric]),
        }
        for key, part in records.groupby(by, sort=True, dropna=False)
    ]
    return pd.DataFrame(rows)


def paired_test(a, b) -> dict:
    """Compare two configurations over the same seeds / folds (``a[i]`` and ``b[i]`` paired).

    Returns ``n``, ``mean_diff`` (mean of a - b), ``std_diff`` (ddof=1), the paired t-test (``t``, ``p_t``;
    scipy ``ttest_rel``) and, when n >= 6, the Wilcoxon signed-rank test (``wilcoxon``, ``p_wilcoxon``; None for
    n < 6, where its smallest two-sided p-value is 2 / 2**n > 0.05, or when every difference is zero). When every
    difference is the same up to rounding (no spread: scipy's t is infinite or undefined, its p 0 or NaN), ``p_t`` is NaN: a t-test
    says nothing about a difference that never varied, so no table shows it as p = 0.
    """
    a, b = _np(a).astype(np.float64).ravel(), _np(b).astype(np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired (same length), got {a.size} and {b.size}")
    n = int(a.size)
    if n < 2:
        raise ValueError("need at least 2 pairs")
    d = a - b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_rel(a, b)
    out = {
        "n": n,
        "mean_diff": float(d.mean()),
        "std_diff": float(d.std(ddof=1)),
        "t": float(t.statistic),
        "p_t": float(t.pvalue) if np.ptp(d) > 1e-9 * max(1.0, float(np.abs(d).max())) else float("nan"),
        "wilcoxon": None,
        "p_wilcoxon": None,
    }
    if n >= 6 and np.any(d != 0):
        w = stats.wilcoxon(a, b)
        out["wilcoxon"], out["p_wilcoxon"] = float(w.statistic), float(w.pvalue)
    return out


__all__ = [
    "AGGREGATIONS",
    "aggregate",
    "classification_metrics",
    "group_labels",
    "make_score_fn",
    "mean_std",
    "paired_test",
    "summarize_runs",
]
