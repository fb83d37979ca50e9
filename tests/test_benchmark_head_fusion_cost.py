"""Smoke test of benchmarks/head_fusion_cost.py (issue 18's cost model): the FLOP counts are the models' own (the
fused Eq. 1 kernel's analytic count matches its formula; the counted part changes with the model's size) and the
record's derived quantities follow from its measurements."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import head_fusion_cost as hc  # noqa: E402

from serlib.models.head_fusion import HeadFusionACNN, HeadFusionConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eq1_flops_follow_the_map_count_and_head_dim():
    x = torch.randn(3, 26, 63)
    m = HeadFusionACNN(HeadFusionConfig(n_classes=4, n_head=2, n_size=8))
    p = 90  # 26 x 63 -> (6, 15) after the two pools
    assert hc.eq1_flops(m, x) == 8 * m.config.head_dim * 3 * 8 * 2 * p * p
    small = hc.count_flops("serlib_faithful", m, x, torch.zeros(3, dtype=torch.long))
    big = hc.count_flops("serlib_faithful", HeadFusionACNN(HeadFusionConfig(n_classes=4, n_head=2, n_size=16)), x,
                         torch.zeros(3, dtype=torch.long))
    assert small["total"] == small["counted"] + small["eq1_kernel_analytic"]
    assert big["eq1_kernel_analytic"] == 2 * small["eq1_kernel_analytic"]
    assert big["by_op"]["aten.addmm"] > small["by_op"]["aten.addmm"] > 0  # the Q/K/V projection grows with n_size


def test_record_derives_its_ratios_from_its_measurements(tmp_path):
    rec = hc.run(rounds=1, steps=1, threads=1, out=tmp_path / "c.json")
    f = rec["step_flops"]
    best = max(rec["gemm_gflops_best"].values()) * 1e9
    a = rec["step_s"]["authors"]["median_s"]
    fa = rec["step_s"]["serlib_faithful"]["median_s"]
    assert rec["floor_s"] == pytest.approx(f["serlib_faithful"]["total"] / best)
    assert rec["floor_over_authors"] == pytest.approx(rec["floor_s"] / a)
    assert rec["fraction_of_peak_needed_for_2x"] == pytest.approx(f["serlib_faithful"]["total"] / (2 * a * best))
    assert rec["measured_ratio_faithful_over_authors"] == pytest.approx(fa / a)
    assert rec["floor_s"] < fa  # nothing runs faster than its arithmetic at peak
    assert 0 < rec["achieved_fraction_of_peak"]["authors"] < 1
    assert (tmp_path / "c.json").is_file() and rec["device"] == "cpu"
