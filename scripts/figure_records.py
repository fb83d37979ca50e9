"""The numbers behind the papers' attention figures, on real data, written as JSON records under results/figures/.

    python scripts/figure_records.py --data-root DATA [--studies faca moma eca] [--out results/figures]
        [--corpus ravdess] [--profile cpu]

Each study retrains its first recorded ``cpu``-profile run (seed 0, fold 0; training is deterministic on CPU, so
the model is the recorded one: the record keeps both UAs) and measures, on that run's test utterances:

* ``faca``: how often each variant's most-attended key lies at the 0.5-s segment's amplitude peak (Fig. 2);
* ``moma``: entropy and total variation of the layer-2 vs the layer-1 attention vectors (Figs. 2-5);
* ``eca``: whether the ECA channel weights differ between emotions at layers 5 and 6 (Fig. 14), for the
  ablation's "our ECA + STFT augmentation" model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from serlib.experiment import corpus_waveforms, record_path_of, run_one
from serlib.records import environment_info, git_revision, to_jsonable, write_text_atomic
from serlib.studies import eca, faca, moma
from serlib.studies.common import FIGURES_DIR, corpus_for, figure_record_name, split_for

REPO = Path(__file__).resolve().parents[1]


def train(exp, recorded: Path) -> tuple[dict, torch.nn.Module, object, dict]:
    """Seed 0 / fold 0 of ``exp`` with its model and views, and a summary naming the committed record it repeats."""
    exp = exp.replace(seeds=(0,), folds=(0,))
    corpus = corpus_for(exp)
    split = split_for(exp, corpus, 0)
    rec, model, views = run_one(exp, corpus, split, 0, results_dir=None, return_model=True)
    path = record_path_of(rec, recorded)
    committed = json.loads(path.read_text()) if path.exists() else None
    run = {"kind": rec["kind"], "seed": 0, "fold": 0, "config_hash": rec["config_hash"],
           "test_ua": rec["metrics"]["ua"], "test_wa": rec["metrics"]["wa"],
           "recorded_path": str(path.relative_to(recorded.parent)),  # e.g. results/<kind>/...
           "recorded_test_ua": committed["metrics"]["ua"] if committed else None}
    return rec, model, views, run


def faca_peaks(root, recorded: Path, corpus: str, profile: str) -> dict:
    models, runs, views = {}, [], None
    for variant in faca.VARIANTS:
        rec, model, views, run = train(faca.paper_experiment(variant, corpus, root, profile=profile), recorded)
        models[variant] = model
        runs.append(run)
    data = corpus_for(faca.paper_experiment("faca", corpus, root))
    waves_all, _ = corpus_waveforms(data)
    waves = [waves_all[g] for g in views.test.groups.tolist()]
    table = faca.peak_alignment_table(models, views.test, waves, tols=(0, 1, 2))
    return {"figure": "faca_peak_alignment", "corpus": data.name, "runs": runs, "table": table.to_dict("records")}


def moma_smoothing(root, recorded: Path, corpus: str, profile: str) -> dict:
    rec, model, views, run = train(moma.speaker_independent_experiment(corpus, root, profile=profile), recorded)
    table = moma.smoothing_table(model, views.test)
    return {"figure": "moma_smoothing", "corpus": rec["corpus"]["name"], "runs": [run],
            "table": table.to_dict("records"),
            "paired_test_norm_entropy_l2_minus_l1": table.attrs.get("paired_test_norm_entropy_l2_minus_l1"),
            "gammas": table.attrs.get("gammas")}


def eca_channel_weights(root, recorded: Path, corpus: str, profile: str) -> dict:
    base = eca.paper_experiment(corpus, root, profile=profile)
    n_augment = eca.CPU_PROFILE["n_augment"] if profile == "cpu" else 3 if profile == "quick" else eca.N_VERSIONS
    exp = eca.ablation_experiments(base, n_augment=n_augment)[-1]  # our ECA + STFT augmentation
    rec, model, views, run = train(exp, recorded)
    means = eca.channel_weights_by_emotion(model, views, (5, 6))
    effects = eca.channel_weight_effects(model, views, (5, 6))
    return {"figure": "eca_channel_weights", "corpus": rec["corpus"]["name"], "runs": [run],
            "labels": rec["corpus"]["labels"], "effects": effects.to_dict("records"),
            "mean_weights_by_emotion": {str(k): v.tolist() for k, v in means.items()}}


STUDIES = {"faca": faca_peaks, "moma": moma_smoothing, "eca": eca_channel_weights}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--corpus", default="ravdess")
    ap.add_argument("--profile", default="cpu", choices=["quick", "cpu", "full"])
    ap.add_argument("--studies", nargs="+", choices=list(STUDIES), default=list(STUDIES))
    ap.add_argument("--recorded", default=str(REPO / "results"), help="committed run records, for the UA check")
    ap.add_argument("--out", default=str(REPO / "results" / FIGURES_DIR))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.studies:
        body = STUDIES[name](args.data_root, Path(args.recorded), args.corpus, args.profile)
        rec = {"kind": f"figure_{name}", "git": git_revision(), "environment": environment_info(),
               "profile": args.profile, **body}
        out = Path(args.out) / figure_record_name(body["figure"], body["corpus"])
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(to_jsonable(rec), indent=1) + "\n")
        print(f"wrote {out}")
        print(json.dumps(to_jsonable(body.get("table") or body.get("effects")), indent=1)[:3000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
