"""Start (or join) Ray quietly, sized for the machine it runs on.

A normal run shows our progress and nothing of Ray's own logs: no dashboard, no worker output, no
INFO lines. `--verbose` brings Ray's logs back, for debugging a cluster.
"""

from __future__ import annotations

import logging
import os
import warnings

# Set before Ray is imported: no token file in ~/.ray for an embedded cluster, no usage reporting.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import ray  # noqa: E402
import ray.data  # noqa: E402

from core import storage  # noqa: E402


def start(
    address: str | None,
    num_cpus: int | None = None,
    object_store_mb: int | None = None,
    quiet: bool = True,
    verbose: bool = False,
) -> bool:
    """Connect to `address`, or start an embedded cluster. False if Ray was already up (then the
    caller should leave it running). `quiet`: no progress bars; `verbose`: Ray's own logs."""
    started = not ray.is_initialized()
    level = logging.INFO if verbose else logging.ERROR
    if started:
        kwargs: dict = dict(
            include_dashboard=False,
            log_to_driver=verbose,
            logging_level=level,
            configure_logging=True,
            ignore_reinit_error=True,
        )
        # Make the project importable by workers on any node (a cluster without this package installed),
        # and pass on the object store's settings (endpoint, region, profile; never credentials, which
        # each node has from its own environment, e.g. a KubeRay pod's service account or secret). A
        # driver submitted with `ray job submit` has its job's runtime environment already (its working
        # directory and environment variables), which Ray refuses to merge with another that names the
        # same variables: there the job's stands alone.
        if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
            project_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env = {name: os.environ[name] for name in storage.STORAGE_ENV if name in os.environ}
            kwargs["runtime_env"] = {
                "env_vars": {"PYTHONPATH": project_root + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
            }
        if address:
            ray.init(address=address, **kwargs)
        else:
            cpus = num_cpus or os.cpu_count() or 1
            store = (object_store_mb << 20) if object_store_mb else None
            # "local": a new embedded cluster even when `ray start` left one running on this machine
            # (which a bare ray.init() would silently join); pass an address (or "auto") to join one.
            ray.init(address="local", num_cpus=cpus, object_store_memory=store, **kwargs)
    for name in ("ray", "ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        # Ray Data warns about resource tuning on small clusters (e.g. that a dataset "will hang" when
        # its workers ask for every CPU); the runner's steps are plain tasks that run in turn, so such
        # warnings are noise here.
        warnings.filterwarnings("ignore", module="ray.data")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    return started


def stop() -> None:
    if ray.is_initialized():
        ray.shutdown()
