"""All-to-all exchange of Arrow tables between Ray tasks: the shuffle step of a MapReduce.

Every task of a round returns one table per destination partition (`num_returns`), and task `j` of
the next round receives part `j` of every producer. Tables stay in Ray's object store (spilled to
disk when it fills) and move only between the workers that need them; the driver holds object
references, never rows.

We use Ray core tasks here rather than Ray Data's shuffle because iterative algorithms (connected
components) run many small rounds, and a Ray Data shuffle costs seconds of fixed overhead per round
on a small machine, while a round of tasks costs milliseconds.

When Ray is not running (a small step run in process), a round runs its tasks one after another in
this process and the "references" are the tables themselves: the same code, the same results.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import ray


def spread(keys: np.ndarray, parts: int) -> np.ndarray:
    """The partition of each uint64/int64 key, well mixed even when keys are structured."""
    h = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    return (h % np.uint64(parts)).astype(np.int64)


def split(table: pa.Table, partition: np.ndarray, parts: int) -> list[pa.Table]:
    """`table` cut into `parts` tables by the partition number of each row (rows keep their order)."""
    order = np.argsort(partition, kind="stable")
    bounds = np.searchsorted(partition[order], np.arange(parts + 1))
    ordered = table.take(pa.array(order))
    return [ordered.slice(bounds[j], bounds[j + 1] - bounds[j]) for j in range(parts)]


def _first(fn: Callable[..., list[Any]]) -> Callable[..., Any]:
    def one(*args: Any) -> Any:
        return fn(*args)[0]

    return one


def submit(fn: Callable[..., list[Any]], args: Sequence[tuple], returns: int) -> list[list[Any]]:
    """Run `fn(*a)` as a Ray task for each `a` in `args`. `fn` returns a list of `returns` objects
    (ObjectRefs among `a` arrive resolved). Result: one list of `returns` references per task (in
    process: the objects)."""
    if not ray.is_initialized():
        outs = [fn(*[get(x) for x in a]) for a in args]
        return [list(out) for out in outs]
    if returns == 1:  # Ray stores a one-element list as one object: unwrap it
        remote = ray.remote(_first(fn))
        return [[remote.remote(*a)] for a in args]
    remote = ray.remote(fn).options(num_returns=returns)
    return [list(remote.remote(*a)) for a in args]


def track(outputs: list[list[Any]], description: str) -> list[list[Any]]:
    """Wait for a round, with a progress bar of its tasks unless the run is quiet (Ray Data's
    progress-bar setting, which `--quiet` turns off). Returns `outputs`."""
    import ray.data
    from tqdm import tqdm

    if not ray.is_initialized():
        return outputs  # in process: each round is done when `submit` returns
    pending = [out[0] for out in outputs]
    with tqdm(total=len(pending), desc=description, unit="task", disable=not ray.data.DataContext.get_current().enable_progress_bars) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5, fetch_local=False)
            bar.update(len(done))
    return outputs


def get(ref: Any) -> Any:
    """The object behind a reference (in process: the object itself)."""
    return ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref


def parallelism() -> int:
    """How many tasks a round can run at once: the cluster's CPUs (1 in process)."""
    return int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1


def column(outputs: list[list[Any]], j: int) -> list[Any]:
    """Part `j` of every producer: what task `j` of the next round receives."""
    return [out[j] for out in outputs]


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    """The tables a task received, as one (they share a schema by construction)."""
    return pa.concat_tables(tables) if len(tables) != 1 else tables[0]
