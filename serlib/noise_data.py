"""Noisy data for the noise studies: noise banks, noisy copies of a corpus, the ``noisy_segments`` view and
evaluation-only robustness curves of any trained model.

* :class:`NoiseBank`: the noise clips (``{id: waveform}``), each clip's type and each type's category. Two sources
  (``source`` dicts, as they appear in an experiment's ``view_kwargs``): ``{"kind": "esc50"}`` (ESC-50 under
  ``<data_root>/esc50`` or ``"root"``; categories from ``data_manifests/esc50_categories.csv`` or ``"categories"``,
  a user's CSV) and ``{"kind": "synthetic"}`` (:func:`synthetic_noise`: generated clips, a few types per category,
  for the synthetic corpus and CI). Unusable clips (empty, too short, silent) are a counted skip (``bank.skipped``).
* A *noise spec* ``{"types": [...], "af": AF, "offset_s": s, "seed": k}`` draws one clip per utterance from the
  usable clips of those types (:func:`serlib.noise.make_condition`); the drawn list (the *condition*) is named by
  :func:`serlib.noise.condition_hash`.
* :class:`NoisyCorpus`: the utterances of a condition, mixed (:func:`serlib.noise.mix`, clipping policy
  ``"rescale"``); it makes its own audio, so every feature function of :mod:`serlib.experiment` works on it and caches
  its features under its own fingerprint (the base corpus's, the condition hash and the source): noisy features are
  cached per condition, clean ones are the base corpus's cache, reused.
* The ``noisy_segments`` view (registered on import): Head Fusion's segments with noisy training units, a noisy or
  clean test part and any number of further test conditions evaluated by the run (``metrics["conditions"]``); every
  condition it uses is stored once in the results folder as ``splits/noise_conditions/<hash>.json`` and referenced
  from the record (``counts["noise"]`` and ``metrics["conditions"]``, by hash).
* :func:`robustness`: a trained model and its record -> UA of its test part under each noise condition (evaluation
  only), with the conditions' mean SNRs.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import torch

from serlib.data.corpus import Corpus
from serlib.noise import (
    CATEGORIES,
    SILENCE_ABS,
    condition_hash,
    make_condition,
    mix,
    tile_noise,
    usable_noise,
)
from serlib.records import SPLITS_DIR

# under a results folder, one <hash>.json per condition: beside the stored splits (what data a run saw), so every
# reader of results/ that skips the split store skips the conditions too
CONDITIONS_DIR = f"{SPLITS_DIR}/noise_conditions"
CLIP_POLICY = "rescale"
SYNTHETIC_TYPES_PER_CATEGORY = 2
SYNTHETIC_CLIPS_PER_TYPE = 5
SYNTHETIC_SECONDS = 2.0
SYNTHETIC_PEAK = 0.2


# ------------------------------------------------------------------------------------------------ noise banks
def _synthetic_clip(category: str, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """One generated clip whose envelope fits ``category``'s criteria (:mod:`serlib.noise_categories`)."""
    t = np.arange(n) / sr
    x = np.zeros(n)
    if category in ("D-S", "D-L"):  # separate events on silence; short: 30 ms decay, long: 150 ms decay
        tau, n_ev, dur = (0.03, 5, 0.15) if category == "D-S" else (0.15, 2, 0.4)
        slot = n / sr / n_ev  # one event per slot, so events never overlap
        starts = slot * np.arange(n_ev) + rng.uniform(0, max(slot - dur, 0.0), n_ev)
        carrier = rng.standard_normal(n) if category == "D-S" else np.sin(2 * np.pi * rng.uniform(300, 900) * t)
        for s in starts:
            dt = t - s
            win = (dt >= 0) & (dt < dur)
            x[win] += carrier[win] * np.exp(-dt[win] / tau)
    else:  # continuous; short: deep fast fluctuations, long: steady
        noise = rng.standard_normal(n)
        if category == "C-S":
            rate = rng.uniform(5, 8)
            env = (0.5 + 0.5 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.28))) ** 4 + 0.05
        else:
            env = np.ones(n)
            noise = np.convolve(noise, np.ones(8) / 8, mode="same")  # a little colour
        x = noise * env
    return (SYNTHETIC_PEAK * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)


def synthetic_types(types_per_category: int = SYNTHETIC_TYPES_PER_CATEGORY) -> dict[str, str]:
    """``{type: category}`` of :func:`synthetic_noise` (without generating the clips)."""
    return {f"syn_{c.lower()}_{k}": c for c in CATEGORIES for k in range(types_per_category)}


def synthetic_noise(*, seed: int = 0, sr: int = 16_000, types_per_category: int = SYNTHETIC_TYPES_PER_CATEGORY,
                    clips_per_type: int = SYNTHETIC_CLIPS_PER_TYPE, seconds: float = SYNTHETIC_SECONDS):
    """Generated noise: ``(clips {id: wave}, type_of {id: type}, categories {type: category})``, deterministic."""
    clips, type_of, cats = {}, {}, {}
    for ci, cat in enumerate(CATEGORIES):
        for k in range(types_per_category):
            typ = f"syn_{cat.lower()}_{k}"
            cats[typ] = cat
            for j in range(clips_per_type):
                rng = np.random.default_rng([seed, ci, k, j])
                nid = f"{typ}_{j}"
                clips[nid] = _synthetic_clip(cat, rng, int(round(seconds * sr)), sr)
                type_of[nid] = typ
    return clips, type_of, cats


class NoiseBank:
    """Usable noise clips of one source at one sample rate (see the module docstring)."""

    def __init__(self, source: dict, clips: dict, type_of: dict, categories: dict, sr: int, skipped=()):
        ok, bad = usable_noise(clips, sr=sr)
        self.source, self.sr = dict(source), sr
        self.clips = {k: np.asarray(clips[k], np.float32) for k in ok}
        self.type_of = {k: type_of[k] for k in ok}
        self.categories = dict(categories)
        self.skipped = list(skipped) + bad

    def types(self, category: str = "all") -> list[str]:
        """Noise types of ``category`` (``"all"``: every type), sorted."""
        return sorted(t for t, c in self.categories.items() if category == "all" or c == category)

    def pool(self, types) -> list[str]:
        """Usable clip ids of ``types``; a type without clips raises ``ValueError`` naming it."""
        types = set(types)
        ids = sorted(k for k, t in self.type_of.items() if t in types)
        empty = sorted(types - {self.type_of[k] for k in ids})
        if empty:
            raise ValueError(f"noise types without a usable clip: {empty} (skipped: {self.skipped[:5]})")
        return ids

    def fingerprint(self) -> str:
        """Hash of the source and every usable clip's id and samples (computed once)."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256(json.dumps(self.source, sort_keys=True).encode())
            for k in sorted(self.clips):
                h.update(k.encode())
                h.update(self.clips[k].tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


_BANKS: dict[str, NoiseBank] = {}


def load_bank(source: dict, data_root=None, sr: int = 16_000) -> NoiseBank:
    """The noise bank of ``source`` (memoised per process). ESC-50's root: ``source["root"]``, else
    ``<data_root>/esc50`` (``data_root`` or ``$SERLIB_DATA``)."""
    key = json.dumps([source, str(data_root), sr], sort_keys=True)
    if key in _BANKS:
        return _BANKS[key]
    kind = source.get("kind")
    if kind == "synthetic":
        bank = NoiseBank(source, *synthetic_noise(seed=int(source.get("seed", 0)), sr=sr), sr)
    elif kind == "esc50":
        from serlib.data.audio import AudioError, load_audio
        from serlib.data.esc50 import load_esc50
        from serlib.data.registry import data_root as resolve_root
        from serlib.noise_categories import load_categories

        root = source.get("root") or (resolve_root(data_root) / "esc50" if resolve_root(data_root) else None)
        if root is None:
            raise FileNotFoundError("ESC-50 noise needs a root: pass data_root (holding esc50/), set SERLIB_DATA "
                                    "or give the source a 'root'")
        esc = load_esc50(root)
        cats = load_categories(source.get("categories"))
        missing = sorted(set(esc.labels) - set(cats))
        if missing:
            raise ValueError(f"noise category table lacks ESC-50 classes {missing}; add them to the CSV")
        clips, type_of, skipped = {}, {}, list(esc.skipped)
        for i in range(len(esc)):
            nid = esc.table.at[i, "utt_id"]
            try:
                clips[nid] = load_audio(esc.abspath(i), sr=sr)
            except AudioError as e:
                skipped.append({"noise": nid, "reason": e.reason})
                continue
            type_of[nid] = esc.table.at[i, "label"]
        bank = NoiseBank(source, clips, type_of, {t: cats[t] for t in esc.labels}, sr, skipped)
    else:
        raise ValueError(f"noise source kind must be 'esc50' or 'synthetic', got {kind!r}")
    _BANKS.clear()
    _BANKS[key] = bank
    return bank


def condition_for(spec: dict, utt_ids, bank: NoiseBank) -> list[dict]:
    """The condition of a noise spec over ``utt_ids`` (see the module docstring)."""
    return make_condition(list(map(str, utt_ids)), bank.pool(spec["types"]), af=float(spec["af"]),
                          offset_s=float(spec.get("offset_s", 0.0)), seed=int(spec.get("seed", 0)))


# ------------------------------------------------------------------------------------------------ noisy corpus
class NoisyCorpus(Corpus):
    """The utterances of ``condition`` taken from ``base``, mixed with their noise (see the module docstring).
    ``base_rows[i]``: this corpus's row ``i`` in ``base``."""

    def __init__(self, base: Corpus, condition: list[dict], bank: NoiseBank, clip: str = CLIP_POLICY):
        pos = pd.Series(np.arange(len(base)), index=base.table["utt_id"].astype(str).to_numpy())
        by_utt = {str(r["utt"]): dict(r) for r in condition}
        rows = np.sort(pos.reindex(list(by_utt)).to_numpy())
        if np.isnan(rows.astype(float)).any():
            raise KeyError(f"condition names utterances not in corpus {base.name}")
        rows = rows.astype(np.int64)
        super().__init__(base.name, base.root, base.table.iloc[rows], base.labels, list(base.skipped),
                         base.synthetic)
        self.base, self.bank, self.clip, self.base_rows = base, bank, clip, rows
        self.condition = [by_utt[str(u)] for u in self.table["utt_id"]]
        self.hash = condition_hash(condition)
        self._waves = None

    def fingerprint(self) -> str:
        blob = "|".join([super().fingerprint(), "noise", self.hash, self.bank.fingerprint(), self.clip])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def waveforms(self, sr: int):
        """``(waves, failed)`` as :func:`serlib.experiment.corpus_waveforms` gives them, mixed."""
        from serlib.experiment import corpus_waveforms

        if self._waves is None:
            if sr != self.bank.sr:
                raise ValueError(f"noise bank at {self.bank.sr} Hz, features want {sr} Hz")
            waves, failed = corpus_waveforms(self.base, sr)
            out, info = [], {"snr_eq3_db": [], "snr_power_db": [], "scale": []}
            for i, r in zip(self.base_rows, self.condition):
                w = waves[i]
                if w is None:
                    out.append(None)
                    for v in info.values():
                        v.append(np.nan)
                    continue
                noise = tile_noise(torch.from_numpy(self.bank.clips[r["noise"]]), len(w),
                                   int(round(float(r["offset_s"]) * sr)), name=r["noise"])
                speech = torch.from_numpy(np.asarray(w, np.float32))[None]
                if float(noise.abs().mean()) < SILENCE_ABS:  # the clip is silent over this utterance's window
                    # (a discrete clip's gap): the row stays as mixed, its SNRs are +inf, counted in summary()
                    noisy, inf = mix(speech + float(r["af"]) * noise[None], noise[None], 0.0, clip=self.clip)
                else:
                    noisy, inf = mix(speech, noise[None], float(r["af"]), clip=self.clip)
                out.append(noisy[0].numpy())
                for k in info:
                    info[k].append(float(inf[k][0]))
            rows = {int(b): j for j, b in enumerate(self.base_rows)}
            self._failed = [{**f, "index": rows[f["index"]]} for f in failed if f["index"] in rows]
            self._waves, self._info = out, {k: np.asarray(v, np.float64) for k, v in info.items()}
        return self._waves, self._failed

    def snr(self, sr: int = 16_000) -> dict:
        """Per-utterance SNRs (``snr_eq3_db``, ``snr_power_db``, ``scale``), cached beside the features."""
        from serlib.cache import cached_arrays

        spec = {"noise_snr": 1, "fingerprint": self.fingerprint(), "sr": sr}
        return cached_arrays(spec, lambda: (self.waveforms(sr), self._info)[1])

    def summary(self, sr: int = 16_000) -> dict:
        """What a record keeps of the condition: its hash and mean SNRs (dB, finite rows)."""
        s = self.snr(sr)
        mean = {k: float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else None
                for k, v in s.items() if k.startswith("snr")}
        silent = int(np.isposinf(s["snr_eq3_db"]).sum())  # noise silent over the utterance: left out of the means
        return {"condition": self.hash, "n_utts": len(self), **mean, "n_silent_noise": silent}


def stored_condition(noisy: NoisyCorpus) -> dict:
    """``{relative path: content}`` for a record's ``stored`` (:func:`serlib.noise.read_condition` reads it)."""
    return {f"{CONDITIONS_DIR}/{noisy.hash}.json": {"hash": noisy.hash, "rows": noisy.condition}}


# ------------------------------------------------------------------------------------------------ the view
def _segments(corpus: Corpus, exp, step_s: float, rows_allowed, device=None, part: str = "train"):
    """Raw segment features of ``corpus`` restricted to base rows in ``rows_allowed``: (x, groups in base rows);
    short clips as the run's ``part`` treats them (:func:`serlib.experiment.segment_short`)."""
    from serlib.experiment import segment_features, segment_short
    from serlib.features import PRESETS

    store = segment_features(corpus, PRESETS[exp.features], win_s=exp.win_s, step_s=step_s,
                             short=segment_short(exp, part), device=device)
    base_rows = getattr(corpus, "base_rows", np.arange(len(corpus)))
    g = base_rows[store["groups"]] if len(store["groups"]) else store["groups"]
    sel = np.isin(g, np.asarray(sorted(rows_allowed), np.int64))
    return torch.as_tensor(store["x"][sel]), torch.as_tensor(g[sel])


def noisy_segments_view(exp, corpus: Corpus, split, *, device=None):
    """The ``noisy_segments`` view. ``exp.view_kwargs``: ``source`` (noise source), ``train`` (list of noise specs,
    one noisy copy of the training part each; ``None``: a clean copy), ``clean_unit`` (keep the clean training part,
    default true), ``val`` / ``test`` (a spec or None: clean), ``tests`` ({name: spec or None}, further test conditions)."""
    from serlib.experiment import Views, _normalizer, build_views
    from serlib.train import ArrayData

    vk = dict(exp.view_kwargs)
    clean = build_views(exp.replace(view="segments", view_kwargs={}, normalize=False), corpus, split, device=device)
    bank = load_bank(vk["source"], exp.data_root, sr=16_000)
    y_all = torch.as_tensor(np.array(corpus.y))
    ids = corpus.table["utt_id"].astype(str).to_numpy()
    stored, noise = {}, {"source": vk["source"], "clip": CLIP_POLICY, "skipped_noise": len(bank.skipped)}

    def noisy_part(spec, part: ArrayData, step_s: float):
        rows = sorted(set(part.groups.tolist()))
        nc = NoisyCorpus(corpus, condition_for(spec, ids[rows], bank), bank)
        stored.update(stored_condition(nc))
        x, g = _segments(nc, exp, step_s, rows, device, "train" if part is clean.train else "test")
        return ArrayData(x=x, y=y_all[g], lengths=None, groups=g), nc.summary()

    units, unit_info = ([clean.train] if vk.get("clean_unit", True) else []), []
    for spec in vk.get("train") or []:
        if spec is None:  # a clean copy of the training part (design bc: as many steps as a noisy unit, no noise)
            units.append(clean.train)
            unit_info.append({"condition": None, "clean_copy": True})
            continue
        d, info = noisy_part(spec, clean.train, exp.train_step_s)
        units.append(d)
        unit_info.append(info)
    if not units:
        raise ValueError(f"{exp.name}: noisy_segments without training data (clean_unit false and no train specs)")
    train = ArrayData(x=torch.cat([u.x for u in units]), y=torch.cat([u.y for u in units]), lengths=None,
                      groups=torch.cat([u.groups for u in units]))
    val, test = clean.val, clean.test
    noise["train"] = unit_info
    if vk.get("val") and val is not None:
        val, noise["val"] = noisy_part(vk["val"], val, exp.test_step_s)
    if vk.get("test"):
        test, noise["test"] = noisy_part(vk["test"], test, exp.test_step_s)
    mean, std = _normalizer(train.x, None) if exp.normalize else (0.0, 1.0)
    for part in (train, val, test):
        if part is not None:
            part.x = (part.x - mean) / std
    clean_test = clean.test

    def extra(spec):
        def make():
            if spec is None:
                return ArrayData(x=(clean_test.x - mean) / std, y=clean_test.y, lengths=None,
                                 groups=clean_test.groups), {"condition": None}
            d, info = noisy_part(spec, clean_test, exp.test_step_s)
            d.x = (d.x - mean) / std
            return d, info
        return make

    tests = {name: extra(spec) for name, spec in (vk.get("tests") or {}).items()}
    for spec in (vk.get("tests") or {}).values():  # conditions are stored whether or not features are cached
        if spec is not None:
            stored.update(stored_condition(NoisyCorpus(corpus, condition_for(spec, ids[sorted(set(
                clean_test.groups.tolist()))], bank), bank)))
    counts = {**clean.counts, "noise": noise,
              "segments": {"train": len(train), "val": len(val) if val is not None else 0, "test": len(test)}}
    return Views(train, val, test, counts, list(clean.skips), list(clean.flags), extra_tests=tests, stored=stored,
                 normalizer={"x": (mean, std)} if exp.normalize else {})


def register() -> None:
    from serlib.experiment import VIEWS, register_view

    if "noisy_segments" not in VIEWS:
        register_view("noisy_segments", noisy_segments_view)


register()


# ------------------------------------------------------------------------------------------------ robustness
def grid_specs(bank: NoiseBank, afs, offsets, categories=CATEGORIES, seed: int = 0) -> dict[str, dict]:
    """Design (a)'s test conditions: ``{"<cat>|af<AF>|off<s>": spec}`` for every category x AF x offset."""
    return {f"{c}|af{af:g}|off{o:g}": {"types": bank.types(c), "af": float(af), "offset_s": float(o), "seed": seed}
            for c in categories for af in afs for o in offsets}


def parse_condition_name(name: str) -> dict:
    """``"D-S|af0.1|off0"`` -> ``{"category": "D-S", "af": 0.1, "offset_s": 0.0}`` (other names: category only)."""
    parts = name.split("|")
    out: dict = {"category": parts[0], "af": None, "offset_s": None}
    for p in parts[1:]:
        if p.startswith("af"):
            out["af"] = float(p[2:])
        elif p.startswith("off"):
            out["offset_s"] = float(p[3:])
    return out


def robustness(model, record: dict, corpus: Corpus, specs: dict[str, dict], *, source: dict | None = None,
               data_root=None) -> pd.DataFrame:
    """Evaluation only: ``model`` (trained, its record's) on its record's test part under each noise spec of
    ``specs`` (e.g. :func:`grid_specs`), normalised as the run normalised its inputs. One row per condition:
    ``condition`` (name), category / af / offset_s, ``ua``, ``wa``, mean ``snr_eq3_db`` / ``snr_power_db``, ``hash``.
    Views: every view whose :class:`serlib.experiment.Views` name their normaliser (the built-in ones, CA-SER's dict
    inputs), and noisy_segments (its own noisy tests)."""
    from serlib.data.splits import Split
    from serlib.evaluate import aggregate, classification_metrics
    from serlib.experiment import Experiment, build_views
    from serlib.train import ArrayData, TrainConfig, Trainer

    exp = Experiment(**{k: (tuple(v) if k in ("seeds", "folds", "augment_features") and v is not None else v)
                        for k, v in record["config"].items() if k in Experiment.__dataclass_fields__})
    split = Split.from_dict(record["split"])
    bank = load_bank(source or (exp.view_kwargs or {}).get("source") or default_source(exp.corpus), data_root
                     or exp.data_root)
    labels = list(corpus.labels)
    trainer = Trainer(model, TrainConfig(device="auto", progress=False, eval_batch_size=512))
    rows = []

    def score(data: ArrayData) -> dict:
        u, g = aggregate(trainer.predict(data), data.groups, how=exp.aggregate)
        return classification_metrics(corpus.y[g], u.argmax(1), labels=list(range(len(labels))))

    if exp.view == "noisy_segments":
        views = build_views(exp.replace(view_kwargs={**exp.view_kwargs, "source": bank.source,
                                                     "tests": specs}), corpus, split)
        for name, make in views.extra_tests.items():
            data, info = make()
            m = score(data)
            rows.append({"condition": name, **parse_condition_name(name), "ua": m["ua"], "wa": m["wa"],
                         **{k: v for k, v in info.items() if k != "condition"}, "hash": info["condition"]})
        return pd.DataFrame(rows)
    clean = build_views(exp, corpus, split)  # the run's own views: its normaliser (training-part statistics)
    raw = exp.replace(normalize=False)
    test_ids = corpus.table["utt_id"].astype(str).to_numpy()[sorted(set(clean.test.groups.tolist()))]
    for name, spec in specs.items():
        nc = NoisyCorpus(corpus, condition_for(spec, test_ids, bank), bank)
        sub = Split(split.name, split.protocol, split.fold, split.seed, list(nc.table["utt_id"]), [],
                    list(nc.table["utt_id"]))
        d = build_views(raw, nc, sub).test
        x = _normalised(d.x, d.lengths, clean.normalizer)
        g = torch.as_tensor(nc.base_rows)[d.groups]
        m = score(ArrayData(x=x, y=d.y, lengths=d.lengths, groups=g))
        info = nc.summary()
        rows.append({"condition": name, **parse_condition_name(name), "ua": m["ua"], "wa": m["wa"],
                     **{k: v for k, v in info.items() if k != "condition"}, "hash": info["condition"]})
    return pd.DataFrame(rows)


def _normalised(x, lengths, normalizer: dict):
    """Inputs of a view built with ``normalize=False``, normalised as the run normalised them: ``normalizer`` maps
    an input name (``"x"`` for a tensor input, the key of a dict input) to its training-part ``(mean, std)``;
    padding (beyond ``lengths`` / ``<name>_lengths``) stays zero."""
    def one(t, n, key):
        if key not in normalizer:
            return t
        mean, std = normalizer[key]
        t = (t - mean) / std
        if n is not None:
            t = t * (torch.arange(t.shape[-1])[None, :] < n[:, None])[:, None, :]
        return t

    if isinstance(x, dict):
        return {k: (v if k.endswith("_lengths") else one(v, x.get(f"{k}_lengths"), k)) for k, v in x.items()}
    return one(x, lengths, "x")


def mean_abs_db(x, eps: float = 1e-12) -> float:
    """Eq. 3's level of a waveform: 20 log10(mean |x|) in dB re full scale."""
    return float(20 * np.log10(max(float(np.mean(np.abs(np.asarray(x, np.float64)))), eps)))


def active_mean_abs_db(x, sr: int, *, frame_s: float = 0.025, gate_db: float = -40.0) -> float:
    """:func:`mean_abs_db` over the active frames only: ``frame_s`` frames whose mean |x| is within ``gate_db`` of
    the loudest frame (leading / trailing silence left out)."""
    x = np.abs(np.asarray(x, np.float64))
    n = max(1, int(round(frame_s * sr)))
    frames = x[: len(x) // n * n].reshape(-1, n).mean(axis=1) if len(x) >= n else x[None].mean(axis=1)
    keep = frames >= frames.max() * 10 ** (gate_db / 20)
    return mean_abs_db(frames[keep])


def levels_table(corpus: Corpus, bank: NoiseBank, *, af: float = 0.1, sr: int = 16_000) -> pd.DataFrame:
    """Eq. 3's ingredients, per source: the level (:func:`mean_abs_db`) of every speech utterance (whole, and its
    active part) and of every usable noise clip per category (whole clip; a tiled window of it is what a mixture
    uses), as medians with their interquartile range, and the Eq. 3 SNR the median levels give at ``af``:
    ``speech - noise - 20 log10(af)``. Explains a condition's SNR without mixing anything."""
    from serlib.experiment import corpus_waveforms

    waves, _ = corpus_waveforms(corpus, sr)
    speech = [w for w in waves if w is not None]
    rows = []

    def row(source, part, values):
        v = np.asarray(values, np.float64)
        return {"source": source, "part": part, "n": len(v), "level median (dB)": float(np.median(v)),
                "level q25 (dB)": float(np.percentile(v, 25)), "level q75 (dB)": float(np.percentile(v, 75))}

    rows.append(row("speech", "whole utterance", [mean_abs_db(w) for w in speech]))
    rows.append(row("speech", "active frames", [active_mean_abs_db(w, sr) for w in speech]))
    whole = rows[0]["level median (dB)"]
    for cat in sorted({bank.categories[bank.type_of[k]] for k in bank.clips}):
        ids = [k for k in bank.clips if bank.categories[bank.type_of[k]] == cat]
        rows.append(row(cat, "whole clip", [mean_abs_db(bank.clips[k]) for k in ids]))
    out = pd.DataFrame(rows)
    noise = out["source"] != "speech"
    out.loc[noise, f"Eq. 3 SNR at AF {af:g} (dB)"] = whole - out.loc[noise, "level median (dB)"] - 20 * np.log10(af)
    return out


def default_source(corpus_name: str) -> dict:
    """Synthetic noise for the synthetic corpus, ESC-50 for real corpora."""
    return {"kind": "synthetic"} if corpus_name == "synthetic" else {"kind": "esc50"}


__all__ = ["CONDITIONS_DIR", "NoiseBank", "NoisyCorpus", "condition_for", "default_source", "grid_specs",
           "load_bank", "noisy_segments_view", "parse_condition_name", "robustness", "synthetic_noise"]
