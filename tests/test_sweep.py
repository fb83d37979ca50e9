"""Sweep runner: grid order, stable ids, atomic records, resume, error isolation, the process backend."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from serlib.sweep import (
    Backend,
    SerialBackend,
    SweepTask,
    _demo_task,
    choose_threads,
    grid,
    make_backend,
    run_sweep,
    write_json_atomic,
)


def _calls(calls_dir: Path) -> int:
    return len(list(calls_dir.iterdir())) if calls_dir.exists() else 0


def _tasks(n: int, calls_dir: Path, **extra) -> list[SweepTask]:
    return [SweepTask("demo", {"x": i, "calls_dir": str(calls_dir), **extra}, seed=10) for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------------
def test_grid_order_and_constants():
    g = grid(n_head=[1, 2], n_size=(32, 64, 128), attention="head_fusion")
    assert g == [
        {"n_head": 1, "n_size": 32, "attention": "head_fusion"},
        {"n_head": 1, "n_size": 64, "attention": "head_fusion"},
        {"n_head": 1, "n_size": 128, "attention": "head_fusion"},
        {"n_head": 2, "n_size": 32, "attention": "head_fusion"},
        {"n_head": 2, "n_size": 64, "attention": "head_fusion"},
        {"n_head": 2, "n_size": 128, "attention": "head_fusion"},
    ]
    assert grid() == [{}]
    assert grid(a=[]) == []
    assert grid(a=range(3)) == [{"a": 0}, {"a": 1}, {"a": 2}]


def test_task_id_is_stable_and_content_addressed():
    a = SweepTask("hf sweep/1", {"n_head": 4, "n_size": 64}, seed=0, fold=1)
    b = SweepTask("hf sweep/1", {"n_size": 64, "n_head": 4}, seed=0, fold=1)  # key order does not matter
    assert a.task_id == b.task_id
    assert a.task_id.startswith("hf_sweep_1-") and len(a.task_id.split("-")[-1]) == 12
    assert "/" not in a.task_id and " " not in a.task_id
    others = [
        SweepTask("hf sweep/1", {"n_head": 4, "n_size": 64}, seed=1, fold=1),
        SweepTask("hf sweep/1", {"n_head": 4, "n_size": 64}, seed=0, fold=2),
        SweepTask("hf sweep/1", {"n_head": 2, "n_size": 64}, seed=0, fold=1),
        SweepTask("other", {"n_head": 4, "n_size": 64}, seed=0, fold=1),
    ]
    assert len({a.task_id, *(t.task_id for t in others)}) == 5
    # a literal value: same content -> same id in every session (sha1, not Python's salted hash)
    key = b'{"config":{"a":1},"fold":null,"name":"x","seed":0}'
    assert SweepTask("x", {"a": 1}).task_id == "x-" + hashlib.sha1(key).hexdigest()[:12]


def test_write_json_atomic(tmp_path):
    p = write_json_atomic(tmp_path / "sub" / "r.json", {"a": 1, "p": Path("/x"), "s": {2, 1}})
    assert json.loads(p.read_text()) == {"a": 1, "p": "/x", "s": [1, 2]}
    assert [f.name for f in p.parent.iterdir()] == ["r.json"]  # no temporary left behind
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "bad.json", {"f": object()})
    assert not (tmp_path / "bad.json").exists() and not list(tmp_path.glob(".bad.json.*"))


# ---------------------------------------------------------------------------------------------------------------------
def test_serial_run_records_in_task_order(tmp_path):
    calls = tmp_path / "calls"
    tasks = _tasks(4, calls)
    recs = run_sweep(_demo_task, tasks, out_dir=tmp_path / "out", backend="serial", progress=False)
    assert [r["value"] for r in recs] == [10, 12, 14, 16]
    assert all(r["status"] == "ok" for r in recs)
    assert [r["task"]["task_id"] for r in recs] == [t.task_id for t in tasks]
    for t, r in zip(tasks, recs):
        assert json.loads((tmp_path / "out" / f"{t.task_id}.json").read_text()) == r
    assert _calls(calls) == 4


def test_skip_existing_runs_each_task_once(tmp_path):
    calls = tmp_path / "calls"
    tasks = _tasks(3, calls)
    first = run_sweep(_demo_task, tasks, out_dir=tmp_path / "out", backend="serial", progress=False)
    second = run_sweep(_demo_task, tasks, out_dir=tmp_path / "out", backend="serial", progress=False)
    assert _calls(calls) == 3
    assert first == second
    run_sweep(
        _demo_task, tasks, out_dir=tmp_path / "out", backend="serial", skip_existing=False, progress=False
    )
    assert _calls(calls) == 6


def test_interrupted_sweep_resumes(tmp_path):
    """Pre-written records (as left by an interrupted run) are loaded; only the missing tasks run."""
    calls = tmp_path / "calls"
    out = tmp_path / "out"
    tasks = _tasks(5, calls)
    for t in tasks[:2]:
        write_json_atomic(out / f"{t.task_id}.json", {"status": "ok", "value": -1, "task": t.to_dict()})
    (out / f"{tasks[2].task_id}.json").write_text('{"status": "ok", "val')  # torn file from a crash
    with pytest.warns(UserWarning, match="unreadable"):
        recs = run_sweep(_demo_task, tasks, out_dir=out, backend="serial", progress=False)
    assert [r["value"] for r in recs] == [-1, -1, 14, 16, 18]
    assert _calls(calls) == 3
    assert sorted(os.listdir(calls))[0].split(".")[0] in {t.task_id for t in tasks[2:]}


def test_error_isolation_and_retry(tmp_path):
    calls = tmp_path / "calls"
    tasks = _tasks(3, calls)
    tasks[1] = SweepTask("demo", {"x": 1, "calls_dir": str(calls), "fail": True}, seed=10)
    recs = run_sweep(_demo_task, tasks, out_dir=tmp_path / "out", backend="serial", progress=False)
    assert [r["status"] for r in recs] == ["ok", "error", "ok"]
    assert "ValueError: demo failure" in recs[1]["error"] and "Traceback" in recs[1]["error"]
    assert recs[1]["task"]["task_id"] == tasks[1].task_id
    saved = json.loads((tmp_path / "out" / f"{tasks[1].task_id}.json").read_text())
    assert saved["status"] == "error"
    # by default error records are retried; ok records are not
    run_sweep(_demo_task, tasks, out_dir=tmp_path / "out", backend="serial", progress=False)
    assert _calls(calls) == 4
    run_sweep(
        _demo_task, tasks, out_dir=tmp_path / "out", backend="serial", retry_errors=False, progress=False
    )
    assert _calls(calls) == 4


def test_non_dict_and_unserialisable_results_are_errors(tmp_path):
    recs = run_sweep(_bad_result, [SweepTask("a", {"kind": "list"}), SweepTask("b", {"kind": "obj"})],
                     out_dir=tmp_path, backend="serial", progress=False)  # fmt: skip
    assert [r["status"] for r in recs] == ["error", "error"]
    assert "expected a dict" in recs[0]["error"] and "not JSON serialisable" in recs[1]["error"]


def _bad_result(task: SweepTask):
    return [1, 2] if task.config["kind"] == "list" else {"model": object()}


def test_path_fn_and_duplicate_tasks(tmp_path):
    tasks = [SweepTask("demo", {"x": i}, seed=0, fold=i) for i in range(2)]
    recs = run_sweep(_demo_task, tasks, out_dir=tmp_path, backend="serial", progress=False,
                     path_fn=lambda t: f"fold{t.fold}/{t.name}.json")  # fmt: skip
    assert (tmp_path / "fold1" / "demo.json").exists() and [r["value"] for r in recs] == [0, 2]
    with pytest.raises(ValueError, match="share a record path"):
        run_sweep(_demo_task, [tasks[0], tasks[0]], out_dir=tmp_path, backend="serial", progress=False)


def test_backends_follow_protocol():
    serial = make_backend("serial", 4)
    assert isinstance(serial, SerialBackend) and isinstance(serial, Backend)
    assert isinstance(make_backend("process", 1), SerialBackend)  # one job: no pool
    assert list(serial.map(abs, [-1, 2])) == [1, 2]
    fut = serial.submit(int, "x")
    assert isinstance(fut.exception(), ValueError)
    with pytest.raises(ValueError, match="one of"):
        make_backend("dask", 2)
    with pytest.raises(ValueError, match="needs backend='ray'"):
        make_backend("process", 2, address="127.0.0.1:6379")


def test_ray_backend_without_ray_is_one_line_naming_pip_install(monkeypatch, capsys):
    """Ray is imported only when asked for; without it, `reproduce --backend ray` stops before any work."""
    import sys

    from serlib.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match="pip install ray"):
        make_backend("ray", 2)
    code = main(["reproduce", "head_fusion", "--corpus", "synthetic", "--profile", "quick", "--backend", "ray"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "pip install ray" in err


def test_process_backend_rejects_unimportable_functions(tmp_path):
    with pytest.raises(ValueError, match="top-level function"):
        run_sweep(lambda t: {}, [SweepTask("a"), SweepTask("b")], out_dir=tmp_path, n_jobs=2, progress=False)


# ---------------------------------------------------------------------------------------------------------------------
def test_process_backend_two_jobs(tmp_path):
    """Two spawn workers: results in task order, both workers used, torch threads = cpus // 2, errors isolated."""
    calls = tmp_path / "calls"
    tasks = _tasks(4, calls, sleep=0.3, report_threads=True)
    tasks.append(SweepTask("demo", {"x": 9, "fail": True}, seed=10))
    recs = run_sweep(_demo_task, tasks, out_dir=tmp_path / "out", n_jobs=2, backend="process", progress=False)
    assert [r["status"] for r in recs] == ["ok"] * 4 + ["error"]
    assert [r["value"] for r in recs[:4]] == [10, 12, 14, 16]
    assert os.getpid() not in {r["pid"] for r in recs[:4]}
    assert (
        1 <= len({r["pid"] for r in recs[:4]}) <= 2
    )  # both usually; one may finish all before the other starts
    assert {r["n_threads"] for r in recs[:4]} == {choose_threads(2)[0]}  # cpus // 2 unless $OMP_NUM_THREADS is less
    assert _calls(calls) == 4
    # resumed: nothing runs again (and no pool is started for zero tasks)
    again = run_sweep(_demo_task, tasks[:4], out_dir=tmp_path / "out", n_jobs=2, progress=False)
    assert again == recs[:4] and _calls(calls) == 4


def test_dead_worker_gives_error_records_and_resume_reruns_them(tmp_path):
    tasks = [SweepTask("demo", {"x": 0, "die": True}), SweepTask("demo", {"x": 1})]
    recs = run_sweep(_demo_task, tasks, out_dir=tmp_path, n_jobs=2, progress=False)
    assert recs[0]["status"] == "error" and "BrokenProcessPool" in recs[0]["error"]
    assert recs[0]["task"]["task_id"] == tasks[0].task_id
    assert (tmp_path / f"{tasks[0].task_id}.json").exists()
    # the other task was lost with the pool or finished; a rerun completes it either way (error records are retried)
    again = run_sweep(_demo_task, tasks[1:], out_dir=tmp_path, backend="serial", progress=False)
    assert again[0]["status"] == "ok" and again[0]["value"] == 2


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_workers_end_when_the_launching_process_is_killed(tmp_path, how):
    """Killing `serlib reproduce` (not its process group) used to leave its spawn workers training on, competing for
    the CPUs with the next launch and writing into the same checkpoint folders."""
    import signal
    import subprocess
    import sys
    import time

    pids = tmp_path / "pids"
    script = (
        "from serlib.sweep import SweepTask, _demo_task, run_sweep\n"
        f"tasks = [SweepTask('demo', {{'x': i, 'sleep': 120, 'pid_dir': {str(pids)!r}}}) for i in range(2)]\n"
        f"run_sweep(_demo_task, tasks, out_dir={str(tmp_path / 'out')!r}, n_jobs=2, backend='process', "
        "progress=False)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    try:
        t0 = time.monotonic()
        while (not pids.exists() or len(list(pids.iterdir())) < 2) and time.monotonic() - t0 < 120:
            time.sleep(0.2)
        workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2
        parent.send_signal(getattr(signal, how))
        parent.wait(30)

        def alive(pid: int) -> bool:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().split(") ")[-1][0] != "Z"  # a zombie has ended
            except FileNotFoundError:
                return False

        t0 = time.monotonic()
        while any(alive(p) for p in workers) and time.monotonic() - t0 < 20:
            time.sleep(0.2)
        assert not any(alive(p) for p in workers), f"workers {workers} outlived their parent ({how})"
    finally:
        parent.kill()
        for pid in [int(p.name) for p in pids.iterdir()] if pids.exists() else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
