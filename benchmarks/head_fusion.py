"""Head Fusion on RAVDESS: epoch time with cached features (serlib) vs features recomputed from audio every epoch.

    SERLIB_CACHE=build/cache python benchmarks/head_fusion.py --data-root /work/shared/data

* cached path (serlib): features computed once (or read from the cache), tensors in memory, ``--cached-epochs``
  epochs of the paper's training (batch 32, test evaluated every epoch as the authors' best-test selection does);
* naive path (the authors' code style): every epoch decodes each utterance with ``load_audio`` and runs
  ``librosa.feature.mfcc`` on each 2-s segment, then trains / tests on them; measured over ``--naive-epochs``;
* one training step (batch 32, n_head 4, n_size 64) of the current head-fusion forward against the previous
  implementation (``scaled_dot_product_attention`` with V zero-padded to the head width), same weights, same run.

Prints the timings and writes a JSON record (timings, ratio, projection of one 50-epoch seed, git revision, torch
threads, CPU count, model config) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from serlib.data.segment import segment_batch
from serlib.experiment import build_views, load_experiment_corpus, utterance_scores
from serlib.models.head_fusion import HeadFusionACNN, HeadFusionConfig
from serlib.records import environment_info, git_revision
from serlib.studies.head_fusion import paper_experiment
from serlib.train import ArrayData, TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]


class SdpaHeadFusion(HeadFusionACNN):
    """The previous head-fusion forward (SDPA over all n_size * n_head heads, V padded to head_dim), for timing."""

    def _head_fusion(self, feat, key_mask, aux, maps, return_attention):
        cfg = self.config
        b, _, h, w = feat.shape
        g, nh, p, dv, d = cfg.n_size, cfg.n_head, h * w, cfg.value_dim, cfg.head_dim
        proj = self.qkv(feat).reshape(b, g, nh, 2 * d + dv, p).transpose(-1, -2)
        q, k, v = (t.reshape(b, g * nh, p, t.shape[-1]).contiguous()
                   for t in (proj[..., :d], proj[..., d: 2 * d], proj[..., 2 * d:]))
        heads = F.scaled_dot_product_attention(q, k, F.pad(v, (0, d - dv)).contiguous(), scale=d**-0.5)[..., :dv]
        fused = heads.view(b, g, nh, p, dv).mean(dim=2)
        return fused.mean(dim=2).reshape(b, g * dv)


def step_times(n_steps: int, batch: int = 32) -> dict:
    torch.manual_seed(0)
    new = HeadFusionACNN(HeadFusionConfig())
    old = SdpaHeadFusion(HeadFusionConfig())
    old.load_state_dict(new.state_dict())
    x, y = torch.randn(batch, 26, 63), torch.randint(0, 8, (batch,))
    with torch.no_grad():
        diff = (old(x)[0] - new(x)[0]).abs().max().item()

    def make(m):
        opt = torch.optim.Adam(m.parameters(), 1e-3, weight_decay=1e-6)

        def step():
            loss = F.cross_entropy(m(x)[0], y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    steps = {"sdpa_before": make(old), "fast_after": make(new)}
    times = {k: [] for k in steps}
    for f in steps.values():
        f()
    for _ in range(n_steps):  # alternate so both see the same machine load
        for k, f in steps.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    out = {k: {"median_s": float(np.median(v)), "min_s": float(np.min(v))} for k, v in times.items()}
    out["speedup_median"] = out["sdpa_before"]["median_s"] / out["fast_after"]["median_s"]
    out["max_abs_logit_diff"] = diff
    return out


def naive_segments(corpus, rows, step_s: float, preset_kw: dict) -> tuple[np.ndarray, np.ndarray]:
    """Decode + segment + librosa MFCC per segment (the authors' code style): x (N, 26, 63), groups (N,)."""
    import librosa

    from serlib.data.audio import load_audio

    xs, groups = [], []
    for i in rows:
        wave = load_audio(corpus.paths[i], sr=16000)
        seg = segment_batch([wave], win=32000, step=int(step_s * 16000), short="pad")
        for s in seg.segments:
            xs.append(librosa.feature.mfcc(y=np.asarray(s, np.float32), sr=16000, **preset_kw))
            groups.append(i)
    return np.stack(xs).astype(np.float32), np.asarray(groups)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SERLIB_DATA", "/work/shared/data"))
    ap.add_argument("--cached-epochs", type=int, default=2)
    ap.add_argument("--naive-epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="training steps per implementation in the step comparison")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "head_fusion_epoch.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rec: dict = {"benchmark": "head_fusion_epoch", "git": git_revision(), "torch_threads": torch.get_num_threads(),
                 "cpu_count": os.cpu_count(), "environment": environment_info()}

    print("step comparison (batch 32, n_head 4, n_size 64) ...", flush=True)
    rec["step"] = step_times(args.steps)
    print(json.dumps(rec["step"], indent=1), flush=True)

    exp = paper_experiment("ravdess", args.data_root)
    rec["model_config"] = {**exp.model_kwargs, "train": exp.train, "features": exp.features}
    corpus = load_experiment_corpus("ravdess", args.data_root)
    from serlib.data.splits import make_splits

    split = make_splits(exp.protocol, corpus, seed=exp.split_seed)[0]
    labels = corpus.labels
    score = utterance_scores(labels)
    tcfg = {**exp.train, "progress": False, "device": "cpu"}

    # ---- cached path
    t0 = time.perf_counter()
    views = build_views(exp, corpus, split)
    t_feat = time.perf_counter() - t0
    torch.manual_seed(0)
    model = HeadFusionACNN(HeadFusionConfig(n_classes=len(labels)))
    trainer = Trainer(model, TrainConfig(**{**tcfg, "epochs": args.cached_epochs}), score_fn=score)
    res = trainer.fit(views.train, None, views.test)
    cached = [h["seconds"] for h in res.history]
    rec["cached"] = {"features_s": t_feat, "epoch_s": cached, "epoch_mean_s": float(np.mean(cached)),
                     "train_epoch_s": [h["train_seconds"] for h in res.history],
                     "segments": views.counts["segments"]}
    print(f"cached: features {t_feat:.1f} s, epochs {[f'{s:.1f}' for s in cached]} s", flush=True)

    # ---- naive path: features recomputed from audio every epoch
    mfcc_kw = {"n_mfcc": 26, "n_fft": 2048, "hop_length": 512}
    tr_rows, _, te_rows = split.indices(corpus)
    torch.manual_seed(0)
    model = HeadFusionACNN(HeadFusionConfig(n_classes=len(labels)))
    trainer = Trainer(model, TrainConfig(**{**tcfg, "epochs": 1}), score_fn=score)
    naive = []
    for _ in range(args.naive_epochs):
        t0 = time.perf_counter()
        xtr, gtr = naive_segments(corpus, tr_rows, exp.train_step_s, mfcc_kw)
        xte, gte = naive_segments(corpus, te_rows, exp.test_step_s, mfcc_kw)
        t_mid = time.perf_counter()
        tr = ArrayData(x=xtr, y=corpus.y[gtr], groups=gtr)
        te = ArrayData(x=xte, y=corpus.y[gte], groups=gte)
        trainer.fit(tr, None, te)
        naive.append({"total_s": time.perf_counter() - t0, "features_s": t_mid - t0})
    rec["naive"] = {"epochs": naive, "epoch_mean_s": float(np.mean([e["total_s"] for e in naive]))}
    rec["ratio_naive_over_cached"] = rec["naive"]["epoch_mean_s"] / rec["cached"]["epoch_mean_s"]
    rec["projected_50_epoch_seed_min"] = (t_feat + 50 * rec["cached"]["epoch_mean_s"]) / 60
    rec["goals"] = {"ratio_ge_5": rec["ratio_naive_over_cached"] >= 5,
                    "seed_le_10_min": rec["projected_50_epoch_seed_min"] <= 10}
    print(f"naive: {rec['naive']['epoch_mean_s']:.1f} s/epoch (features {naive[0]['features_s']:.1f} s); "
          f"cached: {rec['cached']['epoch_mean_s']:.1f} s/epoch; ratio {rec['ratio_naive_over_cached']:.2f}; "
          f"projected 50-epoch seed {rec['projected_50_epoch_seed_min']:.1f} min", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return rec


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
