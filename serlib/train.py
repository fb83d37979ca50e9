"""A model-agnostic trainer: loop, optimiser, scheduler, AMP, checkpoints, model selection, callbacks.

Nothing in this file has anything to do with emotions. The experiment code hands it tensors (:class:`ArrayData`), a
model whose ``forward(x, lengths=None)`` returns ``(logits, aux)`` (a plain logits tensor is tolerated), and
optionally a ``score_fn`` that turns logits into metrics (e.g. segment -> utterance aggregation and UA).

Losses that need more than the logits (an auxiliary head's loss, a regulariser on an attention map): a ``loss_fn``
whose signature has a parameter named ``aux`` is called ``loss_fn(logits, y, aux=aux)`` with the model's aux dict of
the same batch while training, and with ``aux=None`` when a split is evaluated (so ``val`` / ``test`` ``loss`` is that
of the logits alone, comparable across models with and without auxiliary heads, and no per-batch aux is kept). The
trainer never looks inside ``aux``: what the keys mean is between the model and its loss (e.g.
:class:`serlib.losses.AuxiliaryLoss` reads ``aux["aux_logits"]``). Any other ``loss_fn`` gets ``(logits, y)``.
(Over 450 lines on purpose: the loop, selection, AMP, checkpoint / resume and the data holder are one contract that
its tests pin down together.)

Data is held in memory (on the GPU when training there); batches are index slices of a permutation drawn from a
``torch.Generator`` seeded with ``TrainConfig.seed``, so no DataLoader and no worker processes are involved. When
``lengths`` is given, ``x`` is padded along its **last** axis (time) and each batch is cropped to its own longest item.

Model selection (``TrainConfig.select``):

* ``"val"`` (default): keep the weights of the epoch with the best validation score (earliest epoch on ties);
  the test split is evaluated once, at the end, with those weights.
* ``"last"``: the weights after the last epoch run.
* ``"best_test"``: the epoch with the best *test* score -- the selection some papers' code makes. It is optimistic;
  it is only used when named explicitly and :class:`FitResult` records it in ``selection``.

Early stopping always watches the validation score.

Nothing silent: a non-finite mean training loss (NaN / inf, e.g. from non-finite features) stops the run with
:class:`NonFiniteLossError` (carrying the epoch and the history so far; no checkpoint is written for that epoch), and
resuming from a checkpoint whose configuration differs from this one (seed, lr, optimiser, ...) raises
:class:`CheckpointMismatchError` instead of returning the old run's results under a new configuration.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from serlib.augment import mixup, mixup_loss, spec_augment

log = logging.getLogger(__name__)

SELECTIONS = ("val", "last", "best_test")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = (None, "step", "plateau", "cosine")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 1
# TrainConfig fields that may change between a run and its resumption (more epochs, another device, progress bars);
# any other change makes a resume refuse with CheckpointMismatchError.
RESUME_IGNORED = frozenset(
    {"epochs", "progress", "checkpoint_dir", "device", "track_test", "eval_every", "eval_batch_size", "compile"}
)


# ------------------------------------------------------------------------------------------------ errors
class NonFiniteLossError(FloatingPointError):
    """The mean training loss of an epoch was NaN or infinite: the run cannot go on.

    ``epoch`` (1-based), ``loss`` and ``history`` (the entries of the epochs before it) are kept so the caller can
    record the failure."""

    def __init__(self, epoch: int, loss: float, history: list[dict]):
        self.epoch, self.loss, self.history = int(epoch), float(loss), list(history)
        super().__init__(
            f"non-finite training loss {loss} at epoch {epoch}: the inputs or the learning rate make training "
            "diverge (check the features for NaN / inf and the learning rate)"
        )


class CheckpointMismatchError(ValueError):
    """A checkpoint to resume from was made with a different configuration (``changed``: key -> (old, new))."""

    def __init__(self, path: str | Path, changed: dict):
        self.path, self.changed = str(path), dict(changed)
        diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
        super().__init__(
            f"{path}: checkpoint made with a different configuration ({diff}); delete that folder or run without "
            "resuming to start afresh"
        )


# ------------------------------------------------------------------------------------------------ utilities
def set_seed(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other names pass through (``"cuda:1"``, ``"cpu"``).

    Raises ``ValueError`` when a CUDA device is asked for and none is available.
    """
    if isinstance(name, torch.device):
        dev = name
    elif name in (None, "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} requested but CUDA is not available")
    return dev


# ------------------------------------------------------------------------------------------------ data
@dataclass
class ArrayData:
    """In-memory tensors of one split.

    x:       (N, ...) features; for variable-length items padded along the last axis to T_max. Or a dict of named
             inputs, each (N, ...), passed to the model as keyword arguments (``model(**batch)``): a two-input model
             (e.g. ``{"mfcc": (N, F, T1), "mfcc_lengths": (N,), "w2v2": (N, D, T2), "w2v2_lengths": (N,)}``) needs
             no change here; an input ``k`` with a ``k_lengths`` entry is cropped per batch like ``x`` is.
    y:       (N,) int64 class indices.
    lengths: (N,) int64 valid lengths along the last axis of ``x`` (a tensor ``x``), or None for fixed-size items.
    groups:  (N,) int64 group of each item (e.g. the source-utterance index of each segment), or None.

    numpy arrays are accepted and converted; float64 inputs are stored as float32.
    """

    x: Tensor | dict[str, Tensor]
    y: Tensor
    lengths: Tensor | None = None
    groups: Tensor | None = None

    def __post_init__(self) -> None:
        def as_input(a):
            a = torch.as_tensor(a)
            return a.float() if a.dtype == torch.float64 else a

        self.x = {k: as_input(v) for k, v in self.x.items()} if isinstance(self.x, dict) else as_input(self.x)
        self.y = torch.as_tensor(self.y).long()
        n = len(self.y) if self.y.ndim else -1
        for name, a in (self.x.items() if isinstance(self.x, dict) else [("x", self.x)]):
            if not a.ndim or a.shape[0] != n or self.y.shape != (n,):
                raise ValueError(f"y has shape {tuple(self.y.shape)}; {name} {tuple(a.shape)} must have as many "
                                 "items")
        if self.lengths is not None:
            if isinstance(self.x, dict):
                raise ValueError("a dict x carries its lengths as inputs (e.g. 'mfcc_lengths'), not in lengths")
            self.lengths = torch.as_tensor(self.lengths).long()
            if self.lengths.shape != (n,):
                raise ValueError(f"lengths has shape {tuple(self.lengths.shape)}, expected ({n},)")
            if n and (int(self.lengths.min()) < 1 or int(self.lengths.max()) > self.x.shape[-1]):
                raise ValueError(f"lengths must lie in [1, {self.x.shape[-1]}] (the last axis of x)")
        if self.groups is not None:
            self.groups = torch.as_tensor(self.groups).long()
            if self.groups.shape != (n,):
                raise ValueError(f"groups has shape {tuple(self.groups.shape)}, expected ({n},)")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def device(self) -> torch.device:
        return self.y.device

    def _map(self, fn) -> Tensor | dict[str, Tensor]:
        return {k: fn(v) for k, v in self.x.items()} if isinstance(self.x, dict) else fn(self.x)

    def to(self, device: str | torch.device) -> ArrayData:
        """The same data on ``device`` (tensors already there are not copied)."""
        device = torch.device(device)
        return ArrayData(
            x=self._map(lambda a: a.to(device)),
            y=self.y.to(device),
            lengths=None if self.lengths is None else self.lengths.to(device),
            groups=None if self.groups is None else self.groups.to(device),
        )

    def subset(self, idx) -> ArrayData:
        """Items ``idx`` (integer indices or a boolean mask; list, numpy or tensor). Not cropped."""
        idx = torch.as_tensor(np.asarray(idx) if not isinstance(idx, Tensor) else idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.long().to(self.y.device)
        return ArrayData(
            x=self._map(lambda a: a[idx]),
            y=self.y[idx],
            lengths=None if self.lengths is None else self.lengths[idx],
            groups=None if self.groups is None else self.groups[idx],
        )

    def batch(self, idx: Tensor | slice) -> tuple[Tensor | dict[str, Tensor], Tensor, Tensor | None]:
        """``(x, y, lengths)`` of items ``idx``, with ``x`` cropped to the batch's longest item when lengths exist
        (a dict ``x``: each input ``k`` to the longest of its ``k_lengths``)."""
        y = self.y[idx]
        if isinstance(self.x, dict):
            x = {k: v[idx] for k, v in self.x.items()}
            for k in list(x):
                lens = x.get(f"{k}_lengths")
                if lens is not None and len(lens):
                    x[k] = x[k][..., : int(lens.max())]
            return x, y, None
        x = self.x[idx]
        if self.lengths is None:
            return x, y, None
        lengths = self.lengths[idx]
        if len(lengths):
            x = x[..., : int(lengths.max())]
        return x, y, lengths


# ------------------------------------------------------------------------------------------------ config
@dataclass
class TrainConfig:
    """Everything that decides a training run (recorded with every result via :meth:`to_dict`).

    Scheduler parameters: ``step`` uses ``step_size`` / ``gamma`` (stepped per epoch); ``plateau`` uses
    ``plateau_patience`` / ``plateau_factor`` on the selection score (mode max, stepped at evaluated epochs);
    ``cosine`` anneals over ``epochs`` (so resuming with a different ``epochs`` changes its schedule).
    ``amp`` applies only on CUDA (float16 autocast + GradScaler). ``cpu_amp`` is its CPU counterpart, bfloat16
    autocast (weights, optimiser and loss stay float32); it is off by default because it changes the numerics, and
    on CPUs with AVX512-BF16 it makes LSTMs and convolutions about 2x faster (``benchmarks/recurrent.py``).
    ``compile`` runs the model's forward through ``torch.compile`` in that mode (``"reduce-overhead"``: CUDA graphs,
    for launch-bound models on a GPU); the weights and the checkpoints are the uncompiled module's.
    ``deterministic`` and ``flush_denormal`` apply only on CPU; denormal flushing is process-wide and stays on
    after :meth:`Trainer.fit`.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only
    scheduler: str | None = None
    step_size: int = 10
    gamma: float = 0.1
    plateau_patience: int = 4
    plateau_factor: float = 0.1
    grad_accum: int = 1
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    cpu_amp: bool = False
    deterministic: bool = True
    select: str = "val"
    early_stopping_patience: int | None = None
    track_test: bool = False
    checkpoint_dir: str | None = None
    progress: bool = True
    flush_denormal: bool = True
    eval_every: int = 1
    eval_batch_size: int | None = None
    drop_last: bool = False
    compile: str | None = None
    # training-time augmentation of each batch (serlib.augment); off at these defaults. SpecAugment: masks per
    # example and the widest mask, on the input's freq / time axes (default (B, F, T)); mixup: Beta(alpha, alpha)
    specaug_freq_masks: int = 0
    specaug_freq_width: int = 0
    specaug_time_masks: int = 0
    specaug_time_width: int = 0
    specaug_freq_axis: int = -2
    specaug_time_axis: int = -1
    mixup_alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile {self.compile!r} not in {COMPILE_MODES}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {self.scheduler!r} not in {SCHEDULERS}")
        if self.select not in SELECTIONS:
            raise ValueError(f"select {self.select!r} not in {SELECTIONS}")
        for name in ("epochs", "batch_size", "grad_accum", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError("early_stopping_patience must be >= 1 or None")
        for name in ("specaug_freq_masks", "specaug_freq_width", "specaug_time_masks", "specaug_time_width"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0 (0: off), got {self.mixup_alpha}")

    @property
    def augments(self) -> bool:
        """Whether any training-time batch augmentation is on."""
        return self.mixup_alpha > 0 or (self.specaug_freq_masks > 0 and self.specaug_freq_width > 0) or (
            self.specaug_time_masks > 0 and self.specaug_time_width > 0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["checkpoint_dir"] = None if self.checkpoint_dir is None else str(self.checkpoint_dir)
        return d


# ------------------------------------------------------------------------------------------------ results
@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns.

    history: one dict per epoch run: ``epoch``, ``train_loss``, ``lr`` (used during the epoch), ``seconds``,
    ``train_seconds``, ``val`` / ``test`` (scalar metrics, when evaluated that epoch) and anything callbacks added.
    test_metrics / test_logits: the test split evaluated once with the selected weights (logits on CPU).
    val_metrics: the validation metrics of the selected epoch (None without a validation split).
    """

    history: list[dict]
    best_epoch: int
    selection: str
    test_metrics: dict | None
    test_logits: Tensor | None
    timings: dict
    device: str
    amp: bool
    stopped_early: bool = False
    amp_dtype: str | None = None
    epochs_run: int = 0
    val_metrics: dict | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary (without the logits)."""
        d = {k: v for k, v in asdict(self).items() if k != "test_logits"}
        return d


def accuracy_score(logits: Tensor, data: ArrayData) -> dict[str, float]:
    """The default ``score_fn``: item-level accuracy (``score`` = ``accuracy``)."""
    acc = (
        (logits.argmax(dim=1) == data.y.to(logits.device)).float().mean().item()
        if len(data)
        else float("nan")
    )
    return {"score": acc, "accuracy": acc}


def _split_output(out) -> tuple[Tensor, dict]:
    """``(logits, aux)`` or a plain logits tensor -> ``(logits, aux dict)``."""
    if isinstance(out, (tuple, list)):
        logits = out[0]
        aux = out[1] if len(out) > 1 and out[1] is not None else {}
    else:
        logits, aux = out, {}
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise ValueError(
            f"model must return logits of shape (B, C), got {getattr(logits, 'shape', type(logits))}"
        )
    return logits, aux


def _scalars(metrics: dict) -> dict:
    """The scalar entries of a metrics dict as python numbers (lists, dicts and arrays are left out)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (bool, int, np.integer)):
            out[k] = v if isinstance(v, bool) else int(v)
        elif isinstance(v, (float, np.floating)):
            out[k] = float(v)
        elif isinstance(v, Tensor) and v.numel() == 1:
            out[k] = float(v.item())
    return out


def _merge_aux(parts: list[dict], batch_sizes: list[int]) -> dict:
    """Concatenate per-batch aux dicts along dim 0.

    Tensors whose first dim is the batch size are concatenated (zero-padded to the largest trailing shape when
    batches were cropped to different lengths: mask with ``lengths``); anything else is kept as a per-batch list.
    """
    merged: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for p in parts for k in p))
    for k in keys:
        vals = [p.get(k) for p in parts]
        batchwise = all(
            isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == b for v, b in zip(vals, batch_sizes)
        )
        if not batchwise or len({v.ndim for v in vals}) != 1:
            merged[k] = [v.detach().cpu() if isinstance(v, Tensor) else v for v in vals]
            continue
        shape = [max(v.shape[d] for v in vals) for d in range(1, vals[0].ndim)]
        padded = []
        for v in vals:
            v = v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
            pad = []
            for d in reversed(range(1, v.ndim)):
                pad += [0, shape[d - 1] - v.shape[d]]
            padded.append(F.pad(v, pad) if any(pad) else v)
        merged[k] = torch.cat(padded)
    return merged


def _takes_aux(loss_fn: Callable) -> bool:
    """Whether ``loss_fn`` has a parameter named ``aux`` (an ``nn.Module``: its ``forward``)."""
    fn = loss_fn.forward if isinstance(loss_fn, nn.Module) else loss_fn
    try:
        return "aux" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _accepts_return_maps(model: nn.Module) -> bool:
    """Whether ``model.forward`` has a ``return_maps`` keyword (e.g. the Head Fusion ACNN)."""
    try:
        return "return_maps" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@contextmanager
def _runtime_flags(config: TrainConfig, device: torch.device):
    """Deterministic algorithms (restored afterwards) and denormal flushing (sticky) on CPU."""
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if device.type == "cpu":
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if config.flush_denormal:
            torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


_ALLOCATOR: dict = {}


def tune_cpu_allocator() -> bool:
    """Keep freed memory in this process's heap (glibc only; sticky, process-wide, once per process).

    A training step on the CPU allocates and frees tens of MB of activations and gradients; by default glibc serves
    blocks above a dynamic threshold by fresh ``mmap`` calls and returns freed heap tops to the OS, so those pages
    are faulted in (and zeroed by the kernel) again on every step. Raising ``M_MMAP_THRESHOLD`` to glibc's maximum
    (32 MiB) and ``M_TRIM_THRESHOLD`` to 1 GiB keeps them: measured on this project's 2-core CPU, about a tenth of a
    Head Fusion step (``benchmarks/head_fusion_speed.py`` records it, for every side of the process). The cost is a
    resident size that stays at its peak. ``SERLIB_MALLOC_TUNE=0`` leaves the allocator alone. Returns whether the
    settings are in force."""
    if "tuned" not in _ALLOCATOR:
        _ALLOCATOR["tuned"] = False
        if os.environ.get("SERLIB_MALLOC_TUNE", "1") != "0" and sys.platform.startswith("linux"):
            import ctypes

            try:
                libc = ctypes.CDLL("libc.so.6")
                m_trim_threshold, m_mmap_threshold = -1, -3
                _ALLOCATOR["tuned"] = bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(
                    libc.mallopt(m_trim_threshold, 2**30))
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                pass
    return _ALLOCATOR["tuned"]


# ------------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Train ``model`` on :class:`ArrayData` with ``config``.

    loss_fn(logits (B, C), y (B,)) -> scalar; default cross-entropy. One with an ``aux`` parameter gets the model's
    aux dict while training and None when evaluating (see the module docstring).
    score_fn(logits (N, C) on CPU, data: ArrayData on CPU) -> dict with key ``"score"`` (higher is better);
    default accuracy. Only its scalar entries go into the history; the full dict is returned for the test split.
    callbacks: objects with optional ``on_fit_start(trainer)``, ``on_epoch_end(trainer, epoch, logs)`` (return
    ``"stop"`` to stop; ``logs`` is the history entry and may be extended) and ``on_fit_end(trainer, result)``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        *,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        score_fn: Callable[[Tensor, ArrayData], dict] | None = None,
        callbacks: Iterable[object] = (),
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            tune_cpu_allocator()
        self.model = model.to(self.device)
        self._call = torch.compile(self.model, mode=config.compile) if config.compile else self.model
        self.loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
        self._loss_takes_aux = _takes_aux(self.loss_fn)
        self.score_fn = score_fn if score_fn is not None else accuracy_score
        self.callbacks = list(callbacks)
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        self.use_cpu_amp = bool(config.cpu_amp and self.device.type == "cpu")
        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.epoch = 0
        self.history: list[dict] = []
        self._shuffle = torch.Generator()
        self._augment = torch.Generator()  # SpecAugment / mixup draws, checkpointed with the shuffle stream
        self._reset_selection()

    # --------------------------------------------------------------------------------------- building
    def _build_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Adam(W) as one fused kernel per parameter where torch has it (same update rule; the per-tensor loop costs
        # ~10 small ops per parameter per step: 1-2 ms of a Head Fusion step on this CPU, benchmarks/head_fusion_speed)
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay, fused=fused or None)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, fused=fused or None)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def _build_scheduler(self):
        c = self.config
        if c.scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=c.step_size, gamma=c.gamma)
        if c.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="max", patience=c.plateau_patience, factor=c.plateau_factor
            )
        if c.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs)
        return None

    def _reset_selection(self) -> None:
        self._sel = {
            "best_score": -math.inf,
            "best_epoch": 0,
            "best_state": None,
            "best_val_score": -math.inf,
            "best_val_epoch": 0,
            "stopped": False,
        }

    # --------------------------------------------------------------------------------------- forward
    def _forward(self, x: Tensor | dict[str, Tensor], lengths: Tensor | None, *, maps: bool | None = None):
        """``model(x[, lengths])``, or ``model(**x)`` for named inputs (a dict ``x``); ``maps`` is passed as
        ``return_maps`` to models whose forward takes it (plot-only aux such as attention maps: False for plain
        predictions, True for :meth:`predict_with_aux`)."""
        kw = dict(x) if isinstance(x, dict) else {} if lengths is None else {"lengths": lengths}
        if maps is not None and _accepts_return_maps(self.model):
            kw["return_maps"] = maps
        return self._call(**kw) if isinstance(x, dict) else self._call(x, **kw)

    def _autocast(self):
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        if self.use_cpu_amp:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return nullcontext()

    @property
    def amp_dtype(self) -> str | None:
        """The autocast dtype in use (``"float16"`` on CUDA, ``"bfloat16"`` with ``cpu_amp``), or None."""
        return "float16" if self.use_amp else "bfloat16" if self.use_cpu_amp else None

    @torch.no_grad()
    def _predict(self, data: ArrayData, batch_size: int | None, with_aux: bool) -> tuple[Tensor, dict]:
        """Logits (N, C) on the trainer's device (and merged aux) in eval mode; ``data`` already on the device."""
        bs = batch_size or self.config.eval_batch_size or self.config.batch_size
        self.model.eval()
        outs, auxs, sizes = [], [], []
        for s in range(0, len(data), bs):
            x, _, lengths = data.batch(slice(s, s + bs))
            with self._autocast():
                logits, aux = _split_output(self._forward(x, lengths, maps=with_aux))
            outs.append(logits.float())
            if with_aux:
                auxs.append(aux)
                sizes.append(logits.shape[0])
        if not outs:
            raise ValueError("cannot predict on an empty split")
        return torch.cat(outs), (_merge_aux(auxs, sizes) if with_aux else {})

    def predict(self, data: ArrayData, batch_size: int | None = None) -> Tensor:
        """Logits (N, C) on CPU, in eval mode, without gradients."""
        return self._predict(data.to(self.device), batch_size, False)[0].cpu()

    def predict_with_aux(self, data: ArrayData, batch_size: int | None = None) -> tuple[Tensor, dict]:
        """``(logits (N, C) on CPU, aux)``; aux tensors concatenated over batches (see ``_merge_aux``)."""
        logits, aux = self._predict(data.to(self.device), batch_size, True)
        return logits.cpu(), aux

    def evaluate(self, data: ArrayData, *, scoring: ArrayData | None = None) -> tuple[Tensor, dict]:
        """``(logits on CPU, metrics)``: ``loss`` (mean ``loss_fn``, of the logits alone) plus everything
        ``score_fn`` returns."""
        dev = data.to(self.device)
        logits, _ = self._predict(dev, None, False)
        with torch.no_grad():
            kw = {"aux": None} if self._loss_takes_aux else {}
            loss = float(self.loss_fn(logits, dev.y, **kw).item())
        logits = logits.cpu()
        metrics = dict(self.score_fn(logits, scoring if scoring is not None else data.to("cpu")))
        if "score" not in metrics:
            raise KeyError("score_fn must return a dict with key 'score' (higher is better)")
        return logits, {"loss": loss, **metrics}

    # --------------------------------------------------------------------------------------- training
    def _optimizer_step(self) -> None:
        clip = self.config.grad_clip
        if self.scaler is not None:
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_epoch(self, data: ArrayData) -> float:
        """One pass over ``data`` (on the device) in a shuffled order; returns the mean training loss per item."""
        c = self.config
        self.model.train()
        n = len(data)
        perm = torch.randperm(n, generator=self._shuffle).to(data.device)
        n_batches = n // c.batch_size if c.drop_last and n >= c.batch_size else math.ceil(n / c.batch_size)
        total = torch.zeros((), device=self.device)
        seen = 0
        self.optimizer.zero_grad(set_to_none=True)
        for b in range(n_batches):
            x, y, lengths = data.batch(perm[b * c.batch_size : (b + 1) * c.batch_size])
            mix = None
            if c.augments:
                x, lengths, mix = self._augment_batch(x, y, lengths)
            with self._autocast():
                logits, aux = _split_output(self._forward(x, lengths))
                kw = {"aux": aux} if self._loss_takes_aux else {}
                if mix is None:
                    loss = self.loss_fn(logits.float(), y, **kw)
                else:
                    loss = mixup_loss(self.loss_fn, logits.float(), y, mix[0], mix[1], **kw)
            group_start = (b // c.grad_accum) * c.grad_accum
            group_len = min(c.grad_accum, n_batches - group_start)
            scaled = loss / group_len
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
            if b + 1 - group_start == group_len:
                self._optimizer_step()
            total += loss.detach().float() * y.shape[0]
            seen += y.shape[0]
        return float((total / max(seen, 1)).item())

    def _augment_batch(self, x: Tensor, y: Tensor, lengths: Tensor | None):
        """SpecAugment, then mixup (:mod:`serlib.augment`), as the config asks: ``(x, lengths, mix)`` with ``mix``
        None or ``(y_partner, lam)``."""
        c = self.config
        if not isinstance(x, Tensor):
            raise TypeError(f"SpecAugment / mixup (TrainConfig specaug_* / mixup_alpha) take one (B, F, T) feature "
                            f"tensor per batch; this model's batches are {type(x).__name__} (e.g. CA-SER's MFCC + "
                            f"wav2vec 2.0 inputs): set them to 0 for it")
        x = spec_augment(x, generator=self._augment, freq_masks=c.specaug_freq_masks,
                         freq_width=c.specaug_freq_width, time_masks=c.specaug_time_masks,
                         time_width=c.specaug_time_width, freq_axis=c.specaug_freq_axis,
                         time_axis=c.specaug_time_axis, lengths=lengths)
        if c.mixup_alpha > 0:
            x, _, y_partner, lam, lengths = mixup(x, y, alpha=c.mixup_alpha, generator=self._augment,
                                                  lengths=lengths)
            return x, lengths, (y_partner, lam)
        return x, lengths, None

    def _selection_score(self, entry: dict) -> float | None:
        sel = self.config.select
        if sel == "val":
            return entry["val"]["score"] if "val" in entry else None
        if sel == "best_test":
            return entry["test"]["score"] if "test" in entry else None
        if "val" in entry:
            return entry["val"]["score"]
        return -entry["train_loss"]

    def fit(
        self,
        train: ArrayData,
        val: ArrayData | None = None,
        test: ArrayData | None = None,
        *,
        resume: bool = False,
    ) -> FitResult:
        """Train for ``config.epochs`` (or until early stopping), restore the selected weights, evaluate test once.

        With ``resume=True`` and a checkpoint in ``config.checkpoint_dir``, continue from it (weights, optimiser,
        scheduler, scaler, selection state, history and RNG states), so the result equals an uninterrupted run.
        """
        c = self.config
        if c.select == "val" and val is None:
            raise ValueError("select='val' needs a validation split; pass val or choose select='last'")
        if c.select == "best_test" and test is None:
            raise ValueError("select='best_test' needs a test split")
        if c.early_stopping_patience is not None and val is None:
            raise ValueError("early stopping watches the validation score; pass val")
        if len(train) == 0:
            raise ValueError("empty training split")
        t_start = time.perf_counter()
        track_test = test is not None and (c.select == "best_test" or c.track_test)

        with _runtime_flags(c, self.device):
            set_seed(c.seed)
            self._shuffle.manual_seed(c.seed)
            self._augment.manual_seed(c.seed + 0x5EED)
            self.epoch, self.history = 0, []
            self._reset_selection()
            if resume:
                self._load_checkpoint()
            splits_dev = {"train": train.to(self.device)}
            splits_cpu = {}
            for name, d in (("val", val), ("test", test)):
                if d is not None:
                    splits_dev[name], splits_cpu[name] = d.to(self.device), d.to("cpu")
            for cb in self.callbacks:
                if hasattr(cb, "on_fit_start"):
                    cb.on_fit_start(self)

            bar = _progress(c, total=c.epochs, initial=self.epoch)
            try:
                while self.epoch < c.epochs and not self._sel["stopped"]:
                    self._run_epoch(splits_dev, splits_cpu, track_test)
                    bar.update(1)
                    last = self.history[-1]
                    bar.set_postfix(
                        loss=f"{last['train_loss']:.4f}",
                        **({"val": f"{last['val']['score']:.4f}"} if "val" in last else {}),
                    )
            finally:
                bar.close()

            if c.select != "last" and self._sel["best_state"] is not None:
                self.model.load_state_dict(self._sel["best_state"])
            best_epoch = self.epoch if c.select == "last" else self._sel["best_epoch"]
            test_metrics = test_logits = None
            t_test = time.perf_counter()
            if test is not None:
                test_logits, test_metrics = self.evaluate(splits_dev["test"], scoring=splits_cpu["test"])
            t_test = time.perf_counter() - t_test

        seconds = [h["seconds"] for h in self.history]
        train_seconds = [h["train_seconds"] for h in self.history]
        best_entry = next((h for h in self.history if h["epoch"] == best_epoch), {})
        result = FitResult(
            history=[dict(h) for h in self.history],
            best_epoch=best_epoch,
            selection=c.select,
            test_metrics=test_metrics,
            test_logits=test_logits,
            timings={
                "total_s": time.perf_counter() - t_start,
                "epoch_mean_s": float(np.mean(seconds)) if seconds else float("nan"),
                "train_epoch_mean_s": float(np.mean(train_seconds)) if train_seconds else float("nan"),
                "final_test_s": t_test,
            },
            device=str(self.device),
            amp=self.use_amp or self.use_cpu_amp,
            amp_dtype=self.amp_dtype,
            stopped_early=self.epoch < c.epochs,
            epochs_run=self.epoch,
            val_metrics=best_entry.get("val"),
        )
        for cb in self.callbacks:
            if hasattr(cb, "on_fit_end"):
                cb.on_fit_end(self, result)
        return result

    def _run_epoch(self, dev: dict[str, ArrayData], cpu: dict[str, ArrayData], track_test: bool) -> None:
        c, s = self.config, self._sel
        epoch = self.epoch + 1
        t0 = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        train_loss = self.train_epoch(dev["train"])
        entry: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": lr,
            "train_seconds": time.perf_counter() - t0,
        }
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(epoch, train_loss, self.history)
        evaluated = epoch % c.eval_every == 0 or epoch == c.epochs
        if evaluated and "val" in dev:
            entry["val"] = _scalars(self.evaluate(dev["val"], scoring=cpu["val"])[1])
        if evaluated and track_test:
            entry["test"] = _scalars(self.evaluate(dev["test"], scoring=cpu["test"])[1])

        score = self._selection_score(entry) if evaluated else None
        if score is not None and score > s["best_score"]:
            s["best_score"], s["best_epoch"] = score, epoch
            if c.select != "last":
                s["best_state"] = {
                    k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
                }
        if "val" in entry and entry["val"]["score"] > s["best_val_score"]:
            s["best_val_score"], s["best_val_epoch"] = entry["val"]["score"], epoch

        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if score is not None:
                self.scheduler.step(score)
        elif self.scheduler is not None:
            self.scheduler.step()

        patience = c.early_stopping_patience
        if patience is not None and "val" in entry and epoch - s["best_val_epoch"] >= patience:
            s["stopped"] = True
            entry["stopped_by"] = "early_stopping"
        entry["seconds"] = time.perf_counter() - t0
        for cb in self.callbacks:
            hook = getattr(cb, "on_epoch_end", None)
            if hook is not None and hook(self, epoch, entry) == "stop":
                s["stopped"] = True
                entry.setdefault("stopped_by", type(cb).__name__)
        self.history.append(entry)
        self.epoch = epoch
        log.info("epoch %d: %s", epoch, {k: v for k, v in entry.items() if k != "epoch"})
        if c.checkpoint_dir is not None:
            self._save_checkpoint()

    # --------------------------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        return (
            None if self.config.checkpoint_dir is None else Path(self.config.checkpoint_dir) / CHECKPOINT_NAME
        )

    def _save_checkpoint(self) -> Path:
        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "history": self.history,
            "selection": self._sel,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "shuffle": self._shuffle.get_state(),
                "augment": self._augment.get_state(),
            },
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def _load_checkpoint(self) -> bool:
        """Restore from ``checkpoint_path`` if it exists (our own file: loaded with ``weights_only=False``)."""
        path = self.checkpoint_path
        if path is None:
            raise ValueError("resume=True needs config.checkpoint_dir")
        if not path.is_file():
            log.info("no checkpoint at %s; starting from scratch", path)
            return False
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: checkpoint format {ckpt.get('format')} != {CHECKPOINT_FORMAT}")
        old, new = ckpt["config"], self.config.to_dict()
        defaults = TrainConfig().to_dict()  # a field added after the checkpoint was written reads as its default
        changed = {k: (old.get(k, defaults[k]), new[k]) for k in new
                   if k not in RESUME_IGNORED and old.get(k, defaults[k]) != new[k]}
        if changed:
            raise CheckpointMismatchError(path, changed)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        self._sel = dict(ckpt["selection"])
        rng = ckpt["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self._shuffle.set_state(rng["shuffle"])
        if "augment" in rng:
            self._augment.set_state(rng["augment"])
        return True


def _progress(config: TrainConfig, *, total: int, initial: int):
    from tqdm.auto import tqdm

    disable = not (config.progress and sys.stderr.isatty())
    return tqdm(total=total, initial=initial, disable=disable, desc="epochs", unit="ep", leave=False)


__all__ = ["ArrayData", "CheckpointMismatchError", "FitResult", "NonFiniteLossError", "TrainConfig", "Trainer", "accuracy_score", "resolve_device", "set_seed"]
