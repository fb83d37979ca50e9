"""Issue 18 rewrite of the Head Fusion ACNN (channels-last conv stack, pool before ReLU, BatchNorm folded in eval,
1x1 convs as GEMMs, no plot-only work while training) against the implementation it replaced, frozen verbatim in
``tests/reference_head_fusion_v0.py``: same weights, same batch -> logits, gradients of every parameter, BatchNorm
running statistics and the plot maps agree to <= 1e-5."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from reference_head_fusion_v0 import HeadFusionACNN as ReferenceACNN
from reference_head_fusion_v0 import HeadFusionConfig as ReferenceConfig

import serlib.models.head_fusion as hf
from serlib.models import _eq1_native
from serlib.models.head_fusion import ATTENTION_KINDS, HeadFusionACNN, HeadFusionConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = {"atol": 1e-5, "rtol": 1e-5}


NATIVE_MISSING = _eq1_native.unavailable_reason()


@pytest.fixture(params=["blocked", "dense", "native", "native_chunks"])
def impl(request, monkeypatch):
    """Every implementation of Eq. 1 (the torch blocked function, the GPU's dense batched ops, the fused C kernel)
    forced on the CPU; ``native_chunks``: the C kernel with the projection GEMM split into chunks of a few heads
    (uneven sizes; the default chunk size gives one chunk at these batch sizes). The C kernel's cases skip where it
    cannot be built (no C compiler)."""
    name = request.param
    if name.startswith("native") and NATIVE_MISSING:
        pytest.skip(f"native Eq. 1 kernel unavailable: {NATIVE_MISSING}")
    if name == "native_chunks":
        monkeypatch.setattr(hf, "PROJ_CHUNK_BYTES", 5 * 4 * 17 * 6 * 90)  # ~5 heads of 17 channels, batch <= 6, P 90
    monkeypatch.setattr(hf, "EQ1_IMPL", name.split("_")[0])
    return name


def _pair(**kw) -> tuple[HeadFusionACNN, ReferenceACNN]:
    torch.manual_seed(0)
    new = HeadFusionACNN(HeadFusionConfig(**kw))
    ref = ReferenceACNN(ReferenceConfig(**kw))
    ref.load_state_dict(new.state_dict())
    for m in (new, ref):  # non-trivial BatchNorm statistics and affine parameters, so eval-mode folding is tested
        for name, buf in m.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.linspace(0.5, 2.0, buf.numel()))
            elif name.endswith("running_mean"):
                buf.copy_(torch.linspace(-0.3, 0.3, buf.numel()))
    with torch.no_grad():
        for p_new, p_ref in zip(new.parameters(), ref.parameters()):
            p_new.add_(0.05 * torch.randn_like(p_new))
            p_ref.copy_(p_new)
    return new, ref


def _inputs(masked: bool):
    torch.manual_seed(1)
    x = torch.randn(5, 26, 63)
    y = torch.tensor([0, 1, 2, 3, 4])
    lengths = torch.tensor([63, 40, 63, 25, 50]) if masked else None
    return x, y, lengths


def _call(m, x, lengths, **kw):
    return m(x, lengths, **kw) if lengths is not None else m(x, **kw)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_training_step_matches_reference(attention, masked, impl):
    """Train mode: logits, every parameter's gradient and the updated BatchNorm statistics."""
    new, ref = _pair(attention=attention, n_head=3, n_size=6, n_classes=5)
    x, y, lengths = _inputs(masked)
    out = {}
    for key, m in (("new", new), ("ref", ref)):
        m.train()
        logits, _ = _call(m, x, lengths)
        F.cross_entropy(logits, y).backward()
        out[key] = logits
    torch.testing.assert_close(out["new"], out["ref"], **TOL)
    for (name, p_new), p_ref in zip(new.named_parameters(), ref.parameters()):
        assert p_new.grad is not None, name
        torch.testing.assert_close(p_new.grad, p_ref.grad, **TOL, msg=lambda s, n=name: f"{n}: {s}")
    for (name, b_new), b_ref in zip(new.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b_new, b_ref, **TOL, msg=lambda s, n=name: f"{n}: {s}")


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_eval_matches_reference_with_maps(attention, masked, impl):
    """Eval mode (BatchNorm folded into the convs): logits and the plot maps; return_attention as before."""
    new, ref = _pair(attention=attention, n_head=3, n_size=6, n_classes=5)
    x, _, lengths = _inputs(masked)
    new.eval()
    ref.eval()
    with torch.no_grad():
        ln, an = _call(new, x, lengths, return_attention=True)
        lr, ar = _call(ref, x, lengths, return_attention=True)
        lq, aq = _call(new, x, lengths, return_maps=False)
    torch.testing.assert_close(ln, lr, **TOL)
    torch.testing.assert_close(lq, lr, **TOL)
    assert set(an) == set(ar) | {"embedding"}  # every serlib model names its representation "embedding"
    assert torch.equal(an["embedding"], an["points"])
    for k in ar:
        torch.testing.assert_close(an[k], ar[k], **TOL, msg=lambda s, k=k: f"aux[{k!r}]: {s}")
    assert set(aq) == {"points", "embedding"}  # no plot-only work unless asked


def test_paper_model_training_step_matches_reference(impl):
    """The paper's final model (n_head 4, n_size 64, head_dim 8) on a batch of 6: logits and gradients."""
    new, ref = _pair()
    torch.manual_seed(2)
    x, y = torch.randn(6, 26, 63), torch.tensor([0, 1, 2, 3, 4, 5])
    for m in (new, ref):
        F.cross_entropy(m(x)[0], y).backward()
    torch.testing.assert_close(new(x)[0], ref(x)[0], **TOL)
    for (name, p_new), p_ref in zip(new.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p_new.grad, p_ref.grad, **TOL, msg=lambda s, n=name: f"{n}: {s}")


def test_training_forward_skips_plot_maps():
    """A training forward returns only the points; asking for the maps returns them, equal to eval's."""
    new, _ = _pair(n_head=2, n_size=4)
    x = torch.randn(3, 26, 63)
    _, aux = new(x)
    assert set(aux) == {"points", "embedding"}
    _, aux = new(x, return_maps=True)
    assert {"points", "head_maps", "fused_map", "fused_output"} <= set(aux)
    assert new.features(x).is_contiguous(memory_format=torch.channels_last)


def test_eq1_impl_is_checked(monkeypatch):
    monkeypatch.setattr(hf, "EQ1_IMPL", "fast")
    new, _ = _pair(n_head=2, n_size=4)
    with pytest.raises(ValueError, match="EQ1_IMPL"):
        new(torch.randn(2, 26, 63))


def test_heads_wider_than_the_kernel_run_the_torch_function():
    """head_dim above the C kernel's limit: the model still trains (torch function), same logits as the reference."""
    new, ref = _pair(n_head=1, n_size=2, n_classes=4, attn_hidden=_eq1_native.MAX_HEAD_DIM + 1)
    x = torch.randn(2, 26, 63)
    with torch.no_grad():
        torch.testing.assert_close(new(x)[0], ref(x)[0], **TOL)


def test_projection_chunks_are_the_projection(monkeypatch):
    """The native path's chunked projection GEMM concatenates to the one-GEMM projection (uneven chunk sizes)."""
    new, _ = _pair(n_head=3, n_size=7)
    feat = new.features(torch.randn(4, 26, 63))
    monkeypatch.setattr(hf, "PROJ_CHUNK_BYTES", 4 * 17 * 4 * 90 * 4)  # 4 heads' worth: 21 heads -> 6 chunks
    chunks = new._projection_chunks(feat)
    assert len(chunks) == 6 and {c.shape[0] for c in chunks} == {3, 4}
    torch.testing.assert_close(torch.cat(chunks), new._projections(feat), **TOL)


def test_auto_picks_native_on_cpu_when_it_builds(monkeypatch):
    proj = torch.zeros(2, 5, 1, 3)
    assert hf._eq1_impl(proj, 2) == ("blocked" if NATIVE_MISSING else "native")
    wide = _eq1_native.MAX_HEAD_DIM + 1
    assert hf._eq1_impl(proj, wide) == "blocked"  # wider heads than the kernel takes: the torch function
    monkeypatch.setattr(_eq1_native, "_state", {})  # forget the loaded library: the switch is read on first use
    monkeypatch.setenv("SERLIB_EQ1_NATIVE", "0")
    assert hf._eq1_impl(proj, 2) == "blocked"
    assert "SERLIB_EQ1_NATIVE=0" in _eq1_native.unavailable_reason()
    monkeypatch.setattr(hf, "EQ1_IMPL", "native")
    with pytest.raises(RuntimeError, match="unavailable: disabled by SERLIB_EQ1_NATIVE=0"):
        hf._eq1_impl(proj, 2)
    monkeypatch.setattr(hf, "EQ1_IMPL", "auto")
    assert hf._eq1_impl(proj.double(), 2) == "blocked"  # the C kernel is float32 only


@pytest.mark.parametrize(("cc", "why"), [("/nonexistent/cc", "No such file"), ("false", "failed on")])
def test_failed_build_falls_back_to_torch(monkeypatch, tmp_path, cc, why):
    """A missing or failing C compiler: no library, the reason kept, the model on the torch function, same logits."""
    monkeypatch.setattr(_eq1_native, "_state", {})
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path))  # no cached build to find
    monkeypatch.setenv("CC", cc)
    monkeypatch.delenv("SERLIB_EQ1_NATIVE", raising=False)
    assert _eq1_native.library() is None and why in _eq1_native.unavailable_reason()
    new, ref = _pair(n_head=2, n_size=3, n_classes=4)
    x = torch.randn(2, 26, 63)
    assert hf._eq1_impl(x, 8) == "blocked"
    with torch.no_grad():
        torch.testing.assert_close(new(x)[0], ref(x)[0], **TOL)
    assert not list(tmp_path.rglob("*.so"))


def _key_bias_and_weights(valid: list[int], p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As the model builds them for samples with ``valid`` leading keys of ``p``: the additive key bias
    (B, P padded to KEY_PAD; 0 or -inf) and the query weights of the GAP over valid points (B, P)."""
    key_mask = torch.arange(p)[None, :] < torch.tensor(valid)[:, None]
    bias = torch.full((len(valid), -(-p // hf.KEY_PAD) * hf.KEY_PAD), float("-inf"))
    bias[:, :p].masked_fill_(key_mask, 0.0)
    return bias, key_mask.float() / key_mask.float().sum(dim=-1, keepdim=True)


@pytest.mark.skipif(bool(NATIVE_MISSING), reason=f"native Eq. 1 kernel unavailable: {NATIVE_MISSING}")
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("d", "dv", "threads"), [(8, 1, 1), (5, 2, 1), (8, 1, 2), (3, 1, 3)])
def test_native_kernel_matches_blocked(masked, d, dv, threads):
    """The C kernel against the torch blocked function on the same projections: points, per-query outputs u and the
    gradient of proj, for head_dim 8 (its specialised copy) and others, value_dim 1 and 2, a P that is not a multiple
    of the kernel's vector width, masked keys, and heads split between threads."""
    torch.manual_seed(3)
    gh, b, p = 10, 3, 37
    proj = (torch.randn(gh, 2 * d + dv, b, p) * 2.0).requires_grad_()
    w = bias = None
    if masked:
        bias, w = _key_bias_and_weights([37, 20, 5], p)
    g = torch.randn(b, gh, dv)
    out = {}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name in ("blocked", "native"):
            proj.grad = None
            if name == "blocked":
                pts, u = hf._HeadFusionPoints.apply(proj, w, bias, d, 4, True)
            else:
                pts, u = _eq1_native.NativePoints.apply(proj, w, bias, d, True)
            (pts * g).sum().backward()
            out[name] = (pts.detach(), u, proj.grad.clone())
    finally:
        torch.set_num_threads(old_threads)
    for label, a, b_ in zip(("points", "u", "grad"), out["blocked"], out["native"]):
        assert torch.isfinite(b_).all(), label
        torch.testing.assert_close(b_, a, **TOL, msg=lambda s, k=label: f"{k}: {s}")


def _spy_kernels(monkeypatch) -> list[str]:
    """Record which of the C library's Eq. 1 entry points run (names appended to the returned list)."""
    lib, calls = _eq1_native.library(), []

    def spy_on(name):
        fn = getattr(lib, name)

        def spy(*args):
            calls.append(name)
            return fn(*args)

        return spy

    for name in ("hf_eq1_forward_par", "hf_eq1_backward_par", "hf_eq1_fwdjac_par", "hf_eq1_fwdpts_par"):
        monkeypatch.setattr(lib, name, spy_on(name))
    return calls


@pytest.mark.skipif(bool(NATIVE_MISSING), reason=f"native Eq. 1 kernel unavailable: {NATIVE_MISSING}")
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("d", "p", "threads"), [(8, 90, 1), (8, 37, 2), (5, 37, 1), (3, 17, 3)])
def test_native_jacobian_and_inference_paths_match_blocked(monkeypatch, masked, d, p, threads):
    """value_dim 1 without per-query outputs (training and inference as the model runs them): the forward that also
    computes the Jacobian (``hf_eq1_fwdjac``, backward one multiply), the two-kernel path it replaced
    (``JACOBIAN_IN_FORWARD = False``) and the points-only inference kernel (``hf_eq1_fwdpts``), each checked to have
    run, against the torch blocked function: points and the gradient of proj to 1e-5, for head_dim 8 at P = 90 (the
    paper's shapes, their specialised copy), other widths, P not a multiple of 16, masked keys and query weights, and
    heads split between threads."""
    torch.manual_seed(4)
    gh, b = 7, 3
    proj = (torch.randn(gh, 2 * d + 1, b, p) * 2.0).requires_grad_()
    w = bias = None
    if masked:
        bias, w = _key_bias_and_weights([p, p // 2, 3], p)
    g = torch.randn(b, gh, 1)
    pts, _ = hf._HeadFusionPoints.apply(proj, w, bias, d, 4, False)
    (pts * g).sum().backward()
    ref_pts, ref_grad = pts.detach(), proj.grad.clone()
    calls = _spy_kernels(monkeypatch)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        two_kernels = ["hf_eq1_forward_par", "hf_eq1_backward_par"]
        for jacobian, kernels in ((True, ["hf_eq1_fwdjac_par"]), (False, two_kernels)):
            monkeypatch.setattr(_eq1_native, "JACOBIAN_IN_FORWARD", jacobian)
            proj.grad = None
            calls.clear()
            pts, u = _eq1_native.NativePoints.apply(proj, w, bias, d, False)
            (pts * g).sum().backward()
            assert calls == kernels and u.numel() == 0
            torch.testing.assert_close(pts.detach(), ref_pts, **TOL)
            assert torch.isfinite(proj.grad).all()
            torch.testing.assert_close(proj.grad, ref_grad, **TOL)
        calls.clear()
        with torch.no_grad():  # as in the model's eval: the projection computed without grad
            pts, _ = _eq1_native.NativePoints.apply(proj.detach(), w, bias, d, False)
        assert calls == ["hf_eq1_fwdpts_par"]
        torch.testing.assert_close(pts, ref_pts, **TOL)
    finally:
        torch.set_num_threads(old_threads)


@pytest.mark.skipif(bool(NATIVE_MISSING), reason=f"native Eq. 1 kernel unavailable: {NATIVE_MISSING}")
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("d", "p", "c", "threads"), [(8, 90, 80, 1), (8, 37, 13, 2), (5, 17, 80, 1), (3, 100, 6, 3)])
def test_projection_inside_the_kernel_matches_the_gemm(monkeypatch, masked, d, p, c, threads):
    """:class:`NativeProjectedPoints` (the Q/K/V projection computed map by map inside the kernels) against the GEMM
    + :class:`NativePoints` it replaces: points and the gradients of the features, the projection's weight and bias
    to 1e-5, for head_dim 8 at P = 90 and C = 80 (the paper's shapes), other widths, P and C that are not multiples
    of the kernel's tiles (P > 96: two tiles of positions), masked keys and query weights, heads split between
    threads; without a gradient, and with ``jacobian=False`` under autograd, only the points kernel runs."""
    torch.manual_seed(6)
    gh, b, ch = 6, 3, 2 * d + 1
    x = torch.randn(b * p, c, requires_grad=True)
    weight = (torch.randn(gh * ch, c) * 0.4).requires_grad_()
    bias_proj = (torch.randn(gh * ch) * 0.3).requires_grad_()
    w = bias = None
    if masked:
        bias, w = _key_bias_and_weights([p, p // 2, 3], p)
    g = torch.randn(b, gh, 1)
    proj = torch.addmm(bias_proj.unsqueeze(1), weight, x.t()).view(gh, ch, b, p)
    pts, _ = _eq1_native.NativePoints.apply(proj, w, bias, d, False)
    (pts * g).sum().backward()
    ref = [pts.detach()] + [t.grad.clone() for t in (x, weight, bias_proj)]
    calls = _spy_kernels(monkeypatch)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for t in (x, weight, bias_proj):
            t.grad = None
        pts = _eq1_native.NativeProjectedPoints.apply(x, weight, bias_proj, w, bias, b, d)
        (pts * g).sum().backward()
        assert calls == ["hf_eq1_fwdjac_par"]
        got = [pts.detach(), x.grad, weight.grad, bias_proj.grad]
        for label, a, r in zip(("points", "dx", "dweight", "dbias"), got, ref):
            torch.testing.assert_close(a, r, **TOL, msg=lambda s, k=label: f"{k}: {s}")
        calls.clear()
        with torch.no_grad():
            pts = _eq1_native.NativeProjectedPoints.apply(x, weight, bias_proj, w, bias, b, d, None, False)
        assert calls == ["hf_eq1_fwdpts_par"]
        torch.testing.assert_close(pts, ref[0], **TOL)
    finally:
        torch.set_num_threads(old_threads)


@pytest.mark.skipif(bool(NATIVE_MISSING), reason=f"native Eq. 1 kernel unavailable: {NATIVE_MISSING}")
def test_model_runs_the_projecting_kernels_and_no_jacobian_without_grad(monkeypatch):
    """The paper's model on the CPU: a training step runs the Jacobian kernel (in chunks of heads), eval under
    no_grad / inference_mode the points-only one (autograd's needs_input_grad is True for parameters even under
    no_grad, so the model decides), plot maps the row-wise kernel; FUSED_PROJECTION = False returns to the GEMM,
    with the same logits and gradients."""
    calls = _spy_kernels(monkeypatch)
    torch.manual_seed(7)
    model = HeadFusionACNN(HeadFusionConfig(n_classes=4))
    x, y = torch.randn(4, 26, 63), torch.tensor([0, 1, 2, 3])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = {}
    for fused in (True, False):
        monkeypatch.setattr(hf, "FUSED_PROJECTION", fused)
        model.load_state_dict(state)  # the same BatchNorm statistics for both (a training step updates them)
        calls.clear()
        model.zero_grad()
        model.train()
        F.cross_entropy(model(x)[0], y).backward()
        assert set(calls) == {"hf_eq1_fwdjac_par"}, calls
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.eval()
        calls.clear()
        with torch.no_grad():
            a = model(x, return_maps=False)[0]
        with torch.inference_mode():
            b_ = model(x, return_maps=False)[0]
        assert calls == ["hf_eq1_fwdpts_par"] * 2 if fused else set(calls) == {"hf_eq1_fwdpts_par"}
        calls.clear()
        with torch.no_grad():
            model(x)  # eval's default: the plot maps too
        assert set(calls) == {"hf_eq1_forward_par"}
        out[fused] = (a, b_, grads)
    torch.testing.assert_close(out[True][0], out[False][0], **TOL)
    torch.testing.assert_close(out[True][1], out[True][0], **TOL)
    for n in out[True][2]:
        torch.testing.assert_close(out[True][2][n], out[False][2][n], **TOL, msg=lambda s, n=n: f"{n}: {s}")


@pytest.mark.skipif(bool(NATIVE_MISSING), reason=f"native Eq. 1 kernel unavailable: {NATIVE_MISSING}")
def test_jacobian_backward_scales_in_place_and_refuses_a_second_pass():
    """The Jacobian path's backward scales its saved Jacobian in place: a second backward through the same graph
    (retain_graph) raises autograd's error instead of returning a gradient scaled twice."""
    torch.manual_seed(5)
    proj = torch.randn(4, 17, 2, 90, requires_grad=True)
    pts, _ = _eq1_native.NativePoints.apply(proj, None, None, 8, False)
    pts.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        pts.sum().backward()


@pytest.mark.skipif(bool(NATIVE_MISSING), reason=f"native Eq. 1 kernel unavailable: {NATIVE_MISSING}")
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("n_head", "n_size", "threads"), [(4, 64, 1), (4, 64, 2), (3, 20, 1), (2, 37, 3)])
def test_native_code_kernel_matches_torch(masked, n_head, n_size, threads):
    """The authors' variant's C kernel against the torch function (_CodeAttentionPoints) on the same projection:
    points, the channel-softmax weights, and the gradients of the projection and its bias; n_size 64 (the kernel's
    specialised copy) and widths that are not a multiple of the vector width, GAP weights of masked points, and
    segments split between threads."""
    torch.manual_seed(4)
    b, p = 5, 23
    y = (torch.randn(b * p, 3 * n_head * n_size) * 2.0).requires_grad_()
    bias = (torch.randn(3 * n_head * n_size) * 0.5).requires_grad_()
    gap = None
    if masked:
        m = (torch.arange(p)[None, :] < torch.tensor([23, 10, 1, 17, 23])[:, None]).float()
        gap = m / m.sum(dim=-1, keepdim=True)
    g = torch.randn(b, n_size)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pts, wts = _eq1_native.NativeCodePoints.apply(y, bias, gap, b, p, n_head, True)
        (pts * g).sum().backward()
        yb = (y.detach() + bias.detach()).view(b, p, 3, n_head, n_size).permute(2, 0, 1, 3, 4).contiguous()
        yb.requires_grad_()
        ref_pts, ref_wts = hf._CodeAttentionPoints.apply(yb, gap)
        (ref_pts * g).sum().backward()
    finally:
        torch.set_num_threads(old_threads)
    ref_grad = yb.grad.permute(1, 2, 0, 3, 4).reshape(b * p, -1)
    torch.testing.assert_close(pts.detach(), ref_pts.detach(), **TOL)
    torch.testing.assert_close(wts, ref_wts, **TOL)
    torch.testing.assert_close(y.grad, ref_grad, **TOL)
    torch.testing.assert_close(bias.grad, ref_grad.sum(dim=0), **TOL)
    assert float(ref_grad.abs().max()) > 1e-3  # a gradient that could be wrong


@pytest.mark.skipif(bool(NATIVE_MISSING), reason=f"native Eq. 1 kernel unavailable: {NATIVE_MISSING}")
@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize(("shape", "threads"), [((4, 16, 9, 12), 1), ((5, 32, 7, 11), 2), ((3, 5, 6, 5), 3)])
def test_native_batchnorm_pool_relu_matches_torch(pool, shape, threads):
    """The C kernels' training-mode BatchNorm (+ 2x2 max-pool) + ReLU against torch's ops in float64: output, batch
    mean and biased variance, and the gradients of the input, gamma and beta; odd H and W (positions no pool window
    covers still get BatchNorm's gradient), a channel count that is not a multiple of the vector width, samples split
    between threads. Inputs with a large mean test the variance's precision."""
    torch.manual_seed(5)
    n, c, h, w = shape
    x = (torch.randn(shape) * 2.0 + 3.0).contiguous(memory_format=torch.channels_last).requires_grad_()
    gamma = (torch.rand(c) + 0.5).requires_grad_()
    beta = torch.randn(c).requires_grad_()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, mean, var = _eq1_native.NativeBatchNormReLU.apply(x, gamma, beta, 1e-5, pool)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (x, gamma, beta), g)
    finally:
        torch.set_num_threads(old_threads)
    x64, g64, b64 = (t.detach().double().requires_grad_() for t in (x, gamma, beta))
    ref = F.batch_norm(x64, None, None, g64, b64, True, 0.1, 1e-5)
    ref = F.relu(F.max_pool2d(ref, 2) if pool else ref)
    ref_grads = torch.autograd.grad(ref, (x64, g64, b64), g.double())
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref.float(), **TOL)
    torch.testing.assert_close(mean, x64.detach().mean(dim=(0, 2, 3)).float(), **TOL)
    torch.testing.assert_close(var, x64.detach().var(dim=(0, 2, 3), unbiased=False).float(), **TOL)
    for label, a, r in zip(("dx", "dgamma", "dbeta"), grads, ref_grads):
        torch.testing.assert_close(a, r.float(), **TOL, msg=lambda s, k=label: f"{k}: {s}")
    assert float(grads[0].abs().max()) > 1e-3


def test_native_batchnorm_runs_in_training_and_updates_running_statistics_as_torch(monkeypatch):
    """A training forward of the conv stack goes through the C kernels (where they build) and leaves the same
    BatchNorm running statistics as torch's modules; NATIVE_BN = False keeps torch's ops."""
    if NATIVE_MISSING:
        pytest.skip(f"native kernels unavailable: {NATIVE_MISSING}")
    calls = []
    real = _eq1_native.NativeBatchNormReLU.apply
    monkeypatch.setattr(_eq1_native.NativeBatchNormReLU, "apply", lambda *a: calls.append(a[-1]) or real(*a))
    torch.manual_seed(6)
    models = [HeadFusionACNN(HeadFusionConfig(attention="none")) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(4, 26, 63)
    models[0].train()(x)
    assert calls == [False, True, True, False, False]  # first convs, 2 pooled middle convs, 2 unpooled
    monkeypatch.setattr(hf, "NATIVE_BN", False)
    models[1].train()(x)
    assert len(calls) == 5
    for (name, a), b_ in zip(models[0].named_buffers(), models[1].buffers()):
        torch.testing.assert_close(a, b_, **TOL, msg=lambda s, k=name: f"{k}: {s}")


@pytest.mark.skipif(bool(NATIVE_MISSING) or not os.path.exists("/proc/self/maps"), reason="native kernels / Linux")
def test_native_library_shares_torchs_openmp_runtime():
    """The kernels' OpenMP loops run on torch's own workers: in a fresh interpreter, loading the library after torch
    maps no libgomp beyond those already mapped (a second runtime would keep its own threads spinning on the same
    cores). Other packages may bring their own (scikit-learn vendors one), so only what the library adds counts."""
    code = textwrap.dedent("""
        import torch
        def gomp():
            with open("/proc/self/maps") as fh:
                return {line.split()[-1] for line in fh if "libgomp" in line}
        before = gomp()
        from serlib.models import _eq1_native
        assert _eq1_native.library() is not None, _eq1_native.unavailable_reason()
        print(sorted(gomp() - before), bool(before))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"], out


@pytest.mark.requires_cuda
def test_cuda_dense_eq1_matches_cpu_blocked(monkeypatch):
    """The GPU path (EQ1_IMPL auto -> dense on CUDA) gives the CPU's blocked logits and gradients."""
    new, _ = _pair(n_head=4, n_size=16, n_classes=5)
    x, y, lengths = _inputs(True)
    out = {}
    for device in ("cpu", "cuda"):
        m = new.to(device)
        m.zero_grad()
        logits, _ = m(x.to(device), lengths.to(device))
        F.cross_entropy(logits, y.to(device)).backward()
        out[device] = (logits.detach().cpu(), {n: p.grad.cpu() for n, p in m.named_parameters()})
    torch.testing.assert_close(out["cpu"][0], out["cuda"][0], atol=1e-4, rtol=1e-4)
    for n, g in out["cpu"][1].items():
        torch.testing.assert_close(g, out["cuda"][1][n], atol=1e-4, rtol=1e-3, msg=lambda s, n=n: f"{n}: {s}")
