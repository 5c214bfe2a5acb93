"""Connecting to Ray the same way from every command."""

import logging
import os
from typing import Optional

log = logging.getLogger(__name__)


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[float] = None) -> None:
    """Connect to the cluster at ``address`` (or ``$RAY_ADDRESS``), else start a local Ray.

    A local instance gets at least 4 logical CPUs: Ray Data actors, Train workers and
    Serve replicas take fractional shares of them, and on a 2-core laptop a strict
    one-CPU-per-actor accounting would stall the pipeline (DESIGN.md, "CPU deadlocks").
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("connected to the Ray cluster at %s", address)
        return
    cpus = num_cpus or max(4, os.cpu_count() or 1)
    ray.init(num_cpus=cpus, include_dashboard=False)
    log.info("started a local Ray instance with %s logical CPUs", cpus)
