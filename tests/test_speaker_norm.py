"""Per-speaker and per-utterance feature normalisation (serlib.speaker_norm) and their levers, spknorm and uttnorm
(issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serlib import features as F
from serlib import speaker_norm
from serlib.data.splits import make_splits
from serlib.experiment import build_views, load_experiment_corpus, segment_features, segment_short
from serlib.studies import head_fusion as hf
from serlib.train import ArrayData


@pytest.fixture(scope="module")
def synthetic():
    return load_experiment_corpus("synthetic")


def test_each_speaker_is_standardised_with_its_own_statistics():
    rng = np.random.default_rng(0)
    speakers = np.array(["a", "a", "b", "c"])
    # speaker b: a different level and spread per bin; c: rows 3 only
    x = rng.normal(size=(8, 3, 5)).astype(np.float32)
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    x[groups == 2] = x[groups == 2] * 5 + 7
    stats = speaker_norm.speaker_stats(x, groups, speakers, exclude={3})
    assert set(stats) == {"a", "b"}  # speaker c's only row is excluded (e.g. non-finite): no statistics
    mean_b, std_b = stats["b"]
    want = torch.as_tensor(x[groups == 2], dtype=torch.float64)
    assert torch.allclose(mean_b[:, 0].double(), want.mean(dim=(0, 2)), atol=1e-5)
    assert torch.allclose(std_b[:, 0].double(), want.std(dim=(0, 2)), atol=1e-5)
    part = ArrayData(x=torch.as_tensor(x[:6]), y=torch.zeros(6, dtype=torch.long), lengths=None,
                     groups=torch.as_tensor(groups[:6]))
    speaker_norm.apply([part, None], speakers, stats)
    for rows in ([0, 1], [2]):  # speaker a, speaker b
        sel = torch.as_tensor(np.isin(groups[:6], rows))
        z = part.x[sel].double()
        assert torch.allclose(z.mean(dim=(0, 2)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
        assert torch.allclose(z.std(dim=(0, 2)), torch.ones(3, dtype=torch.float64), atol=1e-4)
    # a speaker without statistics, or a sequence view, is an error, not a silent pass-through
    orphan = ArrayData(x=torch.as_tensor(x[6:]), y=torch.zeros(2, dtype=torch.long), lengths=None,
                       groups=torch.as_tensor(groups[6:]))
    with pytest.raises(ValueError, match="no per-speaker statistics for speakers \\['c'\\]"):
        speaker_norm.apply([orphan], speakers, stats)
    seq = ArrayData(x=torch.as_tensor(x[:2]), y=torch.zeros(2, dtype=torch.long), lengths=torch.tensor([5, 4]),
                    groups=torch.as_tensor(groups[:2]))
    with pytest.raises(ValueError, match="segment view"):
        speaker_norm.apply([seq], speakers, stats)


def test_spknorm_view_uses_every_speakers_own_statistics_then_the_training_parts(synthetic):
    _, plain, spk, wide = hf.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent",),
                                         folds=(0,), levers=("authors_attention", "authors_attention+spknorm",
                                                             "authors_attention+speedwide+spknorm"))
    assert spk.view == "segments" and spk.view_kwargs == {"speaker_norm": True}
    assert wide.view == "speed_segments" and wide.view_kwargs == {"factors": [0.8, 0.9, 1.1, 1.2],
                                                                  "speaker_norm": True}
    assert spk.model_kwargs == plain.model_kwargs and spk.train == plain.train
    split = make_splits("speaker_independent", synthetic, seed=0)[0]
    raw = build_views(plain.replace(normalize=False), synthetic, split)
    v = build_views(spk, synthetic, split)
    assert v.counts["speaker_norm"]["speakers"] == synthetic.table["speaker"].nunique()
    store = segment_features(synthetic, F.PRESETS[spk.features], win_s=spk.win_s, step_s=spk.test_step_s,
                             short=segment_short(spk, "test"))
    speakers = synthetic.table["speaker"].astype(str).to_numpy()
    test_speakers = sorted(set(speakers[raw.test.groups.numpy()]))
    assert not set(test_speakers) & set(speakers[raw.train.groups.numpy()])  # speaker-independent
    # by hand: a test speaker's statistics over all its test-step segments, then the training part's
    want = raw.test.x.clone()
    for s in test_speakers:
        xs = torch.as_tensor(store["x"][speakers[store["groups"]] == s], dtype=torch.float64)
        sel = torch.as_tensor(speakers[raw.test.groups.numpy()] == s)
        want[sel] = ((want[sel].double() - xs.mean(dim=(0, 2))[:, None])
                     / xs.std(dim=(0, 2))[:, None]).float()
    mean, std = v.normalizer["x"]
    assert torch.allclose(v.test.x, (want - mean) / std, atol=1e-4)
    assert not torch.allclose(v.test.x, build_views(plain, synthetic, split).test.x, atol=1e-2)
    # the training part is normalised over all of it afterwards, so it is standard overall
    assert torch.allclose(v.train.x.mean(dim=(0, 2)), torch.zeros(v.train.x.shape[1]), atol=1e-4)
    # speed copies are standardised with their speaker's clean statistics, so the perturbation is kept
    w = build_views(wide, synthetic, split)
    n = len(v.train)
    assert len(w.train) > n and torch.allclose(w.test.x * w.normalizer["x"][1] + w.normalizer["x"][0],
                                               v.test.x * std + mean, atol=1e-4)
    assert not torch.allclose(w.train.x[n: 2 * n].mean(), w.train.x[:n].mean(), atol=1e-3)
    # a view its statistics do not describe (whole-utterance inputs) is refused by name, not normalised wrongly
    with pytest.raises(ValueError, match="segment views .* not on view 'fixed'"):
        build_views(spk.replace(view="fixed"), synthetic, split)


def test_spknorm_arms_pair_with_their_base_and_stay_out_of_the_inductive_speed_pool(tmp_path):
    exps = hf.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent",), folds=(0,),
                          levers=("authors_attention+speedwide", "authors_attention+speed",
                                  "authors_attention+speedwide+spknorm"))
    _, wide, speed, both = exps
    assert hf.lever_base(both.arm) == wide.arm
    recs = hf.run_study([wide, speed, both], results_dir=tmp_path, backend="serial")
    assert all(r["status"] == "ok" for r in recs)
    assert recs[2]["config"]["view_kwargs"]["speaker_norm"] is True
    assert recs[2]["counts"]["speaker_norm"]["speakers"] > 0
    pools = hf.ensemble_pools(recs)
    assert pools == {hf.SPEED_POOL: sorted([wide.name, speed.name])}  # the speaker-normalised arm is not in it
    # two speaker-normalised speed arms pool among themselves, never with the inductive ones
    twin = {**recs[2], "kind": recs[2]["kind"].replace("speedwide", "speed"),
            "config": {**recs[2]["config"], "view_kwargs": {"factors": [0.9, 1.1], "speaker_norm": True}}}
    assert hf.ensemble_pools([*recs, twin]) == {hf.SPEED_POOL: sorted([wide.name, speed.name]),
                                                hf.SPEED_SPKNORM_POOL: sorted([both.name, twin["kind"]])}
    t = hf.levers_table(recs).set_index("lever")
    assert t.loc["authors_attention+speedwide+spknorm", "against"] == "authors_attention+speedwide"
    # tools that rebuild a run's inputs themselves refuse it by name instead of feeding it unnormalised inputs
    with pytest.raises(ValueError, match="per-speaker normalisation"):
        speaker_norm.refuse(both, "test-time speed perturbation")
    speaker_norm.refuse(wide, "test-time speed perturbation")  # no error without it
    from serlib.robustness import evaluate_run

    with pytest.raises(ValueError, match="noise robustness evaluation does not support per-speaker normalisation"):
        evaluate_run(recs[2], tmp_path / "no_checkpoints")


def test_uttnorm_standardises_every_utterance_with_its_own_statistics_and_is_inductive(synthetic, tmp_path):
    _, plain, utt, wide, speed = hf.STUDY.build(
        "synthetic", profile="quick", protocols=("speaker_independent",), folds=(0,),
        levers=("authors_attention", "authors_attention+uttnorm", "authors_attention+speedwide+uttnorm",
                "authors_attention+speed"))
    assert utt.view == "segments" and utt.view_kwargs == {"utterance_norm": True}
    assert wide.view_kwargs == {"factors": [0.8, 0.9, 1.1, 1.2], "utterance_norm": True}
    assert hf.lever_base(utt.arm) == plain.arm
    with pytest.raises(ValueError, match="stacks the normalisation levers"):
        hf.lever_experiments(plain, ["authors_attention+spknorm+uttnorm"])
    with pytest.raises(ValueError, match="both 'speaker_norm' and 'utterance_norm'"):
        speaker_norm.level({"speaker_norm": True, "utterance_norm": True})
    split = make_splits("speaker_independent", synthetic, seed=0)[0]
    raw = build_views(plain.replace(normalize=False), synthetic, split)
    v = build_views(utt, synthetic, split)
    store = segment_features(synthetic, F.PRESETS[utt.features], win_s=utt.win_s, step_s=utt.test_step_s,
                             short=segment_short(utt, "test"))
    assert v.counts["utterance_norm"]["utterances"] == len(np.unique(store["groups"]))
    # by hand: each test utterance's statistics over its own test-step segments, then the training part's
    want = raw.test.x.clone()
    g = raw.test.groups.numpy()
    for row in np.unique(g):
        xs = torch.as_tensor(store["x"][store["groups"] == row], dtype=torch.float64)
        sel = torch.as_tensor(g == row)
        want[sel] = ((want[sel].double() - xs.mean(dim=(0, 2))[:, None]) / xs.std(dim=(0, 2))[:, None]).float()
    mean, std = v.normalizer["x"]
    assert torch.allclose(v.test.x, (want - mean) / std, atol=1e-4)
    # a speaker-normalised view of the same experiment differs: the level is what is asked, not a synonym
    spk = build_views(utt.replace(view_kwargs={"speaker_norm": True}), synthetic, split)
    assert not torch.allclose(v.test.x, spk.test.x, atol=1e-2)
    # the runs are inductive: their records say so, their speed arms join the inductive pool, tools refuse by name
    recs = hf.run_study([wide, speed], results_dir=tmp_path, backend="serial")
    assert all(r["status"] == "ok" for r in recs)
    from serlib.studies import compare

    assert recs[0]["counts"]["utterance_norm"]["utterances"] > 0 and not compare.speaker_normalised(recs[0])
    assert hf.ensemble_pools(recs) == {hf.SPEED_POOL: sorted([wide.name, speed.name])}
    assert "per-utterance normalisation" in compare.recipe(recs[0])
    with pytest.raises(ValueError, match="does not support per-utterance normalisation"):
        speaker_norm.refuse(wide, "test-time speed perturbation")
