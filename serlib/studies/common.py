"""What every study shares: config overrides and profiles, record loading, and the resumable study runner.

A study is a list of :class:`serlib.experiment.Experiment`; :func:`run_study` turns it into one
:class:`serlib.sweep.SweepTask` per (experiment, seed, fold), runs those not yet recorded (in parallel processes when
``n_jobs`` > 1, or as Ray tasks with ``backend="ray"``) and returns every record in task order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from serlib.experiment import Experiment, experiment_record_path, load_experiment_corpus, run_one
from serlib.report import is_ok, percent_summary  # noqa: F401  (re-exported for the studies)

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


def load_records(results_dir: str | Path, prefix: str = "") -> list[dict]:
    """Every successful run record under ``results_dir/<prefix>*/`` (each with its ``_path``, its split's ids
    restored from ``results_dir/splits/``), sorted by path. The split store and figure records are not runs."""
    from serlib.records import SPLITS_DIR, inflate_split

    root = Path(results_dir)
    out = []
    for path in sorted(root.glob(f"{prefix}*/**/*.json")):
        if path.relative_to(root).parts[0] in (SPLITS_DIR, FIGURES_DIR, "benchmarks", "robustness"):
            continue
        rec = json.loads(path.read_text())
        if is_ok(rec):
            out.append({**inflate_split(rec, root), "_path": str(path)})
    return out


def load_study_records(results_dir: str | Path, prefix: str) -> list[dict]:
    """:func:`load_records` restricted to experiments whose name starts with ``prefix``."""
    return load_records(results_dir, prefix)


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


def _corpus_key(exp: Experiment) -> str:
    return json.dumps([exp.corpus, exp.data_root, exp.corpus_kwargs], sort_keys=True, default=str)


def corpus_for(exp: Experiment):
    """The experiment's corpus, loaded once per process (one corpus kept in memory)."""
    key = _corpus_key(exp)
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
    from serlib.records import store_split, to_jsonable

    exp = experiment_from_dict(task.config["experiment"])
    corpus = corpus_for(exp)
    record = run_one(exp, corpus, split_for(exp, corpus, int(task.fold)), int(task.seed), results_dir=None,
                     checkpoint_root=task.config.get("checkpoint_root"))
    if task.config.get("results_dir"):  # the split's ids go to the results folder's split store, once
        record = store_split(record, task.config["results_dir"])
    return to_jsonable(record, rounded=True)


def study_tasks(exps: Sequence[Experiment], results_dir: str | Path,
                checkpoint_root: str | Path | None = None) -> list[tuple]:
    """``[(SweepTask, record path)]``: one task per (experiment, fold, seed)."""
    from serlib.sweep import SweepTask

    extra = {"results_dir": str(Path(results_dir).resolve())}
    if checkpoint_root is not None:
        extra["checkpoint_root"] = str(Path(checkpoint_root).resolve())
    out = []
    for exp in exps:
        corpus = corpus_for(exp)
        for split in splits_for(exp, corpus):
            for seed in exp.seeds:
                task = SweepTask(exp.name, {"experiment": exp.to_dict(), **extra}, seed=int(seed),
                                 fold=int(split.fold))
                out.append((task, experiment_record_path(exp, corpus, split, int(seed), results_dir)))
    return out


def run_study(exps: Experiment | Sequence[Experiment], *, results_dir: str | Path, n_jobs: int = 1,
              backend: str = "process", progress: bool = False, corpus=None,
              checkpoint_root: str | Path | None = None, skip_existing: bool = True,
              ray_address: str | None = None) -> list[dict]:
    """The one runner: every (experiment, seed, fold) not yet recorded under ``results_dir`` (all of them with
    ``skip_existing=False``); returns all their records in task order. ``n_jobs`` > 1 runs tasks in spawn workers
    (each with cpu_count // n_jobs torch threads); features come from the shared cache (``$SERLIB_CACHE``), so build
    them first or set it before starting. ``corpus``: an already loaded corpus of the experiments (runs serially in
    this process). ``checkpoint_root``: each run keeps its trainer checkpoint there (:func:`load_model`).
    ``backend``: "process" (= "local", the default), "serial", or "ray": the same tasks as Ray tasks on a local Ray
    instance of ``n_jobs`` CPUs, or on the cluster at ``ray_address`` (data, cache and results on a shared
    filesystem; :mod:`serlib.sweep_ray`), skipped and recorded exactly as locally."""
    from serlib.sweep import run_sweep

    exps = [exps] if isinstance(exps, Experiment) else list(exps)
    if corpus is not None:
        for e in exps:
            _CORPUS_MEMO.clear()
            _CORPUS_MEMO[_corpus_key(e)] = corpus
        backend, n_jobs, ray_address = "serial", 1, None
    configs: dict[str, dict] = {}
    for e in exps:  # tables group runs by experiment name: one name must mean one configuration
        d = {k: v for k, v in e.to_dict().items() if k not in ("seeds", "folds")}
        if configs.setdefault(e.name, d) != d:
            raise ValueError(f"two different experiments are both named {e.name!r}; rename one")
    from serlib.experiment import record_is_current
    from serlib.records import inflate_split

    pairs = study_tasks(exps, results_dir, checkpoint_root)
    paths = {t.task_id: Path(p).resolve() for t, p in pairs}
    for task, path in paths.items():  # a record made from other audio, or a failed run, is run again
        if skip_existing and path.exists():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                continue  # unreadable: the sweep reruns it with a warning
            exp = experiment_from_dict(next(t for t, _ in pairs if t.task_id == task).config["experiment"])
            if old.get("status") != "error" and not record_is_current(old, corpus_for(exp)):
                path.unlink()
    records = run_sweep(run_task, [t for t, _ in pairs], out_dir=results_dir, n_jobs=n_jobs, backend=backend,
                        progress=progress, path_fn=lambda t: paths[t.task_id], skip_existing=skip_existing,
                        address=ray_address)
    return [{**(inflate_split(r, results_dir) if is_ok(r) else r), "_path": str(paths[t.task_id])}
            for (t, _), r in zip(pairs, records)]


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint_dir(exp: Experiment, split_name: str, seed: int, checkpoint_root: str | Path) -> Path:
    """Where :func:`serlib.experiment.run_one` puts a run's checkpoint when given ``checkpoint_root``."""
    from serlib.experiment import checkpoint_dir as _checkpoint_dir

    return _checkpoint_dir(exp.name, split_name, seed, checkpoint_root)


def load_model(record: dict, checkpoint_root: str | Path):
    """The model of a run record with its selected weights (validation-selected, or last for ``select="last"``),
    from the checkpoint :func:`run_study` kept under ``checkpoint_root``; eval mode, on CPU."""
    import torch

    from serlib.models.registry import build_model
    from serlib.train import CHECKPOINT_NAME

    cfg = record["config"]
    path = checkpoint_dir(Experiment(name=cfg["name"]), record["split"]["name"], int(record["seed"]),
                          checkpoint_root) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint for {record['kind']} {record['split']['name']} seed "
                                f"{record['seed']} at {path}; run with checkpoint_root")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model, _ = build_model(cfg["model"], **dict(cfg["model_resolved"]))
    best = ckpt["selection"].get("best_state")
    model.load_state_dict(best if best is not None and cfg["train"].get("select", "val") != "last"
                          else ckpt["model"])
    return model.eval()


def eval_view(record: dict, corpus, part: str = "test"):
    """The (normalised) ``part`` ("test" or "val") of a record's split, as the run saw it."""
    from serlib.data.splits import Split
    from serlib.experiment import build_views

    exp = experiment_from_dict({k: v for k, v in record["config"].items() if k in Experiment.__dataclass_fields__})
    return getattr(build_views(exp, corpus, Split.from_dict(record["split"])), part)


def retrain_recorded(exp: Experiment, recorded: str | Path) -> tuple[dict, object, object, dict]:
    """Seed 0 / fold 0 of ``exp`` retrained with its model and views (training is deterministic on CPU, so this is
    the committed run when ``recorded`` holds it), and a summary naming the committed record it repeats, with both
    test UAs. For the figure records: ``(record, model, views, run summary)``."""
    from serlib.experiment import record_path_of

    exp = exp.replace(seeds=(0,), folds=(0,))
    corpus = corpus_for(exp)
    rec, model, views = run_one(exp, corpus, split_for(exp, corpus, 0), 0, results_dir=None, return_model=True)
    recorded = Path(recorded)
    path = record_path_of(rec, recorded)
    committed = json.loads(path.read_text()) if path.exists() else None
    run = {"kind": rec["kind"], "seed": 0, "fold": 0, "config_hash": rec["config_hash"],
           "test_ua": rec["metrics"]["ua"], "test_wa": rec["metrics"]["wa"],
           "recorded_path": str(path.relative_to(recorded.parent)),
           "recorded_test_ua": committed["metrics"]["ua"] if committed else None}
    return rec, model, views, run
