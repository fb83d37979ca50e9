"""Per-speaker (and per-utterance) feature normalisation, levers of the speaker-independent protocol (issue 16).

Every speaker's inputs are standardised per feature bin with that speaker's own mean and standard deviation, computed
over all of the speaker's utterances (their evaluation-step segments, the windows the model is tested on) -- no label
is read. It removes much of what one voice differs from another by (vocal-tract length, recording level, habitual
pitch shows in the MFCCs), the classic speaker normalisation of SER (Busso et al.'s and Schuller's work).

**What it assumes:** the test speakers' *unlabelled* speech is available at test time (transductive, as in a
deployment that has some enrolment speech of the speaker). The statistics of a test speaker come from that speaker's
test utterances, so the setting is named in the run's config (``view_kwargs["speaker_norm"]``) and in its counts;
it is never the default.

**Per-utterance normalisation** (``view_kwargs={"utterance_norm": True}``, :data:`UTTERANCE_KEY`) is its inductive
counterpart: every utterance is standardised with its own statistics (its evaluation-step segments), so nothing of
another utterance is used and a single test file can be normalised on its own. It removes the speaker's level and
spread as much as anything the utterance carries on average (its loudness, its mean spectral tilt), so whether it helps
is an empirical question. The two never stack.

An experiment asks for it with ``view_kwargs={"speaker_norm": True, ...}`` on a segment view
(:data:`SEGMENT_VIEWS`: "segments", "speed_segments"; another view is refused by name):
:func:`serlib.experiment.build_views` builds the view without it and without the training-part normalisation, calls
:func:`apply`, and then normalises with the training part's statistics as usual. Copies a view adds to the training
part (speed perturbation) are standardised with their speaker's clean statistics, so the perturbation stays visible
to the model.
"""

from __future__ import annotations

import numpy as np
import torch

KEY = "speaker_norm"
UTTERANCE_KEY = "utterance_norm"
LEVELS: dict[str, str] = {KEY: "speaker", UTTERANCE_KEY: "utterance"}
# the views whose inputs are the segments its statistics are computed on (the same windows and features)
SEGMENT_VIEWS: tuple[str, ...] = ("segments", "speed_segments")


def level(view_kwargs: dict | None) -> str | None:
    """``"speaker"``, ``"utterance"`` or None: the normalisation ``view_kwargs`` ask for (both at once is an error)."""
    asked = [LEVELS[k] for k in LEVELS if (view_kwargs or {}).get(k)]
    if len(asked) > 1:
        raise ValueError(f"view_kwargs ask for both {KEY!r} and {UTTERANCE_KEY!r}; use one of them")
    return asked[0] if asked else None


def wanted(exp) -> bool:
    """Whether experiment ``exp`` asks for per-speaker or per-utterance normalisation."""
    return level(exp.view_kwargs) is not None


def in_record(record: dict) -> bool:
    """Whether the run of ``record`` used per-speaker or per-utterance normalisation (its config's ``view_kwargs``)."""
    return level((record.get("config") or {}).get("view_kwargs")) is not None


def transductive(record: dict) -> bool:
    """Whether the run of ``record`` used per-speaker normalisation, i.e. the test speakers' unlabelled speech."""
    return level((record.get("config") or {}).get("view_kwargs")) == "speaker"


def without(exp):
    """``exp`` with the per-speaker / per-utterance normalisation and the training-part normalisation off (the inner
    view)."""
    kw = {k: v for k, v in (exp.view_kwargs or {}).items() if k not in LEVELS}
    return exp.replace(view_kwargs=kw, normalize=False)


def _refusal(name, what: str, lvl: str | None) -> ValueError:
    key = KEY if lvl == "speaker" else UTTERANCE_KEY
    return ValueError(f"{name}: {what} does not support per-{lvl} normalisation (view_kwargs[{key!r}]): the "
                      f"model's inputs need the {lvl}'s own statistics, which {what} does not rebuild; use a run "
                      "without it")


def refuse(exp, what: str, levels: tuple[str, ...] = ("speaker", "utterance")) -> None:
    """Raise a clear error when ``what`` (a tool that rebuilds a run's inputs itself) meets a run normalised at one of
    ``levels`` (a tool that normalises an utterance with its own statistics passes ``("speaker",)``)."""
    if level(exp.view_kwargs) in levels:
        raise _refusal(exp.name, what, level(exp.view_kwargs))


def refuse_record(record: dict, what: str) -> None:
    """:func:`refuse` for a run record."""
    if in_record(record):
        raise _refusal(record.get("kind"), what, level((record.get("config") or {}).get("view_kwargs")))


def speaker_stats(x: np.ndarray, groups: np.ndarray, speakers: np.ndarray, *, exclude=()) -> dict:
    """Per-speaker mean and std of every feature bin.

    ``x`` (N, F, T) segment features, ``groups`` (N,) the corpus row of each segment, ``speakers`` (n_rows,) the
    speaker of each corpus row (per-utterance normalisation: the row's own id, so every row is its own "speaker");
    rows in ``exclude`` (undecodable, non-finite) are left out. Returns ``{speaker: (mean (F, 1), std (F, 1))}`` as
    float32 tensors, std clamped at 1e-5.
    """
    keep = ~np.isin(groups, np.asarray(sorted(exclude), np.int64))
    x, groups = x[keep], groups[keep]
    spk = np.asarray(speakers)[groups]
    out = {}
    for s in np.unique(spk):
        xs = torch.as_tensor(x[spk == s], dtype=torch.float64)
        mean = xs.mean(dim=(0, 2))
        std = xs.std(dim=(0, 2)).clamp(min=1e-5)
        out[str(s)] = (mean[:, None].float(), std[:, None].float())
    return out


def standardise_utterance(x: torch.Tensor) -> torch.Tensor:
    """One utterance's segment features ``x`` (N, F, T) standardised with their own statistics: the per-utterance
    normalisation of :func:`apply`, for a single file (prediction)."""
    mean, std = speaker_stats(x.numpy(), np.zeros(len(x), np.int64), np.array(["u"]))["u"]
    return (x - mean) / std


def apply(parts, speakers: np.ndarray, stats: dict) -> None:
    """Standardise each ``ArrayData`` of ``parts`` (None skipped) in place, every segment with its speaker's
    statistics. ``x`` must be (N, F, T) without lengths (a segment view)."""
    for part in parts:
        if part is None:
            continue
        if part.lengths is not None or part.x.dim() != 3:
            raise ValueError("per-speaker normalisation needs a segment view (N, F, T inputs without lengths)")
        spk = np.asarray(speakers)[part.groups.numpy()]
        missing = sorted(set(spk.tolist()) - set(stats))
        if missing:
            raise ValueError(f"no per-speaker statistics for speakers {missing[:5]}")
        x = part.x.clone()
        for s in np.unique(spk):
            sel = torch.as_tensor(spk == s)
            mean, std = stats[str(s)]
            x[sel] = (x[sel] - mean) / std
        part.x = x
