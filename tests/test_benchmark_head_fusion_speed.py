"""Smoke test of benchmarks/head_fusion_speed.py at toy size (the benchmark itself is not part of the suite): the
authors' layer stack reimplemented there computes the same function as serlib's ``head_fusion_code`` variant, and the
timing helpers run and record both sides."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import head_fusion_speed as hs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_authors_stack_equals_serlib_code_variant():
    authors, serlib_code, diff = hs.make_sides(5)
    assert diff < 1e-5
    x = torch.randn(6, 26, 40)
    authors.eval()
    serlib_code.eval()
    with torch.no_grad():
        a, s = authors(x.unsqueeze(1)), serlib_code(x)[0]
    torch.testing.assert_close(a, s, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in authors.parameters()) == sum(p.numel() for p in serlib_code.parameters())


def test_timing_helpers_record_both_sides(tmp_path):
    train, test, labels, score_fn = hs.toy_data(n_train=40, n_utt=4)
    rec = hs.run(train, test, labels, score_fn, reps=1, steps=1, threads=[1], out=tmp_path / "r.json", data="toy")
    e = rec["epochs"][0]
    assert len(e["train_s"]["authors"]) == len(e["train_s"]["serlib_code"]) == 1
    assert e["max_abs_logit_diff"] < 1e-5
    assert set(e["last_scores"]) == {"authors", "serlib_code"}
    assert rec["step"]["ratios"]["serlib_faithful_over_authors"] > 0
    assert rec["device"] == "cpu" and (tmp_path / "r.json").is_file()
    k = rec["eq1_kernel"]  # the one-op alternative computes the same points and gradients as the blocked kernel
    assert k["max_abs_points_diff"] < 1e-5 and k["max_abs_grad_diff"] < 1e-5
    fwd = rec["eq1_forward"]["max_abs_points_diff_vs_blocked"]
    if rec["eq1_impl"] == "native":  # the C kernel built: timed beside the torch function, same points and gradients
        assert k["native_max_abs_points_diff"] < 1e-5 and k["native_max_abs_grad_diff"] < 1e-5
        assert fwd["native"] < 1e-5 and rec["eq1_forward"]["native_median_s"] > 0
        assert rec["step"]["ratios"]["serlib_faithful_blocked_over_authors"] > 0
        # before / after the Jacobian moved into the forward: both timed, same points and gradients
        assert k["native_two_kernels_max_abs_points_diff"] < 1e-5 and k["native_two_kernels_max_abs_grad_diff"] < 1e-5
        assert rec["step"]["ratios"]["serlib_faithful_two_kernels_over_authors"] > 0
        assert rec["step"]["ratios"]["serlib_faithful_gemm_over_authors"] > 0
        assert fwd["native_rowwise_with_u"] < 1e-5
        assert rec["native_build_s"] > 0
    else:
        assert set(fwd) == {"blocked"}
