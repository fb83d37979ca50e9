"""The CA-SER study: `serlib reproduce ca_ser` end to end with a tiny saved (random) wav2vec 2.0, its records marked
and kept out of every table, the MFCC-only fallback without weights, and the speaker-correct CV-10 folds."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from mini_iemocap import make_mini_iemocap

from serlib.cli import main
from serlib.data.splits import make_splits
from serlib.models.ca_ser import CODE_AUX_ALPHA
from serlib.studies import ca_ser
from serlib.studies.base import ConfigError, get_study, parse_overrides

transformers = pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ca_ser.save_random_wav2vec2(tmp_path_factory.mktemp("w2v2") / "tiny")


@pytest.fixture(scope="module")
def quick_run(tiny, tmp_path_factory):
    """`python -m serlib reproduce ca_ser --corpus synthetic --w2v2 TINY --profile quick`, checkpoints kept."""
    out = tmp_path_factory.mktemp("ca_ser")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # (module scope: the one_thread fixture is not active yet)
    rc = main(["reproduce", "ca_ser", "--corpus", "synthetic", "--w2v2", str(tiny), "--profile", "quick",
               "--results", str(out / "results"), "--save-model", str(out / "ckpt")])
    torch.set_num_threads(n)
    assert rc == 0
    return out


def _records(results: Path) -> list[dict]:
    """Every record under ``results`` (random-weight ones included), its split's ids restored."""
    from serlib.records import inflate_split

    return [inflate_split(json.loads(p.read_text()), results) for p in sorted(results.rglob("*.json"))
            if "splits" not in p.relative_to(results).parts]


def test_reproduce_quick_end_to_end_with_a_tiny_saved_model(quick_run, tiny):
    recs = _records(quick_run / "results")
    arms = sorted((r["identity"]["arm"], r["split"]["protocol"]) for r in recs)
    assert arms == sorted((a, p) for a in ca_ser.ARMS for p in ("loso_speaker", "speaker_independent"))
    for r in recs:
        view = r["config"]["view_kwargs"]
        assert r["identity"]["study"] == "ca_ser" and r["identity"]["profile"] == "quick"
        assert r["config"]["model_resolved"]["branch"] == r["identity"]["arm"]
        if r["identity"]["arm"] == "mfcc":  # the MFCC branch does not depend on any wav2vec 2.0 weights
            assert view == {}
        else:  # the random model is named as such: its hash and pretrained=false travel with the record
            assert view["pretrained"] is False and len(view["weights_hash"]) == 16 and view["w2v2"] == str(tiny)
            assert view["layer"] == 3  # tiny has 3 blocks: the paper's 9 does not exist, the last is used
            assert r["config"]["model_resolved"]["w2v2_dim"] == 32
        assert 0 <= r["metrics"]["ua"] <= 1
        # model selection on the validation speakers, never on the evaluated fold
        assert r["selection"] == "val" and not set(r["split"]["val"]) & set(r["split"]["test"])
    # random-weight runs never reach a table, README's status or docs/RESULTS.md
    study = get_study("ca_ser")
    owned = study.records(quick_run / "results")
    assert {r["identity"]["arm"] for r in owned} == {"mfcc"}
    table = ca_ser.ablation_table(owned)
    assert set(table["arm"]) == {"mfcc"} and set(table["weights"]) == {"none"}
    shown = ca_ser.ablation_table([{**r, "status": "ok"} for r in recs], include_random=True)
    assert set(shown.loc[shown["arm"] != "mfcc", "weights"]) == {"RANDOM (meaningless)"}
    # the main arm (fusion) has no pretrained record: the status rows are the MFCC branch's, named as such
    rows = study.status(owned)
    assert rows and all(r["paper"].endswith("MFCC branch only (no pretrained wav2vec 2.0 here)") for r in rows)


def test_fusion_record_states_alpha_and_the_other_arms_set_none(quick_run):
    for r in _records(quick_run / "results"):
        cfg = r["config"]
        if r["identity"]["arm"] == "fusion":  # the auxiliary MFCC-branch loss, in the loss and model configs alike
            assert cfg["loss_kwargs"]["alpha"] == cfg["model_resolved"]["aux_alpha"] == CODE_AUX_ALPHA
        else:
            assert "alpha" not in cfg["loss_kwargs"] and "aux_alpha" not in cfg["model_kwargs"]


def test_loss_alpha_and_model_aux_alpha_are_one_setting(tiny, monkeypatch):
    monkeypatch.setattr(ca_ser, "_SAID", set())  # its notes are said once per process: not used up here
    from serlib.experiment import _make_loss
    from serlib.losses import AuxiliaryLoss, WeightedFocalLoss
    from serlib.train import ArrayData

    train = ArrayData(x=torch.zeros(2, 1), y=torch.tensor([0, 1]))

    def build(*argv):
        exps = get_study("ca_ser").build("synthetic", profile="quick", protocols=("speaker_independent",),
                                         overrides=parse_overrides(list(argv)), w2v2=str(tiny))
        return {e.arm: e for e in exps}

    for argv in ([], ["--loss.alpha", "0.2"], ["--model.aux_alpha", "0.2"],
                 ["--loss.alpha", "0.2", "--model.aux_alpha", "0.20"]):
        exps = build(*argv)
        fusion, want = exps["fusion"], 0.2 if argv else CODE_AUX_ALPHA
        assert fusion.loss_kwargs["alpha"] == want and fusion.model_kwargs.get("aux_alpha", CODE_AUX_ALPHA) == want
        loss = _make_loss(fusion, train, 4)
        assert isinstance(loss, AuxiliaryLoss) and loss.alpha == want and loss.base.gamma == 0.5
        for arm in ("mfcc", "w2v2"):  # no auxiliary head there: no alpha, and a plain focal loss
            assert "alpha" not in exps[arm].loss_kwargs and "aux_alpha" not in exps[arm].model_kwargs
            assert isinstance(_make_loss(exps[arm], train, 4), WeightedFocalLoss)
    assert isinstance(_make_loss(build("--loss.alpha", "0")["fusion"], train, 4), WeightedFocalLoss)
    exps = build("--model.focal_gamma", "1")
    assert all(e.loss_kwargs["gamma"] == 1.0 and e.model_kwargs["focal_gamma"] == 1.0 for e in exps.values())
    with pytest.raises(ConfigError, match="one setting"):
        build("--loss.alpha", "0.2", "--model.aux_alpha", "0.3")
    with pytest.raises(ConfigError, match="unknown field"):
        build("--loss.alhpa", "0.2")
    with pytest.raises(ConfigError, match="expected float"):
        build("--loss.alpha", "much")


def test_committed_mfcc_records_keep_their_configuration_and_paths(monkeypatch):
    """The auxiliary loss changes nothing for the MFCC-branch arm (it has no auxiliary head): the experiments built
    now have the committed records' configuration, so those records stay valid at their paths."""
    monkeypatch.setattr(ca_ser, "_SAID", set())
    from serlib.experiment import run_config
    from serlib.records import record_path

    paths = sorted((REPO / "results").glob("ca_ser_*__mfcc_cpu/**/*_seed*_fold*.json"))
    if not paths:
        pytest.skip("no committed CA-SER MFCC-branch records")
    for p in paths:
        r = json.loads(p.read_text())
        exps = {e.name: e for e in get_study("ca_ser").build(r["corpus"]["name"], r["config"]["data_root"],
                                                             profile=r["identity"]["profile"])}
        e = exps[r["kind"]]
        assert run_config(e.to_dict()) == run_config(r["config"]) and "alpha" not in e.loss_kwargs
        assert record_path(REPO / "results", e.name, {"corpus": r["corpus"]["name"], "protocol": e.protocol,
                                                     "config": run_config(e.to_dict()), "seed": r["seed"],
                                                     "fold": r["split"]["fold"]}) == p


def test_layer_sweep_part(quick_run, tiny):
    rc = main(["reproduce", "ca_ser", "--corpus", "synthetic", "--w2v2", str(tiny), "--profile", "quick",
               "--protocols", "speaker_independent", "--parts", "layer_sweep", "--results",
               str(quick_run / "sweep")])
    assert rc == 0
    recs = _records(quick_run / "sweep")
    assert sorted(r["config"]["view_kwargs"]["layer"] for r in recs) == [0, 1, 2, 3]
    assert all(r["identity"]["arm"] == f"probe_l{r['config']['view_kwargs']['layer']}" for r in recs)
    assert ca_ser.layer_sweep_table([{**r, "status": "ok"} for r in recs]).empty  # random: not shown
    sweep = ca_ser.layer_sweep_table([{**r, "status": "ok"} for r in recs], include_random=True)
    assert sorted(sweep["layer"]) == [0, 1, 2, 3]


def test_without_weights_only_the_mfcc_branch_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ca_ser, "_SAID", set())  # notes are said once per process; other tests may have said them
    exps = ca_ser.experiments("synthetic", profile="quick")
    assert [e.arm for e in exps] == ["mfcc", "mfcc"]
    assert "no wav2vec 2.0 weights given" in capsys.readouterr().err
    exps = ca_ser.experiments("synthetic", profile="quick", w2v2=str(tmp_path / "missing"))
    assert [e.arm for e in exps] == ["mfcc", "mfcc"]
    err = capsys.readouterr().err
    assert "weights unavailable" in err and "folder" in err
    with pytest.raises(ValueError, match="parts must be among"):
        ca_ser.experiments("synthetic", parts=("nope",))


def test_pretrained_flag_and_layer_option(tmp_path, tiny):
    from serlib.ssl import load_ssl

    unmarked = tmp_path / "unmarked"
    transformers.Wav2Vec2Model.from_pretrained(tiny).save_pretrained(unmarked)  # no marker, but far too small
    assert not ca_ser.is_pretrained(load_ssl(unmarked, device="cpu"))
    s = ca_ser.w2v2_settings(str(tiny), 1)
    assert s["layer"] == 1 and s["pretrained"] is False
    with pytest.raises(ValueError, match="has layers 0..3"):
        ca_ser.w2v2_settings(str(tiny), 5)
    with pytest.raises(SystemExit):  # --layer is an integer option, checked by the CLI before any work
        main(["reproduce", "ca_ser", "--corpus", "synthetic", "--layer", "nine", "--results", str(tmp_path)])
    exps = ca_ser.experiments("synthetic", profile="cpu", w2v2=str(tiny), layer=2)
    assert all(e.name.endswith("_cpu") and e.seeds == (0,) for e in exps)
    assert {e.view_kwargs.get("layer") for e in exps} == {None, 2}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return str(make_mini_iemocap(tmp_path_factory.mktemp("iemocap"), sessions=(1, 2, 3, 4, 5), missing_wavs=(),
                                 duration=1.0))


def _iemocap(release):
    from serlib.experiment import load_experiment_corpus

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 50 utterances, not the release's 5531
        return load_experiment_corpus("iemocap", release, label_set="4class_exc_merged")


def test_cv10_folds_are_speaker_correct_on_the_iemocap_tree(release):
    corpus = _iemocap(release)
    t = corpus.table
    # the speaker is session + gender of the utterance's last token, not the dialog prefix
    assert set(t["speaker"]) == {f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"}
    assert (t.loc[t["utt_id"].str.contains("_impro01_M"), "speaker"].str.endswith("M")).all()
    splits = make_splits("loso_speaker", corpus)
    assert len(splits) == 10
    spk = t["speaker"].astype(str).to_numpy()
    seen: dict[str, int] = {}
    for sp in splits:
        tr, va, te = (set(spk[i]) for i in sp.indices(corpus))
        assert len(te) == 1 and len(va) == 1 and not (tr & va) and not (tr & te) and not (va & te)
        (test_speaker,) = te
        assert test_speaker not in seen, f"speaker {test_speaker} is the test part of folds {seen[test_speaker]} " \
                                         f"and {sp.fold}"
        seen[test_speaker] = sp.fold
        assert sp.meta["speaker_independent"]
    assert sorted(seen) == sorted(set(spk))  # every speaker is evaluated exactly once
    cv5 = make_splits("loso_session", corpus)
    assert len(cv5) == 5 and all(len({s[:5] for s in spk[sp.indices(corpus)[2]]}) == 1 for sp in cv5)


def test_iemocap_paper_protocols_end_to_end(release, tmp_path):
    exps = ca_ser.experiments("iemocap", release, profile="quick", protocols=("paper",))
    assert [(e.name, e.protocol) for e in exps] == [("ca_ser_cv5_session__mfcc", "loso_session"),
                                                   ("ca_ser_cv10_speaker__mfcc", "loso_speaker")]
    assert all(e.corpus_kwargs == {"label_set": "4class_exc_merged"} for e in exps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rc = main(["reproduce", "ca_ser", "--corpus", "iemocap", "--data-root", release, "--profile", "quick",
                   "--protocols", "paper", "--results", str(tmp_path / "results")])
    assert rc == 0
    recs = _records(tmp_path / "results")
    assert sorted(r["split"]["protocol"] for r in recs) == ["loso_session", "loso_speaker"]
    for r in recs:
        assert r["corpus"]["labels"] == ["neutral", "happy", "sad", "angry"]
        assert r["counts"]["utterances"]["test"] > 0 and np.isfinite(r["metrics"]["ua"])
