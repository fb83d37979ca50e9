"""The noise study (serlib.studies.noise, serlib.noise_data): end to end on the synthetic corpus with synthetic noise
(quick profile), stored conditions re-creating the noisy data exactly, disjoint train / test noise types for design c,
the noisy feature cache keyed by the condition, records referencing their conditions, evaluation-only robustness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from serlib import cache as feature_cache
from serlib.experiment import _spec, load_experiment_corpus, segment_features
from serlib.features import PRESETS
from serlib.noise import CATEGORIES, condition_hash, mix, read_condition, tile_noise
from serlib.noise_categories import categorize
from serlib.noise_data import (
    CONDITIONS_DIR,
    NoisyCorpus,
    condition_for,
    grid_specs,
    load_bank,
    robustness,
    synthetic_noise,
)
from serlib.studies import base
from serlib.studies import noise as ns

pytestmark = pytest.mark.usefixtures("one_thread")
SYN = {"kind": "synthetic"}


@pytest.fixture(scope="module")
def synthetic():
    return load_experiment_corpus("synthetic")


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("noise_results")
    records = base.run("noise", corpus="synthetic", profile="quick", protocols=["speaker_independent"],
                       results_dir=out)
    return out, records


def _hashes(record: dict) -> set[str]:
    noise = record["counts"]["noise"]
    hs = {u["condition"] for u in noise.get("train", []) if u["condition"] is not None}  # None: a clean copy
    hs |= {noise[k]["condition"] for k in ("val", "test") if k in noise}
    hs |= {m["condition"] for m in (record["metrics"].get("conditions") or {}).values() if m.get("condition")}
    return hs


# ------------------------------------------------------------------------------------------------ end to end
def test_quick_study_runs_every_design_end_to_end(study_run):
    out, records = study_run
    assert [r.get("status", "ok") for r in records] == ["ok"] * len(records)
    arms = {r["identity"]["arm"] for r in records}
    assert {a.split("_")[0] for a in arms} == set(ns.DESIGNS)
    a = next(r for r in records if r["identity"]["arm"] == "a")
    g = ns.GRIDS["quick"]
    expected = {f"{c}|af{af:g}|off{o:g}" for c in CATEGORIES for af in g["afs"] for o in g["offsets"]}
    expected |= {f"all|af{af:g}|off0" for af in g["e_afs"]}
    assert set(a["metrics"]["conditions"]) == expected
    for m in a["metrics"]["conditions"].values():
        assert 0.0 <= m["ua"] <= 1.0 and np.isfinite(m["snr_eq3_db"]) and np.isfinite(m["snr_power_db"])
    # a higher AF gives a lower SNR, the same utterances and clips otherwise (offset 0)
    for c in CATEGORIES:
        lo, hi = (a["metrics"]["conditions"][f"{c}|af{af:g}|off0"]["snr_eq3_db"] for af in g["afs"])
        assert hi == pytest.approx(lo - 20 * np.log10(g["afs"][1] / g["afs"][0]), abs=0.01)
    recs = ns.STUDY.records(out)
    assert len(recs) == len(records)
    for table in ns.STUDY.tables + ns.STUDY.tests:
        assert not table.fn(recs).empty, table.name
    fig8 = ns.fig8_table(recs)
    assert set(fig8["category"]) == set(CATEGORIES) | {"clean"}
    # design bc: k clean copies train on (k + 1) x the clean segments, and answer b's noisy tests beside b
    bc = next(r for r in records if r["identity"]["arm"] == "bc_u1")
    assert bc["counts"]["segments"]["train"] == 2 * a["counts"]["segments"]["train"]
    units = ns.units_table(recs)
    ctl = units[units["test"] == "noisy, control"]
    assert set(ctl["category"]) == set(ns.GRIDS["quick"]["b_categories"]) and set(ctl["units"]) == {1}
    claims = ns.claims_table(recs)
    assert claims["claim"].str.contains("b vs bc").any()
    assert ns.paired_table(recs)["comparison"].eq("1 noisy units vs 1 clean copies").any()
    # a second run finds every record and trains nothing
    again = base.run("noise", corpus="synthetic", profile="quick", protocols=["speaker_independent"],
                     results_dir=out)
    assert [r["_path"] for r in again] == [r["_path"] for r in records]


def test_records_reference_their_stored_conditions(study_run):
    out, records = study_run
    for r in records:
        assert r["config"]["view"] == "noisy_segments" and r["config"]["view_kwargs"]["source"] == SYN
        hashes = _hashes(r)
        if r["identity"]["arm"].startswith("bc_"):  # b's control: clean copies only, b's noisy tests
            assert all(u == {"condition": None, "clean_copy": True} for u in r["counts"]["noise"]["train"])
            assert "test" not in r["counts"]["noise"] and r["metrics"]["conditions"]
        elif r["identity"]["arm"] != "a":
            assert r["counts"]["noise"]["train"] and "test" in r["counts"]["noise"]
        assert hashes
        for h in hashes:
            rows = read_condition(out / CONDITIONS_DIR / f"{h}.json")
            assert condition_hash(rows) == h
        assert "stored" not in json.loads(Path(r["_path"]).read_text())


def test_stored_condition_recreates_the_noisy_audio_and_features_exactly(study_run, synthetic):
    out, records = study_run
    a = next(r for r in records if r["identity"]["arm"] == "a")
    h = a["metrics"]["conditions"]["C-S|af0.4|off1"]["condition"]
    rows = read_condition(out / CONDITIONS_DIR / f"{h}.json")
    bank = load_bank(SYN)
    nc = NoisyCorpus(synthetic, rows, bank)
    assert nc.hash == h
    waves, _ = nc.waveforms(16_000)
    from serlib.data.audio import load_audio

    for i in (0, len(nc) - 1):  # by hand: tile from the offset, scale by AF, add, rescale only above full scale
        r = nc.condition[i]
        speech = torch.from_numpy(load_audio(synthetic.abspath(int(nc.base_rows[i])), sr=16_000))
        noise = tile_noise(torch.from_numpy(bank.clips[r["noise"]]), len(speech), int(r["offset_s"] * 16_000))
        assert r["offset_s"] == 1.0 and r["af"] == 0.4
        expect = speech + 0.4 * noise
        expect = expect / max(1.0, float(expect.abs().max()))
        np.testing.assert_allclose(waves[i], expect.numpy(), atol=1e-6)
        ref, _ = mix(speech[None], noise[None], 0.4)
        np.testing.assert_array_equal(waves[i], ref[0].numpy())
    # the cached noisy features equal features rebuilt from the stored list
    preset = PRESETS["head_fusion_mfcc"]
    cached = segment_features(nc, preset, win_s=2.0, step_s=0.4, short="pad")
    fresh = segment_features(NoisyCorpus(synthetic, rows, bank), preset, win_s=2.0, step_s=0.4, short="pad",
                             refresh=True)
    np.testing.assert_array_equal(cached["x"], fresh["x"])
    np.testing.assert_array_equal(cached["groups"], fresh["groups"])


def test_type_split_design_keeps_train_and_test_noise_disjoint(study_run):
    out, records = study_run
    bank = load_bank(SYN)
    c = [r for r in records if r["identity"]["arm"].startswith("c_")]
    assert c
    for r in c:
        noise = r["counts"]["noise"]
        train_clips = {row["noise"] for u in noise["train"] + [noise["val"]]
                       for row in read_condition(out / CONDITIONS_DIR / f"{u['condition']}.json")}
        test_clips = {row["noise"] for row in read_condition(out / CONDITIONS_DIR /
                                                             f"{noise['test']['condition']}.json")}
        train_types = {bank.type_of[n] for n in train_clips}
        test_types = {bank.type_of[n] for n in test_clips}
        assert train_clips and test_clips and not train_types & test_types
        assert {bank.categories[t] for t in train_types | test_types} == {r["identity"]["arm"].split("_")[1]}
        vk = r["config"]["view_kwargs"]
        assert set(vk["noise_types"]["train"]).isdisjoint(vk["noise_types"]["test"])


# ------------------------------------------------------------------------------------------------ cache keys
def test_noisy_cache_key_changes_with_the_condition_and_clean_features_are_reused(synthetic, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path))
    bank = load_bank(SYN)
    preset = PRESETS["head_fusion_mfcc"]
    ids = list(synthetic.table["utt_id"][:6])
    types = bank.types("D-S")
    specs = [{"types": types, "af": 0.1, "offset_s": 0.0, "seed": 0},
             {"types": types, "af": 0.2, "offset_s": 0.0, "seed": 0},
             {"types": types, "af": 0.1, "offset_s": 1.0, "seed": 0},
             {"types": types, "af": 0.1, "offset_s": 0.0, "seed": 5}]
    keys = []
    for s in specs:
        nc = NoisyCorpus(synthetic, condition_for(s, ids, bank), bank)
        keys.append(feature_cache.cache_key(_spec(nc, preset, view="segments", win_s=2.0, step_s=0.4,
                                                  short="pad")))
    assert len(set(keys)) == len(keys)
    same = NoisyCorpus(synthetic, condition_for(specs[0], ids, bank), bank)
    assert feature_cache.cache_key(_spec(same, preset, view="segments", win_s=2.0, step_s=0.4,
                                         short="pad")) == keys[0]
    segment_features(same, preset, win_s=2.0, step_s=0.4, short="pad")
    assert {p.stem for p in tmp_path.glob("*.npz")} >= {keys[0]}
    clean_key = feature_cache.cache_key(_spec(synthetic, preset, view="segments", win_s=2.0, step_s=0.4,
                                              short="pad"))
    assert clean_key not in keys  # the clean corpus keeps its own cache entry, untouched by noise


# ------------------------------------------------------------------------------------------------ pieces
def test_synthetic_noise_is_deterministic_and_falls_in_its_category():
    clips, type_of, cats = synthetic_noise()
    again, _, _ = synthetic_noise()
    assert all(np.array_equal(clips[k], again[k]) for k in clips)
    assert set(cats.values()) == set(CATEGORIES)
    for nid, wave in clips.items():
        assert categorize(wave, 16_000, name=nid)["category"] == cats[type_of[nid]], nid


def test_design_arms_and_bad_input():
    arms = ns.design_arms(SYN, "full")
    assert len(arms["a"]["tests"]) == len(CATEGORIES) * len(ns.AFS) * len(ns.OFFSETS) + len(ns.ALL_TYPES_AFS)
    assert {f"b_{c}_u{k}" for c in CATEGORIES for k in ns.UNITS} <= set(arms)
    # b's noisy test is design a's condition of the same category at UNIT_AF, offset 0: a's run is b's k = 0
    for c in CATEGORIES:
        assert arms[f"b_{c}_u1"]["test"] == arms["a"]["tests"][f"{c}|af{ns.UNIT_AF:g}|off0"]
    # b's control: k clean copies (no noise in training), tested on b's noisy conditions
    for k in ns.UNITS:
        assert arms[f"bc_u{k}"]["train"] == [None] * k
        assert arms[f"bc_u{k}"]["tests"] == {f"{c}|af{ns.UNIT_AF:g}|off0": arms[f"b_{c}_u{k}"]["test"]
                                             for c in CATEGORIES}
    with pytest.raises(ValueError, match="unknown noise designs"):
        ns.experiments("synthetic", designs=("z",))
    bank = load_bank(SYN)
    with pytest.raises(ValueError, match="without a usable clip"):
        bank.pool(["no_such_type"])
    with pytest.raises(ValueError, match="noise source kind"):
        load_bank({"kind": "radio"})


def test_robustness_of_a_clean_model_from_its_checkpoint(synthetic, tmp_path):
    from serlib.studies import head_fusion as hf
    from serlib.studies.common import load_model, run_study

    exp = hf.speaker_independent_experiment("synthetic", profile="quick")
    exp = exp.replace(folds=(0,), train={**exp.train, "epochs": 1}, model_kwargs={**exp.model_kwargs, "n_head": 1,
                                                                                    "n_size": 4})
    rec = run_study([exp], results_dir=tmp_path / "r", checkpoint_root=tmp_path / "ck")[0]
    bank = load_bank(SYN)
    specs = grid_specs(bank, (0.1, 0.8), (0.0,), categories=("D-S", "C-L"))
    df = robustness(load_model(rec, tmp_path / "ck"), rec, synthetic, specs)
    assert list(df["condition"]) == list(specs)
    assert df["ua"].between(0, 1).all()
    for cat in ("D-S", "C-L"):
        part = df[df["category"] == cat].sort_values("af")
        assert part["snr_eq3_db"].is_monotonic_decreasing
    # AF 0: the "noisy" test part is the clean one, so the clean run's UA comes back exactly
    zero = robustness(load_model(rec, tmp_path / "ck"), rec, synthetic,
                      {"D-S|af0|off0": {"types": bank.types("D-S"), "af": 0.0, "offset_s": 0.0, "seed": 0}})
    assert float(zero["ua"].iloc[0]) == pytest.approx(rec["metrics"]["ua"], abs=1e-6)
    every = ns.model_robustness([rec], tmp_path / "ck", profile="quick")
    assert set(every["model"]) == {rec["kind"]} and "clean" in set(every["category"])


def test_esc50_noise_bank(esc50_root):
    bank = load_bank({"kind": "esc50", "root": str(esc50_root)})
    for c in CATEGORIES:
        assert bank.types(c) and bank.pool(bank.types(c))
    assert len(bank.clips) + len(bank.skipped) >= 50


def test_noise_silent_over_an_utterance_is_counted_not_fatal(synthetic, tmp_path, monkeypatch):
    """A discrete clip whose gap covers an utterance's whole window: the row stays clean (+inf SNR) and is counted."""
    from serlib.noise_data import NoiseBank

    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path))
    sr = 16_000
    gap = np.zeros(6 * sr, np.float32)
    gap[5 * sr:] = 0.3 * np.sin(np.arange(sr) / 5.0)  # silent for 5 s, longer than every synthetic utterance
    bank = NoiseBank({"kind": "test"}, {"gap_0": gap}, {"gap_0": "gap"}, {"gap": "D-S"}, sr)
    ids = list(synthetic.table["utt_id"][:3])
    nc = NoisyCorpus(synthetic, condition_for({"types": ["gap"], "af": 0.4, "offset_s": 0.0, "seed": 0}, ids, bank),
                     bank)
    waves, _ = nc.waveforms(sr)
    summary = nc.summary()
    assert summary["n_silent_noise"] == 3 and summary["snr_eq3_db"] is None
    from serlib.data.audio import load_audio

    np.testing.assert_array_equal(waves[0], load_audio(synthetic.abspath(int(nc.base_rows[0])), sr=sr))


def test_robustness_records_trace_their_run_and_reach_the_results(synthetic, tmp_path):
    """`serlib robustness RECORD --checkpoints ROOT` writes one record per run (embedding the run), skips it on a
    second call, and docs/RESULTS.md gets the every-model section from those records; runs are not double-counted."""
    import json

    from serlib import robustness as rb
    from serlib.cli import main
    from serlib.report import results_markdown
    from serlib.studies import head_fusion as hf
    from serlib.studies.common import load_records, run_study

    exp = hf.speaker_independent_experiment("synthetic", profile="quick")
    exp = exp.replace(folds=(0,), train={**exp.train, "epochs": 1}, model_kwargs={**exp.model_kwargs, "n_head": 1,
                                                                                    "n_size": 4})
    results = tmp_path / "results"
    rec = run_study([exp], results_dir=results, checkpoint_root=tmp_path / "ck")[0]
    argv = ["robustness", rec["_path"], "--checkpoints", str(tmp_path / "ck"), "--results", str(results),
            "--profile", "quick", "--offsets", "0"]
    assert main(argv) == 0
    (out,) = (results / rb.ROBUSTNESS_DIR).rglob("*.json")
    saved = json.loads(out.read_text())
    assert saved["run"]["config_hash"] == rec["config_hash"] and saved["run"]["metrics"] == rec["metrics"]
    assert saved["offsets"] == [0.0] and {r["offset_s"] for r in saved["rows"] if r["category"] != "clean"} == {0.0}
    clean = [r for r in saved["rows"] if r["category"] == "clean"]
    assert clean and clean[0]["ua"] == pytest.approx(rec["metrics"]["ua"])
    mtime = out.stat().st_mtime_ns
    assert main(argv) == 0 and out.stat().st_mtime_ns == mtime  # existing records are kept
    assert len(load_records(results)) == 1  # the robustness folder holds no runs
    table = rb.robustness_table(rb.load(results))
    assert list(table["model"]) == [rec["kind"]] and table["runs"].iloc[0] == 1
    by_af, shared = rb.by_af_table(rb.load(results))
    assert shared == [0] and list(by_af.columns) == [rec["kind"]] and by_af.index.is_monotonic_increasing
    stray = tmp_path / "stray.json"
    stray.write_text(Path(rec["_path"]).read_text())  # a run record outside any results folder
    with pytest.raises(FileNotFoundError, match="not a run record inside a results folder"):
        rb.write_records([stray], tmp_path / "ck", results_dir=tmp_path / "other")
    assert "## Noise robustness of every model" not in results_markdown(tmp_path / "nothing")


def test_robustness_of_a_dict_input_model(synthetic, tmp_path):
    """CA-SER's MFCC branch (dict inputs, its own view): evaluated under noise from its checkpoint, its inputs
    normalised with the run's own training-part statistics (AF 0 gives back the clean test UA exactly)."""
    from serlib.studies import ca_ser
    from serlib.studies.common import load_model, run_study

    (exp,) = [e for e in ca_ser.experiments("synthetic", profile="quick", protocols=("speaker_independent",))
              if e.arm == "mfcc"]
    exp = exp.replace(folds=(0,), train={**exp.train, "epochs": 1})
    rec = run_study([exp], results_dir=tmp_path / "r", checkpoint_root=tmp_path / "ck")[0]
    bank = load_bank(SYN)
    specs = {"D-S|af0|off0": {"types": bank.types("D-S"), "af": 0.0, "offset_s": 0.0, "seed": 0},
             **grid_specs(bank, (0.8,), (0.0,), categories=("C-L",))}
    df = robustness(load_model(rec, tmp_path / "ck"), rec, synthetic, specs)
    assert float(df["ua"].iloc[0]) == pytest.approx(rec["metrics"]["ua"], abs=1e-6)
    assert df["ua"].between(0, 1).all() and len(df) == 2


def test_the_authors_code_variant_is_its_own_experiment_and_its_own_table_rows(study_run):
    """``models``: the authors' attention trains under the same designs with its own names; tables never pool it with
    the paper's Eq. 1 (a ``model`` column), so a code-variant record moves only its own rows."""
    exps = ns.experiments("synthetic", profile="cpu", designs=("a", "b"), models=("head_fusion", "head_fusion_code"))
    code = [e for e in exps if e.model_kwargs["attention"] == "head_fusion_code"]
    paper = [e for e in exps if e.model_kwargs["attention"] == "head_fusion"]
    assert len(code) == len(paper) > 0
    assert all(e.name.endswith("_code_cpu") for e in code) and not any("_code" in e.name for e in paper)
    assert {e.arm for e in code} == {e.arm for e in paper}
    with pytest.raises(ValueError, match="unknown noise models"):
        ns.experiments("synthetic", models=("head_fusion_v2",))
    _, records = study_run
    twins = []
    for r in records:
        t = json.loads(json.dumps({k: v for k, v in r.items() if k != "_path"}))
        t["config"]["model_kwargs"]["attention"] = "head_fusion_code"
        t["metrics"]["ua"] = 0.0
        for m in (t["metrics"].get("conditions") or {}).values():
            m["ua"] = 0.0
        twins.append(t)
    alone, both = ns.fig8_table(records), ns.fig8_table(records + twins)
    assert set(both["model"]) == {"head_fusion", "head_fusion_code"}
    mine = both[both["model"] == "head_fusion"].reset_index(drop=True)
    assert mine["UA mean (%)"].tolist() == alone["UA mean (%)"].tolist()
    assert (both.loc[both["model"] == "head_fusion_code", "UA mean (%)"] == 0.0).all()
    claims = ns.claims_table(records + twins)
    assert set(claims["model"]) == {"head_fusion", "head_fusion_code"}
    assert list(claims.columns[:3]) == ["corpus", "protocol", "model"]
    # another protocol's runs get their own claim rows and leave these unchanged
    other = []
    for r in twins:
        t = json.loads(json.dumps(r))
        t["split"]["protocol"] = "random_80_20"
        other.append(t)
    three = ns.claims_table(records + twins + other)
    assert set(three["protocol"]) == {"speaker_independent", "random_80_20"}
    cols = ["model", "claim", "ours", "n runs"]
    si = three[three["protocol"] == "speaker_independent"].reset_index(drop=True)
    assert si[cols].equals(claims[cols])


def test_levels_explain_the_eq3_snr_of_a_mixture(synthetic):
    """Eq. 3's SNR is the speech level minus the noise level minus 20 log10(AF) (known answers), the active-frame
    level leaves silence out, and the levels table's SNR column is that difference of its median levels."""
    from serlib.noise import mix
    from serlib.noise_data import active_mean_abs_db, levels_table, mean_abs_db

    assert mean_abs_db(np.full(100, 0.1)) == pytest.approx(-20.0)
    assert mean_abs_db(np.array([0.5, -0.5])) == pytest.approx(20 * np.log10(0.5))
    sr = 16_000
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr)
    padded = np.concatenate([np.zeros(sr), tone, np.zeros(sr)])
    assert mean_abs_db(padded) == pytest.approx(mean_abs_db(tone) - 20 * np.log10(3), abs=1e-6)
    assert active_mean_abs_db(padded, sr) == pytest.approx(mean_abs_db(tone), abs=0.05)
    rng = np.random.default_rng(0)
    noise = rng.uniform(-0.2, 0.2, sr)
    _, info = mix(torch.tensor(tone, dtype=torch.float32)[None], torch.tensor(noise, dtype=torch.float32)[None], 0.1)
    assert float(info["snr_eq3_db"][0]) == pytest.approx(mean_abs_db(tone) - mean_abs_db(noise) + 20, abs=1e-3)
    bank = load_bank(SYN)
    t = levels_table(synthetic, bank)
    assert list(t["source"]) == ["speech", "speech", *sorted(set(bank.categories.values()))]
    noisy = t[t["source"] != "speech"]
    speech = t.loc[0, "level median (dB)"]
    assert np.allclose(noisy["Eq. 3 SNR at AF 0.1 (dB)"], speech - noisy["level median (dB)"] + 20)
    assert (t.loc[1, "level median (dB)"] >= t.loc[0, "level median (dB)"] - 1e-9)  # active frames are not quieter


def test_status_rows_never_pool_two_experiments(study_run):
    """README's status: the paper's attention and the authors' code under design a are two rows, each its own runs."""
    _, records = study_run
    a = [r for r in records if r["identity"]["arm"] == "a"]
    twin = json.loads(json.dumps({k: v for k, v in a[0].items() if k != "_path"}))
    twin["kind"], twin["metrics"]["ua"] = twin["kind"].replace("noise_si_a", "noise_si_a_code"), 0.0
    rows = ns.STUDY.status(a + [twin])
    assert len(rows) == 2 and {r["paper"] for r in rows} == {f"{ns.STUDY.title} ({r['kind']})" for r in a + [twin]}
    assert any(r["our UA (%)"].startswith("0.0 (1 runs)") for r in rows)
    assert ns.STUDY.status(a)[0]["paper"] == ns.STUDY.title  # one experiment: the title alone
    # once a cell holds two experiments, a third on another protocol is named too (no unnamed row beside them)
    third = json.loads(json.dumps(twin))
    third["kind"], third["split"]["protocol"] = "noise_paper_a_code", "random_80_20"
    rows = ns.STUDY.status(a + [twin, third])
    assert len(rows) == 3 and all(r["paper"].startswith(f"{ns.STUDY.title} (noise_") for r in rows)


def test_reproduce_summary_of_designs_without_a_is_a_table_with_rows(study_run):
    """`serlib reproduce noise --designs b ...` prints the first table that covers its runs, not an empty fig. 8."""
    _, records = study_run
    no_a = [r for r in records if r["identity"]["arm"] != "a"]
    assert ns.fig8_table(no_a).empty  # the study's first table needs design a
    table = base.summary(ns.STUDY, no_a)
    assert len(table) and "units" in table.columns  # Fig. 9's table, from design b
    assert base.summary(ns.STUDY, []).empty
