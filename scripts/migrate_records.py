"""Migrate run records to the study contract's layout: each split stored once under ``results/splits/<ref>.json``
(records keep its name, protocol, fold, meta, sizes and ``ref``), and the run's identity (study, profile, arm) as
record fields instead of folder / experiment names parsed back.

    python scripts/migrate_records.py [results] [--check]

Idempotent: a migrated record is left as it is. Nothing but ``split`` and ``identity`` changes (the script checks
every record's metrics, config, seed and history before writing). ``--check`` exits 1 if any record is unmigrated.
The identity of a pre-contract record is derived from its name once, here, and never again at read time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from serlib.records import SPLITS_DIR, store_split, write_text_atomic

NOT_RUNS = (SPLITS_DIR, "figures", "benchmarks")
STUDY_PREFIXES = (("head_fusion", "head_fusion"), ("faca_", "faca"), ("moma_", "moma"), ("eca_", "eca"))


def legacy_identity(record: dict) -> dict:
    """The identity of a record written before records carried one (from its experiment name and config)."""
    kind = record["kind"]
    study = next((s for p, s in STUDY_PREFIXES if kind.startswith(p)), "")
    profile = "cpu" if "_cpu" in kind else "full"
    arm = ""
    if study == "eca":
        arm = kind.split("__abl-", 1)[1] if "__abl-" in kind else kind.split("__", 1)[1] if "__" in kind else ""
    elif study == "faca":
        arm = record["config"]["model_kwargs"]["attention"]
    elif "__" in kind:
        arm = kind.split("__", 1)[1]
    return {"experiment": kind, "study": study, "profile": profile, "arm": arm}


def migrate(record: dict, results_dir: str | Path) -> dict:
    """``record`` with its split stored (:func:`serlib.records.store_split`) and an identity."""
    out = store_split(record, results_dir)
    if not out.get("identity", {}).get("study"):
        out = {**out, "identity": legacy_identity(record)}
    return out


def run_files(results_dir: Path) -> list[Path]:
    return sorted(p for p in results_dir.glob("*/**/*.json") if p.relative_to(results_dir).parts[0] not in NOT_RUNS)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if not a.startswith("--")]
    results = Path(args[0] if args else "results")
    todo = 0
    for path in run_files(results):
        rec = json.loads(path.read_text())
        new = migrate(rec, results) if not check else rec
        if check:
            todo += int("ref" not in rec.get("split", {}) or "identity" not in rec)
            continue
        if new == rec:
            continue
        unchanged = {k: v for k, v in rec.items() if k not in ("split", "identity")}
        assert unchanged == {k: v for k, v in new.items() if k not in ("split", "identity")}, path
        write_text_atomic(path, json.dumps(new, sort_keys=True, indent=1) + "\n")
        todo += 1
    print(f"{'unmigrated' if check else 'migrated'}: {todo} record(s) under {results}")
    return 1 if check and todo else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
