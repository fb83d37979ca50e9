"""serlib.features vs librosa on RAVDESS: one timed run, parity checked, a JSON record written.

    python benchmarks/features.py --preset head_fusion_mfcc
    python benchmarks/features.py --preset eca_v3 --limit 200

Audio is decoded once with ``serlib.data.audio.load_audio`` (not timed). Both paths are warmed up first on a few
clips, so librosa's numba JIT compilation and torch's first-call overheads are excluded from the timings. Then:
(a) librosa, called per file (``serlib.features.reference_librosa``: the librosa calls our parity tests use), once
with numpy's BLAS at its default thread count and once limited to 1 thread (threadpoolctl); on a busy shared machine
multi-threaded OpenBLAS can be several times slower, so the headline uses the *faster* librosa run;
(b) ``serlib.features.compute_with_lengths`` on the zero-padded batch of all clips (length-sorted chunks) on CPU,
with 1 torch thread and with ``--threads``; likewise the headline uses the faster of the two (each side at its best
setting). Each is timed ``--repeat`` times, interleaved; the best run counts. All runs are kept in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from serlib import features as F
from serlib.data.audio import load_audio

REPO = Path(__file__).resolve().parents[1]


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        return rev.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"


def git_dirty() -> bool | None:
    """Whether the working tree differs from the revision (then the revision alone does not pin the code)."""
    try:
        st = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True
        )
        return bool(st.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return None


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict:
    default_root = os.environ.get("SERLIB_DATA") or str(REPO.parent / "shared" / "data")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data-root",
        default=default_root,
        help="folder holding ravdess/ (default $SERLIB_DATA or ../shared/data)",
    )
    ap.add_argument("--preset", default="head_fusion_mfcc", choices=sorted(F.PRESETS))
    ap.add_argument("--limit", type=int, default=None, help="first N files only")
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads for the serlib run"
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="max clips per chunk (default: F.CHUNK_BINS budget)"
    )
    ap.add_argument("--compute-dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--out", default=None, help="JSON path (default results/benchmarks/features_<preset>[_float64].json)"
    )
    args = ap.parse_args(argv)

    preset = F.get_preset(args.preset)
    files = sorted((Path(args.data_root) / "ravdess").rglob("*.wav"))[: args.limit]
    if not files:
        sys.exit(f"no RAVDESS wavs under {Path(args.data_root) / 'ravdess'}")
    t0 = time.perf_counter()
    clips = [load_audio(f, sr=preset.sr) for f in files]
    load_s = time.perf_counter() - t0
    batch, lengths = F.pad_batch(clips)
    audio_s = float(lengths.sum()) / preset.sr
    print(
        f"{len(clips)} clips, {audio_s:.0f} s of audio, loaded in {load_s:.1f} s (not timed); preset {preset.name}"
    )

    cdt = getattr(torch, args.compute_dtype)

    def run_librosa():
        return [F.reference_librosa(preset, y) for y in clips]

    def run_serlib():
        return F.compute_with_lengths(
            preset, batch, lengths=lengths, batch_size=args.batch_size, compute_dtype=cdt
        )

    # warm-up: numba JIT of librosa, torch allocator / FFT plans; excluded from the timings
    for y in clips[:3]:
        F.reference_librosa(preset, y)
    F.compute_with_lengths(preset, batch[:4], lengths=lengths[:4], compute_dtype=cdt)

    runs: dict[str, list[float]] = {
        "librosa": [],
        "librosa_blas_1_thread": [],
        "serlib": [],
        "serlib_1_thread": [],
    }
    ref = feats = frames = None
    for _ in range(args.repeat):  # interleaved, so load changes on the shared machine hit every path alike
        t, ref = timed(run_librosa)
        runs["librosa"].append(t)
        with threadpool_limits(1):
            runs["librosa_blas_1_thread"].append(timed(run_librosa)[0])
        torch.set_num_threads(1)
        runs["serlib_1_thread"].append(timed(run_serlib)[0])
        torch.set_num_threads(args.threads)
        t, (feats, frames) = timed(run_serlib)
        runs["serlib"].append(t)
    best = {k: min(v) for k, v in runs.items()}
    t_lib = min(best["librosa"], best["librosa_blas_1_thread"])
    t_ser, t_one = best["serlib"], best["serlib_1_thread"]
    t_best = min(t_ser, t_one)
    best_threads = args.threads if t_ser <= t_one else 1
    diffs, rel = [], []
    for i, r in enumerate(ref):
        ours = feats[i, :, : int(frames[i])].numpy()
        assert ours.shape == r.shape, (ours.shape, r.shape)
        d = float(np.abs(ours - r).max())
        diffs.append(d)
        rel.append(d / float(np.ptp(r) or 1.0))
    record = {
        "benchmark": "features",
        "preset": preset.to_dict(),
        "n_files": len(clips),
        "total_audio_seconds": round(audio_s, 3),
        "timings_seconds": {
            "librosa_per_file": round(t_lib, 4),
            "librosa_per_file_default_blas_threads": round(best["librosa"], 4),
            "librosa_per_file_blas_1_thread": round(best["librosa_blas_1_thread"], 4),
            "serlib_batched": round(t_best, 4),
            f"serlib_batched_{args.threads}_threads": round(t_ser, 4),
            "serlib_batched_1_thread": round(t_one, 4),
            "all_runs": {k: [round(x, 4) for x in v] for k, v in runs.items()},
            "audio_loading_not_timed": round(load_s, 2),
        },
        "ratio_librosa_over_serlib": round(t_lib / t_best, 3),
        "serlib_best_torch_threads": best_threads,
        f"ratio_librosa_over_serlib_{args.threads}_threads": round(t_lib / t_ser, 3),
        "ratio_librosa_over_serlib_1_thread": round(t_lib / t_one, 3),
        "ratio_note": "each side at its faster thread setting (librosa: default vs 1 BLAS thread; serlib: 1 vs "
        f"{args.threads} torch threads); best of {args.repeat} interleaved runs",
        "parity": {
            "max_abs_diff": max(diffs),
            "max_diff_relative_to_range": max(rel),
            "unit": "dB" if preset.kind == "logmel" else "coefficient",
            "tolerance": F.parity_tolerance(preset.kind, cdt),
            "tolerance_unit": "dB"
            if preset.kind == "logmel"
            else "fraction of each clip's coefficient range",
            "within_tolerance": (max(diffs) if preset.kind == "logmel" else max(rel))
            <= F.parity_tolerance(preset.kind, cdt),
            "compared": "valid frames of every clip",
        },
        "settings": {
            "batch_size": args.batch_size,
            "chunk_bins": F.CHUNK_BINS["cpu"],
            "compute_dtype": args.compute_dtype,
            "sort_by_length": True,
            "blas": [(i["internal_api"], i["num_threads"]) for i in threadpool_info()],
            "repeat": args.repeat,
            "timing": "best of repeat",
            "warmup": "3 clips librosa (numba JIT), 4 clips serlib",
        },
        "versions": {
            "torch": torch.__version__,
            "librosa": librosa.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "git_revision": git_revision(),
        "git_dirty": git_dirty(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    suffix = "" if args.compute_dtype == "float32" else f"_{args.compute_dtype}"
    out = (
        Path(args.out)
        if args.out
        else REPO / "results" / "benchmarks" / f"features_{preset.name}{suffix}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"librosa per file: {best['librosa']:.3f} s (default BLAS threads), "
        f"{best['librosa_blas_1_thread']:.3f} s (1 BLAS thread)"
    )
    print(
        f"librosa best: {t_lib:.3f} s | serlib batched: {t_ser:.3f} s ({args.threads} threads), "
        f"{t_one:.3f} s (1 thread) | ratio {t_lib / t_best:.2f}x (best settings; {t_lib / t_ser:.2f}x with "
        f"{args.threads} threads, {t_lib / t_one:.2f}x with 1)"
    )
    print(
        f"parity max abs diff {max(diffs):.2e} ({record['parity']['unit']}), relative to range {max(rel):.2e}"
    )
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
