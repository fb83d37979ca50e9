"""Regenerate data_manifests/esc50_categories.csv: the noise category of every ESC-50 class from its clips.

    python scripts/noise_categories.py --esc50 DATA/esc50 [--out data_manifests/esc50_categories.csv]

The measures and the rule are documented in :mod:`serlib.noise_categories`; each class's category is the majority
over its clips (votes listed per category). Unreadable or silent clips are skipped and listed on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serlib.data.esc50 import load_esc50
from serlib.noise_categories import CATEGORY_CSV, MEASURES, class_categories


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--esc50", required=True, help="folder holding meta/esc50.csv and audio/")
    ap.add_argument("--out", default=str(CATEGORY_CSV))
    a = ap.parse_args(argv)
    corpus = load_esc50(a.esc50)
    for s in corpus.skipped:
        print(f"skipped at scan: {s['path']}: {s['reason']}", file=sys.stderr)
    df = class_categories(corpus)
    for s in df.attrs["skipped"]:
        print(f"skipped: {s['path']}: {s['reason']}", file=sys.stderr)
    df[list(MEASURES)] = df[list(MEASURES)].round(4)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, lineterminator="\n")
    counts = df["category"].value_counts().to_dict()
    print(f"wrote {out}: {len(df)} classes from {int(df['n_clips'].sum())} clips; {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
