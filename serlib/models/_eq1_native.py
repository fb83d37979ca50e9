"""The fused C kernel of Head Fusion's Eq. 1 (``head_fusion_eq1.c``): built on first use, cached, optional.

:func:`library` compiles the C file once per machine and source (``gcc -O3 -march=native``, about a second) into
``$SERLIB_CACHE/native/`` (:func:`serlib.cache.cache_dir`) and loads it with ctypes; every later process loads the
cached library (the file name hashes the source, the compiler, the flags and the CPU's model and flags, so a changed
source or another machine gets its own build). It returns None, and :func:`unavailable_reason` says why, when there
is no C compiler, the build fails, or ``SERLIB_EQ1_NATIVE=0``;
:mod:`serlib.models.head_fusion` then runs its torch implementation (same function). :class:`NativePoints` is
Eq. 1's autograd op, :class:`NativeCodePoints` the authors' variant's (``attention="head_fusion_code"``) and
:class:`NativeBatchNormReLU` the conv stack's training BatchNorm + pool + ReLU; heads or samples are split between
``torch.get_num_threads()`` OpenMP threads, torch's own workers (the library is built with ``-fopenmp`` and shares
the libgomp torch loaded; ctypes releases the GIL).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("head_fusion_eq1.c")
# -ffp-contract=fast: a * b + c as one fused multiply-add (one rounding instead of two). -std=c11 turns contraction
# off by default, which left every dot product of the kernels as separate multiplies and adds
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-std=c11", "-ffp-contract=fast", "-fopenmp",
         "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared")
# without OpenMP (a compiler that lacks it) the same source builds serial: its pragmas are then ignored
FLAGS_SERIAL = tuple(f if f != "-fopenmp" else "-fopenmp-simd" for f in FLAGS)
_LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 64  # MAXD of head_fusion_eq1.c: wider heads run the torch function
MAX_CODE_SIZE = 1024  # MAXNS of head_fusion_eq1.c: the code variant's n_size; wider runs the torch function
MAX_BN_CHANNELS = 4096  # BN_MAXC of head_fusion_eq1.c
# Training with value_dim 1: the forward also computes the points' Jacobian (hf_eq1_fwdjac) and the backward is one
# multiply, instead of a backward kernel that computes every map a second time. False: the two-kernel path
JACOBIAN_IN_FORWARD = True
_state: dict = {}


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the machine and, on Linux, the CPU model and flags."""
    info = platform.machine() + platform.processor()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info += "".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        pass
    return info


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler (gcc or cc, or $CC) on PATH")
    from serlib.cache import cache_dir

    src = SOURCE.read_bytes()
    errors = []
    for flags in (FLAGS, FLAGS_SERIAL):  # OpenMP first; a compiler without it builds the serial library
        key = hashlib.sha256(src + " ".join((compiler,) + flags).encode() + _cpu_key().encode()).hexdigest()[:16]
        out_dir = cache_dir() / "native"
        path = out_dir / f"head_fusion_eq1-{key}.so"
        if path.is_file():
            break
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        try:
            res = subprocess.run([compiler, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True)
            if res.returncode == 0:
                os.replace(tmp, path)  # atomic: a concurrent process sees no half-written library
                break
            errors.append(f"{compiler} failed on {SOURCE}: {res.stderr.strip()[-2000:]}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        raise RuntimeError(errors[-1])
    lib = ctypes.CDLL(str(path))
    ptr, i32, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.hf_eq1_forward.argtypes = [ptr, ptr, ptr] + [i32] * 7 + [f32] + [ptr] * 5
    lib.hf_eq1_backward.argtypes = [ptr, ptr, ptr] + [i32] * 7 + [f32, f32] + [ptr] * 5
    lib.hf_eq1_forward.restype = lib.hf_eq1_backward.restype = i32
    i64 = ctypes.c_long
    lib.hf_code_forward.argtypes = [ptr] * 3 + [i32] * 3 + [i64] + [i32] * 2 + [ptr] * 2
    lib.hf_code_backward.argtypes = [ptr] * 3 + [i32] * 3 + [i64] + [i32] * 2 + [ptr] * 3
    lib.hf_code_forward.restype = lib.hf_code_backward.restype = i32
    lib.hf_bn_stats.argtypes = [ptr] + [i32] * 4 + [ptr]
    lib.hf_bn_fwd.argtypes = [ptr] + [i32] * 4 + [ptr] * 3 + [i32] * 2 + [ptr]
    lib.hf_bn_bwd_sums.argtypes = [ptr] * 2 + [i32] * 4 + [ptr] * 4 + [i32] * 2 + [ptr]
    lib.hf_bn_bwd_dx.argtypes = [ptr] * 2 + [i32] * 4 + [ptr] * 7 + [i32] * 2 + [ptr]
    for fn in (lib.hf_bn_stats, lib.hf_bn_fwd, lib.hf_bn_bwd_sums, lib.hf_bn_bwd_dx):
        fn.restype = i32
    # the OpenMP entry points: (the arguments before the sample range), n, n_threads, (the arguments after it)
    for name in ("hf_code_forward", "hf_code_backward", "hf_bn_stats", "hf_bn_fwd", "hf_bn_bwd_sums", "hf_bn_bwd_dx"):
        base, par = getattr(lib, name), getattr(lib, name + "_par")
        types = list(base.argtypes)
        at = len(types) - types[::-1].index(i32) - 2  # the sample range (n0, n1) is the last pair of ints
        par.argtypes = types[:at] + [i32, i32] + types[at + 2 :]
        par.restype = i32
    lib.hf_eq1_forward_par.argtypes = [ptr] * 3 + [i32] * 6 + [f32] + [ptr] * 5
    lib.hf_eq1_backward_par.argtypes = [ptr] * 3 + [i32] * 6 + [f32, f32] + [ptr] * 5
    lib.hf_eq1_forward_par.restype = lib.hf_eq1_backward_par.restype = i32
    # (proj | xp, wt, bt, c_in), key bias, query weights, gh, ch, b, p, nt, d, qscale, [gscale], points, [jac]
    lib.hf_eq1_fwdjac_par.argtypes = [ptr] * 4 + [i32] + [ptr] * 2 + [i32] * 6 + [f32, f32] + [ptr] * 2
    lib.hf_eq1_fwdjac_par.restype = i32
    lib.hf_eq1_fwdpts_par.argtypes = [ptr] * 4 + [i32] + [ptr] * 2 + [i32] * 6 + [f32, ptr]
    lib.hf_eq1_fwdpts_par.restype = i32
    lib.hf_eq1_scale_jac_par.argtypes = [ptr] * 2 + [i32] * 5 + [ptr]
    lib.hf_eq1_scale_jac_par.restype = i32
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, built on first call; None when unavailable (see :func:`unavailable_reason`)."""
    if "lib" not in _state:
        _state["lib"], _state["why"] = None, None
        if os.environ.get("SERLIB_EQ1_NATIVE", "1") == "0":
            _state["why"] = "disabled by SERLIB_EQ1_NATIVE=0"
        else:
            try:
                _state["lib"] = _build()
            except (OSError, RuntimeError) as err:
                _state["why"] = str(err)
    return _state["lib"]


def unavailable_reason() -> str | None:
    """Why :func:`library` returns None (None when it is available)."""
    library()
    return _state["why"]


def usable(proj: torch.Tensor, head_dim: int = 1) -> bool:
    """Whether the kernel can run on ``proj`` (float32 on the CPU, ``head_dim`` <= :data:`MAX_HEAD_DIM`) and the
    library is available."""
    return (proj.device.type == "cpu" and proj.dtype == torch.float32 and 1 <= head_dim <= MAX_HEAD_DIM
            and library() is not None)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(code: int, name: str) -> None:
    if code:
        raise RuntimeError(f"head_fusion_eq1 kernel {name} failed (code {code}; head_dim must be <= {MAX_HEAD_DIM}, "
                           f"n_size <= {MAX_CODE_SIZE}, channels <= {MAX_BN_CHANNELS}; 2: out of memory)")


def _par(fn, n: int, args_before: tuple, args_after: tuple) -> None:
    """``fn``'s OpenMP entry point (``<fn>_par``) over samples [0, n) on ``torch.get_num_threads()`` threads: torch's
    own OpenMP workers where the library shares torch's libgomp (see head_fusion_eq1.c)."""
    nt = max(1, min(torch.get_num_threads(), n))
    _check(getattr(library(), fn.__name__ + "_par")(*args_before, n, nt, *args_after), fn.__name__)


class NativePoints(torch.autograd.Function):
    """:class:`serlib.models.head_fusion._HeadFusionPoints`' function and arguments (without ``block``), computed
    by the C kernel: proj (GH, 2d + dv, B, P) float32, w (B, P) or None, bias (B, Pk >= P) or None ->
    points (B, GH, dv), u (B, GH, P, dv) or empty. Which kernels run: with dv = 1 and no ``u``,
    ``hf_eq1_fwdjac`` when proj needs a gradient (the backward is a multiply) and ``hf_eq1_fwdpts`` when it
    does not; otherwise the row-wise ``hf_eq1_forward`` and ``hf_eq1_backward``."""

    @staticmethod
    def forward(ctx, proj, w, bias, d: int, want_u: bool = True):
        lib = library()
        proj = proj.contiguous()
        gh, ch, b, p = proj.shape
        dv = ch - 2 * d
        w = None if w is None else w.to(proj.dtype).contiguous()
        bias = None if bias is None else bias[:, :p].to(proj.dtype).contiguous()
        ctx.d = d
        if JACOBIAN_IN_FORWARD and ctx.needs_input_grad[0] and dv == 1 and not want_u:
            # dv = 1: a map's output and its incoming gradient are scalars, so the gradient of proj is dpoint times
            # a Jacobian the forward computes from the rows it already has (head_fusion_eq1.c, fwdjac_core)
            jac = torch.empty_like(proj)  # every element written by the kernel
            points = proj.new_empty(b, gh, 1)
            nt = max(1, min(torch.get_num_threads(), gh))
            code = lib.hf_eq1_fwdjac_par(_ptr(proj), None, None, None, 0, _ptr(bias), _ptr(w), gh, ch, b, p, nt, d,
                                         d**-0.5 * _LOG2E, d**-0.5, _ptr(points), _ptr(jac))
            _check(code, "hf_eq1_fwdjac")
            ctx.jacobian = True
            ctx.save_for_backward(jac)
            u = proj.new_empty((0,))
            ctx.mark_non_differentiable(u)
            return points, u
        ctx.jacobian = False
        if not ctx.needs_input_grad[0] and dv == 1 and not want_u:  # inference: the points alone
            points = proj.new_empty(b, gh, 1)
            nt = max(1, min(torch.get_num_threads(), gh))
            code = lib.hf_eq1_fwdpts_par(_ptr(proj), None, None, None, 0, _ptr(bias), _ptr(w), gh, ch, b, p, nt, d,
                                         d**-0.5 * _LOG2E, _ptr(points))
            _check(code, "hf_eq1_fwdpts")
            u = proj.new_empty((0,))
            ctx.mark_non_differentiable(u)
            return points, u
        c, rowmax, rowsum = (proj.new_empty(gh, b, p) for _ in range(3))
        u = proj.new_empty((b, gh, p, dv) if want_u else (0,))
        points = proj.new_empty(b, gh, dv)
        nt = max(1, min(torch.get_num_threads(), gh))
        code = lib.hf_eq1_forward_par(_ptr(proj), _ptr(bias), _ptr(w), gh, ch, b, p, nt, d, d**-0.5 * _LOG2E,
                                      _ptr(c), _ptr(rowmax), _ptr(rowsum), _ptr(u) if want_u else None, _ptr(points))
        _check(code, "hf_eq1_forward")
        ctx.save_for_backward(proj, w, bias, c, rowmax, rowsum)
        ctx.mark_non_differentiable(u)
        return points, u

    @staticmethod
    def backward(ctx, dpoints, du):
        if ctx.jacobian:
            (jac,) = ctx.saved_tensors  # in place: nothing else reads it (a second backward through this graph
            # fails with autograd's "modified by an inplace operation" error, as it would for a freed buffer)
            return jac.mul_(dpoints.to(jac.dtype).permute(1, 2, 0).unsqueeze(-1)), None, None, None, None
        lib = library()
        proj, w, bias, c, rowmax, rowsum = ctx.saved_tensors
        d = ctx.d
        gh, ch, b, p = proj.shape
        dpoints = dpoints.to(proj.dtype).contiguous()  # (B, GH, dv)
        grad = torch.empty_like(proj)  # every element written by the kernel
        nt = max(1, min(torch.get_num_threads(), gh))
        code = lib.hf_eq1_backward_par(_ptr(proj), _ptr(bias), _ptr(w), gh, ch, b, p, nt, d, d**-0.5 * _LOG2E,
                                       d**-0.5, _ptr(rowmax), _ptr(rowsum), _ptr(c), _ptr(dpoints), _ptr(grad))
        _check(code, "hf_eq1_backward")
        return grad, None, None, None, None


class NativeProjectedPoints(torch.autograd.Function):
    """:class:`NativePoints` with value_dim 1 and no per-query outputs, the Q/K/V projection computed inside the
    kernel, map by map (``hf_eq1_fwdjac`` / ``hf_eq1_fwdpts`` given the features instead of the projection): x
    (B * P, C) the features, one row per (sample, point) (a view of the channels-last map), weight (GH * CH, C) and
    bias_proj (GH * CH,) the 1x1 conv's rows of these GH heads (CH = 2d + 1, channel order [q | k | v] per head),
    w (B, P) or None, bias (B, Pk >= P) or None -> points (B, GH, 1). The (GH, CH, B, P) projection is never written;
    with a gradient the forward writes the Jacobian (the projection's layout) and the backward is the multiply plus
    the projection's GEMMs: dW = dY x, dx = dY^T W, dbias = the sums of dY. ``xp``: x as
    :func:`padded_channel_major` gives it (computed here when None; pass it when calling for several head ranges).
    ``jacobian``: whether to compute the Jacobian (None: when an input requires grad; autograd's
    ``needs_input_grad`` says so under ``no_grad`` too, so a caller that may run without grad passes it)."""

    @staticmethod
    def forward(ctx, x, weight, bias_proj, w, bias, b: int, d: int, xp=None, jacobian: bool | None = None):
        lib = library()
        bp, c = x.shape
        p, ch = bp // b, 2 * d + 1
        gh = weight.shape[0] // ch
        if bp != b * p or weight.shape != (gh * ch, c) or bias_proj.shape != (gh * ch,):
            raise ValueError(f"x must be (B * P, C) with B = {b}, weight (GH * {ch}, C) and bias_proj (GH * {ch},), "
                             f"got {tuple(x.shape)}, {tuple(weight.shape)} and {tuple(bias_proj.shape)}")
        if xp is None:
            xp = padded_channel_major(x, b)
        wt, bt = weight.detach().contiguous(), bias_proj.detach().contiguous()
        w = None if w is None else w.to(x.dtype).contiguous()
        bias = None if bias is None else bias[:, :p].to(x.dtype).contiguous()
        points = x.new_empty(b, gh, 1)
        nt = max(1, min(torch.get_num_threads(), gh))
        args = (None, _ptr(xp), _ptr(wt), _ptr(bt), c, _ptr(bias), _ptr(w), gh, ch, b, p, nt, d, d**-0.5 * _LOG2E)
        if jacobian is None:  # (needs_input_grad holds under no_grad too: the caller knows better)
            jacobian = any(ctx.needs_input_grad[:3])
        if jacobian:
            jac = x.new_empty(gh, ch, b, p)  # every element written by the kernel
            _check(lib.hf_eq1_fwdjac_par(*args, d**-0.5, _ptr(points), _ptr(jac)), "hf_eq1_fwdjac")
            ctx.save_for_backward(jac, x, weight)
        else:
            _check(lib.hf_eq1_fwdpts_par(*args, _ptr(points)), "hf_eq1_fwdpts")
        return points

    @staticmethod
    def backward(ctx, dpoints):
        jac, x, weight = ctx.saved_tensors  # the Jacobian is scaled in place (see NativePoints.backward)
        gh, ch, b, p = jac.shape
        dp = dpoints.to(jac.dtype).reshape(b, gh).contiguous()
        db = jac.new_empty(gh * ch)  # the scaling and the bias gradient's sums in one pass over the Jacobian
        nt = max(1, min(torch.get_num_threads(), gh))
        _check(library().hf_eq1_scale_jac_par(_ptr(jac), _ptr(dp), gh, ch, b, p, nt, _ptr(db)), "hf_eq1_scale_jac")
        dy = jac.view(gh * ch, b * p)
        dx = torch.mm(dy.t(), weight) if ctx.needs_input_grad[0] else None
        dw = torch.mm(dy, x) if ctx.needs_input_grad[1] else None
        db = db if ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None, None, None, None


def padded_channel_major(x: torch.Tensor, b: int) -> torch.Tensor:
    """x (B * P, C) -> (B, C, P16), P16 = P rounded up to 16 (zero padding), contiguous, without autograd: the
    features as :class:`NativeProjectedPoints`' kernels read them (one 16-lane vector of positions at a time)."""
    p, c = x.shape[0] // b, x.shape[1]
    xp = x.new_zeros(b, c, -(-p // 16) * 16)
    xp[..., :p] = x.detach().view(b, p, c).transpose(1, 2)
    return xp


class NativeCodePoints(torch.autograd.Function):
    """The authors' variant's attention and GAP (:class:`serlib.models.head_fusion._CodeAttentionPoints`' function)
    by the C kernel, on the projection as one row-major matrix without its bias: y (B * P, 3 * n_head * n_size)
    float32, columns [q | k | v] each (head, n_size), bias (3 * n_head * n_size) added as rows are read; gap (B, P)
    weights or None (1 / P) -> points (B, n_size) and, with ``want_wts``, the channel-softmax weights
    (B, P, n_head, n_size) (not differentiable; empty otherwise). The backward recomputes the weights per row and
    writes dq, dk, dv into one gradient of y's layout, and the bias gradient per segment (summed here)."""

    @staticmethod
    def forward(ctx, y, bias, gap, b: int, p: int, n_head: int, want_wts: bool = False):
        lib = library()
        y, bias = y.contiguous(), bias.to(y.dtype).contiguous()
        ns = y.shape[1] // (3 * n_head)
        if y.shape != (b * p, 3 * n_head * ns) or bias.shape != (y.shape[1],):
            raise ValueError(f"y must be (B * P, 3 * n_head * n_size) = ({b * p}, {3 * n_head * ns}) and bias "
                             f"({3 * n_head * ns},), got {tuple(y.shape)} and {tuple(bias.shape)}")
        gap = None if gap is None else gap.to(y.dtype).contiguous()
        points = y.new_empty(b, ns)
        wts = y.new_empty((b, p, n_head, ns) if want_wts else (0,))
        _par(lib.hf_code_forward, b, (_ptr(y), _ptr(bias), _ptr(gap), p, n_head, ns, y.shape[1]),
             (_ptr(points), _ptr(wts) if want_wts else None))
        ctx.shape = (b, p, n_head, ns)
        ctx.save_for_backward(y, bias, gap)
        ctx.mark_non_differentiable(wts)
        return points, wts

    @staticmethod
    def backward(ctx, dpoints, dwts):
        lib = library()
        y, bias, gap = ctx.saved_tensors
        b, p, n_head, ns = ctx.shape
        dpoints = dpoints.to(y.dtype).contiguous()
        grad = torch.empty_like(y)  # every element written by the kernel
        dbias = y.new_empty(b, y.shape[1])  # per segment
        _par(lib.hf_code_backward, b, (_ptr(y), _ptr(bias), _ptr(gap), p, n_head, ns, y.shape[1]),
             (_ptr(dpoints), _ptr(grad), _ptr(dbias)))
        return grad, dbias.sum(dim=0), None, None, None, None, None


def bn_usable(x: torch.Tensor) -> bool:
    """Whether :class:`NativeBatchNormReLU` can run on ``x``: float32 on the CPU, 4-D channels-last, at most
    :data:`MAX_BN_CHANNELS` channels, and the library is available."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and 1 <= x.shape[1] <= MAX_BN_CHANNELS
            and library() is not None)


class NativeBatchNormReLU(torch.autograd.Function):
    """``relu(max_pool2d(batch_norm(x, training=True), 2))`` (without the pool when ``pool`` is False) by the C
    kernels: x (N, C, H, W) float32 channels-last, gamma, beta (C,) -> out (N, C, H', W') channels-last, and the
    batch mean and biased variance (C,) (not differentiable: the caller updates the running statistics). Two passes
    forward (statistics; normalise, pool and ReLU at once) and two backward (the two per-channel sums; dx), where
    torch's batch_norm, max_pool2d and relu take about twice as many passes over the map, and the pool's
    (N, C, H', W') index tensor is never written (the backward finds each window's maximum again)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps: float, pool: bool):
        lib = library()
        n, c, h, w = x.shape
        if pool and (h < 2 or w < 2):
            raise ValueError(f"a 2x2 max-pool needs H, W >= 2, got {h}x{w}")
        part = torch.empty(n, 2, c, dtype=torch.float64)
        _par(lib.hf_bn_stats, n, (_ptr(x), h * w, c), (_ptr(part),))
        cnt = n * h * w
        s = part.sum(dim=0)
        mean64 = s[0] / cnt
        var64 = (s[1] / cnt - mean64 * mean64).clamp_(min=0.0)
        invstd64 = (var64 + eps).rsqrt()
        mean, invstd = mean64.float(), invstd64.float()
        scale = (gamma.detach().double() * invstd64).float()
        shift = beta.detach().float().contiguous()
        oh, ow = (h // 2, w // 2) if pool else (h, w)
        out = torch.empty(n, c, oh, ow, memory_format=torch.channels_last)
        _par(lib.hf_bn_fwd, n, (_ptr(x), h, w, c, int(pool), _ptr(scale), _ptr(shift), _ptr(mean)), (_ptr(out),))
        ctx.pool = pool
        ctx.save_for_backward(x, gamma, scale, shift, mean, invstd)
        var = var64.float()
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, dout, dmean, dvar):
        lib = library()
        x, gamma, scale, shift, mean, invstd = ctx.saved_tensors
        n, c, h, w = x.shape
        pool = int(ctx.pool)
        dout = dout.float().contiguous(memory_format=torch.channels_last)
        part = torch.empty(n, 2, c, dtype=torch.float64)
        common = (_ptr(x), _ptr(dout), h, w, c, pool, _ptr(scale), _ptr(shift), _ptr(mean), _ptr(invstd))
        _par(lib.hf_bn_bwd_sums, n, common, (_ptr(part),))
        cnt = n * h * w
        s = part.sum(dim=0)  # (sum dy, sum dy xhat) per channel
        am, bm = (s[0] / cnt).float(), (s[1] / cnt).float()
        k = (gamma.detach().float() * invstd).contiguous()
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        _par(lib.hf_bn_bwd_dx, n, common + (_ptr(k), _ptr(am), _ptr(bm)), (_ptr(dx),))
        return dx, s[1].to(gamma.dtype), s[0].to(gamma.dtype), None, None
