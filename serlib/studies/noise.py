"""Noise robustness (the Head Fusion paper's second half; Xu, Zhang, Zhang 2021, Figs. 4 and 8-10, Table 8) as a
study: Head Fusion trained and tested with ESC-50 noise (synthetic noise on the synthetic corpus) mixed into the
waveforms before the features (:mod:`serlib.noise_data`, view ``noisy_segments``).

Designs (experiment names ``noise_<protocol>_<arm>``; every noisy condition's clip list is stored once under the
results folder's ``splits/noise_conditions/<hash>.json`` and referenced from the record):

* **a** (Fig. 8): train clean, test under every category x AF x offset of the profile's grid (full: AF {0.1, 0.2,
  0.4, 0.8} x offsets {0, 1, 2, 4} s), plus noise of all types at AF 0.1 and 0.5 (Table 8's conditions); one
  training per (seed, fold), every condition evaluated by the run (``metrics["conditions"]``). The paper's Fig. 4(a)
  also trains on noisy data of one type; here that is design b.
* **b** (Figs. 4(b), 9(a,b)): 1 clean unit (the training part) + k noisy units (k = 1..4 noisy copies of the
  training part, each with its own draw of clips) of one category at AF ``UNIT_AF``; tested on that category's noise
  (the same condition as design a's ``<cat>|af<UNIT_AF>|off0``, so a's run is b's k = 0) and clean.
* **bc** (ours, b's control): 1 clean unit + k clean copies of it, so as many training steps as b's k noisy units
  without their noise; tested clean and on b's noisy conditions. b's lift over k = 0 mixes two effects (noise seen
  in training and k + 1 times the steps); b minus bc at the same k is the noise's share.
* **c** (Figs. 4(c), 9(c,d)): as b with ``UNITS_CD`` noisy units, but the category's types split 80/20
  (:func:`serlib.noise.split_noise_types`) between training and test noise: test noise types never seen in training.
* **d** (Figs. 4(d), 10): ``UNITS_CD`` noisy units of one category; tested on every category (and clean).
* **e** (Table 8): ``UNITS_CD`` noisy units of noise from all types at AF 0.1 / 0.5; tested on the same and clean;
  design a gives the clean-trained model's figures for the same conditions.

``UNIT_AF`` and ``UNITS_CD`` are our choices (the paper's text does not fix them for every figure). Validation
(model selection) uses the training noise (a fresh draw), never the test noise. Paired tests run over (seed, fold).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from serlib import report
from serlib.experiment import Experiment
from serlib.noise import CATEGORIES, split_noise_types
from serlib.noise_data import default_source, parse_condition_name
from serlib.studies.base import Profile, Study, Table

DESIGNS = ("a", "b", "bc", "c", "d", "e")
AFS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
OFFSETS: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
UNITS: tuple[int, ...] = (1, 2, 3, 4)
UNIT_AF = 0.4
UNITS_CD = 3
ALL_TYPES_AFS: tuple[float, ...] = (0.1, 0.5)
TEST_SEED, VAL_SEED = 0, 1000

PROFILES: dict[str, Profile] = {
    "quick": Profile(train={"epochs": 1}, model={"n_head": 1, "n_size": 4}, n_seeds=1, folds=(0,)),
    # what this project's RAVDESS records were measured with on a shared 2-core CPU: the paper's model and training
    # cut to 5 epochs, speaker-independent fold 0, seed 0 only, 1 torch thread, 1 job
    "cpu": Profile(train={"epochs": 5}, seeds=(0,), folds=(0,), suffix="_cpu"),
    "full": Profile(seeds=(0, 1, 2)),
}
# the conditions each profile runs (quick: a few, so that CI and notebook 06 stay within minutes)
GRIDS: dict[str, dict] = {
    "quick": {"afs": (0.1, 0.4), "offsets": (0.0, 1.0), "b_categories": ("D-S", "C-L"), "units": (1,),
              "c_categories": ("C-L",), "d_categories": ("D-S",), "e_afs": (0.5,)},
    "cpu": {"afs": AFS, "offsets": OFFSETS, "b_categories": CATEGORIES, "units": UNITS,
            "c_categories": CATEGORIES, "d_categories": CATEGORIES, "e_afs": ALL_TYPES_AFS},
}
GRIDS["full"] = GRIDS["cpu"]
PROTOCOL_TAG = {"speaker_independent": "si", "paper": "paper"}
# the Head Fusion attentions the designs can train, and the experiment-name tag of each
MODELS: dict[str, str] = {"head_fusion": "", "head_fusion_code": "_code"}


def source_types(source: dict) -> dict[str, str]:
    """``{noise type: category}`` of a noise source, without reading its audio."""
    if source["kind"] == "synthetic":
        from serlib.noise_data import synthetic_types

        return synthetic_types()
    from serlib.noise_categories import load_categories

    return load_categories(source.get("categories"))


def spec(types, af: float, offset_s: float = 0.0, seed: int = TEST_SEED) -> dict:
    return {"types": sorted(types), "af": float(af), "offset_s": float(offset_s), "seed": int(seed)}


def _units(types, k: int, af: float) -> list[dict]:
    return [spec(types, af, 0.0, seed=1 + j) for j in range(k)]


def design_arms(source: dict, profile: str = "full", designs: Sequence[str] = DESIGNS) -> dict[str, dict]:
    """``{arm: view_kwargs}`` of the designs (see the module docstring) for the profile's grid."""
    g, cats = GRIDS[profile], source_types(source)
    by_cat = {c: sorted(t for t, cc in cats.items() if cc == c) for c in CATEGORIES}
    every = sorted(cats)
    out: dict[str, dict] = {}
    if "a" in designs:
        tests = {f"{c}|af{af:g}|off{o:g}": spec(by_cat[c], af, o) for c in CATEGORIES for af in g["afs"]
                 for o in g["offsets"]}
        tests.update({f"all|af{af:g}|off0": spec(every, af) for af in g["e_afs"]})
        out["a"] = {"train": [], "tests": tests}
    if "b" in designs:
        for c in g["b_categories"]:
            for k in g["units"]:
                out[f"b_{c}_u{k}"] = {"train": _units(by_cat[c], k, UNIT_AF), "test": spec(by_cat[c], UNIT_AF),
                                      "val": spec(by_cat[c], UNIT_AF, seed=VAL_SEED), "tests": {"clean": None}}
    if "bc" in designs:  # b's control: k clean copies (b's training steps without its noise), b's noisy tests
        for k in g["units"]:
            out[f"bc_u{k}"] = {"train": [None] * k,
                               "tests": {f"{c}|af{UNIT_AF:g}|off0": spec(by_cat[c], UNIT_AF)
                                         for c in g["b_categories"]}}
    if "c" in designs:
        for c in g["c_categories"]:
            tr, te = split_noise_types({t: c for t in by_cat[c]}, train_frac=0.8, seed=0)
            out[f"c_{c}"] = {"train": _units(tr, UNITS_CD, UNIT_AF), "test": spec(te, UNIT_AF),
                             "val": spec(tr, UNIT_AF, seed=VAL_SEED), "tests": {"clean": None},
                             "noise_types": {"train": tr, "test": te}}
    if "d" in designs:
        for c in g["d_categories"]:
            tests = {f"{o}|af{UNIT_AF:g}|off0": spec(by_cat[o], UNIT_AF) for o in CATEGORIES if o != c}
            out[f"d_{c}"] = {"train": _units(by_cat[c], UNITS_CD, UNIT_AF), "test": spec(by_cat[c], UNIT_AF),
                             "val": spec(by_cat[c], UNIT_AF, seed=VAL_SEED), "tests": {**tests, "clean": None}}
    if "e" in designs:
        for af in g["e_afs"]:
            out[f"e_af{af:g}"] = {"train": _units(every, UNITS_CD, af), "test": spec(every, af),
                                  "val": spec(every, af, seed=VAL_SEED), "tests": {"clean": None}}
    return out


def experiments(corpus: str = "ravdess", data_root: str | None = None, *, profile: str = "full",
                protocols: Sequence[str] = ("speaker_independent",), designs: Sequence[str] = DESIGNS,
                source: dict | None = None, models: Sequence[str] = ("head_fusion",)) -> list[Experiment]:
    """Head Fusion (the paper's model and training) under each design's noise, per protocol (see the docstring).
    ``models``: the attention of the Head Fusion trained (:data:`MODELS`): ``head_fusion`` (the paper's Eq. 1) and/or
    ``head_fusion_code`` (the authors' public code: about 4x cheaper per epoch on this project's CPU,
    ``results/benchmarks/head_fusion_cpu_50_epochs.json``; experiment names end in ``_code``)."""
    from serlib.studies import head_fusion as hf

    bad = set(designs) - set(DESIGNS)
    if bad:
        raise ValueError(f"unknown noise designs {sorted(bad)}; known: {list(DESIGNS)}")
    bad = set(models) - set(MODELS)
    if bad:
        raise ValueError(f"unknown noise models {sorted(bad)}; known: {list(MODELS)}")
    source = dict(source or default_source(corpus))
    arms = design_arms(source, profile, designs)
    out = []
    for protocol in protocols:
        if protocol == "speaker_independent":
            base = hf.speaker_independent_experiment(corpus, data_root, profile="full")
        else:
            base = hf.paper_experiment(corpus, data_root, profile="full", selection="val")
        base = PROFILES[profile].apply(base)
        for model in models:
            tag = MODELS[model]
            mk = {**base.model_kwargs, "attention": model}
            for arm, vk in arms.items():
                out.append(base.replace(name=f"noise_{PROTOCOL_TAG[protocol]}_{arm}{tag}{PROFILES[profile].suffix}",
                                        view="noisy_segments", view_kwargs={"source": source, **vk}, arm=arm,
                                        model_kwargs=mk))
    return out


# ------------------------------------------------------------------------------------------------ tables
def condition_rows(records) -> pd.DataFrame:
    """One row per (run, test condition): model (the Head Fusion attention trained), design, arm, seed, fold, condition (``test`` = the run's main test part),
    category / af / offset_s (of the condition's name), UA in percent, mean SNRs and the condition hash."""
    rows = []
    for r in records:
        if not report.is_ok(r):
            continue
        arm = report.identity(r)["arm"]
        model = model_of(r)
        base = {"kind": r["kind"], "corpus": r["corpus"]["name"], "protocol": r["split"]["protocol"], "model": model,
                "arm": arm,
                "design": arm.split("_")[0], "seed": r["seed"], "fold": r["split"].get("fold")}
        noise = (r.get("counts") or {}).get("noise") or {}
        main = noise.get("test") or {}
        rows.append({**base, "condition": "test", "category": None, "af": None, "offset_s": None,
                     "ua": 100 * r["metrics"]["ua"], "snr_eq3_db": main.get("snr_eq3_db"),
                     "snr_power_db": main.get("snr_power_db"), "hash": main.get("condition")})
        for name, m in (r["metrics"].get("conditions") or {}).items():
            rows.append({**base, "condition": name, **parse_condition_name(name), "ua": 100 * m["ua"],
                         "snr_eq3_db": m.get("snr_eq3_db"), "snr_power_db": m.get("snr_power_db"),
                         "hash": m.get("condition")})
    return pd.DataFrame(rows)


def _mean_table(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame()
    g = df.groupby(by, dropna=False, sort=True)
    out = g.agg(**{"UA mean (%)": ("ua", "mean"), "UA std (%)": ("ua", lambda s: s.std(ddof=1)),
                   "SNR Eq. 3 (dB)": ("snr_eq3_db", "mean"), "SNR power (dB)": ("snr_power_db", "mean"),
                   "n runs": ("ua", "size")})
    return out.reset_index()


def fig8_table(records) -> pd.DataFrame:
    """Design a (Fig. 8): clean-trained Head Fusion, UA per test category x AF x offset (clean test as ``clean``)."""
    df = condition_rows(records)
    if df.empty:
        return df
    df = df[(df["design"] == "a") & (df["category"].isin(CATEGORIES) | (df["condition"] == "test"))].copy()
    df.loc[df["condition"] == "test", "category"] = "clean"
    return _mean_table(df, ["corpus", "protocol", "model", "category", "af", "offset_s"])


def units_table(records) -> pd.DataFrame:
    """Design b (Fig. 9(a,b)) with design a's run as 0 noisy units: noisy-test and clean-test UA per category x k;
    design bc (k clean copies instead of k noisy units) as the ``noisy, control`` / ``clean, control`` rows."""
    df = condition_rows(records)
    if df.empty:
        return df
    rows = []
    for _, r in df.iterrows():
        if r["design"] == "b":
            _, cat, k = r["arm"].split("_")
            test = "noisy" if r["condition"] == "test" else "clean"
            rows.append({**r.to_dict(), "category": cat, "units": int(k[1:]), "test": test})
        elif r["design"] == "a" and r["af"] == UNIT_AF and r["offset_s"] == 0.0 and r["category"] in CATEGORIES:
            rows.append({**r.to_dict(), "units": 0, "test": "noisy"})
        elif r["design"] == "a" and r["condition"] == "test":
            for cat in CATEGORIES:
                rows.append({**r.to_dict(), "category": cat, "units": 0, "test": "clean"})
        elif r["design"] == "bc":
            k = int(r["arm"].split("_u")[1])
            if r["condition"] == "test":
                for cat in CATEGORIES:
                    rows.append({**r.to_dict(), "category": cat, "units": k, "test": "clean, control"})
            elif r["category"] in CATEGORIES and r["af"] == UNIT_AF:
                rows.append({**r.to_dict(), "units": k, "test": "noisy, control"})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    cats = set(out.loc[out["design"] == "b", "category"])
    return _mean_table(out[out["category"].isin(cats)], ["corpus", "protocol", "model", "category", "test", "units"])


def _design_rows(records, design: str) -> pd.DataFrame:
    """:func:`condition_rows` of one design, with the category its arm trained on (``arm`` = ``<design>_<cat>``)."""
    df = condition_rows(records)
    if df.empty:
        return df
    df = df[df["design"] == design].copy()
    df["arm category"] = df["arm"].str.split("_").str[1]
    return df


def type_split_table(records) -> pd.DataFrame:
    """Design c (Fig. 9(c,d)): test noise of types unseen in training, per category (and clean)."""
    df = _design_rows(records, "c")
    if df.empty:
        return df
    df["category"] = df["arm category"]
    df["test"] = np.where(df["condition"] == "test", "unseen types", "clean")
    return _mean_table(df, ["corpus", "protocol", "model", "category", "test"])


def cross_table(records) -> pd.DataFrame:
    """Design d (Fig. 10): trained with one category's noise, UA on each test category."""
    df = _design_rows(records, "d")
    if df.empty:
        return df
    df["train category"] = df["arm category"]
    df["test category"] = np.where(df["condition"] == "test", df["train category"], df["category"].fillna("clean"))
    return _mean_table(df, ["corpus", "protocol", "model", "train category", "test category"])


def all_types_table(records) -> pd.DataFrame:
    """Table 8: noise of all types at AF 0.1 / 0.5: UA vs mean SNR, trained clean (design a) or noisy (design e)."""
    df = condition_rows(records)
    if df.empty:
        return df
    a = df[(df["design"] == "a") & (df["category"] == "all")].assign(training="clean")
    e = df[(df["design"] == "e") & (df["condition"] == "test")].copy()
    e["af"] = e["arm"].str.removeprefix("e_af").astype(float)
    e["training"] = f"clean + {UNITS_CD} noisy units"
    both = pd.concat([a, e])
    return _mean_table(both, ["corpus", "protocol", "model", "af", "training"]) if len(both) else pd.DataFrame()


def _paired(groups: dict, pairs) -> list[dict]:
    from serlib.evaluate import paired_test

    rows = []
    for key, arms in sorted(groups.items(), key=lambda kv: str(kv[0])):
        for a, b in pairs:
            if a not in arms or b not in arms:
                continue
            common = sorted(set(arms[a]) & set(arms[b]))
            row = {"group": key, "comparison": f"{a} vs {b}", "n pairs": len(common)}
            if len(common) >= 2:
                t = paired_test([arms[a][c] for c in common], [arms[b][c] for c in common])
                row.update({"mean diff (pp)": t["mean_diff"], "p (paired t)": t["p_t"],
                            "p (Wilcoxon)": t["p_wilcoxon"]})
            else:
                row.update({"mean diff (pp)": float(np.mean([arms[a][c] - arms[b][c] for c in common]))
                            if common else float("nan"), "note": "fewer than 2 matched runs: no test"})
            rows.append(row)
    return rows


def paired_table(records) -> pd.DataFrame:
    """The paper's claims as paired tests over (seed, fold), per corpus and protocol: design a, categories against
    each other per AF (UA averaged over offsets) and offset 0 against the others (averaged over categories); design b,
    1 noisy unit against none (noisy test)."""
    df = condition_rows(records)
    if df.empty:
        return df
    rows = []
    a = df[(df["design"] == "a") & df["category"].isin(CATEGORIES)]
    groups: dict = {}
    for (corpus, proto, model, af, cat, seed, fold), part in a.groupby(["corpus", "protocol", "model", "af",
                                                                          "category", "seed", "fold"]):
        groups.setdefault(f"{corpus} {proto} {model} a AF {af:g}", {}).setdefault(cat, {})[(seed, fold)] = part["ua"].mean()
    cat_pairs = [(x, y) for i, x in enumerate(CATEGORIES) for y in CATEGORIES[i + 1:]]
    rows += _paired(groups, cat_pairs)
    groups = {}
    for (corpus, proto, model, af, off, seed, fold), part in a.groupby(["corpus", "protocol", "model", "af",
                                                                          "offset_s", "seed", "fold"]):
        groups.setdefault(f"{corpus} {proto} {model} a AF {af:g}", {}).setdefault(f"offset {off:g} s", {})[
            (seed, fold)] = part["ua"].mean()
    offs = sorted({o for o in a["offset_s"].dropna()})
    rows += _paired(groups, [(f"offset {offs[0]:g} s", f"offset {o:g} s") for o in offs[1:]])
    u = units_table_runs(df)
    groups = {}
    for (corpus, proto, model, cat, k, seed, fold), part in u.groupby(["corpus", "protocol", "model", "category",
                                                                         "units", "seed", "fold"]):
        groups.setdefault(f"{corpus} {proto} {model} b {cat}", {}).setdefault(f"{k} noisy units", {})[(seed, fold)] = \
            part["ua"].mean()
    rows += _paired(groups, [("1 noisy units", "0 noisy units")])
    groups = {}
    ctl = _control_runs(df)
    for (corpus, proto, model, cat, k, seed, fold), part in pd.concat([u[u["units"] > 0], ctl]).groupby(
            ["corpus", "protocol", "model", "category", "units", "seed", "fold"]):
        for design, p in part.groupby("design"):
            name = f"{k} noisy units" if design == "b" else f"{k} clean copies"
            groups.setdefault(f"{corpus} {proto} {model} b vs bc {cat}", {}).setdefault(name, {})[(seed, fold)] = \
                p["ua"].mean()
    units = sorted(set(ctl["units"])) if len(ctl) else []
    rows += _paired(groups, [(f"{k} noisy units", f"{k} clean copies") for k in units])
    return pd.DataFrame(rows)


def _control_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Design bc's noisy-test rows at UNIT_AF (one row per run and category), with ``units`` = k."""
    c = df[(df["design"] == "bc") & df["category"].isin(CATEGORIES) & (df["af"] == UNIT_AF)].copy()
    c["units"] = c["arm"].str.split("_u").str[1].astype(int)
    return c


def units_table_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Noisy-test runs of design b with design a's matching condition as 0 units (one row per run)."""
    b = df[(df["design"] == "b") & (df["condition"] == "test")].copy()
    b["category"] = b["arm"].str.split("_").str[1]
    b["units"] = b["arm"].str.split("_").str[2].str[1:].astype(int)
    a = df[(df["design"] == "a") & (df["af"] == UNIT_AF) & (df["offset_s"] == 0.0)].copy()
    a["units"] = 0
    return pd.concat([b, a[a["category"].isin(set(b["category"]))]])


def model_of(record: dict) -> str:
    """The Head Fusion attention a noise record trained (``head_fusion`` or ``head_fusion_code``)."""
    return ((record.get("config") or {}).get("model_kwargs") or {}).get("attention", "head_fusion")


def claims_table(records) -> pd.DataFrame:
    """The paper's claims beside our measured answer, computed from the records (empty answers where the design
    has no runs): category order (a), offsets (a), the first noisy unit's lift (b), mean SNR of all types (e); one
    block per corpus, protocol and Head Fusion attention trained (``model``): never pooled across them."""
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["corpus"]["name"], r["split"]["protocol"], model_of(r)), []).append(r)
    parts = [_claims(recs).assign(corpus=c, protocol=p, model=m) for (c, p, m), recs in sorted(groups.items())]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    first = ["corpus", "protocol", "model"]
    return out[first + [c for c in out.columns if c not in first]]


def _claims(records) -> pd.DataFrame:
    rows = []
    f8 = fig8_table(records)
    a = f8[f8["category"].isin(CATEGORIES)] if len(f8) else f8
    if len(a):
        per_cat = a.groupby("category")["UA mean (%)"].mean().sort_values()
        best, worst = per_cat.index[-1], per_cat.index[0]
        rows.append({"claim": "D-S hurts least, C-L most (a)",
                     "ours": f"least: {best} ({per_cat[best]:.1f} %), most: {worst} ({per_cat[worst]:.1f} %); "
                             f"UA per category averaged over AF and offset",
                     "agrees": bool(best == "D-S" and worst == "C-L"), "n runs": int(a["n runs"].max())})
        off_range = a.groupby(["category", "af"])["UA mean (%)"].agg(lambda v: v.max() - v.min()).mean()
        cat_range = a.groupby(["af", "offset_s"])["UA mean (%)"].agg(lambda v: v.max() - v.min()).mean()
        rows.append({"claim": "the noise offset barely matters (a)",
                     "ours": f"UA range over offsets {off_range:.1f} pp vs over categories {cat_range:.1f} pp "
                             f"(means over the other factors)",
                     "agrees": bool(off_range < cat_range), "n runs": int(a["n runs"].max())})
    u = units_table(records)
    noisy = u[u["test"] == "noisy"] if len(u) else u
    if len(noisy) and noisy["units"].nunique() > 1:
        curve = noisy.groupby("units")["UA mean (%)"].mean().sort_index()
        lifts = curve.diff().dropna()
        step = int(lifts.idxmax())
        rows.append({"claim": "1 noisy unit lifts noisy-test UA most (b)",
                     "ours": "; ".join(f"{k - 1}->{k}: {v:+.1f} pp" for k, v in lifts.items()) +
                             " (mean over categories)" + (f"; largest at {step - 1}->{step}" if len(lifts) > 1
                                                         else "; one step only, nothing to compare"),
                     "agrees": bool(step == 1 and lifts.max() > 0) if len(lifts) > 1 else None,
                     "n runs": int(noisy["n runs"].max())})
    ctl = u[u["test"] == "noisy, control"] if len(u) else u
    if len(noisy) and len(ctl):
        both = noisy.merge(ctl, on=["category", "units"], suffixes=("", " control"))
        diff = both.groupby("units").apply(lambda g: (g["UA mean (%)"] - g["UA mean (%) control"]).mean(),
                                           include_groups=False)
        rows.append({"claim": "noisy units help beyond their extra training steps (b vs bc, ours)",
                     "ours": "; ".join(f"k={k}: {v:+.1f} pp" for k, v in diff.items()) +
                             " (noisy-test UA, k noisy units minus k clean copies, mean over categories)",
                     "agrees": None, "n runs": int(ctl["n runs"].max())})
    t8 = all_types_table(records)
    if len(t8):
        snr = t8.groupby("af")["SNR Eq. 3 (dB)"].mean()
        rows.append({"claim": "all types: AF 0.1 about 15 dB, AF 0.5 about 1.4 dB mean SNR (e)",
                     "ours": "; ".join(f"AF {af:g}: {v:.1f} dB" for af, v in snr.items()),
                     "agrees": None, "n runs": int(t8["n runs"].max())})
    return pd.DataFrame(rows)


def levels_record(data_root, recorded, corpus: str = "ravdess", profile: str = "cpu") -> dict:
    """The numbers behind the conditions' SNRs (:func:`serlib.noise_data.levels_table`): Eq. 3's speech and noise
    levels per category on the whole corpus and noise bank, and the SNR they give at AF 0.1 (the paper: about
    11-15 dB on IEMOCAP). ``recorded`` and ``profile`` are unused (no run is involved)."""
    from serlib.experiment import load_experiment_corpus
    from serlib.noise_data import levels_table, load_bank

    c = load_experiment_corpus(corpus, data_root)
    source = default_source(corpus)
    bank = load_bank(source, data_root)
    table = levels_table(c, bank)
    return {"figure": "noise_levels", "corpus": corpus, "corpus_fingerprint": c.fingerprint(),
            "noise_source": source, "noise_fingerprint": bank.fingerprint(), "table": table.to_dict("records")}


# ------------------------------------------------------------------------------------------------ every model
def model_robustness(records, checkpoint_root, *, profile: str = "full", source: dict | None = None,
                     data_root=None, offsets: Sequence[float] | None = None) -> pd.DataFrame:
    """Evaluation only, for every model: each record's model (its checkpoint under ``checkpoint_root``, see
    :func:`serlib.studies.common.run_study`) on its test part under design a's conditions for ``profile``'s grid.
    One row per (run, condition) with ``model`` (the record's experiment name), ``seed``, ``fold`` and
    :func:`serlib.noise_data.robustness`'s columns; the clean test UA of each run as category ``clean``."""
    from serlib.noise_data import grid_specs, load_bank
    from serlib.studies.common import corpus_for, experiment_from_dict, load_model

    g = GRIDS[profile]
    out = []
    for r in records:
        exp = experiment_from_dict({k: v for k, v in r["config"].items() if k in Experiment.__dataclass_fields__})
        src = source or default_source(exp.corpus)
        bank = load_bank(src, data_root or exp.data_root)
        from serlib.noise_data import robustness

        df = robustness(load_model(r, checkpoint_root), r, corpus_for(exp),
                        grid_specs(bank, g["afs"], offsets or g["offsets"]), source=src, data_root=data_root)
        clean = pd.DataFrame([{"condition": "clean", "category": "clean", "ua": r["metrics"]["ua"],
                               "wa": r["metrics"]["wa"]}])
        out.append(pd.concat([df, clean]).assign(model=r["kind"], seed=r["seed"], fold=r["split"].get("fold")))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def model_differences(df: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Paired differences of :func:`model_robustness` rows, model ``a`` minus ``b`` (UA, percentage points) per
    (category, AF), averaged over offsets and over each model's seeds within a fold, paired by fold (the studies
    train different seed lists, so the folds are the shared unit), with the paired t-test from 2 folds."""
    d = df[df["category"].isin(CATEGORIES)]
    per = d.groupby(["model", "category", "af", "fold"])["ua"].mean() * 100
    groups: dict = {}
    for (model, cat, af, fold), v in per.items():
        groups.setdefault(f"{cat} AF {af:g}", {}).setdefault(model, {})[fold] = v
    return pd.DataFrame(_paired(groups, [(a, b)]))


def paper_reference() -> pd.DataFrame:
    """The paper's claims (IEMOCAP improvised), QUOTED from /work/shared/docs/PAPERS.md, never measured here."""
    src = "quoted from PAPERS.md (Head Fusion paper, IEMOCAP); not measured by serlib"
    return pd.DataFrame([
        {"figure": "Fig. 8 (a)", "claim": "D-S noise hurts least, C-L most (about 7 points UA apart)", "note": src},
        {"figure": "Fig. 8 (a)", "claim": "the noise time offset barely matters", "note": src},
        {"figure": "Fig. 9 (b)", "claim": "1 noisy unit lifts noisy-test UA most (C-L: 33.2 -> 52.3)", "note": src},
        {"figure": "Fig. 9 (b)", "claim": "D-S best: 73.8 clean / 69.5 noisy test; C-L worst: 69 / 59.8",
         "note": src},
        {"figure": "Fig. 10 (d)", "claim": "train on one category, test on others: 3 units recommended",
         "note": src},
        {"figure": "Table 8 (e)", "claim": "all types: AF 0.1 about 15 dB, AF 0.5 about 1.4 dB average SNR",
         "note": src},
    ])


STUDY = Study(
    name="noise",
    title="Head Fusion noise robustness",
    paper="Xu, Zhang, Zhang 2021, Head Fusion (noise studies: Figs. 4, 8-10, Table 8)",
    experiments=experiments,
    tables=(Table("fig8", "Fig. 8: trained clean, tested noisy (per category, AF, offset)", fig8_table),
            Table("units", "Fig. 9(a,b): 1 clean + k noisy units", units_table),
            Table("type_split", "Fig. 9(c,d): test noise types unseen in training", type_split_table),
            Table("cross", "Fig. 10: train on one category, test on each", cross_table),
            Table("all_types", "Table 8: noise of all types, UA vs mean SNR", all_types_table),
            Table("claims", "The paper's claims and our measured answers", claims_table)),
    tests=(Table("paired", "Paired tests over (seed, fold): categories, offsets, 1 unit vs none", paired_table,
                 digits=3),),
    prefixes=("noise_",),
    paper_reference=paper_reference,
    notebook="06_noise.ipynb",
    figures={"noise_levels": levels_record},
    protocols=("speaker_independent", "paper"),
    options={"designs": (DESIGNS, DESIGNS, "noise designs: a clean train / noisy test, b noisy units, c unseen "
                                           "types, d cross-category, e all types"),
             "models": (tuple(MODELS), ("head_fusion",), "Head Fusion attention trained under noise: the paper's Eq. 1 "
                                                         "and/or the authors' code (head_fusion_code)")},
    in_comparison=False,
    main_arm="a",
    paper_claim="D-S hurts least, C-L most (IEMOCAP)",
)

__all__ = ["AFS", "DESIGNS", "GRIDS", "OFFSETS", "PROFILES", "STUDY", "UNITS", "UNIT_AF", "all_types_table",
           "claims_table", "condition_rows", "cross_table", "design_arms", "experiments", "fig8_table",
           "levels_record", "model_differences", "model_of", "model_robustness", "paired_table", "paper_reference",
           "type_split_table", "units_table"]
