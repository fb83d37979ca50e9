"""``serlib pack CORPUS ROOT OUT``: a lossless FLAC copy of a corpus, checked, to carry a study to another machine.

Every usable utterance of ``CORPUS`` under ``ROOT`` (integer PCM, 8 to 24 bit) is written to ``OUT`` at the same
relative path with ``.flac`` instead of ``.wav`` (FLAC is lossless for such PCM: RAVDESS shrinks to about a third).
Files FLAC cannot hold bit for bit (float or 32-bit PCM) are copied verbatim, named as before. The metadata the
adapter needs is copied too (ESC-50 ``meta/*.csv``, IEMOCAP ``Session*/dialog/EmoEvaluation/*.txt``). The adapters
(:mod:`serlib.data.ravdess`, :mod:`~serlib.data.esc50`, :mod:`~serlib.data.iemocap`) read either layout.

Checks: every written file is decoded again and compared sample for sample with the source; then ``OUT`` is loaded
with the same adapter and must give the same utterances in the same order with the same labels, speakers, sessions,
sample rates, channels and durations. ``OUT/manifest.csv`` (the usual manifest, with sha256) and ``OUT/pack.json``
(source and copy fingerprints, counts, bytes, files not copied) record the result.

Fingerprints: :meth:`serlib.data.corpus.Corpus.fingerprint` hashes the relative paths, so it is **not**
format-independent: the FLAC copy has its own fingerprint (feature caches and run records made from the wav copy are
not reused for it, although the decoded audio, and so every feature, is identical). ``pack.json`` records both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf

from serlib.data.corpus import Corpus, DataError

METADATA = {"ravdess": (), "esc50": ("meta/*.csv",), "iemocap": ("Session*/dialog/EmoEvaluation/*.txt",)}
FLAC_SUBTYPES = {"PCM_S8": "int16", "PCM_U8": "int16", "PCM_16": "int16", "PCM_24": "int32"}
IDENTITY = ["utt_id", "label", "speaker", "session", "sample_rate", "channels"]


def _pack_file(src: Path, dst_base: Path, rel: str) -> tuple[str, bool]:
    """Write ``rel`` under ``dst_base`` as FLAC when lossless (decoded back and compared), else copy it verbatim.
    Returns (relative path written, flac?)."""
    info = sf.info(str(src))
    dtype = FLAC_SUBTYPES.get(info.subtype)
    if info.format == "FLAC" or dtype is None:
        dst = dst_base / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return rel, info.format == "FLAC"
    out_rel = PurePosixPath(rel).with_suffix(".flac").as_posix()
    dst = dst_base / out_rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    data, sr = sf.read(str(src), dtype=dtype, always_2d=True)
    sf.write(str(dst), data, sr, format="FLAC", subtype=info.subtype if info.subtype != "PCM_U8" else "PCM_S8")
    back, sr_back = sf.read(str(dst), dtype=dtype, always_2d=True)
    if sr_back != sr or back.shape != data.shape or not np.array_equal(back, data):
        raise DataError(f"{dst}: the FLAC copy of {src} does not decode to the same samples; remove {dst_base} "
                        "and pack again, or carry the wav files")
    return out_rel, True


def pack_corpus(name: str, root: str | Path, out: str | Path, *, overwrite: bool = False) -> dict:
    """Pack corpus ``name`` under ``root`` into ``out`` (see the module docstring); returns the pack.json dict."""
    from serlib.data.manifest import write_manifest
    from serlib.data.registry import load_corpus

    if name not in METADATA:
        raise DataError(f"serlib pack supports {sorted(METADATA)}, not {name!r}")
    src: Corpus = load_corpus(name, root)
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} exists and is not empty; choose a new folder (or pass --overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    base = Path(src.root)
    n_flac = n_verbatim = 0
    bytes_src = bytes_out = 0
    for rel in src.table["path"]:
        written, flac = _pack_file(base / rel, out, rel)
        n_flac += flac
        n_verbatim += not flac
        bytes_src += (base / rel).stat().st_size
        bytes_out += (out / written).stat().st_size
    meta_files = []
    for pattern in METADATA[name]:
        for f in sorted(base.glob(pattern)):
            rel = f.relative_to(base).as_posix()
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out / rel)
            meta_files.append(rel)
    packed = load_corpus(name, out)
    a = src.table[IDENTITY].reset_index(drop=True)
    b = packed.table[IDENTITY].reset_index(drop=True)
    if len(a) != len(b) or not a.astype(str).equals(b.astype(str)) or not np.allclose(
            src.table["duration"].to_numpy(), packed.table["duration"].to_numpy(), rtol=0, atol=1e-9):
        raise DataError(f"{out}: the packed copy does not load as the same corpus as {root} "
                        f"({len(b)} vs {len(a)} utterances); remove {out} and pack again")
    if tuple(packed.labels) != tuple(src.labels):
        raise DataError(f"{out}: labels {packed.labels} differ from the source's {src.labels}")
    manifest = write_manifest(packed, out / "manifest.csv")
    record = {
        "corpus": name, "source_root": str(base), "out": str(out),
        "utterances": len(packed), "flac": int(n_flac), "copied_verbatim": int(n_verbatim),
        "metadata_files": meta_files, "bytes_source_audio": int(bytes_src), "bytes_packed_audio": int(bytes_out),
        "source_fingerprint": src.fingerprint(), "packed_fingerprint": packed.fingerprint(),
        "not_copied": list(src.skipped), "manifest": manifest.name,
        "checks": "samples equal per file; same utterances, labels, speakers, sessions, rates, channels, durations",
    }
    (out / "pack.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record


__all__ = ["pack_corpus"]
