"""serlib.cache: built once then reused, keyed by settings, atomic, corrupt files rebuilt with a warning."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from serlib import cache
from serlib.cache import cache_dir, cache_key, cached_arrays

SPEC = {"corpus": "ravdess:abc123", "features": {"name": "eca_v3", "n_mels": 64, "fmax": None}, "format": 1}


class Builder:
    """Counts its calls; returns fresh arrays each time."""

    def __init__(self, rng: np.random.Generator):
        self.calls = 0
        self.rng = rng

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return {
            "x": self.rng.standard_normal((4, 3, 5)).astype(np.float32),
            "y": np.arange(4),
            "file": np.ones(2),
        }


def test_built_once_then_reused(tmp_path, rng):
    build = Builder(rng)
    first = cached_arrays(SPEC, build, root=tmp_path)
    again = cached_arrays(SPEC, build, root=tmp_path)
    assert build.calls == 1
    assert set(again) == {"x", "y", "file"}
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])
        assert again[k].dtype == first[k].dtype
    key = cache_key(SPEC)
    record = json.loads((tmp_path / f"{key}.json").read_text())
    assert record["spec"] == SPEC and record["key"] == key and record["created"]
    assert record["arrays"]["x"] == {"shape": [4, 3, 5], "dtype": "float32"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{key}.npz", f"{key}.json"])  # no temp left


def test_refresh_rebuilds(tmp_path, rng):
    build = Builder(rng)
    cached_arrays(SPEC, build, root=tmp_path)
    cached_arrays(SPEC, build, root=tmp_path, refresh=True)
    assert build.calls == 2


def test_key_depends_on_settings_not_on_key_order():
    key = cache_key(SPEC)
    assert len(key) == 20 and int(key, 16) >= 0
    reordered = {
        "format": 1,
        "features": {"fmax": None, "n_mels": 64, "name": "eca_v3"},
        "corpus": "ravdess:abc123",
    }
    assert cache_key(reordered) == key
    changed = {**SPEC, "features": {**SPEC["features"], "n_mels": 40}}
    assert cache_key(changed) != key
    assert cache_key({**SPEC, "format": 2}) != key
    assert cache_key({"n": np.int64(3), "p": Path("a/b")}) == cache_key({"n": 3, "p": "a/b"})


def test_different_spec_builds_separately(tmp_path, rng):
    build = Builder(rng)
    cached_arrays(SPEC, build, root=tmp_path)
    cached_arrays({**SPEC, "format": 2}, build, root=tmp_path)
    assert build.calls == 2 and len(list(tmp_path.glob("*.npz"))) == 2


def test_unserialisable_spec_is_refused():
    with pytest.raises(TypeError):
        cache_key({"f": object()})
    with pytest.raises(ValueError):
        cache_key({"x": float("nan")})


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_file_is_rebuilt_with_a_warning(tmp_path, rng, keep):
    build = Builder(rng)
    cached_arrays(SPEC, build, root=tmp_path)
    npz = tmp_path / f"{cache_key(SPEC)}.npz"
    data = npz.read_bytes()
    npz.write_bytes(data[: int(len(data) * keep)])
    with pytest.warns(UserWarning, match=str(npz.name)):
        out = cached_arrays(SPEC, build, root=tmp_path)
    assert build.calls == 2 and out["x"].shape == (4, 3, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached_arrays(SPEC, build, root=tmp_path)  # repaired: loads silently
    assert build.calls == 2


def test_missing_array_is_detected_and_rebuilt(tmp_path, rng):
    build = Builder(rng)
    cached_arrays(SPEC, build, root=tmp_path)
    npz = tmp_path / f"{cache_key(SPEC)}.npz"
    np.savez(npz, x=np.zeros((4, 3, 5)))  # a valid npz that lacks "y" and "file"
    with pytest.warns(UserWarning, match="missing"):
        out = cached_arrays(SPEC, build, root=tmp_path)
    assert build.calls == 2 and set(out) == {"x", "y", "file"}


def test_leftover_temp_file_is_ignored(tmp_path, rng):
    key = cache_key(SPEC)
    stale = tmp_path / f"{key}.npz.tmp-99999-deadbeef"
    stale.write_bytes(b"PK\x03\x04 half a zip")  # what a kill mid-write leaves behind
    build = Builder(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cached_arrays(SPEC, build, root=tmp_path)
        cached_arrays(SPEC, build, root=tmp_path)
    assert build.calls == 1 and out["y"].tolist() == [0, 1, 2, 3]


def test_exception_in_build_leaves_no_cache_file(tmp_path):
    def broken():
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        cached_arrays(SPEC, broken, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_kill_during_write_leaves_nothing_that_is_read(tmp_path, rng, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed between writing and renaming

    monkeypatch.setattr(cache.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        cached_arrays(SPEC, Builder(rng), root=tmp_path)
    assert not (tmp_path / f"{cache_key(SPEC)}.npz").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary file was removed too


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="pickl"):
        cached_arrays(SPEC, lambda: {"bad": np.array([{"a": 1}], dtype=object)}, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_from_env_or_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SERLIB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "serlib"


def test_default_root_is_cache_dir(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("SERLIB_CACHE", str(tmp_path / "deep" / "dir"))
    cached_arrays(SPEC, Builder(rng), root=None)
    assert (tmp_path / "deep" / "dir" / f"{cache_key(SPEC)}.npz").exists()
    assert os.access(tmp_path / "deep" / "dir" / f"{cache_key(SPEC)}.json", os.R_OK)
