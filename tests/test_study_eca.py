"""ECA-CNN study: paper configs, grid builders, STFT augmentation views (no train/test leak), grid runner (write +
skip), train_and_keep == run_one, Fig. 14 channel weights, ablation table / paired tests, timing projection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from serlib.experiment import build_views, experiment_record_path, record_path_of, run_one
from serlib.models.registry import build_model
from serlib.studies import eca

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic():
    return eca.corpus_for(eca.paper_experiment("synthetic", profile="quick"))


def _tiny(**kw):
    """1-s inputs (101 frames), k = 1, 1 epoch, fold 0, seed 0: a couple of seconds on one core."""
    return eca.paper_experiment("synthetic", profile="quick", fixed_s=1.0, train={"epochs": 1}, **kw)


def _n_params(exp, n_classes=4):
    model, _ = build_model(exp.model, n_classes=n_classes, n_features=64, **exp.model_kwargs)
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------- configs
def test_paper_experiment_matches_paper():
    exp = eca.paper_experiment()
    assert exp.corpus == "ravdess" and exp.view == "fixed" and exp.fixed_s == 6.0
    assert exp.features == "eca_v3" and exp.augment_features == ()
    assert exp.protocol == "random_kfold5" and exp.protocol_kwargs == {"val_frac": 0.1}
    assert exp.model == "eca_cnn"
    assert exp.model_kwargs == {"channel_pattern": "doubling", "scale": 4, "eca_layers": (5, 6), "eca_kernel": 7,
                                "eca_variant": "paper"}
    t = exp.train
    assert (t["optimizer"], t["batch_size"], t["epochs"], t["select"]) == ("adam", 32, 150, "val")
    assert exp.loss == "weighted_focal" and exp.loss_kwargs == {"gamma": 2.0}
    assert exp.seeds == (0, 1, 2, 3, 4) and exp.folds is None and exp.name == "eca_paper_val"
    # our ECA after blocks 5 and 6 with kernel 7 adds exactly 7 + 7 parameters to the CNN
    assert _n_params(exp) - _n_params(eca.cnn(exp)) == 14

    last = eca.paper_experiment(selection="last", version=8, augment=(7, 6))
    assert last.protocol_kwargs == {} and last.train["select"] == "last" and last.name != exp.name
    assert last.features == "eca_v8" and last.augment_features == ("eca_v7", "eca_v6")
    quick = eca.paper_experiment(profile="quick")
    assert quick.fixed_s < 6 and quick.model_kwargs["scale"] == 1 and quick.train["epochs"] < 10
    assert quick.folds == (0,) and quick.seeds == (0,)
    over = eca.paper_experiment(train={"epochs": 7}, seeds=[1, 2], scale=2)
    assert over.train["epochs"] == 7 and over.train["batch_size"] == 32 and over.seeds == (1, 2)
    assert over.model_kwargs["scale"] == 2
    for bad in ({"selection": "best"}, {"profile": "fast"}, {"version": 9}):
        with pytest.raises(ValueError):
            eca.paper_experiment(**bad)


def test_speaker_independent_experiment():
    si = eca.speaker_independent_experiment(version=8, scale=2)
    assert si.protocol == "speaker_independent" and si.protocol_kwargs == {} and si.train["select"] == "val"
    assert si.features == "eca_v8" and si.model_kwargs["scale"] == 2 and si.name == "eca_speaker_independent"


def test_variants_and_original_eca():
    base = eca.paper_experiment()
    orig = eca.original_eca(base)
    assert orig.model_kwargs["eca_layers"] == (1, 2, 3, 4, 5, 6) and orig.model_kwargs["eca_variant"] == "original"
    assert orig.model_kwargs["eca_kernel"] is None  # adaptive per layer
    assert eca.cnn(base).model_kwargs["eca_layers"] == ()
    assert eca.placement_layers(1) == (6,) and eca.placement_layers(2) == (5, 6)
    assert eca.placement_layers(6) == (1, 2, 3, 4, 5, 6)


# ----------------------------------------------------------------------------------------------------- grids
def test_grid_sizes_and_names():
    base = eca.paper_experiment()
    g = eca.grid_k_version(eca.cnn(base))
    assert len(g) == 64 and len({e.name for e in g}) == 64
    assert {(e.model_kwargs["scale"], e.features) for e in g} == {(k, f"eca_v{v}") for k in range(1, 9)
                                                                   for v in range(1, 9)}
    assert all(e.model_kwargs["eca_layers"] == () for e in g)

    p = eca.grid_eca_placement(base)
    assert len(p) == 6 * 4 + 2 and len({e.name for e in p}) == len(p)
    assert all(e.features == "eca_v8" for e in p)  # the paper ran these on version 8
    ours = [e for e in p if e.model_kwargs["eca_variant"] == "paper" and e.model_kwargs["eca_layers"]]
    assert {e.model_kwargs["eca_layers"] for e in ours} == {eca.placement_layers(n) for n in range(1, 7)}
    assert {e.model_kwargs["eca_kernel"] for e in ours} == {3, 5, 7, 9}

    v = eca.grid_eca_version(base)
    assert len(v) == 8 * (4 + 2) and len({e.name for e in v}) == len(v)

    for direction in ("ascending", "descending"):
        a = eca.augmentation_experiments(base, direction)
        assert len(a) == 8 and len({e.name for e in a}) == 8
        assert [len(e.augment_features) + 1 for e in a] == list(range(1, 9))
    asc = eca.augmentation_experiments(base, "ascending")
    assert asc[2].features == "eca_v1" and asc[2].augment_features == ("eca_v2", "eca_v3")
    desc = eca.augmentation_experiments(base, "descending")
    assert desc[2].features == "eca_v8" and desc[2].augment_features == ("eca_v7", "eca_v6")
    assert eca.augmentation_versions("descending", 8) == (8, [8, 7, 6, 5, 4, 3, 2, 1])
    both = eca.augmentation_experiments(eca.cnn(base), "ascending") + asc
    assert len({e.name for e in both}) == 16  # the CNN's and our ECA's runs are told apart by name
    with pytest.raises(ValueError):
        eca.augmentation_experiments(base, "sideways")

    abl = eca.ablation_experiments(base)
    assert [e.name.rsplit("__abl-", 1)[1] for e in abl] == [s for s, _ in eca.ABLATION_STEPS]
    mk = [e.model_kwargs for e in abl]
    assert [m["eca_layers"] for m in mk] == [(), (1, 2, 3, 4, 5, 6), (5, 6), (), (5, 6)]
    assert [len(e.augment_features) for e in abl] == [0, 0, 0, 7, 7]
    assert all(e.features == "eca_v8" for e in abl)


# ------------------------------------------------------------------------------------------- augmentation views
def test_augmentation_never_puts_test_versions_in_train(synthetic):
    exp = eca.augmentation_experiments(_tiny(), "descending", n_versions=[3])[0]
    split = eca.split_for(exp, synthetic, 0)
    views = build_views(exp, synthetic, split)
    tr, te = views.train.groups.numpy(), views.test.groups.numpy()
    va = views.val.groups.numpy()
    assert not set(tr) & set(te) and not set(tr) & set(va) and not set(va) & set(te)
    n_utts = views.counts["utterances"]["train"]
    assert len(tr) == 3 * n_utts and views.counts["augment_copies"] == 3
    assert np.all(np.bincount(tr)[np.unique(tr)] == 3)  # every training utterance exactly 3 times
    assert len(te) == len(np.unique(te)) == views.counts["utterances"]["test"]  # test: one version, once
    # the three copies of an utterance are different STFT versions, not duplicates
    rows = np.flatnonzero(tr == tr[0])
    assert not torch.allclose(views.train.x[rows[0]], views.train.x[rows[1]])


# ----------------------------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def grid_run(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("eca_results")
    exp = _tiny()
    torch.set_num_threads(1)
    return exp, out, eca.run_grid([exp], out, backend="serial")


def test_run_grid_writes_and_skips(grid_run, synthetic):
    exp, out, recs = grid_run
    assert len(recs) == 1 and recs[0]["status"] == "ok"
    path = experiment_record_path(exp, synthetic, eca.split_for(exp, synthetic, 0), 0, out)
    rec = json.loads(path.read_text())
    assert rec["kind"] == exp.name and rec["config"]["model_kwargs"]["eca_layers"] == [5, 6]
    assert rec["split"]["protocol"] == "random_kfold5" and 0 <= rec["metrics"]["ua"] <= 1
    assert rec["extra"]["n_parameters"] == _n_params(exp)
    again = eca.run_grid([exp], out, backend="serial")
    assert again[0]["created"] == rec["created"] and json.loads(path.read_text()) == rec  # loaded, not re-run
    # the path follows from the record alone, and names one run whatever seeds / folds the experiment enumerated
    assert record_path_of(rec, out) == path
    wider = exp.replace(seeds=(7, 0, 3), folds=None)
    assert experiment_record_path(wider, synthetic, eca.split_for(exp, synthetic, 0), 0, out) == path
    assert experiment_record_path(wider, synthetic, eca.split_for(exp, synthetic, 0), 7, out) != path
    again = eca.run_grid([exp.replace(seeds=(0, 1))], out, backend="serial")
    assert again[0]["created"] == rec["created"] and len(again) == 2  # seed 0 loaded, seed 1 run
    tab = eca.config_table(recs)
    assert tab.loc[0, "eca_layers"] == "56" and tab.loc[0, "n runs"] == 1
    assert tab.loc[0, "model"] == "our ECA 56 k7"
    with pytest.raises(ValueError, match="both named"):
        eca.run_grid([exp, eca.cnn(exp)], out, backend="serial")


def test_train_and_keep_matches_run_one_and_channel_weights(grid_run, synthetic, tmp_path):
    exp, _, recs = grid_run
    split = eca.split_for(exp, synthetic, 0)
    rec, model, views = eca.train_and_keep(exp, synthetic, split, 0, results_dir=tmp_path)
    assert rec["metrics"]["confusion"] == recs[0]["metrics"]["confusion"]
    assert math.isclose(rec["metrics"]["ua"], recs[0]["metrics"]["ua"], abs_tol=1e-6)
    assert Path(rec["_path"]).exists() and Path(rec["_path"]).is_relative_to(tmp_path)
    w = eca.channel_weights_by_emotion(model, views, layers=(5, 6))
    assert set(w) == {5, 6}
    for layer, arr in w.items():
        assert arr.shape == (len(synthetic.labels), model.config.channels[layer - 1])
        assert np.all((arr > 0) & (arr < 1))
    with pytest.raises(ValueError):
        eca.channel_weights_by_emotion(model, views, layers=(4,))
    # per-item weights average to the per-emotion means; the effect table has one row per layer
    per_item = eca.channel_weights_per_item(model, views.test.x, (5, 6))
    y = views.test.y.numpy()
    for layer in (5, 6):
        for c in np.unique(y):
            np.testing.assert_allclose(per_item[layer][y == c].mean(0), w[layer][c], rtol=1e-5, atol=1e-6)
    eff = eca.channel_weight_effects(model, views, (5, 6)).set_index("layer")
    assert list(eff.index) == [5, 6] and (eff["items"] == len(y)).all()
    assert ((0 <= eff["median eta^2"]) & (eff["median eta^2"] <= eff["max eta^2"]) & (eff["max eta^2"] <= 1)).all()


def test_channel_weight_effects_finds_an_emotion_effect_it_is_given():
    """Stub model whose layer-6 weights depend on the label and layer-5 weights do not: the table must say so."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    y = torch.as_tensor(np.repeat(np.arange(4), 30))
    x = torch.zeros(len(y), 2, 3)
    x[:, 0, 0] = y.float()
    x[:, 1] = torch.as_tensor(rng.normal(size=(len(y), 3)), dtype=torch.float32)

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, xb):
            label, noise = xb[:, 0, 0], xb[:, 1]
            return None, {"eca_weights": {5: torch.sigmoid(noise), 6: torch.sigmoid(label[:, None] + 0.1 * noise)}}

    views = SimpleNamespace(test=SimpleNamespace(x=x, y=y))
    eff = eca.channel_weight_effects(Stub(), views, (5, 6)).set_index("layer")
    assert eff.loc[6, "channels p < 0.01 Bonferroni (%)"] == 100 and eff.loc[6, "median eta^2"] > 0.9
    assert eff.loc[5, "channels p < 0.01 Bonferroni (%)"] == 0 and eff.loc[5, "median eta^2"] < 0.2


def test_train_and_keep_equals_run_one_without_results_dir(synthetic):
    exp = _tiny(eca_layers=())
    split = eca.split_for(exp, synthetic, 0)
    rec, _, _ = eca.train_and_keep(exp, synthetic, split, 1)
    ref = run_one(exp, synthetic, split, 1, results_dir=None)
    assert rec["metrics"]["confusion"] == ref["metrics"]["confusion"] and "_path" not in rec


# ----------------------------------------------------------------------------------------------------- tables
def _fake(step, seed, fold, ua, wa=None, base="b"):
    return {"kind": f"{base}__abl-{step}", "corpus": {"name": "ravdess"},
            "identity": {"experiment": f"{base}__abl-{step}", "study": "eca", "profile": "cpu", "arm": step},
            "split": {"protocol": "random_kfold5", "fold": fold}, "seed": seed,
            "metrics": {"ua": ua, "wa": ua if wa is None else wa}, "config": {}}


def test_ablation_table_and_paired_tests():
    recs = []
    for i, (seed, fold) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]):
        recs.append(_fake("cnn", seed, fold, 0.50 + 0.01 * i))
        recs.append(_fake("our_eca", seed, fold, 0.52 + 0.01 * i + 0.002 * (i % 2)))
    recs.append(_fake("stft_aug", 0, 0, 0.6))  # one run: no test possible
    recs.append({"status": "error", "error": "x"})
    tab = eca.ablation_table(recs)
    assert list(tab["model"]) == ["CNN", "+ our ECA", "+ STFT augmentation"]
    cnn_row = tab.iloc[0]
    assert math.isclose(cnn_row["UA mean (%)"], 52.5) and cnn_row["n runs"] == 6
    assert math.isclose(cnn_row["UA std (%)"], float(np.std(np.arange(6), ddof=1)))
    assert cnn_row["paper UA (%, quoted)"] == 79.16
    tests = eca.ablation_tests(recs).set_index("comparison")
    ours = tests.loc["+ our ECA vs CNN"]
    assert ours["n pairs"] == 6 and math.isclose(ours["mean diff (pp)"], 2.1, abs_tol=1e-9)
    assert ours["p (paired t)"] < 1e-3 and ours["p (Wilcoxon)"] is not None
    assert tests.loc["+ STFT augmentation vs CNN", "n pairs"] == 1
    assert math.isnan(tests.loc["+ STFT augmentation vs CNN", "mean diff (pp)"])
    assert "+ our ECA vs original ECA" not in tests.index  # no original-ECA runs


def test_ablation_tests_compare_the_two_ecas_and_eca_on_top_of_augmentation():
    recs = []
    for seed in range(4):
        recs += [_fake("original_eca", seed, 0, 0.40 + 0.01 * seed), _fake("our_eca", seed, 0, 0.45 + 0.01 * seed),
                 _fake("stft_aug", seed, 0, 0.50 + 0.02 * seed), _fake("our_eca_stft_aug", seed, 0, 0.49 + 0.02 * seed)]
    tests = eca.ablation_tests(recs).set_index("comparison")
    assert math.isclose(tests.loc["+ our ECA vs original ECA", "mean diff (pp)"], 5.0, abs_tol=1e-9)
    assert tests.loc["+ our ECA vs original ECA", "a better in"] == "4/4"
    recs += [_fake("cnn_matched_steps", seed, 0, 0.48 + 0.02 * seed) for seed in range(4)]
    tests = eca.ablation_tests(recs).set_index("comparison")
    ctl = tests.loc["+ STFT augmentation vs CNN, as many steps as + STFT augmentation"]
    assert math.isclose(ctl["mean diff (pp)"], 2.0, abs_tol=1e-9) and ctl["a better in"] == "4/4"
    tab = eca.ablation_table(recs).set_index("model")
    assert math.isnan(tab.loc["CNN, as many steps as + STFT augmentation", "paper UA (%, quoted)"])
    both = tests.loc["+ our ECA + STFT augmentation vs STFT augmentation"]
    assert math.isclose(both["mean diff (pp)"], -1.0, abs_tol=1e-9) and both["a better in"] == "0/4"


def test_speed_arm_joins_the_ablation_table_and_pairs_with_the_matched_steps_cnn():
    """Issue 16's speed-perturbed CNN (named ``<base>__speed-cnn_speedwide``, no paper figure) is a row of the
    ablation table with the folds it covers, and is paired run by run with the matched-steps CNN (same steps) and
    with STFT augmentation."""
    recs = []
    for fold in range(3):
        recs.append(_fake("cnn_matched_steps", 0, fold, 0.50 + 0.01 * fold))
        r = _fake("cnn_matched_steps", 0, fold, 0.53 + 0.02 * fold)
        r["kind"] = r["identity"]["experiment"] = f"b__{eca.SPEED_ARM}"
        r["identity"]["arm"] = eca.SPEED_ARM
        recs.append(r)
    recs.append(_fake("stft_aug", 0, 0, 0.55))
    tab = eca.ablation_table(recs).set_index("model")
    label = dict(eca.SPEED_STEPS)[eca.SPEED_ARM]
    assert list(tab.index) == ["+ STFT augmentation", "CNN, as many steps as + STFT augmentation", label]
    assert tab.loc[label, "base"] == "b" and tab.loc[label, "folds"] == "0 1 2" and tab.loc[label, "n runs"] == 3
    assert tab.loc["+ STFT augmentation", "folds"] == "0"
    assert math.isnan(tab.loc[label, "paper UA (%, quoted)"])
    tests = eca.ablation_tests(recs).set_index("comparison")
    row = tests.loc[f"{label} vs CNN, as many steps as + STFT augmentation"]
    assert row["n pairs"] == 3 and math.isclose(row["mean diff (pp)"], 4.0, abs_tol=1e-9) and row["a better in"] == "3/3"
    assert tests.loc[f"{label} vs STFT augmentation", "n pairs"] == 1
    exps = eca.reproduction_experiments("ravdess", profile="cpu", parts=("speed",))
    assert [(e.protocol, e.arm, e.view, e.train["epochs"]) for e in exps] == [
        ("speaker_independent", eca.SPEED_ARM, "speed_fixed", 12)]  # 30 epochs x 2 versions / 5 copies
    assert eca.reproduction_experiments("ravdess", profile="cpu", protocols=("paper",), parts=("speed",)) == []


def test_paper_reference_is_quoted():
    ref = eca.paper_reference().set_index("key")
    assert ref.loc["cnn", "UA (%)"] == 79.16 and ref.loc["our_eca_stft_aug", "UA (%)"] == 80.28
    assert ref.loc["our_eca", "WA (%)"] == 79.68
    assert ref["source"].str.contains("quoted").all()


def test_conv_macs_and_grid_timing(grid_run):
    # conv MACs checked against forward hooks on the real model
    from serlib.models.eca_cnn import ECACNN, ECACNNConfig

    model = ECACNN(ECACNNConfig(scale=2, eca_layers=()))
    macs = []
    hooks = [m.register_forward_hook(lambda mod, i, o: macs.append(o.numel() * mod.in_channels * 9))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    model(torch.zeros(1, 64, 601))
    for h in hooks:
        h.remove()
    assert eca.conv_macs(2, n_features=64, n_frames=601) == sum(macs)
    assert eca.conv_macs(4) > 3 * eca.conv_macs(2)

    _, _, recs = grid_run
    per_config, proj = eca.grid_timing(recs, n_seeds=5)
    assert len(per_config) == 1 and per_config.loc[0, "epoch_s"] > 0
    assert list(proj["k"]) == list(range(1, 9)) and len(proj) == 8
    assert proj.loc[0, "basis"] == "measured at this k" and (proj["basis"] == "rate of k = 1").sum() == 7
    assert (proj["runs"] == 8 * 5 * 5).all() and proj["one run (h)"].is_monotonic_increasing
    assert math.isclose(proj.attrs["total_h"], proj["all versions x folds x seeds (h)"].sum())
    # the GPU column follows from the conv FLOPs and the stated throughput alone
    k4 = proj.set_index("k").loc[4]
    flops = 3 * 2 * k4["conv GMAC / example"] * 1e9 * per_config.loc[0, "n_train"] * eca.PAPER_TRAIN["epochs"]
    assert math.isclose(k4["one GPU, all (h, assumed)"], flops * k4["runs"] / (eca.GPU_TFLOPS_ASSUMED * 1e12) / 3600)
    assert "assumed" in proj.attrs["gpu_assumption"]
    _, half = eca.grid_timing(recs, n_seeds=5, gpu_tflops=2 * eca.GPU_TFLOPS_ASSUMED)
    assert math.isclose(half.attrs["total_gpu_h"], proj.attrs["total_gpu_h"] / 2)


def test_timing_basis_prefers_the_grid_slice_then_the_paper_protocols_plain_cnn():
    def rec(kind, k, protocol="random_kfold5"):
        arm = kind.split("__abl-")[1] if "__abl-" in kind else kind.split("__")[1]
        return {"kind": kind, "split": {"protocol": protocol}, "metrics": {"ua": 0.5},
                "identity": {"experiment": kind, "arm": arm}, "config": {"model_kwargs": {"scale": k}}}

    abl = [rec("b__abl-cnn", 1), rec("b__abl-our_eca", 1), rec("si__abl-cnn", 1, "speaker_independent")]
    recs, label = eca.timing_basis(abl + [{"status": "error"}])
    assert recs == [abl[0]] and "k = 1 only" in label
    grid = [rec("b__cnn_k2_v8", 2), rec("b__cnn_k4_v8", 4)]
    recs, label = eca.timing_basis(abl + grid)
    assert recs == grid and label == "grid slice"
    assert eca.timing_basis([abl[1], abl[2]]) == ([], "no timing records")


def test_grid_slice_and_reproduction_parts():
    exps = eca.reproduction_experiments("ravdess", profile="cpu", parts=("grid_slice",))
    assert [(e.model_kwargs["scale"], e.features) for e in exps] == [(k, f"eca_v{v}") for k, v in eca.GRID_SLICE]
    assert all(e.model_kwargs["eca_layers"] == () and e.seeds == (0,) and e.name.startswith("eca_paper_val_cpu__")
               for e in exps)
    both = eca.reproduction_experiments("ravdess", profile="cpu", protocols=("paper",), parts=("ablation", "grid_slice"))
    assert len(both) == len(eca.ALL_STEPS) + len(eca.GRID_SLICE)
    with pytest.raises(ValueError, match="parts"):
        eca.reproduction_experiments("ravdess", parts=("grids",))
