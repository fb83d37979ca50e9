"""Print the recorded results of every study as Markdown tables, computed from the run records under results/.

    python scripts/results_tables.py [results]

README's results tables are pasted from this output, so every number there traces to the records it lists.
Synthetic-corpus records are left out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from serlib.studies import compare, eca, faca, moma
from serlib.studies import head_fusion as hf
from serlib.studies.common import load_study_records


def markdown(df: pd.DataFrame, digits: int = 1) -> str:
    """A DataFrame as a GitHub Markdown table (floats rounded to ``digits``; NaN shown as blank)."""
    if df.empty:
        return "(no records)"

    def cell(v):
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.{digits}f}"
        return str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def real(records: list[dict]) -> list[dict]:
    return [r for r in records if not r["corpus"].get("synthetic") and r["corpus"]["name"] != "synthetic"]


def runs_line(records: list[dict]) -> str:
    revs = sorted({str(r["git"]["revision"] if isinstance(r["git"], dict) else r["git"])[:7] for r in records})
    return f"{len(records)} records; git revisions {', '.join(revs)}"


def main(results: str = "results") -> None:
    root = Path(results)
    hf_recs = real(hf.load_study_records(root))
    print("## Head Fusion\n")
    print(markdown(hf.reproduction_table(hf_recs)))
    si = [r for r in hf_recs if r["split"]["protocol"] == "speaker_independent"]
    if si:
        first = [r for r in si if r["seed"] == hf.PAPER_SEEDS[0]]
        folds = sorted({r["split"]["fold"] for r in first})
        print(f"\nspeaker-independent, seed {hf.PAPER_SEEDS[0]} only (folds {folds}):\n")
        print(markdown(hf.reproduction_table(first)))
        print("\nspeaker-independent, per fold over its seeds (last row: the mean of the fold means, std over "
              "folds):\n")
        print(markdown(hf.fold_table(si)))
    print("\n" + runs_line(hf_recs))

    fa = real(faca.load_study_records(root))
    print("\n## MHSA-FACA\n")
    print(markdown(faca.variants_table(fa)))
    print()
    print(markdown(faca.ablation_tests(fa), digits=3))
    if fa:
        print("\n" + runs_line(fa))

    mo = real(load_study_records(root, "moma_"))
    print("\n## MOMA\n")
    print(markdown(moma.results_table(mo)))
    if mo:
        print("\n" + runs_line(mo))

    ec = real(eca.load_study_records(root))
    print("\n## ECA-CNN\n")
    print(markdown(eca.ablation_table(ec)))
    print()
    print(markdown(eca.ablation_tests(ec), digits=3))
    grid, basis = eca.timing_basis(ec)
    if grid:
        per_config, projection = eca.grid_timing(grid)
        print(f"\ntiming basis: {basis} (recorded):\n")
        print(markdown(per_config[["experiment", "k", "version", "n_train", "epochs", "epoch_s", "run_total_s",
                                   "n_runs"]]))
        print(f"\nprojection ({projection.attrs['setting']}; GPU: {projection.attrs['gpu_assumption']}):\n")
        print(markdown(projection, digits=2))
        print(f"\nfull grid: {projection.attrs['total_h']:.0f} h on this CPU, "
              f"{projection.attrs['total_gpu_h']:.1f} h on one GPU (assumed throughput)")
    if ec:
        print("\n" + runs_line(ec))

    every = real(hf_recs + fa + mo + ec)
    print("\n## Every model on the same speaker-independent RAVDESS folds (test UA %, mean over seeds per fold)\n")
    print(markdown(compare.same_split_table(every, corpus="ravdess")))
    print()
    tests = compare.same_split_tests(every, corpus="ravdess")
    if not tests.empty:
        print(markdown(tests[tests["n folds"] >= 2], digits=3))
        print(f"\n({int((tests['n folds'] < 2).sum())} pairs sharing fewer than 2 folds: no test, not listed)")


if __name__ == "__main__":
    main(*sys.argv[1:])
