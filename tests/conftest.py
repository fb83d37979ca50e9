"""Shared fixtures: seeded rng, the real-data root (skipped cleanly when absent), CUDA deselection."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def real_data_root() -> Path | None:
    """``SERLIB_DATA`` if set, else ``../shared/data`` beside the repo, if it exists."""
    env = os.environ.get("SERLIB_DATA")
    cand = Path(env) if env else REPO.parent / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is faster than two on a shared, busy CPU (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("real corpora not present (set SERLIB_DATA or place ../shared/data)")
    return root


@pytest.fixture(scope="session")
def ravdess_root(data_root) -> Path:
    p = data_root / "ravdess"
    if not p.is_dir():
        pytest.skip(f"RAVDESS not present under {data_root}")
    return p


@pytest.fixture(scope="session")
def esc50_root(data_root) -> Path:
    p = data_root / "esc50"
    if not p.is_dir():
        pytest.skip(f"ESC-50 not present under {data_root}")
    return p


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)
