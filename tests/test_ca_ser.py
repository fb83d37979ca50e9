"""CA-SER foundation: the wav2vec 2.0 front end (serlib.ssl) on a tiny random saved model, and the CASER model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from serlib import ssl as S  # noqa: E402
from serlib.models.ca_ser import CASER, CASERConfig  # noqa: E402
from serlib.models.registry import build_model, models  # noqa: E402


def tiny_config(norm: str = "layer", layers: int = 3) -> transformers.Wav2Vec2Config:
    return transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), conv_bias=True,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm=norm, do_stable_layer_norm=norm == "layer",
    )


def save_tiny(folder, seed: int = 0, norm: str = "layer", layers: int = 3):
    torch.manual_seed(seed)
    transformers.Wav2Vec2Model(tiny_config(norm, layers)).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_dir(tmp_path):
    return save_tiny(tmp_path / "tiny_w2v2")


def waves(n=5, seed=0):
    rng = np.random.default_rng(seed)
    lengths = [1600, 2400, 2400, 3999, 3200, 2000, 1800][:n]
    return [rng.standard_normal(L).astype(np.float32) * 0.1 for L in lengths]


def count_calls(ssl):
    """Forward hook counting the model's calls and the utterances it processed."""
    calls = {"n": 0, "utts": 0}

    def hook(module, args, kwargs, output):
        calls["n"] += 1
        calls["utts"] += int((args[0] if args else kwargs["input_values"]).shape[0])

    ssl.model.register_forward_hook(hook, with_kwargs=True)
    return calls


def expected_frames(n):
    for k, s in ((10, 5), (3, 2)):
        n = (n - k) // s + 1
    return n


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_hidden_states_shapes_and_batch_equals_alone(tmp_path, norm):
    ssl = S.load_ssl(save_tiny(tmp_path / norm, norm=norm), device="cpu")
    assert ssl.n_layers == 3 and ssl.dim == 32
    ws = waves()
    batched = S.hidden_states(ssl, ws, layer=2, batch_size=4)
    for w, h in zip(ws, batched):
        assert h.shape == (expected_frames(len(w)), 32) and h.dtype == np.float32
        alone = S.hidden_states(ssl, [w], layer=2, batch_size=1)[0]
        np.testing.assert_allclose(h, alone, atol=1e-5)
    # the layer matters, and the result is hidden_states[layer] of the model on the normalised wave
    other = S.hidden_states(ssl, ws[:1], layer=3)[0]
    assert not np.allclose(other, batched[0])
    x = torch.from_numpy(S._prepare(ws[0], True))[None]
    with torch.no_grad():
        ref = ssl.model(x, output_hidden_states=True).hidden_states[2][0].numpy()
    np.testing.assert_allclose(batched[0], ref, atol=1e-5)
    with pytest.raises(ValueError, match="layer must be in 0..3"):
        S.hidden_states(ssl, ws, layer=4)


def test_frozen_eval_and_hash(tiny_dir, tmp_path):
    ssl = S.load_ssl(tiny_dir, device="cpu")
    assert not ssl.model.training and not any(p.requires_grad for p in ssl.model.parameters())
    assert S.load_ssl(tiny_dir, device="cpu").weights_hash == ssl.weights_hash
    copy = shutil.copytree(tiny_dir, tmp_path / "elsewhere" / "copy")  # same weights at another path: same key
    assert S.load_ssl(copy, device="cpu").weights_hash == ssl.weights_hash
    assert S.load_ssl(save_tiny(tmp_path / "other", seed=1), device="cpu").weights_hash != ssl.weights_hash


def test_cache_reused_and_keyed_by_layer_and_model(tiny_dir, tmp_path):
    root = tmp_path / "cache"
    ssl = S.load_ssl(tiny_dir, device="cpu")
    calls = count_calls(ssl)
    ws = waves()
    first = S.cached_hidden_states(ssl, ws, layer=2, batch_size=3, root=root, progress=False)
    assert calls["utts"] == len(ws)
    folder = S.ssl_cache_folder(ssl, 2, root)
    assert len(list(folder.glob("*.npy"))) == len(ws) and (folder / "spec.json").is_file()
    n = calls["n"]
    second = S.cached_hidden_states(ssl, ws, layer=2, batch_size=3, root=root, progress=False)
    assert calls["n"] == n  # all from disk
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # another layer: another folder, recomputed
    S.cached_hidden_states(ssl, ws, layer=1, root=root, progress=False)
    assert calls["utts"] == 2 * len(ws) and S.ssl_cache_folder(ssl, 1, root) != folder
    # another model (other weights): another folder, recomputed, different values
    ssl2 = S.load_ssl(save_tiny(tmp_path / "other", seed=1), device="cpu")
    calls2 = count_calls(ssl2)
    third = S.cached_hidden_states(ssl2, ws, layer=2, root=root, progress=False)
    assert calls2["utts"] == len(ws) and S.ssl_cache_folder(ssl2, 2, root) != folder
    assert not np.allclose(third[0], first[0])
    # the audio content is the key: a changed waveform is recomputed
    changed = [ws[0] * 0.5 + 0.01] + ws[1:]
    S.cached_hidden_states(ssl, changed, layer=2, root=root, progress=False)
    assert calls["utts"] == 2 * len(ws) + 1


def test_cache_resumes_after_partial_build(tiny_dir, tmp_path):
    root = tmp_path / "cache"
    ssl = S.load_ssl(tiny_dir, device="cpu")
    ws = waves(7)
    full = S.cached_hidden_states(ssl, ws, layer=3, root=root, progress=False)
    folder = S.ssl_cache_folder(ssl, 3, root)
    gone = [1, 4]
    for i in gone:
        (folder / f"{S.audio_hash(ws[i])}.npy").unlink()
    (folder / f"{S.audio_hash(ws[6])}.npy").write_bytes(b"truncated")  # a file cut short by a kill
    calls = count_calls(ssl)
    with pytest.warns(UserWarning, match="unusable"):
        again = S.cached_hidden_states(ssl, ws, layer=3, batch_size=2, root=root, progress=False)
    assert calls["utts"] == len(gone) + 1
    for a, b in zip(full, again):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(list(folder.glob("*.npy"))) == len(ws) and not list(folder.glob("*.tmp-*"))


def test_cache_rejects_other_sample_rate(tiny_dir, tmp_path):
    ssl = S.load_ssl(tiny_dir, device="cpu")
    with pytest.raises(ValueError, match="16000-Hz"):
        S.cached_hidden_states(ssl, waves(1), layer=1, sample_rate=48000, root=tmp_path, progress=False)


def test_missing_weights_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(S.WeightsUnavailableError, match="--w2v2 /path/to/model") as err:
        S.load_ssl(tmp_path / "no_such_model")
    assert "no_such_model" in str(err.value)
    with pytest.raises(S.WeightsUnavailableError, match="--w2v2 /path/to/model") as err:
        S.load_ssl("no-such-org-serlib/no-such-model")
    assert "no-such-org-serlib/no-such-model" in str(err.value) and "Offline" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(S.WeightsUnavailableError, match="local folder|--w2v2"):
        S.load_ssl(empty)


# ---------------------------------------------------------------- the model

def tiny_caser(branch="fusion", **kw):
    torch.manual_seed(0)
    cfg = CASERConfig(n_classes=4, n_features=8, w2v2_dim=12, lstm_hidden=8, lstm_layers=2, enc_dim=16,
                      enc_layers=2, enc_heads=2, enc_ff=32, d_model=16, n_heads=4, ff_dim=32, branch=branch, **kw)
    return CASER(cfg).eval()


def batch(B=3, T1=(20, 13, 7), T2=(10, 6, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    mfcc = torch.randn(B, 8, max(T1), generator=g)
    w2v2 = torch.randn(B, 12, max(T2), generator=g)
    l1, l2 = torch.tensor(T1), torch.tensor(T2)
    for b in range(B):
        mfcc[b, :, T1[b]:] = 0
        w2v2[b, :, T2[b]:] = 0
    return mfcc, l1, w2v2, l2


def test_registry_and_defaults():
    assert models()["ca_ser"] == (CASER, CASERConfig)
    model, cfg = build_model("ca_ser", n_classes=4, n_features=40)
    assert cfg["n_features"] == 40 and cfg["w2v2_dim"] == 768 and cfg["branch"] == "fusion"
    with pytest.raises(ValueError, match="branch"):
        CASERConfig(branch="both")


@pytest.mark.parametrize("branch", ["fusion", "mfcc", "w2v2"])
def test_branches_shapes_and_padding_invariance(branch):
    model = tiny_caser(branch)
    mfcc, l1, w2v2, l2 = batch()
    args = (mfcc if branch != "w2v2" else None, l1, w2v2 if branch != "mfcc" else None, l2)
    with torch.no_grad():
        logits, aux = model(*args)
        assert logits.shape == (3, 4) and torch.isfinite(logits).all()
        assert aux["embedding"].shape[0] == 3
        if branch == "fusion":
            assert aux["cross_attention"].shape == (3, 4, 20, 10) and aux["aux_logits"].shape == (3, 4)
        else:
            assert aux["cross_attention"] is None and aux["aux_logits"] is None
        for b in range(3):
            alone = (
                mfcc[b:b + 1, :, : l1[b]] if args[0] is not None else None, l1[b:b + 1],
                w2v2[b:b + 1, :, : l2[b]] if args[2] is not None else None, l2[b:b + 1],
            )
            lg, ax = model(*alone)
            torch.testing.assert_close(lg[0], logits[b], atol=1e-5, rtol=0)
            torch.testing.assert_close(ax["embedding"][0], aux["embedding"][b], atol=1e-5, rtol=0)
    # a training step runs and the loss includes the auxiliary term only for fusion
    model.train()
    target = torch.tensor([0, 1, 3])
    logits, aux = model(*args)
    loss = model.loss(logits, aux, target)
    loss.backward()
    main = model.loss(logits, {"aux_logits": None}, target)
    assert (loss > main) == (branch == "fusion")
    if branch == "mfcc":
        assert not hasattr(model, "cross") and not hasattr(model, "w2v2_proj")
    if branch == "w2v2":
        assert not hasattr(model, "lstm")


def test_cross_attention_rows_sum_to_one_zero_on_padding():
    model = tiny_caser("fusion")
    mfcc, l1, w2v2, l2 = batch()
    with torch.no_grad():
        _, aux = model(mfcc, l1, w2v2, l2)
    att = aux["cross_attention"]  # (B, heads, T1, T2)
    for b in range(3):
        valid = att[b, :, : l1[b]]  # rows of valid MFCC frames
        torch.testing.assert_close(valid[..., : l2[b]].sum(-1), torch.ones(4, int(l1[b])), atol=1e-5, rtol=0)
        assert (valid[..., l2[b]:] == 0).all()
    with pytest.raises(AssertionError, match="needs w2v2"):
        model(mfcc, l1, None, None)
    with pytest.raises(AssertionError):
        model(mfcc[:, :5], l1, w2v2, l2)  # wrong MFCC width


def test_cached_layers_one_pass_fills_every_layer(tiny_dir, tmp_path):
    root = tmp_path / "cache"
    ssl = S.load_ssl(tiny_dir, device="cpu")
    calls = count_calls(ssl)
    ws = waves(4)
    assert S.cached_layers(ssl, ws, [0, 1, 2, 3], root=root, progress=False, load=False) is None
    assert calls["utts"] == len(ws)  # one extraction for all four layers
    for layer in range(4):
        from_cache = S.cached_hidden_states(ssl, ws, layer, root=root, progress=False)
        direct = S.hidden_states(ssl, ws, layer)
        for a, b in zip(from_cache, direct):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert calls["utts"] == len(ws) + 4 * len(ws)  # only the direct calls ran the model
    # a truncated file of one layer is found without loading (load=False) and only that utterance recomputed
    path = S.ssl_cache_folder(ssl, 2, root) / f"{S.audio_hash(ws[3])}.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.warns(UserWarning, match="unusable"):
        S.cached_layers(ssl, ws, [1, 2], root=root, progress=False, load=False)
    assert calls["utts"] == 5 * len(ws) + 1


def test_frame_counts_match_wav2vec2_base_arithmetic():
    # wav2vec2-base's CNN (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2): 1 s at 16 kHz -> 49 frames of 20 ms
    assert S.frame_counts(transformers.Wav2Vec2Config(), [16000, 48000, 400, 399]) == [49, 149, 1, 0]


def test_ssl_features_into_caser_end_to_end(tiny_dir, tmp_path):
    librosa = pytest.importorskip("librosa")
    from serlib.data.segment import pad_sequences

    ssl = S.load_ssl(tiny_dir, device="cpu")
    ws = waves(3)
    hs = S.cached_hidden_states(ssl, ws, 2, root=tmp_path, progress=False)
    mf = [librosa.feature.mfcc(y=w, sr=16000, n_mfcc=8, n_fft=400, hop_length=160) for w in ws]  # 10-ms hop
    mfcc, l1 = pad_sequences(mf)
    w2v2, l2 = pad_sequences([h.T for h in hs])
    assert w2v2.shape == (3, 32, max(h.shape[0] for h in hs))
    torch.manual_seed(0)
    model = CASER(CASERConfig(n_classes=4, n_features=8, w2v2_dim=32, lstm_hidden=8, enc_dim=16, enc_layers=1,
                              enc_heads=2, enc_ff=16, d_model=16, n_heads=2, ff_dim=16)).eval()
    with torch.no_grad():
        logits, aux = model(mfcc, l1, w2v2, l2)
        assert aux["cross_attention"].shape == (3, 2, mfcc.shape[2], w2v2.shape[2])
        for b in range(3):
            alone, _ = model(torch.from_numpy(mf[b])[None], None, torch.from_numpy(hs[b].T)[None], None)
            torch.testing.assert_close(alone[0], logits[b], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the auxiliary MFCC-branch loss in training

def _focal_by_hand(logits, y, gamma):
    logp = torch.log_softmax(logits.double(), 1)[torch.arange(len(y)), y]
    return (-(1 - logp.exp()) ** gamma * logp).mean()


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_trainer_applies_the_auxiliary_mfcc_loss(alpha, one_thread):
    """Through the generic trainer and make_loss (as the study builds it): the training loss of a fixed batch is
    focal(logits) + alpha * focal(aux_logits) computed by hand, and the MFCC-branch classifier, which only the
    auxiliary term uses in the fusion, gets a gradient exactly when alpha > 0."""
    from serlib.losses import make_loss
    from serlib.train import ArrayData, TrainConfig, Trainer

    model = tiny_caser("fusion", enc_dropout=0.0, dropout=0.0).train()
    mfcc, l1, w2v2, l2 = batch()
    y = torch.tensor([0, 1, 3])
    with torch.no_grad():
        logits, aux = model(mfcc, l1, w2v2, l2)
    main = _focal_by_hand(logits, y, 0.5)
    expected = main + alpha * _focal_by_hand(aux["aux_logits"], y, 0.5)
    if alpha:
        assert expected > main + 0.1  # the term is not negligible, so dropping it would show
    grads = []
    model.mfcc_classifier.weight.register_hook(lambda g: grads.append(g.detach().clone()))
    before = model.mfcc_classifier.weight.detach().clone()
    data = ArrayData(x={"mfcc": mfcc, "mfcc_lengths": l1, "w2v2": w2v2, "w2v2_lengths": l2}, y=y)
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=3, lr=0.1, optimizer="sgd", momentum=0.0,
                                         select="last", device="cpu", progress=False),
                      loss_fn=make_loss("focal", gamma=0.5, alpha=alpha))
    result = trainer.fit(data)
    assert result.history[0]["train_loss"] == pytest.approx(float(expected), abs=1e-5)
    changed = not torch.equal(before, model.mfcc_classifier.weight.detach())
    if alpha:
        assert len(grads) == 1 and grads[0].abs().sum() > 0 and changed
    else:
        assert grads == [] and model.mfcc_classifier.weight.grad is None and not changed
    if alpha == model.config.aux_alpha:  # CASER.loss is the same function
        with torch.no_grad():
            lg, ax = model(mfcc, l1, w2v2, l2)
        torch.testing.assert_close(model.loss(lg, ax, y), make_loss("focal", gamma=0.5, alpha=alpha)(lg, y, aux=ax))
