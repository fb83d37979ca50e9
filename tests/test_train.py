"""The model-agnostic trainer: learning, selection, early stopping, determinism, resume, cropping, aux."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from serlib.train import ArrayData, TrainConfig, Trainer, resolve_device, set_seed


# ------------------------------------------------------------------------------------------------ helpers
class TinyMLP(nn.Module):
    def __init__(self, n_in: int = 4, n_classes: int = 2, hidden: int = 16, p: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, n_classes)
        )

    def forward(self, x, lengths=None):
        return self.net(x), {}


class SeqPool(nn.Module):
    """Mean over the valid frames of (B, F, T); records the (T seen, max length) of every call."""

    def __init__(self, n_features: int = 3, n_classes: int = 2) -> None:
        super().__init__()
        self.lin = nn.Linear(n_features, n_classes)
        self.seen: list[tuple[int, int]] = []

    def forward(self, x, lengths=None):
        assert lengths is not None and x.ndim == 3
        self.seen.append((x.shape[-1], int(lengths.max())))
        mask = (torch.arange(x.shape[-1])[None, :] < lengths[:, None]).to(x.dtype)
        pooled = (x * mask[:, None, :]).sum(-1) / lengths[:, None]
        return self.lin(pooled), {"mask": mask, "const": 1.0}


def blobs(n: int, *, seed: int, n_in: int = 4) -> ArrayData:
    """Two Gaussian blobs 4 standard deviations apart along every axis."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, n_in, generator=g) + 2.0 * (2 * y[:, None] - 1)
    return ArrayData(x=x, y=y)


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=8, lr=1e-2, device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


class Scripted:
    """A score_fn returning scripted val / test scores per call, told apart by split size."""

    def __init__(self, val_scores, test_scores=(), *, n_val: int, n_test: int) -> None:
        self.val_scores, self.test_scores = list(val_scores), list(test_scores)
        self.n_val, self.n_test = n_val, n_test
        self.calls = {"val": 0, "test": 0}

    def __call__(self, logits, data):
        part = "val" if len(data) == self.n_val else "test"
        assert len(data) == (self.n_val if part == "val" else self.n_test)
        scores = self.val_scores if part == "val" else self.test_scores
        k = self.calls[part]
        self.calls[part] += 1
        return {"score": scores[k] if k < len(scores) else -1.0}


class Snapshots:
    """Callback keeping a copy of the weights after every epoch."""

    def __init__(self) -> None:
        self.states: dict[int, dict] = {}

    def on_epoch_end(self, trainer, epoch, logs):
        self.states[epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ tests
def test_tiny_mlp_learns_separable_problem():
    set_seed(0)
    train, val, test = blobs(128, seed=1), blobs(32, seed=2), blobs(64, seed=3)
    result = Trainer(TinyMLP(), cfg(epochs=8)).fit(train, val, test)
    assert result.test_metrics["accuracy"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.test_logits.shape == (64, 2) and result.test_logits.device.type == "cpu"
    assert result.selection == "val" and 1 <= result.best_epoch <= 8
    assert result.device == "cpu" and result.amp is False
    assert {"epoch", "train_loss", "lr", "seconds", "val"} <= set(result.history[0])
    assert "test" not in result.history[0]


def test_cpu_amp_trains_in_bfloat16_and_keeps_float32_weights():
    """cpu_amp: the forward runs under bfloat16 autocast (the logits come out in bfloat16), the weights stay float32,
    the model still learns, and the result says which dtype was used."""
    seen = []

    class Probe(TinyMLP):
        def forward(self, x, lengths=None):
            logits, aux = super().forward(x)
            seen.append(logits.dtype)
            return logits, aux

    set_seed(0)
    train, val, test = blobs(128, seed=1), blobs(32, seed=2), blobs(64, seed=3)
    model = Probe()
    result = Trainer(model, cfg(epochs=8, cpu_amp=True)).fit(train, val, test)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.amp is True and result.amp_dtype == "bfloat16"
    assert result.test_metrics["accuracy"] > 0.9
    plain = Trainer(TinyMLP(), cfg(epochs=1)).fit(train, val, test)
    assert plain.amp is False and plain.amp_dtype is None


def test_select_val_picks_first_best_epoch_and_restores_its_weights():
    train, val, test = blobs(16, seed=1), blobs(10, seed=2), blobs(12, seed=3)
    score = Scripted([0.1, 0.5, 0.3, 0.5, 0.2], [0.9], n_val=10, n_test=12)
    snaps = Snapshots()
    set_seed(0)
    trainer = Trainer(TinyMLP(), cfg(epochs=5), score_fn=score, callbacks=[snaps])
    result = trainer.fit(train, val, test)
    assert result.best_epoch == 2  # ties (epoch 4) keep the earlier epoch
    assert same_weights(trainer.model.state_dict(), snaps.states[2])
    assert not same_weights(snaps.states[2], snaps.states[5])
    assert score.calls == {"val": 5, "test": 1}  # test evaluated once, at the end
    assert result.test_metrics["score"] == 0.9
    assert [h["val"]["score"] for h in result.history] == [0.1, 0.5, 0.3, 0.5, 0.2]
    assert result.val_metrics["score"] == 0.5


def test_select_last_keeps_last_weights():
    train, test = blobs(16, seed=1), blobs(12, seed=3)
    snaps = Snapshots()
    set_seed(0)
    trainer = Trainer(TinyMLP(), cfg(epochs=3, select="last"), callbacks=[snaps])
    result = trainer.fit(train, None, test)
    assert result.best_epoch == 3 and result.selection == "last"
    assert same_weights(trainer.model.state_dict(), snaps.states[3])


def test_best_test_only_when_asked():
    train, val, test = blobs(16, seed=1), blobs(10, seed=2), blobs(12, seed=3)
    val_scores, test_scores = [0.2, 0.6, 0.4, 0.3], [0.1, 0.2, 0.3, 0.8, 0.8]
    set_seed(0)
    default = Trainer(
        TinyMLP(), cfg(epochs=4), score_fn=Scripted(val_scores, test_scores, n_val=10, n_test=12)
    )
    r = default.fit(train, val, test)
    assert r.selection == "val" and r.best_epoch == 2 and r.test_metrics["score"] == 0.1  # the one test call

    set_seed(0)
    score = Scripted(val_scores, test_scores, n_val=10, n_test=12)
    snaps = Snapshots()
    trainer = Trainer(TinyMLP(), cfg(epochs=4, select="best_test"), score_fn=score, callbacks=[snaps])
    r = trainer.fit(train, val, test)
    assert r.selection == "best_test" and r.best_epoch == 4
    assert [h["test"]["score"] for h in r.history] == test_scores[:4]
    assert same_weights(trainer.model.state_dict(), snaps.states[4])
    assert score.calls == {"val": 4, "test": 5}


def test_track_test_records_curves_without_changing_selection():
    train, val, test = blobs(16, seed=1), blobs(10, seed=2), blobs(12, seed=3)
    set_seed(0)
    score = Scripted([0.9, 0.1, 0.1], [0.1, 0.5, 0.9, 0.0], n_val=10, n_test=12)
    r = Trainer(TinyMLP(), cfg(epochs=3, track_test=True), score_fn=score).fit(train, val, test)
    assert r.best_epoch == 1 and [h["test"]["score"] for h in r.history] == [0.1, 0.5, 0.9]


def test_early_stopping_stops_on_val():
    train, val = blobs(16, seed=1), blobs(10, seed=2)
    set_seed(0)
    score = Scripted([0.1, 0.5, 0.4, 0.3, 0.2, 0.9, 0.9], n_val=10, n_test=12)
    r = Trainer(TinyMLP(), cfg(epochs=7, early_stopping_patience=2), score_fn=score).fit(train, val)
    assert r.epochs_run == 4 and r.stopped_early and r.best_epoch == 2
    assert r.history[-1]["stopped_by"] == "early_stopping"
    assert r.test_metrics is None and r.test_logits is None


def test_callback_can_stop_and_extend_logs():
    class StopAt2:
        def on_epoch_end(self, trainer, epoch, logs):
            logs["custom"] = epoch * 10
            return "stop" if epoch == 2 else None

    set_seed(0)
    r = Trainer(TinyMLP(), cfg(epochs=5, select="last"), callbacks=[StopAt2()]).fit(blobs(16, seed=1))
    assert r.epochs_run == 2 and [h["custom"] for h in r.history] == [10, 20]
    assert r.history[-1]["stopped_by"] == "StopAt2"


def test_same_seed_gives_identical_weights():
    train, val = blobs(40, seed=1), blobs(10, seed=2)
    states = []
    for _ in range(2):
        set_seed(3)
        t = Trainer(TinyMLP(p=0.3), cfg(epochs=2, seed=3, select="last"))
        t.fit(train, val)
        states.append(t.model.state_dict())
    assert same_weights(*states)
    set_seed(3)
    other = Trainer(TinyMLP(p=0.3), cfg(epochs=2, seed=4, select="last"))
    other.fit(train, val)
    assert not same_weights(states[0], other.model.state_dict())  # the seed matters (shuffle, dropout)


def test_resume_equals_uninterrupted_run(tmp_path):
    train, val, test = blobs(40, seed=1), blobs(10, seed=2), blobs(12, seed=3)
    common = dict(seed=5, scheduler="step", step_size=1, gamma=0.5, optimizer="adamw", weight_decay=1e-2)

    set_seed(5)
    full = Trainer(TinyMLP(p=0.3), cfg(epochs=4, **common))
    r_full = full.fit(train, val, test)

    ckpt = tmp_path / "ckpt"
    set_seed(5)
    Trainer(TinyMLP(p=0.3), cfg(epochs=2, checkpoint_dir=str(ckpt), **common)).fit(train, val, test)
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt"]  # atomic save left no temp file
    set_seed(123)  # a different fresh model and global RNG: everything must come from the checkpoint
    resumed = Trainer(TinyMLP(p=0.3), cfg(epochs=4, checkpoint_dir=str(ckpt), **common))
    r_res = resumed.fit(train, val, test, resume=True)

    assert same_weights(full.model.state_dict(), resumed.model.state_dict())
    assert [h["train_loss"] for h in r_full.history] == [h["train_loss"] for h in r_res.history]
    assert [h["lr"] for h in r_res.history] == [1e-2, 5e-3, 2.5e-3, 1.25e-3]
    assert r_full.best_epoch == r_res.best_epoch
    assert torch.equal(r_full.test_logits, r_res.test_logits)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    set_seed(0)
    t = Trainer(TinyMLP(), cfg(epochs=1, select="last", checkpoint_dir=str(tmp_path / "none")))
    r = t.fit(blobs(16, seed=1), resume=True)
    assert r.epochs_run == 1 and (tmp_path / "none" / "last.pt").is_file()


def test_variable_length_batches_are_cropped():
    g = torch.Generator().manual_seed(0)
    n, t_max = 20, 30
    lengths = torch.randint(3, 20, (n,), generator=g)
    lengths[7] = t_max  # one item reaches the padded length
    x = torch.randn(n, 3, t_max, generator=g)
    x = x * (torch.arange(t_max)[None, :] < lengths[:, None])[:, None, :]
    data = ArrayData(x=x, y=torch.arange(n) % 2, lengths=lengths)
    model = SeqPool()
    set_seed(0)
    trainer = Trainer(model, cfg(epochs=1, batch_size=4, select="last"))
    trainer.fit(data)
    assert len(model.seen) == 5
    assert all(t_seen == t_len for t_seen, t_len in model.seen)
    assert any(t_seen < t_max for t_seen, _ in model.seen)

    model.seen.clear()
    logits, aux = trainer.predict_with_aux(data, batch_size=6)
    assert logits.shape == (n, 2)
    assert [s for s, _ in model.seen] == [int(lengths[i : i + 6].max()) for i in range(0, n, 6)]
    assert aux["mask"].shape == (n, t_max)  # batches cropped differently, zero-padded back to the longest
    assert torch.equal(aux["mask"].sum(1).long(), lengths)
    assert aux["const"] == [1.0] * 4  # non-batch values kept per batch
    assert torch.allclose(trainer.predict(data), logits)


def test_plain_tensor_model_is_tolerated():
    model = nn.Sequential(nn.Linear(4, 2))
    set_seed(0)
    trainer = Trainer(model, cfg(epochs=1, select="last"))
    trainer.fit(blobs(16, seed=1))
    logits, aux = trainer.predict_with_aux(blobs(10, seed=2))
    assert logits.shape == (10, 2) and aux == {}


def test_grad_accum_matches_larger_batch():
    train = blobs(32, seed=1)
    states = []
    for bs, acc in ((16, 1), (8, 2)):
        set_seed(0)
        t = Trainer(
            TinyMLP(),
            cfg(epochs=2, batch_size=bs, grad_accum=acc, optimizer="sgd", momentum=0.0, select="last"),
        )
        t.fit(train)
        states.append(t.model.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-5, atol=1e-6)


def test_plateau_scheduler_reduces_lr_on_flat_score():
    train, val = blobs(16, seed=1), blobs(10, seed=2)
    set_seed(0)
    score = Scripted([0.5] * 6, n_val=10, n_test=12)
    r = Trainer(
        TinyMLP(), cfg(epochs=6, scheduler="plateau", plateau_patience=1, plateau_factor=0.1), score_fn=score
    ).fit(train, val)
    lrs = [h["lr"] for h in r.history]
    assert lrs[0] == 1e-2 and lrs[-1] < 1e-3


def test_eval_every_skips_evaluations_but_evaluates_last_epoch():
    train, val = blobs(16, seed=1), blobs(10, seed=2)
    set_seed(0)
    r = Trainer(TinyMLP(), cfg(epochs=5, eval_every=2)).fit(train, val)
    assert ["val" in h for h in r.history] == [False, True, False, True, True]


def test_config_and_split_checks():
    with pytest.raises(ValueError):
        TrainConfig(select="test")
    with pytest.raises(ValueError):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="validation"):
        Trainer(TinyMLP(), cfg()).fit(blobs(16, seed=1))
    with pytest.raises(ValueError, match="test"):
        Trainer(TinyMLP(), cfg(select="best_test")).fit(blobs(16, seed=1), blobs(10, seed=2))
    with pytest.raises(KeyError, match="score"):
        Trainer(TinyMLP(), cfg(), score_fn=lambda logits, d: {"ua": 1.0}).fit(
            blobs(16, seed=1), blobs(10, seed=2)
        )
    d = TrainConfig().to_dict()
    assert d["select"] == "val" and d["amp"] is True and d["track_test"] is False


def test_array_data_checks_and_subset(rng):
    x = rng.standard_normal((6, 2, 5))  # float64 numpy in, float32 tensor out
    data = ArrayData(x=x, y=[0, 1, 0, 1, 0, 1], lengths=[5, 4, 3, 2, 1, 5], groups=[0, 0, 1, 1, 2, 2])
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.long and len(data) == 6
    sub = data.subset([1, 3])
    assert sub.y.tolist() == [1, 1] and sub.lengths.tolist() == [4, 2] and sub.groups.tolist() == [0, 1]
    assert data.subset(torch.tensor([True, False] * 3)).groups.tolist() == [0, 1, 2]
    xb, _, lb = data.batch(torch.tensor([2, 3]))
    assert xb.shape == (2, 2, 3) and lb.tolist() == [3, 2]
    with pytest.raises(ValueError):
        ArrayData(x=x, y=[0, 1])
    with pytest.raises(ValueError):
        ArrayData(x=x, y=[0] * 6, lengths=[6] * 6)  # longer than the padded axis


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError):
            resolve_device("cuda")


@pytest.mark.requires_cuda
def test_one_training_step_agrees_between_cpu_and_cuda():
    train = blobs(16, seed=1)
    states = []
    for device in ("cpu", "cuda"):
        set_seed(0)
        t = Trainer(TinyMLP(), cfg(epochs=1, batch_size=16, device=device, amp=False, select="last"))
        t.fit(train)
        states.append({k: v.cpu() for k, v in t.model.state_dict().items()})
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-4, atol=1e-5)


def test_return_maps_passed_only_to_models_that_take_it():
    """Plain predictions ask for no plot-only aux (return_maps=False); predict_with_aux asks for it; training passes
    nothing (the model's default); models without the keyword are called as before."""

    class Maps(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)
            self.calls: list = []

        def forward(self, x, lengths=None, *, return_maps=None):
            self.calls.append((self.training, return_maps))
            return self.lin(x), ({"map": x[:, :1]} if return_maps else {})

    model = Maps()
    set_seed(0)
    trainer = Trainer(model, cfg(epochs=1, batch_size=16, select="last"))
    trainer.fit(blobs(16, seed=1))
    assert (True, None) in model.calls
    model.calls.clear()
    trainer.predict(blobs(8, seed=2))
    assert model.calls == [(False, False)]
    model.calls.clear()
    _, aux = trainer.predict_with_aux(blobs(8, seed=2))
    assert model.calls == [(False, True)] and aux["map"].shape == (8, 1)


def test_compile_mode_is_checked():
    with pytest.raises(ValueError, match="compile"):
        cfg(compile="fastest")


@pytest.mark.requires_cuda
def test_compiled_training_on_cuda_matches_eager():
    """``TrainConfig.compile`` (CUDA graphs) trains the same weights as the eager module, within float tolerance."""
    train = blobs(64, seed=2)
    states = []
    for mode in (None, "reduce-overhead"):
        set_seed(0)
        t = Trainer(TinyMLP(), cfg(epochs=2, batch_size=16, device="cuda", amp=False, select="last", compile=mode,
                                   drop_last=True))
        t.fit(train)
        states.append({k: v.cpu() for k, v in t.model.state_dict().items()})
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-4, atol=1e-4)


def test_loss_fn_with_an_aux_parameter_gets_the_batch_aux_while_training_and_none_when_evaluating():
    """The generic aux contract: a loss_fn naming ``aux`` gets the model's aux dict of the same batch in training
    and None in evaluation; a plain loss_fn (and nn.Module losses without it) keeps the (logits, y) call."""

    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x, lengths=None):
            logits = self.lin(x)
            return logits, {"twice": 2 * logits}

    seen: list = []

    def loss_fn(logits, y, aux=None):
        seen.append(aux)
        if aux is not None:
            torch.testing.assert_close(aux["twice"], 2 * logits)
        return nn.functional.cross_entropy(logits, y)

    data = blobs(16, seed=1)
    Trainer(WithAux(), cfg(epochs=1, batch_size=8), loss_fn=loss_fn).fit(data, val=blobs(8, seed=2))
    training = [a for a in seen if a is not None]
    assert len(training) == 2 and all(a["twice"].shape == (8, 2) for a in training)
    assert seen.count(None) == 1  # the one validation pass
    plain: list = []
    Trainer(WithAux(), cfg(epochs=1, batch_size=8), loss_fn=lambda lg, y: plain.append(1) or
            nn.functional.cross_entropy(lg, y)).fit(data, val=blobs(8, seed=2))
    assert len(plain) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_cpu_allocator_tuning_stops_page_faults_on_repeated_large_allocations():
    """After tune_cpu_allocator (which a CPU Trainer calls), freeing and reallocating 8 MB tensors reuses the heap
    instead of faulting fresh pages in; SERLIB_MALLOC_TUNE=0 leaves glibc's default. Each case runs in a fresh
    interpreter (the setting is process-wide and sticky)."""
    code = textwrap.dedent("""
        import resource, torch
        from serlib.train import tune_cpu_allocator
        tuned = tune_cpu_allocator()
        n0 = 2 * 2**20  # 8 MB of float32
        for i in range(3):
            a, b = torch.empty(n0 + 1024 * i).fill_(1.0), torch.empty(n0 + 1024 * i).fill_(2.0)
            del a, b
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for i in range(3, 23):  # growing sizes: each above glibc's dynamic threshold (the last freed block's size)
            a, b = torch.empty(n0 + 1024 * i).fill_(1.0), torch.empty(n0 + 1024 * i).fill_(2.0)
            del a, b
        print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    faults = {}
    for setting in ("1", "0"):
        env = {**os.environ, "SERLIB_MALLOC_TUNE": setting}
        for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
            env.pop(k, None)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        tuned, n = out.stdout.split()
        faults[setting] = (tuned == "True", int(n))
    assert faults["1"][0] and not faults["0"][0]
    # 40 blocks of 8 MB: untuned, each is mapped and faulted in afresh (~2048 pages apiece, ~82k measured); tuned,
    # the warm heap serves them (at most a block's worth of new pages measured, depending on the heap's history)
    assert faults["0"][1] > 40 * 2048 * 0.5, faults
    assert faults["1"][1] < 4 * 2048, faults
