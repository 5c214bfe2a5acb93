"""Connecting to Ray the same way from every command."""

import logging
import os
from typing import Optional

log = logging.getLogger(__name__)


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[float] = None) -> bool:
    """Connect to the cluster at ``address`` (or ``$RAY_ADDRESS``), else start a local Ray.

    A local instance gets at least 4 logical CPUs: Ray Data actors, Train workers and
    Serve replicas take fractional shares of them, and on a 2-core laptop a strict
    one-CPU-per-actor accounting would stall the pipeline (actors waiting for CPUs that
    other waiting actors hold).
    Returns True when it started a local instance (which the caller should shut down).
    """
    import ray
    import ray.data  # installs its console handler on import: routed below

    from dvamn import console

    # Ray Data's own progress bars print on sys.stderr, which stays the console: only with
    # --verbose. Our commands show their own (dvamn.console.progress / materialize).
    ray.data.DataContext.get_current().enable_progress_bars = console.verbose()
    # Ray's logs go to the command's log file (the console with --verbose): dvamn.console.
    console.route_ray_logs()
    if ray.is_initialized():
        return False
    quiet = dict(configure_logging=False, log_to_driver=console.verbose())
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
        console.remember_ray_session()
        log.info("connected to the Ray cluster at %s", address)
        return False
    cpus = num_cpus or max(4, os.cpu_count() or 1)
    ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
    console.remember_ray_session()
    log.info("started a local Ray instance with %s logical CPUs", cpus)
    return True


def stop_service(app_name: str, own_ray: bool) -> None:
    """Stop a Serve application this process deployed. On a Ray instance this process
    started, Serve and Ray stop with it; on a cluster only ``app_name`` is deleted, so the
    cluster's other applications and Serve itself keep running."""
    import ray

    try:
        from ray import serve

        if ray.is_initialized():
            if own_ray:
                serve.shutdown()
            else:
                serve.delete(app_name)
    except Exception as error:  # noqa: BLE001 - cleanup must reach ray.shutdown
        log.warning("serve shutdown: %s", error)
    if own_ray and ray.is_initialized():
        ray.shutdown()


def check_shared_output(uri: str, what: str) -> None:
    """Warn when ``uri`` is a local path but the cluster has several nodes: each node would
    write its part to its own disk. On a cluster, outputs belong on S3 (or NFS)."""
    import ray

    from dvamn.storage import is_remote

    if is_remote(uri) or not ray.is_initialized():
        return
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1:
        log.warning(
            "%s %s is a local path but the Ray cluster has %d nodes: each node writes to its "
            "own disk. Use an s3:// URI (or a folder every node mounts, such as NFS).",
            what,
            uri,
            len(alive),
        )


def cpu_threads(num_cpus: float) -> int:
    """Threads for a Ray CPU share (``num_cpus`` may be fractional): at least one."""
    return max(1, int(round(num_cpus)))


def limit_threads(num_cpus: float, uses_torch: bool = False) -> int:
    """Keep an actor's or replica's math libraries within its Ray CPU share (at least one
    thread): oversubscribed threads on shared cores are many times slower. Sets torch's
    thread count when ``uses_torch`` or torch is loaded already (importing it only for
    this costs seconds) and returns the count, for the libraries the caller configures
    itself (ONNX Runtime, FFmpeg)."""
    import sys

    threads = cpu_threads(num_cpus)
    if uses_torch:
        import torch  # noqa: F401 - loaded for sys.modules below
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


def add_address_argument(parser) -> None:
    """``--address``: the same flag on every command that runs on Ray."""
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray on this machine)",
    )
