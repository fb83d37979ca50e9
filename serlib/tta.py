"""Test-time speed perturbation (issue 16): a finished ``segments`` run evaluated again on its own test utterances
played at several speeds, the utterance probabilities averaged over the speeds.

``python -m serlib tta RECORD... [--factors 0.9 1.0 1.1] [--checkpoints ROOT] [--results results]`` loads each
run's model with its selected (validation-selected) weights from the checkpoint the run kept
(:func:`serlib.predict.load_run`), rebuilds the run's clean validation and test parts exactly as the run did
(:func:`serlib.experiment.build_views`: same split, same short-utterance policy, same skips), adds a copy of each
part per factor (:class:`serlib.speed_perturb.SpeedCorpus`: every utterance played ``factor`` times faster, windows at
the run's test step), normalises every copy with the run's saved training statistics, and per utterance averages
the per-factor probabilities (each factor's probability is the run's own segment aggregate, e.g. the mean of the
segments' softmax). Nothing is trained and nothing is selected on the test set: the factors are fixed before.

Before anything is written the clean copy must reproduce the run: its test utterances and probabilities must equal
the run record's ``predictions`` (to the record's rounding), else :class:`ValueError` says the checkpoint is not the
record's model. The result is a run record of its own, kind ``<run kind>+tta`` and arm ``<run arm>+tta`` (so the
levers table pairs it with the run it re-evaluates, seed by seed and fold by fold, and seed ensembles and the best
speaker-independent rows count it like any experiment), written beside the run's experiment folder, with

* ``config``: the run's, renamed, plus ``tta: {"factors": [...]}``;
* ``metrics``: test UA / WA / macro-F1 with the averaged probabilities; ``clean`` (the checkpoint's clean test
  figures, equal to the run's), ``val`` / ``val_clean`` (the same on the validation part: the evidence a researcher
  may use to adopt test-time perturbation without looking at the test set) and ``per_factor`` test UA;
* ``predictions`` / ``val_predictions``: the averaged per-utterance test / validation probabilities;
* ``extra.tta_source``: the run record's path, config hash and git revision; ``git``: this evaluation's revision;
* ``counts.tta``: per factor and part, the utterances evaluated and those the copy could not give (no window or
  non-finite features after the speed change: such an utterance averages the factors it has, listed in ``skips``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from serlib import speaker_norm

__all__ = ["DEFAULT_TTA_FACTORS", "backfill_val_predictions", "speed_tta", "tta_config", "tta_experiment", "tta_table",
           "write_tta_records"]

DEFAULT_TTA_FACTORS: tuple[float, ...] = (0.9, 1.0, 1.1)
SUFFIX = "+tta"
PROB_TOL = 2e-3  # the record's probabilities are rounded to 4 digits; the rest is summation order


def tta_experiment(exp):
    """The experiment a TTA record of a run of ``exp`` belongs to: its name and arm with :data:`SUFFIX`."""
    return exp.replace(name=exp.name + SUFFIX, arm=(exp.arm or "") + SUFFIX)


def tta_config(texp, factors: Sequence[float]) -> dict:
    """The config of a TTA record of :func:`tta_experiment` ``texp``: the experiment's plus ``tta.factors`` (part of
    the record path's hash, so TTA records with other factors do not overwrite each other)."""
    return {**texp.to_dict(), "tta": {"factors": [float(f) for f in factors]}}


@torch.no_grad()
def _utterance_probs(model, data, how: str, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(rows (G,), probs (G, C))`` of ``data`` (an ArrayData of segments) under ``model`` (eval mode)."""
    from scipy.special import softmax

    from serlib.evaluate import aggregate

    logits = []
    for s in range(0, len(data.x), batch):
        out = model(data.x[s: s + batch])
        logits.append((out[0] if isinstance(out, tuple) else out).float())
    z, rows = aggregate(torch.cat(logits), data.groups, how=how)
    return rows, (z if how == "vote" else softmax(z, axis=1))


def _copy(exp, corpus, part, factor: float, mean, std):
    """Part ``part`` (clean ArrayData, unnormalised) played ``factor`` times faster, normalised; and the rows of
    ``part`` the copy could not give, with their reasons (:func:`serlib.speed_perturb.speed_copy`)."""
    from serlib.speed_perturb import speed_copy
    from serlib.train import ArrayData

    if factor == 1.0:
        x, g, missing = part.x, part.groups, {}
    else:
        x, g, missing = speed_copy(exp, corpus, np.unique(part.groups.numpy()), factor, part="test")
    x = x if mean is None else (x - mean) / std
    return ArrayData(x=x, y=torch.zeros(len(g), dtype=torch.long), lengths=None, groups=g), missing


def _evaluate(run, exp, corpus, part, grid, mean, std):
    """Per factor of ``grid``: the utterance probabilities of ``part`` ({row: (C,)}) and the rows the copy lacks."""
    per, missing = {}, {}
    for f in grid:
        data, missing[f] = _copy(exp, corpus, part, f, mean, std)
        rows, prob = _utterance_probs(run.model, data, exp.aggregate)
        per[f] = dict(zip(rows.tolist(), prob))
    return np.unique(part.groups.numpy()), per, missing


def _average(per: dict, rows: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """(G, C): per row the mean of the probabilities of the factors that have it (the clean copy has every row)."""
    return np.stack([np.mean([per[f][int(r)] for f in factors if int(r) in per[f]], axis=0) for r in rows])


def speed_tta(model: str | Path, factors: Sequence[float] = DEFAULT_TTA_FACTORS, *,
              checkpoints: str | Path | None = None, data_root: str | Path | None = None) -> dict:
    """The TTA record of one run (see the module docstring); ``model`` is the run's record JSON (inside its results
    folder) or its checkpoint folder. ``data_root`` replaces the run's data root (the audio must be the same)."""
    from serlib.evaluate import classification_metrics
    from serlib.experiment import build_views, corpus_source, identity_of, load_experiment_corpus
    from serlib.predict import load_run
    from serlib.records import code_revision, config_hash, make_record
    from serlib.speed_perturb import view_factors
    from serlib.studies.common import split_for

    t0 = time.perf_counter()
    factors = tuple(float(f) for f in factors)
    view_factors({"factors": factors})  # each in range, the perturbed ones distinct
    run = load_run(model, checkpoints)
    src = run.record
    exp = run.exp if data_root is None else run.exp.replace(data_root=str(data_root))
    speaker_norm.refuse(exp, "test-time speed perturbation")
    if exp.view not in ("segments", "speed_segments"):
        raise ValueError(f"{model}: test-time speed perturbation needs a segments run, this one has view {exp.view!r}")
    if not src.get("predictions"):
        raise ValueError(f"{model}: the run record has no test predictions to check the checkpoint against; rerun it")
    corpus = load_experiment_corpus(exp.corpus, exp.data_root, **exp.corpus_kwargs)
    want = (src.get("corpus") or {}).get("content_hash")
    if want and want != corpus.content_hash():
        raise ValueError(f"{model}: the audio under {exp.data_root} is not what the run was trained and tested on "
                         f"(content hash {corpus.content_hash()} != the record's {want}); point --data-root at the "
                         "run's copy of the corpus")
    split = split_for(exp, corpus, int(src["split"]["fold"]))
    clean = build_views(exp.replace(view="segments", view_kwargs={}, normalize=False), corpus, split)
    mean, std = run.normalizer["x"] if "x" in run.normalizer else (None, None)
    labels = run.labels
    ids = corpus.table["utt_id"].to_numpy()

    grid = factors if 1.0 in factors else (*factors, 1.0)  # the clean copy always: it checks the checkpoint
    rows, per, missing = _evaluate(run, exp, corpus, clean.test, grid, mean, std)
    avg, clean_prob = _average(per, rows, factors), _average(per, rows, (1.0,))
    got = [str(u) for u in ids[rows]]
    if got != list(src["predictions"]["utt_id"]) or \
            np.abs(clean_prob - np.asarray(src["predictions"]["prob"], float)).max() > PROB_TOL:
        raise ValueError(f"{model}: the checkpoint does not reproduce its record's test predictions (different "
                         "utterances or probabilities); it is not this run's model")
    y_true = [labels[i] for i in np.asarray(corpus.y)[rows]]

    def metrics_of(prob):
        return classification_metrics(y_true, [labels[i] for i in prob.argmax(1)], labels=list(labels))

    metrics = metrics_of(avg)
    metrics["clean"] = {k: metrics_of(clean_prob)[k] for k in ("ua", "wa", "macro_f1")}
    # each factor alone, where its copy has every test utterance
    metrics["per_factor"] = {f"{f:g}": metrics_of(_average(per, rows, (f,)))["ua"] if len(per[f]) == len(rows)
                             else None for f in grid}
    counts = {"tta": {"factors": list(factors), "test": {f"{f:g}": {"utterances": len(per[f]),
                                                                     "missing": len(missing[f])} for f in grid}}}
    skips = [{"path": str(corpus.table.at[i, "path"]), "reason": f"{why} ({f:g}x; test copy only)", "stage": "tta"}
             for f in grid for i, why in sorted(missing[f].items())]
    if clean.val is not None:
        v_rows, v_per, v_missing = _evaluate(run, exp, corpus, clean.val, grid, mean, std)
        v_avg = _average(v_per, v_rows, factors)
        v_true = [labels[i] for i in np.asarray(corpus.y)[v_rows]]
        vm = lambda p: classification_metrics(v_true, [labels[i] for i in p.argmax(1)], labels=list(labels))  # noqa: E731
        metrics["val"] = {k: vm(v_avg)[k] for k in ("ua", "wa", "macro_f1")}
        metrics["val_clean"] = {k: vm(_average(v_per, v_rows, (1.0,)))[k] for k in ("ua", "wa", "macro_f1")}
        counts["tta"]["val"] = {f"{f:g}": {"utterances": len(v_per[f]), "missing": len(v_missing[f])} for f in grid}

    texp = tta_experiment(run.exp)
    cfg = {**tta_config(texp, factors),
           "model_resolved": src["config"].get("model_resolved"), "train_resolved": src["config"].get("train_resolved")}
    record = make_record(
        kind=texp.name, config=cfg, seed=int(src["seed"]),
        corpus={**src["corpus"], **corpus_source(exp)}, split=split.to_dict(), metrics=metrics,
        history=[], counts={**(src.get("counts") or {}), **counts},
        timings={"tta_s": time.perf_counter() - t0, "source": src.get("timings")},
        selection=src.get("selection", "val"),
        extra={**{k: v for k, v in (src.get("extra") or {}).items() if k != "val_predictions_backfill"},
               "tta_source": {"record": str(model), "config_hash": src.get("config_hash")
                              or config_hash(src["config"]), "git": src.get("git")}},
        identity=identity_of(texp), skips=skips, flags=list(src.get("flags") or []), git=code_revision())
    from serlib.experiment import test_predictions

    record["predictions"] = test_predictions(np.log(np.clip(avg, 1e-12, None)), ids[rows], y_true, "mean_prob")
    if clean.val is not None:  # what an ensemble of TTA runs is chosen on
        record["val_predictions"] = test_predictions(np.log(np.clip(v_avg, 1e-12, None)), ids[v_rows], v_true,
                                                     "mean_prob")
    return record


def write_tta_records(run_paths: Iterable[str | Path], factors: Sequence[float] = DEFAULT_TTA_FACTORS, *,
                      results_dir: str | Path = "results", checkpoints: str | Path | None = None,
                      data_root: str | Path | None = None, rerun: bool = False) -> list[Path]:
    """:func:`speed_tta` for each run record file, written where a run of :func:`tta_experiment` with
    :func:`tta_config` goes (:func:`serlib.experiment.record_path_of` of the record); existing TTA records are kept
    unless ``rerun``. Returns the paths written."""
    from serlib.experiment import run_config
    from serlib.records import record_path, store_split, write_record
    from serlib.report import is_ok
    from serlib.studies.common import corpus_for, experiment_from_dict

    written = []
    for p in map(Path, run_paths):
        src = _read_run_record(p)
        if not is_ok(src) or str(src.get("kind", "")).endswith(SUFFIX):
            print(f"{p}: not a successful training run record; skipped")
            continue
        exp = experiment_from_dict({k: v for k, v in src["config"].items()
                                    if not k.endswith("_resolved") and k != "tta"})
        texp = tta_experiment(exp)  # the run's own config (data root included), as speed_tta records it
        corpus = corpus_for(exp if data_root is None else exp.replace(data_root=str(data_root)))
        out = record_path(results_dir, texp.name, {"corpus": corpus.name, "protocol": exp.protocol,
                                                   "config": run_config(tta_config(texp, factors)),
                                                   "seed": int(src["seed"]), "fold": int(src["split"]["fold"])})
        if out.exists() and not rerun:
            continue
        rec = speed_tta(p, factors, checkpoints=checkpoints, data_root=data_root)
        write_record(store_split(rec, results_dir), out)
        written.append(out)
        print(f"wrote {out}: test UA {100 * rec['metrics']['ua']:.1f} (clean {100 * rec['metrics']['clean']['ua']:.1f})"
              f" in {rec['timings']['tta_s']:.0f} s", flush=True)
    return written


def _read_run_record(p: Path) -> dict:
    """The JSON of run record ``p``; ``ValueError`` naming the file when it is not one."""
    try:
        src = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not JSON ({exc}); pass the JSON record a training run wrote under results/") from None
    if not isinstance(src, dict) or not isinstance(src.get("config"), dict) or "split" not in src:
        raise ValueError(f"{p}: not a serlib run record (no config or split); pass the JSON record a training "
                         "run wrote under results/")
    return src


def backfill_val_predictions(run_paths: Iterable[str | Path], *, checkpoints: str | Path | None = None,
                             data_root: str | Path | None = None) -> list[Path]:
    """Add ``val_predictions`` to run records written before runs recorded them (what a seed or model ensemble is
    chosen on without the test set), from each run's checkpoint, in place. For each record without them:
    :func:`speed_tta` with the clean factor alone evaluates the checkpoint's selected weights on the run's own
    validation and test parts; the record is rewritten only when those weights reproduce both what the run recorded,
    the test predictions (:data:`PROB_TOL`) and the validation UA it was selected on (to the record's 6 digits), else
    that file is left unwritten and its error (naming it) is collected; the others go on, and when any failed a
    ``ValueError`` lists them at the end. Nothing else in the record changes; ``extra.
    val_predictions_backfill`` says when, at which git revision and with which checks; the file keeps its key order
    and layout, so its diff is the two additions. Records that have them, failed runs and TTA records are left
    alone. Returns the paths rewritten."""
    written, failed = [], []
    for p in map(Path, run_paths):
        try:
            out = _backfill_one(p, checkpoints, data_root)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            failed.append(p)
            continue
        if out is not None:
            written.append(out)
    if failed:
        raise ValueError(f"{len(failed)} of {len(failed) + len(written)} records not given validation predictions "
                         f"({', '.join(map(str, failed))}); {len(written)} were")
    return written


def _backfill_one(p: Path, checkpoints, data_root) -> Path | None:
    """:func:`backfill_val_predictions` for one record: its path when rewritten, None when left alone."""
    from datetime import datetime, timezone

    from serlib.evaluate import classification_metrics
    from serlib.records import code_revision, to_jsonable, write_text_atomic
    from serlib.report import is_ok

    src = _read_run_record(p)
    if not is_ok(src) or str(src.get("kind", "")).endswith(SUFFIX) or src.get("val_predictions"):
        print(f"{p}: {'has validation predictions' if src.get('val_predictions') else 'not a successful run'}"
              "; left alone")
        return None
    if not (src.get("metrics") or {}).get("val"):
        raise ValueError(f"{p}: the run has no validation part to predict")
    rec = speed_tta(p, (1.0,), checkpoints=checkpoints, data_root=data_root)  # refuses another model
    vp = rec.get("val_predictions")
    labels = list(src["corpus"]["labels"])
    ua = classification_metrics(vp["label"], [labels[int(np.argmax(q))] for q in vp["prob"]], labels=labels)["ua"]
    if abs(ua - float(src["metrics"]["val"]["ua"])) > 1e-6:
        raise ValueError(f"{p}: the checkpoint's validation UA {ua:.6f} is not the {src['metrics']['val']['ua']} "
                         "the run was selected on; its checkpoint holds other weights, nothing written")
    src["val_predictions"] = vp
    src.setdefault("extra", {})["val_predictions_backfill"] = {
        "git": code_revision(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checks": "the checkpoint's selected weights reproduced the record's test predictions and its validation UA"}
    text = json.dumps(to_jsonable(src, rounded=True), indent=1, allow_nan=False)
    write_text_atomic(p, text + ("\n" if p.read_text().endswith("\n") else ""))
    print(f"{p}: validation predictions added ({len(vp['utt_id'])} utterances, val UA {100 * ua:.1f})", flush=True)
    return p


def tta_table(records: Iterable[dict]):
    """A ``pandas.DataFrame``, per TTA arm and corpus: the runs, their mean validation and test UA (%) clean and with test-time speed
    perturbation, the gains, and the paired t-test of each gain over the runs (:func:`serlib.evaluate.paired_test`)
    with the runs where it helped. The validation columns are the evidence for adopting it; the test ones, what it
    did."""
    import pandas as pd

    from serlib.evaluate import paired_test

    rows = []
    recs = [r for r in records if isinstance(r, dict) and str(r.get("kind", "")).endswith(SUFFIX)
            and r.get("status", "ok") == "ok" and "val" in r.get("metrics", {})]
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault(((r.get("identity") or {}).get("arm") or r["kind"], r["corpus"]["name"]), []).append(r)
    for (arm, corpus), rs in sorted(groups.items()):
        val, val0 = (100 * np.array([r["metrics"][k]["ua"] for r in rs]) for k in ("val", "val_clean"))
        test, test0 = 100 * np.array([r["metrics"]["ua"] for r in rs]), 100 * np.array([r["metrics"]["clean"]["ua"]
                                                                                       for r in rs])
        pv = paired_test(val, val0)["p_t"] if len(rs) >= 2 else float("nan")
        pt = paired_test(test, test0)["p_t"] if len(rs) >= 2 else float("nan")
        rows.append({"arm": arm.removeprefix("lever-"), "corpus": corpus, "runs": len(rs),
                     "val UA clean (%)": val0.mean(), "val UA tta (%)": val.mean(),
                     "val gain (pp)": (val - val0).mean(), "val p": pv, "val helped in": f"{(val > val0).sum()}/{len(rs)}",
                     "test UA clean (%)": test0.mean(), "test UA tta (%)": test.mean(),
                     "test gain (pp)": (test - test0).mean(), "test p": pt,
                     "test helped in": f"{(test > test0).sum()}/{len(rs)}"})
    return pd.DataFrame(rows)
