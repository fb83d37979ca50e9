"""MOMA study: paper config (IEM4 on IEMOCAP, speaker-independent fallback), a quick synthetic run writing records,
attention vectors, and the smoothing table's known answers (uniform attention = maximum entropy, zero variation)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from serlib.experiment import load_experiment_corpus
from serlib.models.moma import MOMA, MOMAConfig
from serlib.studies import moma
from serlib.train import ArrayData

TINY_MODEL = {"lstm_hidden": 8, "lstm_layers": 1, "context": 4, "proj_dim": 8}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_experiment_matches_paper():
    exp = moma.paper_experiment()
    assert exp.corpus == "iemocap" and exp.protocol == "session5_test" and exp.protocol_kwargs == {}
    assert exp.features == "moma_fbank23" and exp.view == "sequence" and exp.model == "moma"
    t = exp.train
    assert (t["optimizer"], t["lr"], t["scheduler"], t["plateau_patience"], t["plateau_factor"]) == (
        "adam", 1e-4, "plateau", 4, 0.1)
    assert t["select"] == "last"  # IEM4 has no validation part
    cfg = MOMAConfig()
    assert (cfg.n_features, cfg.lstm_hidden, cfg.lstm_layers, cfg.context, cfg.n_views, cfg.proj_dim) == (
        23, 512, 2, 128, 3, 1024)
    assert "session 5" in moma.protocol_note("iemocap")
    other = moma.paper_experiment("ravdess")
    assert other.protocol == "speaker_independent" and other.train["select"] == "val" and other.name != exp.name
    assert other.train["lr"] == 1e-4 and "speaker-independent" in moma.protocol_note("ravdess")
    si = moma.speaker_independent_experiment("iemocap")
    assert si.protocol == "speaker_independent" and si.train["select"] == "val"
    quick = moma.paper_experiment("synthetic", profile="quick")
    assert quick.seeds == (0,) and quick.folds == (0,) and quick.model_kwargs["lstm_hidden"] < 512
    with pytest.raises(ValueError):
        moma.paper_experiment(profile="slow")
    ref = moma.paper_reference().iloc[0]
    assert (ref["UA (%)"], ref["WA (%)"]) == (80.5, 74.8) and "quoted" in ref["source"]


def test_smoothing_summary_known_answers():
    T, B = 10, 3
    uniform = torch.full((B, T), 1 / T)
    one_hot = torch.zeros(B, T)
    one_hot[:, 4] = 1.0
    table = moma.smoothing_summary(one_hot, uniform).set_index("attention")
    l1, l2 = table.loc["layer 1"], table.loc["layer 2 (mixture)"]
    assert l2["entropy mean"] == pytest.approx(math.log(T)) and l2["norm. entropy mean"] == pytest.approx(1.0)
    assert l2["total variation mean"] == pytest.approx(0.0, abs=1e-7)
    assert l1["entropy mean"] == pytest.approx(0.0, abs=1e-7) and l1["total variation mean"] == pytest.approx(2.0)
    assert l2["flatter than layer 1 (entropy, %)"] == 100 and l2["smoother than layer 1 (TV, %)"] == 100
    # lengths: uniform over the valid frames only is still maximal; unnormalised mixtures compare fairly
    lengths = torch.tensor([10, 6, 3])
    valid = (torch.arange(T)[None] < lengths[:, None]).float()
    table = moma.smoothing_summary(one_hot * 0 + valid / lengths[:, None], 2.5 * valid, lengths,
                                   views=torch.stack([valid, valid], 1)).set_index("attention")
    assert table.loc["layer 2 (mixture)", "norm. entropy mean"] == pytest.approx(1.0)
    assert table.loc["layer 1", "entropy mean"] == pytest.approx(float(torch.log(lengths.float()).mean()))
    assert "layer 2 view 2" in table.index and table.loc["layer 2 view 1", "total variation mean"] == pytest.approx(0)


def test_attention_vectors_and_smoothing_table_on_a_model():
    torch.manual_seed(0)
    model = MOMA(MOMAConfig(n_classes=3, n_features=5, **TINY_MODEL))
    lengths = torch.tensor([30, 17, 24])
    x = torch.randn(3, 5, 30) * (torch.arange(30) < lengths[:, None])[:, None]
    data = ArrayData(x=x, y=torch.tensor([0, 1, 2]), lengths=lengths, groups=torch.tensor([7, 8, 9]))
    v = moma.attention_vectors(model, data, 1)
    assert v["length"] == 17 and v["attn1"].shape == (17,) and v["views"].shape == (3, 17)
    assert v["attn1"].sum() == pytest.approx(1.0, abs=1e-5) and v["gammas"].shape == (3,)
    assert v["attn2"] == pytest.approx((v["gammas"][:, None] * v["views"]).sum(0), abs=1e-6)
    assert v["group"] == 8 and v["label"] == 1 and 0 <= v["pred"] < 3
    assert model.training  # restored
    table = moma.smoothing_table(model, data)
    assert list(table["attention"][:2]) == ["layer 1", "layer 2 (mixture)"] and len(table) == 5
    assert table["norm. entropy mean"].between(0, 1 + 1e-6).all() and table["n"].eq(3).all()
    assert table.attrs["paired_test_norm_entropy_l2_minus_l1"]["n"] == 3 and len(table.attrs["gammas"]) == 3


def test_quick_run_writes_records(tmp_path):
    corpus = load_experiment_corpus("synthetic")
    exp = moma.paper_experiment("synthetic", profile="quick", train={"epochs": 1}, model_kwargs=TINY_MODEL)
    records = moma.run_study(exp, results_dir=tmp_path / "results", corpus=corpus, checkpoint_root=tmp_path / "ck")
    assert len(records) == 1
    rec = json.loads(Path(records[0]["_path"]).read_text())
    assert rec["kind"] == "moma_paper_si" and rec["split"]["protocol"] == "speaker_independent"
    assert rec["config"]["train"]["scheduler"] == "plateau" and 0 <= rec["metrics"]["ua"] <= 1
    table = moma.results_table(records)
    assert table.iloc[0]["n runs"] == 1 and table.iloc[0]["UA mean (%)"] == pytest.approx(100 * rec["metrics"]["ua"])
    model = moma.load_model(records[0], tmp_path / "ck")
    data = moma.eval_view(records[0], corpus)
    assert moma.smoothing_table(model, data)["n"].eq(len(data)).all()
