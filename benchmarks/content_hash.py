"""What content-keyed feature caches cost: ``Corpus.content_hash()`` on RAVDESS, timed, a JSON record written.

    python benchmarks/content_hash.py --data-root /path/to/data

Three timings, side by side in one run, each the best of ``--repeat``:

* ``cold``: no digest memo: every file's bytes are read and hashed (blake2b). Whether the files sit in the OS page
  cache is not controlled (dropping it needs root); the first repeat is reported separately as ``cold_first_s``.
* ``memo_from_disk``: a new process's first call: the memo JSON is read, then one ``stat`` per file.
* ``memo_in_process``: later calls in the same process: one ``stat`` per file.

For scale, ``scan_s`` is the header-only scan every experiment already does (``load_ravdess``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from serlib import cache
from serlib.data.ravdess import load_ravdess
from serlib.records import git_revision

REPO = Path(__file__).resolve().parents[1]


def _reset_process_memo() -> None:
    cache._DIGESTS.clear()
    cache._DIGESTS_LOADED.clear()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("SERLIB_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "content_hash_ravdess.json"))
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    corpus = load_ravdess(Path(args.data_root) / "ravdess")
    scan_s = time.perf_counter() - t0
    n_bytes = sum(p.stat().st_size for p in corpus.paths)
    runs: dict[str, list[float]] = {"cold": [], "memo_from_disk": [], "memo_in_process": []}
    hashes = set()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SERLIB_CACHE"] = tmp
        memo = Path(tmp) / cache.DIGEST_MEMO
        for _ in range(args.repeat):
            memo.unlink(missing_ok=True)
            _reset_process_memo()
            t = time.perf_counter()
            hashes.add(corpus.content_hash())
            runs["cold"].append(time.perf_counter() - t)
            _reset_process_memo()
            t = time.perf_counter()
            hashes.add(corpus.content_hash())
            runs["memo_from_disk"].append(time.perf_counter() - t)
            t = time.perf_counter()
            hashes.add(corpus.content_hash())
            runs["memo_in_process"].append(time.perf_counter() - t)
    if len(hashes) != 1:
        raise SystemExit(f"content hash not stable across calls: {hashes}")
    record = {
        "benchmark": "content_hash",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_revision(),
        "corpus": {"name": corpus.name, "n_files": len(corpus), "bytes": n_bytes, "content_hash": hashes.pop()},
        "scan_s": round(scan_s, 4),
        "cold_first_s": round(runs["cold"][0], 4),
        "best_s": {k: round(min(v), 4) for k, v in runs.items()},
        "runs_s": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "cold_mb_per_s": round(n_bytes / 1e6 / min(runs["cold"]), 1),
        "environment": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                        "platform": platform.platform()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("scan_s", "cold_first_s", "best_s", "cold_mb_per_s")}))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
