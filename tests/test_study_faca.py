"""MHSA-FACA study: paper configs, a quick synthetic run writing records (and its checkpointed model), tables and
paired tests on known records, and the peak-alignment measure against hand-made attention."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from serlib.experiment import corpus_waveforms, load_experiment_corpus
from serlib.models.cldnn_attention import CLDNNAttention, CLDNNAttentionConfig
from serlib.studies import faca
from serlib.train import ArrayData

TINY_MODEL = {"lstm_hidden": 8, "lstm_layers": 1, "conv_channels": 8, "fc_hidden": 8}


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------- configs
def test_paper_experiment_matches_paper():
    for v in faca.VARIANTS:
        exp = faca.paper_experiment(v)
        assert exp.corpus == "ravdess" and exp.protocol == "kfold5_3_1_1" and exp.folds is None
        assert exp.features == "faca_mfcc" and exp.view == "sequence"
        assert exp.model == "cldnn_attention" and exp.model_kwargs == {"attention": v}
        t = exp.train
        assert (t["optimizer"], t["lr"], t["batch_size"], t["epochs"], t["select"]) == ("adam", 3e-4, 128, 100, "val")
        assert t["scheduler"] is None and exp.name == f"faca_paper_{v}"
    cfg = CLDNNAttentionConfig()  # the defaults the paper experiment relies on
    assert (cfg.conv_channels, cfg.kernel, cfg.pool, cfg.lstm_hidden, cfg.lstm_layers, cfg.n_heads) == (
        64, 3, 2, 256, 2, 8)
    assert faca.paper_experiment(corpus="iemocap").protocol == "kfold10_8_1_1"
    si = faca.speaker_independent_experiment("fa")
    assert si.protocol == "speaker_independent" and si.model_kwargs["attention"] == "fa" and si.name != "faca_paper_fa"
    quick = faca.paper_experiment("faca", "synthetic", profile="quick")
    assert quick.seeds == (0,) and quick.folds == (0, 1) and quick.train["epochs"] < 20
    assert quick.model_kwargs["lstm_hidden"] < 256 and quick.model_kwargs["attention"] == "faca"
    over = faca.paper_experiment("bmhsa", train={"epochs": 3}, seeds=[5])
    assert over.train["epochs"] == 3 and over.train["lr"] == 3e-4 and over.seeds == (5,)
    with pytest.raises(ValueError):
        faca.paper_experiment("mhsa")
    with pytest.raises(ValueError):
        faca.paper_experiment("faca", profile="fast")
    ref = faca.paper_reference()
    row = ref[(ref.corpus == "ravdess") & (ref.model == "MHSA-FACA")].iloc[0]
    assert (row["UA (%)"], row["WA (%)"]) == (82.47, 82.85) and "quoted" in row["source"]


# ----------------------------------------------------------------------------------------------------- quick run
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    corpus = load_experiment_corpus("synthetic")
    out = tmp_path_factory.mktemp("faca")
    exp = faca.paper_experiment("faca", "synthetic", profile="quick", folds=(0,), train={"epochs": 1},
                                model_kwargs=TINY_MODEL)
    records = faca.run_study(exp, results_dir=out / "results", corpus=corpus, checkpoint_root=out / "ckpt")
    torch.set_num_threads(n)
    return corpus, out, exp, records


def test_quick_run_writes_records_and_model(quick_run):
    corpus, out, exp, records = quick_run
    assert len(records) == 1
    path = Path(records[0]["_path"])
    assert path.is_file() and path.is_relative_to(out / "results")
    rec = json.loads(path.read_text())
    assert rec["kind"] == "faca_paper_faca" and rec["split"]["protocol"] == "kfold5_3_1_1"
    assert rec["config"]["model_resolved"]["attention"] == "faca" and 0 <= rec["metrics"]["ua"] <= 1
    model = faca.load_model(records[0], out / "ckpt")
    assert isinstance(model, CLDNNAttention) and not model.training
    data = faca.eval_view(records[0], corpus)
    assert len(data) == rec["counts"]["utterances"]["test"]
    # the restored model reproduces the recorded test UA
    from serlib.experiment import utterance_scores

    with torch.no_grad():
        logits = model(data.x, data.lengths)[0]
    assert utterance_scores(corpus.labels)(logits, data)["ua"] == pytest.approx(rec["metrics"]["ua"], abs=1e-6)
    # a second call finds the record and does not train again
    again = faca.run_study(exp, results_dir=out / "results", corpus=corpus)
    assert again[0]["created"] == records[0]["created"]


def _fake_records(base: dict, values: dict[str, list[float]]) -> list[dict]:
    """Copies of a real record with the variant, seed / fold and UA / WA replaced."""
    out = []
    for variant, uas in values.items():
        for k, ua in enumerate(uas):
            r = copy.deepcopy(base)
            r.pop("_path", None)
            r["config"]["model_kwargs"]["attention"] = variant
            r["identity"] = {**r["identity"], "arm": variant}
            r["seed"], r["split"]["fold"] = k // 2, k % 2
            r["metrics"]["ua"], r["metrics"]["wa"] = ua, ua + 0.01
            out.append(r)
    return out


def test_variants_table_and_ablation_tests_on_known_records(quick_run):
    base = quick_run[3][0]
    recs = _fake_records(base, {"bmhsa": [0.50, 0.52, 0.54, 0.56], "fa": [0.51, 0.54, 0.55, 0.59],
                                "faca": [0.52, 0.53, 0.56, 0.58]})
    table = faca.variants_table(recs)
    assert list(table["model"]) == ["BMHSA", "MHSA-FA", "MHSA-FACA"]
    bm = table.iloc[0]
    assert bm["UA mean (%)"] == pytest.approx(53.0) and bm["n runs"] == 4
    assert bm["UA std (%)"] == pytest.approx(100 * np.std([0.50, 0.52, 0.54, 0.56], ddof=1))
    assert bm["WA mean (%)"] == pytest.approx(54.0)
    tests = faca.ablation_tests(recs).set_index("comparison")
    fa_bm = tests.loc["MHSA-FA - BMHSA"]
    assert fa_bm["n pairs"] == 4 and fa_bm["mean diff (pp)"] == pytest.approx(1.75)
    assert fa_bm["a better in"] == "4/4" and 0 < fa_bm["p (paired t)"] < 0.05
    assert tests.loc["MHSA-FACA - MHSA-FA", "mean diff (pp)"] == pytest.approx(0.0, abs=1e-9)
    one = faca.ablation_tests(_fake_records(base, {"bmhsa": [0.5], "fa": [0.6]}))
    assert one.iloc[0]["n pairs"] == 1 and "p (paired t)" not in one.columns
    # the summary in words: FA's gain is significant, CA's (+0.00) is not
    text = faca.summary_markdown(recs)
    assert f"MHSA-FACA UA **{table.iloc[2]['UA mean (%)']:.2f} ± {table.iloc[2]['UA std (%)']:.2f} %**" in text
    fa_line, ca_line = [ln for ln in text.splitlines() if ln.startswith("- ")]
    assert fa_line.startswith("- MHSA-FA - BMHSA: +1.75 points") and "significant at 0.05." in fa_line
    assert ca_line.startswith("- MHSA-FACA - MHSA-FA: ") and "p = 1)" in ca_line and "not a significant gain" in ca_line
    assert ("short" in text) == (base["corpus"]["name"] == "ravdess")


# ----------------------------------------------------------------------------------------------------- peaks
def test_segments_and_peak_frames():
    assert faca.segment_starts(49).size == 0
    assert list(faca.segment_starts(80)) == [0, 10, 20, 30]
    wave = np.zeros(100 * 160, np.float32)
    wave[37 * 160 + 5] = -1.0  # the peak is in frame 37 (by |amplitude|)
    peaks = faca.segment_peak_frames(wave, np.array([0, 10, 30]))
    assert list(peaks) == [37, 27, 7]


def test_hand_made_attention_at_the_peak_scores_one():
    rng = np.random.default_rng(0)
    S, H, T = 20, 8, 12
    peak_keys = rng.integers(0, T, S)
    attn = torch.rand(S, H, T, T) * 0.01
    attn[torch.arange(S), :, :, torch.as_tensor(peak_keys)] = 1.0  # every query looks at the peak's key
    keys = faca.attended_keys(attn)
    assert torch.equal(keys, torch.as_tensor(peak_keys)[:, None].expand(S, H))
    r = faca.peak_hit_rate(keys, peak_keys, T, tol=0)
    assert r["fraction"] == 1.0 and np.all(r["per_head"] == 1.0) and r["chance"] == pytest.approx(1 / T)
    far = faca.peak_hit_rate((peak_keys[:, None] + 6) % T * np.ones((1, H), int), peak_keys, T, tol=1)
    assert far["fraction"] == 0.0
    # attention beyond a segment's valid length is never chosen
    masked = torch.zeros(1, 1, 4, 4)
    masked[0, 0, :, 3] = 5.0
    assert int(faca.attended_keys(masked, torch.tensor([3]))[0, 0]) in (0, 1, 2)


class _PeakModel(nn.Module):
    """Stub: attends (one-hot, every head and query) to the pooled frame where feature 0 is largest."""

    n_heads, pool = 2, 4

    def forward(self, x, lengths=None):
        B, _, T = x.shape
        Tp = T // self.pool
        key = (x[:, 0].argmax(-1) // self.pool).clamp(max=Tp - 1)
        attn = torch.zeros(B, self.n_heads, Tp, Tp)
        attn[torch.arange(B), :, :, key] = 1.0
        return torch.zeros(B, 2), {"attn": attn, "lengths": torch.full((B,), Tp)}


def _peaky_items(n: int, rng, hop: int = 160):
    waves, feats, lengths = [], [], []
    for _ in range(n):
        T = int(rng.integers(60, 140))
        w = rng.normal(0, 0.05, T * hop).astype(np.float32)
        w[rng.integers(0, len(w), 6)] = rng.choice([-1, 1], 6) * rng.uniform(0.5, 1.0, 6)
        env = np.abs(w).reshape(T, hop).max(1)  # frame envelope: feature 0
        f = np.zeros((3, T), np.float32)
        f[0] = env
        waves.append(w)
        feats.append(f)
        lengths.append(T)
    x = torch.zeros(n, 3, max(lengths))
    for i, f in enumerate(feats):
        x[i, :, : f.shape[1]] = torch.as_tensor(f)
    return waves, ArrayData(x=x, y=torch.zeros(n, dtype=torch.long), lengths=torch.as_tensor(lengths))


def test_peak_alignment_end_to_end_with_a_peak_following_model():
    waves, data = _peaky_items(5, np.random.default_rng(1))
    r = faca.peak_alignment(_PeakModel(), data, waves, tol=0)
    assert r["fraction"] == 1.0 and r["n_segments"] == sum(len(faca.segment_starts(int(n))) for n in data.lengths)
    assert 0 < r["chance"] < 0.2


def test_peak_alignment_is_a_fraction_for_each_variant():
    torch.manual_seed(0)
    waves, data = _peaky_items(3, np.random.default_rng(2))
    data.x = torch.randn_like(data.x) * (torch.arange(data.x.shape[-1]) < data.lengths[:, None])[:, None]
    models = {v: CLDNNAttention(CLDNNAttentionConfig(n_classes=2, n_features=3, attention=v, **TINY_MODEL)).eval()
              for v in faca.VARIANTS}
    table = faca.peak_alignment_table(models, data, waves, tols=(0, 1))
    assert list(table["model"]) == ["BMHSA", "BMHSA", "MHSA-FA", "MHSA-FA", "MHSA-FACA", "MHSA-FACA"]
    assert table["peak hit rate (%)"].between(0, 100).all() and table["chance (%)"].between(0, 100).all()
    assert (table["heads"] == 8).all()
    d = faca.figure2_data(models, data, waves[0], 0)
    assert set(d["maps"]) == set(faca.VARIANTS) and d["maps"]["fa"].shape == (2, 12, 12)
    assert 0 <= d["peak_key"] < 12 and set(d["calibration"]) == {"faca"}
    with pytest.raises(ValueError):
        faca.peak_alignment(models["fa"], data, waves[:2])


def test_real_waveforms_line_up_with_the_test_view(quick_run):
    corpus, _, _, records = quick_run
    data = faca.eval_view(records[0], corpus)
    waves, _ = corpus_waveforms(corpus)
    for i in (0, len(data) - 1):  # centred 10-ms frames cover the waveform: T = 1 + n_samples // 160
        assert int(data.lengths[i]) == 1 + len(waves[int(data.groups[i])]) // 160


def test_training_curves_table_finds_where_the_validation_loss_turns():
    def hist(losses, uas):
        return [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "val": {"loss": loss, "ua": ua, "score": ua}}
                for i, (loss, ua) in enumerate(zip(losses, uas))]

    rec = {"kind": "faca_paper_faca", "status": "ok", "identity": {"arm": "faca", "profile": "full"}, "seed": 0,
           "split": {"protocol": "kfold5_3_1_1", "fold": 0}, "metrics": {"ua": 0.55, "wa": 0.56},
           "extra": {"best_epoch": 4}, "history": hist([1.5, 1.2, 1.1, 1.3, 1.6], [0.3, 0.4, 0.5, 0.6, 0.55])}
    cpu = {**rec, "identity": {"arm": "faca", "profile": "cpu"}}
    t = faca.training_curves_table([rec, cpu])
    assert len(t) == 1  # the full profile only, by default
    row = t.iloc[0]
    assert row["model"] == "MHSA-FACA" and row["epochs"] == 5 and row["selected epoch"] == 4
    assert row["lowest val loss epoch"] == 3 and row["val loss lowest"] == 1.1 and row["val loss last"] == 1.6
    assert row["val UA there (%)"] == pytest.approx(50.0)  # what early stopping on the loss would keep
    assert row["val UA at selected (%)"] == pytest.approx(60.0) and row["test UA (%)"] == pytest.approx(55.0)
    assert row["train loss last"] == pytest.approx(0.2)
    assert len(faca.training_curves_table([rec, cpu], profiles=None)) == 2
    assert faca.training_curves_table([cpu]).empty
