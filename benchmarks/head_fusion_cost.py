"""Head Fusion's faithful Eq. 1 against the authors' variant: what the arithmetic allows on this CPU (issue 18).

    SERLIB_CACHE=build/cache python benchmarks/head_fusion_cost.py --threads 1

Issue 18 asks for a faithful training step (``attention="head_fusion"``, Eq. 1) at most 2x the authors' step. This
script asks whether that is possible at all on the machine it runs on, from measurements made in one run:

* **work**: the floating-point operations of one training step (forward + backward, batch 32 of 26 x 63 MFCC
  segments), counted by ``torch.utils.flop_counter.FlopCounterMode`` for every matmul and convolution, forward and
  backward. The fused Eq. 1 kernel is opaque to the counter, so its multiply-adds are added analytically: per map
  entry ``2d`` FLOPs for the scores, and in the backward ``2d`` each for the recomputed scores, dq and dk (exp, max,
  sums and the softmax weights are left out, so the count is a floor on the work);
* **throughput**: this CPU's best float32 matrix multiply at ``--threads`` torch threads (1024^3 and the projection's
  own shape), the fastest this machine does dense arithmetic through torch's BLAS;
* **time**: median training steps of the authors' layer stack (``benchmarks/head_fusion_speed.py``'s
  ``AuthorsACNN``) and of serlib's faithful model, on the same batches, interleaved with the throughput rounds so that
  a shared machine's load falls on every part alike.

From them: ``floor_s`` (the faithful step's FLOPs at peak throughput: no implementation of the same arithmetic on
this CPU can be faster), ``floor_over_authors`` (that floor against the authors' measured step) and
``fraction_of_peak_needed_for_2x`` (the share of peak throughput the whole faithful step would have to sustain to
take 2x the authors' step; 1.0 or more means impossible). Ratios, not absolute times, are the result on a shared
machine. The JSON record (``--out``) holds every count and timing, the load average, git revision and environment.
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
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import head_fusion_speed as hs  # noqa: E402

from serlib.models.head_fusion import HeadFusionACNN, HeadFusionConfig  # noqa: E402
from serlib.records import environment_info, git_revision  # noqa: E402

BATCH, N_FEATURES, N_FRAMES, N_CLASSES = 32, 26, 63, 8


def _models(n_frames: int = N_FRAMES) -> dict:
    torch.manual_seed(0)
    authors = hs.AuthorsACNN(n_classes=N_CLASSES)
    faithful = HeadFusionACNN(HeadFusionConfig(n_classes=N_CLASSES, n_features=N_FEATURES, attention="head_fusion"))
    return {"authors": authors, "serlib_faithful": faithful}


def _step_fn(name: str, model, opt):
    def step(x, y):
        out = model(x.unsqueeze(1)) if name == "authors" else model(x)[0]
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def eq1_flops(model: HeadFusionACNN, x: torch.Tensor) -> int:
    """The fused Eq. 1 kernel's multiply-adds in one training step (forward + backward), as FLOPs: 8 d per map entry
    (scores 2d; backward: recomputed scores, dq, dk, 2d each), over batch x n_size x n_head maps of P x P."""
    cfg = model.config
    with torch.no_grad():
        feat = model.features(x)
    p = feat.shape[-2] * feat.shape[-1]
    return 8 * cfg.head_dim * x.shape[0] * cfg.n_size * cfg.n_head * p * p


def count_flops(name: str, model, x: torch.Tensor, y: torch.Tensor) -> dict:
    """FLOPs of one training step (forward + backward; the optimiser's element-wise update is not counted) by op."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        out = model(x.unsqueeze(1)) if name == "authors" else model(x)[0]
        F.cross_entropy(out, y).backward()
    model.zero_grad()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    total = int(counter.get_total_flops())
    out = {"counted": total, "by_op": by_op}
    if name == "serlib_faithful":
        out["eq1_kernel_analytic"] = eq1_flops(model, x)
        total += out["eq1_kernel_analytic"]
    out["total"] = total
    return out


def gemm_gflops(shapes: dict[str, tuple[int, int, int]], reps: int = 3) -> dict[str, float]:
    """Best GFLOP/s of ``a @ b`` (float32, (m, k) @ (k, n)) per named shape."""
    out = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b  # warm-up
        best = min(_timed(lambda a=a, b=b: a @ b) for _ in range(reps))
        out[name] = 2.0 * m * k * n / best / 1e9
    return out


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def run(*, rounds: int = 6, steps: int = 4, threads: int = 1, out: Path | None = None, notes: str = "") -> dict:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, N_FEATURES, N_FRAMES, generator=g)
    y = torch.randint(0, N_CLASSES, (BATCH,), generator=g)
    models = _models()
    flops = {k: count_flops(k, m, x, y) for k, m in models.items()}
    with torch.no_grad():
        feat = models["serlib_faithful"].features(x)
    cfg = models["serlib_faithful"].config
    proj_shape = (cfg.n_size * cfg.n_head * (2 * cfg.head_dim + cfg.value_dim), feat.shape[1],
                  BATCH * feat.shape[-2] * feat.shape[-1])
    shapes = {"square_1024": (1024, 1024, 1024), "projection": proj_shape}
    fns = {k: _step_fn(k, m, torch.optim.Adam(m.parameters(), 1e-3)) for k, m in models.items()}
    for f in fns.values():  # warm-up (and the native kernel's build or load)
        f(x, y)
        f(x, y)
    load_before = os.getloadavg()
    times: dict[str, list] = {k: [] for k in fns}
    peaks: dict[str, list] = {k: [] for k in shapes}
    for _ in range(rounds):
        for k, v in gemm_gflops(shapes).items():
            peaks[k].append(v)
        for k, f in fns.items():
            for _ in range(steps):
                times[k].append(_timed(lambda f=f: f(x, y)))
    load_after = os.getloadavg()
    step = {k: float(np.median(v)) for k, v in times.items()}
    peak = {k: float(np.max(v)) for k, v in peaks.items()}
    best = max(peak.values())
    a, fa = step["authors"], step["serlib_faithful"]
    floor_s = flops["serlib_faithful"]["total"] / (best * 1e9)
    rec = {
        "benchmark": "head_fusion_cost", "issue": 18, "git": git_revision(REPO), "device": "cpu",
        "cpu": hs.cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "batch": BATCH, "input": [N_FEATURES, N_FRAMES], "model": {"n_head": cfg.n_head, "n_size": cfg.n_size,
                                                                   "head_dim": cfg.head_dim, "value_dim": cfg.value_dim},
        "notes": notes, "load_avg_before": list(load_before), "load_avg_after": list(load_after),
        "step_flops": flops, "gemm_gflops_best": peak, "gemm_gflops_rounds": peaks,
        "step_s": {k: {"median_s": step[k], "min_s": float(np.min(v)), "n": len(v)} for k, v in times.items()},
        "measured_ratio_faithful_over_authors": fa / a,
        "achieved_fraction_of_peak": {k: flops[k]["total"] / (step[k] * best * 1e9) for k in step},
        "flops_ratio_faithful_over_authors": flops["serlib_faithful"]["total"] / flops["authors"]["total"],
        "floor_s": floor_s, "floor_over_authors": floor_s / a,
        "fraction_of_peak_needed_for_2x": flops["serlib_faithful"]["total"] / (2.0 * a * best * 1e9),
        "environment": environment_info(),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rec, indent=1, sort_keys=True))
    return rec


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds of throughput and step timings")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per model per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "head_fusion_cost.json"))
    ap.add_argument("--notes", default="", help="free text stored in the record (no numbers)")
    args = ap.parse_args(argv)
    rec = run(rounds=args.rounds, steps=args.steps, threads=args.threads, out=Path(args.out), notes=args.notes)
    f = rec["step_flops"]
    print(f"GFLOP per step: authors {f['authors']['total'] / 1e9:.2f}, faithful "
          f"{f['serlib_faithful']['total'] / 1e9:.2f}; best GEMM {max(rec['gemm_gflops_best'].values()):.1f} GFLOP/s "
          f"at {rec['torch_threads']} thread(s)")
    print(f"measured faithful / authors {rec['measured_ratio_faithful_over_authors']:.2f}; floor / authors "
          f"{rec['floor_over_authors']:.2f}; share of peak needed for 2x {rec['fraction_of_peak_needed_for_2x']:.2f}")
    return rec


if __name__ == "__main__":
    main()
