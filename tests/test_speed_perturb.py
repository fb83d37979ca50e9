"""Issue 16, speed perturbation: the waveform function (tempo and pitch scale by the factor), the perturbed corpus
(its own cache key), the ``speed_segments`` view (clean val / test, perturbed training copies of training utterances
only, counted), bad input (non-finite copies fail or are listed), and the Head Fusion ``speed`` lever end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serlib import speed_perturb as sp
from serlib.augment import speed_fraction, speed_perturb
from serlib.data.splits import make_splits
from serlib.experiment import NonFiniteFeaturesError, build_views, corpus_waveforms, load_experiment_corpus
from serlib.studies import compare
from serlib.studies import head_fusion as hf

pytestmark = pytest.mark.usefixtures("one_thread")
SR = 16_000


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SR)[np.argmax(spec)])


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_speed_perturb_scales_pitch_and_duration_by_the_factor(factor):
    t = np.arange(2 * SR) / SR
    tone = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    out = speed_perturb(tone, factor)
    frac = speed_fraction(factor)
    assert out.dtype == np.float32 and len(out) == -(-len(tone) * frac.denominator // frac.numerator)
    assert abs(len(out) / len(tone) - 1 / factor) < 1e-3
    assert abs(_peak_hz(out[SR // 4: -SR // 4]) - 440.0 * factor) < 3.0  # 0.5 Hz bins; the tone moved
    assert np.array_equal(speed_perturb(tone, factor), out)  # deterministic


def test_speed_perturb_checks_its_input():
    x = np.ones(100, np.float32)
    y = speed_perturb(x, 1.0)
    assert np.array_equal(y, x) and y is not x
    for bad in (0.0, 9, 11, -1.1):
        with pytest.raises(ValueError, match="outside"):
            speed_perturb(x, bad)
    with pytest.raises(ValueError, match="mono"):
        speed_perturb(np.ones((2, 100), np.float32), 1.1)
    assert speed_fraction(0.9) == sp.speed_fraction(0.9) and speed_fraction(0.9).denominator == 10


@pytest.fixture(scope="module")
def synthetic():
    return load_experiment_corpus("synthetic")


def test_speed_corpus_has_its_own_fingerprint_and_perturbed_audio(synthetic):
    slow, fast = sp.SpeedCorpus(synthetic, 0.9), sp.SpeedCorpus(synthetic, 1.1)
    prints = {synthetic.fingerprint(), slow.fingerprint(), fast.fingerprint(), sp.SpeedCorpus(synthetic, 1.1
                                                                                              ).fingerprint()}
    assert len(prints) == 3 and slow.content_hash() != synthetic.content_hash()
    waves, _ = corpus_waveforms(synthetic, SR)
    slow_waves, _ = corpus_waveforms(slow, SR)
    assert len(slow_waves) == len(waves) and len(slow_waves[0]) == len(speed_perturb(waves[0], 0.9))
    with pytest.raises(ValueError, match="outside"):
        sp.SpeedCorpus(synthetic, 3.0)


def _exp(**kw):
    exp = hf.speaker_independent_experiment("synthetic", profile="quick")
    return exp.replace(**{"view": "speed_segments", "view_kwargs": {"factors": [0.9, 1.1]}, **kw})


def test_view_adds_perturbed_copies_of_training_utterances_only(synthetic):
    split = make_splits("speaker_independent", synthetic, seed=0)[0]
    exp = _exp(normalize=False)
    clean = build_views(exp.replace(view="segments", view_kwargs={}), synthetic, split)
    v = build_views(exp, synthetic, split)
    n = len(clean.train)
    copies = v.counts["speed"]["copies"]
    assert v.counts["speed"]["clean_segments"] == n and set(copies) == {"0.9", "1.1"}
    assert len(v.train) == n + copies["0.9"]["segments"] + copies["1.1"]["segments"]
    assert copies["0.9"]["segments"] > n > copies["1.1"]["segments"] > 0  # slower: longer: more windows
    assert torch.equal(v.train.x[:n], clean.train.x)
    assert set(v.train.groups.tolist()) == set(clean.train.groups.tolist())  # no val / test utterance leaks in
    assert torch.equal(v.test.x, clean.test.x) and torch.equal(v.val.x, clean.val.x)  # clean, unchanged
    assert v.counts["segments"]["train"] == len(v.train) and not v.skips
    # the copy is speed_copy's (the helper test-time perturbation shares), at the training step
    x, g, bad = sp.speed_copy(exp, synthetic, np.unique(clean.train.groups.numpy()), 0.9)
    assert not bad and torch.equal(v.train.x[n: n + len(x)], x) and torch.equal(v.train.groups[n: n + len(g)], g)
    x_test, _, _ = sp.speed_copy(exp, synthetic, np.unique(clean.train.groups.numpy()), 0.9, part="test")
    assert (len(x_test) < len(x)) == (exp.test_step_s > exp.train_step_s)
    normed = build_views(_exp(), synthetic, split)  # statistics from the whole training part, copies included
    mean = v.train.x.mean(dim=(0, 2), keepdim=True)
    std = v.train.x.std(dim=(0, 2), keepdim=True)
    assert torch.allclose(normed.test.x, (clean.test.x - mean) / std, atol=1e-5)
    assert torch.allclose(normed.normalizer["x"][0], mean)
    for bad in ([], [0.9, 0.9], [3.0]):
        with pytest.raises(ValueError):
            build_views(_exp(view_kwargs={"factors": bad}), synthetic, split)
    control = build_views(_exp(normalize=False, view_kwargs={"factors": [1.0, 1.0]}), synthetic, split)
    assert len(control.train) == 3 * n and torch.equal(control.train.x[2 * n:], clean.train.x)  # same steps, no change
    assert control.counts["speed"]["copies"]["1"]["copies"] == 2


def test_non_finite_copies_fail_the_run_or_are_listed(synthetic, monkeypatch, tmp_path):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))  # the poisoned copies stay out of the real cache
    split = make_splits("speaker_independent", synthetic, seed=0)[0]
    first = int(split.indices(synthetic)[0][0])
    real = sp.speed_perturb

    def poisoned(wave, factor):
        out = real(wave, factor)
        if len(wave) == len(corpus_waveforms(synthetic, SR)[0][first]) and np.array_equal(
                wave, corpus_waveforms(synthetic, SR)[0][first]):
            out[10] = np.nan
        return out

    monkeypatch.setattr(sp, "speed_perturb", poisoned)
    exp = _exp(view_kwargs={"factors": [0.8]})
    with pytest.raises(NonFiniteFeaturesError, match=str(synthetic.table.at[first, "path"]).split("/")[-1]):
        build_views(exp.replace(nonfinite="fail"), synthetic, split)
    v = build_views(exp, synthetic, split)
    assert [s["stage"] for s in v.skips] == ["speed"] and "non-finite" in v.skips[0]["reason"]
    assert v.skips[0]["path"] == str(synthetic.table.at[first, "path"])
    assert v.counts["speed"]["copies"]["0.8"]["skipped"] == 1
    assert first in v.train.groups.tolist()  # its clean segments stay; only the copy is dropped
    other = int(split.indices(synthetic)[0][1])
    x, g, bad = sp.speed_copy(exp, synthetic, [first, other], 0.8)
    assert bad == {first: sp.NONFINITE} and set(g.tolist()) == {other} and torch.isfinite(x).all()
    assert torch.isfinite(v.train.x).all()


def test_repeat3_lever_is_speeds_control():
    (_, aa, rep), speed = (hf.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent",),
                                          folds=(0,), levers=levers) for levers in
                           (("authors_attention", "authors_attention+repeat3"), ("authors_attention+speed",)))
    assert rep.view == speed[1].view == "speed_segments" and rep.view_kwargs == {"factors": [1.0, 1.0]}
    assert rep.train == speed[1].train and rep.model_kwargs == speed[1].model_kwargs
    assert hf.lever_base(rep.arm) == aa.arm


def test_speed_lever_runs_end_to_end_and_is_paired_with_its_base(tmp_path):
    exps = hf.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent",), folds=(0,),
                          levers=("authors_attention", "authors_attention+speed"))
    base, aa, speed = exps
    assert speed.view == "speed_segments" and speed.view_kwargs == {"factors": [0.9, 1.1]}
    assert speed.model_kwargs["attention"] == "head_fusion_code" and aa.view == "segments" == base.view
    recs = hf.run_study(exps, results_dir=tmp_path, backend="serial")
    assert all(r["status"] == "ok" for r in recs)
    assert recs[2]["counts"]["speed"]["factors"] == [0.9, 1.1]
    assert recs[2]["counts"]["segments"]["train"] > recs[1]["counts"]["segments"]["train"]
    assert recs[2]["counts"]["segments"]["test"] == recs[1]["counts"]["segments"]["test"]
    t = hf.levers_table(recs).set_index("lever")
    assert t.loc["authors_attention+speed", "against"] == "authors_attention"
    assert t.loc["authors_attention+speed", "n pairs"] == 1


def test_training_levers_stack_on_speed_and_pair_with_it():
    _, speed, both = hf.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent",), folds=(0,),
                                    levers=("authors_attention+speed", "authors_attention+speed+specaug"))
    assert both.arm == "lever-authors_attention+speed+specaug"
    assert both.view == speed.view == "speed_segments" and both.view_kwargs == speed.view_kwargs
    assert both.model_kwargs == speed.model_kwargs and both.model_kwargs["attention"] == "head_fusion_code"
    assert both.train == {**speed.train, **hf.SPECAUG} and speed.train.get("specaug_freq_masks", 0) == 0
    assert hf.lever_base(both.arm) == speed.arm and hf.lever_control(both.arm) == ""
    # no choice stacks two view levers, and a hand-made one is refused
    assert all(sum(p in hf.VIEW_LEVERS for p in c.split("+")) <= 1 for c in hf.LEVER_CHOICES)
    base = hf.speaker_independent_experiment("synthetic", profile="quick")
    with pytest.raises(ValueError, match="stacks the view levers"):
        hf.lever_experiments(base, ["authors_attention+speed+noise"])


def test_speedwide_lever_is_wider_and_paired_with_speed(tmp_path):
    """speedwide: copies at 0.8, 0.9, 1.1 and 1.2 (five times the training segments), the authors' attention like
    speed, paired with its base and with speed (its rival) run by run in the levers table."""
    exps = hf.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent",), folds=(0,),
                          levers=("authors_attention", "authors_attention+speed", "authors_attention+speedwide"))
    _, aa, speed, wide = exps
    assert wide.view == "speed_segments" and wide.view_kwargs == {"factors": [0.8, 0.9, 1.1, 1.2]}
    assert wide.model_kwargs == speed.model_kwargs and wide.train == speed.train
    assert hf.lever_base(wide.arm) == aa.arm and hf.lever_rival(wide.arm) == speed.arm
    assert hf.lever_rival(speed.arm) == "" and hf.lever_control(wide.arm) == ""
    recs = hf.run_study(exps, results_dir=tmp_path, backend="serial")
    assert all(r["status"] == "ok" for r in recs)
    assert recs[3]["counts"]["speed"]["factors"] == [0.8, 0.9, 1.1, 1.2]
    assert set(recs[3]["counts"]["speed"]["copies"]) == {"0.8", "0.9", "1.1", "1.2"}
    # a slower copy is longer: more segments than its clean utterance; test segments stay clean and equal
    assert recs[3]["counts"]["segments"]["train"] > recs[2]["counts"]["segments"]["train"] + \
        2 * recs[1]["counts"]["segments"]["train"] * 0.9
    assert recs[3]["counts"]["segments"]["test"] == recs[1]["counts"]["segments"]["test"]
    t = hf.levers_table(recs)
    wide_rows = t[t["lever"] == "authors_attention+speedwide"].set_index("against")
    assert set(wide_rows.index) == {"authors_attention", "authors_attention+speed"}
    assert wide_rows.loc["authors_attention+speed", "n pairs"] == 1
    assert "factors=[0.8, 0.9, 1.1, 1.2]" in compare.recipe(recs[3])
    with pytest.raises(ValueError, match="stacks the view levers"):
        hf.lever_experiments(hf.speaker_independent_experiment("synthetic", profile="quick"),
                             ["authors_attention+speed+speedwide"])


def test_speedfar_lever_has_speeds_steps_and_speedwides_range():
    """speedfar: copies at 0.8 and 1.2 only (speed's number of copies, speedwide's range), paired with speed."""
    exps = hf.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent",), folds=(0,),
                          levers=("authors_attention+speed", "authors_attention+speedfar",
                                  "authors_attention+speedwide"))
    _, speed, far, wide = exps
    assert far.view == "speed_segments" and far.view_kwargs == {"factors": [0.8, 1.2]}
    assert len(far.view_kwargs["factors"]) == len(speed.view_kwargs["factors"])
    assert min(far.view_kwargs["factors"]) == min(wide.view_kwargs["factors"])
    assert max(far.view_kwargs["factors"]) == max(wide.view_kwargs["factors"])
    assert far.model_kwargs == speed.model_kwargs and far.train == speed.train
    assert hf.lever_rival(far.arm) == speed.arm and hf.lever_base(far.arm) == hf.lever_base(speed.arm)
    with pytest.raises(ValueError, match="stacks the view levers"):
        hf.lever_experiments(hf.speaker_independent_experiment("synthetic", profile="quick"),
                             ["authors_attention+speedfar+speed"])


def test_speedmany_lever_adds_copies_over_speedwides_range_and_is_paired_with_it():
    """speedmany: six copies over speedwide's range (its four factors plus 0.85 and 1.15), paired with speedwide."""
    exps = hf.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent",), folds=(0,),
                          levers=("authors_attention+speedwide", "authors_attention+speedmany"))
    _, wide, many = exps
    assert many.view == "speed_segments" and many.view_kwargs == {"factors": [0.8, 0.85, 0.9, 1.1, 1.15, 1.2]}
    assert set(wide.view_kwargs["factors"]) < set(many.view_kwargs["factors"])
    assert (min(many.view_kwargs["factors"]), max(many.view_kwargs["factors"])) == (0.8, 1.2)
    assert many.model_kwargs == wide.model_kwargs and many.train == wide.train
    assert hf.lever_rival(many.arm) == wide.arm and hf.lever_base(many.arm) == hf.lever_base(wide.arm)


def test_speed_fixed_view_adds_one_perturbed_input_per_training_utterance_and_factor(synthetic):
    """speed_fixed (ECA-CNN's fixed-length inputs): the clean ``fixed`` view plus, per factor, the fixed-length input
    of every training utterance played that much faster (the SpeedCorpus cache's); val / test clean; normalised over
    the whole training part."""
    from serlib.experiment import fixed_features
    from serlib.features import PRESETS
    from serlib.studies import eca

    split = make_splits("speaker_independent", synthetic, seed=0)[0]
    exp = eca.speed_experiments(eca.speaker_independent_experiment("synthetic", profile="quick"))[0]
    assert exp.view == "speed_fixed" and exp.view_kwargs == {"factors": list(eca.SPEED_FACTORS)}
    raw = exp.replace(normalize=False)
    clean = build_views(raw.replace(view="fixed", view_kwargs={}), synthetic, split)
    v = build_views(raw, synthetic, split)
    n, rows = len(clean.train), clean.train.groups.numpy()
    assert len(v.train) == 5 * n and torch.equal(v.train.x[:n], clean.train.x)
    assert torch.equal(v.train.groups, clean.train.groups.repeat(5)) and torch.equal(v.train.y, clean.train.y.repeat(5))
    for k, f in enumerate(eca.SPEED_FACTORS, start=1):
        want = fixed_features(sp.SpeedCorpus(synthetic, f), PRESETS[exp.features], seconds=exp.fixed_s)["x"][rows]
        assert torch.equal(v.train.x[k * n:(k + 1) * n], torch.as_tensor(want))
        assert not torch.equal(v.train.x[k * n:(k + 1) * n], clean.train.x)  # perturbed
        assert v.counts["speed"]["copies"][f"{f:g}"] == {"utterances": n, "inputs": n, "skipped": 0}
    assert torch.equal(v.test.x, clean.test.x) and torch.equal(v.val.x, clean.val.x)
    assert v.counts["inputs"] == {"train": 5 * n, "val": len(clean.val), "test": len(clean.test)}
    normed = build_views(exp, synthetic, split)
    mean, std = normed.normalizer["x"]
    assert torch.allclose(mean, v.train.x.mean(dim=(0, 2), keepdim=True))
    assert torch.allclose(normed.test.x, (clean.test.x - mean) / std, atol=1e-5)
    assert sp.speed_trained(exp.to_dict())
    assert eca.describe(exp.to_dict())["model"] == "CNN + speed 0.8/0.9/1.1/1.2"
    assert eca.describe(eca.cnn(exp.replace(view="fixed", view_kwargs={})).to_dict())["model"] == "CNN"
    assert not sp.speed_trained({"view": "speed_fixed", "view_kwargs": {"factors": [1.0, 1.0]}})
    assert not sp.speed_trained({"view": "fixed", "view_kwargs": {}})


def test_eca_speed_part_runs_and_pools_with_head_fusion_across_models(tmp_path):
    """The ECA study's ``speed`` part (speaker-independent only, matched steps with cnn_matched_steps) runs end to
    end, records its copies, and joins the every-model pool of speed-perturbed runs once another study has one;
    one study alone forms no every-model pool."""
    from serlib.studies import eca

    exps = eca.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent", "paper"),
                           parts=("speed",), folds=(0,), seeds=(0, 1))
    assert [e.arm for e in exps] == [eca.SPEED_ARM] and exps[0].protocol == "speaker_independent"
    base = eca.speaker_independent_experiment("synthetic", profile="quick")
    assert exps[0].train["epochs"] == max(1, round(base.train["epochs"] * 8 / 5))
    recs = eca.run_grid(exps, tmp_path)
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    assert recs[0]["counts"]["speed"]["factors"] == list(eca.SPEED_FACTORS)
    assert recs[0]["predictions"] and recs[0]["val_predictions"]
    assert compare.every_model_pools(recs) == {}
    hf_exps = hf.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent",), folds=(0,),
                             seeds=(0, 1), levers=("authors_attention+speed",))
    hf_recs = hf.run_study(hf_exps[1:], results_dir=tmp_path / "hf", backend="serial")
    pools = compare.every_model_pools(recs + hf_recs)
    assert pools == {compare.EVERY_MODEL_SPEED_POOL: {"eca": [recs[0]["kind"]], "head_fusion": [hf_recs[0]["kind"]]}}
    assert hf.ensemble_pools(hf_recs) == {}  # Head Fusion's own pool needs two of its experiments
