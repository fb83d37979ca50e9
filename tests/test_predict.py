"""`serlib predict` / `serlib.predict_emotion`: a saved Head Fusion run (segments) and a saved CA-SER run (dict
inputs) predict wav / flac / stereo / 48-kHz files exactly as the experiment pipeline scores them; a broken file gets
one clear line, the others are still predicted, and the exit code says a file failed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import serlib
from serlib.cli import main
from serlib.experiment import load_experiment_corpus
from serlib.predict import load_run, predict_emotion
from serlib.records import inflate_split
from serlib.studies.common import eval_view

pytestmark = pytest.mark.usefixtures("one_thread")


def _reproduce(args: list[str], out: Path) -> list[Path]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["reproduce", *args, "--corpus", "synthetic", "--profile", "quick", "--protocols",
                   "speaker_independent", "--folds", "0", "--results", str(out / "results"), "--save-model",
                   str(out / "ckpt")])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    return sorted(p for p in (out / "results").rglob("*.json") if "splits" not in p.relative_to(out).parts)


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory) -> Path:
    (rec,) = _reproduce(["head_fusion"], tmp_path_factory.mktemp("hf"))
    return rec


@pytest.fixture(scope="module")
def caser_runs(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("transformers")
    from serlib.studies.ca_ser import save_random_wav2vec2

    out = tmp_path_factory.mktemp("caser")
    tiny = save_random_wav2vec2(out / "tiny")
    recs = _reproduce(["ca_ser", "--w2v2", str(tiny)], out)
    return {json.loads(p.read_text())["identity"]["arm"]: p for p in recs}


@pytest.fixture(scope="module")
def corpus():
    return load_experiment_corpus("synthetic")


@pytest.fixture(scope="module")
def files(tmp_path_factory, corpus) -> dict[str, Path]:
    """One synthetic utterance as 16-kHz wav, flac, stereo wav and 48-kHz wav, plus two broken files."""
    out = tmp_path_factory.mktemp("audio")
    y, sr = sf.read(corpus.paths[0], dtype="float32")
    assert sr == 16_000
    t48 = np.interp(np.arange(3 * len(y)) / 3, np.arange(len(y)), y).astype(np.float32)
    paths = {"wav": out / "a.wav", "flac": out / "a.flac", "stereo": out / "a_stereo.wav", "48k": out / "a_48k.wav",
             "broken": out / "broken.wav", "empty": out / "empty.flac"}
    sf.write(paths["wav"], y, sr, subtype="FLOAT")
    sf.write(paths["flac"], y, sr)
    sf.write(paths["stereo"], np.stack([y, y], 1), sr, subtype="FLOAT")
    sf.write(paths["48k"], t48, 48_000, subtype="FLOAT")
    paths["broken"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(200)))
    paths["empty"].write_bytes(b"")
    return paths


def _pipeline_probs(record_path: Path, corpus) -> tuple[int, np.ndarray]:
    """The first test utterance's class probabilities as the experiment scored it (its normalised test view,
    the selected weights, the mean of its segments' softmax)."""
    run = load_run(record_path)
    record = inflate_split(json.loads(record_path.read_text()), record_path.parents[3])
    test = eval_view(record, corpus)
    g = int(test.groups[0])
    sub = test.subset(test.groups == g)
    x, _, lengths = sub.batch(slice(0, len(sub)))
    with torch.no_grad():
        out = run.model(**x) if isinstance(x, dict) else run.model(x)
    logits = out[0] if isinstance(out, tuple) else out
    return g, torch.softmax(logits.float(), 1).mean(0).numpy()


def test_head_fusion_run_predicts_like_the_pipeline(hf_run, corpus, tmp_path):
    g, expected = _pipeline_probs(hf_run, corpus)
    (res,) = predict_emotion([corpus.paths[g]], model=hf_run)
    assert list(res["probabilities"]) == list(corpus.labels)
    np.testing.assert_allclose(list(res["probabilities"].values()), expected, atol=1e-4)
    assert res["label"] == corpus.labels[int(np.argmax(expected))] and res["n_segments"] > 1
    # the lazily exposed API, the checkpoint folder as the model, and the embedding
    run = load_run(hf_run)
    (again,) = serlib.predict_emotion(corpus.paths[g], model=run.checkpoint, embedding=True)
    assert again["probabilities"] == pytest.approx(res["probabilities"]) and len(again["embedding"]) > 0


def test_speed_perturbed_utterance_normalised_run_predicts_like_the_pipeline(corpus, tmp_path):
    """The best recipes train on speed perturbed copies (view speed_segments); their test inputs are plain segments,
    and a per-utterance normalised run standardises the file with its own statistics, as its test view did."""
    recs = _reproduce(["head_fusion", "--levers", "authors_attention+speedwide+uttnorm"], tmp_path)
    (rec,) = [p for p in recs if "uttnorm" in p.parent.parent.parent.name]
    cfg = json.loads(rec.read_text())["config"]
    assert cfg["view"] == "speed_segments" and cfg["view_kwargs"]["utterance_norm"] is True
    g, expected = _pipeline_probs(rec, corpus)
    (res,) = predict_emotion([corpus.paths[g]], model=rec)
    np.testing.assert_allclose(list(res["probabilities"].values()), expected, atol=1e-4)
    # a per-speaker normalised run needs the speaker's statistics: refused by name, not predicted wrongly
    run = load_run(rec)
    run.exp = run.exp.replace(view_kwargs={"factors": [0.9], "speaker_norm": True})
    with pytest.raises(ValueError, match="prediction on single files does not support per-speaker normalisation"):
        predict_emotion([corpus.paths[g]], model=run)


def test_noise_trained_run_predicts_like_the_pipeline(corpus, tmp_path):
    """The noise lever trains on a noisy copy of the training part (view noisy_segments); its validation and test
    parts are clean segments, so a file is predicted from its plain segments, as the pipeline tested it."""
    recs = _reproduce(["head_fusion", "--levers", "authors_attention+noise"], tmp_path)
    (rec,) = [p for p in recs if json.loads(p.read_text())["config"]["view"] == "noisy_segments"]
    g, expected = _pipeline_probs(rec, corpus)
    (res,) = predict_emotion([corpus.paths[g]], model=rec)
    np.testing.assert_allclose(list(res["probabilities"].values()), expected, atol=1e-4)


def test_speed_perturbed_fixed_length_run_predicts_like_the_pipeline(corpus, tmp_path):
    """ECA-CNN's speed part (view speed_fixed, asked for with the shared ``--parts`` flag) tests on plain fixed-length
    inputs: a file is centre-padded / cropped and normalised as its test view was."""
    (rec,) = _reproduce(["eca", "--parts", "speed"], tmp_path)
    cfg = json.loads(rec.read_text())["config"]
    assert cfg["view"] == "speed_fixed" and cfg["view_kwargs"]["factors"] == [0.8, 0.9, 1.1, 1.2]
    g, expected = _pipeline_probs(rec, corpus)
    (res,) = predict_emotion([corpus.paths[g]], model=rec)
    np.testing.assert_allclose(list(res["probabilities"].values()), expected, atol=1e-4)


def test_predict_cli_on_formats_and_broken_files(hf_run, files, capsys):
    order = ["wav", "broken", "flac", "stereo", "48k", "empty"]
    rc = main(["predict", *(str(files[k]) for k in order), "--model", str(hf_run)])
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert rc == 1 and len(lines) == len(order)  # one line per file; a failure makes the exit code non-zero
    assert "2 of 6 file(s) could not be predicted" in out.err
    for k, line in zip(order, lines):
        assert line.startswith(f"{files[k]}: ")
        assert ("ERROR" in line) == (k in ("broken", "empty"))
    rc = main(["predict", *(str(files[k]) for k in order), "--model", str(hf_run), "--json", "--embedding"])
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert rc == 1 and [Path(r["file"]).name for r in rows] == [files[k].name for k in order]
    by = {k: r for k, r in zip(order, rows)}
    assert set(by["broken"]) == {"file", "error"} and by["empty"]["error"]
    p = {k: np.array(list(by[k]["probabilities"].values())) for k in ("wav", "flac", "stereo", "48k")}
    assert all(abs(v.sum() - 1) < 1e-5 for v in p.values())
    np.testing.assert_allclose(p["stereo"], p["wav"], atol=1e-5)  # two equal channels mix down to the mono file
    np.testing.assert_allclose(p["flac"], p["wav"], atol=2e-3)  # 16-bit flac: quantisation only
    assert np.abs(p["48k"] - p["wav"]).max() < 0.1  # resampled back to 16 kHz: close, not identical
    assert len(by["wav"]["embedding"]) > 0


def test_predict_without_a_checkpoint_says_how(hf_run, tmp_path, capsys, files):
    record = json.loads(hf_run.read_text())
    record["config"]["train_resolved"]["checkpoint_dir"] = str(tmp_path / "moved")
    moved = tmp_path / "run.json"
    moved.write_text(json.dumps(record))
    assert main(["predict", str(files["wav"]), "--model", str(moved)]) == 2
    assert "--save-model" in capsys.readouterr().err
    # --checkpoints ROOT finds it where the run's root put it
    root = Path(json.loads(hf_run.read_text())["config"]["train_resolved"]["checkpoint_dir"]).parent
    assert main(["predict", str(files["wav"]), "--model", str(moved), "--checkpoints", str(root)]) == 0


@pytest.mark.parametrize("arm", ["fusion", "mfcc", "w2v2"])
def test_ca_ser_runs_predict_like_the_pipeline(caser_runs, corpus, files, arm):
    g, expected = _pipeline_probs(caser_runs[arm], corpus)
    (res,) = predict_emotion([corpus.paths[g]], model=caser_runs[arm], embedding=True)
    np.testing.assert_allclose(list(res["probabilities"].values()), expected, atol=1e-4)
    assert len(res["embedding"]) == json.loads(caser_runs[arm].read_text())["config"]["model_resolved"][
        "enc_dim" if arm == "mfcc" else "d_model"]
    out = predict_emotion([files["stereo"], files["broken"], files["48k"]], model=caser_runs[arm])
    assert "error" not in out[0] and "error" in out[1] and "error" not in out[2]
