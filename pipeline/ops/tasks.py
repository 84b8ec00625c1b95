"""Where a step's tasks run: in this process, in a pool of worker processes (one per CPU, this
machine), or as Ray tasks (any cluster). All three run the same functions on the same arguments and
return their results in order, so a step computes the same rows whichever runs it.

We schedule plain tasks rather than Ray Data operators: every task of ours reads its input files and
writes its output files itself (read and map fused), so no operator holds a CPU in reserve for
reading, which on a 2-CPU cluster left one core idle (Ray issues 44767, 44456, 65433); and a task
sets its stages up once per worker process (`setup()` runs on the first task, the models stay for
the next ones).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

from tqdm import tqdm


class WorkerLost(RuntimeError):
    """A worker process died (most often: killed for memory) and its task could not be retried."""


class Executor:
    """Runs `fn(*args)` for each args and returns the results in order."""

    parallelism: int = 1

    def map(
        self,
        fn: Callable[..., Any],
        args: Sequence[tuple],
        description: str = "",
        options: dict[str, Any] | None = None,
    ) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the workers (the step is done)."""


class InProcess(Executor):
    """Here, one task after another: no worker's start-up cost, for small steps."""

    def map(
        self,
        fn: Callable[..., Any],
        args: Sequence[tuple],
        description: str = "",
        options: dict[str, Any] | None = None,
    ) -> list[Any]:
        return [fn(*a) for a in args]


# Each worker process uses one thread, as Ray's workers do (it sets OMP_NUM_THREADS to a task's CPUs):
# with a process per CPU, the libraries' own thread pools (Arrow, polars, numba, tokenizers, BLAS)
# would only contend for the same cores (measured: the row-local step 22% slower on 2 cores).
ONE_THREAD = (
    "OMP_NUM_THREADS",
    "POLARS_MAX_THREADS",
    "RAYON_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)


def _one_thread() -> None:
    """A pool worker's initializer: runs before the task's modules (and their libraries) are imported."""
    for name in ONE_THREAD:
        os.environ[name] = "1"


class Pool(Executor):
    """Worker processes on this machine, one per CPU (at most `processes`); fastText and most of
    Python hold the GIL, so threads would not run the stages in parallel. Processes are started with
    `spawn` (a fork could copy Ray's or polars' threads mid-flight), use one thread each, and are
    kept for the whole step."""

    def __init__(self, processes: int | None = None, progress: bool = False):
        self.parallelism = max(1, min(processes or len(os.sched_getaffinity(0)), len(os.sched_getaffinity(0))))
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None

    def map(
        self,
        fn: Callable[..., Any],
        args: Sequence[tuple],
        description: str = "",
        options: dict[str, Any] | None = None,
    ) -> list[Any]:
        if len(args) < 2 or self.parallelism < 2:
            return [fn(*a) for a in args]
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.parallelism, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread
            )
        futures = [self._pool.submit(fn, *a) for a in args]
        try:
            with tqdm(total=len(futures), desc=description, unit="task", disable=not self.progress) as bar:
                for future in futures:
                    future.add_done_callback(lambda _: bar.update(1))
                return [f.result() for f in futures]
        except BrokenProcessPool as exc:
            raise WorkerLost(
                f"{description or 'a task'}: a worker process died "
                f"({len(args)} tasks of {self.parallelism} processes): "
                "most likely the machine ran out of memory; run again with fewer processes (`ray.num_cpus`) "
                "or more memory free; the run resumes at this step"
            ) from exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class RayTasks(Executor):
    """Ray tasks over the cluster, each asking for `options` (CPUs, GPUs, memory: the stages'
    declared resources). Ray retries a task whose worker died; a task that keeps dying is reported."""

    def __init__(self, progress: bool = False):
        import ray

        self.parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.progress = progress

    def map(
        self,
        fn: Callable[..., Any],
        args: Sequence[tuple],
        description: str = "",
        options: dict[str, Any] | None = None,
    ) -> list[Any]:
        import ray
        from ray.exceptions import RayError

        remote = ray.remote(fn).options(**(options or {}), max_retries=3)
        refs = [remote.remote(*a) for a in args]
        pending = list(refs)
        try:
            with tqdm(total=len(refs), desc=description, unit="task", disable=not self.progress) as bar:
                while pending:
                    done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5, fetch_local=False)
                    bar.update(len(done))
            return ray.get(refs)
        except (
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.OutOfMemoryError,
            ray.exceptions.NodeDiedError,
        ) as exc:
            raise WorkerLost(
                f"{description or 'a task'}: {type(exc).__name__} after retries: {str(exc).splitlines()[0]}; "
                "the run resumes at this step when started again"
            ) from exc
        except RayError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None  # the task's own error (a bad row, a missing passage), not Ray's wrapping
            raise
