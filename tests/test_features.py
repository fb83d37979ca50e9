"""serlib.features equals librosa 0.11 (tolerances are module constants of serlib.features), batched or not."""

from __future__ import annotations

import dataclasses
import json

import librosa
import numpy as np
import pytest
import torch

from serlib import features as F
from serlib.data.audio import load_audio

SR = 16_000
ALL = sorted(F.PRESETS)
pytestmark = pytest.mark.filterwarnings("ignore:n_fft=.*is too large:UserWarning")  # librosa, on tiny clips


@pytest.fixture(scope="module")
def ravdess_clip(ravdess_root) -> np.ndarray:
    # of all 1440 clips, the one where float32 compute is furthest from librosa (eca_v1: 2.2e-3 dB)
    path = ravdess_root / "Audio_Speech_Actors_01-24" / "Actor_15" / "03-01-06-01-01-01-15.wav"
    return load_audio(path if path.exists() else sorted(ravdess_root.rglob("*.wav"))[0])


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP waits on the shared 2-core machine (0.4 ms vs ~190 ms per clip)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def chirp_noise(rng: np.random.Generator, seconds: float = 1.3, scale: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    y = np.sin(2 * np.pi * (150 * t + 1800 * t**2)) + 0.1 * rng.standard_normal(t.size)
    return (scale * y).astype(np.float32)


def librosa_features(p: F.FeaturePreset, y: np.ndarray) -> np.ndarray:
    """Written out with librosa calls only (independent of serlib.features.reference_librosa)."""
    if p.pre_emphasis is not None:
        y = librosa.effects.preemphasis(y, coef=p.pre_emphasis)
    S = librosa.feature.melspectrogram(
        y=y, sr=p.sr, n_fft=p.n_fft, hop_length=p.hop_length, win_length=p.win_length, window=p.window,
        center=p.center, pad_mode=p.pad_mode, power=p.power, n_mels=p.n_mels, fmin=p.fmin, fmax=p.fmax,
        htk=p.htk, norm=p.mel_norm,
    )  # fmt: skip
    db = librosa.power_to_db(S, ref=np.max if p.ref == "max" else 1.0, amin=p.amin, top_db=p.top_db)
    if p.kind == "logmel":
        return db
    m = librosa.feature.mfcc(S=db, n_mfcc=p.n_mfcc, norm=p.dct_norm)
    return m / np.linalg.norm(m, axis=0, keepdims=True) if p.frame_l2norm else m


def assert_parity(p: F.FeaturePreset, ours: np.ndarray, ref: np.ndarray, cdt=torch.float32) -> None:
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max()
    tol = F.parity_tolerance(p.kind, cdt)
    if p.kind == "logmel":
        assert err <= tol, f"{p.name}: {err:.2e} dB"
    else:
        assert err <= tol * np.ptp(ref), f"{p.name}: {err:.2e} vs range {np.ptp(ref):.2f}"


DTYPES = pytest.mark.parametrize("cdt", [torch.float32, torch.float64], ids=["f32", "f64"])


# ------------------------------------------------------------------------------------------------- presets
def test_required_presets_and_paper_settings():
    needed = {"head_fusion_mfcc", "faca_mfcc", "caser_mfcc", "moma_fbank23", "logmel64"}
    assert needed | {f"eca_v{v}" for v in range(1, 9)} <= set(F.PRESETS)
    hf = F.PRESETS["head_fusion_mfcc"]
    assert (hf.n_fft, hf.win_length, hf.hop_length, hf.n_mfcc, hf.n_mels, hf.top_db) == (
        2048,
        2048,
        512,
        26,
        128,
        80.0,
    )
    cs = F.PRESETS["caser_mfcc"]
    assert (cs.n_mfcc, cs.hop_length, cs.n_fft, cs.htk) == (40, 160, 2048, True)
    assert cs.pre_emphasis == 0.97 and cs.frame_l2norm
    assert F.PRESETS["moma_fbank23"].n_features == 23
    for v, win_ms in enumerate(range(15, 55, 5), start=1):
        e = F.PRESETS[f"eca_v{v}"]
        assert (e.win_length, e.hop_length, e.n_mels, e.kind) == (16 * win_ms, 160, 64, "logmel")
        assert e.n_fft >= e.win_length > e.n_fft // 2 and e.n_fft & (e.n_fft - 1) == 0
    assert all(p.notes for p in F.PRESETS.values())


def test_to_dict_is_json_and_leaves_out_notes():
    p = F.PRESETS["eca_v3"]
    d = p.to_dict()
    assert "notes" not in d and json.loads(json.dumps(d)) == d
    assert F.FeaturePreset(**d) == p  # round trip


BAD = [
    dict(kind="cqt"),
    dict(kind="mfcc", n_mfcc=200),
    dict(win_length=4096),
    dict(ref="median"),
    dict(hop_length=0),
]


@pytest.mark.parametrize("bad", BAD)
def test_invalid_presets_raise(bad):
    base = dict(name="x", kind="logmel", n_fft=512, hop_length=160, n_mels=40)
    with pytest.raises(ValueError):
        F.FeaturePreset(**{**base, **bad})


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(KeyError, match="head_fusion_mfcc"):
        F.get_preset("nope")


# -------------------------------------------------------------------------------------------------- parity
@DTYPES
@pytest.mark.parametrize("name", ALL)
def test_parity_with_librosa_synthetic(name, cdt, rng):
    p = F.PRESETS[name]
    y = chirp_noise(rng)
    assert_parity(p, F.compute(p, y, compute_dtype=cdt)[0].numpy(), librosa_features(p, y), cdt)


@pytest.mark.realdata
@DTYPES
@pytest.mark.parametrize("name", ALL)
def test_parity_with_librosa_real_ravdess_clip(name, cdt, ravdess_clip):
    p = F.PRESETS[name]
    y = ravdess_clip
    assert_parity(p, F.compute(p, y, compute_dtype=cdt)[0].numpy(), librosa_features(p, y), cdt)


def test_head_fusion_equals_the_papers_literal_librosa_call(rng):
    y = chirp_noise(rng)
    ref = librosa.feature.mfcc(y=y, sr=16000, n_mfcc=26, n_fft=2048, hop_length=512)
    assert_parity(F.PRESETS["head_fusion_mfcc"], F.compute("head_fusion_mfcc", y)[0].numpy(), ref)
    np.testing.assert_allclose(F.reference_librosa("head_fusion_mfcc", y), ref, rtol=0, atol=1e-4)


def test_head_fusion_two_second_segment_is_26_by_63(rng):
    y = chirp_noise(rng, seconds=2.0)
    assert F.compute("head_fusion_mfcc", y).shape == (1, 26, 63)
    assert F.PRESETS["head_fusion_mfcc"].n_frames(32000) == 63


@pytest.mark.parametrize("name", ["head_fusion_mfcc", "eca_v1", "eca_v8", "moma_fbank23"])
@pytest.mark.parametrize("n", [1, 159, 160, 161, 2047, 4801])
def test_frame_count_equals_librosa(name, n, rng):
    p = F.PRESETS[name]
    y = rng.standard_normal(n).astype(np.float32)
    expected = librosa.stft(y, n_fft=p.n_fft, hop_length=p.hop_length, win_length=p.win_length).shape[-1]
    assert p.n_frames(n) == expected == F.compute(p, y).shape[-1]


def test_ref_max_and_no_top_db_variants_match_librosa(rng):
    y = chirp_noise(rng)
    for change in [dict(ref="max"), dict(top_db=None), dict(ref="max", top_db=40.0), dict(power=1.0)]:
        p = dataclasses.replace(F.PRESETS["logmel64"], **change)
        assert_parity(p, F.compute(p, y)[0].numpy(), librosa_features(p, y))


def test_float64_compute_matches_float64_librosa_closely(rng):
    p = F.PRESETS["eca_v1"]
    y = chirp_noise(rng)
    ref = librosa_features(p, y.astype(np.float64))
    ours = F.compute(p, y, compute_dtype=torch.float64, dtype=torch.float64)[0].numpy()
    assert np.abs(ours - ref).max() < 1e-6


def test_preemphasis_matches_librosa_first_sample_convention(rng):
    y = rng.standard_normal((3, 50)).astype(np.float32)
    ours = F._preemphasis(torch.from_numpy(y), 0.97).numpy()
    np.testing.assert_allclose(ours, librosa.effects.preemphasis(y, coef=0.97), atol=1e-6)


# --------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("name", ["head_fusion_mfcc", "caser_mfcc", "eca_v3"])
def test_batched_equals_per_clip(name, rng):
    # rows of very different levels: the per-clip top_db clamp must not leak across rows
    ys = np.stack([chirp_noise(rng, scale=s) for s in (1.0, 1e-3, 0.05)])
    batch = F.compute(name, ys, batch_size=2)
    assert batch.shape == (3, F.PRESETS[name].n_features, F.PRESETS[name].n_frames(ys.shape[1]))
    for i, y in enumerate(ys):
        torch.testing.assert_close(batch[i], F.compute(name, y)[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(F.compute(name, list(ys)), batch)  # list of equal-length clips


@pytest.mark.parametrize("ref", ["one", "max"])
@pytest.mark.parametrize("name", ["head_fusion_mfcc", "caser_mfcc", "eca_v3"])
def test_lengths_aware_batch_equals_per_clip_on_valid_frames(name, ref, rng):
    p = dataclasses.replace(F.PRESETS[name], ref=ref)
    sizes = [(0.4, 1.0), (1.0, 1e-3), (0.25, 0.3), (0.05, 2.0)]  # (seconds, level)
    clips = [chirp_noise(rng, seconds=s, scale=a) for s, a in sizes]
    padded, lengths = F.pad_batch(clips)
    padded[1, lengths[1] :] = 7.0  # junk beyond a clip's length must be ignored
    feats, frames = F.compute_with_lengths(p, padded, lengths=lengths, batch_size=3)
    assert feats.shape == (4, p.n_features, p.n_frames(padded.shape[1]))
    assert frames.tolist() == [p.n_frames(len(c)) for c in clips]
    for i, c in enumerate(clips):
        one = F.compute(p, c)[0]
        torch.testing.assert_close(feats[i, :, : frames[i]], one, atol=1e-4, rtol=1e-5)
        ref_np = librosa_features(p, c)  # and therefore librosa on the clip alone
        assert_parity(p, feats[i, :, : frames[i]].numpy(), ref_np)


def test_frames_beyond_valid_hold_the_clips_silence_floor(rng):
    p = F.PRESETS["logmel64"]
    clips = [chirp_noise(rng, seconds=1.0), chirp_noise(rng, seconds=0.3, scale=1e-2)]
    feats, frames = F.compute_with_lengths(p, clips)
    short = feats[1].numpy()
    n = int(frames[1])
    floor = max(10 * np.log10(p.amin), short[:, :n].max() - p.top_db)
    np.testing.assert_allclose(short[:, n:], floor, atol=1e-4)
    assert np.all(short[:, :n] >= floor - 1e-4)


def test_reflect_pad_mode_with_lengths_pads_each_clip_alone(rng):
    p = dataclasses.replace(F.PRESETS["eca_v2"], pad_mode="reflect")
    clips = [chirp_noise(rng, seconds=0.5), chirp_noise(rng, seconds=0.2)]
    feats, frames = F.compute_with_lengths(p, clips)
    for i, c in enumerate(clips):
        assert_parity(p, feats[i, :, : frames[i]].numpy(), librosa_features(p, c))


def test_unequal_list_needs_compute_with_lengths(rng):
    clips = [chirp_noise(rng, seconds=0.2), chirp_noise(rng, seconds=0.3)]
    with pytest.raises(ValueError, match="compute_with_lengths"):
        F.compute("eca_v3", clips)
    with pytest.raises(ValueError, match="lengths"):
        F.compute_with_lengths("eca_v3", np.zeros((2, 100)), lengths=[50, 101])


@pytest.mark.parametrize("name", ALL)
def test_all_zero_audio_is_finite(name):
    feats, _ = F.compute_with_lengths(name, np.zeros((2, 8000), np.float32), lengths=[8000, 3000])
    assert torch.isfinite(feats).all()


def test_tensor_input_output_dtype_and_device(rng):
    y = torch.from_numpy(chirp_noise(rng, seconds=0.3)).double()
    out = F.compute("faca_mfcc", y, dtype=torch.float64)
    assert out.dtype == torch.float64 and out.device == y.device and out.shape[:2] == (1, 40)


def test_convenience_functions_match_librosa(rng):
    y = chirp_noise(rng, seconds=0.5)
    m = F.mfcc(y, sr=SR, n_mfcc=13, n_fft=512, hop_length=160)
    ref = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=13, n_fft=512, hop_length=160)
    assert m.shape == ref.shape and np.abs(m.numpy() - ref).max() <= F.MFCC_RTOL_RANGE * np.ptp(ref)
    lm = F.log_mel(np.stack([y, y]), sr=SR, n_mels=40, n_fft=400, hop_length=100, ref="max")
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y, sr=SR, n_mels=40, n_fft=400, hop_length=100), ref=np.max
    )
    assert lm.shape == (2, *ref.shape) and np.abs(lm[1].numpy() - ref).max() <= F.LOGMEL_ATOL_DB_FLOAT32


@pytest.mark.requires_cuda
def test_cuda_equals_cpu(rng):
    clips = [chirp_noise(rng, seconds=0.7), chirp_noise(rng, seconds=0.4)]
    cpu, fc = F.compute_with_lengths("caser_mfcc", clips)
    gpu, fg = F.compute_with_lengths("caser_mfcc", clips, device="cuda")
    assert fg.tolist() == fc.tolist()
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
