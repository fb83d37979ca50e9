"""What every study shares: config overrides and profiles, record loading, and the resumable study runner.

A study is a list of :class:`serlib.experiment.Experiment`; :func:`run_study` turns it into one
:class:`serlib.sweep.SweepTask` per (experiment, seed, fold), runs those not yet recorded (in parallel processes when
``n_jobs`` > 1) and returns every record in task order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from serlib.experiment import Experiment, experiment_record_path, load_experiment_corpus, run_one

_MERGED = ("train", "model_kwargs", "protocol_kwargs", "corpus_kwargs", "loss_kwargs")
_CORPUS_MEMO: dict[str, object] = {}


def with_overrides(exp: Experiment, overrides: dict) -> Experiment:
    """``exp`` with fields replaced; the dict fields (``train``, ``model_kwargs``, ...) are merged, not replaced."""
    merged = {}
    for key, value in overrides.items():
        if key in _MERGED and isinstance(value, dict):
            merged[key] = {**getattr(exp, key), **value}
        else:
            merged[key] = tuple(value) if key in ("seeds", "folds", "augment_features") and value is not None \
                else value
    return exp.replace(**merged)


PROFILES: tuple[str, ...] = ("quick", "cpu", "full")
CPU_SUFFIX = "_cpu"
# quick profile on RAVDESS: a fixed stratified subset (serlib.experiment.stratified_subset), 1 utterance per
# (speaker, class): 192 of its 1440 clips (as many as the synthetic corpus), every actor and emotion kept
QUICK_CORPUS: dict[str, dict] = {"ravdess": {"per_speaker_class": 1}}


def apply_profile(exp: Experiment, profile: str, *, train: dict, model: dict,
                  folds: tuple[int, ...] | None = None, cpu: dict | None = None) -> Experiment:
    """Resolve a study profile.

    * ``"full"``: ``exp`` unchanged (the paper's configuration; hours to days on a CPU for the recurrent models and
      ECA, meant for a GPU).
    * ``"quick"``: ``train`` / ``model`` overrides merged, the first seed only, and ``folds`` (when given and the
      experiment names none), on RAVDESS its :data:`QUICK_CORPUS` subset: seconds to minutes, what CI runs.
    * ``"cpu"``: the reduced configuration this project's records were measured with on a 2-core CPU. ``cpu`` holds
      its ``train`` / ``model`` overrides and optionally ``seeds`` / ``folds``; the experiment name gets the suffix
      ``_cpu`` so its records never mix with full-profile ones in a table. ``cpu=None``: the study's full
      configuration runs on a CPU as it is, so ``"cpu"`` equals ``"full"``.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if profile == "full" or (profile == "cpu" and cpu is None):
        return exp
    if profile == "cpu":
        return exp.replace(name=exp.name + CPU_SUFFIX, train={**exp.train, **cpu.get("train", {})},
                           model_kwargs={**exp.model_kwargs, **cpu.get("model", {})},
                           seeds=tuple(cpu.get("seeds", exp.seeds)),
                           folds=tuple(cpu["folds"]) if cpu.get("folds") is not None else exp.folds)
    return exp.replace(train={**exp.train, **train}, model_kwargs={**exp.model_kwargs, **model},
                       seeds=exp.seeds[:1], folds=folds if exp.folds is None and folds is not None else exp.folds,
                       corpus_kwargs={**exp.corpus_kwargs, **QUICK_CORPUS.get(exp.corpus, {})})


def profile_of(kind: str) -> str:
    """``"cpu"`` for a record of a ``cpu``-profile experiment (name suffixed ``_cpu``), else ``"as named"`` (the
    paper's configuration, or whatever overrides the experiment's config shows)."""
    return "cpu" if kind.endswith(CPU_SUFFIX) else "as named"


def load_study_records(results_dir: str | Path, prefix: str) -> list[dict]:
    """Every finished run record under ``results_dir/<prefix>*/`` (each with its ``_path``), sorted by path."""
    out = []
    for path in sorted(Path(results_dir).glob(f"{prefix}*/**/*.json")):
        rec = json.loads(path.read_text())
        if rec.get("status", "ok") == "ok" and "metrics" in rec:
            out.append({**rec, "_path": str(path)})
    return out


FIGURES_DIR = "figures"  # under a results folder: the records of scripts/figure_records.py


def figure_record_name(figure: str, corpus: str) -> str:
    """File name of the numbers behind ``figure`` on ``corpus``, as ``scripts/figure_records.py`` writes them."""
    return f"{figure}_{corpus}.json"


def load_figure_record(results_dir: str | Path, figure: str, corpus: str = "ravdess") -> dict | None:
    """``results_dir/figures/<figure>_<corpus>.json`` (written by ``scripts/figure_records.py``), or None when it has
    not been made."""
    path = Path(results_dir) / FIGURES_DIR / figure_record_name(figure, corpus)
    return {**json.loads(path.read_text()), "_path": str(path)} if path.exists() else None


def figure_record_runs(fig: dict) -> pd.DataFrame:
    """The runs a figure record retrained: kind, fold, seed, their test UA and the committed record's (equal when
    the rerun is the recorded run; None when no record was committed)."""
    return pd.DataFrame(fig["runs"])[["kind", "fold", "seed", "test_ua", "recorded_test_ua"]]


def experiment_from_dict(d: dict) -> Experiment:
    d = dict(d)
    d["seeds"] = tuple(d["seeds"])
    d["folds"] = None if d.get("folds") is None else tuple(d["folds"])
    d["augment_features"] = tuple(d.get("augment_features") or ())
    return Experiment(**d)


def corpus_for(exp: Experiment):
    """The experiment's corpus, loaded once per process (one corpus kept in memory)."""
    key = json.dumps([exp.corpus, exp.data_root, exp.corpus_kwargs], sort_keys=True, default=str)
    if key not in _CORPUS_MEMO:
        _CORPUS_MEMO.clear()
        _CORPUS_MEMO[key] = load_experiment_corpus(exp.corpus, exp.data_root, **exp.corpus_kwargs)
    return _CORPUS_MEMO[key]


def splits_for(exp: Experiment, corpus) -> list:
    """The experiment's splits: every fold of its protocol, or those named in ``exp.folds``."""
    from serlib.data.splits import make_splits

    splits = make_splits(exp.protocol, corpus, seed=exp.split_seed, **exp.protocol_kwargs)
    return splits if exp.folds is None else [splits[f] for f in exp.folds]


def split_for(exp: Experiment, corpus, fold: int):
    """The split of ``exp``'s protocol with fold number ``fold``."""
    from serlib.data.splits import make_splits

    splits = make_splits(exp.protocol, corpus, seed=exp.split_seed, **exp.protocol_kwargs)
    return next(s for s in splits if s.fold == fold)


def run_task(task) -> dict:
    """Sweep worker (top-level, importable by spawn workers): one (experiment, seed, fold) run -> its record."""
    from serlib.records import to_jsonable

    exp = experiment_from_dict(task.config["experiment"])
    corpus = corpus_for(exp)
    record = run_one(exp, corpus, split_for(exp, corpus, int(task.fold)), int(task.seed), results_dir=None)
    return to_jsonable(record, rounded=True)


def study_tasks(exps: Sequence[Experiment], results_dir: str | Path) -> list[tuple]:
    """``[(SweepTask, record path)]``: one task per (experiment, fold, seed)."""
    from serlib.sweep import SweepTask

    out = []
    for exp in exps:
        corpus = corpus_for(exp)
        for split in splits_for(exp, corpus):
            for seed in exp.seeds:
                task = SweepTask(exp.name, {"experiment": exp.to_dict()}, seed=int(seed), fold=int(split.fold))
                out.append((task, experiment_record_path(exp, corpus, split, int(seed), results_dir)))
    return out


def run_study(exps: Experiment | Sequence[Experiment], *, results_dir: str | Path, n_jobs: int = 1,
              backend: str = "process", progress: bool = False) -> list[dict]:
    """Run every (experiment, seed, fold) not yet recorded under ``results_dir``; return all their records in task
    order. ``n_jobs`` > 1 runs tasks in spawn workers (each with cpu_count // n_jobs torch threads); features come
    from the shared cache (``$SERLIB_CACHE``), so build them first or set it before starting."""
    from serlib.sweep import run_sweep

    exps = [exps] if isinstance(exps, Experiment) else list(exps)
    configs: dict[str, dict] = {}
    for e in exps:  # tables group runs by experiment name: one name must mean one configuration
        d = {k: v for k, v in e.to_dict().items() if k not in ("seeds", "folds")}
        if configs.setdefault(e.name, d) != d:
            raise ValueError(f"two different experiments are both named {e.name!r}; rename one")
    pairs = study_tasks(exps, results_dir)
    paths = {t.task_id: Path(p).resolve() for t, p in pairs}
    return run_sweep(run_task, [t for t, _ in pairs], out_dir=results_dir, n_jobs=n_jobs, backend=backend,
                     progress=progress, path_fn=lambda t: paths[t.task_id])


def percent_summary(part, metrics: Sequence[str] = ("ua", "wa")) -> dict:
    """Mean and std (ddof 1; NaN for one run) in percent of ``metrics`` over the rows of a records frame."""
    row = {}
    for metric in metrics:
        v = 100 * part[metric].astype(float)
        row[f"{metric.upper()} mean (%)"] = v.mean()
        row[f"{metric.upper()} std (%)"] = v.std(ddof=1) if len(v) > 1 else float("nan")
    return row
