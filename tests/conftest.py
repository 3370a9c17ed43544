"""Shared fixtures: loopback S3 servers, the OTLP receiver, obsctl runner.

Everything here talks to 127.0.0.1 only. Session-scoped servers keep the
suite fast; each test gets its own bucket, receiver, runtime dir and
mountpoint so tests never read each other's numbers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from support.obsctl import obsctl_command, obsctl_env, run_obsctl  # noqa: E402
from support.otlp_receiver import OtlpReceiver  # noqa: E402
from support.data import BUCKET_OBJECTS, unique_bucket_name  # noqa: E402
from support.s3server import S3Server, moto_server_binary  # noqa: E402

__all__ = ["obsctl_command", "obsctl_env", "run_obsctl"]


@pytest.fixture(scope="session")
def s3_server():
    """moto_server on 127.0.0.1 accepting any key (session-wide)."""
    if moto_server_binary() is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    with S3Server(auth=False) as server:
        yield server


@pytest.fixture(scope="session")
def s3_auth_server():
    """moto_server enforcing SigV4 with one IAM key (server.access_key/secret_key)."""
    if moto_server_binary() is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    with S3Server(auth=True) as server:
        yield server


@pytest.fixture
def bucket(s3_server, request):
    """A fresh bucket on the plain server holding BUCKET_OBJECTS; its name."""
    name = unique_bucket_name(request.node.name)
    s3_server.create_bucket(name, BUCKET_OBJECTS)
    return name


@pytest.fixture
def otlp():
    """A fresh OTLP receiver (gRPC + http/protobuf) for one test."""
    rx = OtlpReceiver().start()
    yield rx
    rx.stop()


@pytest.fixture
def test_started_at() -> float:
    """Wall-clock start of the test (minus a second for mtime granularity)."""
    return time.time() - 1.0


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "no_fuse: integration-directory test that needs no FUSE (harness checks)")
    config.addinivalue_line(
        "markers", "integration: needs root, /dev/fuse, the FUSE drivers and a loopback S3 server")
