"""Command line: ``python -m serlib <command>`` (or the ``serlib`` entry point).

Commands
--------
study       execute the notebooks headless with papermill into build/notebooks/ (the main job)
manifest    write a corpus manifest CSV from a user's copy, or check a copy against one
download    fetch RAVDESS / ESC-50 into a data root (needs internet)
experiment  run one experiment (seeds x folds) from a JSON config and write run records
reproduce   run a registered study (its paper's protocol and ours) through the one resumable runner; any config
            field is set with a dotted flag: --model.n_head 2 --train.epochs 10 (checked before any data is read)
predict     predict the emotion of audio files with a saved run (reproduce --save-model keeps one)
results     regenerate docs/RESULTS.md and README's status table from the records (--check: fail when stale)
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
    from serlib.data.corpus import DataError
    from serlib.data.manifest import check_against_manifest, manifest_hash, write_manifest
    from serlib.data.registry import load_corpus

    kw: dict = {}
    if args.corpus == "iemocap":
        if args.label_set:
            kw["label_set"] = args.label_set
        kw["improvised_only"] = args.improvised_only
    try:
        corpus = load_corpus(args.corpus, Path(args.root), **kw)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(corpus.report())
    if args.check:
        report = check_against_manifest(corpus, args.csv, check_hashes=args.hashes)
        print(report.summary())
        return 0 if report.ok else 1
    out = write_manifest(corpus, args.csv)
    print(f"wrote {out} ({len(corpus)} rows, sha256 {manifest_hash(out)[:16]})")
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


def cmd_reproduce(args, overrides: dict) -> int:
    from serlib.studies.base import get_study, run, summary

    study = get_study(args.paper)
    options = {k: getattr(args, k) for k in study.options if getattr(args, k, None) is not None}
    records = run(study, corpus=args.corpus, data_root=args.data_root, profile=args.profile, protocols=args.protocols,
                  overrides=overrides, seeds=args.seeds, folds=args.folds, results_dir=args.results,
                  n_jobs=args.n_jobs, checkpoint_root=args.save_model, **options)
    ok = [r for r in records if r.get("status", "ok") == "ok" and "metrics" in r]
    if ok:
        print(summary(study, ok).to_string())
    bad = [r for r in records if r not in ok]
    for r in bad:
        print(f"{str(r.get('status', 'error')).upper()}", r.get("task", {}).get("task_id"),
              str(r.get("error") or r.get("reason") or "")[-2000:])
    return 1 if bad else 0


def cmd_predict(args) -> int:
    from serlib.predict import main_predict

    return main_predict(args.files, args.model, checkpoints=args.checkpoints, as_json=args.json,
                        embedding=args.embedding)


def cmd_results(args) -> int:
    from serlib import report

    if args.check:
        stale = report.stale(args.results, doc=args.doc, readme=args.readme)
        if stale:
            print(f"stale: {', '.join(stale)}: run `python -m serlib results` and commit the result", file=sys.stderr)
            return 1
        print(f"{args.doc} and {args.readme}'s status table are current")
        return 0
    for path in report.write_results(args.results, doc=args.doc, readme=args.readme):
        print("wrote", path)
    return 0


def _add_study_options(parser, studies) -> None:
    """Each registered study's extra options (``Study.options``) as flags, named after the option."""
    seen: set[str] = set()
    for study in studies.values():
        for name, (choices, default, help_) in study.options.items():
            if name in seen:
                continue
            seen.add(name)
            flag = "--" + name.replace("_", "-")
            if choices is None:  # a free value (e.g. a model id or folder), typed like its default
                parser.add_argument(flag, dest=name, default=None, type=type(default) if default is not None else str,
                                    help=f"{study.name}: {help_} (default {default})")
            elif isinstance(default, bool):
                parser.add_argument(flag, dest=name, default=None, type=lambda v: v.lower() in ("1", "true", "yes"),
                                    help=f"{study.name}: {help_} (true/false; default {default})")
            else:
                parser.add_argument(flag, dest=name, nargs="+", choices=list(choices), default=None,
                                    help=f"{study.name}: {help_} (default {' '.join(default)})")


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
    m.add_argument("--hashes", "--check-hashes", dest="hashes", action="store_true",
                   help="with --check: also compare sha256 of every file")
    m.add_argument("--label-set", default=None, help="IEMOCAP label set")
    m.add_argument("--improvised-only", action="store_true", help="IEMOCAP: improvised dialogs only")
    m.set_defaults(fn=cmd_manifest)

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

    from serlib.studies.base import PROFILES, all_studies

    studies = all_studies()
    r = sub.add_parser("reproduce", help="run a registered study (paper protocol and speaker-independent)",
                       epilog="Any config field: --model.FIELD, --train.FIELD, --loss.FIELD, --experiment.FIELD "
                              "VALUE (e.g. --model.n_head 2 --train.epochs 10); checked before any data is read.")
    r.add_argument("paper", choices=sorted(studies))
    r.add_argument("--corpus", default=None, help="default: the study's (ravdess for most)")
    r.add_argument("--data-root", default=None)
    r.add_argument("--protocols", nargs="+", default=None, help="default: every protocol of the study")
    r.add_argument("--profile", choices=list(PROFILES), default="full",
                   help="full: the paper's configuration (GPU for all but head_fusion); cpu: the reduced one the "
                   "committed records use; quick: minutes")
    r.add_argument("--seeds", nargs="*", type=int)
    r.add_argument("--folds", nargs="*", type=int)
    r.add_argument("--n-jobs", type=int, default=1)
    r.add_argument("--results", default="results")
    r.add_argument("--save-model", nargs="?", const=str(REPO / "build" / "checkpoints"), default=None,
                   metavar="ROOT", help="keep each new run's checkpoint (and what `serlib predict` needs) under ROOT "
                   "(default build/checkpoints, never committed); runs already recorded are not rerun")
    _add_study_options(r, studies)
    r.set_defaults(fn=cmd_reproduce)

    pr = sub.add_parser("predict", help="predict the emotion of audio files with a saved run")
    pr.add_argument("files", nargs="+", help="audio files (anything soundfile reads; any rate, stereo)")
    pr.add_argument("--model", required=True, metavar="RUN",
                    help="a run record JSON (made with reproduce --save-model) or its checkpoint folder")
    pr.add_argument("--checkpoints", default=None, metavar="ROOT",
                    help="where to look for the run's checkpoint when it is not where the run put it")
    pr.add_argument("--json", action="store_true", help="one JSON object per file (label, probabilities)")
    pr.add_argument("--embedding", action="store_true", help="with --json: include the utterance embedding")
    pr.set_defaults(fn=cmd_predict)

    g = sub.add_parser("results", help="regenerate docs/RESULTS.md and README's status table from the records")
    g.add_argument("--results", default="results")
    g.add_argument("--doc", default="docs/RESULTS.md")
    g.add_argument("--readme", default="README.md")
    g.add_argument("--check", action="store_true", help="fail (exit 1) when the committed files are stale")
    g.set_defaults(fn=cmd_results)

    args, extra = p.parse_known_args(argv)
    if args.fn is cmd_reproduce:
        from serlib.studies.base import ConfigError, get_study, parse_overrides

        try:
            overrides = parse_overrides(extra)
            study = get_study(args.paper)
            opts = {k: getattr(args, k) for k in study.options if getattr(args, k, None) is not None}
            study.build(args.corpus, args.data_root, profile=args.profile, protocols=args.protocols,
                        overrides=overrides, **opts)  # types and names checked here, before any data is read
        except (ConfigError, KeyError, ValueError, TypeError) as exc:
            p.error(str(exc))
        return int(cmd_reproduce(args, overrides) or 0)
    if extra:
        p.error(f"unrecognised arguments: {' '.join(extra)}")

    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
