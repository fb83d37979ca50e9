"""Command line: ``python -m serlib <command>`` (or the ``serlib`` entry point).

Commands
--------
study       execute the notebooks headless with papermill into build/notebooks/ (the main job)
manifest    write a corpus manifest CSV from a user's copy, or check a copy against one
download    fetch RAVDESS / ESC-50 into a data root (needs internet)
experiment  run one experiment (seeds x folds) from a JSON config and write run records
reproduce   run a paper's study (its protocol and ours) through the resumable sweep runner
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BANNER = "=" * 78


def _notebooks(folder: Path, only: list[str] | None) -> list[Path]:
    nbs = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        nbs = [p for p in nbs if any(p.name.startswith(o) or p.stem == o for o in only)]
    return nbs


def _offer_download(root: Path | None, assume_yes: bool) -> None:
    from serlib.data import download

    target = root or Path(os.environ.get("SERLIB_DATA", REPO / "build" / "data"))
    if not (assume_yes or (sys.stdin is not None and sys.stdin.isatty())):
        print(f"(no data root: run `python -m serlib download --root {target}` on a machine with internet "
              "to fetch RAVDESS and ESC-50)")
        return
    if not assume_yes:
        answer = input(f"Download RAVDESS (~208 MB) and ESC-50 (~600 MB) into {target}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            return
    try:
        download.download_ravdess(target)
        download.download_esc50(target)
        os.environ["SERLIB_DATA"] = str(target)
    except Exception as exc:  # network absent or refused: fall back loudly, never silently
        print(f"download failed ({type(exc).__name__}: {exc}); continuing without real data")


def cmd_study(args) -> int:
    import papermill as pm

    from serlib.data.registry import data_root, find_corpora

    root = data_root(args.data_root)
    found = find_corpora(root) if root else {}
    if not found:
        _offer_download(root, args.download)
        root = data_root(args.data_root)
        found = find_corpora(root) if root else {}
    corpus = "ravdess" if "ravdess" in found else ("iemocap" if "iemocap" in found else "synthetic")
    if corpus == "synthetic":
        print(f"{BANNER}\nNO REAL CORPUS FOUND (data root: {root}). The study runs on the embedded SYNTHETIC corpus:\n"
              f"every number it prints is about synthetic audio, not emotional speech.\n{BANNER}")
    else:
        print(f"data root {root}: found {', '.join(f'{k} ({v})' for k, v in found.items())}; studies use {corpus}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Path(args.results)
    params = {"data_root": str(root) if root else None, "corpus": corpus, "profile": args.profile,
              "results_dir": str(results.resolve())}
    failures, seconds = [], {}
    for nb in _notebooks(REPO / "notebooks", args.only):
        t0 = time.perf_counter()
        print(f"-> {nb.name} ({args.profile} profile, corpus {corpus})", flush=True)
        try:
            pm.execute_notebook(str(nb), str(out / nb.name), parameters=params, cwd=str(REPO / "notebooks"),
                                progress_bar=False, kernel_name=args.kernel)
            seconds[nb.name] = round(time.perf_counter() - t0, 1)
            print(f"   done in {seconds[nb.name]:.0f} s -> {out / nb.name}")
        except Exception as exc:
            failures.append(nb.name)
            print(f"   FAILED: {type(exc).__name__}: {str(exc)[:2000]}")
    from serlib.records import environment_info, git_revision

    summary = {"corpus": corpus, "data_root": params["data_root"], "profile": args.profile,
               "notebooks": [p.name for p in _notebooks(REPO / "notebooks", args.only)], "failed": failures,
               "seconds": seconds, "git": git_revision(), "environment": environment_info()}
    (out / "study.json").write_text(json.dumps(summary, indent=2))
    print(f"records under {results}; executed notebooks under {out}")
    return 1 if failures else 0


def cmd_manifest(args) -> int:
    from serlib.data.manifest import check_against_manifest, write_manifest
    from serlib.data.registry import load_corpus

    corpus = load_corpus(args.corpus, Path(args.root))
    print(corpus.report())
    if args.check:
        report = check_against_manifest(corpus, args.csv, check_hashes=args.hashes)
        print(report.summary())
        return 0 if report.ok else 1
    write_manifest(corpus, args.csv)
    print(f"wrote {args.csv} ({len(corpus)} rows)")
    return 0


def cmd_pack(args) -> int:
    """``serlib pack CORPUS ROOT OUT``: a lossless FLAC copy of a corpus, checked (serlib.data.pack)."""
    from serlib.data.pack import pack_corpus

    rec = pack_corpus(args.corpus, args.root, args.out, overwrite=args.overwrite)
    print(f"packed {rec['utterances']} utterances ({rec['flac']} FLAC, {rec['copied_verbatim']} verbatim), "
          f"{rec['bytes_source_audio'] / 2**20:.1f} MiB -> {rec['bytes_packed_audio'] / 2**20:.1f} MiB; "
          f"checked; {args.out}/manifest.csv and pack.json written")
    return 0


def cmd_download(args) -> int:
    from serlib.data import download

    root = Path(args.root)
    if "ravdess" in args.corpora:
        print("RAVDESS ->", download.download_ravdess(root))
    if "esc50" in args.corpora:
        print("ESC-50 ->", download.download_esc50(root))
    return 0


def cmd_experiment(args) -> int:
    from serlib.experiment import Experiment, run_experiment

    cfg = json.loads(Path(args.config).read_text()) if args.config else {}
    for kv in args.set or []:
        key, _, value = kv.partition("=")
        cfg[key] = json.loads(value) if value[:1] in "[{0123456789-tfn\"" else value
    for key in ("seeds", "folds"):
        if cfg.get(key) is not None:
            cfg[key] = tuple(cfg[key])
    exp = Experiment(**cfg)
    records = run_experiment(exp, results_dir=args.results, skip_existing=not args.rerun)
    for r in records:
        m = r["metrics"]
        print(f"{r['split']['name']} seed {r['seed']}: UA {100 * m['ua']:.2f} WA {100 * m['wa']:.2f} -> {r.get('_path')}")
    return 0


STUDIES = ("head_fusion", "faca", "moma", "eca")


def _study(name: str):
    """(study module, its summary-table function) of a paper's study."""
    import importlib

    module = importlib.import_module(f"serlib.studies.{name}")
    table = {"head_fusion": "table", "faca": "variants_table", "moma": "results_table", "eca": "ablation_table"}[name]
    return module, getattr(module, table)


def cmd_reproduce(args) -> int:
    from serlib.experiment import build_views
    from serlib.studies.common import corpus_for, run_study, split_for

    module, table = _study(args.paper)
    kw = {"track_test": args.track_test} if args.paper == "head_fusion" else {}
    if args.parts:
        if args.paper != "eca":
            raise SystemExit("--parts applies to eca only")
        kw["parts"] = args.parts
    exps = module.reproduction_experiments(args.corpus, args.data_root, profile=args.profile,
                                           protocols=args.protocols, **kw)
    if not exps:
        raise SystemExit(f"{args.paper}: nothing to run for corpus {args.corpus} and protocols {args.protocols}")
    if args.seeds:
        exps = [e.replace(seeds=tuple(args.seeds)) for e in exps]
    if args.folds:
        exps = [e.replace(folds=tuple(args.folds)) for e in exps]
    for exp in exps:  # build the feature caches once, before the workers start
        corpus = corpus_for(exp)
        build_views(exp, corpus, split_for(exp, corpus, (exp.folds or (0,))[0]))
    records = run_study(exps, results_dir=args.results, n_jobs=args.n_jobs, progress=False)
    ok = [r for r in records if r.get("status", "ok") != "error"]
    if ok:
        print(table(ok).to_string())
    errors = [r for r in records if r.get("status") == "error"]
    for r in errors:
        print("ERROR", r.get("task"), r.get("error", "")[-2000:])
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serlib", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("study", help="execute the notebooks headless (the main job)")
    s.add_argument("--data-root", default=None, help="folder holding ravdess/, esc50/, IEMOCAP_full_release/ "
                   "(default: $SERLIB_DATA)")
    s.add_argument("--profile", choices=["quick", "cpu", "full"], default="quick")
    s.add_argument("--out", default=str(REPO / "build" / "notebooks"))
    s.add_argument("--results", default=str(REPO / "build" / "results"))
    s.add_argument("--only", nargs="*", help="notebook prefixes to run, e.g. 00 01")
    s.add_argument("--download", action="store_true", help="download RAVDESS / ESC-50 when no data is found")
    s.add_argument("--kernel", default="python3")
    s.set_defaults(fn=cmd_study)

    m = sub.add_parser("manifest", help="write or check a corpus manifest")
    m.add_argument("corpus", choices=["ravdess", "esc50", "iemocap", "custom"])
    m.add_argument("root")
    m.add_argument("csv")
    m.add_argument("--check", action="store_true", help="check the copy at root against csv instead of writing")
    m.add_argument("--hashes", action="store_true", help="also compare sha256 of every file")
    m.set_defaults(fn=cmd_manifest)

    pk = sub.add_parser("pack", help="write a checked lossless FLAC copy of a corpus (to carry it elsewhere)")
    pk.add_argument("corpus", choices=["ravdess", "esc50", "iemocap"])
    pk.add_argument("root")
    pk.add_argument("out")
    pk.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    pk.set_defaults(fn=cmd_pack)

    d = sub.add_parser("download", help="download public corpora (needs internet)")
    d.add_argument("--root", required=True)
    d.add_argument("--corpora", nargs="+", default=["ravdess", "esc50"], choices=["ravdess", "esc50"])
    d.set_defaults(fn=cmd_download)

    e = sub.add_parser("experiment", help="run an experiment from a JSON config (fields of serlib.experiment.Experiment)")
    e.add_argument("--config", help="JSON file")
    e.add_argument("--set", nargs="*", help="overrides key=value (JSON values)")
    e.add_argument("--results", default="results")
    e.add_argument("--rerun", action="store_true", help="rerun even when a record exists")
    e.set_defaults(fn=cmd_experiment)

    r = sub.add_parser("reproduce", help="run a paper's study (paper protocol and speaker-independent)")
    r.add_argument("paper", choices=list(STUDIES))
    r.add_argument("--corpus", default="ravdess")
    r.add_argument("--data-root", default=None)
    r.add_argument("--protocols", nargs="+", default=["paper", "speaker_independent"],
                   choices=["paper", "speaker_independent"])
    r.add_argument("--profile", choices=["quick", "cpu", "full"], default="full",
                   help="full: the paper's configuration (GPU for all but head_fusion); cpu: the reduced one the "
                   "committed records use; quick: minutes")
    r.add_argument("--parts", nargs="+", choices=["ablation", "grid_slice"],
                   help="eca only: the ablation (default) and/or the k x version grid slice behind the timing")
    r.add_argument("--seeds", nargs="*", type=int)
    r.add_argument("--folds", nargs="*", type=int)
    r.add_argument("--n-jobs", type=int, default=1)
    r.add_argument("--no-track-test", dest="track_test", action="store_false",
                   help="do not evaluate the test split every epoch (then no best-test-epoch figure)")
    r.add_argument("--results", default="results")
    r.set_defaults(fn=cmd_reproduce)

    args = p.parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
