"""Move run records to the path of their run config (the seeds / folds lists an experiment enumerates are left out
of the path's hash since serlib 0.1; older records were named with them).

    python scripts/migrate_record_paths.py results [--git]

``--git`` moves tracked files with ``git mv``. Two records that map to one path stop the script before anything
of theirs is moved.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from serlib.experiment import record_path_of


def main(argv: list[str]) -> int:
    root, use_git = Path(argv[0]), "--git" in argv
    moves: dict[Path, Path] = {}
    for path in sorted(root.rglob("*.json")):
        rec = json.loads(path.read_text())
        if "kind" not in rec or "split" not in rec:  # benchmarks and other JSON files
            continue
        new = record_path_of(rec, root)
        if new in moves.values():
            raise SystemExit(f"two records map to {new}: {path} and one before it")
        moves[path] = new
    for old, new in moves.items():
        if old == new:
            continue
        new.parent.mkdir(parents=True, exist_ok=True)
        tracked = use_git and subprocess.run(["git", "ls-files", "--error-unmatch", str(old)],
                                             capture_output=True).returncode == 0
        if tracked:
            subprocess.run(["git", "mv", str(old), str(new)], check=True)
        else:
            old.rename(new)
        print(f"{old} -> {new.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
