"""Shared fixtures: one local Ray instance for every integration test of the session."""

import os

import pytest

# Ray Train polls worker health every 2 s by default; tests do not need to wait that long.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance shared by all tests; more logical CPUs than cores so that
    Data actors, Train workers and Serve replicas never starve one another."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
