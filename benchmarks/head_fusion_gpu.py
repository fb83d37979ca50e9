"""Head Fusion on a GPU (issue 18): training epochs and evaluation passes, the authors' code vs serlib, one run.

    SERLIB_CACHE=build/cache python benchmarks/head_fusion_gpu.py --data-root DATA --out results/benchmarks/x.json

All sides train on the same cached RAVDESS segments (paper protocol, fold 0, batch 32, the same shuffling
permutation per repetition) held on the device, and are timed with the device synchronised before and after:

* ``authors``: the authors' ``MACNN`` stack (``head_fusion_speed.AuthorsACNN``), float32, their loop (forward, cross
  entropy, ``loss.item()`` every step) and their test loop (one forward per utterance);
* ``serlib_code`` / ``serlib_faithful``: ``HeadFusionACNN(attention="head_fusion_code" / "head_fusion")`` through
  :class:`serlib.train.Trainer` (``train_epoch`` / ``evaluate``), with float16 autocast (``amp``, the trainer's CUDA
  default) or float32 (``fp32``), eager or ``TrainConfig.compile`` (``torch.compile``; its compile time is the first
  repetition's, reported apart). On CUDA the faithful Eq. 1 runs as dense batched ops (``EQ1_IMPL="auto"``).

Repetition 0 of every side is a warm-up; medians of the others are reported, with ratios against ``authors``. The
record names the device (``torch.cuda.get_device_name``), so a GPU time is never read as a CPU one. ``--budget-s``
skips the sides that would start after it (listed in ``skipped``).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_fusion_speed import (  # noqa: E402
    AuthorsACNN,
    authors_evaluate,
    authors_train_epoch,
    real_data,
    toy_data,
)

from serlib.models.head_fusion import HeadFusionACNN, HeadFusionConfig  # noqa: E402
from serlib.records import environment_info, git_revision, write_text_atomic  # noqa: E402
from serlib.train import TrainConfig, Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIDES = ("authors", "serlib_code_amp", "serlib_code_fp32", "serlib_faithful_amp", "serlib_faithful_fp32",
         "serlib_code_amp_compiled", "serlib_faithful_amp_compiled")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _side(name: str, train, test, labels, score_fn, device, reps: int, compile_mode: str | None) -> dict:
    n_classes = len(labels)
    torch.manual_seed(0)
    out: dict = {"train_s": [], "eval_s": []}
    if name == "authors":
        model = AuthorsACNN(n_classes=n_classes).to(device)
        opt = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=1e-6)
        xtr, ytr = train.x.to(device), train.y.to(device)
        xte, yte, gte = test.x.to(device), test.y.to(device), test.groups.numpy()
        for r in range(reps + 1):
            perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1000 + r)).to(device)
            _sync(device)
            t0 = time.perf_counter()
            authors_train_epoch(model, opt, xtr, ytr, perm, 32)
            _sync(device)
            t1 = time.perf_counter()
            out["scores"] = authors_evaluate(model, xte, yte, gte, n_classes)
            _sync(device)
            t2 = time.perf_counter()
            out["train_s"].append(t1 - t0)
            out["eval_s"].append(t2 - t1)
        return out
    attention = "head_fusion_code" if "_code" in name else "head_fusion"
    model = HeadFusionACNN(HeadFusionConfig(n_classes=n_classes, attention=attention))
    tcfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, weight_decay=1e-6, device=str(device), progress=False,
                       select="last", amp="_amp" in name, eval_batch_size=512,
                       compile=compile_mode if name.endswith("_compiled") else None)
    trainer = Trainer(model, tcfg, score_fn=score_fn)
    dtrain, dtest = train.to(device), test.to(device)
    for r in range(reps + 1):
        trainer._shuffle.manual_seed(1000 + r)  # the authors' permutation of the same repetition
        _sync(device)
        t0 = time.perf_counter()
        trainer.train_epoch(dtrain)
        _sync(device)
        t1 = time.perf_counter()
        _, m = trainer.evaluate(dtest, scoring=test)
        _sync(device)
        t2 = time.perf_counter()
        out["train_s"].append(t1 - t0)
        out["eval_s"].append(t2 - t1)
        out["scores"] = {"wa": m.get("wa"), "ua": m.get("ua")}
    return out


def run(data, *, device: torch.device, reps: int, compile_mode: str, budget_s: float, sides, out: Path | None,
        data_name: str) -> dict:
    train, test, labels, score_fn = data
    env = environment_info()
    rec: dict = {
        "benchmark": "head_fusion_gpu", "issue": 18, "data": data_name, "git": git_revision(),
        "device": env.get("cuda_name") if device.type == "cuda" else f"cpu ({env.get('cpu_model')})",
        "environment": env, "reps": reps, "compile_mode": compile_mode, "batch_size": 32,
        "segments": {"train": len(train), "test": len(test),
                     "test_utterances": int(len(torch.unique(test.groups)))},
        "sides": {}, "skipped": [],
    }
    print(f"device {rec['device']}; {rec['segments']}", flush=True)
    start = time.perf_counter()
    for name in sides:
        if time.perf_counter() - start > budget_s:
            rec["skipped"].append(name)
            continue
        try:
            s = _side(name, train, test, labels, score_fn, device, reps, compile_mode)
        except Exception as exc:  # a compile mode the machine cannot run: recorded, the other sides go on
            rec["sides"][name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"{name}: {rec['sides'][name]['error'][:300]}", flush=True)
            continue
        s["first_train_s"], s["first_eval_s"] = s["train_s"][0], s["eval_s"][0]  # warm-up (compile) included
        s["train_epoch_median_s"] = float(np.median(s["train_s"][1:]))
        s["eval_pass_median_s"] = float(np.median(s["eval_s"][1:]))
        rec["sides"][name] = s
        print(f"{name}: epoch {s['train_epoch_median_s']:.3f} s, eval {s['eval_pass_median_s']:.3f} s "
              f"(first {s['first_train_s']:.1f} s), scores {s['scores']}", flush=True)
        _summarise(rec, start, out)  # after every side: a cut-off run keeps what it measured
    return _summarise(rec, start, out, final=True)


def _summarise(rec: dict, start: float, out: Path | None, final: bool = False) -> dict:
    ok = {k: v for k, v in rec["sides"].items() if "error" not in v}
    if "authors" in ok:
        a = ok["authors"]
        rec["ratios"] = {f"{k}_train_speedup_over_authors": a["train_epoch_median_s"] / v["train_epoch_median_s"]
                         for k, v in ok.items() if k != "authors"}
        rec["ratios"].update({f"{k}_eval_speedup_over_authors": a["eval_pass_median_s"] / v["eval_pass_median_s"]
                              for k, v in ok.items() if k != "authors"})
    serlib = {k: v["train_epoch_median_s"] for k, v in ok.items() if k.startswith("serlib")}
    faithful = {k: v for k, v in serlib.items() if "faithful" in k}
    rec["summary"] = {
        "best_serlib_epoch_s": min(serlib.values()) if serlib else None,
        "best_serlib_side": min(serlib, key=serlib.get) if serlib else None,
        "best_faithful_epoch_s": min(faithful.values()) if faithful else None,
        "goal_epoch_le_0_5_s": bool(serlib) and min(serlib.values()) <= 0.5,
    }
    rec["total_s"] = time.perf_counter() - start
    rec["complete"] = final
    if final:
        print(json.dumps(rec["summary"], indent=1), flush=True)
    if out is not None:
        write_text_atomic(out, json.dumps(rec, indent=1, default=str) + "\n")  # a kill never leaves half a record
        if final:
            print(f"wrote {out}")
    return rec


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SERLIB_DATA", "../shared/data"))
    ap.add_argument("--toy", action="store_true", help="random segments instead of RAVDESS (smoke run)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=3, help="timed epochs / evaluation passes per side (after a warm-up)")
    ap.add_argument("--compile-mode", default="reduce-overhead")
    ap.add_argument("--budget-s", type=float, default=240.0, help="start no side after this many seconds")
    ap.add_argument("--sides", nargs="*", default=list(SIDES), choices=SIDES)
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "head_fusion_gpu.json"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    data = toy_data(n_train=96, n_utt=12) if args.toy else real_data(args.data_root)
    return run(data, device=device, reps=args.reps, compile_mode=args.compile_mode, budget_s=args.budget_s,
               sides=args.sides, out=Path(args.out) if args.out else None,
               data_name="toy" if args.toy else "ravdess_paper_fold0")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
