"""The study contract: one shape for every paper's study, one registry, one runner.

A study (the shape of a SpeechBrain recipe) is a module under ``serlib/studies/`` (or any importable module named in
``$SERLIB_PLUGINS``) that defines ``STUDY = Study(...)``:

* ``experiments(corpus, data_root, *, profile, protocols, **options)`` -> the :class:`serlib.experiment.Experiment`
  list it runs (per profile and protocol; profiles are declared data, :class:`Profile`);
* ``tables``: named functions records -> DataFrame (the summary, ablations), ``tests``: its paired tests;
* ``paper_reference``: the published numbers (quoted, never measured), ``figures``: its figure records, ``notebook``.

:func:`all_studies` discovers them (no list to edit: a sixth paper is a model file, a study file and a notebook),
:func:`run` runs any of them through the one resumable runner (:func:`serlib.studies.common.run_study`, the sweep
backend underneath), and :func:`parse_overrides` turns ``--model.n_head 2 --train.epochs 10`` into checked, typed
overrides before any data is read. Models are found the same way (:mod:`serlib.models.registry`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from serlib.experiment import Experiment

PROFILES: tuple[str, ...] = ("quick", "cpu", "full")
PROTOCOLS: tuple[str, ...] = ("paper", "speaker_independent")


@dataclass(frozen=True)
class Profile:
    """What a profile changes in a study's full (paper) configuration: ``train`` / ``model`` overrides merged into
    the experiment's, other Experiment fields replaced (``experiment``), the seeds kept (``n_seeds`` first ones, or
    ``seeds``), the folds run (``folds``, when the experiment names none) and a name ``suffix`` (``"_cpu"``) so that
    records of a reduced configuration never mix with the full one's in a table."""

    train: Mapping = field(default_factory=dict)
    model: Mapping = field(default_factory=dict)
    experiment: Mapping = field(default_factory=dict)
    seeds: tuple[int, ...] | None = None
    n_seeds: int | None = None
    folds: tuple[int, ...] | None = None
    suffix: str = ""

    def apply(self, exp: Experiment) -> Experiment:
        seeds = tuple(self.seeds) if self.seeds is not None else exp.seeds[: self.n_seeds] if self.n_seeds else exp.seeds
        folds = exp.folds if exp.folds is not None or self.folds is None else tuple(self.folds)
        return exp.replace(name=exp.name + self.suffix, train={**exp.train, **self.train},
                           model_kwargs={**exp.model_kwargs, **self.model}, seeds=seeds, folds=folds,
                           **dict(self.experiment))


@dataclass(frozen=True)
class Table:
    """A named table of a study: ``fn(records) -> DataFrame``; ``digits`` for its Markdown form."""

    name: str
    title: str
    fn: Callable[[list[dict]], pd.DataFrame]
    digits: int = 1
    note: str = ""


@dataclass(frozen=True)
class Study:
    """One paper's study (see the module docstring). ``prefixes``: the experiment names its records carry (records
    name their study in ``record["identity"]["study"]``; ``prefixes`` also claims records written before that field
    existed). ``options``: extra keyword options of ``experiments`` the CLI offers, ``name -> (choices, default,
    help)``."""

    name: str
    title: str
    paper: str
    experiments: Callable[..., list[Experiment]]
    tables: tuple[Table, ...]
    prefixes: tuple[str, ...]
    tests: tuple[Table, ...] = ()
    paper_reference: Callable[[], pd.DataFrame] | None = None
    figures: Mapping[str, Callable[..., dict]] = field(default_factory=dict)
    notebook: str | None = None
    protocols: tuple[str, ...] = PROTOCOLS
    options: Mapping[str, tuple] = field(default_factory=dict)
    default_corpus: str = "ravdess"
    in_comparison: bool = True  # its speaker-independent runs join the every-model-on-the-same-folds table
    main_arm: str = ""  # the arm README's status row reports (the paper's full model)
    paper_claim: str = ""  # the paper's headline figure, quoted (never measured here)
    # pools of its experiments whose runs may be ensembled together (name -> experiment names, from its records),
    # candidates of the best speaker-independent ensemble beside each experiment's own seed ensemble
    ensemble_pools: Callable[[list[dict]], dict[str, list[str]]] | None = None

    def status(self, records: list[dict]) -> list[dict]:
        """README's status rows: the main arm's validation-selected test UA per (corpus, protocol, profile) and
        experiment; experiments never pool (when a cell holds several, every row of the study names its experiment)."""
        from serlib.report import identity, is_ok

        groups: dict[tuple, list[float]] = {}
        for r in records:
            if is_ok(r) and identity(r)["arm"] == self.main_arm:
                key = (r["corpus"]["name"], r["split"]["protocol"], identity(r)["profile"], r["kind"])
                groups.setdefault(key, []).append(100 * float(r["metrics"]["ua"]))
        shared = pd.Series([k[:3] for k in groups]).value_counts() if groups else pd.Series(dtype=int)
        # a study whose cells hold several experiments names the experiment on every row, not only on those cells
        named = bool(len(shared)) and int(shared.max()) > 1
        rows = []
        for (corpus, protocol, profile, kind), v in sorted(groups.items()):
            s = pd.Series(v)
            sd = f" ± {s.std(ddof=1):.1f}" if len(s) > 1 else ""
            title = f"{self.title} ({kind})" if named else self.title
            rows.append({"paper": title, "corpus": corpus, "protocol": protocol, "profile": profile,
                         "our UA (%)": f"{s.mean():.1f}{sd} ({len(s)} runs)", "paper's (quoted)": self.paper_claim})
        return rows

    def owns(self, record: dict) -> bool:
        study = (record.get("identity") or {}).get("study")
        if study:
            return study == self.name
        return any(str(record.get("kind", "")).startswith(p) for p in self.prefixes)

    def records(self, results_dir: str | Path) -> list[dict]:
        """Every successful record of this study under ``results_dir`` (failed runs never count)."""
        from serlib.studies.common import load_records

        return [r for r in load_records(results_dir) if self.owns(r)]

    def build(self, corpus: str | None = None, data_root: str | None = None, *, profile: str = "full",
              protocols: Sequence[str] | None = None, overrides: Mapping | None = None, seeds=None, folds=None,
              corpus_kwargs: Mapping | None = None, arms: Sequence[str] | None = None,
              **options) -> list[Experiment]:
        """The experiments of this study, identity set, with ``overrides`` (from :func:`parse_overrides`) applied
        and checked, ``seeds`` / ``folds`` restricted when given, only the ``arms`` named (when given), and
        ``corpus_kwargs`` (a custom corpus's name, a label map) merged into each experiment's."""
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
        protocols = tuple(protocols or self.protocols)
        bad = set(protocols) - set(self.protocols)
        if bad:
            raise ValueError(f"{self.name}: unknown protocols {sorted(bad)}; known: {list(self.protocols)}")
        exps = self.experiments(corpus or self.default_corpus, data_root, profile=profile, protocols=protocols,
                                **options)
        if arms:
            known = sorted({e.arm for e in exps})
            if set(arms) - set(known):
                raise ValueError(f"{self.name}: unknown arms {sorted(set(arms) - set(known))}; known: {known}")
            exps = [e for e in exps if e.arm in arms]
        out = []
        for e in exps:
            e = apply_overrides(e, overrides or {})
            if seeds:
                e = e.replace(seeds=tuple(int(s) for s in seeds))
            if folds:
                e = e.replace(folds=tuple(int(f) for f in folds))
            if corpus_kwargs:
                e = e.replace(corpus_kwargs={**e.corpus_kwargs, **corpus_kwargs})
            out.append(e.replace(study=self.name, profile=profile))
        return out


# ------------------------------------------------------------------------------------------------ registry
_REGISTRY: dict[str, Study] = {}
_DISCOVERED = False


def register(study: Study) -> Study:
    """Add ``study`` to the registry (what discovery does for every ``STUDY``); a second, different study of the
    same name is an error."""
    old = _REGISTRY.get(study.name)
    if old is not None and old is not study:
        raise ValueError(f"two studies are both named {study.name!r}")
    _REGISTRY[study.name] = study
    return study


def plugin_modules() -> list[str]:
    """Module names in ``$SERLIB_PLUGINS`` (comma or space separated): studies and models outside serlib."""
    return [m for m in os.environ.get("SERLIB_PLUGINS", "").replace(",", " ").split() if m]


def _discover() -> None:
    global _DISCOVERED
    import serlib.studies as pkg

    names = [f"serlib.studies.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    for name in names + plugin_modules():
        module = importlib.import_module(name)
        study = getattr(module, "STUDY", None)
        if isinstance(study, Study):
            register(study)
    _DISCOVERED = True


def all_studies() -> dict[str, Study]:
    """Every registered study by name (discovered on first use), in name order."""
    if not _DISCOVERED:
        _discover()
    return dict(sorted(_REGISTRY.items()))


def get_study(name: str) -> Study:
    studies = all_studies()
    if name not in studies:
        raise KeyError(f"unknown study {name!r}; known: {sorted(studies)}")
    return studies[name]


# ------------------------------------------------------------------------------------------------ overrides
class ConfigError(ValueError):
    """A configuration override names an unknown field or a value of the wrong type."""


SECTIONS = ("model", "train", "loss", "experiment")


def _convert(value, tp, where: str):
    """``value`` (a string from the command line, or a Python value) as type ``tp`` (a dataclass annotation)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _convert(value, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if tp is typing.Any:
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        inner = args[0] if args else str
        return tuple(_convert(v, inner, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        import json

        try:
            out = json.loads(value)
        except (TypeError, ValueError):
            out = None
        if not isinstance(out, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {value!r}")
        return out
    return value


def _fields(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, typing.Any) for f in dataclasses.fields(cls)}


def check_fields(cls, values: Mapping, where: str) -> dict:
    """``values`` converted to ``cls``'s field types; unknown names or bad values raise :class:`ConfigError`
    naming them (before any data is read)."""
    known = _fields(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    return {k: _convert(v, known[k], f"{where}.{k}") for k, v in values.items()}


def loss_fields() -> dict[str, object]:
    """The ``--loss.FIELD`` names and types: the keyword options of :func:`serlib.losses.make_loss` (``gamma``,
    ``alpha``; not the training labels / class count the experiment passes itself)."""
    import inspect

    from serlib.losses import make_loss

    hints = typing.get_type_hints(make_loss)
    return {n: hints.get(n, typing.Any) for n, p in inspect.signature(make_loss).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in ("y_train", "n_classes")}


def check_loss_fields(values: Mapping) -> dict:
    """``values`` (``--loss.*`` overrides) converted to :func:`loss_fields` types; unknown names raise
    :class:`ConfigError`."""
    known = loss_fields()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"loss: unknown field(s) {unknown}; known: {sorted(known)}")
    return {k: _convert(v, known[k], f"loss.{k}") for k, v in values.items()}


def parse_overrides(argv: Sequence[str]) -> dict[str, dict]:
    """``["--model.n_head", "2", "--train.epochs=10"]`` -> ``{"model": {"n_head": "2"}, "train": {"epochs": "10"}}``
    (values still strings: :func:`apply_overrides` converts them with each experiment's typed configs). Sections:
    ``model`` (the model's config dataclass), ``train`` (:class:`serlib.train.TrainConfig`), ``loss`` (the loss's
    keyword arguments, :func:`loss_fields`) and ``experiment`` (:class:`serlib.experiment.Experiment` fields)."""
    out: dict[str, dict] = {}
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        if not arg.startswith("--") or "." not in arg:
            raise ConfigError(f"unrecognised argument {arg!r}; config fields are set as --section.field VALUE "
                              f"with section one of {list(SECTIONS)}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(items) or (items[i + 1].startswith("--") and len(items[i + 1]) > 2 and
                                       not items[i + 1][2].isdigit()):
                raise ConfigError(f"{arg}: missing value")
            value = items[i + 1]
            i += 1
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ConfigError(f"{arg}: section must be one of {list(SECTIONS)}")
        out.setdefault(section, {})[name.replace("-", "_")] = value
        i += 1
    return out


def apply_overrides(exp: Experiment, overrides: Mapping[str, Mapping]) -> Experiment:
    """``exp`` with checked, typed overrides merged (``train`` / ``model`` / ``loss`` into its dicts)."""
    from serlib.models.registry import model_classes
    from serlib.train import TrainConfig

    if not overrides:
        return exp
    changes: dict = {}
    if overrides.get("experiment"):
        fields = check_fields(Experiment, overrides["experiment"], "experiment")
        for k in ("name", "study", "profile", "arm"):
            if k in fields:
                raise ConfigError(f"experiment.{k} is the study's to set, not an override")
        changes.update(fields)
    if overrides.get("train"):
        changes["train"] = {**exp.train, **check_fields(TrainConfig, overrides["train"], "train")}
    if overrides.get("model"):
        model = changes.get("model", exp.model)
        _, config_cls = model_classes(model)
        changes["model_kwargs"] = {**exp.model_kwargs, **check_fields(config_cls, overrides["model"],
                                                                     f"model ({model})")}
    if overrides.get("loss"):
        changes["loss_kwargs"] = {**exp.loss_kwargs, **check_loss_fields(overrides["loss"])}
    return exp.replace(**changes)


# ------------------------------------------------------------------------------------------------ running
def run(study: Study | str, *, corpus: str | None = None, data_root: str | None = None, profile: str = "full",
        protocols: Sequence[str] | None = None, overrides: Mapping | None = None, seeds=None, folds=None,
        results_dir: str | Path = "results", n_jobs: int = 1, backend: str = "process", progress: bool = False,
        checkpoint_root: str | Path | None = None, corpus_kwargs: Mapping | None = None, arms=None,
        prebuild: bool = True, ray_address: str | None = None, **options) -> list[dict]:
    """Run ``study`` (a :class:`Study` or its registry name): its experiments for the profile and protocols, every
    (experiment, seed, fold) not yet recorded under ``results_dir``; returns all their records in task order.
    Feature caches are built once here, before any worker starts (``prebuild=False``: by the workers, in parallel;
    for studies whose many arms each need their own features, e.g. the noise designs). With ``checkpoint_root``
    every run checkpoints each epoch there (a killed run resumes from its last epoch,
    :func:`serlib.experiment.run_one`) and keeps what ``serlib predict`` needs beside its weights. ``backend`` /
    ``ray_address``: :func:`run_study`'s."""
    from serlib.experiment import build_views
    from serlib.studies.common import corpus_for, run_study, split_for

    study = get_study(study) if isinstance(study, str) else study
    exps = study.build(corpus, data_root, profile=profile, protocols=protocols, overrides=overrides, seeds=seeds,
                       folds=folds, corpus_kwargs=corpus_kwargs, arms=arms, **options)
    if not exps:
        raise ValueError(f"{study.name}: nothing to run for corpus {corpus or study.default_corpus} and protocols "
                         f"{list(protocols or study.protocols)}")
    for exp in exps if prebuild else ():  # else each worker builds (and caches) its own features, in parallel
        c = corpus_for(exp)
        build_views(exp, c, split_for(exp, c, (exp.folds or (0,))[0]))
    return run_study(exps, results_dir=results_dir, n_jobs=n_jobs, backend=backend, progress=progress,
                     checkpoint_root=checkpoint_root, ray_address=ray_address)


def summary(study: Study, records: list[dict]) -> pd.DataFrame:
    """The study's first table that covers ``records`` (what ``serlib reproduce`` prints): a run of only some of
    a study's designs (the noise study's b-e without a) gets the first table with rows, not an empty one."""
    ok = [r for r in records if r.get("status", "ok") == "ok" and "metrics" in r]
    for table in study.tables if ok else ():
        df = table.fn(ok)
        if len(df):
            return df
    return pd.DataFrame()
