"""Head Fusion study: paper config, split choice, sweep / ablation builders, run_study (write + skip), tables, widget;
and the model's fast Eq. 1-2 path against an explicit autograd computation (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from serlib.data.splits import make_splits
from serlib.experiment import load_experiment_corpus
from serlib.models.head_fusion import KEY_PAD, HeadFusionACNN, HeadFusionConfig, _HeadFusionPoints
from serlib.studies import common
from serlib.studies import head_fusion as hf

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic():
    return load_experiment_corpus("synthetic")


def _tiny(selection="best_test", **kw):
    return hf.paper_experiment("synthetic", profile="quick", selection=selection,
                               train={"epochs": 1}, model_kwargs={"n_head": 1, "n_size": 4}, **kw)


# ----------------------------------------------------------------------------------------------------- configs
def test_paper_experiment_matches_paper():
    exp = hf.paper_experiment()
    assert exp.protocol == "random_80_20" and exp.protocol_kwargs == {}
    assert exp.features == "head_fusion_mfcc" and exp.view == "segments"
    assert (exp.win_s, exp.train_step_s, exp.test_step_s, exp.min_len_s) == (2.0, 1.0, 0.4, 2.0)
    assert exp.model == "head_fusion"
    assert exp.model_kwargs == {"attention": "head_fusion", "n_head": 4, "n_size": 64}
    t = exp.train
    assert (t["lr"], t["weight_decay"], t["batch_size"], t["epochs"]) == (1e-3, 1e-6, 32, 50)
    assert (t["optimizer"], t["scheduler"], t["step_size"], t["gamma"]) == ("adam", "step", 10, 0.1)
    assert t["select"] == "best_test" and exp.name == "head_fusion_paper_best_test"
    assert exp.seeds == (111111, 123456, 0, 999999, 987654)
    assert exp.aggregate == "mean_prob"

    val = hf.paper_experiment(selection="val")
    assert val.train["select"] == "val" and val.protocol_kwargs == {"val_frac": 0.1}
    assert val.name != exp.name
    quick = hf.paper_experiment(profile="quick")
    assert quick.seeds == (111111,) and quick.train["epochs"] < 5 and quick.model_kwargs["n_size"] < 64
    over = hf.paper_experiment(train={"epochs": 7}, seeds=[1, 2])
    assert over.train["epochs"] == 7 and over.train["lr"] == 1e-3 and over.seeds == (1, 2)
    with pytest.raises(ValueError):
        hf.paper_experiment(selection="test")
    with pytest.raises(ValueError):
        hf.paper_experiment(profile="fast")


def test_val_selection_keeps_the_paper_test_part(synthetic):
    paper = make_splits("random_80_20", synthetic, seed=0)[0]
    ours = make_splits("random_80_20", synthetic, seed=0, val_frac=0.1)[0]
    assert ours.test == paper.test
    assert set(ours.train) | set(ours.val) == set(paper.train)
    assert len(ours.val) == round(0.1 * len(synthetic))


def test_speaker_independent_sweep_and_ablation():
    si = hf.speaker_independent_experiment()
    assert si.protocol == "speaker_independent" and si.train["select"] == "val" and si.folds is None
    assert si.train["lr"] == 1e-3 and si.model_kwargs["n_size"] == 64
    base = hf.paper_experiment()
    sweep = hf.sweep_experiments(base, n_heads=[1, 4], n_sizes=[32, 64, 128])
    assert len(sweep) == 6 and len({e.name for e in sweep}) == 6
    assert {(e.model_kwargs["n_head"], e.model_kwargs["n_size"]) for e in sweep} == {
        (h, s) for h in (1, 4) for s in (32, 64, 128)}
    abl = hf.ablation_experiments(base)
    kinds = [e.model_kwargs["attention"] for e in abl]
    assert kinds[:3] == ["head_fusion", "self_attention", "none"]
    assert sorted(e.model_kwargs.get("n_middle_convs", 4) for e in abl) == [2, 3, 4, 4, 4, 5]
    assert all(e.train == base.train for e in sweep + abl)


# ----------------------------------------------------------------------------------------------------- running
def test_run_study_writes_records_and_skips_them(tmp_path, synthetic, monkeypatch):
    exps = [_tiny(), _tiny().replace(name="tiny_b", model_kwargs={"n_head": 2, "n_size": 4})]
    recs = hf.run_study(exps, results_dir=tmp_path, backend="serial")
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    files = sorted(p for p in tmp_path.rglob("*.json") if p.parent.name != "splits")
    assert len(files) == 2 and len(list((tmp_path / "splits").glob("*.json"))) == 1  # one split, stored once
    assert {r["kind"] for r in recs} == {"head_fusion_paper_best_test", "tiny_b"}
    assert all(r["selection"] == "best_test" and 0 <= r["metrics"]["ua"] <= 1 for r in recs)
    assert recs[0]["counts"]["dropped_min_len"] == int((synthetic.table["duration"] <= 2.0).sum())

    def boom(*a, **k):
        raise AssertionError("a recorded run was run again")

    monkeypatch.setattr(common, "run_one", boom)
    again = hf.run_study(exps, results_dir=tmp_path, backend="serial")
    assert [r["metrics"]["ua"] for r in again] == [r["metrics"]["ua"] for r in recs]

    tab = hf.table(again)
    assert len(tab) == 2 and set(tab["n runs"]) == {1}
    assert {"UA mean (%)", "WA mean (%)", "n_head", "n_size"} <= set(tab.columns)
    assert tab["UA mean (%)"].between(0, 100).all()


def test_paper_reference_is_labelled_as_quoted():
    ref = hf.paper_reference()
    rav = ref[(ref.corpus == "ravdess") & ref.source.str.startswith("paper")].iloc[0]
    assert (rav["WA (%)"], rav["UA (%)"]) == (77.8, 77.4)
    assert (ref["UA (%)"] == 76.36).any() and (ref["UA (%)"] == 61.1).any()
    assert ref["note"].str.contains("not measured").all()


# ----------------------------------------------------------------------------------------------------- widget
@pytest.fixture(scope="module")
def state(synthetic):
    return hf.make_state(_tiny(), corpus=synthetic)


def test_widget_callback(state):
    res = hf.widget_callback(state, n_head=2, n_size=8, epochs=1)
    n_cls = len(state["corpus"].labels)
    assert 0 <= res["ua"] <= 1 and 0 <= res["wa"] <= 1
    conf = torch.tensor(res["confusion"])
    assert conf.shape == (n_cls, n_cls) and int(conf.sum()) == len(state["split"].test)
    assert res["head_maps"].shape == (2, 6, 15) and res["fused_map"].shape == (6, 15)
    assert torch.allclose(torch.as_tensor(res["head_maps"]).mean(0), torch.as_tensor(res["fused_map"]), atol=1e-6)
    assert res["mfcc"].shape == (26, 63) and len(res["history"]) == 1


def test_make_widget_builds_and_click_fills_output(state):
    pytest.importorskip("ipywidgets")
    panel = hf.make_widget(state)
    c = panel.controls
    assert list(c["n_size"].options) == [8, 16, 32, 64, 128]
    c["n_head"].value, c["n_size"].value, c["epochs"].value = 1, 8, 1
    assert c["output"].outputs == ()
    res = panel.on_train()
    outs = c["output"].outputs
    assert any(o["output_type"] == "stream" and "UA" in o["text"] for o in outs)
    assert sum("image/png" in o.get("data", {}) for o in outs) == 2
    assert 0 <= res["ua"] <= 1


# ----------------------------------------------------------------------------------------------------- fast path
def _explicit_points(proj, d, key_mask):
    """Eq. 1 + GAP with autograd on materialised maps: proj (GH, 2d+dv, B, P) -> (B, GH, dv)."""
    q, k, v = (proj[:, s].permute(2, 0, 3, 1) for s in (slice(0, d), slice(d, 2 * d), slice(2 * d, None)))
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    out = s.softmax(-1) @ v  # (B, GH, P, dv)
    if key_mask is None:
        return out.mean(2)
    m = key_mask.to(out.dtype)[:, None, :, None]
    return (out * m).sum(2) / m.sum(2)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dv, block", [(1, 3), (2, 64)])
def test_fast_head_fusion_equals_explicit(masked, dv, block):
    torch.manual_seed(0)
    gh, d, b, p = 6, 4, 3, 20
    proj = torch.randn(gh, 2 * d + dv, b, p, dtype=torch.float64, requires_grad=True)
    pk = -(-p // KEY_PAD) * KEY_PAD
    key_mask = w = bias = None
    if masked:
        key_mask = torch.ones(b, p, dtype=torch.bool)
        key_mask[1, 12:] = False
        key_mask[2, ::3] = False
        bias = torch.full((b, pk), float("-inf"), dtype=torch.float64)
        bias[:, :p].masked_fill_(key_mask, 0.0)
        w = key_mask.double() / key_mask.double().sum(1, keepdim=True)
    pts, u = _HeadFusionPoints.apply(proj, w, bias, d, block)
    ref = _explicit_points(proj, d, key_mask)
    torch.testing.assert_close(pts, ref, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(pts)
    (gf,) = torch.autograd.grad((pts * g).sum(), proj)
    (gr,) = torch.autograd.grad((ref * g).sum(), proj)
    torch.testing.assert_close(gf, gr, atol=1e-12, rtol=1e-10)
    assert u.shape == (b, gh, p, dv) and not u.requires_grad


def test_model_gradients_match_explicit_float64():
    """The whole model in float64: fast path vs the same weights with the explicit maps (return_attention path)."""
    torch.manual_seed(1)
    m = HeadFusionACNN(HeadFusionConfig(n_head=2, n_size=3, n_classes=4)).double()
    x = torch.randn(3, 26, 30, dtype=torch.float64)
    logits, aux = m(x, return_attention=True)
    v = m._split(m._projections(m.features(x)))[2]  # (B, G, nh, P, 1)
    ref_points = (aux["attention"] @ v).mean(2).mean(2)[..., 0]  # Eq. 2, GAP
    torch.testing.assert_close(aux["points"], ref_points.detach(), atol=1e-12, rtol=1e-10)
    (g1,) = torch.autograd.grad(logits.sum(), m.qkv.weight)
    feat = m.features(x)
    q, k, v = m._split(m._projections(feat))
    a = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    (g2,) = torch.autograd.grad(m.fc((a @ v).mean(2).mean(2)[..., 0]).sum(), m.qkv.weight)
    torch.testing.assert_close(g1, g2, atol=1e-12, rtol=1e-10)


def test_reproduction_table_keeps_the_three_figures_apart():
    def rec(seed, ua, best=None, last=None):
        metrics = {"ua": ua, "wa": ua}
        if best is not None:
            metrics["best_test_epoch"] = {"ua": best, "wa": best, "epoch": 3}
            metrics["last_epoch"] = {"ua": last, "wa": last, "epoch": 5}
        return {"kind": "hf", "corpus": {"name": "ravdess"}, "split": {"protocol": "random_80_20", "fold": 0},
                "seed": seed, "metrics": metrics}

    t = hf.reproduction_table([rec(1, 0.5, 0.7, 0.4), rec(2, 0.6, 0.8, 0.6)])
    by = t.set_index("figure")["UA mean (%)"]
    assert by["validation-selected (ours)"] == pytest.approx(55.0)
    assert by["best test epoch (authors' selection, on the test set)"] == pytest.approx(75.0)
    assert by["last epoch"] == pytest.approx(50.0)
    assert set(t["n runs"]) == {2}
    # without per-epoch test curves only the validation-selected figure exists
    t = hf.reproduction_table([rec(1, 0.5)])
    assert list(t["figure"]) == ["validation-selected (ours)"]


def test_fold_table_weights_every_fold_once():
    def rec(fold, seed, ua):
        return {"split": {"protocol": "speaker_independent", "fold": fold}, "seed": seed,
                "metrics": {"ua": ua, "wa": ua + 0.01}}

    recs = [rec(0, 1, 0.40), rec(0, 2, 0.50), rec(0, 3, 0.60), rec(1, 1, 0.70),
            {"split": {"protocol": "random_80_20", "fold": 0}, "seed": 1, "metrics": {"ua": 0.9, "wa": 0.9}}]
    tab = hf.fold_table(recs)
    assert list(tab["fold"]) == [0, 1, "mean of folds"]
    assert tab.loc[0, "UA mean (%)"] == pytest.approx(50.0) and tab.loc[0, "n runs"] == 3
    assert tab.loc[0, "seeds"] == "1,2,3"
    last = tab.iloc[-1]
    assert last["UA mean (%)"] == pytest.approx(60.0)  # (50 + 70) / 2, not the pooled 55
    assert last["UA std (%)"] == pytest.approx(math.sqrt(200.0)) and last["n runs"] == 4
    assert hf.fold_table([]).empty


# ----------------------------------------------------------------------------------------------------- levers
def test_lever_experiments_apply_their_overrides_on_the_speaker_independent_experiment():
    exps = hf.reproduction_experiments("ravdess", protocols=("speaker_independent",),
                                       levers=("specaug", "authors_attention+mixup", "long"))
    base, spec, mix, long = exps
    assert base.arm == "" and [e.arm for e in exps[1:]] == ["lever-specaug", "lever-authors_attention+mixup",
                                                            "lever-long"]
    assert spec.name == "head_fusion_speaker_independent__lever-specaug"
    assert spec.model_kwargs == base.model_kwargs and spec.train == {**base.train, **hf.SPECAUG}
    assert mix.model_kwargs["attention"] == "head_fusion_code" and mix.train["mixup_alpha"] == 0.2
    assert long.train["epochs"] == 100 and long.train["step_size"] == 20 and base.train["epochs"] == 50
    assert all(e.protocol == "speaker_independent" and e.train["select"] == "val" for e in exps)
    assert hf.lever_base("lever-authors_attention+mixup") == "lever-authors_attention"
    assert hf.lever_base("lever-specaug") == ""
    with pytest.raises(ValueError, match="unknown levers"):
        hf.reproduction_experiments("ravdess", protocols=("speaker_independent",), levers=("dropout",))
    with pytest.raises(ValueError, match="speaker_independent"):
        hf.reproduction_experiments("ravdess", protocols=("paper",), levers=("specaug",))
    assert len(hf.reproduction_experiments("ravdess")) == 2  # no levers unless asked


def test_levers_table_pairs_each_lever_with_what_it_modifies():
    def rec(arm, fold, seed, ua):
        return {"kind": f"hf__{arm}" if arm else "hf", "identity": {"arm": arm}, "status": "ok",
                "corpus": {"name": "ravdess"}, "split": {"protocol": "speaker_independent", "fold": fold},
                "seed": seed, "metrics": {"ua": ua, "wa": ua}}

    recs = [rec("", f, 0, 0.40 + 0.01 * f) for f in range(3)] + [rec("", 0, 1, 0.30)]
    recs += [rec("lever-authors_attention", f, 0, 0.45 + 0.01 * f) for f in range(3)]
    recs += [rec("lever-authors_attention+mixup", f, 0, 0.43 + 0.01 * f) for f in range(2)]
    recs += [rec("lever-specaug", 0, 5, 0.9)]  # no run of the base with seed 5: nothing to pair
    t = hf.levers_table(recs).set_index("lever")
    a = t.loc["authors_attention"]
    assert a["against"] == "paper's recipe" and a["n pairs"] == 3 and a["diff (pp)"] == pytest.approx(5.0)
    assert a["lever better in"] == "3/3" and a["lever UA (%)"] == pytest.approx(46.0) and a["folds"] == 3
    m = t.loc["authors_attention+mixup"]
    assert m["against"] == "authors_attention" and m["n pairs"] == 2 and m["diff (pp)"] == pytest.approx(-2.0)
    s = t.loc["specaug"]
    assert s["n pairs"] == 0 and math.isnan(s["diff (pp)"]) and s["lever UA (%)"] == pytest.approx(90.0)
    assert hf.levers_table(recs[:4]).empty
    # the reproduction table keeps the levers out (they have their own)
    assert set(hf.reproduction_table(recs)["experiment"]) == {"hf"}


def test_every_lever_is_also_paired_with_the_best_chosen_on_validation():
    def rec(arm, fold, ua, val):
        return {"kind": f"hf__{arm}", "identity": {"arm": arm}, "status": "ok", "corpus": {"name": "ravdess"},
                "split": {"protocol": "speaker_independent", "fold": fold}, "seed": 0,
                "metrics": {"ua": ua, "wa": ua, "val": {"ua": val}}}

    recs = [rec("lever-authors_attention", f, 0.40, 0.40) for f in range(3)]
    recs += [rec("lever-authors_attention+mixup", f, 0.45 + 0.01 * f, 0.50) for f in range(3)]  # best on validation
    recs += [rec("lever-authors_attention+long", f, 0.60, 0.45) for f in range(3)]  # best on test only
    recs += [rec("lever-authors_attention+specaug", f, 0.30, 0.90) for f in range(2)]  # two folds: not a candidate
    t = hf.levers_table(recs)
    best = t[t["against"] == "authors_attention+mixup (the best, chosen on validation)"].set_index("lever")
    assert set(best.index) == {"authors_attention+long", "authors_attention+specaug"}  # not itself, not its base
    assert best.loc["authors_attention+long", "diff (pp)"] == pytest.approx(14.0)
    assert best.loc["authors_attention+long", "lever better in"] == "3/3"
    assert best.loc["authors_attention+specaug", "n pairs"] == 2
    # the base is paired once, as the base (mixup against authors_attention), not again in reverse
    assert len(t[(t["lever"] == "authors_attention") & (t["against"].str.contains("mixup"))]) == 0


def test_speed_is_also_paired_with_its_same_steps_control():
    def rec(arm, fold, ua):
        return {"kind": f"hf__{arm}", "identity": {"arm": arm}, "status": "ok", "corpus": {"name": "ravdess"},
                "split": {"protocol": "speaker_independent", "fold": fold}, "seed": 0,
                "metrics": {"ua": ua, "wa": ua}}

    assert hf.lever_control("lever-authors_attention+speed") == "lever-authors_attention+repeat3"
    assert hf.lever_control("lever-authors_attention+mixup") == ""
    recs = [rec("lever-authors_attention", f, 0.40) for f in range(3)]
    recs += [rec("lever-authors_attention+speed", f, 0.50 + 0.01 * f) for f in range(3)]
    t = hf.levers_table(recs)
    assert list(t.loc[t["lever"] == "authors_attention+speed", "against"]) == ["authors_attention"]  # no control run
    recs += [rec("lever-authors_attention+repeat3", f, ua) for f, ua in enumerate((0.41, 0.43, 0.42))]
    t = hf.levers_table(recs)
    row = t[(t["lever"] == "authors_attention+speed") & (t["against"] == "authors_attention+repeat3")].iloc[0]
    assert row["n pairs"] == 3 and row["diff (pp)"] == pytest.approx(9.0) and row["lever better in"] == "3/3"
    assert len(t) == 4  # speed against its base and its control, repeat3 against its base, and the base


def test_a_lever_runs_end_to_end_on_the_synthetic_corpus(tmp_path):
    exps = hf.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent",), folds=(0,),
                          levers=("authors_attention+specaug",))
    assert [e.arm for e in exps] == ["", "lever-authors_attention+specaug"]
    recs = hf.run_study(exps, results_dir=tmp_path, backend="serial")
    assert all(r["status"] == "ok" for r in recs)
    lever = recs[1]
    assert lever["config"]["train"]["specaug_time_masks"] == 2
    assert lever["config"]["model_kwargs"]["attention"] == "head_fusion_code"
    t = hf.levers_table(recs)
    assert list(t["lever"]) == ["authors_attention+specaug"] and t.loc[0, "against"] == "authors_attention"
    assert t.loc[0, "n pairs"] == 0  # its base lever was not run


def test_levers_summary_says_whether_each_lever_helped():
    def rec(arm, fold, ua):
        return {"kind": "hf", "identity": {"arm": arm}, "status": "ok", "corpus": {"name": "ravdess"},
                "split": {"protocol": "speaker_independent", "fold": fold}, "seed": 0,
                "metrics": {"ua": ua, "wa": ua}}

    recs = [rec("", f, 0.40 + 0.02 * f) for f in range(4)]
    recs += [rec("lever-mixup", f, ua) for f, ua in enumerate((0.37, 0.40, 0.41, 0.44))]  # -3, -2, -3, -2
    recs += [rec("lever-long", 0, 0.5)]
    text = hf.levers_summary(recs)
    assert "**mixup** (ravdess): 40.5 UA over 4 runs on 4 folds" in text
    assert "-2.5 points" in text and "better in 0/4): it hurt." in text
    assert "**long**" in text and "no test" in text
    assert "No lever" in hf.levers_summary(recs[:4])


def test_noise_lever_adds_one_noisy_copy_and_keeps_val_and_test_clean(tmp_path):
    from serlib.noise_data import synthetic_types

    exps = hf.STUDY.build("synthetic", profile="quick", protocols=("speaker_independent",), folds=(0,),
                          levers=("authors_attention", "authors_attention+noise"))
    _, aa, noisy = exps
    assert noisy.view == "noisy_segments" and noisy.model_kwargs["attention"] == "head_fusion_code"
    (unit,) = noisy.view_kwargs["train"]
    assert unit["af"] == hf.NOISE_LEVER_AF and unit["types"] == sorted(synthetic_types())
    assert noisy.view_kwargs["source"] == {"kind": "synthetic"} and "test" not in noisy.view_kwargs
    recs = hf.run_study(exps, results_dir=tmp_path, backend="serial")
    assert all(r["status"] == "ok" for r in recs)
    n, c = recs[2]["counts"], recs[1]["counts"]
    assert n["segments"]["train"] == 2 * c["segments"]["train"]  # the clean part + one noisy copy
    assert n["segments"]["test"] == c["segments"]["test"] and "test" not in n["noise"]
    assert len(n["noise"]["train"]) == 1 and n["noise"]["train"][0]["snr_eq3_db"] is not None
    t = hf.levers_table(recs).set_index("lever")
    assert t.loc["authors_attention+noise", "against"] == "authors_attention"
