"""Move run records to the path of their run config (serlib >= 0.1 leaves the seeds / folds lists out of the hash).

    python scripts/migrate_record_paths.py results [--git]
"""
import json, sys, subprocess
from pathlib import Path
from serlib.experiment import record_path_of
root = Path(sys.argv[1]); git = "--git" in sys.argv
seen = {}
for p in sorted(root.rglob("*.json")):
    if "benchmarks" in p.parts:
        continue
    rec = json.loads(p.read_text())
    if "kind" not in rec:
        continue
    new = record_path_of(rec, root)
    if new in seen:
        raise SystemExit(f"conflict: {p} and {seen[new]} -> {new}")
    seen[new] = p
    if new != p:
        new.parent.mkdir(parents=True, exist_ok=True)
        if git and subprocess.run(["git", "ls-files", "--error-unmatch", str(p)], capture_output=True).returncode == 0:
            subprocess.run(["git", "mv", str(p), str(new)], check=True)
        else:
            p.rename(new)
        print(p.name, "->", new.name)
