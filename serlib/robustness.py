"""Robustness records: every model's saved clean run evaluated under the noise study's design-a conditions (issue 14).

``python -m serlib robustness RECORD... --checkpoints ROOT [--profile cpu] [--results results]`` loads each run's
model from the checkpoint the run kept (:func:`serlib.studies.common.load_model`), evaluates its test part under
every category x AF x offset of the profile's grid (:func:`serlib.studies.noise.model_robustness`, evaluation only,
on the GPU when there is one) and writes one JSON record per run to
``<results>/robustness/<run kind>/<run record's file name>``:

* ``run``: the clean run's record itself (config, seed, split reference, corpus fingerprint, metrics, environment,
  git revision), so each curve traces to the training that made the model, wherever that record lives;
* ``rows``: one per condition (``condition``, ``category``, ``af``, ``offset_s``, ``ua``, ``wa``, mean SNRs by Eq. 3
  and by power, the condition's hash), plus the clean test UA as category ``clean``;
* ``profile``, ``noise_source``, this evaluation's git revision, environment and seconds.

These records are not runs: :func:`serlib.studies.common.load_records` skips the folder, and ``docs/RESULTS.md``
gets their own section (:func:`robustness_markdown`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from serlib import speaker_norm

ROBUSTNESS_DIR = "robustness"
RUN_KEYS = ("kind", "status", "seed", "identity", "config", "config_hash", "metrics", "split", "corpus",
            "environment", "git", "git_revision", "timings", "skips")


def record_path(run: dict, results_dir: str | Path, run_path: str | Path) -> Path:
    return Path(results_dir) / ROBUSTNESS_DIR / str(run["kind"]) / Path(run_path).name


def evaluate_run(run: dict, checkpoint_root: str | Path, *, profile: str = "cpu", data_root=None,
                 offsets=None) -> dict:
    """The robustness record of one run record (see the module docstring)."""
    from serlib.records import environment_info, git_revision
    from serlib.studies.noise import default_source as _source
    from serlib.studies.noise import model_robustness

    speaker_norm.refuse_record(run, "the noise robustness evaluation")
    t0 = time.perf_counter()
    df = model_robustness([run], checkpoint_root, profile=profile, data_root=data_root, offsets=offsets)
    src = _source(run["config"]["corpus"])
    return {
        "kind": "robustness",
        "model": run["kind"],
        "seed": run["seed"],
        "fold": run["split"].get("fold"),
        "profile": profile,
        "offsets": None if offsets is None else [float(o) for o in offsets],
        "noise_source": src,
        "run": {k: run[k] for k in RUN_KEYS if k in run},
        "rows": json.loads(df.drop(columns=["model", "seed", "fold"], errors="ignore").to_json(orient="records")),
        "git_revision": git_revision(),
        "environment": environment_info(),
        "seconds": time.perf_counter() - t0,
    }


def write_records(run_paths: Iterable[str | Path], checkpoint_root: str | Path, *, results_dir: str | Path,
                  profile: str = "cpu", data_root=None, skip_existing: bool = True, offsets=None) -> list[Path]:
    """:func:`evaluate_run` for each run record file; returns the records written (existing ones are kept)."""
    from serlib.records import inflate_split, write_record
    from serlib.report import is_ok

    written = []
    for p in run_paths:
        p = Path(p)
        run = json.loads(p.read_text())
        if not is_ok(run):
            print(f"{p}: not a successful run record (status {run.get('status')!r}); skipped")
            continue
        out = record_path(run, results_dir, p)
        if skip_existing and out.exists():
            continue
        root = _results_root(p)
        rec = evaluate_run(inflate_split(run, root), checkpoint_root, profile=profile, data_root=data_root,
                           offsets=offsets)
        rec["run"]["split"] = run["split"]  # the stored reference, not the inflated ids
        write_record(rec, out)
        written.append(out)
        print(f"wrote {out} ({rec['seconds']:.0f} s)", flush=True)
    return written


def _results_root(path: Path) -> Path:
    """The results folder of a run record file (:func:`serlib.records.results_root`), checked to hold the split
    store the record refers to."""
    from serlib.records import results_root

    root = results_root(path)
    if not (root / "splits").is_dir():
        raise FileNotFoundError(f"{path}: not a run record inside a results folder (expected "
                                "<results>/<experiment>/<corpus>/<protocol>/<file>.json beside <results>/splits/)")
    return root


def load(results_dir: str | Path = "results") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(results_dir, ROBUSTNESS_DIR).glob("*/*.json"))]


def frame(records: list[dict]) -> pd.DataFrame:
    """One row per (record, condition) with ``model``, ``seed``, ``fold``, ``device`` (of the clean run)."""
    out = []
    for r in records:
        env = r["run"].get("environment") or {}
        dev = env.get("cuda_name") or env.get("device") or "cpu"
        for row in r["rows"]:
            out.append({**row, "model": r["model"], "seed": r["seed"], "fold": r["fold"], "trained on": dev})
    return pd.DataFrame(out)


def robustness_table(records: list[dict]) -> pd.DataFrame:
    """Test UA (%) per model and category: clean, and each AF averaged over the offsets evaluated, folds and seeds."""
    df = frame(records)
    if df.empty:
        return df
    df["ua"] = df["ua"] * 100
    clean = df[df["category"] == "clean"].groupby("model").agg(clean=("ua", "mean"), runs=("ua", "size"),
                                                               folds=("fold", "nunique"))
    noisy = df[df["category"] != "clean"].copy()
    noisy["col"] = noisy["category"] + " AF " + noisy["af"].map(lambda a: f"{a:g}")
    piv = noisy.pivot_table(index="model", columns="col", values="ua", aggfunc="mean")
    dev = df.groupby("model")["trained on"].first()
    return clean.join(piv).join(dev).reset_index()


def by_af_table(records: list[dict]) -> tuple[pd.DataFrame, list]:
    """Mean test UA (%) over the four categories per AF (rows) and model (columns), on the folds that every model
    has (so that the models are compared on the same test speakers); returns ``(table, those folds)``."""
    df = frame(records)
    noisy = df[df["category"] != "clean"] if not df.empty else df
    if noisy.empty:
        return pd.DataFrame(), []
    shared = sorted(set.intersection(*(set(g["fold"]) for _, g in noisy.groupby("model"))))
    table = noisy[noisy["fold"].isin(shared)].groupby(["af", "model"])["ua"].mean().mul(100).unstack("model")
    return table, shared


def snr_table(records: list[dict]) -> pd.DataFrame:
    """Mean SNR (dB) of each category and AF over the records' test utterances, by Eq. 3 (mean absolute
    amplitudes) and by power; the same noisy test parts for every model of a fold."""
    df = frame(records)
    if df.empty:
        return df
    noisy = df[df["category"] != "clean"]
    return (noisy.groupby(["category", "af"])[["snr_eq3_db", "snr_power_db"]].mean()
            .rename(columns={"snr_eq3_db": "SNR Eq. 3 (dB)", "snr_power_db": "SNR power (dB)"}).reset_index())


def differences_table(records: list[dict], reference: str | None = None) -> pd.DataFrame:
    """Paired differences (UA points) of every model against ``reference`` (default: the Head Fusion run) per
    category and AF, paired by fold (:func:`serlib.studies.noise.model_differences`)."""
    from serlib.studies.noise import model_differences

    df = frame(records)
    if df.empty:
        return df
    models = sorted(df["model"].unique())
    ref = reference or next((m for m in models if m.startswith("head_fusion")), models[0])
    parts = [model_differences(df, m, ref) for m in models if m != ref]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def robustness_markdown(results_dir: str | Path = "results") -> list[str]:
    """The section of docs/RESULTS.md (empty without robustness records)."""
    from serlib.report import markdown

    recs = load(results_dir)
    if not recs:
        return []
    offsets = sorted({float(o) for o in frame(recs)["offset_s"].dropna()})
    out = ["## Noise robustness of every model (design a: trained clean, tested noisy)", "",
           "Each model's clean speaker-independent run evaluated under ESC-50 noise of each category and AF (mean over "
           f"the offsets evaluated: {', '.join(f'{o:g}' for o in offsets)} s), from `results/robustness/` "
           "(`python -m serlib robustness`); each record embeds the run that trained the model (its machine in the "
           "last column). Test UA (%):", "", markdown(robustness_table(recs)), "",
           "The conditions' mean SNRs (Eq. 3 of the paper and by power):", "", markdown(snr_table(recs)), ""]
    diff = differences_table(recs)
    if not diff.empty:
        out += ["Paired differences against Head Fusion (UA points, paired by fold):", "", markdown(diff, digits=3),
                ""]
    return out


__all__ = ["ROBUSTNESS_DIR", "by_af_table", "differences_table", "evaluate_run", "frame", "load", "robustness_markdown",
           "robustness_table", "snr_table", "write_records"]
