"""Head Fusion, whole 50-epoch seeds on this CPU (issue 18): the authors' attention variant and the faithful Eq. 1.

    SERLIB_CACHE=build/cache python benchmarks/head_fusion_50_epochs.py --data-root DATA

Reruns the committed paper-protocol run of seed 0 (validation selection, 50 epochs, the paper's model and training;
``--committed`` names another committed record, e.g. seed 0, fold 0 of the speaker-independent protocol) from its record with ``attention="head_fusion"`` (the record's own, faithful Eq. 1) and with
``attention="head_fusion_code"`` (the authors' variant), one after the other in this process (``--threads`` torch
threads, default 1 as the committed records), and writes one JSON record: per side the run's own timings (``total_s``, seconds per epoch), its
test UA beside the committed record's, the load average before and after, the goals (<= 4 min for the authors'
variant, <= 8 min for the faithful one) and the run records themselves (not written under ``results/``: a rerun of a
committed seed is not a new run of the study).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMITTED = "results/head_fusion_paper_val/ravdess/random_80_20/28e44ac9c9_seed0_fold0.json"
GOALS_S = {"head_fusion_code": 240.0, "head_fusion": 480.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SERLIB_DATA", "../shared/data"))
    ap.add_argument("--sides", nargs="+", default=["head_fusion_code", "head_fusion"], choices=list(GOALS_S))
    ap.add_argument("--epochs", type=int, default=None, help="fewer epochs for a smoke run (the goals then say so)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the committed records ran with 1; this CPU "
                    "has 2 cores: 2 is the fastest a lone seed can run here, on an otherwise idle machine)")
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "head_fusion_cpu_50_epochs.json"))
    ap.add_argument("--committed", default=COMMITTED, help="the committed run record to rerun (default: seed 0 of "
                    "the paper protocol; e.g. seed 0, fold 0 of the speaker-independent protocol for its accuracy)")
    args = ap.parse_args(argv)

    import torch

    sys.path.insert(0, str(REPO))  # this checkout's serlib (run from a clone, not the one installed in the venv)
    from serlib.cli_corpus import experiment_from_record
    from serlib.experiment import run_experiment
    from serlib.records import environment_info, git_revision, write_text_atomic
    from serlib.sweep import configure_threads

    configure_threads(threads=args.threads)  # (its first argument is a job count, not threads)
    committed = json.loads((REPO / args.committed).read_text())
    base = experiment_from_record(REPO / args.committed).replace(data_root=str(Path(args.data_root).resolve()))
    rec: dict = {"benchmark": "head_fusion_cpu_50_epochs", "issue": 18, "git": git_revision(),
                 "device": "cpu", "environment": environment_info(), "torch_threads": torch.get_num_threads(),
                 "committed_record": args.committed, "protocol": committed["config"]["protocol"],
                 "committed_test_ua": committed["metrics"]["ua"],
                 "committed_seconds_per_run": committed["timings"]["total_s"], "sides": {}}
    for side in args.sides:
        exp = base.replace(model_kwargs={**base.model_kwargs, "attention": side})
        if args.epochs:
            exp = exp.replace(train={**exp.train, "epochs": args.epochs})
        load_before = list(os.getloadavg())
        with tempfile.TemporaryDirectory() as tmp:
            (run,) = run_experiment(exp, results_dir=tmp, skip_existing=False, checkpoint_root=None, resume=False)
        t = run["timings"]
        rec["sides"][side] = {
            "seconds_per_run": t["total_s"], "seconds_per_epoch": t["epoch_mean_s"],
            "train_seconds_per_epoch": t["train_epoch_mean_s"], "epochs": run["config"]["train"].get("epochs", 50),
            "test_ua": run["metrics"]["ua"], "test_wa": run["metrics"]["wa"],
            "load_avg_before": load_before, "load_avg_after": list(os.getloadavg()),
            "goal_s": GOALS_S[side], "goal_met": t["total_s"] <= GOALS_S[side] and not args.epochs,
            "record": run,
        }
        print(f"{side}: {t['total_s']:.0f} s ({t['epoch_mean_s']:.1f} s/epoch), UA {100 * run['metrics']['ua']:.1f} "
              f"(committed run: {100 * committed['metrics']['ua']:.1f}), load {load_before} -> "
              f"{rec['sides'][side]['load_avg_after']}", flush=True)
        out = Path(args.out)
        write_text_atomic(out, json.dumps(rec, indent=1, default=str) + "\n")  # a kill never leaves half a record
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
