"""Your own corpus on the command line: ``--manifest CSV`` / ``--name`` / ``--labels`` for ``serlib reproduce``,
``experiment`` and ``study``, the fold-size report printed before training, and ``serlib experiment --from-record``.

Kept out of :mod:`serlib.cli` so that the command definitions stay short: each command calls
:func:`add_corpus_args` on its parser and :func:`corpus_from_args` on its arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

from serlib.data.corpus import DataError

HOLDOUT_HINT = ("to run it: add `--protocols speaker_independent --experiment.protocol loso_speaker_holdout` to "
                "`serlib reproduce` (`serlib experiment`: --set protocol=loso_speaker_holdout)")


def add_corpus_args(parser, *, with_corpus: bool = False) -> None:
    """``--manifest``, ``--name`` and ``--labels`` (and ``--corpus`` when the command has none yet)."""
    if with_corpus:
        parser.add_argument("--corpus", default=None, help="a corpus name (custom: --data-root is its manifest CSV)")
        parser.add_argument("--data-root", default=None, help="the corpus's data root (custom: its manifest CSV)")
    parser.add_argument("--manifest", metavar="CSV", default=None,
                        help="your own corpus: a CSV with columns path,label,speaker (optional gender, session, "
                        "utt_id), paths relative to the CSV's folder; same as --corpus custom --data-root CSV")
    parser.add_argument("--name", default=None, help="with --manifest: the corpus name the records store (default: "
                        "the CSV's file name without .csv)")
    parser.add_argument("--labels", default=None, metavar="MAP",
                        help="label map applied at load, recorded: JSON or FROM=TO,... (several FROM to one TO merge "
                        "classes, e.g. calm=neutral,surprised=happy; TO 'drop' removes a class)")


def corpus_from_args(args) -> tuple[str | None, str | None, dict]:
    """``(corpus, data_root, corpus_kwargs)`` from ``--corpus`` / ``--data-root`` / ``--manifest`` / ``--name`` /
    ``--labels``; a custom corpus's manifest is resolved to an absolute path and always named (so a record's config
    reruns it). Clear errors for a folder given as manifest, a missing CSV, a name without a manifest."""
    from serlib.data.custom import parse_label_map

    corpus, data_root = getattr(args, "corpus", None), getattr(args, "data_root", None)
    manifest = args.manifest
    if manifest and corpus not in (None, "custom"):
        raise ValueError(f"--manifest is a custom corpus; drop --corpus {corpus}")
    if manifest and data_root and corpus is None:
        raise ValueError("--manifest names the corpus's CSV; drop --data-root")
    if corpus == "custom":
        manifest = manifest or data_root
    kwargs = {"label_map": parse_label_map(args.labels)} if args.labels else {}
    if not manifest:
        if corpus == "custom":
            raise ValueError("--corpus custom needs --data-root CSV (or use --manifest CSV)")
        if args.name:
            raise ValueError("--name names a custom corpus: use it with --manifest CSV")
        return corpus, data_root, kwargs
    path = Path(manifest).expanduser().resolve()
    if path.is_dir():
        raise DataError(f"--manifest {manifest} is a folder; pass the CSV file (write one with `serlib manifest "
                        "custom ROOT CSV` or by hand: path,label,speaker)")
    if not path.is_file():
        raise DataError(f"--manifest {manifest}: no such file")
    return "custom", str(path), {"name": args.name or path.stem, **kwargs}


def report_folds(exps, out=print) -> None:
    """Print each experiment's corpus, protocol and fold sizes (train / val / test utterances, test speakers), with
    the warnings of :func:`serlib.data.speaker_folds.fold_report` (small validation / test parts), before any
    training. A corpus too small for the speaker-independent protocol gets :data:`HOLDOUT_HINT`."""
    from serlib.data.speaker_folds import MIN_EVAL_UTTS, fold_report
    from serlib.data.splits import TooFewSpeakersError, make_splits
    from serlib.studies.common import corpus_for

    seen = set()
    for exp in exps:
        key = json.dumps([exp.corpus, exp.data_root, exp.corpus_kwargs, exp.protocol, exp.protocol_kwargs,
                          exp.split_seed, exp.folds], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        corpus = corpus_for(exp)
        try:
            splits = make_splits(exp.protocol, corpus, seed=exp.split_seed, **exp.protocol_kwargs)
        except TooFewSpeakersError as exc:
            raise TooFewSpeakersError(f"{exc}; {HOLDOUT_HINT}") from None
        table, warns = fold_report(splits, corpus)
        chosen = "all" if exp.folds is None else ", ".join(map(str, exp.folds))
        mode = splits[0].meta.get("mode")
        out(f"{corpus.name} ({len(corpus)} utterances, {corpus.table['speaker'].nunique()} speakers, "
            f"{len(corpus.labels)} classes: {', '.join(corpus.labels)}), protocol {exp.protocol}"
            f"{f' ({mode})' if mode else ''}, folds run: {chosen}")
        if splits[0].meta.get("selection"):
            out(f"  model selection: {splits[0].meta['selection']}")
        out("  " + table.to_string(index=False).replace("\n", "\n  "))
        for w in warns:
            out(f"  WARNING: {w}")
        if warns:
            out(f"  (a validation / test part under {MIN_EVAL_UTTS} utterances gives a rough estimate only)")


def experiment_from_record(path: str | Path):
    """The :class:`serlib.experiment.Experiment` that reruns a run record: its config, restricted to the record's
    seed and fold. A custom corpus's manifest is found at its recorded path, else through the record's named root
    (``corpus.manifest``); a manifest whose sha256 differs from the recorded one is an error."""
    from serlib.data.manifest import manifest_hash
    from serlib.experiment import Experiment, resolve_named_path
    from serlib.studies.common import experiment_from_dict

    path = Path(path)
    record = json.loads(path.read_text())
    if "config" not in record or "split" not in record:
        raise ValueError(f"{path} is not a run record (no config / split)")
    cfg = {k: v for k, v in record["config"].items() if k in Experiment.__dataclass_fields__}
    cfg.update(seeds=[int(record["seed"])], folds=[int(record["split"]["fold"])])
    source = (record.get("corpus") or {}).get("manifest")
    if cfg.get("corpus") == "custom" and source:
        csv = Path(cfg.get("data_root") or "")
        if not csv.is_file():
            csv = resolve_named_path(source)
        if not csv.is_file():
            raise DataError(f"{path}: its manifest is neither at {cfg.get('data_root')} nor at {csv}")
        if manifest_hash(csv) != source["sha256"]:
            raise DataError(f"{path}: manifest {csv} changed since the record (sha256 {manifest_hash(csv)[:12]} != "
                            f"{source['sha256'][:12]}); restore it to rerun this run")
        cfg["data_root"] = str(csv)
    return experiment_from_dict(cfg)
