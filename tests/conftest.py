"""Shared fixtures: one local Ray instance for every integration test of the session, a
local S3-compatible server (moto) on loopback, and stand-in model files."""

import os
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Set before Ray starts so that every Ray worker inherits them: Train's health checks
# need not wait 2 s in tests, and s3:// goes to the moto server below, never to AWS.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
S3_PORT = _free_port()
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_ENDPOINT_URL"] = S3_ENDPOINT
os.environ["AWS_ENDPOINT_URL_S3"] = S3_ENDPOINT
os.environ["FSSPEC_S3_ENDPOINT_URL"] = S3_ENDPOINT  # s3fs reads FSSPEC_S3_* as kwargs


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance shared by all tests; more logical CPUs than cores so that
    Data actors, Train workers and Serve replicas never starve one another."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT)
    server.start()
    yield S3_ENDPOINT
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server; yields ``s3://<name>``."""
    import uuid

    import s3fs

    name = f"test-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir(name)
    fs.invalidate_cache()
    yield f"s3://{name}"
