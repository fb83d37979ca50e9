"""Head Fusion (Xu, Zhang, Zhang 2021) study: the paper's protocol, ours, sweeps, ablations, tables, a widget.

Experiments (all return :class:`serlib.experiment.Experiment` objects; nothing runs until :func:`run_study`):

* :func:`paper_experiment`: the paper protocol. Random 80/20 utterance split (speakers shared), 2-s segments (train
  step 1 s, test step 0.4 s), utterances <= 2 s dropped as in the authors' code (none on RAVDESS: the shortest is
  2.94 s, so 1152 train / 288 test utterances, 2505 training segments), MFCC 26 x 63, head fusion n_head 4 /
  n_size 64, Adam lr 1e-3, weight decay 1e-6, batch 32, 50 epochs, lr / 10 every 10 epochs, seeds 111111, 123456,
  0, 999999, 987654. On IEMOCAP the corpus is the paper's (:data:`PAPER_CORPUS_KWARGS`: improvised only, exc ->
  happy, hap dropped). Two model selections:

  - ``"best_test"``: the authors' code's choice, the epoch with the best *test* UA. Optimistic; named explicitly.
  - ``"val"``: ours. ``random_holdout`` carves the test part first and the validation part from the rest with
    another seed, so ``val_frac=0.1`` keeps the paper's 20 % test part identical (the same 288 RAVDESS utterances)
    and takes 10 % of the corpus (144 utterances, 12.5 % of the paper's training part) for validation: train 70 /
    val 10 / test 20. The val-selected model therefore trains on 1008 instead of 1152 utterances.

* :func:`speaker_independent_experiment`: the same model and training on our speaker-independent folds (RAVDESS: 6
  folds of 4 actors, fold i test, fold i+1 validation), selected on validation. Training drops utterances <= 2 s as
  the paper does, but every validation / test utterance counts: a short one is zero-padded to one 2-s window
  (``Experiment.short_policy="auto"`` -> ``"pad"`` off the paper's protocol; counted in the record's
  ``counts.short_policy``; none on RAVDESS).
* :func:`sweep_experiments` (Fig. 5 / 6: n_head x n_size) and :func:`ablation_experiments` (Tables 5 / 6: attention
  kind, number of middle convs).
* :func:`lever_experiments` (``reproduce head_fusion --levers ...``): what the paper's text allows beyond its own
  recipe, tried under the speaker-independent protocol with validation selection (:data:`LEVERS`: the authors'
  attention variant, SpecAugment-style masking, mixup, a doubled schedule, speed perturbation and its control with
  the same steps, noise from the noise study, and each on top of the authors' variant);
  :func:`levers_table` pairs every lever with the experiment it modifies, fold by fold and seed by seed.

:func:`run_study` runs experiments x seeds x folds through :func:`serlib.sweep.run_sweep` (one task per run,
records at :func:`serlib.experiment.experiment_record_path`, finished runs skipped). :func:`table` summarises records,
:func:`paper_reference` holds the published numbers (quoted, not measured). :func:`make_widget` is a small
interactive panel for the notebook.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch

from serlib import report, speaker_norm
from serlib import speed_perturb as _speed_perturb  # noqa: F401  (registers the "speed_segments" view of a lever)
from serlib.experiment import (
    Experiment,
    build_views,
    utterance_scores,
)
from serlib.studies.base import Study, Table
from serlib.studies.common import (
    apply_profile,
    corpus_for,
    experiment_from_dict,
    run_study,
    run_task,
    split_for,
    study_tasks,
    with_overrides,
)
from serlib.studies.compare import fold_table as fold_table  # re-exported for notebooks

PAPER_SEEDS: tuple[int, ...] = (111111, 123456, 0, 999999, 987654)
PAPER_MODEL: dict = {"attention": "head_fusion", "n_head": 4, "n_size": 64}
PAPER_TRAIN: dict = {
    "epochs": 50,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 1e-6,
    "optimizer": "adam",
    "scheduler": "step",
    "step_size": 10,
    "gamma": 0.1,
    "progress": False,
}
# min_len_s drops utterances <= 2 s (authors' code) before segmenting, so the default short="pad" never applies to
# training and the feature cache is shared with other segment experiments; off the paper's protocol (random_80_20)
# val / test utterances are kept and short ones padded (Experiment.short_policy="auto")
SEGMENTS: dict = {"view": "segments", "win_s": 2.0, "train_step_s": 1.0, "test_step_s": 0.4, "min_len_s": 2.0}
QUICK_TRAIN: dict = {"epochs": 2}
QUICK_MODEL: dict = {"n_head": 2, "n_size": 16}
SELECTIONS = ("best_test", "val")
# the paper's IEMOCAP: improvised utterances only, 4 classes as the authors' code maps them (exc -> happy, hap dropped);
# other corpora are taken whole
PAPER_CORPUS_KWARGS: dict[str, dict] = {"iemocap": {"improvised_only": True, "label_set": "head_fusion"}}
# issue 16: levers under the speaker-independent protocol, each (model overrides, train overrides). SpecAugment on the
# 26 x 63 MFCC segment (B, F, T): two bands of up to 4 coefficients and two spans of up to 8 frames (0.26 s);
# mixup with alpha 0.2 (Zhang et al.'s ImageNet value); "long": 100 epochs with the lr step every 20 (the schedule
# stretched, not only extended)
SPECAUG: dict = {"specaug_freq_masks": 2, "specaug_freq_width": 4, "specaug_time_masks": 2, "specaug_time_width": 8,
                 "specaug_freq_axis": -2, "specaug_time_axis": -1}
LEVERS: dict[str, tuple[dict, dict]] = {
    "authors_attention": ({"attention": "head_fusion_code"}, {}),
    "specaug": ({}, SPECAUG),
    "mixup": ({}, {"mixup_alpha": 0.2}),
    "long": ({}, {"epochs": 100, "step_size": 20}),
    "speed": ({}, {}),
    "speedwide": ({}, {}),
    "speedfar": ({}, {}),
    "speedmany": ({}, {}),
    "noise": ({}, {}),
    "repeat3": ({}, {}),
    "spknorm": ({}, {}),
    "uttnorm": ({}, {}),
}
# levers that change the experiment's view, not the model or the trainer (:func:`lever_view`): "speed", Kaldi's speed
# perturbation (the training part plus copies played 0.9x and 1.1x as fast, serlib.speed_perturb; three times the
# training steps); "noise", the noise study's mixing as augmentation (the training part plus one copy mixed with noise
# of every type at the paper's mildest amplitude factor, NOISE_LEVER_AF; twice the steps; validation and test clean);
# "repeat3", speed's control: the training part three times per epoch, unperturbed (speed's steps and schedule);
# "speedwide", speed perturbation over a wider range (copies at 0.8, 0.9, 1.1 and 1.2: five times the steps), paired
# with "speed" (:data:`LEVER_RIVALS`) to ask whether more and stronger copies help beyond speed's; "speedfar", copies
# at 0.8 and 1.2 only: speed's steps with speedwide's range, paired with "speed" (the same steps, milder copies), so
# the range and the number of copies can be told apart; "speedmany", six copies over speedwide's range (0.8, 0.85,
# 0.9, 1.1, 1.15, 1.2: seven times the steps), paired with "speedwide" (the same range, four copies), so the number of
# copies is the only change
# "spknorm": per-speaker feature normalisation (serlib.speaker_norm; each speaker's inputs standardised with that
# speaker's own statistics, from all of its utterances, no labels, so the test speakers' unlabelled test speech is
# used: transductive, stated wherever it is reported); it modifies the view rather than replacing it, so it stacks on
# a view lever, and its arms are kept out of the speed pool (:func:`ensemble_pools`), which holds inductive arms only;
# "uttnorm": its inductive counterpart, every utterance standardised with its own statistics (nothing of another
# utterance is used), so its speed arms join the inductive pool; the two modifiers never stack
NORM_LEVERS: dict[str, str] = {"spknorm": speaker_norm.KEY, "uttnorm": speaker_norm.UTTERANCE_KEY}
# the speed_segments view's factors of each lever that sets it (1.0: an unperturbed copy)
SPEED_VIEW_LEVERS: dict[str, tuple[float, ...]] = {"speed": (0.9, 1.1), "speedwide": (0.8, 0.9, 1.1, 1.2),
                                                   "speedfar": (0.8, 1.2),
                                                   "speedmany": (0.8, 0.85, 0.9, 1.1, 1.15, 1.2),
                                                   "repeat3": (1.0, 1.0)}
NOISE_LEVER_AF = 0.1
# the choices: each lever alone, each other lever on top of the authors' attention (the cheap base on a CPU), and
# the training-side levers on top of the best so far (authors' attention + speed perturbation); two view levers
# (the speed_segments ones and noise) never stack, each replaces the experiment's view
VIEW_LEVERS: tuple[str, ...] = (*SPEED_VIEW_LEVERS, "noise")
LEVER_CHOICES: tuple[str, ...] = (tuple(LEVERS) + tuple(f"authors_attention+{k}" for k in LEVERS
                                                        if k != "authors_attention")
                                  + tuple(f"authors_attention+speed+{k}" for k in ("specaug", "mixup", "long"))
                                  + ("authors_attention+speed+spknorm", "authors_attention+speedwide+spknorm",
                                     "authors_attention+speedwide+uttnorm"))
SWEEP_N_HEADS: tuple[int, ...] = (1, 2, 4, 8)
SWEEP_N_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)
N_SIZE_CHOICES: tuple[int, ...] = (8, 16, 32, 64, 128)


def paper_experiment(corpus: str = "ravdess", data_root: str | None = None, *, profile: str = "full",
                     selection: str = "best_test", **overrides) -> Experiment:
    """The paper's protocol (see the module docstring). ``selection`` ``"best_test"`` (the authors') or ``"val"``
    (ours: 70 / 10 / 20 with the paper's test part unchanged). ``profile="quick"``: 2 epochs, 1 seed, n_head 2,
    n_size 16. ``overrides`` replace Experiment fields (``train`` / ``model_kwargs`` dicts are merged)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    exp = Experiment(
        name=f"head_fusion_paper_{selection}",
        corpus=corpus,
        data_root=data_root,
        corpus_kwargs=dict(PAPER_CORPUS_KWARGS.get(corpus, {})),
        protocol="random_80_20",
        protocol_kwargs={"val_frac": 0.1} if selection == "val" else {},
        split_seed=0,
        features="head_fusion_mfcc",
        **SEGMENTS,
        model="head_fusion",
        model_kwargs=dict(PAPER_MODEL),
        train={**PAPER_TRAIN, "select": selection},
        seeds=PAPER_SEEDS,
        aggregate="mean_prob",
    )
    return with_overrides(apply_profile(exp, profile, train=QUICK_TRAIN, model=QUICK_MODEL), overrides)


def speaker_independent_experiment(corpus: str = "ravdess", data_root: str | None = None, *,
                                   profile: str = "full", **overrides) -> Experiment:
    """Paper model and training on our speaker-independent folds (every fold), selected on the validation fold."""
    exp = paper_experiment(corpus, data_root, profile="full", selection="val").replace(
        name="head_fusion_speaker_independent", protocol="speaker_independent", protocol_kwargs={})
    return with_overrides(apply_profile(exp, profile, train=QUICK_TRAIN, model=QUICK_MODEL), overrides)


def sweep_experiments(base: Experiment, n_heads: Iterable[int] = SWEEP_N_HEADS,
                      n_sizes: Iterable[int] = SWEEP_N_SIZES) -> list[Experiment]:
    """Fig. 5 / 6: one experiment per (n_head, n_size), named ``<base>__nh<h>_ns<s>``."""
    return [base.replace(name=f"{base.name}__nh{h}_ns{s}", arm=f"nh{h}_ns{s}",
                         model_kwargs={**base.model_kwargs, "n_head": int(h), "n_size": int(s)})
            for h in n_heads for s in n_sizes]


def ablation_experiments(base: Experiment, *, attentions: Sequence[str] = ("head_fusion", "self_attention", "none"),
                         n_middle_convs: Sequence[int] = (2, 3, 5)) -> list[Experiment]:
    """Table 5 (attention: head fusion / conventional self-attention / none) and Table 6 (middle conv layers; the
    paper's model has 4, which is the ``head_fusion`` row)."""
    out = [base.replace(name=f"{base.name}__att-{a}", arm=f"att-{a}",
                        model_kwargs={**base.model_kwargs, "attention": a}) for a in attentions]
    out += [base.replace(name=f"{base.name}__convs{n}", arm=f"convs{n}",
                         model_kwargs={**base.model_kwargs, "attention": "head_fusion", "n_middle_convs": int(n)})
            for n in n_middle_convs]
    return out


def lever_base(spec: str) -> str:
    """The lever arm ``spec`` modifies (``"authors_attention+mixup"`` -> ``"lever-authors_attention"``), or ``""``
    (the speaker-independent experiment itself)."""
    parts = spec.removeprefix("lever-").split("+")
    return f"lever-{'+'.join(parts[:-1])}" if len(parts) > 1 else ""


# a lever's control: the arm with the same training steps and schedule but not the lever's change (speed
# perturbation triples the steps per epoch; repeat3 triples them with unperturbed copies)
LEVER_CONTROLS: dict[str, str] = {"speed": "repeat3"}
# a lever's rival: the lever it refines, compared run by run in :func:`levers_table` as well (not a same-steps control)
LEVER_RIVALS: dict[str, str] = {"speedwide": "speed", "speedfar": "speed", "speedmany": "speedwide"}


def _swap_last_lever(spec: str, table: dict[str, str]) -> str:
    """``spec`` with its last lever replaced by ``table[last]``, or ``""`` when the table has no entry for it."""
    parts = spec.removeprefix("lever-").split("+")
    if parts[-1] not in table:
        return ""
    return "lever-" + "+".join(parts[:-1] + [table[parts[-1]]])


def lever_control(spec: str) -> str:
    """The control arm of lever arm ``spec`` (``"lever-authors_attention+speed"`` ->
    ``"lever-authors_attention+repeat3"``; :data:`LEVER_CONTROLS`), or ``""`` when its last lever has none."""
    return _swap_last_lever(spec, LEVER_CONTROLS)


def lever_rival(spec: str) -> str:
    """The arm lever arm ``spec`` refines (``"lever-authors_attention+speedwide"`` ->
    ``"lever-authors_attention+speed"``; :data:`LEVER_RIVALS`), or ``""`` when its last lever has none."""
    return _swap_last_lever(spec, LEVER_RIVALS)


def lever_view(part: str, base: Experiment) -> dict:
    """The Experiment fields lever ``part`` sets on ``base`` beyond the model and trainer ({} for most levers)."""
    if part in SPEED_VIEW_LEVERS:
        return {"view": "speed_segments", "view_kwargs": {"factors": list(SPEED_VIEW_LEVERS[part])}}
    if part in NORM_LEVERS:  # merged into the view's settings by lever_experiments, not replacing them
        return {"view_kwargs": {NORM_LEVERS[part]: True}}
    if part == "noise":
        from serlib.noise_data import default_source
        from serlib.studies.noise import source_types, spec

        source = default_source(base.corpus)
        # one noisy copy of the training part: every noise type, AF 0.1, the noise study's first training seed
        return {"view": "noisy_segments",
                "view_kwargs": {"source": source, "train": [spec(sorted(source_types(source)), NOISE_LEVER_AF,
                                                                 seed=1)]}}
    return {}


def lever_experiments(base: Experiment, levers: Sequence[str]) -> list[Experiment]:
    """One experiment per lever spec (:data:`LEVER_CHOICES`; ``"a+b"`` applies a then b), named
    ``<base>__lever-<spec>`` with arm ``lever-<spec>``."""
    for spec in levers:
        views = [p for p in spec.split("+") if p in VIEW_LEVERS]
        if len(views) > 1:
            raise ValueError(f"lever {spec!r} stacks the view levers {views}; each replaces the view, use one")
        norms = [p for p in spec.split("+") if p in NORM_LEVERS]
        if len(norms) > 1:
            raise ValueError(f"lever {spec!r} stacks the normalisation levers {norms}; use one")
    bad = [s for s in levers if s not in LEVER_CHOICES]
    if bad:
        raise ValueError(f"unknown levers {bad}; known: {list(LEVER_CHOICES)}")
    out = []
    for spec in levers:
        model, train, view = dict(base.model_kwargs), dict(base.train), {}
        for part in spec.split("+"):
            model.update(LEVERS[part][0])
            train.update(LEVERS[part][1])
            change = lever_view(part, base)
            if part in NORM_LEVERS:  # a modifier: onto the view a lever before it chose
                change = {"view_kwargs": {**view.get("view_kwargs", base.view_kwargs), **change["view_kwargs"]}}
            view.update(change)
        out.append(base.replace(name=f"{base.name}__lever-{spec}", arm=f"lever-{spec}", model_kwargs=model,
                                train=train, **view))
    return out


PROTOCOLS: tuple[str, ...] = ("paper", "speaker_independent")


def reproduction_experiments(corpus: str = "ravdess", data_root: str | None = None, *, profile: str = "full",
                             protocols: Sequence[str] = PROTOCOLS, track_test: bool = True,
                             levers: Sequence[str] = ()) -> list[Experiment]:
    """What ``python -m serlib reproduce head_fusion`` runs: the paper protocol (validation-selected, with the
    per-epoch test curve for the authors' best-test figure when ``track_test``) and the speaker-independent
    protocol, plus the ``levers`` asked for (:func:`lever_experiments`, speaker-independent only). The paper's
    configuration runs on a CPU as it is, so ``profile="cpu"`` is ``"full"``."""
    exps = []
    if "paper" in protocols:
        exps.append(paper_experiment(corpus, data_root, profile=profile, selection="val",
                                     train={"track_test": True} if track_test else {}))
    if "speaker_independent" in protocols:
        si = speaker_independent_experiment(corpus, data_root, profile=profile)
        exps.append(si)
        exps += lever_experiments(si, levers)
    elif levers:
        raise ValueError("levers run under the speaker_independent protocol; add it to --protocols")
    return exps


# ------------------------------------------------------------------------------------------------ running


def load_study_records(results_dir: str | Path) -> list[dict]:
    """Every finished Head Fusion run record under ``results_dir``."""
    return STUDY.records(results_dir)


_run_task, _corpus_for, _split_for, _experiment_from_dict = run_task, corpus_for, split_for, experiment_from_dict


# ------------------------------------------------------------------------------------------------ tables
def table(records, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean / std (ddof 1, over seeds and folds) of UA and WA in percent, per configuration.

    records: run records (list of dicts, e.g. from :func:`run_study`) or a :func:`serlib.records.load_records` frame.
    by: grouping columns (default: experiment name, corpus, protocol, selection). Model settings are shown beside.
    """
    df = report.frame(records)
    if df.empty:
        return pd.DataFrame()
    by = list(by or ["kind", "corpus", "protocol", "selection"])
    shown = {c: c.split(".")[-1] for c in ("config.model_kwargs.attention", "config.model_kwargs.n_head",
                                           "config.model_kwargs.n_size", "config.model_kwargs.n_middle_convs",
                                           "config.train.epochs") if c not in by}
    out = report.summarise(df, by, first=shown)
    seeds = df.groupby(by, sort=True, dropna=False)["seed"].apply(lambda s: ",".join(map(str, sorted(s.unique()))))
    return out.assign(seeds=seeds.to_numpy())


def reproduction_table(records) -> pd.DataFrame:
    """Paper-vs-ours rows from run records: per (experiment, corpus, protocol) the validation-selected test figure,
    and, where per-epoch test curves were tracked, the authors' best-test-epoch figure (selected ON THE TEST SET) and
    the last-epoch figure. Mean / std (ddof 1) over seeds and folds, in percent."""
    figures = (("validation-selected (ours)", lambda m: m),
               ("best test epoch (authors' selection, on the test set)", lambda m: m.get("best_test_epoch")),
               ("last epoch", lambda m: m.get("last_epoch")))
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if report.identity(r)["arm"].startswith("lever-"):
            continue  # levers_table
        key = (r["kind"], r["corpus"]["name"], r["split"]["protocol"])
        groups.setdefault(key, []).append(r)
    rows = []
    for (kind, corpus, protocol), recs in sorted(groups.items()):
        for label, get in figures:
            vals = [get(r["metrics"]) for r in recs]
            vals = [v for v in vals if v]
            if not vals:
                continue
            ua = 100 * pd.Series([v["ua"] for v in vals], dtype=float)
            wa = 100 * pd.Series([v["wa"] for v in vals], dtype=float)
            rows.append({"experiment": kind, "corpus": corpus, "protocol": protocol, "figure": label,
                         "UA mean (%)": ua.mean(), "UA std (%)": ua.std(ddof=1) if len(ua) > 1 else float("nan"),
                         "WA mean (%)": wa.mean(), "n runs": len(vals),
                         "runs": ",".join(sorted(f"s{r['seed']}/f{r['split'].get('fold')}" for r in recs))})
    return pd.DataFrame(rows)


def levers_table(records) -> pd.DataFrame:
    """Each lever tried (speaker-independent, validation-selected) against the experiment it modifies
    (:func:`lever_base`), per corpus: the lever's mean test UA over all its runs and the folds it has, and the
    paired difference (lever - base, points) with its tests over the runs both have, matched by (seed, fold)
    (:func:`serlib.report.paired_tests`). Positive difference: the lever helped. A lever with a control that has
    records (:func:`lever_control`: speed against repeat3, the same steps unperturbed) gets a second row against it,
    and so does a lever with a rival (:func:`lever_rival`: speedwide against speed). Every lever is also paired with
    the current best of its corpus, the experiment :func:`serlib.studies.compare.best_speaker_independent` chooses on
    the validation folds (its ``against`` says so), when its records make one."""
    si = [r for r in records if report.is_ok(r) and r["split"]["protocol"] == "speaker_independent"]
    levers = sorted({report.identity(r)["arm"] for r in si if report.identity(r)["arm"].startswith("lever-")})
    if not levers:
        return pd.DataFrame()
    arm_of = lambda r: report.identity(r)["arm"] or "base"  # noqa: E731
    comparisons = [(a, lever_base(a) or "base") for a in levers]
    comparisons += [(a, c) for a in levers if (c := lever_control(a)) in levers]
    comparisons += [(a, c) for a in levers if (c := lever_rival(a)) in levers]
    n_own = len(comparisons)
    best = _best_arms(si)  # the current best (chosen on validation): every other lever is paired with it too
    comparisons += [(a, b) for b in sorted(set(best.values())) for a in levers
                    if a != b and (a, b) not in comparisons and (b, a) not in comparisons]
    own = set(comparisons[:n_own])
    tests = report.paired_tests(si, comparisons, arm_of=arm_of, group_of=lambda r: (r["corpus"]["name"],),
                                group_names=("corpus",))
    rows = []
    for corpus in sorted({r["corpus"]["name"] for r in si}):
        for a, b in comparisons:
            mine = [r for r in si if arm_of(r) == a and r["corpus"]["name"] == corpus]
            if not mine:
                continue
            hit = tests[(tests["corpus"] == corpus) & (tests["comparison"] == f"{a} vs {b}")] if len(tests) else tests
            t = hit.iloc[0] if len(hit) else {}
            ua = 100 * pd.Series([r["metrics"]["ua"] for r in mine], dtype=float)
            if (a, b) in own:
                against = b.removeprefix("lever-") if b != "base" else "paper's recipe"
            elif b == best.get(corpus):
                against = f"{b.removeprefix('lever-')} (the best, chosen on validation)"
            else:
                continue  # another corpus's best
            rows.append({"corpus": corpus, "lever": a.removeprefix("lever-"), "against": against,
                         "lever UA (%)": ua.mean(), "folds": len({r["split"]["fold"] for r in mine}),
                         "runs": len(mine), "n pairs": int(t.get("n pairs", 0)),
                         "diff (pp)": t.get("mean diff (pp)", float("nan")),
                         "p (paired t)": t.get("p (paired t)", float("nan")),
                         "lever better in": t.get("a better in", "") if int(t.get("n pairs", 0)) else ""})
    return pd.DataFrame(rows)


def _best_arms(si: list[dict]) -> dict[str, str]:
    """Per corpus, the arm of the best speaker-independent experiment among these records, chosen on validation
    (:func:`serlib.studies.compare.best_speaker_independent`'s inductive single-run row); corpora without one are
    left out."""
    from serlib.studies import compare

    out = {}
    for corpus in sorted({r["corpus"]["name"] for r in si}):
        t = compare.best_speaker_independent(si, corpus=corpus)
        t = t[t["setting"] == compare.INDUCTIVE] if not t.empty else t  # the headline, not a transductive one
        if not t.empty:
            kind = t.iloc[0]["experiment"]
            out[corpus] = next(report.identity(r)["arm"] or "base" for r in si if r["kind"] == kind)
    return out


def levers_summary(records) -> str:
    """:func:`levers_table` in words, one line per lever (Markdown), or a line saying no lever was run."""
    t = levers_table(records)
    if t.empty:
        return "No lever has been run yet (`reproduce head_fusion --protocols speaker_independent --levers ...`)."
    lines = []
    for _, r in t.iterrows():
        line = (f"- **{r['lever']}** ({r['corpus']}): {r['lever UA (%)']:.1f} UA over {r['runs']} runs on "
                f"{r['folds']} folds")
        if r["n pairs"] >= 2:
            if "(the best" in r["against"]:
                verdict = "it is above the best" if r["diff (pp)"] > 0 else "it is below the best"
            else:
                verdict = "it helped" if r["diff (pp)"] > 0 else "it hurt"
            line += (f"; against {r['against']} over {r['n pairs']} matched runs {r['diff (pp)']:+.1f} points "
                     f"(paired t p = {r['p (paired t)']:.3f}, better in {r['lever better in']}): {verdict}"
                     + ("" if r["p (paired t)"] < 0.05 else ", not significantly"))
        else:
            line += f"; fewer than 2 runs matched with {r['against']}: no test"
        lines.append(line + ".")
    return "\n".join(lines)


def paper_reference() -> pd.DataFrame:
    """Published / previously measured Head Fusion numbers, QUOTED from /work/shared/docs/PAPERS.md (not measured by
    this code). Percentages."""
    src = "quoted from PAPERS.md (not measured by serlib)"
    rows = [
        {"source": "paper (Xu et al. 2021), as cited by FACA Table 2", "corpus": "ravdess", "protocol": "random_80_20",
         "selection": "best_test", "WA (%)": 77.8, "UA (%)": 77.4, "UA std (%)": None, "note": src},
        {"source": "paper (Xu et al. 2021)", "corpus": "iemocap (improvised, 4 classes)", "protocol": "random_80_20",
         "selection": "best_test", "WA (%)": 76.18, "UA (%)": 76.36, "UA std (%)": None, "note": src},
        {"source": "authors' code on our RAVDESS, 5 seeds", "corpus": "ravdess", "protocol": "random_80_20",
         "selection": "best_test", "WA (%)": 64.1, "UA (%)": 61.1, "UA std (%)": 1.9, "note": src},
        {"source": "authors' code on our RAVDESS, 5 seeds", "corpus": "ravdess", "protocol": "random_80_20",
         "selection": "last", "WA (%)": None, "UA (%)": 59.3, "UA std (%)": 2.1, "note": src},
    ]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ widget
def make_state(exp: Experiment | None = None, *, corpus=None, fold: int = 0, device=None) -> dict:
    """Corpus, one split and its cached feature views, for :func:`widget_callback` (features computed once)."""
    from serlib.data.splits import make_splits

    exp = exp or paper_experiment(profile="quick")
    corpus = corpus if corpus is not None else corpus_for(exp)
    split = make_splits(exp.protocol, corpus, seed=exp.split_seed, **exp.protocol_kwargs)[fold]
    return {"exp": exp, "corpus": corpus, "split": split, "views": build_views(exp, corpus, split, device=device)}


def widget_callback(state: dict, n_head: int, n_size: int, epochs: int, *, seed: int = 0) -> dict:
    """Train head fusion (n_head, n_size) for ``epochs`` on the state's cached training view (last-epoch weights),
    evaluate on its test view. Returns ``ua``, ``wa``, ``confusion``, ``labels``, ``history``, and for the first test
    utterance its ``fused_map`` (H, W), ``head_maps`` (n_head, H, W), ``mfcc`` (F, T) and ``label``."""
    from serlib.evaluate import aggregate, classification_metrics
    from serlib.models.registry import build_model
    from serlib.train import TrainConfig, Trainer

    exp, views, labels = state["exp"], state["views"], tuple(state["corpus"].labels)
    torch.manual_seed(seed)
    model, _ = build_model("head_fusion", n_classes=len(labels), n_features=views.train.x.shape[1],
                           **{**exp.model_kwargs, "attention": "head_fusion", "n_head": int(n_head),
                              "n_size": int(n_size)})
    train = {**exp.train, "epochs": int(epochs), "select": "last", "progress": False, "seed": seed,
             "checkpoint_dir": None}
    trainer = Trainer(model, TrainConfig(**train), score_fn=utterance_scores(labels, exp.aggregate))
    result = trainer.fit(views.train, None, views.test)
    utt, gid = aggregate(result.test_logits, views.test.groups, how=exp.aggregate)
    y_true = state["corpus"].y[gid]
    m = classification_metrics(y_true, utt.argmax(1), labels=list(labels))
    first = views.test.groups == views.test.groups.min()  # the segments of the first test utterance
    seg = views.test.subset(first)
    _, aux = trainer.predict_with_aux(seg)
    return {"ua": m["ua"], "wa": m["wa"], "confusion": m["confusion"], "labels": list(labels),
            "history": result.history, "fused_map": aux["fused_map"].mean(0).numpy(),
            "head_maps": aux["head_maps"].mean(0).numpy(), "mfcc": seg.x[0].numpy(),
            "label": labels[int(seg.y[0])], "n_segments": int(len(seg))}


def make_widget(state: dict):
    """An ipywidgets panel: n_head, n_size, epochs sliders, a Train button and an Output with the confusion matrix
    and the fused attention map of one test utterance. ``panel.on_train`` is the button handler (callable directly)."""
    import ipywidgets as W
    from IPython.display import Image

    from serlib import plots
    from serlib.plots_attention import attention_maps, figure_png

    n_head = W.IntSlider(value=4, min=1, max=8, description="n_head")
    n_size = W.SelectionSlider(options=list(N_SIZE_CHOICES), value=64, description="n_size")
    epochs = W.IntSlider(value=3, min=1, max=50, description="epochs")
    button = W.Button(description="Train", button_style="primary")
    out = W.Output()

    def on_train(_=None):
        out.outputs = ()
        button.disabled = True
        try:
            res = widget_callback(state, n_head.value, n_size.value, epochs.value)
        finally:
            button.disabled = False
        out.append_stdout(f"n_head={n_head.value} n_size={n_size.value} epochs={epochs.value}: "
                          f"UA {100 * res['ua']:.1f} %, WA {100 * res['wa']:.1f} % (test, last epoch)\n")
        fig = plots.confusion(res["confusion"], res["labels"], title="test confusion (recall)")
        out.append_display_data(Image(data=figure_png(fig)))
        fig = attention_maps(res["fused_map"], res["head_maps"], mfcc=res["mfcc"],
                             title=f"first test utterance ({res['label']}), mean over its "
                                   f"{res['n_segments']} segments")
        out.append_display_data(Image(data=figure_png(fig)))
        return res

    button.on_click(on_train)
    panel = W.VBox([W.HBox([n_head, n_size, epochs, button]), out])
    panel.on_train = on_train
    panel.controls = {"n_head": n_head, "n_size": n_size, "epochs": epochs, "button": button, "output": out}
    return panel


def speaker_independent_folds(records) -> pd.DataFrame:
    """The speaker-independent runs per fold over their seeds, and the mean of the fold means
    (:func:`serlib.studies.compare.fold_table`), for each experiment."""
    si = [r for r in records if r["split"]["protocol"] == "speaker_independent" and not report.identity(r)["arm"]]
    return fold_table(si)


SPEED_POOL = "head_fusion_speaker_independent__pool-speed_perturbed"
SPEED_SPKNORM_POOL = "head_fusion_speaker_independent__pool-speed_perturbed+spknorm"


def ensemble_pools(records: list[dict]) -> dict[str, list[str]]:
    """Two pools, each when at least two experiments fall in it: :data:`SPEED_POOL`, every speaker-independent
    experiment of these records that trains on speed perturbed copies (a speed view with a factor other than 1;
    repeat3, its unperturbed control, is not one), is not a test-time perturbation record and is not
    speaker-normalised (:func:`serlib.studies.compare.speed_perturbed_kinds`); and :data:`SPEED_SPKNORM_POOL`, the
    same among the speaker-normalised ones (transductive: they are never pooled with the others)."""
    from serlib.studies import compare

    kinds = compare.speed_perturbed_kinds(records)
    return {name: sorted(kinds[spk]) for name, spk in ((SPEED_POOL, False), (SPEED_SPKNORM_POOL, True))
            if len(kinds[spk]) >= 2}


STUDY = Study(
    name="head_fusion",
    title="Head Fusion ACNN",
    paper="Xu, Zhang, Zhang 2021, Head Fusion: improving the accuracy and robustness of speech emotion recognition "
          "on the IEMOCAP and RAVDESS dataset",
    experiments=reproduction_experiments,
    tables=(Table("reproduction", "Paper protocol and speaker-independent, per selection", reproduction_table),
            Table("speaker_independent_folds", "Speaker-independent, per fold over its seeds (last row: the mean "
                  "of the fold means, std over folds)", speaker_independent_folds),
            Table("levers", "Levers beyond the paper's recipe (speaker-independent, validation selection), each "
                  "paired with the experiment it modifies", levers_table)),
    prefixes=("head_fusion",),
    paper_reference=paper_reference,
    notebook="01_head_fusion.ipynb",
    options={"track_test": ((True, False), True, "evaluate the test split every epoch (for the authors' "
                                                  "best-test-epoch figure)"),
             "levers": (LEVER_CHOICES, (), "speaker-independent runs with levers beyond the paper's recipe "
                                          "(a+b: b on top of a)")},
    paper_claim="77.4 UA (RAVDESS, random 80/20, best test epoch)",
    ensemble_pools=ensemble_pools,
)

__all__ = [
    "LEVERS",
    "NORM_LEVERS",
    "LEVER_CHOICES",
    "LEVER_CONTROLS",
    "LEVER_RIVALS",
    "PAPER_MODEL",
    "PAPER_SEEDS",
    "PAPER_TRAIN",
    "SPEED_POOL",
    "SPEED_SPKNORM_POOL",
    "ablation_experiments",
    "ensemble_pools",
    "lever_control",
    "lever_rival",
    "lever_experiments",
    "levers_summary",
    "levers_table",
    "load_study_records",
    "make_state",
    "make_widget",
    "paper_experiment",
    "paper_reference",
    "reproduction_table",
    "run_study",
    "speaker_independent_experiment",
    "study_tasks",
    "sweep_experiments",
    "table",
    "VIEW_LEVERS",
    "widget_callback",
]
