"""Command line: ``python -m serlib <command>`` (or the ``serlib`` entry point).

(Over 450 lines on purpose: one parser for every command keeps the flags of study, reproduce and experiment
consistent; each command's work lives in the library, here only argument handling.)

Commands
--------
study       execute the notebooks headless with papermill into build/notebooks/ (the main job)
manifest    write a corpus manifest CSV from a user's copy, or check a copy against one
download    fetch RAVDESS / ESC-50 into a data root (needs internet)
experiment  run one experiment (seeds x folds) from a JSON config (or --from-record RECORD) and write run records
reproduce   run a registered study (its paper's protocol and ours) through the one resumable runner; any config
            field is set with a dotted flag: --model.n_head 2 --train.epochs 10 (checked before any data is read)
            study / experiment / reproduce take --manifest CSV [--name N] [--labels MAP]: your own corpus
predict     predict the emotion of audio files with a saved run (reproduce --save-model keeps one)
results     regenerate docs/RESULTS.md and README's status table from the records (--check: fail when stale)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BANNER = "=" * 78


def _notebooks(folder: Path, only: list[str] | None) -> list[Path]:
    nbs = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        nbs = [p for p in nbs if any(p.name.startswith(o) or p.stem == o for o in only)]
    return nbs


def _download_each(target: Path, corpora: list[str], *, esc50_hash: str | None = None,
                   allow_unverified: bool = False) -> dict[str, str]:
    """Download each corpus on its own: one's failure never discards another's success. Returns name -> one line
    (the folder, or ``FAILED: ...``)."""
    from serlib.data import download

    out = {}
    for name in corpora:
        try:
            if name == "ravdess":
                root = download.download_ravdess(target, url=download.RAVDESS_URL,
                                                 known_hash=download.RAVDESS_KNOWN_HASH)
            else:
                known = f"sha256:{esc50_hash.lower().removeprefix('sha256:')}" if esc50_hash else \
                    download.ESC50_KNOWN_HASH
                if known is None and not allow_unverified:
                    out[name] = ("FAILED: no verified hash is pinned for the ESC-50 archive; pass --sha256 HEX, or "
                                 "--allow-unverified to download it and print the sha256 to pin")
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the hash is printed below instead
                    root = download.download_esc50(target, url=download.ESC50_URL, known_hash=known,
                                                   allow_unverified=allow_unverified)
                if known is None:
                    sha = json.loads((root / download.MARKER).read_text()).get("sha256", "")
                    print(f"ESC-50 was downloaded WITHOUT hash verification; its archive's sha256 is {sha} "
                          f"(pin it: --sha256 {sha})")
            out[name] = str(root)
        except Exception as exc:  # network absent, refused, wrong hash: reported, and the others go on
            out[name] = f"FAILED: {type(exc).__name__}: {exc}"
    return out


def _offer_download(root: Path | None, assume_yes: bool) -> None:
    target = root or Path(os.environ.get("SERLIB_DATA", REPO / "build" / "data"))
    if not (assume_yes or (sys.stdin is not None and sys.stdin.isatty())):
        print(f"(no data root: run `python -m serlib download --root {target}` on a machine with internet "
              "to fetch RAVDESS and ESC-50)")
        return
    if not assume_yes:
        answer = input(f"Download RAVDESS (~208 MB) and ESC-50 (~600 MB) into {target}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            return
    done = _download_each(target, ["ravdess", "esc50"])
    for name, line in done.items():
        print(f"{name}: {line}")
    if any(not line.startswith("FAILED") for line in done.values()):
        os.environ["SERLIB_DATA"] = str(target)  # keep what succeeded, even when another corpus failed


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
    if args.manifest or args.corpus == "custom":
        corpus, csv = _study_custom(args)
        return _study_notebooks(args, corpus, csv, t_start)
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
    return _study_notebooks(args, corpus, str(root) if root else None, t_start)


def _study_custom(args) -> tuple[str, str]:
    """``serlib study --manifest CSV``: the notebooks get ``corpus="custom"`` and ``data_root=CSV`` as papermill
    parameters, and the corpus's name and label map through ``$SERLIB_CUSTOM_CORPUS``, which every custom
    :class:`serlib.experiment.Experiment` made in their kernels reads (so their records store both)."""
    from serlib.cli_corpus import corpus_from_args
    from serlib.experiment import CUSTOM_CORPUS_ENV

    corpus, csv, kwargs = corpus_from_args(args)
    os.environ[CUSTOM_CORPUS_ENV] = json.dumps({"manifest": csv, **kwargs})
    print(f"custom corpus {kwargs['name']} from {csv}" + (f", labels mapped {kwargs['label_map']}"
                                                          if kwargs.get("label_map") else ""))
    return corpus, csv


def _study_notebooks(args, corpus: str, data_root: str | None, t_start: float) -> int:
    out, results = _absolute(args.out), _absolute(args.results)  # papermill runs the notebooks from notebooks/
    out.mkdir(parents=True, exist_ok=True)
    params = {"data_root": data_root, "corpus": corpus, "profile": args.profile, "results_dir": str(results)}
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
    from serlib.data.manifest import check_against_manifest, manifest_hash, write_manifest
    from serlib.data.registry import load_corpus

    kw: dict = {}
    if args.corpus == "iemocap":
        if args.label_set:
            kw["label_set"] = args.label_set
        kw["improvised_only"] = args.improvised_only
    if args.name:
        if args.corpus != "custom":
            raise ValueError("--name names a custom corpus (serlib manifest custom CSV OUT --name NAME)")
        kw["name"] = args.name
    corpus = load_corpus(args.corpus, Path(args.root), **kw)  # a DataError is one line (see main)
    print(corpus.report())
    if args.check:
        report = check_against_manifest(corpus, args.csv, check_hashes=args.hashes)
        print(report.summary())
        return 0 if report.ok else 1
    out = write_manifest(corpus, args.csv)
    print(f"wrote {out} ({len(corpus)} rows, sha256 {manifest_hash(out)[:16]})")
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
    done = _download_each(Path(args.root), args.corpora, esc50_hash=args.sha256,
                          allow_unverified=args.allow_unverified)
    for name, line in done.items():
        print(f"{name} -> {line}")
    return 1 if any(line.startswith("FAILED") for line in done.values()) else 0


def cmd_experiment(args) -> int:
    from serlib.cli_corpus import corpus_from_args, experiment_from_record, report_folds
    from serlib.experiment import Experiment, run_experiment
    from serlib.sweep import configure_threads

    if args.from_record and (args.config or args.set):
        raise ValueError("--from-record reruns a record's own config; drop --config / --set")
    cfg = json.loads(Path(args.config).read_text()) if args.config else {}
    if args.from_record:
        cfg = experiment_from_record(args.from_record).to_dict()
    corpus, data_root, corpus_kwargs = corpus_from_args(args)
    cfg.update({k: v for k, v in (("corpus", corpus), ("data_root", data_root)) if v})
    if corpus_kwargs:
        cfg["corpus_kwargs"] = {**cfg.get("corpus_kwargs", {}), **corpus_kwargs}
    for kv in args.set or []:
        key, _, value = kv.partition("=")
        cfg[key] = json.loads(value) if value[:1] in "[{0123456789-tfn\"" else value
    for key in ("seeds", "folds"):
        if cfg.get(key) is not None:
            cfg[key] = tuple(cfg[key])
    import dataclasses

    from serlib.cache import cache_dir

    unknown = sorted(set(cfg) - {f.name for f in dataclasses.fields(Experiment)})
    if unknown:
        raise ValueError(f"{args.config or '--set'}: unknown experiment field(s) {unknown}; the fields are those of "
                         "serlib.experiment.Experiment")
    exp = Experiment(**cfg)
    print(f"torch threads: {configure_threads(1)['torch_threads']}")
    report_folds([exp])
    checkpoints = Path(args.checkpoints) if args.checkpoints else cache_dir() / "checkpoints"
    records = run_experiment(exp, results_dir=args.results, skip_existing=not args.rerun,
                             checkpoint_root=checkpoints, resume=False if (args.rerun or args.no_resume) else True)
    for r in records:
        m = r["metrics"]
        if r.get("status", "ok") != "ok":
            print(f"{r['split']['name']} seed {r['seed']}: FAILED ({r.get('reason')}) -> {r.get('_path')}")
            continue
        print(f"{r['split']['name']} seed {r['seed']}: UA {100 * m['ua']:.2f} WA {100 * m['wa']:.2f} -> {r.get('_path')}")
    return 1 if any(r.get("status", "ok") != "ok" for r in records) else 0


def _sweep_backend(args) -> str | None:
    """run_study's backend for ``--backend`` ("process" for local), or None after a one-line error."""
    if args.backend != "ray":
        if args.ray_address:
            print("serlib reproduce: error: --ray-address needs --backend ray", file=sys.stderr)
            return None
        return "process"
    from serlib.sweep_ray import import_ray

    try:
        import_ray()
    except ImportError as exc:
        print(f"serlib reproduce: error: {exc}", file=sys.stderr)
        return None
    return "ray"


def cmd_reproduce(args) -> int:
    from serlib.cache import cache_dir
    from serlib.cli_corpus import corpus_from_args, report_folds
    from serlib.studies.base import get_study, run, summary
    from serlib.sweep import choose_threads, configure_threads

    study = get_study(args.paper)
    backend = _sweep_backend(args)
    if backend is None:
        return 2
    options = {k: getattr(args, k) for k in study.options if getattr(args, k, None) is not None}
    checkpoints = None if args.no_resume and not args.save_model else \
        Path(args.save_model or args.checkpoints or cache_dir() / "checkpoints")
    corpus, data_root, corpus_kwargs = corpus_from_args(args)
    kw = dict(corpus=corpus, data_root=data_root, profile=args.profile, protocols=args.protocols,
              overrides=getattr(args, "overrides", {}), seeds=args.seeds, folds=args.folds,
              corpus_kwargs=corpus_kwargs, arms=args.arms, **options)
    run_kw = {"prebuild": not args.no_prebuild}
    threads = configure_threads(1)["torch_threads"]
    print(f"torch threads: {threads} here" + (f", {choose_threads(args.n_jobs)[0]} in each of {args.n_jobs} workers"
                                              if args.n_jobs > 1 else ""))
    report_folds(study.build(**kw))
    records = run(study, results_dir=args.results, n_jobs=args.n_jobs, checkpoint_root=checkpoints,
                  backend=backend, ray_address=args.ray_address, **kw, **run_kw)
    ok = [r for r in records if r.get("status", "ok") == "ok" and "metrics" in r]
    if ok:
        table = summary(study, ok)
        print(table.to_string() if len(table) else f"{len(ok)} runs ok; none of study {study.name}'s tables covers "
              "them: `python -m serlib results` writes every table")
    bad = [r for r in records if r not in ok]
    for r in bad:
        print(f"{str(r.get('status', 'error')).upper()}", r.get("task", {}).get("task_id"),
              str(r.get("error") or r.get("reason") or "")[-2000:])
    return 1 if bad else 0


def cmd_predict(args) -> int:
    from serlib.predict import main_predict

    return main_predict(args.files, args.model, checkpoints=args.checkpoints, as_json=args.json,
                        embedding=args.embedding)


def cmd_robustness(args) -> int:
    from serlib.robustness import write_records

    written = write_records(args.records, args.checkpoints, results_dir=args.results, profile=args.profile,
                            data_root=args.data_root, skip_existing=not args.rerun, offsets=args.offsets)
    print(f"{len(written)} robustness records written under {args.results}/robustness/")
    return 0


def cmd_tta(args) -> int:
    from serlib.tta import write_tta_records

    try:
        written = write_tta_records(args.records, args.factors, results_dir=args.results,
                                    checkpoints=args.checkpoints, data_root=args.data_root, rerun=args.rerun)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(written)} test-time speed perturbation records written under {args.results}/")
    return 0


def cmd_val_predictions(args) -> int:
    from serlib.tta import backfill_val_predictions

    try:
        written = backfill_val_predictions(args.records, checkpoints=args.checkpoints, data_root=args.data_root)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(written)} run records given their validation predictions")
    return 0


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
    """Each registered study's extra options (``Study.options``) as flags, named after the option. Studies that
    share an option name (e.g. ``parts``) share its flag: its choices are the union of theirs and its help names
    each study's; the study that runs checks the values against its own."""
    merged: dict[str, list] = {}
    for study in studies.values():
        for name, (choices, default, help_) in study.options.items():
            merged.setdefault(name, []).append((study.name, choices, default, help_))
    for name, entries in merged.items():
        flag = "--" + name.replace("_", "-")
        _, choices, default, _ = entries[0]
        if choices is None:  # a free value (e.g. a model id or folder), typed like its default
            help_ = "; ".join(f"{s}: {h} (default {d})" for s, _, d, h in entries)
            parser.add_argument(flag, dest=name, default=None, type=type(default) if default is not None else str,
                                help=help_)
        elif isinstance(default, bool):
            help_ = "; ".join(f"{s}: {h} (true/false; default {d})" for s, _, d, h in entries)
            parser.add_argument(flag, dest=name, default=None, type=lambda v: v.lower() in ("1", "true", "yes"),
                                help=help_)
        else:
            union = list(dict.fromkeys(c for _, cs, _, _ in entries for c in cs))
            help_ = "; ".join(f"{s}: {h} ({', '.join(cs)}; default {' '.join(d)})" for s, cs, d, h in entries)
            parser.add_argument(flag, dest=name, nargs="+", choices=union, default=None, help=help_)


def main(argv: list[str] | None = None) -> int:
    from serlib.cli_corpus import add_corpus_args

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
    s.add_argument("--corpus", choices=["custom"], default=None, help="custom: --data-root is its manifest CSV "
                   "(the same as --manifest CSV)")
    add_corpus_args(s)
    s.add_argument("--threads", type=int, default=1, help="torch threads in every notebook (default 1: on a shared "
                   "2-core CPU the small models of the quick profile run fastest on one)")
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
    m.add_argument("--name", default=None, help="custom: the corpus's name (default: the CSV's file name)")
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
    d.add_argument("--sha256", metavar="HEX", help="the sha256 of the ESC-50 archive to verify against (no hash is "
                   "pinned for it; RAVDESS's is)")
    d.add_argument("--allow-unverified", action="store_true", help="download ESC-50 without a hash and print the "
                   "sha256 it has, to pin with --sha256 next time")
    d.set_defaults(fn=cmd_download)

    e = sub.add_parser("experiment", help="run an experiment from a JSON config (fields of serlib.experiment.Experiment)")
    e.add_argument("--config", help="JSON file")
    e.add_argument("--set", nargs="*", help="overrides key=value (JSON values)")
    e.add_argument("--results", default="results")
    e.add_argument("--rerun", action="store_true", help="rerun from scratch even when a record exists")
    e.add_argument("--checkpoints", default=None, help="checkpoint root (default: $SERLIB_CACHE/checkpoints); a run "
                   "killed midway resumes from its checkpoint there")
    e.add_argument("--no-resume", action="store_true", help="start afresh even when a checkpoint exists")
    e.add_argument("--from-record", metavar="RECORD", default=None, help="rerun the run of a record JSON (its "
                   "config, seed and fold)")
    add_corpus_args(e, with_corpus=True)
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
    r.add_argument("--arms", nargs="+", default=None, help="only these arms of the study (e.g. faca, our_eca, mfcc)")
    r.add_argument("--no-prebuild", action="store_true", help="let the workers build the feature caches in parallel "
                   "instead of this process before them")
    r.add_argument("--backend", choices=["local", "ray"], default="local", help="local: --n-jobs processes here; "
                   "ray: Ray tasks (a local Ray instance of --n-jobs CPUs, or the cluster at --ray-address; "
                   "data, cache and results on a shared filesystem there). Resumable either way")
    r.add_argument("--ray-address", default=None, metavar="ADDR", help="with --backend ray: the cluster to use")
    r.add_argument("--results", default="results")
    r.add_argument("--checkpoints", default=None, help="checkpoint root (default: $SERLIB_CACHE/checkpoints): a "
                   "killed run resumes from its last epoch when its checkpoint is this same run's")
    r.add_argument("--no-resume", action="store_true", help="keep no checkpoints; every run starts afresh")
    add_corpus_args(r)
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

    rb = sub.add_parser("robustness", help="evaluate saved clean runs under the noise study's design-a conditions")
    rb.add_argument("records", nargs="+", help="run record JSON files whose runs kept a checkpoint")
    rb.add_argument("--checkpoints", required=True, metavar="ROOT", help="the checkpoint root the runs used")
    rb.add_argument("--profile", choices=["quick", "cpu", "full"], default="cpu", help="the noise grid (cpu = full)")
    rb.add_argument("--data-root", default=None, help="where esc50/ is (default: each run's data root)")
    rb.add_argument("--results", default="results")
    rb.add_argument("--offsets", nargs="+", type=float, default=None,
                    help="noise offsets in seconds (default: the profile's, 0 1 2 4)")
    rb.add_argument("--rerun", action="store_true", help="rewrite existing robustness records")
    rb.set_defaults(fn=cmd_robustness)

    tt = sub.add_parser("tta", help="evaluate saved segments runs again with test-time speed perturbation")
    tt.add_argument("records", nargs="+", help="run record JSON files whose runs kept a checkpoint")
    tt.add_argument("--factors", nargs="+", type=float, default=[0.9, 1.0, 1.1],
                    help="speeds whose utterance probabilities are averaged (default 0.9 1.0 1.1)")
    tt.add_argument("--checkpoints", default=None, metavar="ROOT",
                    help="where the runs' checkpoints are (default: the folder each record names)")
    tt.add_argument("--data-root", default=None, help="the corpus root (default: each run's; same audio)")
    tt.add_argument("--results", default="results")
    tt.add_argument("--rerun", action="store_true", help="rewrite existing TTA records")
    tt.set_defaults(fn=cmd_tta)

    vp = sub.add_parser("val-predictions", help="add validation predictions to older run records from their "
                                                "checkpoints (what ensembles are chosen on)")
    vp.add_argument("records", nargs="+", help="run record JSON files whose runs kept a checkpoint")
    vp.add_argument("--checkpoints", default=None, metavar="ROOT",
                    help="where the runs' checkpoints are (default: the folder each record names)")
    vp.add_argument("--data-root", default=None, help="the corpus root (default: each run's; same audio)")
    vp.set_defaults(fn=cmd_val_predictions)

    g = sub.add_parser("results", help="regenerate docs/RESULTS.md and README's status table from the records")
    g.add_argument("--results", default="results")
    g.add_argument("--doc", default="docs/RESULTS.md")
    g.add_argument("--readme", default="README.md")
    g.add_argument("--check", action="store_true", help="fail (exit 1) when the committed files are stale")
    g.set_defaults(fn=cmd_results)

    p.add_argument("--traceback", action="store_true", help="show the full traceback of an error, anywhere on the "
                   "line (also: SERLIB_DEBUG=1)")
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv or os.environ.get("SERLIB_DEBUG", "") not in ("", "0")
    args, extra = p.parse_known_args([a for a in argv if a != "--traceback"])
    if args.fn is cmd_reproduce:
        from serlib.data.corpus import DataError
        from serlib.studies.base import ConfigError, get_study, parse_overrides

        try:
            overrides = parse_overrides(extra)
            from serlib.cli_corpus import corpus_from_args

            study = get_study(args.paper)
            opts = {k: getattr(args, k) for k in study.options if getattr(args, k, None) is not None}
            corpus, root, corpus_kwargs = corpus_from_args(args)
            study.build(corpus, root, profile=args.profile, protocols=args.protocols, overrides=overrides,
                        corpus_kwargs=corpus_kwargs, **opts)  # types and names checked here, before any data is read
        except (ConfigError, KeyError, ValueError, TypeError, DataError) as exc:
            p.error(str(exc))
        args.overrides = overrides
    elif extra:
        p.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        return int(args.fn(args) or 0)
    except _user_errors() as exc:  # evaluated only when an exception arrives: no import cost otherwise
        if show_traceback:
            raise
        msg = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"serlib {args.command}: error: {type(exc).__name__}: {msg} (--traceback for details)", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are about the user's input (files, data, configuration): one line each, not a traceback."""
    from serlib.data.audio import AudioError
    from serlib.data.corpus import DataError

    return (DataError, AudioError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError, KeyError)


if __name__ == "__main__":
    sys.exit(main())
