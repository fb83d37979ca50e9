"""A miniature IEMOCAP tree for tests: the real layout and EmoEvaluation format, tiny sine wavs.

Each session ``n`` has one improvised dialog led by the female actor (``Ses0nF_impro01``) and one scripted dialog
led by the male actor (``Ses0nM_script01_1``), each with utterances of BOTH actors, so a loader that takes the
speaker from the dialog prefix gets it wrong. :data:`UTTERANCES` lists (dialog kind, last token, label code).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000

# (dialog kind, final token of the utterance name, category code) per session.
UTTERANCES = [
    ("impro", "F000", "neu"),
    ("impro", "M000", "hap"),
    ("impro", "F001", "exc"),
    ("impro", "M001", "sad"),
    ("impro", "F002", "ang"),
    ("impro", "M002", "fru"),
    ("impro", "F003", "xxx"),
    ("script", "M000", "neu"),
    ("script", "F000", "exc"),
    ("script", "M001", "ang"),
    ("script", "F001", "sad"),
    ("script", "M002", "hap"),
    ("script", "F002", "sur"),
]

_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
_ANNOT = (
    "C-E2:\t{word};\t()\n"
    "C-E3:\t{word};\t()\n"
    "C-F1:\t{word};\t(curious)\n"
    "A-E3:\tval 3; act 2; dom  2;\t()\n"
    "A-F1:\tval 2; act 3; dom  3;\t(mildly aggravated but staying polite, attitude)\n"
)
_WORDS = {
    "neu": "Neutral",
    "hap": "Happiness",
    "exc": "Excited",
    "sad": "Sadness",
    "ang": "Anger",
    "fru": "Frustration",
    "xxx": "Other",
    "sur": "Surprise",
}


def dialog_name(session: int, kind: str) -> str:
    return f"Ses{session:02d}F_impro01" if kind == "impro" else f"Ses{session:02d}M_script01_1"


def utterance_name(session: int, kind: str, token: str) -> str:
    return f"{dialog_name(session, kind)}_{token}"


def make_mini_iemocap(
    tmp_path: Path,
    *,
    sessions: tuple[int, ...] = (1, 2),
    missing_wavs: tuple[str, ...] = ("Ses02F_impro01_M001",),
    duration: float = 0.1,
) -> Path:
    """Write ``tmp_path/IEMOCAP_full_release/Session{n}/...``; return ``tmp_path`` (the folder holding it).

    ``missing_wavs`` are listed in EmoEvaluation but get no wav (default: one improvised ``sad`` utterance).
    """
    release = Path(tmp_path) / "IEMOCAP_full_release"
    t = np.arange(int(duration * SR)) / SR
    for s in sessions:
        sdir = release / f"Session{s}"
        eval_dir = sdir / "dialog" / "EmoEvaluation"
        (eval_dir / "Categorical").mkdir(parents=True, exist_ok=True)
        texts: dict[str, list[str]] = {}
        start = 1.0
        for k, (kind, token, code) in enumerate(UTTERANCES):
            dialog = dialog_name(s, kind)
            utt = utterance_name(s, kind, token)
            end = start + duration
            line = f"[{start:.4f} - {end:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 2.5000]\n"
            texts.setdefault(dialog, []).append(line + _ANNOT.format(word=_WORDS[code]) + "\n")
            start = end + 0.5
            if utt in missing_wavs:
                continue
            wdir = sdir / "sentences" / "wav" / dialog
            wdir.mkdir(parents=True, exist_ok=True)
            y = 0.1 * np.sin(2 * np.pi * (200 + 20 * k + 5 * s) * t)
            sf.write(wdir / f"{utt}.wav", y.astype(np.float32), SR, subtype="PCM_16")
        for dialog, blocks in texts.items():
            (eval_dir / f"{dialog}.txt").write_text(_HEADER + "".join(blocks))
            # Other annotation files the loader must not read as category files.
            (eval_dir / "Categorical" / f"{dialog}_e2_cat.txt").write_text(":Neutral state; ()\n")
        (eval_dir / "._hidden_macos_file.txt").write_bytes(b"\x00\x05\x16\x07junk")
    return Path(tmp_path)
