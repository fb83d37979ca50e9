"""Every run records itself: resolved config, seed, corpus identity, split, metrics, git revision, environment.

A record is a plain JSON-ready dict (:func:`make_record`) written atomically to a deterministic path
(:func:`record_path`, :func:`write_record`); :func:`load_records` reads a folder of them back as one flat DataFrame
for the notebooks' tables, so every number shown traces to a file.

Floats are written rounded to 6 decimal places (values below 1e-3 in magnitude keep 6 significant digits, so
learning rates and weight decays survive); NaN and infinities are written as ``null``.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
SELECTIONS = ("val", "last", "best_test")
STATUSES = ("ok", "failed")
_PACKAGES = {
    "torch": "torch",
    "numpy": "numpy",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "pandas": "pandas",
    "librosa": "librosa",
    "serlib": "serlib",
}
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


# ------------------------------------------------------------------------------------------------ provenance
def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_revision(repo: str | Path | None = None) -> str:
    """HEAD commit sha of ``repo`` (default: the checkout this package lives in), ``+dirty`` when tracked files have
    uncommitted changes; ``"unknown"`` outside git or before the first commit. Read-only (no index refresh). A copy
    of the tree carried to another machine names its commit in ``$SERLIB_GIT_REVISION`` (a 40-hex sha; recorded as
    ``<sha>+carried``, preferred to whatever ``.git`` travelled with the copy)."""
    cwd = Path(repo) if repo is not None else Path(__file__).resolve().parent
    carried = os.environ.get("SERLIB_GIT_REVISION", "")  # a copy carried elsewhere (e.g. to a GPU machine)
    if _HEX40.match(carried.split("+")[0]):  # it wins: a carried .git may be another commit's
        return carried if carried.endswith("+carried") else carried + "+carried"
    if not cwd.is_dir():
        return "unknown"
    sha = _git(["rev-parse", "--verify", "-q", "HEAD"], cwd)
    if not sha or not _HEX40.match(sha):
        return "unknown"
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return sha + ("+dirty" if status else "")


@functools.cache
def code_revision() -> str:
    """The revision of the code this process runs: :func:`git_revision` read once, when :mod:`serlib.experiment` is
    imported (a process keeps running the code it imported, whatever is committed while it works)."""
    return git_revision()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info() -> dict:
    """Versions (python, torch, numpy, scipy, sklearn, pandas, librosa, serlib), device, CPU, threads, platform."""
    import torch

    versions = {}
    for key, dist in _PACKAGES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        **versions,
        "device": "cuda" if cuda else "cpu",
        "cuda_name": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_version": torch.version.cuda,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------------------------------------ JSON
def _round(x: float) -> float:
    if x == 0 or abs(x) >= 1e-3:
        return round(x, 6)
    return float(f"{x:.6g}")


def to_jsonable(obj: Any, *, rounded: bool = False) -> Any:
    """Recursively convert numpy / torch values, paths, tuples and dataclasses to JSON types.

    Non-finite floats become None; with ``rounded`` floats are rounded as described in the module docstring.
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if not math.isfinite(x):
            return None
        return _round(x) if rounded else x
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, rounded=rounded) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, rounded=rounded) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v, rounded=rounded) for v in sorted(obj, key=str)]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), rounded=rounded)
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch.Tensor, without importing torch here
        return to_jsonable(obj.detach().cpu().tolist(), rounded=rounded)
    if isinstance(obj, Path):
        return obj.as_posix()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(
            obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj), rounded=rounded
        )
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def config_hash(config: dict, n: int = 10) -> str:
    """First ``n`` hex digits of the sha256 of the canonical JSON of ``config`` (sorted keys, exact floats)."""
    blob = json.dumps(to_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


# ------------------------------------------------------------------------------------------------ records
def make_record(
    *,
    kind: str,
    config: dict,
    seed: int,
    corpus: dict,
    split: dict,
    metrics: dict,
    history: list | None = None,
    counts: dict | None = None,
    timings: dict | None = None,
    selection: str,
    extra: dict | None = None,
    identity: dict | None = None,
    status: str = "ok",
    reason: str | None = None,
    skips: list | None = None,
    flags: list | None = None,
    git: str | None = None,
) -> dict:
    """One run's record (JSON-ready dict).

    git: the revision the run's code came from, read when the run started (:func:`git_revision` now when None; a
    run of an hour should not take the revision of whatever was committed while it trained).
    corpus: ``name`` (required), ``fingerprint``, ``manifest_hash``, ``n_utts``, ``synthetic``, ...
    split: e.g. ``protocol``, ``fold``, speakers / sessions of each part.
    selection: how the reported epoch was chosen (``"val"``, ``"last"`` or ``"best_test"``).
    identity: what the run is within its study (``study``, ``profile``, ``arm``, ``experiment``): tables read these
    fields, never folder or experiment names.
    status: ``"ok"``, or ``"failed"`` with ``reason`` (e.g. a non-finite training loss); tables and
    :func:`load_records` never count a record whose status is not ``"ok"``.
    skips: every utterance left out, as ``{"path", "reason", "stage"}``; flags: kept utterances worth knowing
    about (padded, container differing from the extension), as ``{"path", "flag"}``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection {selection!r} not in {SELECTIONS}")
    if status not in STATUSES:
        raise ValueError(f"status {status!r} not in {STATUSES}")
    if "name" not in corpus:
        raise ValueError("corpus must contain 'name'")
    config = to_jsonable(config)
    return {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        **({"reason": str(reason)} if reason is not None else {}),
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git if git is not None else git_revision(),
        "environment": environment_info(),
        "seed": int(seed),
        "config": config,
        "config_hash": config_hash(config),
        "corpus": to_jsonable(corpus),
        "split": to_jsonable(split),
        "selection": selection,
        "metrics": to_jsonable(metrics),
        "history": to_jsonable(history or []),
        "counts": to_jsonable(counts or {}),
        "timings": to_jsonable(timings or {}),
        "extra": to_jsonable(extra or {}),
        "identity": to_jsonable(identity or {"experiment": kind}),
        "skips": to_jsonable(skips or []),
        "flags": to_jsonable(flags or []),
    }


# ------------------------------------------------------------------------------------------------ split store
SPLITS_DIR = "splits"  # under a results folder: each split once, as <ref>.json
SPLIT_ID_PARTS = ("train", "val", "test")


def split_ref(split: dict) -> str:
    """Content hash (16 hex) of a split's full dict (ids, protocol, fold, meta): the name it is stored under."""
    full = {k: v for k, v in split.items() if k not in ("ref", "n")}
    return config_hash(full, n=16)


def store_split(record: dict, results_dir: str | Path) -> dict:
    """A copy of ``record`` whose split keeps everything but the utterance ids, plus ``ref`` (the stored split
    ``results_dir/splits/<ref>.json``, written once) and ``n`` (the part sizes). Records whose split is already a
    reference are returned unchanged. A record's ``stored`` entries (relative path -> content, e.g. a noise
    condition named by its hash) are written under ``results_dir`` once and dropped from the record."""
    stored = record.get("stored") or {}
    for rel, content in stored.items():
        path = Path(results_dir) / rel
        if not path.exists():
            write_text_atomic(path, json.dumps(to_jsonable(content), sort_keys=True, indent=0) + "\n")
    if "stored" in record:
        record = {k: v for k, v in record.items() if k != "stored"}
    split = record.get("split") or {}
    if "ref" in split or not any(isinstance(split.get(p), list) for p in SPLIT_ID_PARTS):
        return record
    ref = split_ref(split)
    path = Path(results_dir) / SPLITS_DIR / f"{ref}.json"
    if not path.exists():
        write_text_atomic(path, json.dumps(to_jsonable(split), sort_keys=True, indent=0) + "\n")
    short = {k: v for k, v in split.items() if k not in SPLIT_ID_PARTS}
    short.update(ref=ref, n={p: len(split.get(p) or []) for p in SPLIT_ID_PARTS})
    return {**record, "split": short}


_SPLIT_MEMO: dict[str, dict] = {}


def load_split(ref: str, results_dir: str | Path) -> dict:
    """The stored split ``ref`` under ``results_dir`` (a clear error when it is missing)."""
    path = Path(results_dir) / SPLITS_DIR / f"{ref}.json"
    key = str(path.resolve())
    if key not in _SPLIT_MEMO:
        if not path.exists():
            raise FileNotFoundError(f"split {ref} referenced by a record is missing: {path} (copy the results "
                                    f"folder whole, splits/ included)")
        _SPLIT_MEMO[key] = json.loads(path.read_text(encoding="utf-8"))
    return _SPLIT_MEMO[key]


def inflate_split(record: dict, results_dir: str | Path) -> dict:
    """``record`` with its split's utterance ids restored from the split store (unchanged if they are inline)."""
    split = record.get("split") or {}
    if "ref" not in split:
        return record
    full = load_split(split["ref"], results_dir)
    return {**record, "split": {**full, **{k: v for k, v in split.items() if k not in ("ref", "n")}}}


def results_root(record_file: str | Path) -> Path:
    """The results folder of a record file at ``<results>/<kind>/<corpus>/<protocol>/<file>.json``."""
    return Path(record_file).resolve().parents[3]


def _slug(value: Any) -> str:
    s = re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(value)).strip("-.")
    return s or "x"


def safe_name(value: Any) -> str:
    """``value`` as one path component that cannot leave its folder: runs of characters other than letters,
    digits and ``._=+-`` become ``-``, leading / trailing dots and dashes go (so ``"../x"`` gives ``"x"``), and an
    empty result gives ``"x"``. Names that are already safe are returned unchanged."""
    return _slug(value)


def record_path(results_dir: str | Path, kind: str, name_parts: dict) -> Path:
    """``results_dir/<kind>/<corpus>/<protocol>/<config-hash>_seed<k>[_fold<f>][_<key>-<value>...].json``.

    name_parts: ``corpus``, ``protocol``, ``seed`` (required), ``config`` (a dict, hashed) or ``config_hash``,
    ``fold`` (omitted when None), and any further keys, appended sorted as ``_<key>-<value>``.
    """
    parts = dict(name_parts)
    missing = [k for k in ("corpus", "protocol", "seed") if k not in parts]
    if missing:
        raise ValueError(f"name_parts lacks {missing}")
    if "config" in parts:
        h = config_hash(parts.pop("config"))
    elif "config_hash" in parts:
        h = str(parts.pop("config_hash"))
    else:
        raise ValueError("name_parts needs 'config' (dict) or 'config_hash'")
    corpus, protocol, seed = parts.pop("corpus"), parts.pop("protocol"), parts.pop("seed")
    fold = parts.pop("fold", None)
    stem = f"{_slug(h)}_seed{_slug(seed)}"
    if fold is not None:
        stem += f"_fold{_slug(fold)}"
    for k in sorted(parts):
        stem += f"_{_slug(k)}-{_slug(parts[k])}"
    return Path(results_dir) / _slug(kind) / _slug(corpus) / _slug(protocol) / f"{stem}.json"


@functools.cache
def _umask() -> int:
    """The process's umask, read once (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``: a reader never
    sees a half-written file, and a failure leaves no temporary file behind. The file gets the permissions a plain
    ``open`` would give it (``0o666`` less the umask), not ``mkstemp``'s owner-only ``0o600``, so a results folder
    shared with others stays readable by them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_record(record: dict, path: str | Path) -> Path:
    """Write ``record`` as sorted-key, indented JSON with rounded floats; atomic (temp file + ``os.replace``)."""
    text = json.dumps(to_jsonable(record, rounded=True), sort_keys=True, indent=1, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def read_record(path: str | Path) -> dict:
    """A record written by :func:`write_record`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def record_exists(path: str | Path) -> bool:
    """True when ``path`` holds a readable record (lets a rerun skip finished seeds / folds)."""
    try:
        return "schema_version" in read_record(path)
    except (OSError, ValueError):
        return False


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list):
            if all(not isinstance(x, (list, dict)) for x in v):
                out[key] = tuple(v)
        else:
            out[key] = v
    return out


def flatten_record(record: dict, path: str | Path | None = None) -> dict:
    """One flat row: identity columns, metrics (``ua``, ``wa``, ``macro_f1``, ``per_class_recall.<label>``, ...;
    nested dicts joined with dots, matrices left out), ``config.<key>``, ``timings.<key>``, ``counts.<key>``."""
    split, corpus = record.get("split") or {}, record.get("corpus") or {}
    row = {
        "path": None if path is None else str(path),
        "status": record.get("status", "ok"),
        "kind": record.get("kind"),
        "created": record.get("created"),
        "git": record.get("git"),
        "corpus": corpus.get("name"),
        "synthetic": corpus.get("synthetic"),
        "corpus_fingerprint": corpus.get("fingerprint"),
        "manifest_hash": corpus.get("manifest_hash"),
        "protocol": split.get("protocol"),
        "fold": split.get("fold"),
        "seed": record.get("seed"),
        "selection": record.get("selection"),
        "config_hash": record.get("config_hash"),
    }
    metrics = {k: v for k, v in _flatten(record.get("metrics") or {}).items() if not isinstance(v, tuple)}
    row.update({k: v for k, v in metrics.items() if k not in row})
    for section in ("config", "timings", "counts"):
        row.update({f"{section}.{k}": v for k, v in _flatten(record.get(section) or {}).items()})
    return row


def load_records(pattern_or_dir: str | Path | list, *, include_failed: bool = False) -> pd.DataFrame:
    """Records under a folder (recursively), matching a glob pattern, or listed -> one row each (see
    :func:`flatten_record`), sorted by path. JSON files that are not records are skipped; an empty DataFrame when
    nothing matches. Records whose ``status`` is not ``"ok"`` (a failed run, an error) are left out unless
    ``include_failed`` (then the ``status`` column tells them apart): a table never counts a failed run."""
    if isinstance(pattern_or_dir, (list, tuple)):
        paths = [Path(p) for p in pattern_or_dir]
    else:
        p = Path(pattern_or_dir)
        if p.is_dir():
            paths = sorted(p.rglob("*.json"))
        elif p.is_file():
            paths = [p]
        else:
            paths = sorted(Path(x) for x in glob.glob(str(pattern_or_dir), recursive=True))
    rows = []
    for p in sorted(paths):
        if p.name.startswith("."):  # an interrupted write's temp file
            continue
        record = read_record(p)
        if isinstance(record, dict) and "schema_version" in record:
            if record.get("status", "ok") != "ok" and not include_failed:
                continue
            rows.append(flatten_record(record, p))
    return pd.DataFrame(rows)


__all__ = [
    "SCHEMA_VERSION",
    "config_hash",
    "environment_info",
    "flatten_record",
    "git_revision",
    "load_records",
    "make_record",
    "read_record",
    "record_exists",
    "record_path",
    "to_jsonable",
    "write_record",
]
