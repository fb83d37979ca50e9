"""The numbers behind the papers' attention figures, on real data, written as JSON records under results/figures/.

    python scripts/figure_records.py --data-root DATA [--studies faca moma eca] [--out results/figures]
        [--corpus ravdess] [--profile cpu]

Loops over the registered studies' ``figures`` (:class:`serlib.studies.base.Study`): each retrains its study's first
recorded ``cpu``-profile run (seed 0, fold 0; training is deterministic on CPU, so the model is the recorded one:
the record keeps both UAs) and measures the figure's number on that run's test utterances.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from serlib.records import environment_info, git_revision, to_jsonable, write_text_atomic
from serlib.studies.base import all_studies
from serlib.studies.common import FIGURES_DIR, figure_record_name

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    with_figures = {name: s for name, s in all_studies().items() if s.figures}
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--corpus", default="ravdess")
    ap.add_argument("--profile", default="cpu", choices=["quick", "cpu", "full"])
    ap.add_argument("--studies", nargs="+", choices=list(with_figures), default=list(with_figures))
    ap.add_argument("--recorded", default=str(REPO / "results"), help="committed run records, for the UA check")
    ap.add_argument("--out", default=str(REPO / "results" / FIGURES_DIR))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.studies:
        for make in with_figures[name].figures.values():
            body = make(args.data_root, Path(args.recorded), args.corpus, args.profile)
            rec = {"kind": f"figure_{name}", "git": git_revision(), "environment": environment_info(),
                   "profile": args.profile, **body}
            out = Path(args.out) / figure_record_name(body["figure"], body["corpus"])
            out.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out, json.dumps(to_jsonable(rec), indent=1) + "\n")
            print(f"wrote {out}")
            print(json.dumps(to_jsonable(body.get("table") or body.get("effects")), indent=1)[:3000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
