"""Every study's models side by side on the same splits (ours, not any paper's).

The speaker-independent protocol gives every model of every study the same folds of the same corpus (split seed,
corpus fingerprint and test speakers are in each run record). :func:`fold_table` summarises one experiment per
fold; :func:`same_split_table` puts every experiment's test UA per fold next to each other and
:func:`same_split_tests` pairs them fold by fold. Seeds are averaged within a fold first, so a model with more
seeds on one fold does not weigh that fold more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from serlib import speaker_norm
from serlib.evaluate import paired_test


def _split_identity(r: dict) -> tuple:
    s, meta = r["split"], r["split"].get("meta", {})
    return (r["corpus"]["name"], meta.get("fingerprint"), s.get("seed"), tuple(meta.get("test_speakers", ())))


def fold_means(records: Iterable[dict], *, protocol: str = "speaker_independent", metric: str = "ua",
               corpus: str | None = None) -> pd.DataFrame:
    """Mean ``metric`` (in %) over seeds per experiment (rows) and fold (columns) for the successful runs of
    ``protocol``; a frame attribute ``n_runs`` counts the runs per experiment.

    Raises ``ValueError`` naming the experiments when two records of the same fold disagree on the split (corpus,
    fingerprint, split seed or test speakers): their numbers would not be comparable."""
    rows, ident = [], {}
    for r in records:
        if not isinstance(r, dict) or r.get("status", "ok") != "ok" or "metrics" not in r:
            continue
        if r["split"].get("protocol") != protocol or (corpus and r["corpus"]["name"] != corpus):
            continue
        fold, key = int(r["split"]["fold"]), _split_identity(r)
        if ident.setdefault(fold, (key, r["kind"]))[0] != key:
            raise ValueError(f"fold {fold}: {r['kind']} and {ident[fold][1]} were run on different splits "
                             f"({key} vs {ident[fold][0]})")
        rows.append({"experiment": r["kind"], "fold": fold, "value": 100 * float(r["metrics"][metric])})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    table = df.pivot_table(index="experiment", columns="fold", values="value", aggfunc="mean")
    table.attrs["n_runs"] = df.groupby("experiment").size().to_dict()
    return table


def same_split_table(records: Iterable[dict], **kwargs) -> pd.DataFrame:
    """:func:`fold_means` with, per experiment, the mean of its fold means, their std over folds (ddof 1), the
    folds and runs it has."""
    t = fold_means(records, **kwargs)
    if t.empty:
        return t
    out = t.copy()
    out.columns = [f"fold {c}" for c in t.columns]
    out["mean of folds"] = t.mean(axis=1)
    out["std over folds"] = t.std(axis=1, ddof=1)
    out["n folds"] = t.notna().sum(axis=1)
    out["n runs"] = [t.attrs["n_runs"][e] for e in t.index]
    return out.reset_index()


SI_GOAL_UA = 60.0  # issue 16: the from-scratch speaker-independent goal over the six RAVDESS actor folds


def recipe(record: dict) -> str:
    """A run's recipe in one line, from its record's config: model and its settings, features / view, training."""
    c = record.get("config") or {}
    mk = ", ".join(f"{k}={v}" for k, v in sorted((c.get("model_kwargs") or {}).items()))
    tr = c.get("train_resolved") or c.get("train") or {}
    train = ", ".join(f"{k}={tr[k]}" for k in ("epochs", "batch_size", "lr", "select") if k in tr)
    train += "".join(f", {k}={v}" for k, v in sorted(tr.items()) if k.startswith(("specaug_", "mixup_")) and v
                     and not k.endswith("_axis"))
    aug = c.get("augment_features") or []
    factors = (c.get("view_kwargs") or {}).get("factors")
    view = f"{c.get('view')}" + (f"(factors={factors})" if factors else "")
    lvl = speaker_norm.level(c.get("view_kwargs"))
    if lvl:
        view += f", per-{lvl} normalisation"
    tta = (c.get("tta") or {}).get("factors")
    return (f"{c.get('model')}({mk}); features {c.get('features')}, view {view}"
            + (f", augment {aug}" if aug else "") + f"; train {train}"
            + (f"; test-time speed factors {tta} (probabilities averaged)" if tta else ""))


def validation_means(records: Iterable[dict], *, corpus: str | None = "ravdess",
                     protocol: str = "speaker_independent") -> pd.Series:
    """Per experiment, the mean over folds of its runs' validation UA (%, fold means over seeds): what
    :func:`best_speaker_independent` selects on. Only experiments whose every run of ``protocol`` recorded a
    validation UA (``metrics.val.ua``) get a value."""
    recs = [r for r in records if isinstance(r, dict) and r.get("status", "ok") == "ok" and "metrics" in r
            and r["split"].get("protocol") == protocol and (not corpus or r["corpus"]["name"] == corpus)]
    has = [{**r, "metrics": {"ua": r["metrics"]["val"]["ua"]}} for r in recs
           if isinstance(r["metrics"].get("val"), dict) and r["metrics"]["val"].get("ua") is not None]
    n_all = pd.Series([r["kind"] for r in recs]).value_counts()
    n_val = pd.Series([r["kind"] for r in has], dtype=object).value_counts()
    t = fold_means(has, protocol=protocol, corpus=corpus)
    if t.empty:
        return pd.Series(dtype=float)
    complete = [e for e in t.index if n_val.get(e, 0) == n_all.get(e, -1)]
    return t.loc[complete].mean(axis=1)


VAL_TIE_PP = 1e-3  # validation means closer than this (points) are a tie: records round UAs to 6 digits


def _val_choice(val: pd.Series, n_runs: dict | None = None) -> str:
    """The experiment with the highest validation mean; a tie (within :data:`VAL_TIE_PP`) goes to the simpler
    recipe, the name with fewer ``+`` levers, then to the one whose validation figure rests on more runs
    (``n_runs``), then the first by name; never to whichever the test set favours."""
    top = val.max()
    tied = [e for e in val.index if val[e] >= top - VAL_TIE_PP]
    return min(tied, key=lambda e: (str(e).count("+"), -int((n_runs or {}).get(e, 0)), str(e)))


Pools = dict[str, "Sequence[str] | dict[str, Sequence[str]]"]


def pool_members(members) -> list[str]:
    """The experiments of a pool: a list of them (their runs weighted equally), or ``{group: [experiments]}`` (each
    group weighted equally, its runs equally within it)."""
    return [m for ms in members.values() for m in ms] if isinstance(members, dict) else list(members)


def _val_ensembles(records: list[dict], n_all: int, pools: Pools) -> dict[str, dict]:
    """The ensembles that can be chosen on their own validation UA: per experiment, and per pool of experiments
    (``pools``: name -> experiment names, their runs pooled per fold, or name -> {group: experiment names}, each
    group's mean probabilities weighted equally, :func:`pool_members`), the runs that recorded both test and
    validation predictions, where every one of the ``n_all`` folds has at least two. Per candidate: its test and
    validation ensemble UA per fold (:func:`_ensemble_ua`), its runs, whether it is a pool and its groups."""
    by: dict[str, dict[int, list[dict]]] = {}
    for r in records:
        if r.get("status", "ok") == "ok" and r.get("predictions") and r.get("val_predictions") and \
                r["split"].get("protocol") == "speaker_independent":
            by.setdefault(r["kind"], {}).setdefault(int(r["split"]["fold"]), []).append(r)
    cands = {name: (folds, False, None) for name, folds in by.items()}
    for name, members in pools.items():
        flat = pool_members(members)
        groups = {m: g for g, ms in members.items() for m in ms} if isinstance(members, dict) else None
        folds: dict[int, list[dict]] = {}
        for m in flat:
            for f, runs in by.get(m, {}).items():
                folds.setdefault(f, []).extend(runs)
        present = {m for m in flat if m in by}
        if len(present) >= 2 and (groups is None or len({groups[m] for m in present}) >= 2):
            cands[name] = (folds, True, groups)
    out = {}
    for name, (folds, pooled, groups) in cands.items():
        if len(folds) != n_all or any(len(runs) < 2 for runs in folds.values()):
            continue
        out[name] = {"pool": pooled, "groups": groups, "runs": [r for f in sorted(folds) for r in folds[f]],
                     "test": [_ensemble_ua(folds[f], f"{name} fold {f}", groups=groups) for f in sorted(folds)],
                     "val": [_ensemble_ua(folds[f], f"{name} fold {f} (validation)", "val_predictions", groups=groups)
                             for f in sorted(folds)]}
    return out


INDUCTIVE = "inductive (training speakers' data only)"
TRANSDUCTIVE = "per-speaker normalisation (uses the test speakers' unlabelled speech)"


def speaker_normalised(record: dict) -> bool:
    """Whether a run standardised each speaker's inputs with that speaker's statistics (:mod:`serlib.speaker_norm`),
    which uses the test speakers' unlabelled speech (per-utterance normalisation does not: it is inductive)."""
    return speaker_norm.transductive(record)


def speed_perturbed_kinds(records: Iterable[dict]) -> dict[bool, set[str]]:
    """The speaker-independent experiments of ``records`` that train on speed-perturbed copies
    (:func:`serlib.speed_perturb.speed_trained`: a speed view with a factor other than 1; the unperturbed control is
    not one), leaving out test-time perturbation records, keyed by whether they are speaker-normalised."""
    from serlib.speed_perturb import speed_trained

    kinds: dict[bool, set[str]] = {False: set(), True: set()}
    for r in records:
        c = r.get("config") or {}
        if ((r.get("split") or {}).get("protocol") == "speaker_independent" and speed_trained(c)
                and not (c.get("tta") or str(r["kind"]).endswith("+tta"))):
            kinds[speaker_normalised(r)].add(r["kind"])
    return kinds


EVERY_MODEL_SPEED_POOL = "every_model_speaker_independent__pool-speed_perturbed"


def study_of(record: dict) -> str:
    """The study a record belongs to: its identity's ``study``, else the registered study that owns it (by its
    experiment name's prefix), else its experiment name."""
    from serlib.studies.base import all_studies

    named = (record.get("identity") or {}).get("study")
    if named:
        return named
    return next((s.name for s in all_studies().values() if s.owns(record)), str(record["kind"]))


def every_model_pools(records: Iterable[dict]) -> dict[str, dict[str, list[str]]]:
    """Pools across studies: :data:`EVERY_MODEL_SPEED_POOL`, every speed-perturbed experiment of ``records``
    (:func:`speed_perturbed_kinds`, inductive ones; ``+spknorm`` for the speaker-normalised ones, never mixed), when
    its experiments come from at least two studies (a one-study pool is that study's own, e.g. Head Fusion's),
    grouped by study: each model weighs the same in the ensemble, whatever its number of runs (the mean over
    studies of the mean probabilities of each study's runs on the fold), so that a study with many runs does not
    drown a model that errs differently. No weight is tuned."""
    records = list(records)
    study = {r["kind"]: study_of(r) for r in records}
    out = {}
    for spk, kinds in speed_perturbed_kinds(records).items():
        groups: dict[str, list[str]] = {}
        for k in sorted(kinds):
            groups.setdefault(study[k], []).append(k)
        if len(groups) >= 2:
            out[EVERY_MODEL_SPEED_POOL + ("+spknorm" if spk else "")] = dict(sorted(groups.items()))
    return out


def best_speaker_independent(records: Iterable[dict], *, corpus: str | None = "ravdess",
                             goal: float = SI_GOAL_UA, pools: Pools | None = None) -> pd.DataFrame:
    """The best speaker-independent results (:func:`_best_of`), chosen separately, with their ``setting``, among
    the inductive experiments (the headline) and among the speaker-normalised ones, whose test speakers' unlabelled
    speech was used: the two are never compared with or pooled into each other."""
    records = [r for r in records if isinstance(r, dict)]
    out = []
    for setting, spk in ((INDUCTIVE, False), (TRANSDUCTIVE, True)):
        t = _best_of([r for r in records if speaker_normalised(r) == spk], corpus=corpus, goal=goal, pools=pools)
        if not t.empty:
            t.insert(0, "setting", setting)
            out.append(t)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _best_of(records: list[dict], *, corpus: str | None = "ravdess",
             goal: float = SI_GOAL_UA, pools: Pools | None = None) -> pd.DataFrame:
    """The best speaker-independent result among experiments that have every fold of the protocol, chosen on the
    validation folds (never on the test set), in up to two rows.

    * Single runs: the experiment whose runs have the highest mean validation UA over folds
      (:func:`validation_means`; a tie goes to the simpler recipe), with its test UA (fold means over seeds).
    * Ensembles (the runs' per-utterance probabilities averaged, :func:`_ensemble_ua`): each experiment's runs, and
      each pool of ``pools`` (name -> experiments whose runs are pooled per fold), ensembled over the runs that
      recorded ``val_predictions`` (at least two on every fold); the one whose ensemble has the highest validation
      UA, with its ensemble's test UA (``chosen by`` says how many ensembles were compared, and how many experiments
      could not be, their runs lacking validation predictions). This needs the experiment whose runs lead on
      validation (the highest mean validation UA among those with a seed ensemble on every fold,
      :func:`ensemble_table`) to be among them; else, or when no ensemble has them, that experiment is the row, chosen
      on its runs' mean validation UA: an experiment is never passed over only because it predates validation
      predictions.

    Each row: its form, test UA, std over folds, the validation UA it was chosen on and which one (``chosen by``),
    folds, runs, seeds, recipe (a pool's: its experiments), and whether it meets ``goal``. Empty when no experiment
    has every fold and validation UAs."""
    records = [r for r in records if isinstance(r, dict)]
    t = same_split_table(records, corpus=corpus)
    if t.empty:
        return t
    n_all = max([int(r["split"].get("meta", {}).get("n_folds") or 0) for r in records if "split" in r]
                + [sum(c.startswith("fold ") for c in t.columns)])  # the protocol's folds (the records say)
    val = validation_means(records, corpus=corpus)
    full = t[(t["n folds"] == n_all) & t["experiment"].isin(val.index)].set_index("experiment")
    if full.empty:
        return pd.DataFrame()

    def row(form: str, name: str, ua: float, std: float, n_folds: int, runs: list[dict], on: float, by: str,
            how: str) -> dict:
        return {"form": form, "experiment": name, "UA mean of folds (%)": ua, "std over folds": std,
                "chosen on: val UA (%)": on, "chosen by": by, "n folds": n_folds, "n runs": len(runs),
                "seeds": " ".join(map(str, sorted({int(r["seed"]) for r in runs}))),
                f"goal >= {goal:g}": bool(ua >= goal), "recipe": how}

    def runs_of(name: str) -> list[dict]:
        return [r for r in records if r.get("kind") == name and r.get("status", "ok") == "ok"
                and r["split"].get("protocol") == "speaker_independent"]

    best = _val_choice(val[full.index], full["n runs"].to_dict())
    rows = [row("single runs (fold mean over seeds)", best, full.at[best, "mean of folds"],
                full.at[best, "std over folds"], int(full.at[best, "n folds"]), runs_of(best), float(val[best]),
                "its runs' mean val UA", recipe(runs_of(best)[0]))]
    mine = [r for r in records if corpus is None or (r.get("corpus") or {}).get("name") == corpus]
    ens = ensemble_table(mine)
    lead = None  # the experiment with a seed ensemble on every fold whose runs lead on validation
    if not ens.empty:
        per = ens[ens["fold"] != "mean of folds"]
        stats_ = per.groupby("experiment").agg(n=("fold", "nunique"), ua=("ensemble UA (%)", "mean"),
                                               std=("ensemble UA (%)", "std"))
        stats_ = stats_[(stats_["n"] == n_all) & stats_.index.isin(val.index)]
        lead = _val_choice(val[stats_.index], full["n runs"].to_dict()) if not stats_.empty else None
    own = _val_ensembles(mine, n_all, dict(pools or {}))
    if own and (lead is None or lead in own):
        on = pd.Series({name: float(np.mean(c["val"])) for name, c in own.items()})
        e = _val_choice(on, {name: len(c["runs"]) for name, c in own.items()})
        c = own[e]
        lacking = sorted(set(stats_.index) - set(own)) if lead is not None else []
        by = (f"the ensemble's val UA (best of {len(own)} ensembles of runs with validation predictions"
              + (f"; {len(lacking)} experiments without them not compared" if lacking else "") + ")")
        if not c["pool"]:
            how = recipe(c["runs"][0])
        elif c["groups"]:
            kinds = sorted({r["kind"] for r in c["runs"]})
            how = "pool, each model weighted equally, of " + "; ".join(
                f"{g}: " + ", ".join(k for k in kinds if c["groups"][k] == g) for g in sorted(set(c["groups"].values()))
                if any(c["groups"][k] == g for k in kinds))
        else:
            how = "pool of " + ", ".join(sorted({r["kind"] for r in c["runs"]}))
        rows.append(row("pooled ensemble (mean probabilities)" if c["pool"] else "seed ensemble (mean probabilities)",
                        e, float(np.mean(c["test"])), float(np.std(c["test"], ddof=1)), n_all, c["runs"], float(on[e]),
                        by, how))
    elif lead is not None:
        rows.append(row("seed ensemble (mean probabilities)", lead, float(stats_.at[lead, "ua"]),
                        float(stats_.at[lead, "std"]), n_all, runs_of(lead), float(val[lead]),
                        "its runs' mean val UA" + (" (they lack validation predictions)" if own else ""),
                        recipe(runs_of(lead)[0])))
    return pd.DataFrame(rows)


def same_split_tests(records: Iterable[dict], **kwargs) -> pd.DataFrame:
    """Every pair of experiments, paired over the folds both have (fold means over seeds): n, mean difference
    (a - b, points), the paired t-test and how many folds a wins. Pairs with fewer than 2 shared folds get NaN."""
    t = fold_means(records, **kwargs)
    rows = []
    for a, b in combinations(t.index, 2):
        both = t.loc[[a, b]].dropna(axis=1)
        n = both.shape[1]
        row = {"a": a, "b": b, "n folds": n, "mean diff (pp)": np.nan, "p (paired t)": np.nan, "a better in": ""}
        if n >= 2:
            res = paired_test(both.loc[a].to_numpy(), both.loc[b].to_numpy())
            row.update({"mean diff (pp)": res["mean_diff"], "p (paired t)": res["p_t"],
                        "a better in": f"{int((both.loc[a] > both.loc[b]).sum())}/{n}"})
        rows.append(row)
    return pd.DataFrame(rows, columns=["a", "b", "n folds", "mean diff (pp)", "p (paired t)", "a better in"])


def _ensemble_ua(runs: list[dict], where: str, key: str = "predictions", groups: dict[str, str] | None = None
                 ) -> float:
    """UA (%) of the mean of ``runs``' per-utterance probabilities ``record[key]`` (test: ``"predictions"``,
    validation: ``"val_predictions"``; argmax); the runs must have the same utterances (else ``ValueError`` naming
    ``where``). With ``groups`` (experiment -> group), the mean over groups of each group's mean."""
    from serlib.evaluate import classification_metrics

    first = runs[0][key]
    if any(r[key]["utt_id"] != first["utt_id"] for r in runs):
        raise ValueError(f"{where}: runs tested different utterances; not an ensemble")
    labels = list(runs[0]["corpus"]["labels"])
    probs: dict[str, list[np.ndarray]] = {}
    for r in runs:
        probs.setdefault(groups[r["kind"]] if groups else "", []).append(np.asarray(r[key]["prob"], dtype=float))
    prob = np.mean([np.mean(p, axis=0) for p in probs.values()], axis=0)
    return 100 * classification_metrics(first["label"], [labels[i] for i in prob.argmax(axis=1)], labels=labels)["ua"]


def ensemble_size_table(records: Iterable[dict], *, protocol: str = "speaker_independent",
                        min_seeds: int = 3) -> pd.DataFrame:
    """How a seed ensemble's test UA grows with its size: per experiment and corpus, over the seeds that have a run
    with predictions on every fold the experiment has (at least ``min_seeds``), for each size k the ensemble UA
    (mean of probabilities, :func:`ensemble_table`'s rule) averaged over folds, for every k-subset of those seeds;
    columns: the subsets, their mean, min and max, and the gain of the mean over size k - 1. Size 1 is the single
    runs' mean over folds. The measured curve only: nothing is extrapolated. Empty when no experiment qualifies."""
    cells: dict[tuple, dict[int, dict[int, dict]]] = {}
    for r in records:
        if isinstance(r, dict) and r.get("status", "ok") == "ok" and r.get("predictions") and \
                r["split"].get("protocol") == protocol:
            cells.setdefault((r["kind"], r["corpus"]["name"]), {}).setdefault(
                int(r["split"]["fold"]), {})[int(r["seed"])] = r
    rows = []
    for (name, corpus), folds in sorted(cells.items()):
        seeds = sorted(set.intersection(*(set(by_seed) for by_seed in folds.values())))
        if len(seeds) < min_seeds:
            continue
        prev = None
        for k in range(1, len(seeds) + 1):
            uas = [float(np.mean([_ensemble_ua([folds[f][s] for s in sub], f"{name} fold {f}") for f in sorted(folds)]))
                   for sub in combinations(seeds, k)]
            mean = float(np.mean(uas))
            rows.append({"experiment": name, "corpus": corpus, "folds": len(folds),
                         "seeds": " ".join(map(str, seeds)), "ensemble size": k, "subsets": len(uas),
                         "UA mean of folds (%)": mean, "min over subsets": min(uas), "max over subsets": max(uas),
                         "gain over size k-1 (pp)": np.nan if prev is None else mean - prev})
            prev = mean
    return pd.DataFrame(rows)


def ensemble_table(records: Iterable[dict], *, protocol: str = "speaker_independent",
                   group=lambda r: r["kind"]) -> pd.DataFrame:
    """Seed (or model) ensembles from the per-utterance test probabilities runs record (``record["predictions"]``).

    Per group (default: the experiment) and fold of ``protocol``: the runs that carry predictions, the UA of the
    ensemble (the mean of their probabilities per utterance, then argmax), the mean UA of the single runs and the
    gain (ensemble - single mean, points), in %; a last row per group averages the folds, with the paired t-test of
    ensemble against single-run mean over the folds and the folds where the ensemble gained. ``val ensemble UA
    (%)``: the same ensemble on the validation part, from the runs' ``val_predictions`` (NaN unless every run of the
    fold recorded them). Only folds with at least two such runs get a row; runs of one fold must have tested the same
    utterances (else ``ValueError`` naming the group and fold). Empty when nothing qualifies."""
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        if isinstance(r, dict) and r.get("status", "ok") == "ok" and r.get("predictions") and \
                r["split"].get("protocol") == protocol:
            cells.setdefault((group(r), r["corpus"]["name"], int(r["split"]["fold"])), []).append(r)
    rows = []
    for (name, corpus, fold), runs in sorted(cells.items(), key=lambda kv: tuple(map(str, kv[0]))):
        if len(runs) < 2:
            continue
        rows.append({"experiment": name, "corpus": corpus, "fold": fold, "runs": len(runs),
                     "ensemble UA (%)": _ensemble_ua(runs, f"{name} fold {fold}"),
                     "val ensemble UA (%)": (_ensemble_ua(runs, f"{name} fold {fold} (validation)", "val_predictions")
                                             if all(r.get("val_predictions") for r in runs) else np.nan),
                     "single-run UA mean (%)": float(np.mean([100 * r["metrics"]["ua"] for r in runs]))})
    if not rows:
        return pd.DataFrame()
    from serlib.evaluate import paired_test

    df = pd.DataFrame(rows)
    df["gain (pp)"] = df["ensemble UA (%)"] - df["single-run UA mean (%)"]
    out = []
    for (name, corpus), part in df.groupby(["experiment", "corpus"], sort=False):
        out.append(part)
        test = paired_test(part["ensemble UA (%)"], part["single-run UA mean (%)"]) if len(part) >= 2 else {}
        out.append(pd.DataFrame([{"experiment": name, "corpus": corpus, "fold": "mean of folds",
                                  "runs": int(part["runs"].sum()),
                                  "ensemble UA (%)": part["ensemble UA (%)"].mean(),
                                  "val ensemble UA (%)": part["val ensemble UA (%)"].mean(skipna=False),
                                  "single-run UA mean (%)": part["single-run UA mean (%)"].mean(),
                                  "gain (pp)": part["gain (pp)"].mean(),
                                  "p (paired t over folds)": test.get("p_t", float("nan")),
                                  "gain in": f"{int((part['gain (pp)'] > 0).sum())}/{len(part)}"}]))
    return pd.concat(out, ignore_index=True).astype({"fold": object})


def fold_table(records, protocol: str = "speaker_independent") -> pd.DataFrame:
    """One experiment's runs per fold of ``protocol``: validation-selected test UA / WA (%) mean, std (ddof 1)
    and the seeds run; and a last row, the mean over folds of the fold means (every fold weighted once, however
    many seeds it has)."""
    rows = [{"fold": r["split"]["fold"], "seed": r["seed"], "ua": 100 * r["metrics"]["ua"],
             "wa": 100 * r["metrics"]["wa"]} for r in records
            if r.get("status", "ok") == "ok" and r["split"]["protocol"] == protocol]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    out = df.groupby("fold").agg(**{"UA mean (%)": ("ua", "mean"), "UA std (%)": ("ua", "std"),
                                    "WA mean (%)": ("wa", "mean"), "n runs": ("ua", "size"),
                                    "seeds": ("seed", lambda s: ",".join(map(str, sorted(s))))}).reset_index()
    means = out[["UA mean (%)", "WA mean (%)"]].mean()
    total = {"fold": "mean of folds", "UA mean (%)": means["UA mean (%)"],
             "UA std (%)": out["UA mean (%)"].std(ddof=1) if len(out) > 1 else float("nan"),
             "WA mean (%)": means["WA mean (%)"], "n runs": int(out["n runs"].sum()), "seeds": ""}
    return pd.concat([out.astype({"fold": object}), pd.DataFrame([total])], ignore_index=True)


__all__ = ["EVERY_MODEL_SPEED_POOL", "INDUCTIVE", "TRANSDUCTIVE", "best_speaker_independent", "every_model_pools",
           "pool_members", "study_of",
           "ensemble_size_table", "ensemble_table", "fold_means", "fold_table", "same_split_table", "same_split_tests",
           "speaker_normalised", "speed_perturbed_kinds", "validation_means"]
