"""Shared fixtures: seeded rng, the real-data root (skipped cleanly when absent), a local HTTP server, CUDA
deselection."""

from __future__ import annotations

import functools
import http.server
import os
import threading
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


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: list[str]

    def do_GET(self):  # noqa: N802 (http.server naming)
        self.hits.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """Serve ``tmp_path/www`` on a random loopback port (never the network, proxies off); yields
    ``(base_url, www_dir, hits)``, ``hits`` the paths requested so far."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    www = tmp_path / "www"
    www.mkdir()
    hits: list[str] = []
    handler = type("H", (_Handler,), {"hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www, hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)
