"""A small, resumable sweep runner: a grid of config overrides x seeds x folds, one JSON record per task.

    tasks = [SweepTask("hf", cfg, seed=s) for cfg in grid(n_head=[1, 2, 4], n_size=[32, 64]) for s in SEEDS]
    records = run_sweep(run_one, tasks, out_dir="results/hf_sweep", n_jobs=2)

``fn(task) -> dict`` is the caller's experiment function. It must be a top-level function of an importable module
(process workers are started with ``spawn`` and import it by name). Each record is written atomically to
``out_dir/<task_id>.json`` by the worker that made it, so an interrupted sweep resumes where it stopped: tasks with an
``"ok"`` record are loaded, not run again. A task that raises gets an error record (``{"status": "error", "error":
traceback}``) and the sweep goes on; error records are run again on the next call unless ``retry_errors=False``.

Every record gets ``"status"`` ("ok" unless ``fn`` set it), ``"task"`` (name, config, seed, fold, task_id) and
``"elapsed_s"``, unless ``fn`` already set those keys.

Backends implement the :class:`Backend` protocol (``submit(fn, *args) -> Future``, ``map``, ``shutdown``). "serial" runs in
this process; "process" uses a spawn-context ``ProcessPoolExecutor`` whose workers each get
:func:`choose_threads` torch threads (``max(1, cpu_count // n_jobs)`` unless ``$SERLIB_THREADS`` / ``$OMP_NUM_THREADS``
say less) and flush denormals (:func:`configure_threads`); "local" is another name for it. "ray"
(:mod:`serlib.sweep_ray`) runs the same worker body as Ray tasks, on a local Ray instance or a cluster (``address=``),
with the same records and resumption. Another backend only needs a class with the same methods, passed as ``backend=``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "BACKENDS",
    "Backend",
    "ProcessBackend",
    "SerialBackend",
    "SweepTask",
    "choose_threads",
    "configure_threads",
    "grid",
    "make_backend",
    "run_sweep",
    "thread_settings",
    "usable_cpus",
    "write_json_atomic",
]

TaskFn = Callable[["SweepTask"], Mapping[str, Any]]


# ---------------------------------------------------------------------------------------------------------------------
def grid(**axes: Any) -> list[dict[str, Any]]:
    """Cartesian product of config overrides, in a stable order (first axis slowest, last axis fastest).

    A list, tuple or range is an axis; any other value (str, number, dict, None) is a constant in every point.
    ``grid()`` is ``[{}]``, and an empty axis gives ``[]``.
    """
    keys = list(axes)
    values = [list(v) if isinstance(v, (list, tuple, range)) else [v] for v in axes.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _slug(name: str) -> str:
    s = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._")
    return s[:60] or "task"


@dataclass(frozen=True)
class SweepTask:
    """One run: a name, config overrides, a seed and an optional fold. ``task_id`` is a stable content hash."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    fold: int | None = None

    @property
    def task_id(self) -> str:
        """``<name slug>-<12 hex of sha1 over name, config, seed, fold>``; same across processes and sessions."""
        key = _canonical({"name": self.name, "config": self.config, "seed": self.seed, "fold": self.fold})
        return f"{_slug(self.name)}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config,
            "seed": self.seed,
            "fold": self.fold,
            "task_id": self.task_id,
        }


# ---------------------------------------------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays, paths, sets and dataclass-like objects to JSON types (no numpy import needed)."""
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json_atomic(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as JSON to ``path`` via a temporary file in the same directory and ``os.replace``."""
    from serlib.records import write_text_atomic

    text = json.dumps(record, indent=1, sort_keys=False, default=_json_default, allow_nan=True)
    return write_text_atomic(path, text)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _run_and_write(fn: TaskFn, task: SweepTask, path: str) -> dict[str, Any]:
    """Worker body: run ``fn(task)``, turn exceptions into error records, write the record. Never raises for fn."""
    t0 = time.perf_counter()
    try:
        out = fn(task)
        if not isinstance(out, Mapping):
            raise TypeError(f"{getattr(fn, '__name__', fn)!r} returned {type(out).__name__}, expected a dict")
        record = dict(out)
        record.setdefault("status", "ok")
        json.dumps(
            record, default=_json_default
        )  # fail here, as this task's error, if the record is not JSON-able
    except Exception:
        record = {"status": "error", "error": traceback.format_exc()}
    record.setdefault("task", task.to_dict())
    record.setdefault("elapsed_s", round(time.perf_counter() - t0, 3))
    write_json_atomic(path, record)
    return json.loads(json.dumps(record, default=_json_default))  # what a resumed sweep would load


# ---------------------------------------------------------------------------------------------------------------------
def usable_cpus() -> int:
    """CPUs this process may run on (affinity mask where available)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


THREADS_ENV = "SERLIB_THREADS"  # an explicit number of torch threads per process (overrides the rule below)
_THREADS: dict[str, Any] | None = None  # what configure_threads chose in this process


def choose_threads(n_jobs: int = 1, cpus: int | None = None) -> tuple[int, str]:
    """Torch threads per process for ``n_jobs`` parallel processes, and the rule that gave it: ``$SERLIB_THREADS``
    when set; else ``cpus // n_jobs`` (at least 1), capped by an explicit ``$OMP_NUM_THREADS``. ``n_jobs`` processes
    then never ask for more threads than there are CPUs (oversubscription makes small models many times slower)."""
    explicit = os.environ.get(THREADS_ENV, "").strip()
    if explicit:
        if not explicit.isdigit() or int(explicit) < 1:
            raise ValueError(f"${THREADS_ENV}={explicit!r}: expected a positive integer")
        return int(explicit), f"${THREADS_ENV}"
    n = max(1, (cpus or usable_cpus()) // max(1, int(n_jobs)))
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and 1 <= int(omp) < n:
        return int(omp), "cpus // n_jobs, capped by $OMP_NUM_THREADS"
    return n, "cpus // n_jobs"


def configure_threads(n_jobs: int = 1, *, threads: int | None = None, worker: bool = False) -> dict[str, Any]:
    """Set this process's torch threads (``threads``, or :func:`choose_threads` for ``n_jobs`` processes) and flush
    denormal floats to zero (``torch.set_flush_denormal(True)``: tiny activations otherwise cost ~100x per
    operation on x86). ``worker``: also set ``OMP/MKL/OPENBLAS_NUM_THREADS`` (a pool worker, before heavy imports).
    Called by the CLI (``reproduce``, ``experiment``) and by every process-pool worker; returns the choice, which
    :func:`thread_settings` puts in each run record."""
    global _THREADS
    n, rule = (int(threads), "given") if threads else choose_threads(n_jobs)
    if worker:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(n)
    flush = None
    try:
        import torch
    except ImportError:  # a sweep need not use torch
        torch = None
    if torch is not None:
        torch.set_num_threads(n)
        flush = bool(torch.set_flush_denormal(True))
    _THREADS = {"torch_threads": n, "n_jobs": int(n_jobs), "cpus": usable_cpus(), "rule": rule,
                "flush_denormal": flush, "set_by": "serlib.sweep.configure_threads"}
    return dict(_THREADS)


def thread_settings() -> dict[str, Any]:
    """What a run record stores about threads: :func:`configure_threads`' choice in this process (or that it was not
    called: the caller's / torch's setting), with the torch threads actually in use now."""
    import torch

    out = dict(_THREADS) if _THREADS else {"cpus": usable_cpus(), "flush_denormal": None,
                                           "set_by": "caller (configure_threads not called in this process)"}
    out["torch_threads"] = torch.get_num_threads()
    return out


def _die_with_parent(parent_pid: int, *, poll_s: float = 2.0) -> None:
    """End this worker when the process that started it goes away, however it went (killed with SIGTERM or SIGKILL,
    a crash): a worker left behind would go on training, compete for the CPUs with the next launch and write into
    the same checkpoint folders. Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``; elsewhere, or in addition, a daemon
    thread that polls the parent pid. Checkpoints are written atomically, so the next launch resumes the run."""
    import signal
    import threading

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="serlib-parent-watch", daemon=True).start()


def _init_worker(n_threads: int, n_jobs: int = 1, parent_pid: int | None = None) -> None:
    """Process-pool initializer: cap BLAS/OpenMP and torch threads so n_jobs workers share the CPUs, and end with
    the parent (:func:`_die_with_parent`)."""
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    configure_threads(n_jobs, threads=n_threads, worker=True)


@runtime_checkable
class Backend(Protocol):
    """What :func:`run_sweep` needs from an executor. ``submit`` returns a ``concurrent.futures.Future``."""

    n_jobs: int

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future: ...

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]: ...

    def shutdown(self, wait: bool = True) -> None: ...


class SerialBackend:
    """Runs each call at submit time, in this process; returns an already completed future."""

    n_jobs = 1

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        return map(fn, *iterables)

    def shutdown(self, wait: bool = True) -> None:
        return None

    def __enter__(self) -> SerialBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class ProcessBackend:
    """A spawn-context ``ProcessPoolExecutor`` with ``n_jobs`` workers of ``threads_per_job`` torch threads each."""

    def __init__(self, n_jobs: int = 2, *, threads_per_job: int | None = None) -> None:
        if n_jobs < 1:
            raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
        self.n_jobs = n_jobs
        self.threads_per_job = threads_per_job or choose_threads(n_jobs)[0]
        self._pool: Executor = ProcessPoolExecutor(
            max_workers=n_jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads_per_job, n_jobs, os.getpid()),
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        return self._pool.map(fn, *iterables)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> ProcessBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


BACKENDS = ("serial", "process", "local", "ray")  # "local" is "process": this machine's processes


def make_backend(backend: str | Backend, n_jobs: int, *, address: str | None = None) -> Backend:
    """ "serial", "process" / "local" (n_jobs workers; n_jobs == 1 runs serially), "ray"
    (:class:`serlib.sweep_ray.RayBackend`: a local Ray instance of n_jobs CPUs, or the cluster at ``address``) or a
    ready Backend instance."""
    if not isinstance(backend, str):
        return backend
    if backend == "ray":
        from serlib.sweep_ray import RayBackend

        return RayBackend(n_jobs, address=address)
    if address is not None:
        raise ValueError(f"a Ray address ({address!r}) needs backend='ray', got {backend!r}")
    if backend == "serial" or (backend in ("process", "local") and n_jobs == 1):
        return SerialBackend()
    if backend in ("process", "local"):
        return ProcessBackend(n_jobs)
    raise ValueError(f"backend must be one of {BACKENDS} or a Backend instance, got {backend!r}")


def _check_importable(fn: Callable[..., Any]) -> None:
    """Spawn workers import ``fn`` by module and name: lambdas, closures and notebook functions cannot be sent."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module in (None, "__main__") or "<" in qualname:
        raise ValueError(
            f"{qualname or fn!r} (module {module}) cannot be run by process workers: pass a top-level function of "
            "an importable module, or use backend='serial'"
        )


# ---------------------------------------------------------------------------------------------------------------------
def run_sweep(
    fn: TaskFn,
    tasks: Sequence[SweepTask],
    *,
    out_dir: str | os.PathLike,
    n_jobs: int = 1,
    backend: str | Backend = "process",
    skip_existing: bool = True,
    retry_errors: bool = True,
    progress: bool = True,
    path_fn: Callable[[SweepTask], str | os.PathLike] | None = None,
    address: str | None = None,
) -> list[dict[str, Any]]:
    """Run ``fn`` on every task (resuming from records on disk); return the records in task order.

    ``path_fn(task)`` overrides the record path (default ``out_dir/<task_id>.json``; relative paths are under out_dir).
    With ``skip_existing`` a task whose record exists and reads as JSON is loaded instead of run, except error records
    when ``retry_errors``. A worker process that dies (e.g. out of memory) yields error records for its tasks.
    ``address``: the Ray cluster of ``backend="ray"`` (None: a local Ray instance of ``n_jobs`` CPUs).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / (path_fn(t) if path_fn else f"{t.task_id}.json") for t in tasks]
    if len(set(paths)) != len(paths):
        dup = sorted({str(p) for p in paths if paths.count(p) > 1})
        raise ValueError(f"several tasks share a record path (same name/config/seed/fold?): {dup[:3]}")

    records: list[dict[str, Any] | None] = [None] * len(tasks)
    todo: list[int] = []
    for i, path in enumerate(paths):
        rec = _read_record(path) if skip_existing and path.exists() else None
        if skip_existing and path.exists() and rec is None:
            warnings.warn(f"unreadable sweep record {path}; running the task again", stacklevel=2)
        if rec is not None and not (retry_errors and rec.get("status") == "error"):
            records[i] = rec
        else:
            todo.append(i)

    if todo:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=f"sweep {out.name}", unit="run")
        runner = make_backend(backend, min(n_jobs, len(todo)) if isinstance(backend, str) else n_jobs,
                              address=address)
        try:
            if not isinstance(runner, SerialBackend):
                _check_importable(fn)
            if isinstance(runner, SerialBackend):  # one at a time, so progress moves as tasks finish
                done = ((i, runner.submit(_run_and_write, fn, tasks[i], str(paths[i]))) for i in todo)
            else:
                futures = {runner.submit(_run_and_write, fn, tasks[i], str(paths[i])): i for i in todo}
                done = ((futures[f], f) for f in as_completed(futures))
            for i, fut in done:
                try:
                    records[i] = fut.result()
                except Exception:  # the worker itself failed (pickling, killed process, broken pool)
                    rec = {"status": "error", "error": traceback.format_exc(), "task": tasks[i].to_dict()}
                    write_json_atomic(paths[i], rec)
                    records[i] = rec
                if bar is not None:
                    bar.update(1)
        except BaseException:  # e.g. KeyboardInterrupt: drop queued tasks; records already written stay
            if runner is not backend:
                runner.shutdown(wait=False)
            raise
        else:
            if runner is not backend:
                runner.shutdown()
        finally:
            if bar is not None:
                bar.close()
    return [r for r in records if r is not None]


# ---------------------------------------------------------------------------------------------------------------------
def _demo_task(task: SweepTask) -> dict[str, Any]:
    """A trivial task for tests and examples (importable by spawn workers).

    config keys: ``x`` (number; the result is ``2 * x + seed``), ``fail`` (raise ValueError), ``die`` (exit the
    process at once), ``calls_dir`` (one marker file per call, to count calls across processes), ``sleep`` (seconds),
    ``report_threads`` (record ``torch.get_num_threads()``), ``pid_dir`` (a file named by the worker's pid, made
    before any sleep).
    """
    cfg = task.config
    if cfg.get("pid_dir"):
        Path(cfg["pid_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(cfg["pid_dir"]) / str(os.getpid())).touch()
    if cfg.get("calls_dir"):
        Path(cfg["calls_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(cfg["calls_dir"]) / f"{task.task_id}.{uuid.uuid4().hex}").touch()
    if cfg.get("sleep"):
        time.sleep(float(cfg["sleep"]))
    if cfg.get("fail"):
        raise ValueError(f"demo failure for {task.name}")
    if cfg.get("die"):  # simulate a worker killed by the OS (only meaningful in a worker process)
        os._exit(3)
    n_threads = None
    if cfg.get("report_threads"):
        import torch

        n_threads = torch.get_num_threads()
    return {"value": 2 * cfg.get("x", 0) + task.seed, "pid": os.getpid(), "n_threads": n_threads}
