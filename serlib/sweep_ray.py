"""The sweep backend on Ray: the same tasks, records and resumption as the local backend, on one machine or a cluster.

    python -m serlib reproduce eca --profile cpu --backend ray --n-jobs 2          # a local Ray instance, 2 CPUs
    python -m serlib reproduce eca --profile cpu --backend ray --ray-address HOST:6379   # an existing cluster

or ``run_study(exps, results_dir=..., backend="ray", ray_address=None, n_jobs=2)``.
:class:`RayBackend` implements :class:`serlib.sweep.Backend`, so :func:`serlib.sweep.run_sweep` is unchanged: it
loads every finished record and submits only the rest, each as one Ray task running the local backend's worker body
(``serlib.sweep._run_and_write``: the study's ``run_task``, its record written atomically by the task itself). A task
that raises gets the same error record as locally; a task whose worker dies (killed, out of memory) surfaces as a Ray
error from its future and :func:`run_sweep` writes the same error record for it (``max_retries=0`` by default, as
locally: the next call runs it again). An interrupted sweep cancels its queued tasks; records already written stay,
so rerunning the command resumes it.

* **Local** (``address=None``): ``ray.init(address="local", num_cpus=n_jobs)`` starts a private instance (never an
  instance some other process started on this machine), without the dashboard; each task takes one CPU and
  :func:`serlib.sweep.choose_threads` (n_jobs) torch threads, exactly the process backend's rule. It is shut down
  after the sweep.
* **Cluster** (``address="HOST:6379"`` or ``"ray://HOST:10001"``): ``ray.init(address=...)`` connects; the cluster's
  CPUs decide how many tasks run at once (``n_jobs`` is ignored), each task takes ``cpus_per_task`` CPUs and as many
  torch threads (``$SERLIB_THREADS`` overrides). Every node needs serlib (and this Python's packages) installed, and the **data root, the feature
  cache (``$SERLIB_CACHE``), the results folder and any checkpoint root on a shared filesystem at the same paths**:
  tasks read the corpus and cached features and write their records where the driver names them. The driver's
  ``SERLIB_*`` environment variables are set in every task. Build the feature caches first (``serlib.studies.base.run``
  does, in the driver) so tasks do not race to build them.

If ``ray.init`` was already called in this process (a notebook, a test), that session is used and left running.
Ray is imported only when this backend is asked for; without it, :func:`import_ray` raises one line naming
``pip install ray``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from serlib.sweep import choose_threads, configure_threads

__all__ = ["RayBackend", "import_ray"]

RAY_MISSING = "backend 'ray' needs Ray, which is not installed: pip install ray (or pip install 'serlib[ray]')"


def import_ray():
    """The ``ray`` module, or an ImportError whose one-line message names ``pip install ray``."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(RAY_MISSING) from exc
    return ray


def _call_in_worker(threads: int, n_jobs: int, fn: Callable[..., Any], *args: Any) -> Any:
    """The Ray task body: the process backend's worker setup (torch threads, flush denormals), then ``fn(*args)``."""
    configure_threads(n_jobs, threads=threads, worker=True)
    return fn(*args)


def _forwarded_env() -> dict[str, str]:
    """The driver's ``SERLIB_*`` variables (cache, data, threads, plugins), for every task."""
    return {k: v for k, v in os.environ.items() if k.startswith("SERLIB_")}


class RayBackend:
    """:class:`serlib.sweep.Backend` on Ray tasks; ``submit`` returns the task's ``concurrent.futures.Future``.

    ``address``: None for a private local instance of ``n_jobs`` CPUs, else a cluster address (``ray.init``'s).
    ``threads_per_job``: torch threads per task (default: :func:`serlib.sweep.choose_threads`, locally for ``n_jobs``
    tasks on this machine's CPUs, on a cluster for one task on ``cpus_per_task`` CPUs). ``max_retries``: Ray's retries of a task whose worker died (0: an error record at once).
    """

    def __init__(self, n_jobs: int = 1, *, address: str | None = None, cpus_per_task: int = 1,
                 threads_per_job: int | None = None, max_retries: int = 0) -> None:
        if n_jobs < 1 or cpus_per_task < 1:
            raise ValueError(f"n_jobs and cpus_per_task must be >= 1, got {n_jobs} and {cpus_per_task}")
        ray = import_ray()
        self.n_jobs, self.address = int(n_jobs), address
        self._owns_session = not ray.is_initialized()
        if self._owns_session:
            if address is None:
                ray.init(address="local", num_cpus=self.n_jobs, include_dashboard=False)
            else:
                ray.init(address=address)
        local = address is None
        self.threads_per_job = int(threads_per_job or choose_threads(self.n_jobs if local else 1,
                                                                      cpus=None if local else cpus_per_task)[0])
        self._remote = ray.remote(_call_in_worker).options(
            num_cpus=1 if local else cpus_per_task, max_retries=max_retries,
            runtime_env={"env_vars": _forwarded_env()})
        self._refs: list = []

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        ref = self._remote.remote(self.threads_per_job, self.n_jobs, fn, *args)
        self._refs.append(ref)
        return ref.future()

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        ray = import_ray()
        refs = [self._remote.remote(self.threads_per_job, self.n_jobs, fn, *args) for args in zip(*iterables)]
        self._refs.extend(refs)
        return iter(ray.get(refs))

    def shutdown(self, wait: bool = True) -> None:
        """``wait=False`` cancels the tasks not finished yet (their records are not written). A session this backend
        started is shut down; one it found running is left as it was."""
        ray = import_ray()
        if not wait:
            for ref in self._refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone: nothing to cancel
                    pass
        else:
            pending = [r for r in self._refs]
            if pending:
                ray.wait(pending, num_returns=len(pending))
        self._refs = []
        if self._owns_session and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
