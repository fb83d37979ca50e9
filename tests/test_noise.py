"""Noise mixing (serlib.noise) and the waveform-derived noise categories (serlib.noise_categories)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from serlib.noise import (
    CATEGORIES,
    NoiseError,
    check_noise,
    condition_hash,
    make_condition,
    mix,
    read_condition,
    split_noise_types,
    tile_noise,
    usable_noise,
    write_condition,
)
from serlib.noise_categories import CATEGORY_CSV, categorize, class_categories, load_categories

SR = 16_000


def _sine(n, f=220.0, amp=0.5):
    t = torch.arange(n, dtype=torch.float64) / SR
    return amp * torch.sin(2 * math.pi * f * t)


# ---------------------------------------------------------------------------------------------- mixing


def test_snr_of_sine_plus_white_noise_equals_the_formulas(rng):
    n = SR * 2
    s = torch.stack([_sine(n, amp=0.5), _sine(n, f=330.0, amp=0.2)])
    w = torch.from_numpy(rng.standard_normal((2, n)) * 0.1)
    af = torch.tensor([0.1, 0.4], dtype=torch.float64)
    noisy, info = mix(s, w, af, clip="none")
    for b in range(2):
        sb, nb, a = s[b].numpy(), w[b].numpy(), float(af[b])
        eq3 = 20 * np.log10(np.abs(sb).mean() / (np.abs(nb).mean() * a))
        pw = 10 * np.log10((sb**2).mean() / ((a * nb) ** 2).mean())
        assert float(info["snr_eq3_db"][b]) == pytest.approx(eq3, abs=1e-9)
        assert float(info["snr_power_db"][b]) == pytest.approx(pw, abs=1e-9)
    torch.testing.assert_close(noisy, s + af[:, None] * w)
    # doubling AF lowers Eq. 3's SNR by 20 log10 2 (the paper's "about 6 dB")
    _, i2 = mix(s, w, 2 * af, clip="none")
    torch.testing.assert_close(
        info["snr_eq3_db"] - i2["snr_eq3_db"], torch.full((2,), 20 * math.log10(2), dtype=s.dtype)
    )


def test_mix_scalar_af_zero_is_clean_with_infinite_snr():
    s = _sine(800)[None]
    noisy, info = mix(s, torch.ones_like(s), 0.0)
    torch.testing.assert_close(noisy, s)
    assert math.isinf(float(info["snr_eq3_db"][0])) and math.isinf(float(info["snr_power_db"][0]))


def test_mix_lengths_exclude_padding():
    s = torch.zeros(2, 1000, dtype=torch.float64)
    s[0, :600] = _sine(600)
    s[1] = _sine(1000)
    w = torch.full((2, 1000), 0.05, dtype=torch.float64)
    noisy, info = mix(s, w, 0.5, lengths=torch.tensor([600, 1000]), clip="none")
    assert torch.all(noisy[0, 600:] == 0)
    ref = 20 * math.log10(float(s[0, :600].abs().mean()) / (0.05 * 0.5))
    assert float(info["snr_eq3_db"][0]) == pytest.approx(ref, abs=1e-9)


def test_clipping_policies():
    s = torch.full((1, 100), 0.9, dtype=torch.float64)
    w = torch.full((1, 100), 1.0, dtype=torch.float64)
    w[0, 50:] = -1.0
    r, ir = mix(s, w, 0.5, clip="rescale")
    assert float(r.abs().max()) == pytest.approx(1.0)
    assert float(ir["scale"][0]) == pytest.approx(1 / 1.4)
    # rescaling keeps the ratio of speech to noise: the SNR of the output equals the recorded one
    torch.testing.assert_close(r, (s + 0.5 * w) / 1.4)
    c, ic = mix(s, w, 0.5, clip="clip")
    assert float(c.max()) == 1.0 and int(ic["n_clipped"][0]) == 50
    n, _ = mix(s, w, 0.5, clip="none")
    assert float(n.max()) == pytest.approx(1.4)
    with pytest.raises(ValueError, match="clip must be"):
        mix(s, w, 0.5, clip="soft")


def test_mix_rejects_silent_noise_row():
    s = _sine(400).repeat(2, 1)
    w = torch.ones_like(s)
    w[1] = 0
    with pytest.raises(NoiseError, match=r"rows \[1\].*silent"):
        mix(s, w, 0.1)


def test_tile_and_offset_exact_by_sample_index():
    x = torch.arange(7, dtype=torch.float32)
    out = tile_noise(x, 20, 3)
    assert out.shape == (20,)
    assert out.tolist() == [float((3 + i) % 7) for i in range(20)]
    long = torch.arange(100.0)
    assert tile_noise(long, 10, 95).tolist() == [95, 96, 97, 98, 99, 0, 1, 2, 3, 4]
    assert tile_noise(long, 10, 0).tolist() == list(range(10))
    with pytest.raises(NoiseError, match="clip.wav.*empty"):
        tile_noise(torch.zeros(0), 5, 0, name="clip.wav")


def test_check_noise_names_the_clip_for_silent_and_short(rng):
    with pytest.raises(NoiseError, match="1-2-A-3.wav.*silent"):
        check_noise(torch.zeros(SR), sr=SR, name="1-2-A-3.wav")
    with pytest.raises(NoiseError, match="short.wav.*fewer than 1600"):
        check_noise(torch.ones(100), sr=SR, name="short.wav")
    ok, skipped = usable_noise(
        {
            "good": torch.from_numpy(rng.standard_normal(SR)),
            "silent": torch.zeros(SR),
            "short": torch.ones(10),
        },
        sr=SR,
    )
    assert ok == ["good"]
    assert [s["noise"] for s in skipped] == ["short", "silent"]
    assert "silent" in skipped[1]["reason"] and "fewer than" in skipped[0]["reason"]


def test_make_condition_deterministic_and_order_free(tmp_path):
    utts = [f"u{i}" for i in range(50)]
    noises = [f"n{i}" for i in range(9)]
    a = make_condition(utts, noises, af=0.2, offset_s=1.0, seed=3)
    b = make_condition(utts[::-1], noises[::-1], af=0.2, offset_s=1.0, seed=3)
    assert {r["utt"]: r["noise"] for r in a} == {r["utt"]: r["noise"] for r in b}
    assert condition_hash(a) == condition_hash(b)
    c = make_condition(utts, noises, af=0.2, offset_s=1.0, seed=4)
    assert condition_hash(c) != condition_hash(a)
    assert [r["noise"] for r in c] != [r["noise"] for r in a]
    assert len({r["noise"] for r in a}) > 1
    assert a[0] == {"utt": "u0", "noise": a[0]["noise"], "offset_s": 1.0, "af": 0.2}
    # an utterance keeps its clip when others are removed
    sub = make_condition(utts[:10], noises, af=0.2, offset_s=1.0, seed=3)
    assert sub == a[:10]
    p = write_condition(a, tmp_path)
    assert p.name == f"{condition_hash(a)}.json"
    assert read_condition(p) == a
    p.write_text(p.read_text().replace('"af": 0.2', '"af": 0.3', 1))
    with pytest.raises(ValueError, match="edited"):
        read_condition(p)
    with pytest.raises(ValueError, match="empty"):
        make_condition(utts, [], af=0.1, offset_s=0.0, seed=0)


def test_split_noise_types_disjoint_per_category_80_20():
    cats = {f"{c}_{i}": c for c in CATEGORIES for i in range(10)}
    cats.update({"lonely": "D-L", "pair_a": "X", "pair_b": "X"})
    tr, te = split_noise_types(cats, seed=0)
    assert not set(tr) & set(te)
    assert set(tr) | set(te) == set(cats)
    for c in CATEGORIES:
        n_tr = sum(cats[t] == c for t in tr)
        n_te = sum(cats[t] == c for t in te)
        assert (n_tr, n_te) == ((9, 2) if c == "D-L" else (8, 2))
    assert sum(cats[t] == "X" for t in tr) == 1 and sum(cats[t] == "X" for t in te) == 1
    assert split_noise_types(cats, seed=0) == (tr, te)
    assert split_noise_types(dict(reversed(list(cats.items()))), seed=0) == (tr, te)
    assert split_noise_types(cats, seed=1) != (tr, te)


# ------------------------------------------------------------------------------------------ categories


def _impulse_train(rng, n_s=5.0, every_s=0.5):
    y = 1e-6 * rng.standard_normal(int(n_s * SR))
    y[:: int(every_s * SR)] = 1.0
    return y


def test_known_answers_impulse_train_white_noise_tone_burst_clicks(rng):
    imp = categorize(_impulse_train(rng), SR)
    assert imp["category"] == "D-S" and imp["n_segments"] == 10 and imp["active_frac"] < 0.1
    white = categorize(rng.standard_normal(5 * SR) * 0.1, SR)
    assert white["category"] == "C-L" and white["active_frac"] == 1.0 and white["n_segments"] == 1
    # two 1-s tone bursts separated by silence: discrete, long
    y = np.zeros(5 * SR)
    t = np.arange(SR) / SR
    y[SR // 2 : SR // 2 + SR] = 0.5 * np.sin(2 * np.pi * 440 * t)
    y[3 * SR : 4 * SR] = 0.5 * np.sin(2 * np.pi * 440 * t)
    burst = categorize(y, SR)
    assert burst["category"] == "D-L" and burst["n_segments"] == 2 and burst["decay_s"] > 0.9
    # white noise whose level jumps by 14 dB every 50 ms, never below the gate: continuous, fluctuating (C-S)
    gate = (np.arange(5 * SR) // int(0.05 * SR)) % 2 == 0
    flick = categorize(rng.standard_normal(5 * SR) * 0.1 * np.where(gate, 1.0, 0.2), SR)
    assert flick["category"] == "C-S" and flick["active_frac"] == 1.0 and flick["fluct_s"] < 0.2
    # 5-ms clicks every 0.3 s are short; a tone decaying slowly (tau 0.3 s: -20 dB after 0.69 s) every 1.5 s is long
    clicks = 1e-6 * rng.standard_normal(5 * SR)
    for k in range(0, 5 * SR - 80, int(0.3 * SR)):
        clicks[k : k + 80] += 0.5 * rng.standard_normal(80)
    c = categorize(clicks, SR)
    assert c["category"] == "D-S" and c["decay_s"] < 0.05 and c["n_segments"] >= 15
    dec = np.zeros(5 * SR)
    tt = np.arange(int(1.2 * SR)) / SR
    for k in (0, int(1.5 * SR), 3 * SR):
        dec[k : k + len(tt)] = 0.5 * np.exp(-tt / 0.3) * np.sin(2 * np.pi * 300 * tt)
    d = categorize(dec, SR)
    assert d["category"] == "D-L" and 0.6 < d["decay_s"] < 0.8 and d["n_segments"] == 3
    with pytest.raises(NoiseError, match="quiet.wav"):
        categorize(np.zeros(SR), SR, name="quiet.wav")


def test_load_categories_default_and_user_csv(tmp_path):
    if not CATEGORY_CSV.is_file():
        pytest.skip(f"{CATEGORY_CSV} not generated")
    cats = load_categories()
    assert len(cats) == 50 and set(cats.values()) <= set(CATEGORIES)
    p = tmp_path / "mine.csv"
    p.write_text("class,category\ndog,C-L\nrain,D-S\n")
    assert load_categories(p) == {"dog": "C-L", "rain": "D-S"}
    p.write_text("class,category\ndog,loud\n")
    with pytest.raises(ValueError, match="mine.csv.*unknown categories"):
        load_categories(p)
    p.write_text("name,cat\ndog,D-S\n")
    with pytest.raises(ValueError, match="mine.csv.*lacks columns"):
        load_categories(p)


def test_class_categories_on_real_esc50_match_the_published_table(esc50_root):
    from serlib.data.esc50 import load_esc50

    corpus = load_esc50(esc50_root)
    keep = corpus.table.groupby("label").head(1).index  # one clip per class keeps the test fast
    sub = type(corpus)(corpus.name, corpus.root, corpus.table.loc[keep], corpus.labels, [])
    df = class_categories(sub)
    assert len(df) == 50 and (df["n_clips"] == 1).all()
    assert set(df["category"]) <= set(CATEGORIES)
    pub = pd.read_csv(CATEGORY_CSV)
    assert list(pub["class"]) == list(corpus.labels)
    assert int(pub["n_clips"].sum()) == len(corpus)  # the shared subset has no unusable clip
    # each single clip's category is one its class voted for in the published table
    votes = pub.set_index("class")
    for cls, cat in zip(df["class"], df["category"]):
        assert votes.at[cls, f"votes_{cat}"] >= 1, cls


def test_mix_float32_batch_keeps_dtype_and_matches_float64(rng):
    s = torch.from_numpy(rng.standard_normal((3, 4000)) * 0.3)
    w = torch.from_numpy(rng.standard_normal((3, 4000)))
    af = torch.tensor([0.1, 0.2, 0.8], dtype=torch.float64)
    y64, i64 = mix(s, w, af)
    y32, i32 = mix(s.float(), w.float(), af.float())
    assert y32.dtype == torch.float32 and i32["snr_eq3_db"].dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(i32["snr_power_db"].double(), i64["snr_power_db"], atol=1e-4, rtol=1e-5)


@pytest.mark.requires_cuda
def test_mix_and_tile_cuda_match_cpu(rng):
    x = torch.from_numpy(rng.standard_normal(1000)).float()
    torch.testing.assert_close(tile_noise(x.cuda(), 2500, 123).cpu(), tile_noise(x, 2500, 123))
    s = torch.from_numpy(rng.standard_normal((2, 2500)) * 0.3).float()
    w = torch.stack([tile_noise(x, 2500, 0), tile_noise(x, 2500, 7)])
    y, info = mix(s, w, torch.tensor([0.1, 0.4]))
    yc, ic = mix(s.cuda(), w.cuda(), torch.tensor([0.1, 0.4]).cuda())
    assert yc.is_cuda and ic["snr_eq3_db"].is_cuda
    torch.testing.assert_close(yc.cpu(), y, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ic["snr_eq3_db"].cpu(), info["snr_eq3_db"], atol=1e-4, rtol=1e-5)
