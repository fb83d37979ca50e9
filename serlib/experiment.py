"""SER experiments: corpus -> split -> cached features -> trainer -> utterance metrics -> run record.

(Over 450 lines for now: the three built-in views, the skip / flag policies and the run record are one pipeline
that every study shares; the views belong in a module of their own, which is the next split to make.)

This is where the emotion-specific logic lives (the trainer knows nothing of it). One :class:`Experiment` names
everything a run depends on; :func:`run_experiment` runs it for seeds x folds and writes one JSON record per run.

Views of the audio (``Experiment.view``):

* ``"segments"``: fixed windows (Head Fusion: 2 s, train step 1 s, test step 0.4 s); each segment keeps its
  utterance's label, and at evaluation the utterance prediction is the mean of its segments' softmax outputs.
* ``"sequence"``: whole utterances as variable-length frame sequences with lengths (FACA, MOMA).
* ``"fixed"``: every utterance centre-padded / centre-cropped to ``fixed_s`` seconds (ECA's 6 s).

Features are computed once per (corpus content, preset, view settings) and cached on disk
(:mod:`serlib.cache`); every split, seed and model reads the same cached arrays. The cache key holds
:meth:`Corpus.content_hash`, a hash of every file's bytes, so a file fixed in place gets new features.

Nothing silent (see ``docs/DATA.md``):

* utterances whose features are not finite (NaN / inf) are skipped and listed (``Experiment.nonfinite="skip"``,
  the default) or stop the run with :class:`NonFiniteFeaturesError` (``"fail"``); all-zero (silent) clips are
  skipped and listed (``Experiment.silent="skip"``) or kept and flagged (``"keep"``);
* every run record lists each utterance left out (``skips``: path, reason, stage) and each kept one worth knowing
  about (``flags``: padded short clips, containers that differ from the extension), with counts in ``counts``;
* a non-finite training loss gives a record with ``status: "failed"`` and its reason, which no table counts;
* :func:`run_one` resumes from its own checkpoint under ``checkpoint_root``; with ``resume=True`` (``serlib
  experiment``) it refuses one made by another configuration (:class:`serlib.train.CheckpointMismatchError`), by
  default it replaces it with a warning, never resuming from it;
* a record on disk made from other audio (its ``corpus.content_hash`` differs) is stale: :func:`run_experiment`
  runs it again instead of returning it. Record paths depend on the configuration only, so the committed records
  of an unchanged corpus keep their paths; records written before content hashes existed carry none and are taken
  as matching.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from serlib import cache as feature_cache
from serlib import features as F
from serlib import speaker_norm
from serlib.data.audio import AudioError, load_audio
from serlib.data.corpus import Corpus
from serlib.data.segment import center_pad_or_crop, segment_batch
from serlib.data.splits import Split, make_splits
from serlib.evaluate import aggregate, classification_metrics
from serlib.models.registry import build_model
from serlib.records import (
    code_revision,
    make_record,
    read_record,
    record_path,
    safe_name,
    store_split,
    to_jsonable,
    write_record,
)
from serlib.sweep import thread_settings
from serlib.train import (
    CHECKPOINT_NAME,
    RESUME_IGNORED,
    ArrayData,
    CheckpointMismatchError,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
)

code_revision()  # read now: the revision of the code this process imported (run records name it)

FEATURE_FORMAT = 2  # bump when the cached layout changes (2: nonfinite / silent / padded rows)
NONFINITE_POLICIES = ("skip", "fail")
SILENT_POLICIES = ("skip", "keep")
SHORT_POLICIES = ("auto", "paper", "pad", "tile")
# protocols under which the "segments" view keeps its paper's own policy for short utterances with
# short_policy="auto": Head Fusion's random 80/20 (the authors' code drops utterances <= 2 s from every part)
SEGMENT_PAPER_PROTOCOLS = ("random_80_20",)


class NonFiniteFeaturesError(ValueError):
    """Features of some utterances are NaN or infinite and the policy is ``nonfinite="fail"``."""


@dataclass
class Experiment:
    """Everything one study configuration depends on. ``seeds`` x ``folds`` runs are made from it."""

    name: str = "reference"
    corpus: str = "synthetic"
    data_root: str | None = None
    corpus_kwargs: dict = field(default_factory=dict)
    protocol: str = "speaker_independent"
    protocol_kwargs: dict = field(default_factory=dict)
    split_seed: int = 0  # splits depend on this, not on the training seed, so all models share them
    folds: tuple[int, ...] | None = None  # None: every fold the protocol defines
    features: str = "head_fusion_mfcc"
    view: str = "segments"
    win_s: float = 2.0
    train_step_s: float = 1.0
    test_step_s: float = 0.4
    short: str = "pad"  # clips shorter than one window: "pad" (one zero-padded window) or "drop" (counted)
    min_len_s: float = 0.0  # drop utterances not longer than this (the Head Fusion code drops <= 2 s)
    # "segments" view, val / test utterances that min_len_s or one window would leave out (:func:`short_policy_of`):
    # "auto" (the paper's policy under the paper's protocol, else "pad"), "paper" (min_len_s and short as set, for
    # every part), "pad" / "tile" (every val / test utterance counts: one window zero-padded / repeated)
    short_policy: str = "auto"
    fixed_s: float = 6.0
    augment_features: tuple[str, ...] = ()  # "fixed" view: extra presets whose training copies join the train set
    normalize: bool = True  # per-feature-bin mean / std from the training part only
    view_kwargs: dict = field(default_factory=dict)  # settings of a registered view (e.g. the SSL model and layer)
    model: str = "reference"
    model_kwargs: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)  # TrainConfig fields
    loss: str = "ce"
    loss_kwargs: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    aggregate: str = "mean_prob"
    # identity, not configuration (kept out of the record path's hash, stored in the record's ``identity``): the
    # study that declared the experiment, the profile it was built for, and its arm within the study (ablation step,
    # sweep point), so tables never parse folder or experiment names back
    study: str = ""
    profile: str = ""
    arm: str = ""
    nonfinite: str = "skip"  # utterances with NaN / inf features: "skip" (listed in the record) or "fail"
    silent: str = "skip"  # all-zero clips: "skip" (listed in the record) or "keep" (flagged in the record)

    def __post_init__(self) -> None:
        if self.corpus == "custom" and os.environ.get(CUSTOM_CORPUS_ENV):  # `serlib study --manifest` (notebooks)
            env = custom_corpus_from_env()
            self.data_root = self.data_root or env.get("manifest")
            self.corpus_kwargs = {**{k: v for k, v in env.items() if k != "manifest"}, **self.corpus_kwargs}
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite={self.nonfinite!r}: choose one of {NONFINITE_POLICIES}")
        if self.silent not in SILENT_POLICIES:
            raise ValueError(f"silent={self.silent!r}: choose one of {SILENT_POLICIES}")
        if self.short_policy not in SHORT_POLICIES:
            raise ValueError(f"short_policy={self.short_policy!r}: choose one of {SHORT_POLICIES}")
        self._model_config_class()  # a misspelt model field fails here, when the experiment is made

    def _model_config_class(self):
        from serlib.models.registry import model_classes

        _, config_cls = model_classes(self.model)
        known = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(self.model_kwargs) - known)
        if unknown:
            raise TypeError(f"experiment {self.name!r}: model {self.model!r} has no config field(s) {unknown}; "
                            f"known: {sorted(known - {'n_classes', 'n_features'})}")
        return config_cls

    def model_config(self, *, n_classes: int, n_features: int):
        """The model's typed config (its dataclass, e.g. ``HeadFusionConfig``) with ``model_kwargs`` applied;
        ``n_classes`` / ``n_features`` come from the data at run time. Unknown fields raise naming them."""
        return self._model_config_class()(n_classes=n_classes, n_features=n_features, **self.model_kwargs)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["seeds"], d["folds"] = list(self.seeds), None if self.folds is None else list(self.folds)
        d["augment_features"] = list(self.augment_features)
        return d

    def replace(self, **kw) -> Experiment:
        return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------------------------- corpora
CUSTOM_CORPUS_ENV = "SERLIB_CUSTOM_CORPUS"  # JSON {"manifest", "name", "label_map"}: `serlib study --manifest`


def custom_corpus_from_env() -> dict:
    """``$SERLIB_CUSTOM_CORPUS`` (set by ``serlib study --manifest``, read by notebooks' experiments): the manifest
    CSV, the corpus name and label map of a custom corpus; ``{}`` when unset."""
    text = os.environ.get(CUSTOM_CORPUS_ENV, "").strip()
    if not text:
        return {}
    try:
        out = json.loads(text)
    except ValueError:
        out = None
    if not isinstance(out, dict):
        raise ValueError(f"${CUSTOM_CORPUS_ENV} must be a JSON object, got {text[:200]!r}")
    return out


def _roots() -> list[tuple[str, Path]]:
    """Named roots a manifest path is stored relative to, in order: ``$SERLIB_DATA``, the repository, the cwd."""
    out = []
    if os.environ.get("SERLIB_DATA"):
        out.append(("SERLIB_DATA", Path(os.environ["SERLIB_DATA"]).expanduser().resolve()))
    out += [("repo", Path(__file__).resolve().parents[1]), ("cwd", Path.cwd().resolve())]
    return out


def named_path(path: str | Path) -> dict:
    """``{"root": name, "path": relative}`` for the first named root (:func:`_roots`) holding ``path``, else
    ``{"root": None, "path": absolute}``: what records store, portable across machines and checkouts."""
    p = Path(path).expanduser().resolve()
    for name, root in _roots():
        if p.is_relative_to(root):
            return {"root": name, "path": p.relative_to(root).as_posix()}
    return {"root": None, "path": p.as_posix()}


def resolve_named_path(entry: dict) -> Path:
    """The file a :func:`named_path` entry names on this machine (a clear error when its root is unknown here)."""
    if entry.get("root") is None:
        return Path(entry["path"])
    roots = dict(_roots())
    if entry["root"] not in roots:
        raise FileNotFoundError(f"{entry['path']} is recorded relative to ${entry['root']}, which is not set here; "
                                f"set it, or pass the manifest's path")
    return roots[entry["root"]] / entry["path"]


def corpus_source(exp: Experiment) -> dict:
    """What a run record stores about where a custom corpus came from: its manifest (a :func:`named_path` with the
    file's sha256) and the label map (any corpus's, when one is given)."""
    out = {"label_map": dict(exp.corpus_kwargs["label_map"])} if exp.corpus_kwargs.get("label_map") else {}
    if exp.corpus != "custom" or not exp.data_root:
        return out
    from serlib.data.manifest import manifest_hash

    return {"manifest": {**named_path(exp.data_root), "sha256": manifest_hash(exp.data_root)},
            "label_map": {}, **out}


def stratified_subset(corpus: Corpus, per_speaker_class: int) -> Corpus:
    """A fixed subset: the first ``per_speaker_class`` utterances (by ``utt_id``) of every (speaker, label), so every
    speaker and class stays and a speaker-independent split still has them all (the quick profile on real corpora)."""
    t = corpus.table
    rank = t.sort_values("utt_id").groupby(["speaker", "label"], sort=False).cumcount()
    return corpus.subset((rank.reindex(t.index) < per_speaker_class).to_numpy())


def load_experiment_corpus(name: str, /, data_root: str | Path | None = None, **kwargs) -> Corpus:
    """``"synthetic"`` (generated on first use), ``"custom"`` (``data_root`` is the manifest CSV of
    :func:`serlib.data.custom.load_custom`; ``name``, ``labels`` and the other keyword arguments go to it; without
    ``data_root``, ``$SERLIB_CUSTOM_CORPUS`` names it) or a corpus of :mod:`serlib.data.registry` under
    ``data_root``. ``label_map`` (any corpus): labels renamed / merged / dropped at load
    (:func:`serlib.data.custom.relabel`). ``per_speaker_class=n`` keeps :func:`stratified_subset` of it (what the
    quick profile does on real corpora)."""
    from serlib.data.custom import relabel

    per_speaker_class = kwargs.pop("per_speaker_class", None)
    if per_speaker_class is not None:
        return stratified_subset(load_experiment_corpus(name, data_root, **kwargs), int(per_speaker_class))
    label_map = kwargs.pop("label_map", None)
    if name == "custom":
        from serlib.data.custom import load_custom

        env = custom_corpus_from_env()
        data_root = data_root or env.get("manifest")
        if not data_root:
            raise FileNotFoundError("corpus 'custom' needs data_root: the path of its manifest CSV (serlib ... "
                                    "--manifest CSV)")
        if env and Path(env.get("manifest", "")).resolve() == Path(data_root).resolve():
            kwargs = {**({"name": env["name"]} if env.get("name") else {}), **kwargs}
            label_map = label_map if label_map is not None else env.get("label_map")
        corpus = load_custom(data_root, **kwargs)
        return relabel(corpus, label_map) if label_map else corpus
    if label_map:
        return relabel(load_experiment_corpus(name, data_root, **kwargs), label_map)
    if name == "synthetic":
        from serlib.data.synthetic import default_synthetic_root, make_synthetic

        root = kwargs.pop("root", None) or default_synthetic_root()
        return make_synthetic(root, **kwargs)
    from serlib.data.registry import data_root as resolve_root
    from serlib.data.registry import find_corpora, load_corpus

    root = resolve_root(data_root)
    if root is None:
        raise FileNotFoundError(f"corpus {name!r} needs a data root: pass data_root or set SERLIB_DATA")
    found = find_corpora(root)
    if name not in found:
        raise FileNotFoundError(f"corpus {name!r} not found under {root} (found: {sorted(found) or 'nothing'})")
    return load_corpus(name, found[name], **kwargs)


# --------------------------------------------------------------------------------------------- features
_WAVE_MEMO: dict[tuple[str, int], tuple[list, list]] = {}


def corpus_waveforms(corpus: Corpus, sr: int = 16_000) -> tuple[list[np.ndarray | None], list[dict]]:
    """Decode every utterance once per process. Undecodable files give ``None`` and a skip entry naming the file."""
    if hasattr(corpus, "waveforms"):  # a corpus that makes its own audio (e.g. noisy copies, serlib.studies.noise)
        return corpus.waveforms(sr)
    key = (corpus.content_hash() + str(corpus.root), sr)
    if key not in _WAVE_MEMO:
        waves, failed = [], []
        for i, path in enumerate(corpus.paths):
            try:
                waves.append(load_audio(path, sr=sr))
            except AudioError as exc:
                waves.append(None)
                failed.append({"index": i, "path": str(path), "reason": exc.reason})
        _WAVE_MEMO.clear()  # keep one corpus in memory at a time
        _WAVE_MEMO[key] = (waves, failed)
    return _WAVE_MEMO[key]


def _spec(corpus: Corpus, preset: F.FeaturePreset, **view) -> dict:
    return {"format": FEATURE_FORMAT, "corpus": corpus.name, "fingerprint": corpus.fingerprint(),
            "content": corpus.content_hash(), "root": str(Path(corpus.root).resolve()), "preset": preset.to_dict(),
            **view}


def _silent(waves) -> np.ndarray:
    """Rows whose decoded audio is all zeros."""
    return np.asarray([i for i, w in enumerate(waves) if w is not None and not np.any(w)], np.int64)


def _nonfinite_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Distinct ``rows[k]`` for which ``x[k]`` holds a NaN or an infinity."""
    if len(x) == 0:
        return np.zeros(0, np.int64)
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    return np.unique(np.asarray(rows, np.int64)[bad])


def segment_features(corpus: Corpus, preset: F.FeaturePreset, *, win_s: float, step_s: float, short: str,
                     device=None, refresh: bool = False) -> dict[str, np.ndarray]:
    """Features of fixed windows of every utterance: ``x`` (N, F, T), ``groups`` (N,) row of the source utterance,
    ``too_short`` (rows that gave no window), ``failed`` (rows whose audio could not be decoded), ``nonfinite``
    (rows with a NaN / inf feature), ``silent`` (all-zero rows), ``padded`` (rows shorter than one window that were
    padded or tiled to one)."""
    sr = preset.sr
    spec = _spec(corpus, preset, view="segments", win_s=win_s, step_s=step_s, short=short)

    def build():
        waves, failed = corpus_waveforms(corpus, sr)
        ok = [i for i, w in enumerate(waves) if w is not None]
        seg = segment_batch([waves[i] for i in ok], win=int(round(win_s * sr)), step=int(round(step_s * sr)),
                            short=short)
        x = F.compute(preset, seg.segments, device=device).cpu().numpy() if len(seg.segments) else \
            np.zeros((0, preset.n_features, preset.n_frames(int(round(win_s * sr)))), np.float32)
        groups = np.asarray(ok, np.int64)[seg.groups]
        win = int(round(win_s * sr))
        return {"x": x.astype(np.float32), "groups": groups,
                "too_short": np.asarray([ok[j] for j in seg.too_short_ids], np.int64),
                "failed": np.asarray([f["index"] for f in failed], np.int64),
                "failed_reason": np.asarray([f["reason"] for f in failed], dtype=str),
                "nonfinite": _nonfinite_rows(x, groups), "silent": _silent(waves),
                "padded": np.asarray([i for i in ok if len(waves[i]) < win and short != "drop"], np.int64)}

    return feature_cache.cached_arrays(spec, build, refresh=refresh)


def short_policy_of(exp: Experiment) -> tuple[str, str]:
    """What a ``segments`` run does with short val / test utterances, and why: ``"paper"`` (``min_len_s`` and
    ``short`` as set, for every part: the paper's own policy, e.g. the Head Fusion authors drop utterances <= 2 s),
    ``"pad"`` / ``"tile"`` (every val / test utterance counts: one shorter than one window gives one window,
    zero-padded / repeated (:func:`serlib.data.segment.fixed_windows`); one not longer than ``min_len_s`` is kept).
    The training part always follows ``min_len_s`` and ``short`` as set. ``short_policy="auto"`` (the default) is
    ``"paper"`` under :data:`SEGMENT_PAPER_PROTOCOLS` and ``"pad"`` under every other protocol."""
    if exp.short_policy != "auto":
        return exp.short_policy, f"short_policy={exp.short_policy!r} set in the experiment"
    if exp.protocol in SEGMENT_PAPER_PROTOCOLS:
        return "paper", (f"auto: {exp.protocol} is the paper's protocol, so the authors' policy applies to every "
                         f"part (min_len_s={exp.min_len_s:g} s, short={exp.short!r})")
    return "pad", (f"auto: {exp.protocol} is not the paper's protocol, so every val / test utterance counts "
                   "(shorter than one window: zero-padded to one)")


def segment_short(exp: Experiment, part: str) -> str:
    """The ``short`` argument of :func:`segment_features` for ``part`` ("train", "val" or "test") of a run."""
    policy, _ = short_policy_of(exp)
    if part == "train" or policy == "paper":
        return exp.short
    return {"pad": "pad", "tile": "keep_one"}[policy]


def sequence_features(corpus: Corpus, preset: F.FeaturePreset, *, device=None, refresh: bool = False,
                      batch_seconds: float = 600.0) -> dict[str, np.ndarray]:
    """Whole-utterance frame sequences: ``frames`` (sum T_i, F) concatenated, ``offsets`` (n+1,), ``failed``,
    ``nonfinite``, ``silent`` (as in :func:`segment_features`)."""
    spec = _spec(corpus, preset, view="sequence")

    def build():
        waves, failed = corpus_waveforms(corpus, preset.sr)
        feats: list[np.ndarray] = [np.zeros((0, preset.n_features), np.float32)] * len(waves)
        order = sorted((i for i, w in enumerate(waves) if w is not None), key=lambda i: len(waves[i]))
        start = 0
        while start < len(order):  # length-bucketed batches bound padding and memory
            stop, budget = start, 0
            while stop < len(order) and (budget := budget + len(waves[order[stop]])) <= batch_seconds * preset.sr:
                stop += 1
            stop = max(stop, start + 1)
            idx = order[start:stop]
            lens = np.array([len(waves[i]) for i in idx])
            batch = np.zeros((len(idx), lens.max()), np.float32)
            for r, i in enumerate(idx):
                batch[r, : lens[r]] = waves[i]
            x, n = F.compute_with_lengths(preset, batch, lengths=torch.as_tensor(lens), device=device)
            x = x.cpu().numpy()
            for r, i in enumerate(idx):
                feats[i] = x[r, :, : int(n[r])].T.astype(np.float32)
            start = stop
        offsets = np.concatenate([[0], np.cumsum([len(f) for f in feats])]).astype(np.int64)
        nonfinite = np.asarray([i for i, f in enumerate(feats) if not np.isfinite(f).all()], np.int64)
        return {"frames": np.concatenate(feats, 0), "offsets": offsets,
                "failed": np.asarray([f["index"] for f in failed], np.int64),
                "failed_reason": np.asarray([f["reason"] for f in failed], dtype=str), "nonfinite": nonfinite,
                "silent": _silent(waves)}

    return feature_cache.cached_arrays(spec, build, refresh=refresh)


def fixed_features(corpus: Corpus, preset: F.FeaturePreset, *, seconds: float, device=None,
                   refresh: bool = False, batch: int = 64) -> dict[str, np.ndarray]:
    """Every utterance centre-padded / centre-cropped to ``seconds``: ``x`` (n, F, T), ``failed``, ``nonfinite``,
    ``silent``, ``padded`` (rows shorter than ``seconds``, zero-padded)."""
    spec = _spec(corpus, preset, view="fixed", seconds=seconds)
    n_samples = int(round(seconds * preset.sr))

    def build():
        waves, failed = corpus_waveforms(corpus, preset.sr)
        x = np.zeros((len(waves), preset.n_features, preset.n_frames(n_samples)), np.float32)
        for s in range(0, len(waves), batch):
            chunk = [center_pad_or_crop(w if w is not None else np.zeros(n_samples, np.float32), n_samples)
                     for w in waves[s: s + batch]]
            x[s: s + len(chunk)] = F.compute(preset, np.stack(chunk), device=device).cpu().numpy()
        return {"x": x, "failed": np.asarray([f["index"] for f in failed], np.int64),
                "failed_reason": np.asarray([f["reason"] for f in failed], dtype=str),
                "nonfinite": _nonfinite_rows(x, np.arange(len(x))), "silent": _silent(waves),
                "padded": np.asarray([i for i, w in enumerate(waves) if w is not None and len(w) < n_samples],
                                     np.int64)}

    return feature_cache.cached_arrays(spec, build, refresh=refresh)


# ------------------------------------------------------------------------------------------ data views
@dataclass
class Views:
    """Train / val / test :class:`ArrayData` of one split plus counts for the run record.

    skips: every utterance of the corpus left out, ``{"path", "reason", "stage"}``; flags: kept utterances worth
    knowing about, ``{"path", "flag"}`` (both corpus-wide, like ``counts``). A registered view may add
    ``extra_tests`` (name -> callable returning ``(ArrayData, info dict)``, built one at a time), which
    :func:`run_one` evaluates with the selected weights into ``metrics["conditions"][name]``, and ``stored``
    (relative path -> JSON-able content) that the record's results folder keeps once
    (:func:`serlib.records.store_split`)."""

    train: ArrayData
    val: ArrayData | None
    test: ArrayData
    counts: dict
    skips: list = field(default_factory=list)
    flags: list = field(default_factory=list)
    extra_tests: dict = field(default_factory=dict)
    stored: dict = field(default_factory=dict)
    # the training-part statistics each input was normalised with: {input name ("x" for a tensor x): (mean, std)},
    # saved beside a kept checkpoint so that ``serlib predict`` normalises new audio the same way
    normalizer: dict = field(default_factory=dict)
    # model config sizes the view decides (a dict-x view: e.g. {"n_features": 40, "w2v2_dim": 768}); a tensor x
    # gives n_features = x.shape[1]
    sizes: dict = field(default_factory=dict)


def _normalizer(x: torch.Tensor, lengths: torch.Tensor | None):
    """Per-feature-bin mean and std over the valid frames of the training part."""
    if lengths is None:
        mean = x.mean(dim=(0, 2), keepdim=True)
        std = x.std(dim=(0, 2), keepdim=True)
    else:
        mask = (torch.arange(x.shape[-1])[None, :] < lengths[:, None]).to(x.dtype)[:, None, :]
        n = mask.sum()
        mean = (x * mask).sum(dim=(0, 2), keepdim=True) / n
        std = (((x - mean) * mask) ** 2).sum(dim=(0, 2), keepdim=True).div(n).sqrt()
    return mean[0:1], std[0:1].clamp(min=1e-5)


# views a study adds without editing this file: name -> fn(exp, corpus, split, *, device) -> Views
VIEWS: dict[str, object] = {}


def register_view(name: str, fn) -> None:
    """Add a view (e.g. a study's two-input view returning dict batches); a built-in name cannot be replaced."""
    if name in ("segments", "sequence", "fixed"):
        raise ValueError(f"view {name!r} is built in")
    VIEWS[name] = fn
def _left_out(exp: Experiment, corpus: Corpus, stores: list[dict], keep: np.ndarray, win_short: set[int], *,
              note: str = "", by_stage: dict | None = None) -> tuple[set[int], dict, list, list]:
    """Rows no view may use, the counts, the skip list (path, reason, stage) and the flag list of a run. ``note``
    is added to the reasons of the length skips (``win_short``, ``keep``); ``by_stage``, when given, receives the
    rows each stage left out."""
    path = corpus.table["path"].astype(str).tolist()
    failed_reasons = {int(i): str(r) for s in stores for i, r in zip(s["failed"], s.get("failed_reason", []))}
    failed = set().union(*(s["failed"].tolist() for s in stores))
    nonfinite = set().union(*(s.get("nonfinite", np.zeros(0, np.int64)).tolist() for s in stores))
    silent = set().union(*(s.get("silent", np.zeros(0, np.int64)).tolist() for s in stores))
    padded = set().union(*(s.get("padded", np.zeros(0, np.int64)).tolist() for s in stores))
    if nonfinite and exp.nonfinite == "fail":
        names = ", ".join(path[i] for i in sorted(nonfinite)[:10])
        more = f" (and {len(nonfinite) - 10} more)" if len(nonfinite) > 10 else ""
        raise NonFiniteFeaturesError(
            f"{corpus.name}: {len(nonfinite)} utterance(s) under {corpus.root} give NaN / infinite {exp.features} "
            f"features: {names}{more}. Fix or remove those files, or set nonfinite='skip' to leave them out")
    skips: list[dict] = [{"path": s["path"], "reason": s["reason"], "stage": "scan"} for s in corpus.skipped]
    out: set[int] = set()

    def add(rows, reason, stage):
        for i in sorted(rows):
            if i not in out:
                out.add(i)
                skips.append({"path": path[i], "reason": reason(i) if callable(reason) else reason, "stage": stage})
                if by_stage is not None:
                    by_stage.setdefault(stage, set()).add(i)

    add(failed, lambda i: failed_reasons.get(i, "audio could not be decoded"), "decode")
    add(nonfinite, "features contain NaN or infinite values (nonfinite='skip')", "features")
    if exp.silent == "skip":
        add(silent, "audio is all zeros (silent='skip')", "decode")
    add(win_short, f"shorter than one {exp.win_s:g}-s window (short='drop'){note}", "segment")
    add({i for i in range(len(keep)) if not keep[i]}, f"not longer than min_len_s={exp.min_len_s:g} s{note}", "policy")
    how = "centre zero-padding"
    if exp.view == "segments":
        policy = short_policy_of(exp)[0]
        how = "short=" + exp.short + ("" if policy == "paper" else f"; val / test: short_policy={policy}")
    flags = [{"path": path[i], "flag": f"padded: shorter than {exp.win_s if exp.view == 'segments' else exp.fixed_s:g}"
              f" s ({how})"} for i in sorted(padded) if i not in out]
    if exp.silent == "keep":
        flags += [{"path": path[i], "flag": "all-zero audio kept (silent='keep')"} for i in sorted(silent - out)]
    flags += [{"path": p, "flag": "format_mismatch: container differs from the extension"}
              for p in corpus.format_mismatches()]
    counts = {"failed_audio": len(failed), "nonfinite": len(nonfinite), "silent": len(silent),
              "padded_short": len([i for i in padded if i not in out]), "format_mismatch": len(corpus.format_mismatches()),
              "skipped_total": len(skips)}
    return out, counts, skips, flags


def build_views(exp: Experiment, corpus: Corpus, split: Split, *, device=None) -> Views:
    if speaker_norm.wanted(exp):
        return _speaker_normalised_views(exp, corpus, split, device=device)
    if exp.view not in ("segments", "sequence", "fixed") and exp.view not in VIEWS:
        from serlib.studies.base import all_studies

        all_studies()  # importing the studies registers their views (a fresh worker process has none yet)
    if exp.view in VIEWS:
        return VIEWS[exp.view](exp, corpus, split, device=device)
    preset = F.PRESETS[exp.features]
    tr_idx, va_idx, te_idx = split.indices(corpus)
    y_all = torch.tensor(corpus.y)
    counts: dict = {"utterances": {"train": len(tr_idx), "val": len(va_idx), "test": len(te_idx)}}
    durations = corpus.table["duration"].to_numpy()
    keep = np.ones(len(corpus), bool)
    if exp.min_len_s > 0:
        keep &= durations > exp.min_len_s
        counts["dropped_min_len"] = int((~keep).sum())

    if exp.view == "segments":
        policy, why = short_policy_of(exp)
        tr_store = segment_features(corpus, preset, win_s=exp.win_s, step_s=exp.train_step_s,
                                    short=segment_short(exp, "train"), device=device)
        te_store = segment_features(corpus, preset, win_s=exp.win_s, step_s=exp.test_step_s,
                                    short=segment_short(exp, "test"), device=device)
        # "pad" / "tile": val / test utterances are exempt from the length skips (min_len_s, short="drop")
        evaluated = set() if policy == "paper" else {int(i) for i in (*va_idx, *te_idx)}
        too_short = (set(tr_store["too_short"].tolist()) - evaluated) | set(te_store["too_short"].tolist())
        kept_short = {i for i in evaluated if not keep[i]}
        keep = keep.copy()
        keep[sorted(evaluated)] = True
        if exp.min_len_s > 0:
            counts["dropped_min_len"] = int((~keep).sum())
        by_stage: dict = {}
        note = "" if policy == "paper" else f" (training part; short_policy={policy!r} keeps val / test ones)"
        out, c, skips, flags = _left_out(exp, corpus, [tr_store, te_store], keep, too_short, note=note,
                                         by_stage=by_stage)
        by_length = by_stage.get("segment", set()) | by_stage.get("policy", set())
        padded = {"train": set(tr_store["padded"].tolist()), "eval": set(te_store["padded"].tolist())}
        parts = {"train": tr_idx, "val": va_idx, "test": te_idx}
        counts["short_policy"] = {
            "policy": policy, "why": why, "train": f"min_len_s={exp.min_len_s:g} s, short={exp.short!r}",
            "padded": {p: len({int(i) for i in idx} & padded["train" if p == "train" else "eval"] - out)
                       for p, idx in parts.items()},
            "dropped": {p: len({int(i) for i in idx} & by_length) for p, idx in parts.items()},
            "kept_not_longer_than_min_len": {p: len({int(i) for i in idx} & kept_short - out)
                                             for p, idx in parts.items() if p != "train"}}

        def make(store, idx):
            idx = np.asarray([i for i in idx if i not in out], np.int64)
            sel = np.isin(store["groups"], idx)
            g = torch.as_tensor(store["groups"][sel])
            return ArrayData(x=torch.as_tensor(store["x"][sel]), y=y_all[g], lengths=None, groups=g)

        train, test = make(tr_store, tr_idx), make(te_store, te_idx)
        val = make(te_store, va_idx) if len(va_idx) else None
        counts.update(c, too_short=len(too_short),
                      segments={"train": len(train), "val": len(val) if val else 0, "test": len(test)})
    elif exp.view == "sequence":
        store = sequence_features(corpus, preset, device=device)
        off = store["offsets"]
        empty = {i for i in range(len(corpus)) if off[i + 1] == off[i]} - set(store["failed"].tolist())
        out, c, skips, flags = _left_out(exp, corpus, [store], keep, set())
        for i in sorted(empty - out):
            out.add(i)
            skips.append({"path": str(corpus.table.at[i, "path"]), "reason": "no feature frames (too short)",
                          "stage": "features"})

        def make(idx):
            idx = np.asarray([i for i in idx if i not in out], np.int64)
            seqs = [torch.as_tensor(store["frames"][off[i]: off[i + 1]].T) for i in idx]
            lengths = torch.as_tensor([s.shape[1] for s in seqs], dtype=torch.long)
            x = torch.zeros(len(seqs), preset.n_features, int(lengths.max()) if len(seqs) else 1)
            for r, s in enumerate(seqs):
                x[r, :, : s.shape[1]] = s
            g = torch.as_tensor(idx)
            return ArrayData(x=x, y=y_all[g], lengths=lengths, groups=g)

        train, test = make(tr_idx), make(te_idx)
        val = make(va_idx) if len(va_idx) else None
        counts.update(c)
        counts["skipped_total"] = len(skips)
    elif exp.view == "fixed":
        store = fixed_features(corpus, preset, seconds=exp.fixed_s, device=device)
        extras = [fixed_features(corpus, F.PRESETS[name], seconds=exp.fixed_s, device=device)
                  for name in exp.augment_features]
        out, c, skips, flags = _left_out(exp, corpus, [store, *extras], keep, set())

        def make(idx):
            idx = np.asarray([i for i in idx if i not in out], np.int64)
            g = torch.as_tensor(idx)
            return ArrayData(x=torch.as_tensor(store["x"][idx]), y=y_all[g], lengths=None, groups=g)

        train, test = make(tr_idx), make(te_idx)
        val = make(va_idx) if len(va_idx) else None
        counts.update(c)
        if exp.augment_features:  # STFT augmentation: the same training utterances in other STFT versions
            parts = [train]
            for name, extra in zip(exp.augment_features, extras):
                if extra["x"].shape[1:] != store["x"].shape[1:]:
                    raise ValueError(f"augment preset {name}: shape {extra['x'].shape[1:]} != {store['x'].shape[1:]}")
                parts.append(ArrayData(x=torch.as_tensor(extra["x"][train.groups.numpy()]), y=train.y,
                                       lengths=None, groups=train.groups))
            train = ArrayData(x=torch.cat([p.x for p in parts]), y=torch.cat([p.y for p in parts]), lengths=None,
                              groups=torch.cat([p.groups for p in parts]))
            counts["augment_copies"] = len(parts)
    else:
        raise ValueError(f"unknown view {exp.view!r}: segments, sequence or fixed")

    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"split {split.name}: empty train or test part after skips ({counts})")
    if exp.normalize:
        mean, std = _normalizer(train.x, train.lengths)
        normalizer = {"x": (mean, std)}
        for part in (train, val, test):
            if part is not None:
                part.x = (part.x - mean) / std
                if part.lengths is not None:  # keep padding at zero
                    mask = torch.arange(part.x.shape[-1])[None, :] < part.lengths[:, None]
                    part.x = part.x * mask[:, None, :]
    return Views(train, val, test, counts, skips, flags, normalizer=normalizer if exp.normalize else {})


def _speaker_normalised_views(exp: Experiment, corpus: Corpus, split: Split, *, device=None) -> Views:
    """The view of ``exp`` with every speaker's (or every utterance's) inputs standardised by that speaker's (that
    utterance's) statistics (:mod:`serlib.speaker_norm`), then the training part's normalisation as usual."""
    lvl = speaker_norm.level(exp.view_kwargs)
    key = speaker_norm.KEY if lvl == "speaker" else speaker_norm.UTTERANCE_KEY
    if exp.view not in speaker_norm.SEGMENT_VIEWS:
        raise ValueError(f"{exp.name}: per-{lvl} normalisation works on the segment views "
                         f"{list(speaker_norm.SEGMENT_VIEWS)}, not on view {exp.view!r}; drop "
                         f"view_kwargs[{key!r}] or use a segment view")
    views = build_views(speaker_norm.without(exp), corpus, split, device=device)
    store = segment_features(corpus, F.PRESETS[exp.features], win_s=exp.win_s, step_s=exp.test_step_s,
                             short=segment_short(exp, "test"), device=device)
    # per-utterance: every corpus row is its own group
    owners = (corpus.table["speaker"].astype(str).to_numpy() if lvl == "speaker"
              else np.arange(len(corpus)).astype(str))
    stats = speaker_norm.speaker_stats(store["x"], store["groups"], owners,
                                       exclude=set(store["failed"].tolist()) | set(store["nonfinite"].tolist()))
    parts = (views.train, views.val, views.test)
    speaker_norm.apply(parts, owners, stats)
    views.counts[key] = (
        {"speakers": len(stats), "stats_from": "every utterance of each speaker, its test-step segments, no labels "
         "(test speakers: their unlabelled test speech)"} if lvl == "speaker" else
        {"utterances": len(stats), "stats_from": "each utterance's own test-step segments (nothing of another "
         "utterance)"})
    views.normalizer = {}
    if exp.normalize:
        mean, std = _normalizer(views.train.x, None)
        for part in parts:
            if part is not None:
                part.x = (part.x - mean) / std
        views.normalizer = {"x": (mean, std)}
    return views


# --------------------------------------------------------------------------------------------- running
def utterance_scores(labels: tuple[str, ...], how: str = "mean_prob"):
    """A trainer ``score_fn``: segment logits -> utterance predictions -> UA (the selection score), WA, macro-F1
    (:func:`serlib.evaluate.make_score_fn`, its scalar metrics only, so per-epoch history stays small)."""
    from serlib.evaluate import make_score_fn

    full = make_score_fn(labels, how=how)

    def score_fn(logits: torch.Tensor, data: ArrayData) -> dict:
        m = full(logits, data)
        return {k: m[k] for k in ("score", "ua", "wa", "macro_f1")}

    return score_fn


def _make_loss(exp: Experiment, train: ArrayData, n_classes: int):
    """The trainer's ``loss_fn``: :func:`serlib.losses.make_loss` of ``exp.loss`` with ``exp.loss_kwargs`` (an
    ``alpha`` there adds the auxiliary-head term, :class:`serlib.losses.AuxiliaryLoss`); None (the trainer's
    cross-entropy) for plain ``"ce"``."""
    if exp.loss == "ce" and not exp.loss_kwargs:
        return None
    from serlib.losses import make_loss

    return make_loss(exp.loss, y_train=train.y, n_classes=n_classes, **exp.loss_kwargs)


RUN_MARKER = "run.json"  # beside a run's checkpoint: what the run is, so a resume can tell it is the same run


def checkpoint_dir(exp_name: str, split_name: str, seed: int, checkpoint_root: str | Path) -> Path:
    """``checkpoint_root/<name>_<split>_s<seed>`` with every part made safe (:func:`serlib.records.safe_name`): an
    experiment named ``"../x"`` cannot put its checkpoint outside ``checkpoint_root``."""
    root = Path(checkpoint_root)
    path = root / safe_name(f"{exp_name}_{split_name.replace('/', '_')}_s{seed}")
    if Path(path).resolve().parent != root.resolve():  # cannot happen with safe_name; kept as the contract
        raise ValueError(f"checkpoint folder {path} would leave the checkpoint root {root}")
    return path


def _run_identity(exp: Experiment, corpus: Corpus, split: Split, seed: int) -> dict:
    """What makes a checkpoint this run's: the run config (dicts flattened to ``train.lr``, ...), seed, split and
    audio; as it reads back from JSON, so that it compares equal to a stored copy."""
    ident = {"seed": int(seed), "split": split.name, "corpus": corpus.name, "content_hash": corpus.content_hash()}
    for k, v in run_config(exp.to_dict()).items():
        if isinstance(v, dict) and v:
            ident.update({f"{k}.{kk}": vv for kk, vv in v.items() if not (k == "train" and kk in RESUME_IGNORED)})
        else:
            ident[k] = v
    return json.loads(json.dumps(to_jsonable(ident, rounded=True), sort_keys=True))


RESUME_MODES = (True, False, "matching")


def _check_or_mark_checkpoint(folder: Path, identity: dict, resume: bool | str) -> bool:
    """True when the run should resume from ``folder``'s checkpoint (see :func:`run_one` for ``resume``). Otherwise
    the folder is marked for this run, and an older checkpoint in it removed, so a fresh run never mixes with it."""
    if resume not in RESUME_MODES:
        raise ValueError(f"resume={resume!r}: choose True, False or 'matching'")
    marker, ckpt = folder / RUN_MARKER, folder / CHECKPOINT_NAME
    if resume is not False and ckpt.is_file():
        old = read_record(marker) if marker.is_file() else None
        changed = {} if old is None else {k: (old.get(k), identity.get(k)) for k in sorted(set(old) | set(identity))
                                          if old.get(k) != identity.get(k)}
        if resume is True:
            if changed:
                raise CheckpointMismatchError(ckpt, changed)
            return True  # without a marker (older checkpoints) the trainer still compares its own configuration
        if old is not None and not changed:
            return True
        what = "no record of which run made it" if old is None else \
            "another run made it (" + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()) + ")"
        warnings.warn(f"{ckpt}: not resumed, {what}; starting afresh and replacing it", stacklevel=3)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.unlink(missing_ok=True)
    write_record(identity, marker)
    return False


def run_one(exp: Experiment, corpus: Corpus, split: Split, seed: int, *, results_dir: str | Path | None,
            device=None, checkpoint_root: str | Path | None = None, manifest_hash: str | None = None,
            return_model: bool = False, resume: bool | str = "matching"):
    """Train and evaluate one (seed, fold); returns the run record (written when ``results_dir`` is given), or
    ``(record, model, views)`` with ``return_model`` (the model with its selected weights, in eval mode).

    With ``checkpoint_root`` the trainer checkpoints every epoch under :func:`checkpoint_dir`, and a run killed
    midway continues from its last epoch. ``resume``:

    * ``"matching"`` (default): resume from a checkpoint this same run made (same configuration, seed, split and
      audio, recorded in ``run.json`` beside it); a checkpoint of another run is replaced with a warning;
    * ``True`` (what ``serlib experiment`` passes): resume, and refuse a checkpoint made by another configuration,
      seed, split or audio with :class:`~serlib.train.CheckpointMismatchError` naming what changed;
    * ``False``: start afresh.

    A non-finite training loss gives a record with ``status: "failed"`` and the reason (written like any other),
    never metrics that look like a result. The record's ``git`` is the revision of the code this process imported
    (:func:`serlib.records.code_revision`), not whatever is committed when the run ends."""
    revision = code_revision()
    t0 = time.perf_counter()
    views = build_views(exp, corpus, split, device=device)
    t_feat = time.perf_counter() - t0
    labels = corpus.labels
    tcfg = TrainConfig(**{**exp.train, "seed": seed, "device": device or exp.train.get("device", "auto")})
    resuming = False
    if checkpoint_root:
        folder = checkpoint_dir(exp.name, split.name, seed, checkpoint_root)
        tcfg.checkpoint_dir = str(folder)
        resuming = _check_or_mark_checkpoint(folder, _run_identity(exp, corpus, split, seed), resume)
    torch.manual_seed(seed)
    sizes = dict(views.sizes) or {"n_features": views.train.x.shape[1]}
    model, model_cfg = build_model(exp.model, n_classes=len(labels), **{**exp.model_kwargs, **sizes})
    trainer = Trainer(model, tcfg, loss_fn=_make_loss(exp, views.train, len(labels)),
                      score_fn=utterance_scores(labels, exp.aggregate))
    status, reason, result, failure = "ok", None, None, None
    try:
        result = trainer.fit(views.train, views.val, views.test, resume=resuming)
    except NonFiniteLossError as exc:
        status, reason, failure = "failed", str(exc), exc
    if result is not None:
        # final utterance-level metrics on the test split, evaluated once with the selected weights
        utt_logits, gid = aggregate(result.test_logits, views.test.groups, how=exp.aggregate)
        y_true = corpus.y[gid]
        metrics = classification_metrics([labels[i] for i in y_true], [labels[i] for i in utt_logits.argmax(1)],
                                         labels=list(labels))
        if views.val is not None and result.history:
            best = [h for h in result.history if h["epoch"] == result.best_epoch]
            if best and "val" in best[0]:
                metrics["val"] = best[0]["val"]
        tested = [h for h in result.history if "test" in h]
        if tested:  # per-epoch test curves were tracked (train={"track_test": True}): keep the authors' figure too
            best = max(tested, key=lambda h: h["test"]["score"])
            metrics["best_test_epoch"] = {**best["test"], "epoch": best["epoch"],
                                          "note": "checkpoint selected on the TEST set (the authors' protocol)"}
            metrics["last_epoch"] = {**tested[-1]["test"], "epoch": tested[-1]["epoch"]}
        val_pred = None
        if views.val is not None and len(views.val):  # the selected weights on the validation part, per utterance
            v_logits, v_gid = aggregate(trainer.predict(views.val), views.val.groups, how=exp.aggregate)
            val_pred = test_predictions(v_logits, corpus.table["utt_id"].to_numpy()[v_gid],
                                        [labels[i] for i in corpus.y[v_gid]], exp.aggregate)
        if views.extra_tests:  # further test conditions of a registered view (e.g. noisy copies of the test part)
            metrics["conditions"] = {}
            for cond, make in views.extra_tests.items():
                data, info = make()
                c_logits, c_gid = aggregate(trainer.predict(data), data.groups, how=exp.aggregate)
                m = classification_metrics([labels[i] for i in corpus.y[c_gid]],
                                           [labels[i] for i in c_logits.argmax(1)], labels=list(labels))
                metrics["conditions"][cond] = {"ua": m["ua"], "wa": m["wa"], "macro_f1": m["macro_f1"], **info}
        history, timings, selection = result.history, {"features_s": t_feat, **result.timings}, result.selection
        extra = {"best_epoch": result.best_epoch, "device": result.device, "amp": result.amp,
                 "amp_dtype": result.amp_dtype, "resumed": resuming}
    else:
        metrics, history, timings, selection = {}, failure.history, {"features_s": t_feat}, tcfg.select
        extra = {"failed_epoch": failure.epoch, "device": str(trainer.device), "resumed": resuming}
    extra["n_parameters"] = sum(p.numel() for p in model.parameters())
    extra["threads"] = thread_settings()
    counts = {**views.counts, "skipped_at_scan": len(corpus.skipped)}
    source = corpus_source(exp)
    if manifest_hash is None and "manifest" in source:
        manifest_hash = source["manifest"]["sha256"]
    record = make_record(
        kind=exp.name, config={**exp.to_dict(), "model_resolved": model_cfg, "train_resolved": tcfg.to_dict()},
        seed=seed,
        corpus={"name": corpus.name, "fingerprint": corpus.fingerprint(), "content_hash": corpus.content_hash(),
                "manifest_hash": manifest_hash, "n_utts": len(corpus), "synthetic": corpus.synthetic,
                "labels": list(labels), **source},
        split=split.to_dict(), metrics=metrics, history=history, counts=counts, timings=timings,
        selection=selection, extra=extra, status=status, reason=reason, skips=views.skips, flags=views.flags,
        identity=identity_of(exp), git=revision)
    if status != "ok":
        warnings.warn(f"{exp.name} {split.name} seed {seed}: run FAILED ({reason})", stacklevel=2)
    if views.stored:
        record["stored"] = dict(views.stored)
    if result is not None:
        record["predictions"] = test_predictions(utt_logits, corpus.table["utt_id"].to_numpy()[gid],
                                                 [labels[i] for i in y_true], exp.aggregate)
        if val_pred is not None:  # what an ensemble is chosen on without the test set
            record["val_predictions"] = val_pred
    if tcfg.checkpoint_dir:  # what ``serlib predict`` needs beside the weights: the run and its statistics
        save_serving(tcfg.checkpoint_dir, record, views.normalizer)
    if results_dir is not None:
        path = experiment_record_path(exp, corpus, split, seed, results_dir)
        write_record(store_split(record, results_dir), path)
        record["_path"] = str(path)
    if return_model:
        model.eval()
        return record, model, views
    return record


RUN_FILE, NORMALIZER_FILE = "record.json", "normalizer.json"  # (run.json is the resume marker)


def save_serving(checkpoint_dir: str | Path, record: dict, normalizer: dict) -> None:
    """Beside a run's checkpoint: ``run.json`` (its record: config, label set, feature settings) and
    ``normalizer.json`` (the training-part mean / std of each input), for :mod:`serlib.predict`."""
    import json

    from serlib.records import to_jsonable, write_text_atomic

    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stats = {k: {"mean": m.detach().cpu().tolist(), "std": s.detach().cpu().tolist()}
             for k, (m, s) in normalizer.items()}
    write_text_atomic(folder / NORMALIZER_FILE, json.dumps(stats))
    write_text_atomic(folder / RUN_FILE, json.dumps(to_jsonable(record), indent=1, sort_keys=True))


# which runs an experiment enumerates and what names it, not how one run is configured
RUN_INDEPENDENT = ("seeds", "folds", "study", "profile", "arm")
# Fields added after records were committed: at these values they leave the record path (the config hash) as it was.
PATH_NEUTRAL_DEFAULTS = {"nonfinite": "skip", "silent": "skip", "view_kwargs": {}, "short_policy": "auto"}


def test_predictions(utt_logits, utt_ids, true_labels, how: str = "mean_prob", digits: int = 4) -> dict:
    """A run's per-utterance test outputs for its record (what seed / model ensembles and per-utterance analyses
    need without the checkpoint): ``utt_id`` (G,), ``label`` (G,) the true labels and ``prob`` (G, C) rounded to
    ``digits``; ``prob`` is the
    softmax of the aggregated logits (for ``"mean_prob"`` the mean of the segments' probabilities), or the vote
    fractions for ``"vote"``. Class order: the record's ``corpus.labels``."""
    z = np.asarray(utt_logits, dtype=np.float64)
    p = z if how == "vote" else softmax(z, axis=1)
    return {"utt_id": [str(u) for u in utt_ids], "label": [str(t) for t in true_labels],
            "prob": np.round(p, digits).tolist()}


def identity_of(exp: Experiment) -> dict:
    """What a run is within its study, for its record's ``identity`` (see :class:`Experiment`)."""
    return {"experiment": exp.name, "study": exp.study, "profile": exp.profile, "arm": exp.arm}


def run_config(config: dict) -> dict:
    """The part of an experiment config (``Experiment.to_dict()``, or a record's ``config``) that decides one run:
    without the seeds / folds the experiment enumerates and the ``*_resolved`` entries a record adds, so one
    (seed, fold) run has one record path whichever subset of seeds and folds it was launched with. Fields of
    :data:`PATH_NEUTRAL_DEFAULTS` at their default are left out too, so records made before those fields existed
    keep their paths."""
    return {k: v for k, v in config.items() if k not in RUN_INDEPENDENT and not k.endswith("_resolved")
            and not (k in PATH_NEUTRAL_DEFAULTS and v == PATH_NEUTRAL_DEFAULTS[k])}


def record_is_current(record: dict, corpus: Corpus) -> bool:
    """True when a record on disk may stand for a run on ``corpus`` as it is now: its status is ``"ok"`` and its
    ``corpus.content_hash`` equals the corpus's (a record without one, written before content hashes existed, is
    taken as current: its path already pins the configuration, and its fingerprint the file list)."""
    if record.get("status", "ok") != "ok" or "metrics" not in record:
        return False
    recorded = (record.get("corpus") or {}).get("content_hash")
    return recorded is None or recorded == corpus.content_hash()


def experiment_record_path(exp: Experiment, corpus: Corpus, split: Split, seed: int, results_dir) -> Path:
    """``results_dir/<name>/<corpus>/<protocol>/<hash of run_config>_seed<s>_fold<f>.json``."""
    return record_path(results_dir, exp.name, {"corpus": corpus.name, "protocol": exp.protocol,
                                              "config": run_config(exp.to_dict()), "seed": seed, "fold": split.fold})


def record_path_of(record: dict, results_dir) -> Path:
    """Where :func:`experiment_record_path` puts a finished run's record (from the record alone)."""
    return record_path(results_dir, record["kind"], {"corpus": record["corpus"]["name"],
                                                    "protocol": record["split"]["protocol"],
                                                    "config": run_config(record["config"]), "seed": record["seed"],
                                                    "fold": record["split"]["fold"]})


def run_experiment(exp: Experiment, *, results_dir: str | Path | None = "results", device=None,
                   corpus: Corpus | None = None, skip_existing: bool = False, manifest_hash: str | None = None,
                   checkpoint_root: str | Path | None = None, resume: bool | str = "matching") -> list[dict]:
    """Run ``exp`` for every seed x selected fold; returns the records (also written under ``results_dir``).

    With ``skip_existing`` a record already on disk is returned instead of running again, unless it is not current
    (:func:`record_is_current`: a failed run, or made from audio whose content has changed since); a stale record
    is run again from scratch and overwritten. ``checkpoint_root`` / ``resume``: see :func:`run_one`."""

    corpus = corpus or load_experiment_corpus(exp.corpus, exp.data_root, **exp.corpus_kwargs)
    if corpus.skipped:
        warnings.warn(f"{corpus.name}: {len(corpus.skipped)} file(s) skipped at scan; see the run record",
                      stacklevel=2)
    splits = make_splits(exp.protocol, corpus, seed=exp.split_seed, **exp.protocol_kwargs)
    if exp.folds is not None:
        splits = [splits[f] for f in exp.folds]
    records = []
    for split in splits:
        for seed in exp.seeds:
            mode = resume
            if skip_existing and results_dir is not None:
                path = experiment_record_path(exp, corpus, split, seed, results_dir)
                if path.exists():
                    old = read_record(path)
                    if record_is_current(old, corpus):
                        records.append({**old, "_path": str(path)})
                        continue
                    if old.get("status", "ok") == "ok":  # made from other audio: its checkpoint is stale too
                        warnings.warn(f"{path}: recorded on other audio (content hash "
                                      f"{old['corpus'].get('content_hash')} != {corpus.content_hash()}); "
                                      "running it again", stacklevel=2)
                        mode = False
            records.append(run_one(exp, corpus, split, seed, results_dir=results_dir, device=device,
                                   manifest_hash=manifest_hash, checkpoint_root=checkpoint_root, resume=mode))
    return records
