"""Speed perturbation as a training view (issue 16): the training part plus one perturbed copy per factor.

``speed_segments`` is the ``segments`` view (:func:`serlib.experiment.build_views`) whose training part also holds
the segments of every training utterance played ``factor`` times faster, for each factor of
``view_kwargs["factors"]`` (default :data:`DEFAULT_FACTORS`, Ko et al. 2015's 0.9 and 1.1;
:func:`serlib.augment.speed_perturb`). ``speed_fixed`` does the same for the ``fixed`` view (every utterance
centre-padded / cropped to ``exp.fixed_s``, as ECA-CNN takes it): one fixed-length input per training utterance and
factor. Factor 1 adds the training part once more, unperturbed: ``[1.0, 1.0]`` is the
control with the same training steps per epoch as ``[0.9, 1.1]`` and no perturbation. Validation and test parts are the clean ones, unchanged. The normalising
statistics come from the whole training part, copies included.

A perturbed copy is a :class:`SpeedCorpus`: the corpus with the factor in its fingerprint, so its features are
cached once per corpus content and factor, computed for every utterance and shared by every fold and seed. A copy
that gives no window or non-finite features is counted and listed in the record's skips (stage ``speed``), or
stops the run under ``nonfinite="fail"``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from serlib.augment import speed_fraction, speed_perturb
from serlib.data.corpus import Corpus

__all__ = ["DEFAULT_FACTORS", "NONFINITE", "NO_WINDOW", "SpeedCorpus", "speed_copy", "speed_fixed_copy",
           "speed_fixed_view", "speed_segments_view", "speed_trained"]

DEFAULT_FACTORS: tuple[float, ...] = (0.9, 1.1)
NO_WINDOW = "no window after the speed change"
NONFINITE = "non-finite features after the speed change"


class SpeedCorpus(Corpus):
    """``base`` with every utterance played ``factor`` times faster (same rows, labels and speakers)."""

    def __init__(self, base: Corpus, factor: float):
        speed_fraction(factor)  # checks the range
        super().__init__(base.name, base.root, base.table, base.labels, list(base.skipped), base.synthetic)
        self.base, self.factor = base, float(factor)

    def fingerprint(self) -> str:
        blob = "|".join([self.base.fingerprint(), "speed", repr(speed_fraction(self.factor))])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def waveforms(self, sr: int):
        """``(waves, failed)`` as :func:`serlib.experiment.corpus_waveforms` gives them, perturbed."""
        from serlib.experiment import corpus_waveforms

        waves, failed = corpus_waveforms(self.base, sr)
        return [None if w is None else speed_perturb(w, self.factor) for w in waves], failed


def view_factors(view_kwargs: dict) -> tuple[float, ...]:
    """The factors a ``speed_segments`` experiment asks for: each in range, the perturbed ones distinct; factor 1 (an
    unperturbed copy of the training part, as often as listed) is the control with the same training steps."""
    factors = tuple(float(f) for f in view_kwargs.get("factors", DEFAULT_FACTORS))
    for f in factors:
        speed_fraction(f)  # checks the range
    moved = [f for f in factors if speed_fraction(f) != 1]
    if not factors or len(set(moved)) != len(moved):
        raise ValueError(f"speed_segments needs at least one factor and distinct perturbed ones, got {list(factors)}")
    return factors


def speed_copy(exp, corpus: Corpus, rows, factor: float, *, part: str = "train", device=None):
    """The segments of utterances ``rows`` (ints, rows of ``corpus.table``) played ``factor`` times faster, cut as
    ``exp`` cuts part ``part`` (``"train"``: ``exp.train_step_s``; ``"val"`` / ``"test"``: ``exp.test_step_s``; the
    part's short-utterance policy). Features come from the :class:`SpeedCorpus` cache (once per corpus content and
    factor), unnormalised.

    Returns ``(x, groups, bad)``: ``x`` (N, *feature shape) float tensor and ``groups`` (N,) int64 tensor, the
    segments of the rows the copy gives; ``bad``: {row: reason} for the rows it cannot give (:data:`NO_WINDOW`,
    :data:`NONFINITE`), which are left out of ``x``."""
    from serlib.experiment import segment_features, segment_short
    from serlib.features import PRESETS

    store = segment_features(SpeedCorpus(corpus, factor), PRESETS[exp.features], win_s=exp.win_s,
                             step_s=exp.train_step_s if part == "train" else exp.test_step_s,
                             short=segment_short(exp, part), device=device)
    wanted = {int(i) for i in np.asarray(rows).tolist()}
    bad = {int(i): NO_WINDOW for i in sorted(set(store["too_short"].tolist()) & wanted)}
    bad.update({int(i): NONFINITE for i in sorted(set(store["nonfinite"].tolist()) & wanted)})
    sel = np.isin(store["groups"], np.asarray(sorted(wanted - set(bad)), np.int64))
    return torch.as_tensor(store["x"][sel]), torch.as_tensor(store["groups"][sel]), bad


def speed_fixed_copy(exp, corpus: Corpus, rows, factor: float, *, device=None):
    """The fixed-length inputs of utterances ``rows`` (ints, rows of ``corpus.table``) played ``factor`` times
    faster, centre-padded / cropped to ``exp.fixed_s`` as the ``fixed`` view takes them. Features come from the
    :class:`SpeedCorpus` cache (once per corpus content and factor), unnormalised.

    Returns ``(x, groups, bad)`` as :func:`speed_copy`: ``x`` (N, *feature shape), ``groups`` (N,) int64, ``bad``
    {row: :data:`NONFINITE`} for the rows whose copy has non-finite features (left out of ``x``)."""
    from serlib.experiment import fixed_features
    from serlib.features import PRESETS

    store = fixed_features(SpeedCorpus(corpus, factor), PRESETS[exp.features], seconds=exp.fixed_s, device=device)
    wanted = sorted({int(i) for i in np.asarray(rows).tolist()})
    bad = {i: NONFINITE for i in sorted(set(store["nonfinite"].tolist()) & set(wanted))}
    keep = np.asarray([i for i in wanted if i not in bad], np.int64)
    return torch.as_tensor(store["x"][keep]), torch.as_tensor(keep), bad


def speed_trained(config: dict) -> bool:
    """Whether a run config trains on speed-perturbed copies: a speed view with a factor other than 1 (the
    unperturbed control, factors [1, 1], is not)."""
    return (config.get("view") in VIEW_BASES
            and any(float(f) != 1.0 for f in ((config.get("view_kwargs") or {}).get("factors") or ())))


def _speed_view(exp, corpus: Corpus, split, *, base: str, copy, unit: str, device=None):
    """View ``base`` of ``exp`` with ``copy(exp, corpus, rows, factor, device=...)``'s perturbed copies of the
    training utterances added to its training part, normalised over the whole training part (``unit``: what the
    counts call one input, "segments" or "inputs")."""
    from serlib.experiment import (
        NonFiniteFeaturesError,
        Views,
        _normalizer,
        build_views,
    )
    from serlib.train import ArrayData

    factors = view_factors(exp.view_kwargs)
    clean = build_views(exp.replace(view=base, view_kwargs={}, normalize=False), corpus, split, device=device)
    rows = np.unique(clean.train.groups.numpy())
    y_all = torch.as_tensor(np.array(corpus.y))
    units, skips, per_factor = [clean.train], list(clean.skips), {}
    for f in factors:
        if speed_fraction(f) == 1:  # the control: the training part once more, unperturbed (its features as they are)
            units.append(clean.train)
            per_factor[f"{f:g}"] = {"utterances": int(len(rows)), unit: len(clean.train), "skipped": 0,
                                    "copies": per_factor.get(f"{f:g}", {}).get("copies", 0) + 1}
            continue
        x, g, bad = copy(exp, corpus, rows, f, device=device)
        broken = sorted(i for i, why in bad.items() if why == NONFINITE)
        if broken and exp.nonfinite == "fail":
            paths = [str(corpus.abspath(i)) for i in broken]
            raise NonFiniteFeaturesError(f"{exp.name}: speed {f:g} gives non-finite features for {paths[:5]} "
                                         f"({len(paths)} files); fix or remove them, or set nonfinite='skip'")
        for reason in (NO_WINDOW, NONFINITE):
            skips += [{"path": str(corpus.table.at[i, "path"]), "reason": f"{reason} ({f:g}x; copy only)",
                       "stage": "speed"} for i in sorted(bad) if bad[i] == reason]
        keep_rows = np.setdiff1d(rows, np.asarray(sorted(bad), np.int64))
        units.append(ArrayData(x=x, y=y_all[g], lengths=None, groups=g))
        per_factor[f"{f:g}"] = {"utterances": int(len(keep_rows)), unit: int(len(g)), "skipped": int(len(bad))}
    train = ArrayData(x=torch.cat([u.x for u in units]), y=torch.cat([u.y for u in units]), lengths=None,
                      groups=torch.cat([u.groups for u in units]))
    val, test = clean.val, clean.test
    normalizer = {}
    if exp.normalize:
        mean, std = _normalizer(train.x, None)
        for part in (train, val, test):
            if part is not None:
                part.x = (part.x - mean) / std
        normalizer = {"x": (mean, std)}
    counts = {**clean.counts, "speed": {"factors": list(factors), f"clean_{unit}": len(clean.train),
                                        "copies": per_factor},
              unit: {"train": len(train), "val": len(val) if val is not None else 0, "test": len(test)}}
    return Views(train, val, test, counts, skips, list(clean.flags), normalizer=normalizer)


def speed_segments_view(exp, corpus: Corpus, split, *, device=None):
    """The ``speed_segments`` view (see the module docstring). ``exp.view_kwargs``: ``factors`` (list of floats)."""
    return _speed_view(exp, corpus, split, base="segments", copy=speed_copy, unit="segments", device=device)


def speed_fixed_view(exp, corpus: Corpus, split, *, device=None):
    """The ``speed_fixed`` view (see the module docstring): the ``fixed`` view plus one perturbed fixed-length input
    per training utterance and factor. ``exp.view_kwargs``: ``factors`` (list of floats). With ``augment_features``
    the clean training part already holds the other STFT versions; the perturbed copies are of ``exp.features``."""
    return _speed_view(exp, corpus, split, base="fixed", copy=speed_fixed_copy, unit="inputs", device=device)


# the speed views and the view each perturbs
VIEW_BASES: dict[str, str] = {"speed_segments": "segments", "speed_fixed": "fixed"}


def register() -> None:
    from serlib.experiment import VIEWS, register_view

    for name, fn in (("speed_segments", speed_segments_view), ("speed_fixed", speed_fixed_view)):
        if name not in VIEWS:
            register_view(name, fn)


register()
