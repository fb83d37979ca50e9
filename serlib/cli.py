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


def _kernel_manager_class():
    """The kernel manager of the study: CurveZMQ-encrypted transport where the kernel supports it (no "running over
    TCP without encryption" warning per notebook), and no interrupt at shutdown (a finished notebook has nothing to
    stop; jupyter_client's interrupt-before-shutdown made a kernel still answering a message log "KeyboardInterrupt
    caught in kernel")."""
    import zmq
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class StudyKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _encrypt_where_possible(self) -> str:
            return "auto" if zmq.has("curve") else "disabled"

        async def _async_interrupt_kernel(self) -> None:
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return StudyKernelManager


def _absolute(path: str | Path) -> Path:
    """``path`` (``~`` expanded) against the caller's working directory, before anything changes directory."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (the notebooks' kernels): what the study
    costs whatever else the machine runs, beside the wall-clock seconds that a shared machine inflates."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _write_study(out: Path, summary: dict, rows: list[dict], t_start: float) -> None:
    """``study.json`` as it stands now (written after every notebook, so an interrupted run leaves its own)."""
    summary["runs"] = rows
    summary["seconds"] = {r["notebook"]: r["seconds"] for r in rows}
    summary["failed"] = [r["notebook"] for r in rows if r["status"] == "failed"]
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)  # from the command's start, setup included
    summary["total_cpu_seconds"] = round(_cpu_seconds(), 1)
    summary["load_after"] = [round(x, 2) for x in os.getloadavg()]
    (out / "study.json").write_text(json.dumps(summary, indent=2))


def cmd_study(args) -> int:
    t_start = time.perf_counter()
    from serlib.data.registry import data_root, find_corpora

    if args.data_root is not None and not _absolute(args.data_root).is_dir():
        given = "" if str(_absolute(args.data_root)) == args.data_root else f" ({_absolute(args.data_root)})"
        print(f"serlib study: data root {args.data_root}{given} does not exist: pass the folder holding ravdess/, "
              "esc50/ or IEMOCAP_full_release/, or no data root to run on the synthetic corpus", file=sys.stderr)
        return 1
    root = data_root(args.data_root)
    root = _absolute(root) if root is not None else None
    found = find_corpora(root) if root else {}
    if not found:
        _offer_download(root, args.download)
        root = data_root(args.data_root)
        root = _absolute(root) if root is not None else None
        found = find_corpora(root) if root else {}
    corpus = "ravdess" if "ravdess" in found else ("iemocap" if "iemocap" in found else "synthetic")
    if corpus == "synthetic":
        print(f"{BANNER}\nNO REAL CORPUS FOUND (data root: {root}). The study runs on the embedded SYNTHETIC corpus:\n"
              f"every number it prints is about synthetic audio, not emotional speech.\n{BANNER}")
    else:
        print(f"data root {root}: found {', '.join(f'{k} ({v})' for k, v in found.items())}; studies use {corpus}")
    out, results = _absolute(args.out), _absolute(args.results)  # papermill runs the notebooks from notebooks/
    out.mkdir(parents=True, exist_ok=True)
    params = {"data_root": str(root) if root else None, "corpus": corpus, "profile": args.profile,
              "results_dir": str(results)}
    # torch threads, chosen once here: every notebook's setup cell reads SERLIB_THREADS (the kernels inherit the
    # environment; restored when the study ends)
    saved_env = dict(os.environ)
    os.environ.update({var: str(args.threads) for var in ("SERLIB_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    try:
        return _run_notebooks(args, params, corpus, out, results, t_start)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)


def _run_notebooks(args, params: dict, corpus: str, out: Path, results: Path, t_start: float) -> int:
    import papermill as pm

    from serlib.records import environment_info, git_revision

    notebooks = _notebooks(REPO / "notebooks", args.only)
    summary = {"corpus": corpus, "data_root": params["data_root"], "profile": args.profile,
               "notebooks": [p.name for p in notebooks], "torch_threads": args.threads,
               "cpu_count": os.cpu_count(), "load_before": [round(x, 2) for x in os.getloadavg()],
               "out": str(out), "results": str(results), "git": git_revision(), "environment": environment_info()}
    rows: list[dict] = []
    progress = sys.stdout.isatty()
    km_class = _kernel_manager_class()
    for i, nb in enumerate(notebooks, 1):
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        print(f"-> [{i}/{len(notebooks)}] {nb.name} ({args.profile} profile, corpus {corpus})", flush=True)
        row = {"notebook": nb.name, "output": str(out / nb.name)}
        try:
            pm.execute_notebook(str(nb), str(out / nb.name), parameters=params, cwd=str(REPO / "notebooks"),
                                progress_bar=progress, kernel_name=args.kernel, kernel_manager_class=km_class)
            row["status"] = "ok"
        except KeyboardInterrupt:
            rows.append({**row, "status": "interrupted", "seconds": round(time.perf_counter() - t0, 1),
                         "cpu_seconds": round(_cpu_seconds() - cpu0, 1)})
            _write_study(out, summary, rows, t_start)
            raise
        except Exception as exc:
            row["status"] = "failed"
            row["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
            print(f"   FAILED: {row['error']}")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["cpu_seconds"] = round(_cpu_seconds() - cpu0, 1)
        row["load_after"] = [round(x, 2) for x in os.getloadavg()]
        rows.append(row)
        print(f"   {row['status']} in {row['seconds']:.0f} s -> {row['output']}", flush=True)
        _write_study(out, summary, rows, t_start)
    _write_study(out, summary, rows, t_start)
    width = max([len(r["notebook"]) for r in rows] + [8])
    print(f"\n{'notebook':<{width}}  {'seconds':>8}  {'cpu s':>7}  status  output")
    for r in rows:
        print(f"{r['notebook']:<{width}}  {r['seconds']:>8.1f}  {r['cpu_seconds']:>7.1f}  {r['status']:<6}  {r['output']}")
    print(f"{'total':<{width}}  {summary['total_seconds']:>8.1f}  {summary['total_cpu_seconds']:>7.1f}  "
          f"({args.profile} profile, corpus {corpus}, "
          f"{args.threads} torch thread(s), load {summary['load_before'][0]:.1f} -> {summary['load_after'][0]:.1f})")
    print(f"records under {results}; executed notebooks and study.json under {out}")
    return 1 if summary["failed"] else 0


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
    s.add_argument("--threads", type=int, default=1, help="torch threads in every notebook (default 1: on a shared "
                   "2-core CPU the small models of the quick profile run fastest on one)")
    s.set_defaults(fn=cmd_study)

    m = sub.add_parser("manifest", help="write or check a corpus manifest")
    m.add_argument("corpus", choices=["ravdess", "esc50", "iemocap", "custom"])
    m.add_argument("root")
    m.add_argument("csv")
    m.add_argument("--check", action="store_true", help="check the copy at root against csv instead of writing")
    m.add_argument("--hashes", action="store_true", help="also compare sha256 of every file")
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
