"""An on-disk cache of named numpy arrays, keyed by the settings that produced them; atomic, no pickles.

    spec = {"corpus": corpus.fingerprint(), "features": preset.to_dict(), "segment_s": 2.0, "format": 1}
    arrays = cached_arrays(spec, lambda: {"x": feats, "y": labels})

``<root>/<key>.npz`` holds the arrays and ``<root>/<key>.json`` the spec, creation time and array shapes, so a
cache file can always be traced to its settings. Files are written to a temporary name in the same folder and
renamed with ``os.replace``: a process killed mid-write leaves at most a temporary file, which is never read.
A cache file that does not load (truncated, corrupt) or lacks arrays its ``.json`` lists is reported with a warning
naming it and rebuilt. Temporary files (``*.tmp-*``) older than :data:`STALE_TMP_S` that a killed writer left behind
are deleted the next time a cache file is written in that folder.

Content keys: :func:`file_digests` hashes the bytes of audio files (blake2b), so that features are keyed on what the
files hold, not on their names. Digests are memoised in ``<cache>/content_digests.json`` by each file's stat
signature (size, mtime_ns, ctime_ns, inode): an unchanged file is not read again, and a file edited in place changes
its signature (``ctime`` cannot be set back by a user, unlike ``mtime``). A signature is only memoised when the file's
``mtime`` is older than :data:`RACY_S` at hashing time, so two edits within one file-system clock tick are never
mistaken for one (the "racy git" rule).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

KEY_CHARS = 20  # hex characters of sha256 kept in the file name
CACHE_FORMAT = 1  # layout of the .npz / .json pair, recorded in the .json
STALE_TMP_S = 3600.0  # temporary files older than this (seconds) are a killed writer's leftovers
RACY_S = 2.0  # files modified less than this long before hashing are not memoised (see module docstring)
DIGEST_MEMO = "content_digests.json"


def cache_dir() -> Path:
    """``$SERLIB_CACHE`` if set, else ``~/.cache/serlib``."""
    env = os.environ.get("SERLIB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "serlib"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.as_posix()
    raise TypeError(f"cache spec value {obj!r} of type {type(obj).__name__} is not JSON-serialisable")


def canonical_json(spec: Mapping[str, Any]) -> str:
    """Sorted keys, no whitespace, no NaN: the same settings always give the same text."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)


def cache_key(spec: Mapping[str, Any]) -> str:
    """First :data:`KEY_CHARS` hex digits of the sha256 of the spec's canonical JSON."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()[:KEY_CHARS]


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """``write(fileobj)`` into a temporary file beside ``path``, fsync, then rename over ``path``."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def clean_stale_tmp(folder: str | Path, max_age_s: float = STALE_TMP_S) -> list[Path]:
    """Delete ``*.tmp-*`` files in ``folder`` older than ``max_age_s`` (a killed writer's leftovers); return them.

    A younger temporary file may belong to a writer still running (another process), so it is left alone."""
    removed = []
    now = time.time()
    for p in Path(folder).glob("*.tmp-*"):
        try:
            if p.is_file() and now - p.stat().st_mtime > max_age_s:
                p.unlink()
                removed.append(p)
        except OSError:  # removed meanwhile by another process
            continue
    return removed


# ------------------------------------------------------------------------------------------------ content digests
_DIGESTS: dict[str, list] = {}  # abs path -> [size, mtime_ns, ctime_ns, ino, digest]; this process's view
_DIGESTS_LOADED: set[str] = set()  # memo files already read in this process


def _signature(st: os.stat_result) -> list[int]:
    return [int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino)]


def _hash_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digests(paths: list[str | Path], *, memo_dir: str | Path | None = None) -> list[str]:
    """blake2b digest (32 hex) of the bytes of every file in ``paths``, in order.

    Unchanged files (same stat signature as when last hashed) are answered from the memo in
    ``memo_dir`` (default :func:`cache_dir`), so checking 1440 RAVDESS files costs one ``stat`` each. A missing or
    unreadable file gives ``"missing"`` (the adapters have already listed it as a skip)."""
    folder = Path(memo_dir) if memo_dir is not None else cache_dir()
    memo_path = folder / DIGEST_MEMO
    if str(memo_path) not in _DIGESTS_LOADED:
        _DIGESTS_LOADED.add(str(memo_path))
        try:
            _DIGESTS.update(json.loads(memo_path.read_text()))
        except (OSError, ValueError):
            pass
    out, changed = [], False
    now = time.time()
    for p in paths:
        key = os.path.abspath(p)
        try:
            st = os.stat(key)
        except OSError:
            out.append("missing")
            continue
        sig = _signature(st)
        hit = _DIGESTS.get(key)
        if hit is not None and hit[:4] == sig:
            out.append(hit[4])
            continue
        try:
            digest = _hash_file(Path(key))
        except OSError:
            out.append("missing")
            continue
        out.append(digest)
        if now - st.st_mtime > RACY_S:
            _DIGESTS[key] = [*sig, digest]
            changed = True
        else:
            _DIGESTS.pop(key, None)
    if changed:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps(_DIGESTS, separators=(",", ":"), sort_keys=True)
            _atomic_write(memo_path, lambda f: f.write(text.encode()))
        except OSError as exc:  # a read-only cache only costs speed
            warnings.warn(f"could not write the content-digest memo {memo_path}: {exc}", stacklevel=2)
    return out


def _write_npz(f: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """The ``np.savez`` layout (one ``<name>.npy`` member each, uncompressed), any array name, never a pickle."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _load(npz: Path, meta: Path) -> dict[str, np.ndarray]:
    """Every array of ``npz`` read in full (so truncation surfaces here); checked against ``meta`` if present."""
    with np.load(npz, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    if meta.exists():
        expected = json.loads(meta.read_text())["arrays"]
        missing = sorted(set(expected) - set(arrays))
        if missing:
            raise KeyError(f"arrays {missing} listed in {meta.name} are missing")
        bad = [n for n, info in expected.items() if list(arrays[n].shape) != info["shape"]]
        if bad:
            raise ValueError(f"arrays {bad} differ in shape from {meta.name}")
    return arrays


def _checked(built: Any) -> dict[str, np.ndarray]:
    if not isinstance(built, Mapping) or not built:
        raise TypeError(f"build() must return a non-empty dict of arrays, got {type(built).__name__}")
    arrays = {}
    for name, value in built.items():
        arr = np.asarray(value)
        if not isinstance(name, str) or not name:
            raise TypeError(f"array names must be non-empty strings, got {name!r}")
        if arr.dtype.hasobject:
            raise TypeError(
                f"array {name!r} has dtype object: it would need pickling, which this cache refuses"
            )
        arrays[name] = arr
    return arrays


def cached_arrays(
    spec: Mapping[str, Any],
    build: Callable[[], Mapping[str, np.ndarray]],
    *,
    root: str | Path | None = None,
    refresh: bool = False,
) -> dict[str, np.ndarray]:
    """The arrays cached under ``spec``, or ``build()``'s, written atomically for next time.

    ``root`` defaults to :func:`cache_dir`. ``refresh`` rebuilds even when a valid file exists. An exception in
    ``build`` propagates and leaves no cache file.
    """
    folder = Path(root) if root is not None else cache_dir()
    key = cache_key(spec)
    npz, meta = folder / f"{key}.npz", folder / f"{key}.json"
    if npz.exists() and not refresh:
        try:
            return _load(npz, meta)
        except Exception as exc:  # truncated zip, bad CRC, missing member, unreadable sidecar, ...
            warnings.warn(
                f"cache file {npz} is unusable ({type(exc).__name__}: {exc}); rebuilding it", stacklevel=2
            )
    arrays = _checked(build())
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(folder)
    _atomic_write(npz, lambda f: _write_npz(f, arrays))
    record = {
        "key": key,
        "format": CACHE_FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": json.loads(canonical_json(spec)),
        "arrays": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in arrays.items()},
    }
    _atomic_write(meta, lambda f: f.write((json.dumps(record, indent=2, sort_keys=True) + "\n").encode()))
    return arrays
