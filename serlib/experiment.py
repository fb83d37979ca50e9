"""SER experiments: corpus -> split -> cached features -> trainer -> utterance metrics -> run record.

This is where the emotion-specific logic lives (the trainer knows nothing of it). One :class:`Experiment` names
everything a run depends on; :func:`run_experiment` runs it for seeds x folds and writes one JSON record per run.

Views of the audio (``Experiment.view``):

* ``"segments"``: fixed windows (Head Fusion: 2 s, train step 1 s, test step 0.4 s); each segment keeps its
  utterance's label, and at evaluation the utterance prediction is the mean of its segments' softmax outputs.
* ``"sequence"``: whole utterances as variable-length frame sequences with lengths (FACA, MOMA).
* ``"fixed"``: every utterance centre-padded / centre-cropped to ``fixed_s`` seconds (ECA's 6 s).

Features are computed once per (corpus fingerprint, preset, view settings) and cached on disk
(:mod:`serlib.cache`); every split, seed and model reads the same cached arrays.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from serlib import cache as feature_cache
from serlib import features as F
from serlib.data.audio import AudioError, load_audio
from serlib.data.corpus import Corpus
from serlib.data.segment import center_pad_or_crop, segment_batch
from serlib.data.splits import Split, make_splits
from serlib.evaluate import aggregate, classification_metrics
from serlib.models.registry import build_model
from serlib.records import make_record, record_path, store_split, write_record
from serlib.train import ArrayData, TrainConfig, Trainer

FEATURE_FORMAT = 1  # bump when the cached layout changes


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

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["seeds"], d["folds"] = list(self.seeds), None if self.folds is None else list(self.folds)
        d["augment_features"] = list(self.augment_features)
        return d

    def replace(self, **kw) -> Experiment:
        return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------------------------- corpora
def load_experiment_corpus(name: str, data_root: str | Path | None = None, **kwargs) -> Corpus:
    """``"synthetic"`` (generated on first use) or a corpus of :mod:`serlib.data.registry` under ``data_root``."""
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
    key = (corpus.fingerprint() + str(corpus.root), sr)
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
            "root": str(Path(corpus.root).resolve()), "preset": preset.to_dict(), **view}


def segment_features(corpus: Corpus, preset: F.FeaturePreset, *, win_s: float, step_s: float, short: str,
                     device=None, refresh: bool = False) -> dict[str, np.ndarray]:
    """Features of fixed windows of every utterance: ``x`` (N, F, T), ``groups`` (N,) row of the source utterance,
    ``too_short`` (rows that gave no window), ``failed`` (rows whose audio could not be decoded)."""
    sr = preset.sr
    spec = _spec(corpus, preset, view="segments", win_s=win_s, step_s=step_s, short=short)

    def build():
        waves, failed = corpus_waveforms(corpus, sr)
        ok = [i for i, w in enumerate(waves) if w is not None]
        seg = segment_batch([waves[i] for i in ok], win=int(round(win_s * sr)), step=int(round(step_s * sr)),
                            short=short)
        x = F.compute(preset, seg.segments, device=device).cpu().numpy() if len(seg.segments) else \
            np.zeros((0, preset.n_features, preset.n_frames(int(round(win_s * sr)))), np.float32)
        return {"x": x.astype(np.float32), "groups": np.asarray(ok, np.int64)[seg.groups],
                "too_short": np.asarray([ok[j] for j in seg.too_short_ids], np.int64),
                "failed": np.asarray([f["index"] for f in failed], np.int64)}

    return feature_cache.cached_arrays(spec, build, refresh=refresh)


def sequence_features(corpus: Corpus, preset: F.FeaturePreset, *, device=None, refresh: bool = False,
                      batch_seconds: float = 600.0) -> dict[str, np.ndarray]:
    """Whole-utterance frame sequences: ``frames`` (sum T_i, F) concatenated, ``offsets`` (n+1,), ``failed``."""
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
        return {"frames": np.concatenate(feats, 0), "offsets": offsets,
                "failed": np.asarray([f["index"] for f in failed], np.int64)}

    return feature_cache.cached_arrays(spec, build, refresh=refresh)


def fixed_features(corpus: Corpus, preset: F.FeaturePreset, *, seconds: float, device=None,
                   refresh: bool = False, batch: int = 64) -> dict[str, np.ndarray]:
    """Every utterance centre-padded / centre-cropped to ``seconds``: ``x`` (n, F, T), ``failed``."""
    spec = _spec(corpus, preset, view="fixed", seconds=seconds)
    n_samples = int(round(seconds * preset.sr))

    def build():
        waves, failed = corpus_waveforms(corpus, preset.sr)
        x = np.zeros((len(waves), preset.n_features, preset.n_frames(n_samples)), np.float32)
        for s in range(0, len(waves), batch):
            chunk = [center_pad_or_crop(w if w is not None else np.zeros(n_samples, np.float32), n_samples)
                     for w in waves[s: s + batch]]
            x[s: s + len(chunk)] = F.compute(preset, np.stack(chunk), device=device).cpu().numpy()
        return {"x": x, "failed": np.asarray([f["index"] for f in failed], np.int64)}

    return feature_cache.cached_arrays(spec, build, refresh=refresh)


# ------------------------------------------------------------------------------------------ data views
@dataclass
class Views:
    """Train / val / test :class:`ArrayData` of one split plus counts for the run record."""

    train: ArrayData
    val: ArrayData | None
    test: ArrayData
    counts: dict
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


def build_views(exp: Experiment, corpus: Corpus, split: Split, *, device=None) -> Views:
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

    def rows(idx):
        return np.asarray([i for i in idx if keep[i]], np.int64)

    if exp.view == "segments":
        tr_store = segment_features(corpus, preset, win_s=exp.win_s, step_s=exp.train_step_s, short=exp.short,
                                    device=device)
        te_store = segment_features(corpus, preset, win_s=exp.win_s, step_s=exp.test_step_s, short=exp.short,
                                    device=device)
        failed = set(tr_store["failed"].tolist())
        too_short = set(tr_store["too_short"].tolist()) | set(te_store["too_short"].tolist())

        def make(store, idx):
            idx = np.asarray([i for i in rows(idx) if i not in failed and i not in too_short], np.int64)
            sel = np.isin(store["groups"], idx)
            g = torch.as_tensor(store["groups"][sel])
            return ArrayData(x=torch.as_tensor(store["x"][sel]), y=y_all[g], lengths=None, groups=g)

        train, test = make(tr_store, tr_idx), make(te_store, te_idx)
        val = make(te_store, va_idx) if len(va_idx) else None
        counts.update(failed_audio=len(failed), too_short=len(too_short),
                      segments={"train": len(train), "val": len(val) if val else 0, "test": len(test)})
    elif exp.view == "sequence":
        store = sequence_features(corpus, preset, device=device)
        failed = set(store["failed"].tolist())
        off = store["offsets"]

        def make(idx):
            idx = np.asarray([i for i in rows(idx) if i not in failed and off[i + 1] > off[i]], np.int64)
            seqs = [torch.as_tensor(store["frames"][off[i]: off[i + 1]].T) for i in idx]
            lengths = torch.as_tensor([s.shape[1] for s in seqs], dtype=torch.long)
            x = torch.zeros(len(seqs), preset.n_features, int(lengths.max()) if len(seqs) else 1)
            for r, s in enumerate(seqs):
                x[r, :, : s.shape[1]] = s
            g = torch.as_tensor(idx)
            return ArrayData(x=x, y=y_all[g], lengths=lengths, groups=g)

        train, test = make(tr_idx), make(te_idx)
        val = make(va_idx) if len(va_idx) else None
        counts.update(failed_audio=len(failed))
    elif exp.view == "fixed":
        store = fixed_features(corpus, preset, seconds=exp.fixed_s, device=device)
        failed = set(store["failed"].tolist())

        def make(idx):
            idx = np.asarray([i for i in rows(idx) if i not in failed], np.int64)
            g = torch.as_tensor(idx)
            return ArrayData(x=torch.as_tensor(store["x"][idx]), y=y_all[g], lengths=None, groups=g)

        train, test = make(tr_idx), make(te_idx)
        val = make(va_idx) if len(va_idx) else None
        counts.update(failed_audio=len(failed))
        if exp.augment_features:  # STFT augmentation: the same training utterances in other STFT versions
            parts = [train]
            for name in exp.augment_features:
                extra = fixed_features(corpus, F.PRESETS[name], seconds=exp.fixed_s, device=device)
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
    return Views(train, val, test, counts, normalizer=normalizer if exp.normalize else {})


# --------------------------------------------------------------------------------------------- running
def utterance_scores(labels: tuple[str, ...], how: str = "mean_prob"):
    """A trainer ``score_fn``: segment logits -> utterance predictions -> UA (the selection score), WA, F1."""

    def score_fn(logits: torch.Tensor, data: ArrayData) -> dict:
        groups = data.groups if data.groups is not None else torch.arange(len(data))
        utt_logits, gid = aggregate(logits, groups, how=how)
        y_by_group = {int(g): int(y) for g, y in zip(groups.tolist(), data.y.tolist())}
        y_true = np.asarray([y_by_group[int(g)] for g in gid])
        m = classification_metrics([labels[i] for i in y_true], [labels[i] for i in utt_logits.argmax(1)],
                                   labels=list(labels))
        return {"score": m["ua"], "ua": m["ua"], "wa": m["wa"], "macro_f1": m["macro_f1"]}

    return score_fn


def _make_loss(exp: Experiment, train: ArrayData, n_classes: int):
    if exp.loss == "ce":
        return None
    from serlib.losses import make_loss

    return make_loss(exp.loss, y_train=train.y, n_classes=n_classes, **exp.loss_kwargs)


def run_one(exp: Experiment, corpus: Corpus, split: Split, seed: int, *, results_dir: str | Path | None,
            device=None, checkpoint_root: str | Path | None = None, manifest_hash: str | None = None,
            return_model: bool = False):
    """Train and evaluate one (seed, fold); returns the run record (written when ``results_dir`` is given), or
    ``(record, model, views)`` with ``return_model`` (the model with its selected weights, in eval mode)."""
    t0 = time.perf_counter()
    views = build_views(exp, corpus, split, device=device)
    t_feat = time.perf_counter() - t0
    labels = corpus.labels
    tcfg = TrainConfig(**{**exp.train, "seed": seed, "device": device or exp.train.get("device", "auto")})
    if checkpoint_root:
        run_name = f"{exp.name}_{split.name.replace('/', '_')}_s{seed}"  # as studies.common.checkpoint_dir
        tcfg.checkpoint_dir = str(Path(checkpoint_root).resolve() / run_name)
    torch.manual_seed(seed)
    sizes = dict(views.sizes) or {"n_features": views.train.x.shape[1]}
    model, model_cfg = build_model(exp.model, n_classes=len(labels), **{**exp.model_kwargs, **sizes})
    trainer = Trainer(model, tcfg, loss_fn=_make_loss(exp, views.train, len(labels)),
                      score_fn=utterance_scores(labels, exp.aggregate))
    result = trainer.fit(views.train, views.val, views.test)
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
    counts = {**views.counts, "skipped_at_scan": len(corpus.skipped)}
    record = make_record(
        kind=exp.name, config={**exp.to_dict(), "model_resolved": model_cfg, "train_resolved": tcfg.to_dict()},
        seed=seed,
        corpus={"name": corpus.name, "fingerprint": corpus.fingerprint(), "manifest_hash": manifest_hash,
                "n_utts": len(corpus), "synthetic": corpus.synthetic, "labels": list(labels)},
        split=split.to_dict(), metrics=metrics, history=result.history, counts=counts,
        timings={"features_s": t_feat, **result.timings}, selection=result.selection,
        extra={"best_epoch": result.best_epoch, "device": result.device, "amp": result.amp, "amp_dtype": result.amp_dtype,
               "n_parameters": sum(p.numel() for p in model.parameters())},
        identity=identity_of(exp))
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


RUN_FILE, NORMALIZER_FILE = "run.json", "normalizer.json"


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


ADDED_FIELDS: dict = {"view_kwargs": {}}


def identity_of(exp: Experiment) -> dict:
    """What a run is within its study, for its record's ``identity`` (see :class:`Experiment`)."""
    return {"experiment": exp.name, "study": exp.study, "profile": exp.profile, "arm": exp.arm}


def run_config(config: dict) -> dict:
    """The part of an experiment config (``Experiment.to_dict()``, or a record's ``config``) that decides one run:
    without the seeds / folds the experiment enumerates and the ``*_resolved`` entries a record adds, so one
    (seed, fold) run has one record path whichever subset of seeds and folds it was launched with."""
    out = {k: v for k, v in config.items() if k not in RUN_INDEPENDENT and not k.endswith("_resolved")}
    for k, default in ADDED_FIELDS.items():  # fields added later leave older runs' record paths as they were
        if out.get(k, default) == default:
            out.pop(k, None)
    return out


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
                   checkpoint_root: str | Path | None = None) -> list[dict]:
    """Run ``exp`` for every seed x selected fold; returns the records (also written under ``results_dir``)."""
    import json

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
            if skip_existing and results_dir is not None:
                path = experiment_record_path(exp, corpus, split, seed, results_dir)
                if path.exists():
                    records.append({**json.loads(path.read_text()), "_path": str(path)})
                    continue
            records.append(run_one(exp, corpus, split, seed, results_dir=results_dir, device=device,
                                   manifest_hash=manifest_hash, checkpoint_root=checkpoint_root))
    return records
