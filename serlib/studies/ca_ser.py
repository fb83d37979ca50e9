"""CA-SER (Deeb, Savchenko, Makarov 2024) study: wav2vec 2.0 layer 9 fused with an MFCC encoder by cross-attention.

The view (``Experiment.view = "ca_ser"``, registered here) gives the model (:mod:`serlib.models.ca_ser`) dict
batches ``{"mfcc", "mfcc_lengths", "w2v2", "w2v2_lengths"}``: 40 MFCC at a 10-ms hop (preset ``caser_mfcc``: the
authors' code's pre-emphasis, htk Mel, n_fft 2048, frame L2 norm), normalised per coefficient with the training
part's statistics, and the frozen hidden states of layer ``view_kwargs["layer"]`` (paper: 9) of the wav2vec 2.0 model
``view_kwargs["w2v2"]`` (a hub id or a local folder), extracted once and cached on disk by :mod:`serlib.ssl`. The
MFCC-only arm gets no ``w2v2`` input and does not depend on any wav2vec 2.0 weights.

Protocols (``experiments``):

* IEMOCAP (4 classes, hap + exc merged; the paper's corpus): CV-5 leave-one-session-out (``loso_session``) and CV-10
  leave-one-speaker-out (``loso_speaker``; the speaker is session + gender, :mod:`serlib.data.iemocap`), every fold;
  validation = the next session / the next speaker, so the model is selected on validation speakers, never on the
  evaluation fold. Plus the shared speaker-independent folds.
* Any other corpus (RAVDESS, the synthetic one) has no sessions. The paper protocol's closest analogue is CV-10's
  rule itself, leave one speaker out (RAVDESS: 24 folds, validation = the next actor, ``loso_speaker``); CV-5's
  "one group of speakers out" is what the shared speaker-independent folds already are (RAVDESS: 6 folds of 4
  actors), run as the ``speaker_independent`` protocol like every other study.

Arms (``Experiment.arm``, the model's ``branch``): ``mfcc`` (MFCC branch alone), ``w2v2`` (a linear probe on layer
L), ``fusion`` (CA-SER). The study option ``parts`` adds ``layer_sweep`` (one probe per wav2vec 2.0 layer).

Weights: without ``w2v2`` (or when it cannot be loaded) only the MFCC arm is built and the study says why. Records
made with weights that are not a pretrained wav2vec 2.0 (:func:`w2v2_settings`: the tiny random models of the tests
and the notebook) carry ``view_kwargs["pretrained"] = False`` and their weights hash; :class:`CASERStudy` disowns
them, so they never reach a results table, README or docs/RESULTS.md (the notebook shows them only under a
"meaningless" banner).

Training (the paper / the authors' code): AdamW lr 4e-5, batch 2 with gradient accumulation 4, 20 epochs, focal
loss gamma 0.5; the fusion arm adds the code's auxiliary MFCC-branch loss: ``focal(logits) + alpha *
focal(aux_logits)``, alpha 0.4 (the fusion experiment's ``loss_kwargs["alpha"]``, applied by
:class:`serlib.losses.AuxiliaryLoss` through the trainer's ``aux`` contract). ``--loss.alpha`` and
``--model.aux_alpha`` are one setting (as are ``--loss.gamma`` and ``--model.focal_gamma``): either sets both, so
the record's loss and model configs agree, and two different values are refused. The MFCC-only and probe arms have
no auxiliary head: no alpha is set there (an ``alpha`` override is dropped from them with a note), so their loss,
configuration and record paths are those of the runs recorded before the auxiliary loss was applied. Differences,
named: the epoch of best validation UA is selected (the code early-stops on WA), and clips are neither cut at 8 s
nor tiled to 3 s (RAVDESS clips are 2.9-5.3 s).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from serlib import report
from serlib.experiment import (
    Experiment,
    Views,
    _normalizer,
    corpus_waveforms,
    register_view,
    sequence_features,
)
from serlib.models.ca_ser import CODE_AUX_ALPHA
from serlib.predict import register_inputs
from serlib.studies.base import ConfigError, Profile, Study, Table, _convert
from serlib.train import ArrayData

PAPER_LAYER = 9
ARMS: tuple[str, ...] = ("mfcc", "w2v2", "fusion")
PARTS: tuple[str, ...] = ("ablation", "layer_sweep")
PAPER_TRAIN: dict = {"epochs": 20, "batch_size": 2, "grad_accum": 4, "lr": 4e-5, "optimizer": "adamw",
                     "select": "val", "progress": False}
PAPER_MODEL: dict = {}  # CASERConfig defaults: the paper's BiLSTM 256, the authors' code's other sizes
PAPER_LOSS: tuple[str, dict] = ("focal", {"gamma": 0.5})
PAPER_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)  # the paper names none
FEATURES = "caser_mfcc"
# model config field -> loss keyword: one setting each (see the module docstring)
PAIRED: dict[str, str] = {"aux_alpha": "alpha", "focal_gamma": "gamma"}
RANDOM_MARKER = "RANDOM_WEIGHTS"  # a file in a model folder saying its weights are random (tests, the notebook)

_SMALL = {"lstm_hidden": 16, "lstm_layers": 1, "enc_dim": 32, "enc_layers": 1, "enc_heads": 2, "enc_ff": 64,
          "d_model": 32, "n_heads": 2, "ff_dim": 64}
PROFILES: dict[str, Profile] = {
    "full": Profile(),
    # minutes on a CPU, what CI runs (never meaningful numbers)
    "quick": Profile(train={"epochs": 2, "batch_size": 8, "grad_accum": 1, "lr": 1e-3}, model=_SMALL, n_seeds=1,
                     folds=(0,)),
    # this project's CPU records (the MFCC arm on RAVDESS, 1 torch thread, ~65 s per epoch on its 2-core CPU): a
    # small encoder (BiLSTM 1 x 32, 1 self-attention block of width 64, ff 128), batch 32, lr 1e-3, 8 epochs,
    # seed 0; the name gets "_cpu"
    "cpu": Profile(train={"epochs": 8, "batch_size": 32, "grad_accum": 1, "lr": 1e-3},
                   model={"lstm_hidden": 32, "lstm_layers": 1, "enc_dim": 64, "enc_layers": 1, "enc_heads": 4,
                          "enc_ff": 128, "d_model": 64, "n_heads": 4, "ff_dim": 128},
                   seeds=(0,), suffix="_cpu"),
}


# ------------------------------------------------------------------------------------------------ weights
_SSL_MEMO: dict[str, object] = {}
_SAID: set[str] = set()


def _say(message: str) -> None:
    """Print a study note once per process (the CLI builds the experiments twice: to check, then to run)."""
    if message not in _SAID:
        _SAID.add(message)
        print(f"ca_ser: {message}", file=sys.stderr)


def load_w2v2(source: str):
    """:func:`serlib.ssl.load_ssl` once per process and source."""
    from serlib.ssl import load_ssl

    key = str(source)
    if key not in _SSL_MEMO:
        _SSL_MEMO.clear()  # one model in memory at a time
        _SSL_MEMO[key] = load_ssl(source)
    return _SSL_MEMO[key]


def is_pretrained(ssl) -> bool:
    """Whether ``ssl``'s weights can be a pretrained wav2vec 2.0: not when its folder holds :data:`RANDOM_MARKER`,
    nor when the model is smaller than any released wav2vec 2.0 (base: 12 blocks of 768)."""
    folder = Path(ssl.source).expanduser()
    if folder.is_dir() and (folder / RANDOM_MARKER).exists():
        return False
    cfg = ssl.model.config
    return int(cfg.hidden_size) >= 768 and int(cfg.num_hidden_layers) >= 12


def w2v2_settings(source: str | None, layer: int = PAPER_LAYER) -> dict | None:
    """The view settings of a wav2vec 2.0 arm (``w2v2`` source, ``layer``, ``weights_hash``, ``pretrained``,
    ``n_layers``), or None (with a note) when no weights are given or they cannot be loaded."""
    from serlib.ssl import WeightsUnavailableError

    if not source:
        _say("no wav2vec 2.0 weights given (--w2v2 facebook/wav2vec2-base or a local folder): the fusion and "
             "probe arms are not run, only the MFCC branch")
        return None
    try:
        ssl = load_w2v2(source)
    except (WeightsUnavailableError, ImportError) as exc:
        _say(f"wav2vec 2.0 weights unavailable, so the fusion and probe arms are not run, only the MFCC branch: "
             f"{exc}")
        return None
    if int(layer) == PAPER_LAYER and ssl.n_layers < PAPER_LAYER:  # the default on a model without a layer 9
        _say(f"{source} has {ssl.n_layers} blocks (no layer {PAPER_LAYER}): using its last, {ssl.n_layers}")
        layer = ssl.n_layers
    if not 0 <= int(layer) <= ssl.n_layers:
        raise ValueError(f"--layer {layer}: {source} has layers 0..{ssl.n_layers}")
    pretrained = is_pretrained(ssl)
    if not pretrained:
        _say(f"{source} is NOT a pretrained wav2vec 2.0 ({ssl.n_layers} blocks of {ssl.dim}"
             f"{', marked random' if (Path(source) / RANDOM_MARKER).exists() else ''}): its runs are marked "
             "pretrained=false and kept out of every results table; their numbers mean nothing about CA-SER")
    return {"w2v2": str(source), "layer": int(layer), "weights_hash": ssl.weights_hash[:16],
            "pretrained": pretrained, "n_layers": ssl.n_layers}


def save_random_wav2vec2(folder: str | Path, *, seed: int = 0, layers: int = 3, hidden: int = 32) -> Path:
    """A tiny randomly initialised wav2vec 2.0 saved to ``folder`` with the :data:`RANDOM_MARKER` file (for tests
    and the quick notebook: it exercises the code, its numbers mean nothing)."""
    import transformers

    folder = Path(folder)
    cfg = transformers.Wav2Vec2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden,
        # wav2vec2-base's 20-ms frame rate (a hop of 320 samples) with 4 small convolutions, so that it is fast
        conv_dim=(16, 16, 16, 16), conv_kernel=(10, 8, 4, 4), conv_stride=(5, 4, 4, 4), conv_bias=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True)
    torch.manual_seed(seed)
    transformers.Wav2Vec2Model(cfg).save_pretrained(folder)
    (folder / RANDOM_MARKER).write_text("randomly initialised by serlib.studies.ca_ser.save_random_wav2vec2; "
                                        "not a pretrained model\n")
    return folder


# ------------------------------------------------------------------------------------------------ the view
def _pad(seqs: list[torch.Tensor], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, T_i) tensors -> (N, D, T_max) zero-padded, lengths (N,)."""
    lengths = torch.as_tensor([s.shape[1] for s in seqs], dtype=torch.long)
    x = torch.zeros(len(seqs), dim, int(lengths.max()) if len(seqs) else 1)
    for r, s in enumerate(seqs):
        x[r, :, : s.shape[1]] = s
    return x, lengths


def w2v2_states(view_kwargs: dict, waves: Sequence[np.ndarray | None], progress: bool = True) -> list:
    """Layer ``view_kwargs["layer"]`` hidden states (T_i, D) of every decodable wave (None elsewhere), cached; the
    weights are checked against the run's ``weights_hash``."""
    from serlib.ssl import cached_hidden_states

    ssl = load_w2v2(view_kwargs["w2v2"])
    if view_kwargs.get("weights_hash") and ssl.weights_hash[:16] != view_kwargs["weights_hash"]:
        raise ValueError(f"the wav2vec 2.0 weights at {view_kwargs['w2v2']} (hash {ssl.weights_hash[:16]}) are not "
                         f"those of the run ({view_kwargs['weights_hash']}); pass the same model")
    ok = [i for i, w in enumerate(waves) if w is not None]
    states = cached_hidden_states(ssl, [waves[i] for i in ok], int(view_kwargs["layer"]), progress=progress)
    out: list = [None] * len(waves)
    for i, h in zip(ok, states):
        out[i] = h
    return out


def ca_ser_view(exp: Experiment, corpus, split, *, device=None) -> Views:
    """Dict batches for :class:`serlib.models.ca_ser.CASER` (see the module docstring)."""
    from serlib import features as F

    preset = F.PRESETS[exp.features]
    store = sequence_features(corpus, preset, device=device)
    failed = set(store["failed"].tolist())
    off = store["offsets"]
    uses_w2v2 = exp.model_kwargs.get("branch", "fusion") != "mfcc"
    if uses_w2v2 and not exp.view_kwargs.get("w2v2"):
        raise ValueError(f"{exp.name}: branch {exp.model_kwargs.get('branch', 'fusion')!r} needs "
                         "view_kwargs['w2v2'] (a wav2vec 2.0 model id or folder)")
    states = w2v2_states(exp.view_kwargs, corpus_waveforms(corpus, 16_000)[0]) if uses_w2v2 else None
    y_all = torch.tensor(corpus.y)
    tr_idx, va_idx, te_idx = split.indices(corpus)

    def make(idx):
        idx = np.asarray([i for i in idx if i not in failed and off[i + 1] > off[i]], np.int64)
        mfcc, mfcc_len = _pad([torch.as_tensor(store["frames"][off[i]: off[i + 1]].T) for i in idx],
                              preset.n_features)
        x = {"mfcc": mfcc, "mfcc_lengths": mfcc_len}
        if states is not None:
            dim = states[idx[0]].shape[1] if len(idx) else 1
            x["w2v2"], x["w2v2_lengths"] = _pad([torch.as_tensor(states[i].T) for i in idx], dim)
        g = torch.as_tensor(idx)
        return ArrayData(x=x, y=y_all[g], groups=g)

    train, test = make(tr_idx), make(te_idx)
    val = make(va_idx) if len(va_idx) else None
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"split {split.name}: empty train or test part after skips")
    normalizer = {}
    if exp.normalize:  # MFCC per coefficient, training-part statistics, padding kept at zero
        mean, std = _normalizer(train.x["mfcc"], train.x["mfcc_lengths"])
        normalizer["mfcc"] = (mean, std)
        for part in (train, val, test):
            if part is not None:
                x, n = part.x["mfcc"], part.x["mfcc_lengths"]
                mask = torch.arange(x.shape[-1])[None, :] < n[:, None]
                part.x["mfcc"] = (x - mean) / std * mask[:, None, :]
    sizes = {"n_features": preset.n_features}
    if states is not None:
        sizes["w2v2_dim"] = int(train.x["w2v2"].shape[1])
    counts = {"utterances": {"train": len(tr_idx), "val": len(va_idx), "test": len(te_idx)},
              "failed_audio": len(failed)}
    return Views(train, val, test, counts, normalizer=normalizer, sizes=sizes)


def predict_inputs(exp: Experiment, wave: np.ndarray, normalizer: dict) -> dict:
    """One 16-kHz waveform -> the model's keyword inputs (batch of one), as :func:`ca_ser_view` builds them."""
    from serlib import features as F

    preset = F.PRESETS[exp.features]
    x, n = F.compute_with_lengths(preset, wave[None].astype(np.float32), lengths=torch.as_tensor([len(wave)]))
    mfcc = x[:, :, : int(n[0])].float().cpu()
    if "mfcc" in normalizer:
        mean, std = normalizer["mfcc"]
        mfcc = (mfcc - mean) / std
    out = {"mfcc": mfcc, "mfcc_lengths": torch.as_tensor([mfcc.shape[-1]])}
    if exp.model_kwargs.get("branch", "fusion") != "mfcc":
        h = torch.as_tensor(w2v2_states(exp.view_kwargs, [wave], progress=False)[0].T)[None]
        out.update(w2v2=h, w2v2_lengths=torch.as_tensor([h.shape[-1]]))
    return out


register_view("ca_ser", ca_ser_view)
register_inputs("ca_ser", predict_inputs)


@torch.no_grad()
def cross_attention(model: torch.nn.Module, data: ArrayData, item: int) -> dict:
    """The fusion model's cross-attention on item ``item`` of ``data`` (a :func:`ca_ser_view` part), eval mode:
    ``heads`` (n_heads, T1, T2) and their mean ``map`` (T1, T2): which wav2vec 2.0 frame (20 ms) each MFCC frame
    (10 ms) attends to; ``mfcc`` (F, T1), the utterance row ``group``, its ``label`` and the model's ``pred``."""
    model.eval()
    sub = data.subset([item])
    x, _, _ = sub.batch(slice(0, 1))
    logits, aux = model(**x)
    if aux.get("cross_attention") is None:
        raise ValueError("cross-attention exists only in the fusion arm")
    heads = aux["cross_attention"][0].float().cpu().numpy()
    return {"heads": heads, "map": heads.mean(0), "mfcc": x["mfcc"][0].cpu().numpy(), "group": int(sub.groups[0]),
            "label": int(sub.y[0]), "pred": int(logits.argmax(1)[0])}


# ------------------------------------------------------------------------------------------------ experiments
def _protocols(corpus: str, protocols: Sequence[str]) -> list[tuple[str, str, dict]]:
    """(experiment name, split protocol, protocol kwargs) per requested protocol (see the module docstring)."""
    out = []
    if "paper" in protocols:
        if corpus == "iemocap":
            out += [("ca_ser_cv5_session", "loso_session", {}), ("ca_ser_cv10_speaker", "loso_speaker", {})]
        else:
            out.append(("ca_ser_loso_speaker", "loso_speaker", {}))
    if "speaker_independent" in protocols:
        out.append(("ca_ser_speaker_independent", "speaker_independent", {}))
    return out


def base_experiment(name: str, corpus: str, data_root: str | None, protocol: str, protocol_kwargs: dict | None = None,
                    ) -> Experiment:
    """The paper's configuration of the fusion model on one protocol (IEMOCAP: the 4-class, hap + exc corpus)."""
    return Experiment(
        name=name, corpus=corpus, data_root=data_root,
        corpus_kwargs={"label_set": "4class_exc_merged"} if corpus == "iemocap" else {},
        protocol=protocol, protocol_kwargs=dict(protocol_kwargs or {}), split_seed=0,
        features=FEATURES, view="ca_ser", normalize=True, model="ca_ser", model_kwargs=dict(PAPER_MODEL),
        train=dict(PAPER_TRAIN), loss=PAPER_LOSS[0], loss_kwargs=dict(PAPER_LOSS[1]), seeds=PAPER_SEEDS,
        aggregate="mean_prob")


def arm_experiment(base: Experiment, arm: str, w2v2: dict | None, *, layer: int | None = None) -> Experiment:
    """``base`` as one arm: ``mfcc`` (no wav2vec 2.0 input), ``w2v2`` (probe on ``layer``) or ``fusion``."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    view = {} if arm == "mfcc" else {**w2v2, "layer": int(w2v2["layer"] if layer is None else layer)}
    label = f"probe_l{view['layer']}" if layer is not None else arm
    loss_kwargs = dict(base.loss_kwargs)
    if arm == "fusion":  # the auxiliary MFCC-branch loss (only the fusion has that head)
        loss_kwargs["alpha"] = float(base.model_kwargs.get("aux_alpha", CODE_AUX_ALPHA))
    return base.replace(name=f"{base.name}__{label}", arm=label, view_kwargs=view, loss_kwargs=loss_kwargs,
                        model_kwargs={**base.model_kwargs, "branch": arm})


def pair_loss_overrides(overrides: dict) -> dict:
    """``overrides`` with each :data:`PAIRED` setting given on one side (``--model.aux_alpha`` or ``--loss.alpha``)
    copied to the other; two different values raise :class:`~serlib.studies.base.ConfigError`."""
    model, loss = dict(overrides.get("model") or {}), dict(overrides.get("loss") or {})
    for m, k in PAIRED.items():
        if m in model and k in loss:
            a, b = _convert(model[m], float, f"model.{m}"), _convert(loss[k], float, f"loss.{k}")
            if a != b:
                raise ConfigError(f"--model.{m} {model[m]} and --loss.{k} {loss[k]} differ: they are one setting "
                                  "(the training loss's); give one of them")
        elif m in model:
            loss[k] = model[m]
        elif k in loss:
            model[m] = loss[k]
    out = dict(overrides)
    out.update({k: v for k, v in (("model", model), ("loss", loss)) if v})
    return out


def fusion_only_alpha(exp: Experiment) -> Experiment:
    """``exp`` without an auxiliary-loss ``alpha`` unless it is the fusion arm (the only one with the MFCC-branch
    head; elsewhere the loss would refuse it), with a note when a non-zero one is dropped."""
    if exp.model_kwargs.get("branch", "fusion") == "fusion":
        return exp
    loss = {k: v for k, v in exp.loss_kwargs.items() if k != "alpha"}
    model = {k: v for k, v in exp.model_kwargs.items() if k != "aux_alpha"}
    if exp.loss_kwargs.get("alpha"):
        _say(f"alpha {exp.loss_kwargs['alpha']} (the auxiliary MFCC-branch loss) applies to the fusion arm only; "
             f"not set for the {exp.model_kwargs.get('branch')} arm, which has no auxiliary head")
    return exp.replace(loss_kwargs=loss, model_kwargs=model) if (loss, model) != (exp.loss_kwargs,
                                                                                 exp.model_kwargs) else exp


def experiments(corpus: str = "ravdess", data_root: str | None = None, *, profile: str = "full",
                protocols: Sequence[str] = ("paper", "speaker_independent"), w2v2: str | None = None,
                layer: int = PAPER_LAYER, parts: Sequence[str] = ("ablation",)) -> list[Experiment]:
    """What ``python -m serlib reproduce ca_ser`` runs: per protocol the ablation arms (MFCC only; with weights also
    the layer-``layer`` probe and the fusion) and, with ``parts`` containing ``layer_sweep``, a probe per layer."""
    bad = set(parts) - set(PARTS)
    if bad:
        raise ValueError(f"parts must be among {PARTS}, got {sorted(bad)}")
    settings = w2v2_settings(w2v2, int(layer))
    prof = PROFILES[profile]
    exps = []
    for name, protocol, kw in _protocols(corpus, protocols):
        base = base_experiment(name, corpus, data_root, protocol, kw)
        if "ablation" in parts:
            exps += [arm_experiment(base, arm, settings) for arm in ARMS if arm == "mfcc" or settings]
        if "layer_sweep" in parts and settings:
            exps += [arm_experiment(base, "w2v2", settings, layer=k) for k in range(settings["n_layers"] + 1)]
    return [prof.apply(e) for e in exps]


# ------------------------------------------------------------------------------------------------ tables
def pretrained_ok(record: dict) -> bool:
    """False for a record made with wav2vec 2.0 weights that are not pretrained (see the module docstring)."""
    view = (record.get("config") or {}).get("view_kwargs") or {}
    return not view.get("w2v2") or bool(view.get("pretrained"))


def _frame(records, include_random: bool) -> pd.DataFrame:
    kept = [r for r in records if include_random or pretrained_ok(r)]
    df = report.frame(kept)
    if df.empty:
        return df
    if "config.view_kwargs.pretrained" not in df:
        df["config.view_kwargs.pretrained"] = np.nan
    df["weights"] = [("none" if pd.isna(p) else "pretrained" if p else "RANDOM (meaningless)")
                     for p in df["config.view_kwargs.pretrained"]]
    return df


def ablation_table(records, include_random: bool = False) -> pd.DataFrame:
    """MFCC only / wav2vec 2.0 probe / fusion: test UA and WA (%, mean / std over seeds x folds) per (corpus,
    protocol, profile, arm). Records made with non-pretrained weights are left out unless ``include_random``."""
    df = _frame(records, include_random)
    if df.empty:
        return pd.DataFrame()
    df = df[df["arm"].isin(ARMS)]
    by = ["corpus", "protocol", "profile", "arm", "weights"]
    return report.summarise(df, by, first={"config.view_kwargs.layer": "layer", "config.view_kwargs.w2v2": "w2v2",
                                           "config.train.epochs": "epochs"})


def layer_sweep_table(records, include_random: bool = False) -> pd.DataFrame:
    """Linear-probe test UA / WA (%) per wav2vec 2.0 layer (the ``layer_sweep`` part)."""
    df = _frame(records, include_random)
    if df.empty:
        return pd.DataFrame()
    df = df[df["arm"].str.startswith("probe_l")]
    if df.empty:
        return pd.DataFrame()
    df = df.assign(layer=df["config.view_kwargs.layer"].astype(int))
    return report.summarise(df, ["corpus", "protocol", "profile", "weights", "layer"])


def paper_reference() -> pd.DataFrame:
    """The paper's numbers, QUOTED from PAPERS.md (not measured by serlib). %."""
    src = "quoted from PAPERS.md (not measured by serlib)"
    return pd.DataFrame([
        {"corpus": "iemocap (4 classes, hap+exc)", "protocol": "CV-5 leave-one-session-out", "WA (%)": 72.34,
         "UA (%)": 71.53, "source": src},
        {"corpus": "iemocap (4 classes, hap+exc)", "protocol": "CV-10 leave-one-speaker-out", "WA (%)": 74.60,
         "UA (%)": 73.50, "source": src},
    ])


@dataclasses.dataclass(frozen=True)
class CASERStudy(Study):
    """The CA-SER study; it disowns records made with non-pretrained wav2vec 2.0 weights (never in a table)."""

    def owns(self, record: dict) -> bool:
        return super().owns(record) and pretrained_ok(record)

    def build(self, corpus: str | None = None, data_root: str | None = None, *, overrides=None, **kwargs):
        """:meth:`Study.build` with the loss settings paired (:func:`pair_loss_overrides`) and alpha on the
        fusion arm only (:func:`fusion_only_alpha`)."""
        exps = super().build(corpus, data_root, overrides=pair_loss_overrides(dict(overrides or {})), **kwargs)
        return [fusion_only_alpha(e) for e in exps]

    def status(self, records: list[dict]) -> list[dict]:
        """The fusion's rows; where a (corpus, protocol, profile) has none, the MFCC branch's, named as such."""
        rows = super().status(records)
        have = {(r["corpus"], r["protocol"], r["profile"]) for r in rows}
        mfcc = Study.status(dataclasses.replace(self, main_arm="mfcc"), records)
        rows += [{**r, "paper": f"{self.title}: MFCC branch only (no pretrained wav2vec 2.0 here)"} for r in mfcc
                 if (r["corpus"], r["protocol"], r["profile"]) not in have]
        return rows


STUDY = CASERStudy(
    name="ca_ser",
    title="CA-SER (wav2vec 2.0 + MFCC cross-attention)",
    paper="Deeb, Savchenko, Makarov 2024, Enhancing emotion recognition in spoken dialogue systems through "
          "multimodal integration and personalization (CA-SER)",
    experiments=experiments,
    tables=(Table("ablation", "Ablation: MFCC branch only / wav2vec 2.0 probe / fusion (pretrained weights only)",
                  ablation_table,
                  note="The fusion and probe rows need pretrained wav2vec 2.0 weights "
                       "(`--w2v2 facebook/wav2vec2-base`); runs with random weights are never listed."),
            Table("layer_sweep", "Linear probe per wav2vec 2.0 layer", layer_sweep_table)),
    prefixes=("ca_ser",),
    paper_reference=paper_reference,
    notebook="05_ca_ser.ipynb",
    options={"w2v2": (None, None, "wav2vec 2.0 weights: a hub id (facebook/wav2vec2-base) or a local folder; "
                                  "without it only the MFCC branch runs"),
             "layer": (None, PAPER_LAYER, "wav2vec 2.0 layer (hidden_states index; paper 9)"),
             "parts": (PARTS, ("ablation",), "ablation arms and/or a per-layer probe sweep")},
    default_corpus="ravdess",
    main_arm="fusion",
    paper_claim="71.53 / 73.50 UA (IEMOCAP CV-5 / CV-10)",
)

__all__ = ["ARMS", "PAIRED", "PAPER_LAYER", "PROFILES", "STUDY", "ablation_table", "arm_experiment", "ca_ser_view",
           "cross_attention", "experiments", "fusion_only_alpha", "is_pretrained", "layer_sweep_table",
           "pair_loss_overrides", "predict_inputs", "pretrained_ok", "save_random_wav2vec2", "w2v2_settings"]
