"""Download the public corpora into their official layouts, with pinned hashes (pooch).

* :func:`download_ravdess` -> ``<dest>/ravdess/Audio_Speech_Actors_01-24/Actor_NN/*.wav`` (returns ``<dest>/ravdess``)
* :func:`download_esc50`   -> ``<dest>/esc50/{audio,meta}/`` (returns ``<dest>/esc50``)

The archive goes to ``<dest>/downloads/``; pooch verifies its hash before anything is extracted (a wrong hash
raises ``ValueError`` and leaves no tree behind). After a successful extraction a marker file records the URL and
hash, so a second call returns at once without touching the network. IEMOCAP is licensed by USC and cannot be
downloaded here.

Hash provenance:

* RAVDESS ``Audio_Speech_Actors_01-24.zip`` (Zenodo record 1188976): md5 ``bc696df654c87fed845eb13823edef8a``,
  as published with the Zenodo record and independently used to check this download by public scripts; not
  re-computed by us (no network here).
* ESC-50: a GitHub archive of a pinned commit. GitHub's ``master.zip`` changes whenever the README changes (several
  different md5s circulate), so only a commit archive can be pinned. **No verified hash of that archive is known:**
  :data:`ESC50_KNOWN_HASH` is None and :func:`download_esc50` refuses to run without ``known_hash=`` unless
  ``allow_unverified=True``, in which case it downloads, warns with the sha256 it computed, and you can pin that.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pooch

from serlib.data.corpus import DataError

RAVDESS_URL = "https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1"
RAVDESS_ARCHIVE = "Audio_Speech_Actors_01-24.zip"
RAVDESS_KNOWN_HASH = "md5:bc696df654c87fed845eb13823edef8a"  # Zenodo's published md5 (see module docstring)

# A commit of karolpiczak/ESC-50 (v2.0.0 WAV layout) taken from a public index of the repository's history.
ESC50_COMMIT = "5983fb0c35e751b452e7c562d9207f27b76ddf0d"
ESC50_URL = f"https://github.com/karolpiczak/ESC-50/archive/{ESC50_COMMIT}.zip"
ESC50_ARCHIVE = f"ESC-50-{ESC50_COMMIT}.zip"
ESC50_KNOWN_HASH: str | None = (
    None  # UNVERIFIED: no published hash of this archive was found; pass known_hash=
)

MARKER = ".serlib_download.json"


def _marker_ok(root: Path, url: str, known_hash: str | None, layout_ok: bool) -> bool:
    m = root / MARKER
    if not (layout_ok and m.is_file()):
        return False
    try:
        rec = json.loads(m.read_text())
    except (OSError, ValueError):
        return False
    return rec.get("known_hash") == known_hash or (known_hash is None and bool(rec.get("sha256")))


def _fetch(url: str, known_hash: str | None, fname: str, dest: Path, progressbar: bool) -> tuple[Path, Path]:
    """Download (or reuse) the archive, verify its hash, unzip into a staging folder; return (archive, staging)."""
    downloads = dest / "downloads"
    staging = downloads / f".extract-{Path(fname).stem}"
    if staging.exists():
        shutil.rmtree(staging)  # left over from an interrupted run
    # With a processor, retrieve returns the extracted files; the archive itself is downloads / fname.
    pooch.retrieve(
        url,
        known_hash=known_hash,
        fname=fname,
        path=downloads,
        processor=pooch.Unzip(extract_dir=str(staging)),
        progressbar=progressbar,
    )
    return downloads / fname, staging


def _finish(
    root: Path, archive: Path, url: str, known_hash: str | None, keep_archive: bool, staging: Path
) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    sha = pooch.file_hash(str(archive)) if archive.exists() else ""
    (root / MARKER).write_text(json.dumps({"url": url, "known_hash": known_hash, "sha256": sha}, indent=1))
    if not keep_archive:
        archive.unlink(missing_ok=True)


def _actor_parent(staging: Path) -> Path:
    """The folder inside the unpacked archive that holds the ``Actor_NN`` folders."""
    for cand in [staging, *sorted(p for p in staging.rglob("*") if p.is_dir())]:
        if any(d.is_dir() and d.name.startswith("Actor_") for d in cand.iterdir()):
            return cand
    raise DataError(f"the RAVDESS archive holds no Actor_NN folders (unpacked in {staging})")


def _ravdess_layout_ok(root: Path) -> bool:
    speech = root / "Audio_Speech_Actors_01-24"
    return speech.is_dir() and any(d.name.startswith("Actor_") for d in speech.iterdir())


def download_ravdess(
    dest: str | Path,
    *,
    url: str = RAVDESS_URL,
    known_hash: str | None = RAVDESS_KNOWN_HASH,
    keep_archive: bool = False,
    progressbar: bool = False,
) -> Path:
    """Fetch RAVDESS speech into ``<dest>/ravdess/Audio_Speech_Actors_01-24/`` and return ``<dest>/ravdess``."""
    dest = Path(dest).expanduser()
    root = dest / "ravdess"
    if _marker_ok(root, url, known_hash, _ravdess_layout_ok(root)):
        return root
    archive, staging = _fetch(url, known_hash, RAVDESS_ARCHIVE, dest, progressbar)
    src = _actor_parent(staging)
    speech = root / "Audio_Speech_Actors_01-24"
    speech.mkdir(parents=True, exist_ok=True)
    for d in sorted(src.iterdir()):
        if d.is_dir() and d.name.startswith("Actor_"):
            target = speech / d.name
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(d), str(target))
    _finish(root, archive, url, known_hash, keep_archive, staging)
    return root


def _esc50_layout_ok(root: Path) -> bool:
    return (root / "meta" / "esc50.csv").is_file() and (root / "audio").is_dir()


def download_esc50(
    dest: str | Path,
    *,
    url: str = ESC50_URL,
    known_hash: str | None = ESC50_KNOWN_HASH,
    allow_unverified: bool = False,
    keep_archive: bool = False,
    progressbar: bool = False,
) -> Path:
    """Fetch ESC-50 into ``<dest>/esc50/{audio,meta}/`` and return ``<dest>/esc50``.

    ``known_hash`` is required (``"sha256:..."`` or ``"md5:..."``) unless ``allow_unverified=True``.
    """
    dest = Path(dest).expanduser()
    root = dest / "esc50"
    if known_hash is None and not allow_unverified:
        raise DataError(
            "no verified hash is pinned for the ESC-50 archive; pass known_hash='sha256:...' "
            "or allow_unverified=True (the computed sha256 is then reported so you can pin it)"
        )
    if _marker_ok(root, url, known_hash, _esc50_layout_ok(root)):
        return root
    fname = ESC50_ARCHIVE if url == ESC50_URL else Path(url.split("?")[0]).name
    archive, staging = _fetch(url, known_hash, fname, dest, progressbar)
    metas = sorted(staging.rglob("meta/esc50.csv"))
    if not metas:
        raise DataError(f"the ESC-50 archive holds no meta/esc50.csv (unpacked in {staging})")
    src = metas[0].parent.parent
    root.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.iterdir()):
        target = root / item.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        shutil.move(str(item), str(target))
    if known_hash is None and archive.exists():
        warnings.warn(
            f"ESC-50 archive downloaded WITHOUT hash verification; its sha256 is {pooch.file_hash(str(archive))} "
            "(pin it with known_hash='sha256:...')",
            stacklevel=2,
        )
    _finish(root, archive, url, known_hash, keep_archive, staging)
    return root


__all__ = [
    "ESC50_COMMIT",
    "ESC50_KNOWN_HASH",
    "ESC50_URL",
    "RAVDESS_KNOWN_HASH",
    "RAVDESS_URL",
    "download_esc50",
    "download_ravdess",
]
