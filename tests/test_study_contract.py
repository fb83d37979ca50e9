"""The study contract: registry discovery, a sixth paper added without touching an existing file, typed dotted
overrides checked before any data is read, the generated results, and the record migration."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from serlib.studies import base
from serlib.studies.base import ConfigError, Profile, apply_overrides, get_study, parse_overrides

REPO = Path(__file__).resolve().parents[1]

TOY_PAPER = '''
"""A toy sixth "paper": logistic regression on mean-pooled MFCCs, as a plugin (one model, one study)."""
from dataclasses import dataclass

import pandas as pd
from torch import nn

from serlib import report
from serlib.experiment import Experiment
from serlib.studies.base import Profile, Study, Table


@dataclass
class ToyLogRegConfig:
    n_classes: int = 2
    n_features: int = 26
    temperature: float = 1.0


class ToyLogReg(nn.Module):
    def __init__(self, config: ToyLogRegConfig):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.n_features, config.n_classes)

    def forward(self, x, lengths=None):
        pooled = x.mean(-1)
        return self.linear(pooled) / self.config.temperature, {"embedding": pooled}


SERLIB_MODELS = {"toy_logreg": (ToyLogReg, ToyLogRegConfig)}
QUICK = Profile(train={"epochs": 2}, n_seeds=1, folds=(0,))


def experiments(corpus, data_root, *, profile="full", protocols=("speaker_independent",)):
    exp = Experiment(name="toy_paper_si", corpus=corpus, data_root=data_root, protocol="speaker_independent",
                     features="head_fusion_mfcc", view="segments", model="toy_logreg",
                     train={"epochs": 3, "batch_size": 32, "lr": 1e-2, "select": "val", "progress": False},
                     seeds=(0, 1))
    return [QUICK.apply(exp) if profile == "quick" else exp]


def toy_table(records):
    return report.summarise(report.frame(records), ["corpus", "protocol", "profile"])


STUDY = Study(name="toy_paper", title="Toy paper (logistic regression)", paper="nobody, 2026",
              experiments=experiments, tables=(Table("toy", "Toy summary", toy_table),), prefixes=("toy_paper",),
              protocols=("speaker_independent",), default_corpus="synthetic", in_comparison=False,
              paper_claim="none")
'''


@pytest.fixture()
def toy_plugin(tmp_path, monkeypatch):
    """The toy paper as a module outside the repository, found through $SERLIB_PLUGINS."""
    pkg = tmp_path / "plugins"
    pkg.mkdir()
    (pkg / "toy_paper.py").write_text(textwrap.dedent(TOY_PAPER))
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setenv("SERLIB_PLUGINS", "toy_paper")
    import serlib.models.registry as mreg

    monkeypatch.setattr(base, "_DISCOVERED", False)
    monkeypatch.setattr(mreg, "_DISCOVERED", False)
    yield pkg
    sys.modules.pop("toy_paper", None)
    base._REGISTRY.pop("toy_paper", None)
    mreg._MODELS.pop("toy_logreg", None)


def test_registry_finds_every_paper_study():
    studies = base.all_studies()
    assert {"head_fusion", "faca", "moma", "eca"} <= set(studies)
    for study in studies.values():
        assert study.tables, study.name
        assert study.experiments("synthetic", None, profile="quick", protocols=study.protocols) is not None
        if study.notebook:
            assert (REPO / "notebooks" / study.notebook).exists(), study.notebook


def test_a_sixth_paper_touches_no_existing_file(toy_plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "cache"))
    before = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    from serlib import report
    from serlib.cli import main

    assert "toy_paper" in base.all_studies()
    results = tmp_path / "results"
    code = main(["reproduce", "toy_paper", "--profile", "quick", "--results", str(results),
                 "--model.temperature", "2.0"])
    assert code == 0
    recs = get_study("toy_paper").records(results)
    assert len(recs) == 1 and recs[0]["identity"]["study"] == "toy_paper"
    assert recs[0]["config"]["model_kwargs"] == {"temperature": 2.0}
    assert recs[0]["identity"]["profile"] == "quick"
    # its split is stored once, by reference, and restored on load
    raw = json.loads(Path(recs[0]["_path"]).read_text())
    assert "ref" in raw["split"] and "test" not in raw["split"] and recs[0]["split"]["test"]
    # synthetic records are left out of the results document, but the study's section and table are there
    doc = report.results_markdown(results)
    assert "## Toy paper (logistic regression)" in doc and "### Toy summary" in doc
    assert toy_table_rows(recs) == 1
    after = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    assert before == after  # nothing in the repository changed


def toy_table_rows(recs) -> int:
    return len(get_study("toy_paper").tables[0].fn(recs))


def test_n_head_goes_from_flag_to_typed_config_to_model():
    ov = parse_overrides(["--model.n_head", "2", "--train.epochs=10", "--experiment.win_s", "1.5"])
    assert ov == {"model": {"n_head": "2"}, "train": {"epochs": "10"}, "experiment": {"win_s": "1.5"}}
    exps = get_study("head_fusion").build("ravdess", None, profile="full", overrides=ov)
    for e in exps:
        assert e.model_kwargs["n_head"] == 2 and isinstance(e.model_kwargs["n_head"], int)
        assert e.train["epochs"] == 10 and e.win_s == 1.5
    from serlib.models.registry import build_model

    model, cfg = build_model(exps[0].model, n_classes=8, n_features=26, **exps[0].model_kwargs)
    assert cfg["n_head"] == 2 and model.config.n_head == 2


@pytest.mark.parametrize("argv, message", [
    (["--model.n_hed", "2"], "unknown field(s) ['n_hed']"),
    (["--model.n_head", "two"], "n_head: expected int"),
    (["--train.epoch", "3"], "unknown field(s) ['epoch']"),
    (["--train.cpu_amp", "maybe"], "expected true/false"),
    (["--nonsense", "1"], "unrecognised argument"),
    (["--model.n_head"], "missing value"),
])
def test_bad_override_fails_before_any_data_is_read(argv, message, monkeypatch):
    import serlib.experiment as E

    def no_data(*a, **k):
        raise AssertionError("data was read")

    monkeypatch.setattr(E, "load_experiment_corpus", no_data)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        apply_overrides(get_study("head_fusion").build("ravdess", None)[0], parse_overrides(argv))


def test_cli_reports_a_bad_field_in_one_line(capsys):
    from serlib.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "faca", "--model.lstm_hiden", "8", "--data-root", "/nonexistent"])
    assert exc.value.code == 2
    assert "unknown field(s) ['lstm_hiden']" in capsys.readouterr().err


def test_profile_is_declared_data():
    from serlib.experiment import Experiment

    exp = Experiment(name="x", seeds=(3, 4, 5), train={"epochs": 50}, model_kwargs={"dropout": 0.1})
    out = Profile(train={"epochs": 2}, model={"channels": (8,)}, n_seeds=1, folds=(0,), suffix="_q").apply(exp)
    assert out.name == "x_q" and out.seeds == (3,) and out.folds == (0,)
    assert out.train == {"epochs": 2} and out.model_kwargs == {"dropout": 0.1, "channels": (8,)}
    cfg = out.model_config(n_classes=3, n_features=26)
    assert type(cfg).__name__ == "ReferenceCNNConfig" and cfg.channels == (8,) and cfg.dropout == 0.1


def test_an_experiment_refuses_a_model_field_its_config_lacks():
    from serlib.experiment import Experiment

    with pytest.raises(TypeError, match=r"no config field\(s\) \['n_hed'\]"):
        Experiment(model="head_fusion", model_kwargs={"n_hed": 2})


def test_results_document_is_current():
    """docs/RESULTS.md and README's status table equal what the committed records give (else: run
    `python -m serlib results` and commit)."""
    from serlib import report

    stale = report.stale(REPO / "results", doc=REPO / "docs" / "RESULTS.md", readme=REPO / "README.md")
    assert not stale, f"stale: {stale}; run `python -m serlib results`"


def test_committed_records_are_migrated_with_their_numbers_unchanged():
    """Every record committed before the migration is still there, with the same metrics, its split stored once
    under results/splits/ and restored on load to the same sizes."""
    from serlib.studies.common import load_records

    before = json.loads((REPO / "tests" / "data" / "pre_migration_metrics.json").read_text())
    loaded = {str(Path(r["_path"]).resolve().relative_to((REPO / "results").resolve())): r
              for r in load_records(REPO / "results")}
    import hashlib

    for rel, snap in before.items():
        raw = json.loads((REPO / "results" / rel).read_text())
        assert "ref" in raw["split"] and raw["identity"]["study"], rel
        sha = hashlib.sha256(json.dumps(raw["metrics"], sort_keys=True).encode()).hexdigest()[:16]
        assert sha == snap["metrics_sha"] and raw["metrics"]["ua"] == snap["ua"], rel
        if snap["status"] == "ok":
            rec = loaded[rel]
            assert len(rec["split"]["test"]) == raw["split"]["n"]["test"] > 0
    assert len(before) >= 100


def test_migration_round_trip(tmp_path):
    """Migrating an inline-split record stores the split and derives its identity; migrating again changes
    nothing; inflating gives the original split back."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import migrate_records
    finally:
        sys.path.pop(0)
    from serlib.records import inflate_split

    split = {"name": "speaker_independent/fold0", "protocol": "speaker_independent", "fold": 0, "seed": 0,
             "train": ["a", "b"], "val": ["c"], "test": ["d"], "meta": {"corpus": "x"}}
    rec = {"kind": "eca_paper_val_cpu__abl-our_eca", "split": split, "metrics": {"ua": 0.5},
           "config": {"model_kwargs": {}}}
    new = migrate_records.migrate(rec, tmp_path)
    assert new["identity"] == {"experiment": rec["kind"], "study": "eca", "profile": "cpu", "arm": "our_eca"}
    assert new["split"]["n"] == {"train": 2, "val": 1, "test": 1} and "train" not in new["split"]
    assert migrate_records.migrate(new, tmp_path) == new
    assert inflate_split(new, tmp_path)["split"] == split


def test_committed_records_keep_their_paths():
    """A record's path is a hash of its run config; fields added since (identity, view settings) leave it as it was,
    so a rerun finds the committed record instead of running again."""
    from serlib.experiment import record_path_of
    from serlib.studies.common import load_records

    recs = load_records(REPO / "results")
    assert recs
    for r in recs:
        assert record_path_of(r, REPO / "results").resolve() == Path(r["_path"]).resolve(), r["_path"]
