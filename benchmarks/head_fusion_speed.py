"""Head Fusion speed, like for like: the authors' code vs serlib, same CPU, same batches, one run (issue 18).

    SERLIB_CACHE=build/cache python benchmarks/head_fusion_speed.py --data-root /work/shared/data

Sides, all on the same cached RAVDESS segments of the paper protocol (fold 0), flush-denormal on for every side:

* ``authors``: :class:`AuthorsACNN`, the authors' public ``MACNN`` layer stack reimplemented from the description
  in ``/work/shared/docs/PAPERS.md`` (conv1a / conv1b in parallel, concat, four 3x3 convs with BatchNorm + ReLU and two
  max-pools, per head three 1x1 convs 80 -> ``attention_hidden``, ``softmax(Q * K)`` over channels, ``* V``, heads
  concatenated along H, ReLU, GAP, linear), NCHW as the code runs it, trained by the plain loop (forward, cross
  entropy, zero_grad, backward, step) and tested utterance by utterance (one forward per utterance over its
  segments, the mean of the segment outputs), as the authors' test loop does;
* ``serlib_code``: serlib's ``HeadFusionACNN(attention="head_fusion_code")`` with the authors' weights copied in
  (:func:`copy_authors_weights`; the logits are checked equal before timing), trained by ``Trainer.train_epoch`` and
  evaluated by ``Trainer.evaluate`` (one batched pass over every test segment, then index-op utterance pooling and
  the metrics);
* per training step only (batch 32): ``serlib_faithful`` (``attention="head_fusion"``, Eq. 1) and, for before/after,
  the implementation this issue replaced (``tests/reference_head_fusion_v0.py``) for both variants, and where the C
  kernels build, both serlib variants with their attention in torch ops instead (``*_blocked``), and the faithful
  model with its Eq. 1 Jacobian kernel fed by the projection GEMM (``serlib_faithful_gemm``,
  ``FUSED_PROJECTION = False``) and with the row-wise forward and backward kernels it replaced
  (``serlib_faithful_two_kernels``, ``JACOBIAN_IN_FORWARD = False``: run7's configuration).

serlib's epochs run through its ``Trainer``, which uses torch's fused Adam on the CPU; the authors' loop keeps their
code's ``torch.optim.Adam`` defaults (the per-step timings give every side the same default Adam). The Trainer also
keeps freed memory in the heap (``serlib.train.tune_cpu_allocator``: process-wide, so from the first Trainer on it
serves every side of this process, the authors' code included; the record says whether it was in force).

Epochs and evaluation passes alternate between the sides (``--reps`` times each) and use identical batches (the same
shuffling permutation); steps alternate too (``--steps`` each). Medians are reported. The JSON record (``--out``)
holds every timing, the ratios, the load average before and after, git revision, torch threads, the device and the
machine. The machine of this project is shared: read the ratios (same load for both sides), not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's serlib, not the venv's installed one
import serlib.models.head_fusion as hf  # noqa: E402
from serlib.models.head_fusion import HeadFusionACNN, HeadFusionConfig  # noqa: E402
from serlib.records import environment_info, git_revision  # noqa: E402
from serlib.train import ArrayData, TrainConfig, Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ the authors' code
class AuthorsACNN(nn.Module):
    """The authors' ``MACNN`` layer stack (PAPERS.md), input (B, 1, F, T) -> logits."""

    def __init__(self, n_classes: int = 8, attention_heads: int = 4, attention_hidden: int = 64):
        super().__init__()
        self.attention_heads, self.attention_hidden = attention_heads, attention_hidden
        self.conv1a = nn.Conv2d(1, 8, kernel_size=(10, 2), padding=(4, 0))
        self.conv1b = nn.Conv2d(1, 8, kernel_size=(2, 8), padding=(0, 3))
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 48, 3, padding=1)
        self.conv4 = nn.Conv2d(48, 64, 3, padding=1)
        self.conv5 = nn.Conv2d(64, 80, 3, padding=1)
        self.maxp = nn.MaxPool2d(2)
        self.bn1a, self.bn1b = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.bn2, self.bn3, self.bn4, self.bn5 = (nn.BatchNorm2d(c) for c in (32, 48, 64, 80))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.attention_query = nn.ModuleList(nn.Conv2d(80, attention_hidden, 1) for _ in range(attention_heads))
        self.attention_key = nn.ModuleList(nn.Conv2d(80, attention_hidden, 1) for _ in range(attention_heads))
        self.attention_value = nn.ModuleList(nn.Conv2d(80, attention_hidden, 1) for _ in range(attention_heads))
        self.dropout = nn.Dropout(0.5)  # defined by the code, never applied
        self.fc = nn.Linear(attention_hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xa = F.relu(self.bn1a(self.conv1a(x)))
        xb = F.relu(self.bn1b(self.conv1b(x)))
        x = torch.cat((xa, xb), 1)
        x = self.maxp(F.relu(self.bn2(self.conv2(x))))
        x = self.maxp(F.relu(self.bn3(self.conv3(x))))
        x = F.relu(self.bn4(self.conv4(x)))
        x = F.relu(self.bn5(self.conv5(x)))
        attn = None
        for i in range(self.attention_heads):
            q, k, v = self.attention_query[i](x), self.attention_key[i](x), self.attention_value[i](x)
            a = torch.mul(F.softmax(torch.mul(q, k), dim=1), v)  # softmax without dim on 4-D: dim 1 (channels)
            attn = a if attn is None else torch.cat((attn, a), 2)
        x = self.gap(F.relu(attn)).flatten(1)
        return self.fc(x)


def copy_authors_weights(src: AuthorsACNN, dst: HeadFusionACNN) -> None:
    """Load the authors' model's weights into serlib's ``head_fusion_code`` model (same function afterwards)."""
    cfg = dst.config
    assert cfg.attention == "head_fusion_code" and cfg.n_head == src.attention_heads
    assert cfg.n_size == src.attention_hidden
    pairs = [(dst.conv1a[0], src.conv1a), (dst.conv1a[1], src.bn1a), (dst.conv1b[0], src.conv1b),
             (dst.conv1b[1], src.bn1b)]
    convs = [m for m in dst.middle if isinstance(m, nn.Sequential)]
    for blk, conv, bn in zip(convs, (src.conv2, src.conv3, src.conv4, src.conv5),
                             (src.bn2, src.bn3, src.bn4, src.bn5)):
        pairs += [(blk[0], conv), (blk[1], bn)]
    with torch.no_grad():
        for d, s in pairs:
            for t, u in zip(d.state_dict().values(), s.state_dict().values()):
                t.copy_(u)
        w = torch.stack([torch.stack([mods[h].weight for mods in (src.attention_query, src.attention_key,
                                                                  src.attention_value)])
                         for h in range(src.attention_heads)])  # (n_head, 3, n_size, 80, 1, 1)
        b = torch.stack([torch.stack([mods[h].bias for mods in (src.attention_query, src.attention_key,
                                                                src.attention_value)])
                         for h in range(src.attention_heads)])
        dst.qkv.weight.copy_(w.reshape(dst.qkv.weight.shape))
        dst.qkv.bias.copy_(b.reshape(-1))
        dst.fc.load_state_dict(src.fc.state_dict())


def authors_train_epoch(model: AuthorsACNN, opt, x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor,
                        batch: int) -> float:
    model.train()
    total = 0.0
    for s in range(0, len(perm), batch):
        idx = perm[s : s + batch]
        out = model(x[idx].unsqueeze(1))
        loss = F.cross_entropy(out, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
    return total


def authors_evaluate(model: AuthorsACNN, x: torch.Tensor, y: torch.Tensor, groups: np.ndarray,
                     n_classes: int) -> dict:
    """One forward per test utterance over its segments; utterance output = mean of the segment outputs."""
    model.eval()
    preds, truth = [], []
    with torch.no_grad():
        for g in np.unique(groups):
            sel = torch.from_numpy(np.flatnonzero(groups == g))
            out = model(x[sel].unsqueeze(1)).mean(dim=0)
            preds.append(int(out.argmax()))
            truth.append(int(y[sel[0]]))
    p, t = np.asarray(preds), np.asarray(truth)
    recalls = [np.mean(p[t == c] == c) for c in range(n_classes) if np.any(t == c)]
    return {"wa": float(np.mean(p == t)), "ua": float(np.mean(recalls))}


# ------------------------------------------------------------------------------------------------ helpers
def _median(v) -> float:
    return float(np.median(v))


def cpu_name() -> str:
    from serlib.records import _cpu_model

    return _cpu_model()


def load_reference_v0():
    """The implementation replaced in issue 18 (frozen under tests/), or None when the tests are not shipped."""
    path = REPO / "tests"
    if not (path / "reference_head_fusion_v0.py").is_file():
        return None
    sys.path.insert(0, str(path))
    try:
        import reference_head_fusion_v0 as ref
    finally:
        sys.path.remove(str(path))
    return ref


def make_sides(n_classes: int, seed: int = 0) -> tuple[AuthorsACNN, HeadFusionACNN, float]:
    """The authors' model and serlib's ``head_fusion_code`` with the same weights; returns the max logit difference
    on a random batch in training mode (batch statistics; must be ~1e-6)."""
    torch.manual_seed(seed)
    authors = AuthorsACNN(n_classes=n_classes)
    serlib_code = HeadFusionACNN(HeadFusionConfig(n_classes=n_classes, attention="head_fusion_code"))
    copy_authors_weights(authors, serlib_code)
    x = torch.randn(8, 26, 63)
    with torch.no_grad():
        diff = (authors(x.unsqueeze(1)) - serlib_code(x)[0]).abs().max().item()
    return authors, serlib_code, diff


def step_times(x: torch.Tensor, y: torch.Tensor, n_steps: int, batch: int = 32, *, compile_: bool = False,
               only: tuple[str, ...] | None = None) -> dict:
    """Median seconds per training step (same batches, alternating) for every implementation available; with
    ``compile_`` also ``torch.compile(serlib_code)`` (its compile time, first two steps, recorded apart)."""
    n_classes = int(y.max()) + 1
    authors, serlib_code, _ = make_sides(n_classes)
    torch.manual_seed(0)
    faithful = HeadFusionACNN(HeadFusionConfig(n_classes=n_classes))
    models: dict[str, nn.Module] = {
        "authors": authors, "serlib_code": serlib_code, "serlib_faithful": faithful,
    }
    if hf.EQ1_IMPL == "auto" and hf._eq1_native.library() is not None:
        import copy

        models["serlib_faithful_blocked"] = copy.deepcopy(faithful)  # same model, Eq. 1 by the torch blocked op
        # same model, the C kernels as before the Jacobian moved into the forward (a backward kernel that computes
        # every map again)
        models["serlib_faithful_two_kernels"] = copy.deepcopy(faithful)
        # same model, the Jacobian kernel fed by the projection GEMM instead of projecting inside the kernel
        models["serlib_faithful_gemm"] = copy.deepcopy(faithful)
        models["serlib_code_blocked"] = copy.deepcopy(serlib_code)  # same model, its attention in torch ops
    ref = load_reference_v0() if only is None else None
    if only is not None:
        models = {k: v for k, v in models.items() if k in only}
    if ref is not None:
        for kind, name in (("head_fusion_code", "v0_code"), ("head_fusion", "v0_faithful")):
            models[name] = ref.HeadFusionACNN(ref.HeadFusionConfig(n_classes=n_classes, attention=kind))
    compile_s = None
    if compile_:
        import copy

        models["serlib_code_compiled"] = torch.compile(copy.deepcopy(serlib_code))
    steps = {}
    for name, m in models.items():
        opt = torch.optim.Adam(m.parameters(), 1e-3, weight_decay=1e-6)
        m.train()

        def step(m=m, opt=opt, authors=name == "authors", idx=None, impl="blocked" if "blocked" in name else "auto",
                 jacobian="two_kernels" not in name, fused="gemm" not in name):
            xb, yb = x[idx], y[idx]
            hf.EQ1_IMPL = impl
            hf._eq1_native.JACOBIAN_IN_FORWARD = jacobian
            hf.FUSED_PROJECTION = fused
            try:
                out = m(xb.unsqueeze(1)) if authors else m(xb)[0]
                loss = F.cross_entropy(out, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            finally:
                hf.EQ1_IMPL = "auto"
                hf._eq1_native.JACOBIAN_IN_FORWARD = True
                hf.FUSED_PROJECTION = True

        steps[name] = step
    g = torch.Generator().manual_seed(1)
    batches = [torch.randperm(len(x), generator=g)[:batch] for _ in range(n_steps + 1)]
    times: dict[str, list] = {k: [] for k in steps}
    for k, f in steps.items():
        t0 = time.perf_counter()
        f(idx=batches[0])  # warm-up
        f(idx=batches[0])
        if k == "serlib_code_compiled":
            compile_s = time.perf_counter() - t0
    for idx in batches[1:]:
        for k, f in steps.items():
            t0 = time.perf_counter()
            f(idx=idx)
            times[k].append(time.perf_counter() - t0)
    out = {k: {"median_s": _median(v), "min_s": float(np.min(v)), "n": len(v)} for k, v in times.items()}
    a = out["authors"]["median_s"]
    out["ratios"] = {f"{k}_over_authors": out[k]["median_s"] / a for k in out if k != "authors"}
    if compile_s is not None:
        out["compile_and_first_two_steps_s"] = compile_s
    return out


class _BatchedEq1(torch.autograd.Function):
    """Eq. 1 + GAP over all (sample, head) maps in one batched op (bmm, softmax, mean over queries; the maps kept for
    the backward): the alternative to serlib's cache-blocked kernel, timed by :func:`eq1_kernel_times`."""

    @staticmethod
    def forward(ctx, q, k, v):  # q, k (N, P, d) with 1/sqrt(d) folded into q, v (N, P)
        a = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)
        c = a.mean(dim=1)
        ctx.save_for_backward(q, k, v, a, c)
        return (c * v).sum(-1)

    @staticmethod
    def backward(ctx, dp):
        q, k, v, a, c = ctx.saved_tensors
        p = a.shape[-1]
        t = torch._softmax_backward_data((v * dp.unsqueeze(-1)).unsqueeze(1).expand_as(a), a, -1, a.dtype)
        return torch.bmm(t, k) / p, torch.bmm(t.transpose(1, 2), q) / p, c * dp.unsqueeze(-1)


def native_build_seconds() -> float | None:
    """Seconds to compile the Eq. 1 C kernel from scratch (into a temporary cache; paid once per machine and source,
    later processes load the cached library), or None without a working C compiler."""
    import tempfile

    from serlib.models import _eq1_native

    old = os.environ.get("SERLIB_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SERLIB_CACHE"] = tmp
        try:
            t0 = time.perf_counter()
            _eq1_native._build()
            return time.perf_counter() - t0
        except (OSError, RuntimeError):
            return None
        finally:
            if old is None:
                os.environ.pop("SERLIB_CACHE", None)
            else:
                os.environ["SERLIB_CACHE"] = old


def _inductor_cache_empty() -> bool | None:
    """Whether torch inductor's on-disk cache ($TORCHINDUCTOR_CACHE_DIR) holds nothing yet (None: unknown)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:
        return None
    path = Path(cache_dir())
    return not path.exists() or not any(path.iterdir())


def _inductor_forward(proj: torch.Tensor, d: int) -> torch.Tensor:
    """Eq. 1's forward (the key weights c_j = mean_i A_ij) written for ``torch.compile``: scores as d broadcast
    multiply-adds over (GH, B, P, P), so that inductor can fuse scores, row max, exp2, row sum and the column sum
    into reductions without a P x P matmul (idea 1 of the issue-18 CPU goal; forward only)."""
    q, k = proj[:, :d] * (d**-0.5 * 1.4426950408889634), proj[:, d : 2 * d]
    s = q[:, 0, :, :, None] * k[:, 0, :, None, :]
    for t in range(1, d):
        s = s + q[:, t, :, :, None] * k[:, t, :, None, :]
    e = torch.exp2(s - s.amax(dim=-1, keepdim=True))
    return (e / e.sum(dim=-1, keepdim=True)).mean(dim=-2)  # (GH, B, P)


def eq1_forward_times(reps: int = 3, batch: int = 32, compile_: bool = False) -> dict:
    """Forward only (no autograd) of Eq. 1 for the paper's model on one batch: the torch blocked op, the C kernel
    and, with ``compile_``, :func:`_inductor_forward` under ``torch.compile`` (its compile time recorded apart);
    alternating, medians, and the largest difference of the key weights from the blocked op's."""
    from serlib.models import _eq1_native
    from serlib.models.head_fusion import BLOCK_HEADS, _HeadFusionPoints

    gh, d, p = 256, 8, 90
    torch.manual_seed(0)
    proj = torch.randn(gh, 2 * d + 1, batch, p)
    v = proj[:, 2 * d :]
    sides = {"blocked": lambda: _HeadFusionPoints.apply(proj, None, None, d, BLOCK_HEADS, False)[0]}
    if _eq1_native.library() is not None:
        sides["native"] = lambda: _eq1_native.NativePoints.apply(proj, None, None, d, False)[0]  # hf_eq1_fwdpts
        # the row-wise forward kernel that also writes the per-query outputs (plots; the inference path before)
        sides["native_rowwise_with_u"] = lambda: _eq1_native.NativePoints.apply(proj, None, None, d, True)[0]
    rec: dict = {}
    if compile_:
        # without raised thresholds inductor writes the (GH, B, P, P) partial scores to memory (measured: slower)
        fn = torch.compile(_inductor_forward, dynamic=False, fullgraph=True,
                           options={"realize_reads_threshold": 1000, "realize_opcount_threshold": 1000,
                                    "realize_acc_reads_threshold": 1000})
        t0 = time.perf_counter()
        fn(proj, d)
        rec["inductor_compile_s"] = time.perf_counter() - t0
        sides["inductor"] = lambda: torch.einsum("gbp,gebp->bge", fn(proj, d), v)
    with torch.no_grad():
        ref = sides["blocked"]()
        rec["max_abs_points_diff_vs_blocked"] = {k: (f() - ref).abs().max().item() for k, f in sides.items()}
        times: dict[str, list] = {k: [] for k in sides}
        for _ in range(reps):
            for k, f in sides.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    rec.update({k + "_median_s": _median(v) for k, v in times.items()})
    return rec


def eq1_kernel_times(reps: int = 3, batch: int = 32) -> dict:
    """Forward + backward of Eq. 1 + GAP for the paper's model (256 heads, head_dim 8, P = 90) on one batch:
    serlib's cache-blocked kernel vs one batched op over all maps and, where it builds, the fused C kernel; same
    projections, alternating, medians."""
    from serlib.models import _eq1_native
    from serlib.models.head_fusion import BLOCK_HEADS, _HeadFusionPoints

    gh, d, p = 256, 8, 90
    torch.manual_seed(0)
    proj = torch.randn(gh, 2 * d + 1, batch, p, requires_grad=True)
    g = torch.randn(batch, gh, 1)

    def blocked():
        pts, _ = _HeadFusionPoints.apply(proj, None, None, d, BLOCK_HEADS, False)
        (pts * g).sum().backward()
        return pts

    def batched():
        t = proj.permute(2, 0, 3, 1).reshape(batch * gh, p, 2 * d + 1)
        pts = _BatchedEq1.apply(t[..., :d] * d**-0.5, t[..., d : 2 * d], t[..., 2 * d])
        (pts.view(batch, gh, 1) * g).sum().backward()
        return pts.view(batch, gh, 1)

    def native():
        pts, _ = _eq1_native.NativePoints.apply(proj, None, None, d, False)
        (pts * g).sum().backward()
        return pts

    def native_two_kernels():  # the backward kernel recomputing every map, as before the Jacobian path
        _eq1_native.JACOBIAN_IN_FORWARD = False
        try:
            return native()
        finally:
            _eq1_native.JACOBIAN_IN_FORWARD = True

    proj.grad = None
    ref = blocked()
    g1 = proj.grad.clone()
    proj.grad = None
    out = batched()
    rec = {"max_abs_points_diff": (ref - out).abs().max().item(), "max_abs_grad_diff":
           (g1 - proj.grad).abs().max().item()}
    sides = [("blocked", blocked), ("batched_one_op", batched)]
    if _eq1_native.library() is not None:
        proj.grad = None
        out = native()
        rec["native_max_abs_points_diff"] = (ref - out).abs().max().item()
        rec["native_max_abs_grad_diff"] = (g1 - proj.grad).abs().max().item()
        proj.grad = None
        out = native_two_kernels()
        rec["native_two_kernels_max_abs_points_diff"] = (ref - out).abs().max().item()
        rec["native_two_kernels_max_abs_grad_diff"] = (g1 - proj.grad).abs().max().item()
        sides += [("native", native), ("native_two_kernels", native_two_kernels)]
    times: dict[str, list] = {name: [] for name, _ in sides}
    for _ in range(reps):
        for name, f in sides:
            proj.grad = None
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    rec.update({k + "_median_s": _median(v) for k, v in times.items()})
    rec["batched_over_blocked"] = rec["batched_one_op_median_s"] / rec["blocked_median_s"]
    if "native_median_s" in rec:
        rec["native_over_blocked"] = rec["native_median_s"] / rec["blocked_median_s"]
        rec["native_over_native_two_kernels"] = rec["native_median_s"] / rec["native_two_kernels_median_s"]
    return rec


def epoch_times(train: ArrayData, test: ArrayData, labels: tuple[str, ...], reps: int, threads: int,
                score_fn, eval_batch: int = 128) -> dict:
    """Alternating training epochs and evaluation passes, authors vs serlib_code, same batches."""
    torch.set_num_threads(threads)
    n_classes = len(labels)
    authors, serlib_code, diff = make_sides(n_classes)
    opt = torch.optim.Adam(authors.parameters(), 1e-3, weight_decay=1e-6)
    tcfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, weight_decay=1e-6, device="cpu", progress=False,
                       select="last", eval_batch_size=eval_batch)
    trainer = Trainer(serlib_code, tcfg, score_fn=score_fn)
    xtr, ytr = train.x, train.y
    xte, yte, gte = test.x, test.y, test.groups.numpy()
    rec: dict = {"threads": threads, "max_abs_logit_diff": diff, "serlib_eval_batch": eval_batch,
                 "train_s": {"authors": [], "serlib_code": []}, "eval_s": {"authors": [], "serlib_code": []}}
    scores: dict = {}
    for r in range(reps + 1):  # rep 0 warms up
        seed = 1000 + r
        t0 = time.perf_counter()
        authors_train_epoch(authors, opt, xtr, ytr, torch.randperm(len(xtr), generator=torch.Generator()
                                                                    .manual_seed(seed)), 32)
        t1 = time.perf_counter()
        trainer._shuffle.manual_seed(seed)  # the same permutation: identical batches
        trainer.train_epoch(train)
        t2 = time.perf_counter()
        scores["authors"] = authors_evaluate(authors, xte, yte, gte, n_classes)
        t3 = time.perf_counter()
        _, m = trainer.evaluate(test)
        t4 = time.perf_counter()
        scores["serlib_code"] = {"wa": m.get("wa"), "ua": m.get("ua")}
        if r:
            rec["train_s"]["authors"].append(t1 - t0)
            rec["train_s"]["serlib_code"].append(t2 - t1)
            rec["eval_s"]["authors"].append(t3 - t2)
            rec["eval_s"]["serlib_code"].append(t4 - t3)
    for part in ("train_s", "eval_s"):
        rec[part + "_median"] = {k: _median(v) for k, v in rec[part].items()}
        med = rec[part + "_median"]
        rec[part.replace("_s", "") + "_speedup_serlib_over_authors"] = med["authors"] / med["serlib_code"]
        paired = [a / s for a, s in zip(rec[part]["authors"], rec[part]["serlib_code"])]  # same rep, same load
        rec[part.replace("_s", "") + "_speedup_paired"] = {"per_rep": paired, "median": _median(paired)}
    rec["last_scores"] = scores
    return rec


def eval_batch_sweep(test: ArrayData, n_classes: int, score_fn, sizes: list[int], reps: int = 2) -> dict:
    """serlib_code's evaluation pass (``Trainer.evaluate``) per ``eval_batch_size`` (0 = every segment in one batch),
    alternating sizes, median seconds."""
    _, serlib_code, _ = make_sides(n_classes)
    times: dict[int, list] = {s: [] for s in sizes}
    for _ in range(reps + 1):
        for s in sizes:
            tcfg = TrainConfig(epochs=1, device="cpu", progress=False, select="last",
                               eval_batch_size=s or len(test))
            trainer = Trainer(serlib_code, tcfg, score_fn=score_fn)
            t0 = time.perf_counter()
            trainer.evaluate(test)
            times[s].append(time.perf_counter() - t0)
    return {("all" if s == 0 else str(s)): _median(v[1:]) for s, v in times.items()}


def real_data(data_root: str):
    from serlib.data.splits import make_splits
    from serlib.experiment import build_views, load_experiment_corpus, utterance_scores
    from serlib.studies.head_fusion import paper_experiment

    exp = paper_experiment("ravdess", data_root)
    corpus = load_experiment_corpus("ravdess", data_root)
    split = make_splits(exp.protocol, corpus, seed=exp.split_seed)[0]
    views = build_views(exp, corpus, split)
    labels = tuple(corpus.labels)
    return views.train, views.test, labels, utterance_scores(labels, exp.aggregate)


def toy_data(n_train: int = 64, n_utt: int = 6, n_classes: int = 4, seed: int = 0):
    """Random segments (26 x 63) for a smoke run: n_utt test utterances of 1-4 segments each."""
    from serlib.experiment import utterance_scores

    g = torch.Generator().manual_seed(seed)
    train = ArrayData(x=torch.randn(n_train, 26, 63, generator=g),
                      y=torch.randint(0, n_classes, (n_train,), generator=g))
    counts = torch.randint(1, 5, (n_utt,), generator=g)
    groups = torch.repeat_interleave(torch.arange(n_utt), counts)
    y_utt = torch.arange(n_utt) % n_classes
    test = ArrayData(x=torch.randn(len(groups), 26, 63, generator=g), y=y_utt[groups], groups=groups)
    labels = tuple(f"c{i}" for i in range(n_classes))
    return train, test, labels, utterance_scores(labels)


def run(train, test, labels, score_fn, *, reps: int, steps: int, threads: list[int], out: Path | None,
        data: str, compile_: bool = False, notes: str = "") -> dict:
    torch.set_flush_denormal(True)
    rec: dict = {
        "benchmark": "head_fusion_speed", "issue": 18, "data": data, "git": git_revision(), "notes": notes,
        "eq1_impl": "native" if hf._eq1_native.library() is not None else "blocked",
        "inductor_cache_empty_at_start": _inductor_cache_empty(),  # compile times are cold ones only then
        "native_build_s": native_build_seconds(),
        "device": "cpu", "cpu": cpu_name(), "machine": platform.node(), "cpu_count": os.cpu_count(),
        "load_avg_before": list(os.getloadavg()), "environment": environment_info(),
        "segments": {"train": len(train), "test": len(test),
                     "test_utterances": int(len(torch.unique(test.groups)))},
    }
    print(f"device cpu ({rec['cpu']}, {rec['cpu_count']} cores), load {rec['load_avg_before']}", flush=True)
    rec["epochs"] = []
    for th in threads[:1]:  # epochs at the first thread count only (two threads on a busy 2-core box: minutes)
        e = epoch_times(train, test, labels, reps, th, score_fn)
        print(f"threads {th}: train median authors {e['train_s_median']['authors']:.2f} s, serlib_code "
              f"{e['train_s_median']['serlib_code']:.2f} s (x{e['train_speedup_serlib_over_authors']:.2f}); eval "
              f"authors {e['eval_s_median']['authors']:.2f} s, serlib_code {e['eval_s_median']['serlib_code']:.2f} s "
              f"(x{e['eval_speedup_serlib_over_authors']:.2f})", flush=True)
        rec["epochs"].append(e)
    torch.set_num_threads(threads[0])
    rec["eval_batch_sweep_s"] = eval_batch_sweep(test, len(labels), score_fn, [32, 128, 512, 0])
    print(f"serlib_code eval pass by eval_batch_size (s): {rec['eval_batch_sweep_s']}", flush=True)
    rec["step"] = step_times(train.x, train.y, steps, compile_=compile_)
    rec["step"]["threads"] = threads[0]
    rec["step_by_threads"] = {}
    for th in threads:  # authors vs serlib_code per step at each thread count
        torch.set_num_threads(th)
        rec["step_by_threads"][str(th)] = step_times(train.x, train.y, steps,
                                                     only=("authors", "serlib_code", "serlib_faithful"))
        print(f"threads {th}: step ratios {rec['step_by_threads'][str(th)]['ratios']}", flush=True)
    torch.set_num_threads(threads[0])
    print("steps (median s): " + ", ".join(f"{k} {v['median_s']:.3f}" for k, v in rec["step"].items()
                                         if isinstance(v, dict) and "median_s" in v), flush=True)
    print("step ratios over authors: " + ", ".join(f"{k} {v:.2f}" for k, v in rec["step"]["ratios"].items()))
    rec["eq1_kernel"] = eq1_kernel_times(batch=2 if data == "toy" else 32)
    print(f"Eq. 1 kernel, fwd + bwd of one batch: {rec['eq1_kernel']}", flush=True)
    rec["eq1_forward"] = eq1_forward_times(batch=2 if data == "toy" else 32, compile_=compile_)
    print(f"Eq. 1 forward only: {rec['eq1_forward']}", flush=True)
    rec["load_avg_after"] = list(os.getloadavg())
    from serlib.train import _ALLOCATOR

    rec["cpu_allocator_tuned"] = _ALLOCATOR.get("tuned")  # set by the first Trainer: every side after it
    main = rec["epochs"][0]
    rec["summary"] = {
        "threads": main["threads"],
        "train_speedup_serlib_code_over_authors": main["train_speedup_serlib_over_authors"],
        "eval_speedup_serlib_code_over_authors": main["eval_speedup_serlib_over_authors"],
        "faithful_over_authors_step_cost": rec["step"]["ratios"]["serlib_faithful_over_authors"],
        "goals": {"train_speedup_ge_1_5": main["train_speedup_serlib_over_authors"] >= 1.5,
                  "eval_speedup_ge_1_5": main["eval_speedup_serlib_over_authors"] >= 1.5,
                  "faithful_cost_le_2": rec["step"]["ratios"]["serlib_faithful_over_authors"] <= 2.0},
    }
    print(json.dumps(rec["summary"], indent=1))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rec, indent=1, default=str) + "\n")
        print(f"wrote {out}")
    return rec


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SERLIB_DATA", "/work/shared/data"))
    ap.add_argument("--toy", action="store_true", help="random segments instead of RAVDESS (smoke run)")
    ap.add_argument("--reps", type=int, default=3, help="timed epochs / evaluation passes per side")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per implementation")
    ap.add_argument("--threads", default="1", help="comma-separated torch thread counts: epochs and all steps at the "
                    "first, authors vs serlib_code steps at each")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(serlib_code) per step")
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "head_fusion_speed.json"))
    ap.add_argument("--notes", default="", help="free text stored in the record (what was tried; no numbers)")
    ap.add_argument("--eq1-only", action="store_true", help="only the Eq. 1 kernel comparison (blocked vs one op)")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    torch.set_num_threads(threads[0])
    if args.eq1_only:
        torch.set_flush_denormal(True)
        rec = {"benchmark": "head_fusion_eq1_kernel", "issue": 18, "git": git_revision(), "device": "cpu",
               "cpu": cpu_name(), "machine": platform.node(), "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "load_avg_before": list(os.getloadavg()),
               "eq1_kernel": eq1_kernel_times(reps=args.reps), "load_avg_after": list(os.getloadavg())}
        print(json.dumps(rec["eq1_kernel"], indent=1))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rec, indent=1, default=str) + "\n")
        print(f"wrote {out}")
        return rec
    if args.toy:
        data, name = toy_data(), "toy"
    else:
        data, name = real_data(args.data_root), "ravdess_paper_fold0"
    return run(*data, reps=args.reps, steps=args.steps, threads=threads, out=Path(args.out) if args.out else None,
               data=name, compile_=args.compile, notes=args.notes)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
