"""The Ray sweep backend: a 4-task study sweep on the synthetic corpus gives the local backend's records, resumes after
its driver is killed (finished records kept, not recomputed), and turns failed or dead tasks into error records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

for _var, _value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
                     "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}.items():
    os.environ.setdefault(_var, _value)  # before ray is imported: no usage report, no network
ray = pytest.importorskip("ray")

from serlib.studies.common import run_study  # noqa: E402
from serlib.sweep import SweepTask, _demo_task, run_sweep  # noqa: E402
from serlib.sweep_ray import RayBackend  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # Ray and worker startup: ~2 min on a busy 2-core CPU


def experiments():
    """4 tasks: the tiniest Head Fusion (1 epoch, 1 head of 4 channels) on the synthetic corpus, 4 seeds x 1 split."""
    from serlib.studies import head_fusion as hf

    exp = hf.paper_experiment("synthetic", profile="quick", train={"epochs": 1, "progress": False},
                              model_kwargs={"n_head": 1, "n_size": 4})
    return [exp.replace(name="ray_sweep", seeds=(0, 1, 2, 3))]


def run_records(results: Path) -> dict[str, Path]:
    return {str(p.relative_to(results)): p for p in results.rglob("*.json") if p.parent.name != "splits"}


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance of 2 CPUs for the module (its startup takes seconds); every task gets 1 torch thread."""
    os.environ["SERLIB_THREADS"] = "1"  # inherited by the Ray workers, as the tasks' thread count
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    os.environ.pop("SERLIB_THREADS", None)


@pytest.fixture(scope="module")
def local_records(ray_session, tmp_path_factory):
    """The same 4 tasks on the local backend (2 worker processes of 1 thread), after the features are cached here
    (as ``serlib.studies.base.run`` does before any worker starts)."""
    from serlib.experiment import build_views
    from serlib.studies.common import corpus_for, split_for

    (exp,) = experiments()
    corpus = corpus_for(exp)
    build_views(exp, corpus, split_for(exp, corpus, 0))
    results = tmp_path_factory.mktemp("local")
    return results, run_study(experiments(), results_dir=results, backend="local", n_jobs=2)


def test_ray_sweep_equals_the_local_backend(ray_session, local_records, tmp_path):
    local_dir, local = local_records
    recs = run_study(experiments(), results_dir=tmp_path, backend="ray", n_jobs=2)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs + local)
    assert sorted(run_records(tmp_path)) == sorted(run_records(local_dir))  # same record paths
    assert [r["seed"] for r in recs] == [r["seed"] for r in local] == [0, 1, 2, 3]
    assert [r["metrics"] for r in recs] == [r["metrics"] for r in local]
    assert len({json.dumps(r["metrics"], sort_keys=True) for r in recs}) > 1  # the seeds differ: a real comparison
    for rec in recs:  # each Ray task set up its threads as a local worker does
        assert rec["extra"]["threads"]["set_by"] == "serlib.sweep.configure_threads"
        assert rec["extra"]["threads"]["torch_threads"] == 1 and rec["extra"]["threads"]["flush_denormal"]
    assert {r["extra"]["threads"]["n_jobs"] for r in recs + local} == {2}


@pytest.mark.usefixtures("local_records")  # the feature cache exists, so the killed sweep's tasks only train
def test_ray_sweep_resumes_after_its_driver_is_killed(ray_session, tmp_path):
    """The killed driver is a second process that joins this module's Ray instance by its address (the cluster
    path; a fresh instance would cost seconds to start)."""
    script = ("import sys; sys.path.insert(0, sys.argv[2]); from test_ray_backend import experiments;"
              "from serlib.studies.common import run_study;"
              "run_study(experiments(), results_dir=sys.argv[1], backend='ray', ray_address=sys.argv[3])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(REPO / "tests"), address], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not run_records(tmp_path):
            assert proc.poll() is None, f"the sweep ended before writing a record: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no record after 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver (its own session); Ray cancels the tasks of a dead driver
        proc.wait()
    time.sleep(0.5)
    done = {name: (p.stat().st_mtime_ns, p.read_text()) for name, p in run_records(tmp_path).items()}
    assert 1 <= len(done) < 4, f"{len(done)} records when the sweep was killed"

    recs = run_study(experiments(), results_dir=tmp_path, backend="ray", n_jobs=2)
    after = run_records(tmp_path)
    assert len(after) == 4 and all(r["status"] == "ok" for r in recs)
    for name, (mtime, text) in done.items():  # finished before the kill: loaded, not run again
        assert after[name].stat().st_mtime_ns == mtime and after[name].read_text() == text
    assert all(after[n].stat().st_mtime_ns > max(m for m, _ in done.values()) for n in set(after) - set(done))


def test_failed_and_dead_tasks_become_error_records(ray_session, tmp_path):
    tasks = [SweepTask("ok", {"x": 2}), SweepTask("raises", {"fail": True}), SweepTask("dies", {"die": True})]
    backend = RayBackend(2)
    recs = run_sweep(_demo_task, tasks, out_dir=tmp_path, backend=backend, progress=False)
    backend.shutdown()
    assert ray.is_initialized()  # the module's session was found running, so it was left running
    assert [r["status"] for r in recs] == ["ok", "error", "error"]
    assert recs[0]["value"] == 4 and "demo failure" in recs[1]["error"]
    assert "died" in recs[2]["error"].lower() or "crash" in recs[2]["error"].lower()
    on_disk = {p.stem: json.loads(p.read_text())["status"] for p in tmp_path.glob("*.json")}
    assert sorted(on_disk.values()) == ["error", "error", "ok"]  # no silent loss: every task has its record
