"""Bring what ``scripts/gpu_session.sh`` wrote (its OUT folder) into ``results/``, never replacing a committed record.

    python scripts/gpu_import.py OUT [--results results] [--revision SHA]

``--revision``: the commit the carried tree was (when the records name another: a ``.git`` carried along may be
stale); written beside the records' own field as ``tree_revision``, nothing else in them changes.

* ``OUT/head_fusion_gpu.json`` -> ``results/benchmarks/head_fusion_gpu.json``;
* the 50-epoch Head Fusion rerun (``hf50``) -> ``results/benchmarks/head_fusion_gpu_50_epochs.json``: its run
  record whole, beside the committed CPU record of the same configuration and seed (path, UA, its machine's seconds;
  no ratio: the two ran at different times on different machines, the same-run comparison is ``head_fusion_gpu``);
* robustness records (``clean/robustness/``) -> ``results/robustness/`` (each embeds the clean run that made its
  model; those runs' own records are not copied, so the per-study tables keep their CPU runs);
* run records of the noise study and of CA-SER (``noise/``, ``caser/``) -> ``results/<experiment>/...`` where no
  record exists yet at that path (a committed CPU run at the same path is kept; counted as ``kept``);
* the split and noise-condition stores (``*/splits/``) -> ``results/splits/`` (content-addressed: an existing file
  must be identical, else this stops).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HF50_COMMITTED = "results/head_fusion_paper_val/ravdess/random_80_20/28e44ac9c9_seed0_fold0.json"


def _copy_tree(src: Path, dst: Path, counts: dict, *, strict: bool = False) -> None:
    for f in sorted(src.rglob("*.json")):
        target = dst / f.relative_to(src)
        if target.exists():
            if strict and not filecmp.cmp(f, target, shallow=False):
                raise SystemExit(f"{target}: differs from the GPU session's {f} (a content-addressed store)")
            counts["kept"] += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
        counts["copied"] += 1


def import_session(out: Path, results: Path, revision: str | None = None) -> dict:
    counts = {"copied": 0, "kept": 0}
    bench = out / "head_fusion_gpu.json"
    if bench.is_file():
        rec = json.loads(bench.read_text())
        if revision:
            rec["tree_revision"] = revision
        (results / "benchmarks" / bench.name).write_text(json.dumps(rec, indent=1, default=str) + "\n")
        counts["copied"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        with tarfile.open(out / "results.tgz") as tar:
            tar.extractall(t, filter="data")
        for part in sorted(p for p in t.iterdir() if p.is_dir()):
            if (part / "splits").is_dir():
                _copy_tree(part / "splits", results / "splits", counts, strict=True)
        if (t / "clean" / "robustness").is_dir():
            _copy_tree(t / "clean" / "robustness", results / "robustness", counts)
        for part in ("noise", "caser"):
            for exp in sorted(p for p in (t / part).glob("*") if p.is_dir() and p.name != "splits"):
                _copy_tree(exp, results / exp.name, counts)
        runs = sorted((t / "hf50").glob("*/**/*.json")) if (t / "hf50").is_dir() else []
        runs = [r for r in runs if "splits" not in r.parts]
        if runs:
            rec = json.loads(runs[0].read_text())
            committed_path = results.parent / HF50_COMMITTED  # the record gpu_session.sh reran (--from-record)
            committed = json.loads(committed_path.read_text()) if committed_path.is_file() else None
            doc = {
                "benchmark": "head_fusion_gpu_50_epochs", "issue": 18,
                "what": "the committed Head Fusion paper-protocol run (validation selection, seed 0, 50 epochs) "
                        "repeated on the GPU from its record (`serlib experiment --from-record`)",
                "device": (rec.get("environment") or {}).get("cuda_name") or (rec.get("environment") or {}).get(
                    "device"),
                "gpu": {"fit_seconds_per_run": rec["timings"]["total_s"],
                        "seconds_per_epoch": rec["timings"]["epoch_mean_s"],
                        "train_seconds_per_epoch": rec["timings"]["train_epoch_mean_s"],
                        "test_ua": rec["metrics"]["ua"], "test_wa": rec["metrics"]["wa"]},
                "committed_cpu_record": None if committed is None else {  # (keys outside the benchmark table's)
                    "path": str(committed_path.relative_to(results.parent)),
                    "run_seconds": committed["timings"]["total_s"],
                    "epoch_seconds": committed["timings"]["epoch_mean_s"],
                    "test_ua": committed["metrics"]["ua"], "test_wa": committed["metrics"]["wa"],
                    "cpu": (committed.get("environment") or {}).get("cpu_model")},
                "record": rec,
            }
            if revision:
                doc["tree_revision"] = revision
            doc["git"] = revision or rec.get("git")
            (results / "benchmarks" / "head_fusion_gpu_50_epochs.json").write_text(
                json.dumps(doc, indent=1, default=str) + "\n")
            counts["copied"] += 1
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--results", default=str(REPO / "results"))
    ap.add_argument("--revision", default=None, help="the commit of the carried tree")
    args = ap.parse_args(argv)
    counts = import_session(Path(args.out), Path(args.results), args.revision)
    print(f"copied {counts['copied']} files, kept {counts['kept']} existing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
