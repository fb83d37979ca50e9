"""RAVDESS speech (audio-only): 24 actors x 60 files, 8 emotions.

Filenames are ``03-01-EE-II-SS-RR-AA.wav``: modality 03 (audio-only), vocal channel 01 (speech), emotion EE,
intensity II (01 normal, 02 strong), statement SS, repetition RR, actor AA (odd male, even female).

``root`` may be the folder holding ``Audio_Speech_Actors_01-24/`` (``<data_root>/ravdess``), that folder itself,
or any folder of ``Actor_NN/`` folders (the Zenodo zip unpacked flat). The corpus root is always the folder that
holds the ``Actor_NN/`` folders, so paths (and manifests) read ``Actor_NN/03-01-...wav`` whichever form was given.

Files are probed from their headers only. Files whose names do not parse, whose actor disagrees with their
folder, that are not audio, empty or truncated are listed in ``corpus.skipped`` with the reason. A file whose
container does not match its extension (AIFF named ``.wav``) is kept, since ``load_audio`` reads it, and flagged
in the ``format_mismatch`` column. Any sample rate and channel count is accepted (``load_audio`` resamples and
downmixes); the original release is 48 kHz with five stereo files.
"""

from __future__ import annotations

import re
from pathlib import Path

from serlib.data.corpus import COLUMNS, Corpus, DataError
from serlib.data.manifest import finish_table, info_columns, probe_or_skip

EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
LABELS: tuple[str, ...] = tuple(EMOTIONS.values())
SPEECH_DIR = "Audio_Speech_Actors_01-24"
EXTRA_COLUMNS = ["emotion_code", "intensity", "statement", "repetition", "format_mismatch"]

# ASCII digits only: ``\d`` would also match other scripts' digits (Arabic-Indic "٠٣"), which ``int`` accepts, and
# so alias an existing utterance. ``.flac``: a packed copy (``serlib pack``).
_NAME = re.compile("^" + "-".join(["([0-9]{2})"] * 7) + r"\.(?:wav|flac)$", re.IGNORECASE)
_ACTOR_DIR = re.compile(r"^Actor_([0-9]{2})$")


def parse_name(name: str) -> dict:
    """Fields of a RAVDESS speech filename; raises ``ValueError`` with the reason when it does not parse."""
    m = _NAME.match(name)
    if not m:
        raise ValueError("filename does not match the RAVDESS pattern 03-01-EE-II-SS-RR-AA.wav")
    modality, channel, emo, inten, stmt, rep, actor = m.groups()
    if (modality, channel) != ("03", "01"):
        raise ValueError(f"modality-channel {modality}-{channel} is not audio-only speech (03-01)")
    if emo not in EMOTIONS:
        raise ValueError(f"unknown emotion code {emo}")
    for what, v in (("intensity", inten), ("statement", stmt), ("repetition", rep)):
        if v not in ("01", "02"):
            raise ValueError(f"{what} code {v} is not 01 or 02")
    a = int(actor)
    if not 1 <= a <= 24:
        raise ValueError(f"actor {actor} outside 01-24")
    return {
        "label": EMOTIONS[emo],
        "emotion_code": int(emo),
        "intensity": int(inten),
        "statement": int(stmt),
        "repetition": int(rep),
        "actor": a,
        "gender": "M" if a % 2 else "F",
    }


def resolve_root(root: str | Path) -> Path:
    """The folder holding the ``Actor_NN/`` folders, from any accepted form of ``root``."""
    r = Path(root).expanduser()
    if not r.exists():
        raise DataError(f"RAVDESS root does not exist: {r}")
    if not r.is_dir():
        raise DataError(f"RAVDESS root is not a folder: {r}")
    for cand in (r / SPEECH_DIR, r):
        if cand.is_dir() and any(_ACTOR_DIR.match(d.name) and d.is_dir() for d in cand.iterdir()):
            return cand
    raise DataError(f"no RAVDESS speech under {r}: expected {SPEECH_DIR}/Actor_NN/ or Actor_NN/ folders")


def load_ravdess(root: str | Path) -> Corpus:
    """Scan RAVDESS speech under ``root``; see the module docstring for accepted layouts and skip rules."""
    base = resolve_root(root)
    rows: list[dict] = []
    skipped: list[dict] = []
    seen: dict[str, str] = {}
    for actor_dir in sorted(d for d in base.iterdir() if d.is_dir() and _ACTOR_DIR.match(d.name)):
        folder_actor = int(_ACTOR_DIR.match(actor_dir.name).group(1))
        for f in sorted(actor_dir.rglob("*")):
            if not f.is_file() or f.name.startswith("."):
                continue  # folders and hidden OS files (.DS_Store, ._x) are not candidates
            rel = f.relative_to(base).as_posix()
            try:
                fields = parse_name(f.name)
            except ValueError as exc:
                skipped.append({"path": rel, "reason": str(exc)})
                continue
            if fields["actor"] != folder_actor:
                skipped.append(
                    {
                        "path": rel,
                        "reason": f"actor {fields['actor']:02d} in the name, folder {actor_dir.name}",
                    }
                )
                continue
            if f.stem in seen:
                skipped.append(
                    {"path": rel, "reason": f"duplicate utterance name, already read from {seen[f.stem]}"}
                )
                continue
            info = probe_or_skip(base, rel, skipped)
            if info is None:
                continue
            seen[f.stem] = rel
            rows.append(
                {
                    "path": rel,
                    "utt_id": f.stem,
                    "label": fields["label"],
                    "speaker": f"Actor_{fields['actor']:02d}",
                    "gender": fields["gender"],
                    "session": "",
                    **info_columns(info),
                    **{k: fields[k] for k in ("emotion_code", "intensity", "statement", "repetition")},
                }
            )
    table = finish_table("ravdess", base, rows, skipped, COLUMNS + EXTRA_COLUMNS)
    return Corpus("ravdess", base, table, LABELS, skipped)


__all__ = ["EMOTIONS", "LABELS", "load_ravdess", "parse_name", "resolve_root"]
