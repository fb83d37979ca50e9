"""MHSA-FACA (Kim, An, Kim; Interspeech 2022) study: the paper's protocol, ablation tables and tests, Fig. 2 data
and the peak-alignment number.

Experiments (:class:`serlib.experiment.Experiment`; nothing runs until :func:`run_study`):

* :func:`paper_experiment`: MFCC sequences (preset ``faca_mfcc``: 40 MFCC, 25 ms / 10 ms), the CLDNN with the
  chosen attention variant (``"bmhsa"``, ``"fa"``, ``"faca"``), Adam lr 3e-4, batch 128, 100 epochs, cross-entropy,
  model selected on the validation fold. RAVDESS (and the synthetic corpus): 5 stratified random folds, 3 train /
  1 validation / 1 test (``kfold5_3_1_1``); IEMOCAP: 10 folds 8/1/1 (``kfold10_8_1_1``). The paper names no seeds;
  ours are :data:`PAPER_SEEDS`.
* :func:`speaker_independent_experiment`: the same on the shared speaker-independent folds.

:func:`variants_table` and :func:`ablation_tests` summarise records (Tables 2 / 3; BMHSA vs FA and FA vs FACA as
paired tests over matched (seed, fold) pairs). :func:`paper_reference` holds the published numbers (quoted).

Fig. 2 and beyond: the test utterances are cut into 0.5-s segments (50 frames, hop 10 frames = 0.1 s), each segment
is fed to the model on its own, and each head's most-attended key (argmax of the attention map averaged over its
queries) is compared with the segment's largest-amplitude sample. The two max-pools of the CLDNN shrink time by 4,
so key ``k`` covers input frames ``4k .. 4k+3``; a head "hits" when ``|k - peak_key| <= tol``
(:func:`peak_alignment`, :func:`peak_hit_rate`; ``chance`` is the hit rate of a key drawn uniformly at random).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from serlib import report
from serlib.experiment import Experiment
from serlib.studies.base import Study, Table
from serlib.studies.common import apply_profile, with_overrides
from serlib.train import ArrayData

VARIANTS: tuple[str, ...] = ("bmhsa", "fa", "faca")
VARIANT_NAMES: dict[str, str] = {"bmhsa": "BMHSA", "fa": "MHSA-FA", "faca": "MHSA-FACA"}
PAPER_SEEDS: tuple[int, ...] = (0, 1, 2)  # the paper names none
PAPER_TRAIN: dict = {"epochs": 100, "batch_size": 128, "lr": 3e-4, "optimizer": "adam", "scheduler": None,
                     "select": "val", "progress": False}
PAPER_MODEL: dict = {}  # CLDNNAttentionConfig defaults are the paper's (conv 64 k3, pool 2, BiLSTM 2 x 256, 8 heads)
PAPER_PROTOCOLS: dict[str, str] = {"ravdess": "kfold5_3_1_1", "iemocap": "kfold10_8_1_1", "synthetic": "kfold5_3_1_1"}
QUICK_TRAIN: dict = {"epochs": 8, "batch_size": 16, "lr": 3e-3}
QUICK_MODEL: dict = {"lstm_hidden": 32, "lstm_layers": 1, "fc_hidden": 32, "conv_channels": 32}
QUICK_FOLDS: tuple[int, ...] = (0, 1)
# the "cpu" profile (this project's RAVDESS records, 2-core CPU): the paper's model, batch 32 instead of 128 and 30
# epochs instead of 100 (810 instead of 700 optimiser steps on RAVDESS), bfloat16 autocast, seeds 0 and 1
CPU_PROFILE: dict = {"train": {"epochs": 30, "batch_size": 32, "cpu_amp": True}, "model": {}, "seeds": (0, 1)}
POOL_FACTOR = 4  # two max-pools of 2 along time
SEG_FRAMES, SEG_HOP = 50, 10  # Fig. 2: 0.5-s segments, 0.1-s hop (10-ms frames)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def paper_experiment(variant: str = "faca", corpus: str = "ravdess", data_root: str | None = None, *,
                     profile: str = "full", **overrides) -> Experiment:
    """The paper's protocol for one attention variant (see the module docstring). ``profile="quick"``: 8 epochs,
    batch 16, lr 3e-3, a small CLDNN (one BiLSTM layer of 32), 1 seed, folds 0 and 1. ``profile="cpu"``: :data:`CPU_PROFILE`, name suffixed ``_cpu``. ``overrides`` replace Experiment fields
    (``train`` / ``model_kwargs`` dicts are merged)."""
    _check_variant(variant)
    exp = Experiment(
        name=f"faca_paper_{variant}",
        corpus=corpus,
        data_root=data_root,
        protocol=PAPER_PROTOCOLS.get(corpus, "kfold5_3_1_1"),
        split_seed=0,
        features="faca_mfcc",
        view="sequence",
        model="cldnn_attention",
        model_kwargs={**PAPER_MODEL, "attention": variant},
        arm=variant,
        train=dict(PAPER_TRAIN),
        seeds=PAPER_SEEDS,
        aggregate="mean_prob",
    )
    return with_overrides(apply_profile(exp, profile, train=QUICK_TRAIN, model=QUICK_MODEL, folds=QUICK_FOLDS,
                                       cpu=CPU_PROFILE), overrides)


def speaker_independent_experiment(variant: str = "faca", corpus: str = "ravdess", data_root: str | None = None, *,
                                   profile: str = "full", **overrides) -> Experiment:
    """The paper's model and training on the shared speaker-independent folds (every fold; quick: folds 0, 1)."""
    exp = paper_experiment(variant, corpus, data_root, profile="full").replace(
        name=f"faca_speaker_independent_{variant}", protocol="speaker_independent")
    return with_overrides(apply_profile(exp, profile, train=QUICK_TRAIN, model=QUICK_MODEL, folds=QUICK_FOLDS,
                                       cpu=CPU_PROFILE), overrides)


def variant_experiments(builder=paper_experiment, variants: Sequence[str] = VARIANTS, **kw) -> list[Experiment]:
    """One experiment per variant from ``builder`` (:func:`paper_experiment` or
    :func:`speaker_independent_experiment`), same corpus / profile / overrides."""
    return [builder(v, **kw) for v in variants]


PROTOCOLS: tuple[str, ...] = ("paper", "speaker_independent")


def reproduction_experiments(corpus: str = "ravdess", data_root: str | None = None, *, profile: str = "full",
                             protocols: Sequence[str] = PROTOCOLS, variants: Sequence[str] = VARIANTS
                             ) -> list[Experiment]:
    """What ``python -m serlib reproduce faca`` runs: the three variants under the paper's k-fold protocol and
    under the speaker-independent one (``profile="cpu"``: :data:`CPU_PROFILE`)."""
    builders = {"paper": paper_experiment, "speaker_independent": speaker_independent_experiment}
    return [e for p in protocols for e in variant_experiments(builders[p], variants, corpus=corpus,
                                                             data_root=data_root, profile=profile)]


# ------------------------------------------------------------------------------------------------ running
# the one runner and its checkpoint helpers, re-exported for the notebooks
from serlib.studies.common import checkpoint_dir, eval_view, load_model, run_study  # noqa: E402,F401


# ------------------------------------------------------------------------------------------------ tables
def variants_table(records) -> pd.DataFrame:
    """Tables 2 / 3: per (corpus, protocol, variant) mean and std (ddof 1, over seeds x folds) of UA and WA, %."""
    df = report.frame(records)
    if df.empty:
        return pd.DataFrame()
    out = report.summarise(df, ["corpus", "protocol", "profile", "arm"], first={"config.train.epochs": "epochs"},
                           label=lambda k: {"corpus": k[0], "protocol": k[1], "profile": k[2],
                                            "model": VARIANT_NAMES.get(k[3], k[3])})
    out = out[["corpus", "protocol", "profile", "model", "UA mean (%)", "UA std (%)", "WA mean (%)", "WA std (%)",
               "n runs", "epochs"]]
    order = {VARIANT_NAMES[v]: i for i, v in enumerate(VARIANTS)}
    return out.sort_values(["corpus", "protocol", "profile", "model"], key=lambda s: s.map(order) if s.name == "model" else s,
                           ignore_index=True)


def ablation_tests(records, metric: str = "ua",
                   pairs: Sequence[tuple[str, str]] = (("fa", "bmhsa"), ("faca", "fa"), ("faca", "bmhsa"))
                   ) -> pd.DataFrame:
    """Paired tests (:func:`serlib.evaluate.paired_test`) of ``a`` vs ``b`` over (seed, fold) runs both have, per
    (corpus, protocol). ``mean diff`` is a - b in percentage points; positive = ``a`` better. Pairs with fewer than
    2 matched runs are reported with n and no test."""
    return report.paired_tests(records, pairs, arm_of=lambda r: report.identity(r)["arm"],
                               group_of=lambda r: (r["corpus"]["name"], r["split"]["protocol"],
                                                   report.identity(r)["profile"]),
                               group_names=("corpus", "protocol", "profile"), labels=VARIANT_NAMES, metric=metric,
                               sep=" - ")


def summary_markdown(records, alpha: float = 0.05) -> str:
    """Our result in words, per (corpus, protocol, profile) of ``records``: MHSA-FACA's UA (mean ± std, runs,
    epochs) against the paper's RAVDESS figure where comparable, and whether each step of the ablation order
    (BMHSA < FA < FACA) is significant in the paired tests."""
    table, tests = variants_table(records), ablation_tests(records)
    if table.empty:
        return "(no runs)"
    paper_ua = paper_reference().set_index(["corpus", "model"]).loc[("ravdess", "MHSA-FACA"), "UA (%)"]
    lines = []
    for (corpus, protocol, profile), part in table.groupby(["corpus", "protocol", "profile"], sort=False):
        rows = part.set_index("model")
        if "MHSA-FACA" not in rows.index:
            continue
        r = rows.loc["MHSA-FACA"]
        std = "" if pd.isna(r["UA std (%)"]) else f" ± {r['UA std (%)']:.2f}"
        line = (f"**Our result** ({corpus}, {protocol}, {profile} profile, {int(r['n runs'])} runs, "
                f"{int(r['epochs'])} epochs): MHSA-FACA UA **{r['UA mean (%)']:.2f}{std} %**, WA "
                f"{r['WA mean (%)']:.2f} %.")
        if corpus == "ravdess" and protocol == PAPER_PROTOCOLS["ravdess"]:
            gap = paper_ua - r["UA mean (%)"]
            line += f" The paper reports {paper_ua} % UA on this protocol: we are {abs(gap):.2f} points " \
                    f"{'short' if gap > 0 else 'above'}."
        else:
            line += " The paper has no figure for this corpus and protocol."
        lines.append(line)
        if tests.empty:
            continue
        t = tests[(tests["corpus"] == corpus) & (tests["protocol"] == protocol) & (tests["profile"] == profile)]
        for comp in ("MHSA-FA - BMHSA", "MHSA-FACA - MHSA-FA"):
            row = t[t["comparison"] == comp]
            if row.empty:
                continue
            row = row.iloc[0]
            p = row.get("p (paired t)", float("nan"))
            verdict = ("no test (fewer than 2 pairs)" if row["n pairs"] < 2 else
                       "no test (the paired differences have no spread)" if pd.isna(p) else
                       f"significant at {alpha}" if p < alpha and row["mean diff (pp)"] > 0 else
                       f"not a significant gain at {alpha}: this step of the order is not shown")
            lines.append(f"- {comp}: {row['mean diff (pp)']:+.2f} points UA over {int(row['n pairs'])} matched "
                         f"runs (paired t-test p = {p:.3g}); {verdict}.")
    return "\n".join(lines)


def training_curves_table(records, profiles: Sequence[str] | None = ("full",)) -> pd.DataFrame:
    """Where each run's validation loss turns (issue 16: does the paper's schedule overfit?), from the records'
    per-epoch history: per run (variant, profile, protocol, fold, seed) the epochs run, the selected epoch (best
    validation UA) and its validation / test UA, the epoch of the lowest validation loss with its validation UA (what
    early stopping on the validation loss would have kept), the validation loss there and at the last epoch, and the
    last training loss. ``profiles``: only runs of these profiles (None: all)."""
    rows = []
    for r in records:
        if not report.is_ok(r) or not r.get("history"):
            continue
        ident = report.identity(r)
        if profiles is not None and ident["profile"] not in profiles:
            continue
        hist = [h for h in r["history"] if "val" in h and "loss" in h["val"]]
        if not hist:
            continue
        low = min(hist, key=lambda h: h["val"]["loss"])
        best = (r.get("extra") or {}).get("best_epoch")
        sel = next((h for h in hist if h["epoch"] == best), None)
        rows.append({"model": VARIANT_NAMES.get(ident["arm"], ident["arm"]), "profile": ident["profile"],
                     "protocol": r["split"]["protocol"], "fold": r["split"].get("fold"), "seed": r["seed"],
                     "epochs": len(r["history"]), "selected epoch": best,
                     "val UA at selected (%)": 100 * sel["val"]["ua"] if sel else float("nan"),
                     "test UA (%)": 100 * r["metrics"]["ua"], "lowest val loss epoch": low["epoch"],
                     "val UA there (%)": 100 * low["val"]["ua"],
                     "val loss lowest": low["val"]["loss"], "val loss last": hist[-1]["val"]["loss"],
                     "train loss last": r["history"][-1]["train_loss"]})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["profile", "protocol", "model", "fold", "seed"], ignore_index=True)


def paper_reference() -> pd.DataFrame:
    """The paper's numbers, QUOTED from PAPERS.md (Tables 1-3 of Kim et al. 2022; not measured by serlib). %."""
    src = "quoted from the paper via PAPERS.md (not measured by serlib)"
    rows = [
        {"corpus": "iemocap", "protocol": "kfold10_8_1_1", "model": "BMHSA", "WA (%)": 69.66, "UA (%)": 70.52},
        {"corpus": "iemocap", "protocol": "kfold10_8_1_1", "model": "MHSA-FA", "WA (%)": 71.56, "UA (%)": 72.30},
        {"corpus": "iemocap", "protocol": "kfold10_8_1_1", "model": "MHSA-FACA", "WA (%)": 72.01, "UA (%)": 72.83},
        {"corpus": "ravdess", "protocol": "kfold5_3_1_1", "model": "MHSA-FACA", "WA (%)": 82.85, "UA (%)": 82.47},
        {"corpus": "ravdess", "protocol": "(as cited)", "model": "Head Fusion", "WA (%)": 77.80, "UA (%)": 77.40},
    ]
    return pd.DataFrame(rows).assign(source=src)


def load_study_records(results_dir: str | Path) -> list[dict]:
    """Every finished MHSA-FACA run record under ``results_dir``."""
    return STUDY.records(results_dir)


# ------------------------------------------------------------------------------------------------ Fig. 2 / peaks
def segment_starts(n_frames: int, *, seg_frames: int = SEG_FRAMES, seg_hop: int = SEG_HOP) -> np.ndarray:
    """Start frames of the 0.5-s segments of an utterance of ``n_frames`` frames (none if it is shorter)."""
    if n_frames < seg_frames:
        return np.zeros(0, np.int64)
    return np.arange(0, n_frames - seg_frames + 1, seg_hop, dtype=np.int64)


def segment_peak_frames(wave: np.ndarray, starts: np.ndarray, *, hop: int = 160,
                        seg_frames: int = SEG_FRAMES) -> np.ndarray:
    """Per segment, the frame offset (0 .. seg_frames-1) of its largest-|amplitude| sample; segment s covers
    samples ``[start * hop, (start + seg_frames) * hop)`` (frame t is centred on sample t * hop)."""
    wave = np.abs(np.asarray(wave, np.float64))
    out = np.zeros(len(starts), np.int64)
    for i, s in enumerate(starts):
        chunk = wave[s * hop: (s + seg_frames) * hop]
        out[i] = min(int(np.argmax(chunk)) // hop, seg_frames - 1) if len(chunk) else 0
    return out


def attended_keys(attn: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """attn (S, H, T, T) query x key maps, lengths (S,) valid T -> (S, H) index of the key with the largest mean
    attention over the valid queries."""
    assert attn.dim() == 4, f"expected (S, H, T, T), got {tuple(attn.shape)}"
    S, H, T, _ = attn.shape
    if lengths is None:
        lengths = torch.full((S,), T, dtype=torch.long)
    valid = (torch.arange(T)[None, :] < lengths[:, None]).to(attn.dtype)  # (S, T)
    col = (attn * valid[:, None, :, None]).sum(2) / lengths[:, None, None].to(attn.dtype)  # (S, H, T)
    col = col.masked_fill(valid[:, None, :] == 0, -float("inf"))
    return col.argmax(-1)


def peak_hit_rate(keys: torch.Tensor | np.ndarray, peak_keys, n_keys, *, tol: int = 1) -> dict:
    """keys (S, H) attended key per segment and head; peak_keys (S,) the pooled key holding the amplitude peak;
    n_keys (S,) or int valid keys per segment. Returns ``fraction`` of (segment, head) pairs with
    ``|key - peak_key| <= tol``, ``per_head`` (H,), ``chance`` (a uniformly random key) and ``n_segments``."""
    keys = np.asarray(keys, np.int64)
    peak_keys = np.asarray(peak_keys, np.int64)
    n_keys = np.broadcast_to(np.asarray(n_keys, np.int64), peak_keys.shape)
    assert keys.ndim == 2 and keys.shape[0] == peak_keys.shape[0]
    hits = np.abs(keys - peak_keys[:, None]) <= tol  # (S, H)
    lo, hi = np.maximum(peak_keys - tol, 0), np.minimum(peak_keys + tol, n_keys - 1)
    chance = (hi - lo + 1) / n_keys
    return {"fraction": float(hits.mean()) if hits.size else float("nan"),
            "per_head": hits.mean(0) if hits.size else np.full(keys.shape[1], np.nan),
            "chance": float(chance.mean()) if chance.size else float("nan"), "n_segments": int(len(peak_keys)),
            "tol": int(tol)}


def cut_segments(data: ArrayData, *, seg_frames: int = SEG_FRAMES, seg_hop: int = SEG_HOP,
                 items: Sequence[int] | None = None) -> tuple[ArrayData, np.ndarray, np.ndarray]:
    """Every 0.5-s segment of the chosen items of ``data`` (all by default) as its own input:
    ``(segments (S, F, seg_frames), item (S,), start frame (S,))``."""
    lengths = data.lengths if data.lengths is not None else torch.full((len(data),), data.x.shape[-1])
    xs, item, start = [], [], []
    for i in (range(len(data)) if items is None else items):
        for s in segment_starts(int(lengths[i]), seg_frames=seg_frames, seg_hop=seg_hop):
            xs.append(data.x[i, :, s: s + seg_frames])
            item.append(i)
            start.append(int(s))
    if not xs:
        raise ValueError(f"no item is {seg_frames} frames long")
    item_t = torch.as_tensor(item)
    seg = ArrayData(x=torch.stack(xs), y=data.y[item_t], lengths=None,
                    groups=None if data.groups is None else data.groups[item_t])
    return seg, np.asarray(item), np.asarray(start)


@torch.no_grad()
def segment_attention(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Run ``model`` (eval mode) on fixed-length segments x (S, F, T); returns the aux maps concatenated:
    ``attn`` (S, H, T', T') and, when the model has them, ``attn_calibrated``, ``calibration``, ``mu``, ``sigma``,
    plus ``lengths`` (S,) and ``pred`` (S,)."""
    was_training = model.training
    model.eval()
    parts: dict[str, list] = {}
    try:
        for s in range(0, len(x), batch_size):
            logits, aux = model(x[s: s + batch_size])
            aux = {**aux, "pred": logits.argmax(1)}
            for k in ("attn", "attn_calibrated", "calibration", "mu", "sigma", "lengths", "pred"):
                if k in aux:
                    parts.setdefault(k, []).append(aux[k].detach().cpu())
    finally:
        model.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}


def peak_alignment(model: nn.Module, data: ArrayData, waves: Sequence[np.ndarray], *, hop: int = 160,
                   seg_frames: int = SEG_FRAMES, seg_hop: int = SEG_HOP, pool: int = POOL_FACTOR, tol: int = 1,
                   batch_size: int = 256) -> dict:
    """How often each head's most-attended key lies within ``tol`` pooled frames (``tol * pool`` input frames) of
    the amplitude peak of its 0.5-s segment, over every segment of ``data``.

    data: the test part (features (N, F, T) with lengths, as the model was trained on); waves: the waveform of each
    item of ``data`` (same order; e.g. ``corpus_waveforms(corpus)[0][g] for g in data.groups``); hop: feature hop in
    samples; pool: the model's time reduction (4 for the CLDNN). Returns :func:`peak_hit_rate`'s dict plus
    ``items`` / ``starts`` / ``keys`` / ``peak_keys`` per segment."""
    if len(waves) != len(data):
        raise ValueError(f"need one waveform per item: {len(waves)} waves for {len(data)} items")
    seg, item, start = cut_segments(data, seg_frames=seg_frames, seg_hop=seg_hop)
    peak_frame = np.concatenate([
        segment_peak_frames(waves[i], start[item == i], hop=hop, seg_frames=seg_frames) for i in np.unique(item)])
    order = np.concatenate([np.flatnonzero(item == i) for i in np.unique(item)])
    peaks = np.empty(len(item), np.int64)
    peaks[order] = peak_frame
    aux = segment_attention(model, seg.x, batch_size=batch_size)
    n_keys = aux["lengths"].numpy() if "lengths" in aux else np.full(len(seg), aux["attn"].shape[-1])
    peak_keys = np.minimum(peaks // pool, n_keys - 1)
    keys = attended_keys(aux["attn"], torch.as_tensor(n_keys)).numpy()
    out = peak_hit_rate(keys, peak_keys, n_keys, tol=tol)
    out.update(items=item, starts=start, keys=keys, peak_keys=peak_keys)
    return out


def peak_alignment_table(models: Mapping[str, nn.Module], data: ArrayData, waves: Sequence[np.ndarray], *,
                         tols: Sequence[int] = (0, 1), **kw) -> pd.DataFrame:
    """:func:`peak_alignment` for each variant (``{variant: model}``) and tolerance: one row each, %."""
    rows = []
    for variant, model in models.items():
        for tol in tols:
            r = peak_alignment(model, data, waves, tol=tol, **kw)
            pool = kw.get("pool", POOL_FACTOR)
            rows.append({"model": VARIANT_NAMES.get(variant, variant), "tolerance (pooled keys)": tol,
                         "window (± ms)": (tol + 0.5) * pool * 10, "segments": r["n_segments"],
                         "heads": len(r["per_head"]), "peak hit rate (%)": 100 * r["fraction"],
                         "chance (%)": 100 * r["chance"],
                         "best head (%)": 100 * float(np.max(r["per_head"]))})
    return pd.DataFrame(rows)


def figure2_data(models: Mapping[str, nn.Module], data: ArrayData, wave: np.ndarray, item: int, *, sr: int = 16000,
                 hop: int = 160, heads: Sequence[int] = (0, 1), seg_frames: int = SEG_FRAMES,
                 seg_hop: int = SEG_HOP, pool: int = POOL_FACTOR) -> dict:
    """Fig. 2 data for item ``item`` of ``data`` with waveform ``wave``: the utterance's largest-amplitude sample,
    the 0.5-s segment (on the 0.1-s grid) centred nearest to it, and per variant the chosen heads' maps on that
    segment (``maps[variant]`` (len(heads), T', T'), and the calibration scores when present)."""
    n = int(data.lengths[item]) if data.lengths is not None else data.x.shape[-1]
    starts = segment_starts(n, seg_frames=seg_frames, seg_hop=seg_hop)
    if not len(starts):
        raise ValueError(f"item {item} is shorter than {seg_frames} frames")
    peak_sample = int(np.argmax(np.abs(wave[: n * hop])))
    peak_frame = peak_sample / hop
    start = int(starts[np.argmin(np.abs(starts + seg_frames / 2 - peak_frame))])
    x = data.x[item: item + 1, :, start: start + seg_frames]
    offset = int(segment_peak_frames(wave, np.array([start]), hop=hop, seg_frames=seg_frames)[0])
    maps, calib, keys = {}, {}, {}
    for variant, model in models.items():
        aux = segment_attention(model, x)
        maps[variant] = aux["attn"][0, list(heads)].numpy()
        keys[variant] = attended_keys(aux["attn"])[0, list(heads)].numpy()
        if "calibration" in aux:
            calib[variant] = aux["calibration"][0, list(heads)].numpy()
    return {"wave": np.asarray(wave[: n * hop]), "sr": sr, "hop": hop, "peak_sample": peak_sample,
            "seg_start": start, "seg_frames": seg_frames, "seg_hop": seg_hop, "pool": pool,
            "peak_key": min(offset // pool, next(iter(maps.values())).shape[-1] - 1), "heads": list(heads),
            "maps": maps, "keys": keys, "calibration": calib,
            "names": {v: VARIANT_NAMES.get(v, v) for v in models}}


__all__ = [
    "PAPER_MODEL",
    "PAPER_SEEDS",
    "PAPER_TRAIN",
    "VARIANTS",
    "VARIANT_NAMES",
    "ablation_tests",
    "attended_keys",
    "cut_segments",
    "figure2_data",
    "load_model",
    "load_study_records",
    "paper_experiment",
    "paper_reference",
    "peak_alignment",
    "peak_alignment_table",
    "peak_hit_rate",
    "run_study",
    "segment_attention",
    "segment_peak_frames",
    "segment_starts",
    "speaker_independent_experiment",
    "training_curves_table",
    "eval_view",
    "variant_experiments",
    "variants_table",
]


def peak_alignment_record(data_root, recorded, corpus: str = "ravdess", profile: str = "cpu") -> dict:
    """Fig. 2's number: each variant's seed-0 / fold-0 run retrained, and how often its most-attended key lies at
    the 0.5-s segment's amplitude peak on that run's test utterances (:func:`peak_alignment_table`)."""
    from serlib.experiment import corpus_waveforms
    from serlib.studies.common import corpus_for, retrain_recorded

    models, runs, views = {}, [], None
    for variant in VARIANTS:
        _, models[variant], views, run = retrain_recorded(paper_experiment(variant, corpus, data_root,
                                                                           profile=profile), recorded)
        runs.append(run)
    data = corpus_for(paper_experiment("faca", corpus, data_root))
    waves_all, _ = corpus_waveforms(data)
    waves = [waves_all[g] for g in views.test.groups.tolist()]
    table = peak_alignment_table(models, views.test, waves, tols=(0, 1, 2))
    return {"figure": "faca_peak_alignment", "corpus": data.name, "runs": runs, "table": table.to_dict("records")}


STUDY = Study(
    name="faca",
    title="MHSA-FACA (focus and calibration attention)",
    paper="Kim, An, Kim 2022, Speech emotion recognition with focus-attention and calibration-attention (Interspeech)",
    experiments=reproduction_experiments,
    tables=(Table("variants", "BMHSA / MHSA-FA / MHSA-FACA (Tables 2-3)", variants_table),
            Table("training_curves", "The paper's full training (100 epochs, batch 128): where the validation loss "
                  "turns", training_curves_table, digits=3)),
    tests=(Table("ablation_tests", "Paired tests over matched (seed, fold) runs", ablation_tests, digits=3),),
    prefixes=("faca_",),
    paper_reference=paper_reference,
    notebook="02_focus_calibration.ipynb",
    figures={"faca_peak_alignment": peak_alignment_record},
    main_arm="faca",
    paper_claim="82.47 UA (RAVDESS, 5-fold 3/1/1)",
)
