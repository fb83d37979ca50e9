"""IEMOCAP (USC, licensed): five sessions, each two actors, improvised and scripted dialogs.

Layout (``root`` may be the folder holding ``IEMOCAP_full_release/``, that folder itself, or any folder holding
``Session1..5/``; the corpus root is the folder holding the sessions)::

    Session{n}/sentences/wav/<dialog>/<utterance>.wav
    Session{n}/dialog/EmoEvaluation/<dialog>.txt   lines "[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[v, a, d]"

The speaker is the session plus the gender letter of the utterance name's LAST token: ``Ses01F_impro01_M003`` is
spoken by the male actor of session 1, speaker ``"Ses01M"`` -- not the dialog prefix ``Ses01F``, which names who
led the dialog. ``session`` is ``"1"``..``"5"``; ``improvised`` is True for ``impro`` dialogs.

Label sets (``labels`` are full words):

* ``"4class_exc_merged"`` (standard): neu, hap + exc, sad, ang -> (neutral, happy, sad, angry). 5531 utterances on
  the full release (per session 1085/1023/1151/1031/1241), 2943 improvised.
* ``"head_fusion"``: as the Head Fusion authors' code: exc -> happy, **hap dropped**, neu, sad, ang.
* ``"all"``: every category code, mapped to full words (``xxx`` -> ``"undecided"``), labels in a fixed order
  restricted to those present.

Utterances left out on purpose are not errors; they are counted in ``corpus.excluded`` (a dict attached to the
returned corpus: label code -> count, plus ``"scripted"`` when ``improvised_only``). Utterances listed in an
EmoEvaluation file whose wav is missing or unreadable are listed in ``corpus.skipped``. On a full release (all five
sessions) the loader warns when the standard counts above are not met.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

from serlib.data.corpus import COLUMNS, Corpus, DataError
from serlib.data.manifest import audio_rel, finish_table, info_columns, probe_or_skip

RELEASE_DIR = "IEMOCAP_full_release"
CODE_NAMES = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "excited",
    "sad": "sad",
    "ang": "angry",
    "fru": "frustrated",
    "sur": "surprised",
    "fea": "fearful",
    "dis": "disgusted",
    "oth": "other",
    "xxx": "undecided",
}
LABEL_SETS: dict[str, dict[str, str]] = {
    "4class_exc_merged": {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"},
    "head_fusion": {"neu": "neutral", "exc": "happy", "sad": "sad", "ang": "angry"},
    "all": dict(CODE_NAMES),
}
FOUR_CLASSES: tuple[str, ...] = ("neutral", "happy", "sad", "angry")

# Known counts of the full release (standard 4-class set with exc merged into happy).
N_4CLASS = 5531
N_4CLASS_PER_SESSION = {"1": 1085, "2": 1023, "3": 1151, "4": 1031, "5": 1241}
N_4CLASS_IMPROVISED = 2943
N_4CLASS_PER_LABEL = {"neutral": 1708, "happy": 1636, "sad": 1084, "angry": 1103}

EXTRA_COLUMNS = [
    "dialog",
    "improvised",
    "emotion_code",
    "start",
    "end",
    "valence",
    "arousal",
    "dominance",
    "format_mismatch",
]

_LINE = re.compile(
    r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\w+)\s+\[\s*([\d.]+),\s*([\d.]+),\s*([\d.]+)\s*\]",
    re.ASCII,  # ASCII digits only (``\d`` also matches other scripts' digits)
)
_SESSION = re.compile(r"^Session([1-5])$")


def parse_utterance(name: str) -> dict:
    """Session, speaker, gender and dialog of an utterance name such as ``Ses01F_impro01_M003``."""
    m = re.match(r"^Ses(\d\d)([FM])_(.+)_([FM])(\d+)$", name, re.ASCII)
    if not m:
        raise ValueError(f"not an IEMOCAP utterance name: {name!r}")
    session, gender = str(int(m.group(1))), m.group(4)
    dialog = name.rsplit("_", 1)[0]
    return {
        "session": session,
        "gender": gender,
        "speaker": f"Ses{int(session):02d}{gender}",
        "dialog": dialog,
        "improvised": "impro" in dialog,
    }


def parse_emo_evaluation(path: str | Path) -> list[dict]:
    """The category lines of one EmoEvaluation file (headers, blank, ``%`` and annotator lines ignored)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        m = _LINE.match(line.strip())
        if m:
            start, end, utt, code, v, a, d = m.groups()
            out.append(
                {
                    "utt": utt,
                    "code": code,
                    "start": float(start),
                    "end": float(end),
                    "valence": float(v),
                    "arousal": float(a),
                    "dominance": float(d),
                }
            )
    return out


def resolve_root(root: str | Path) -> Path:
    """The folder holding ``Session{n}/``, from any accepted form of ``root``."""
    r = Path(root).expanduser()
    if not r.is_dir():
        raise DataError(f"IEMOCAP root does not exist or is not a folder: {r}")
    for cand in (r / RELEASE_DIR, r):
        if cand.is_dir() and any(_SESSION.match(d.name) and d.is_dir() for d in cand.iterdir()):
            return cand
    raise DataError(f"no IEMOCAP sessions under {r}: expected {RELEASE_DIR}/Session1..5/ or Session1..5/")


def load_iemocap(
    root: str | Path, *, label_set: str = "4class_exc_merged", improvised_only: bool = False
) -> Corpus:
    """Scan IEMOCAP under ``root`` with the given label set; see the module docstring."""
    if label_set not in LABEL_SETS:
        raise ValueError(f"label_set must be one of {sorted(LABEL_SETS)}, got {label_set!r}")
    mapping = LABEL_SETS[label_set]
    base = resolve_root(root)
    sessions = sorted(d for d in base.iterdir() if d.is_dir() and _SESSION.match(d.name))
    rows: list[dict] = []
    skipped: list[dict] = []
    excluded: Counter = Counter()
    n_eval_files = 0
    for sdir in sessions:
        eval_dir = sdir / "dialog" / "EmoEvaluation"
        eval_files = (
            sorted(f for f in eval_dir.glob("*.txt") if not f.name.startswith("."))
            if eval_dir.is_dir()
            else []
        )
        if not eval_files:
            skipped.append({"path": f"{sdir.name}/dialog/EmoEvaluation", "reason": "no EmoEvaluation files"})
            continue
        n_eval_files += len(eval_files)
        for ef in eval_files:
            for rec in parse_emo_evaluation(ef):
                utt = rec["utt"]
                try:
                    meta = parse_utterance(utt)
                except ValueError as exc:
                    skipped.append({"path": ef.relative_to(base).as_posix(), "reason": str(exc)})
                    continue
                rel = audio_rel(base, f"{sdir.name}/sentences/wav/{meta['dialog']}/{utt}.wav")  # or .flac
                if improvised_only and not meta["improvised"]:
                    excluded["scripted"] += 1
                    continue
                if rec["code"] not in mapping:
                    excluded[rec["code"]] += 1
                    continue
                info = probe_or_skip(base, rel, skipped)
                if info is None:
                    continue
                rows.append(
                    {
                        "path": rel,
                        "utt_id": utt,
                        "label": mapping[rec["code"]],
                        "speaker": meta["speaker"],
                        "gender": meta["gender"],
                        "session": meta["session"],
                        **info_columns(info),
                        "dialog": meta["dialog"],
                        "improvised": meta["improvised"],
                        "emotion_code": rec["code"],
                        "start": rec["start"],
                        "end": rec["end"],
                        "valence": rec["valence"],
                        "arousal": rec["arousal"],
                        "dominance": rec["dominance"],
                    }
                )
    if n_eval_files == 0:
        raise DataError(f"no EmoEvaluation files under {base}/Session*/dialog/EmoEvaluation/")
    table = finish_table("iemocap", base, rows, skipped, COLUMNS + EXTRA_COLUMNS)
    if label_set == "all":
        order = list(dict.fromkeys(CODE_NAMES.values()))
        labels = tuple(lab for lab in order if lab in set(table["label"]))
    else:
        labels = FOUR_CLASSES
    name = f"iemocap_{label_set}" + ("_improvised" if improvised_only else "")
    corpus = Corpus(name, base, table, labels, skipped)
    corpus.excluded = dict(sorted(excluded.items()))
    if label_set == "4class_exc_merged" and {d.name for d in sessions} == {
        f"Session{i}" for i in range(1, 6)
    }:
        _warn_on_counts(corpus, improvised_only)
    return corpus


def _warn_on_counts(corpus: Corpus, improvised_only: bool) -> None:
    t = corpus.table
    if improvised_only:
        if len(t) != N_4CLASS_IMPROVISED:
            warnings.warn(
                f"IEMOCAP improvised 4-class: {len(t)} utterances, the full release has {N_4CLASS_IMPROVISED}; "
                f"{len(corpus.skipped)} skipped",
                stacklevel=3,
            )
        return
    per_session = t["session"].value_counts().to_dict()
    if len(t) != N_4CLASS or any(per_session.get(s, 0) != n for s, n in N_4CLASS_PER_SESSION.items()):
        got = "/".join(str(per_session.get(s, 0)) for s in sorted(N_4CLASS_PER_SESSION))
        want = "/".join(str(n) for n in N_4CLASS_PER_SESSION.values())
        warnings.warn(
            f"IEMOCAP 4-class: {len(t)} utterances (per session {got}), the full release has {N_4CLASS} ({want}); "
            f"{len(corpus.skipped)} skipped",
            stacklevel=3,
        )


__all__ = [
    "CODE_NAMES",
    "FOUR_CLASSES",
    "LABEL_SETS",
    "N_4CLASS",
    "N_4CLASS_IMPROVISED",
    "N_4CLASS_PER_SESSION",
    "load_iemocap",
    "parse_emo_evaluation",
    "parse_utterance",
    "resolve_root",
]
