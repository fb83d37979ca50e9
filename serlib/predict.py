"""Predict the emotion of audio files with a saved run, for every serlib model (``serlib predict``, the CA-SER demo).

    from serlib import predict_emotion
    predict_emotion(["a.wav", "b.flac"], model="results/.../<hash>_seed0_fold0.json")

A run is usable when it kept its checkpoint (``serlib reproduce ... --save-model``, or
``run_one(..., checkpoint_root=...)``): beside ``last.pt`` lie ``run.json`` (the record: config, label set, feature
settings) and ``normalizer.json`` (the training part's mean / std of each input). ``model`` is the run's record JSON
(its ``config.train_resolved.checkpoint_dir`` says where the checkpoint is; ``checkpoints`` = another root to look
in, e.g. after moving the folder) or the checkpoint folder itself. The weights are the run's selected ones
(validation-selected, or the last epoch's for ``select="last"``).

Each file is decoded with :func:`serlib.data.audio.load_audio` (any format soundfile reads, any rate, stereo mixed
down), turned into the run's inputs exactly as its view built them (segments, also for runs trained on speed
perturbed or noisy copies: windows at the test step, standardised with the file's own statistics first for a
per-utterance normalised run, and the utterance's probabilities combine its segments as the experiment's aggregate
did, by default the mean of their softmax; a per-speaker normalised run is refused, it needs the speaker's
statistics; sequences; fixed length; a study's registered view through :func:`register_inputs`), normalised with the
saved statistics, and classified. A file that cannot be read gives one error entry naming it and why; the others
are still predicted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serlib import speaker_norm
from serlib.data.audio import AudioError, load_audio

__all__ = ["LoadedRun", "load_run", "main_predict", "predict_emotion", "register_inputs"]

# view name -> fn(exp, wave (16 kHz mono), normalizer {input: (mean, std)}) -> model keyword inputs (batch of one)
INPUTS: dict[str, Callable] = {}
# views whose validation and test inputs are the plain segments (speed_segments and noisy_segments only add
# perturbed copies to the training part), so a single file's inputs are its segments
SEGMENT_INPUT_VIEWS: tuple[str, ...] = ("segments", "speed_segments", "noisy_segments")
# the same for fixed-length inputs (speed_fixed adds perturbed copies to the training part only)
FIXED_INPUT_VIEWS: tuple[str, ...] = ("fixed", "speed_fixed")


def register_inputs(view: str, fn: Callable) -> None:
    """How a registered view (:func:`serlib.experiment.register_view`) turns one waveform into model inputs."""
    INPUTS[view] = fn


@dataclass
class LoadedRun:
    """A saved run ready to predict: its experiment, model (eval mode, CPU), labels and normalisation."""

    record: dict
    exp: object  # serlib.experiment.Experiment
    model: torch.nn.Module
    labels: list[str]
    normalizer: dict  # input name -> (mean, std) tensors
    checkpoint: Path


def _find_checkpoint(record: dict, given: Path | None, checkpoints: str | Path | None) -> Path:
    from serlib.studies.common import checkpoint_dir
    from serlib.train import CHECKPOINT_NAME

    candidates = []
    if given is not None:
        candidates.append(given)
    if checkpoints is not None:
        from serlib.experiment import Experiment

        candidates.append(checkpoint_dir(Experiment(name=record["config"]["name"]), record["split"]["name"],
                                         int(record["seed"]), checkpoints))
    saved = (record["config"].get("train_resolved") or {}).get("checkpoint_dir")
    if saved:
        candidates.append(Path(saved))
    for folder in candidates:
        if (folder / CHECKPOINT_NAME).is_file():
            return folder
    where = ", ".join(str(c) for c in candidates) or "nowhere (the run kept no checkpoint)"
    raise FileNotFoundError(f"no checkpoint for run {record.get('kind')} ({record['split'].get('name')}, seed "
                            f"{record.get('seed')}): looked in {where}. Rerun it with `serlib reproduce ... "
                            "--save-model` (runs already recorded are skipped: use a new --results folder), or pass "
                            "--checkpoints ROOT where it was saved")


def load_run(model: str | Path, checkpoints: str | Path | None = None) -> LoadedRun:
    """A saved run from its record JSON or its checkpoint folder (see the module docstring)."""
    from serlib.experiment import NORMALIZER_FILE, RUN_FILE, Experiment
    from serlib.models.registry import build_model
    from serlib.studies.base import all_studies
    from serlib.train import CHECKPOINT_NAME

    path = Path(model)
    folder = None
    if path.is_dir():
        folder, path = path, path / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model}: neither a run record JSON nor a checkpoint folder holding {RUN_FILE}")
    record = json.loads(path.read_text())
    if "config" not in record or "corpus" not in record:
        raise ValueError(f"{path}: not a serlib run record (no config / corpus)")
    folder = _find_checkpoint(record, folder, checkpoints)
    cfg = record["config"]
    exp = Experiment(**{k: (tuple(v) if k in ("seeds", "folds", "augment_features") and v is not None else v)
                        for k, v in cfg.items() if k in Experiment.__dataclass_fields__})
    all_studies()  # registered views and their input functions come with their studies
    net, _ = build_model(cfg["model"], **dict(cfg["model_resolved"]))
    ckpt = torch.load(folder / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    best = (ckpt.get("selection") or {}).get("best_state")
    use_best = best is not None and cfg["train"].get("select", "val") != "last"
    net.load_state_dict(best if use_best else ckpt["model"])
    norm_file = folder / NORMALIZER_FILE
    if exp.normalize and not norm_file.is_file():
        raise FileNotFoundError(f"{norm_file} is missing: the run was saved before the normalisation statistics "
                                "were kept; rerun it with --save-model")
    stats = json.loads(norm_file.read_text()) if norm_file.is_file() else {}
    normalizer = {k: (torch.tensor(v["mean"]), torch.tensor(v["std"])) for k, v in stats.items()}
    return LoadedRun(record, exp, net.eval(), list(record["corpus"]["labels"]), normalizer, folder)


def _norm(x: torch.Tensor, normalizer: dict) -> torch.Tensor:
    if "x" not in normalizer:
        return x
    mean, std = normalizer["x"]
    return (x - mean) / std


def _inputs(run: LoadedRun, wave: np.ndarray) -> tuple[list[dict], np.ndarray | None]:
    """Model inputs for one waveform: a list of keyword-argument dicts (one per batch) and segment groups."""
    from serlib import features as F
    from serlib.data.segment import center_pad_or_crop, segment_batch

    exp = run.exp
    if exp.view in INPUTS:
        return [INPUTS[exp.view](exp, wave, run.normalizer)], None
    preset = F.PRESETS[exp.features]
    if exp.view in SEGMENT_INPUT_VIEWS:
        sr = preset.sr
        seg = segment_batch([wave], win=int(round(exp.win_s * sr)), step=int(round(exp.test_step_s * sr)),
                            short="pad")
        x = F.compute(preset, seg.segments).float().cpu()
        if speaker_norm.level(exp.view_kwargs) == "utterance":
            x = speaker_norm.standardise_utterance(x)
        x = _norm(x, run.normalizer)
        return [{"x": x[s: s + 64]} for s in range(0, len(x), 64)], None
    if exp.view == "sequence":
        x, n = F.compute_with_lengths(preset, wave[None], lengths=torch.as_tensor([len(wave)]))
        x = _norm(x[:, :, : int(n[0])].float().cpu(), run.normalizer)
        return [{"x": x, "lengths": torch.as_tensor([x.shape[-1]])}], None
    if exp.view in FIXED_INPUT_VIEWS:
        n_samples = int(round(exp.fixed_s * preset.sr))
        x = F.compute(preset, center_pad_or_crop(wave, n_samples)[None]).float().cpu()
        return [{"x": _norm(x, run.normalizer)}], None
    raise ValueError(f"view {exp.view!r} has no prediction inputs (register them with serlib.predict."
                     "register_inputs)")


@torch.no_grad()
def _predict_wave(run: LoadedRun, wave: np.ndarray, embedding: bool) -> dict:
    logits, embs = [], []
    for batch in _inputs(run, wave)[0]:
        if "x" in batch:
            lengths = batch.get("lengths")
            out = run.model(batch["x"], lengths=lengths) if lengths is not None else run.model(batch["x"])
        else:
            out = run.model(**batch)
        z, aux = out if isinstance(out, tuple) else (out, {})
        logits.append(z.float())
        if embedding and isinstance(aux, dict) and aux.get("embedding") is not None:
            embs.append(aux["embedding"].float())
    z = torch.cat(logits)
    how = getattr(run.exp, "aggregate", "mean_prob")  # segments -> utterance as the experiment scored it
    if how == "mean_logit":
        probs = torch.softmax(z.mean(0), dim=0)
    elif how == "vote":
        probs = torch.bincount(z.argmax(1), minlength=z.shape[1]).float() / z.shape[0]
    else:  # mean_prob: the mean of the segments' softmax
        probs = torch.softmax(z, dim=1).mean(0)
    i = int(probs.argmax())
    res = {"label": run.labels[i], "probabilities": {lab: float(p) for lab, p in zip(run.labels, probs.tolist())},
           "n_segments": int(z.shape[0])}
    if embedding:
        res["embedding"] = torch.cat(embs).mean(0).tolist() if embs else None
    return res


def predict_emotion(paths: str | Path | Sequence[str | Path], model: str | Path | LoadedRun, *,
                    checkpoints: str | Path | None = None, embedding: bool = False) -> list[dict]:
    """One dict per path: ``file``, ``label``, ``probabilities`` {label: p}, ``n_segments`` (and ``embedding``, the
    utterance representation ``aux["embedding"]`` averaged over segments, when asked); or ``file`` and ``error``
    for a file that could not be read or predicted. ``model``: a run record JSON, its checkpoint folder, or a
    :class:`LoadedRun`."""
    run = model if isinstance(model, LoadedRun) else load_run(model, checkpoints)
    # a model error, not one file's; per-utterance normalisation needs only the file itself
    speaker_norm.refuse(run.exp, "prediction on single files", levels=("speaker",))
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    sr = 16_000
    out = []
    for p in paths:
        try:
            wave = load_audio(p, sr=sr)
            out.append({"file": str(p), **_predict_wave(run, wave, embedding)})
        except AudioError as exc:
            out.append({"file": str(p), "error": exc.reason if hasattr(exc, "reason") else str(exc)})
        except (ValueError, RuntimeError) as exc:  # e.g. too short for the model's front end
            out.append({"file": str(p), "error": f"{type(exc).__name__}: {exc}"})
    return out


def main_predict(files: Sequence[str], model: str, *, checkpoints: str | None = None, as_json: bool = False,
                 embedding: bool = False, stream=None) -> int:
    """``serlib predict``: one line per file; 1 when any file failed, 2 when the run cannot be loaded."""
    stream = stream or sys.stdout
    try:
        run = load_run(model, checkpoints)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = predict_emotion(files, run, embedding=embedding and as_json)
    for r in results:
        if as_json:
            print(json.dumps(r), file=stream)
        elif "error" in r:
            print(f"{r['file']}: ERROR {r['error']}", file=stream)
        else:
            probs = " ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
            print(f"{r['file']}: {r['label']} ({r['probabilities'][r['label']]:.3f}) | {probs}", file=stream)
    failed = sum("error" in r for r in results)
    if failed:
        print(f"{failed} of {len(results)} file(s) could not be predicted", file=sys.stderr)
    return 1 if failed else 0
