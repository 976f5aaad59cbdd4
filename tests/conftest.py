"""Shared pytest fixtures.

Server fixtures start REAL processes (see ``tests/servers.py``) once per session
on free loopback ports. A missing server binary fails the test with instructions
instead of skipping it silently.
"""

from __future__ import annotations

import importlib
import itertools
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import (
    InfluxDB1Server,
    MosquittoServer,
    ServerBinaryMissingError,
    VictoriaMetricsServer,
)

# --------------------------------------------------------------------------- servers

_S = TypeVar("_S", MosquittoServer, VictoriaMetricsServer, InfluxDB1Server)


def _serve(make: Callable[[], _S]) -> Iterator[_S]:
    """Start a server for a fixture; a missing binary fails with install instructions."""
    try:
        server = make()
    except ServerBinaryMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _detector_kernels() -> None:
    """Compile the numba detector kernels into their on-disk cache once, before any
    test starts a pipeline subprocess (a cold compile takes ~10 s; a subprocess
    then loads them in < 1 s)."""
    from processors import warm_up

    warm_up()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[MosquittoServer, VictoriaMetricsServer]]:
    """A private Mosquitto and VictoriaMetrics for a test that restarts or kills things."""
    with MosquittoServer(tmp_path / "mq") as mq, VictoriaMetricsServer(tmp_path / "vm") as vm:
        yield mq, vm


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A Mosquitto 2.x broker with persistence on 127.0.0.1:<free port>."""
    yield from _serve(lambda: MosquittoServer(tmp_path_factory.mktemp("mosquitto")))


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetricsServer]:
    """Single-node VictoriaMetrics; accepts /api/v2/write and /write line protocol."""
    yield from _serve(lambda: VictoriaMetricsServer(tmp_path_factory.mktemp("victoria-metrics")))


@pytest.fixture(scope="session")
def influxdb1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1Server]:
    """InfluxDB 1.x (influxd) without authentication."""
    yield from _serve(lambda: InfluxDB1Server(tmp_path_factory.mktemp("influxdb1")))


@pytest.fixture(scope="session")
def influxdb1_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1Server]:
    """InfluxDB 1.x with HTTP auth on; admin credentials on the server object."""
    yield from _serve(lambda: InfluxDB1Server(tmp_path_factory.mktemp("influxdb1-auth"), auth=True))


_db_counter = itertools.count(1)


@pytest.fixture
def influx_db_name(influxdb1: InfluxDB1Server, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database on ``influxdb1`` for this test (dropped afterwards)."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
    name = f"t{next(_db_counter)}_{base}"
    influxdb1.create_database(name)
    yield name
    influxdb1.drop_database(name)


# --------------------------------------------------------------------------- InfluxDB 2.x

NO_DOCKER_REASON = (
    "no Docker engine: InfluxDB 2.7 runs through testcontainers only where Docker exists"
)


def docker_reachable(timeout_s: float = 2.0) -> bool:
    """True when a Docker engine answers a ping (any failure means no)."""
    try:
        docker = importlib.import_module("docker")  # untyped; imported only when needed
        client = docker.from_env(timeout=max(1, round(timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@dataclass(frozen=True, slots=True)
class InfluxDB2Instance:
    url: str
    org: str
    bucket: str
    token: str


@pytest.fixture(scope="session")
def influxdb2() -> Iterator[InfluxDB2Instance]:
    """InfluxDB 2.7 in a container (testcontainers); skipped where no Docker engine runs."""
    if not docker_reachable():
        pytest.skip(NO_DOCKER_REASON)
    from testcontainers.community.influxdb import InfluxDb2Container

    org, bucket, token = "urbanpulse", "urbanpulse", "urbanpulse-test-token"
    container = InfluxDb2Container(
        image="influxdb:2.7",
        init_mode="setup",
        admin_token=token,
        username="urbanpulse",
        password="urbanpulse-password",
        org_name=org,
        bucket=bucket,
    )
    with container:
        yield InfluxDB2Instance(url=container.get_url(), org=org, bucket=bucket, token=token)
