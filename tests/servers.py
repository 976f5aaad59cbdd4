"""Real server processes on free loopback ports, for integration tests and benchmarks.

Each server owns a temporary data directory, is started with :meth:`start` (which
waits until it answers), and stopped with :meth:`stop` (terminate, then kill).
They are plain classes and context managers; ``tests/conftest.py`` wraps them in
session-scoped fixtures and ``bench/`` uses them directly. :func:`http_server`
serves a stdlib request handler (e.g. a fake webhook receiver) from a thread.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "InfluxDB1Server",
    "MosquittoServer",
    "QuietHandler",
    "ServerBinaryMissingError",
    "ServerError",
    "VictoriaMetricsServer",
    "free_port",
    "http_server",
]

MOSQUITTO_BIN = "/usr/sbin/mosquitto"
VICTORIA_METRICS_BIN = "/usr/bin/victoria-metrics"
INFLUXD_BIN = "/usr/bin/influxd"

_INSTALL_HINT = (
    "run the README's test command (scripts/test.sh installs mosquitto, "
    "victoria-metrics and influxdb before running pytest)"
)


class ServerError(RuntimeError):
    """A server did not start, did not answer, or answered with an error."""


class ServerBinaryMissingError(ServerError):
    """The server's executable is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _find_binary(path: str) -> str:
    if os.access(path, os.X_OK):
        return path
    found = shutil.which(os.path.basename(path))
    if found is None:
        raise ServerBinaryMissingError(f"{path} is not installed; {_INSTALL_HINT}")
    return found


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, bytes]:
    """One HTTP request with the standard library; returns (status, body) for any status."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


class QuietHandler(BaseHTTPRequestHandler):
    """A stdlib request handler that does not log every request to stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """``handler`` served on ``127.0.0.1:<free port>`` from a thread until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class _Process(abc.ABC):
    """A child process with its output in a log file, started and stopped on demand."""

    #: Seconds to wait for readiness before giving up.
    start_timeout_s: float = 30.0
    #: Seconds between SIGTERM and SIGKILL.
    stop_timeout_s: float = 10.0
    name: str = "server"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- to override -------------------------------------------------------
    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The server's command line."""

    @abc.abstractmethod
    def _ready(self) -> bool:
        """True once the server answers."""

    def _after_start(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Called once the server answers (e.g. to create users)."""

    # -- lifecycle ------------------------------------------------------------
    @property
    def output_path(self) -> Path:
        """stdout/stderr of the process (appended across restarts)."""
        return self.data_dir / f"{self.name}.out"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> Self:
        if self.running:
            return self
        command = self._command()
        self._log = self.output_path.open("ab")
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            start_new_session=True,  # a Ctrl-C in the terminal must not reach it first
        )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._cleanup()
                raise ServerError(
                    f"{self.name} exited with code {code} during start; output:\n{self.tail()}"
                )
            if self._ready():
                break
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(
                    f"{self.name} not ready after {self.start_timeout_s}s; output:\n{self.tail()}"
                )
            time.sleep(0.02)
        self._after_start()
        return self

    def stop(self) -> None:
        """Terminate (SIGTERM), wait, then SIGKILL if it does not exit."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=self.stop_timeout_s)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL: a crash, no clean shutdown."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=self.stop_timeout_s)
        self._cleanup()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def _cleanup(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, n_bytes: int = 4000) -> str:
        """The end of the process output, for error messages."""
        try:
            data = self.output_path.read_bytes()
        except OSError:
            return ""
        return data[-n_bytes:].decode("utf-8", "replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MosquittoServer(_Process):
    """Eclipse Mosquitto 2.x with persistence, on ``127.0.0.1:<port>``."""

    name = "mosquitto"

    def __init__(
        self, data_dir: Path, *, port: int | None = None, binary: str = MOSQUITTO_BIN
    ) -> None:
        super().__init__(data_dir)
        self._binary = _find_binary(binary)
        self._port = port if port is not None else free_port()
        self.persistence_dir = self.data_dir / "persistence"
        self.persistence_dir.mkdir(exist_ok=True)
        self.config_path = self.data_dir / "mosquitto.conf"
        self.log_path = self.data_dir / "mosquitto.log"
        self.config_path.write_text(self._config())

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def _config(self) -> str:
        user = pwd.getpwuid(os.getuid()).pw_name
        return "\n".join(
            [
                f"listener {self._port} 127.0.0.1",
                "allow_anonymous true",
                # When started as root mosquitto drops to this user; keep our own so
                # that it can write the persistence and log files in the temp dir.
                f"user {user}",
                "persistence true",
                f"persistence_location {self.persistence_dir}/",
                "persistence_file mosquitto.db",
                "autosave_interval 1",
                "max_queued_messages 1000000",
                "max_queued_bytes 0",
                "max_inflight_messages 0",
                "max_keepalive 65535",
                f"log_dest file {self.log_path}",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "connection_messages true",
                "",
            ]
        )

    def _command(self) -> list[str]:
        return [self._binary, "-c", str(self.config_path)]

    def _ready(self) -> bool:
        return _tcp_open(self._port)


class VictoriaMetricsServer(_Process):
    """Single-node VictoriaMetrics; data stays in ``data_dir`` across stop()/start()."""

    name = "victoria-metrics"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        binary: str = VICTORIA_METRICS_BIN,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(data_dir)
        self._binary = _find_binary(binary)
        self._port = port if port is not None else free_port()
        self.storage_dir = self.data_dir / "storage"
        self._extra_args = extra_args

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def write_url(self) -> str:
        """Base URL for InfluxDB clients: they append /api/v2/write (2.x) or /write (1.x)."""
        return self.url

    def _command(self) -> list[str]:
        return [
            self._binary,
            f"-storageDataPath={self.storage_dir}",
            f"-httpListenAddr=127.0.0.1:{self._port}",
            "-retentionPeriod=100y",
            # Make fresh samples visible to queries at once and never serve stale cache.
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerLevel=WARN",
            *self._extra_args,
        ]

    def _ready(self) -> bool:
        try:
            status, body = _http("GET", f"{self.url}/health", timeout_s=0.5)
        except OSError:
            return False
        return status == 200 and body.strip() == b"OK"

    def force_flush(self) -> None:
        """Make everything written so far visible to /api/v1/export and queries."""
        status, body = _http("GET", f"{self.url}/internal/force_flush")
        if status != 200:
            raise ServerError(f"force_flush: HTTP {status}: {body!r}")

    def export(
        self, match: str, *, start: str | None = None, end: str | None = None
    ) -> list[dict[str, Any]]:
        """Raw samples of series matching a selector, e.g. ``{__name__=~"air_.*"}``.

        Each item has ``metric`` (labels incl. ``__name__``), ``values`` and
        ``timestamps`` (milliseconds).
        """
        params: list[tuple[str, str]] = [("match[]", match)]
        if start is not None:
            params.append(("start", start))
        if end is not None:
            params.append(("end", end))
        url = f"{self.url}/api/v1/export?{urllib.parse.urlencode(params)}"
        status, body = _http("GET", url)
        if status != 200:
            raise ServerError(f"export {match}: HTTP {status}: {body.decode('utf-8', 'replace')}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]


class InfluxDB1Server(_Process):
    """InfluxDB 1.x (``influxd``) with a generated config, every port on loopback.

    With ``auth=True`` HTTP authentication is on and an admin user
    (``admin_user``/``admin_password``) is created right after start.
    """

    name = "influxd"
    start_timeout_s = 60.0

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        auth: bool = False,
        admin_user: str = "admin",
        admin_password: str = "admin-password",
        binary: str = INFLUXD_BIN,
    ) -> None:
        super().__init__(data_dir)
        self._binary = _find_binary(binary)
        self._port = port if port is not None else free_port()
        self._rpc_port = free_port()
        self.auth = auth
        self.admin_user = admin_user
        self.admin_password = admin_password
        self.config_path = self.data_dir / "influxdb.conf"
        self.config_path.write_text(self._config())

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def _config(self) -> str:
        d = self.data_dir
        auth = "true" if self.auth else "false"
        return f"""\
reporting-enabled = false
bind-address = "127.0.0.1:{self._rpc_port}"

[meta]
  dir = "{d}/meta"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  index-version = "inmem"
  wal-fsync-delay = "0s"
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  write-timeout = "10s"

[retention]
  enabled = false

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{self._port}"
  auth-enabled = {auth}
  log-enabled = false
  write-tracing = false
  pprof-enabled = false
  https-enabled = false
  max-body-size = 25000000

[logging]
  level = "warn"
  suppress-logo = true

[ifql]
  enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false

[continuous_queries]
  enabled = false
"""

    def _command(self) -> list[str]:
        return [self._binary, "run", "-config", str(self.config_path)]

    def _ready(self) -> bool:
        try:
            status, _ = _http("GET", f"{self.url}/ping", timeout_s=0.5)
        except OSError:
            return False
        return status == 204

    def _after_start(self) -> None:
        if self.auth:
            # Allowed without credentials only while no user exists; ignore "exists".
            status, body = _http(
                "POST",
                f"{self.url}/query",
                body=urllib.parse.urlencode(
                    {
                        "q": f'CREATE USER "{self.admin_user}" WITH PASSWORD '
                        f"'{self.admin_password}' WITH ALL PRIVILEGES"
                    }
                ).encode(),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    **self._auth_headers(),
                },
            )
            if status != 200:
                raise ServerError(f"creating the admin user: HTTP {status}: {body!r}")

    def _auth_headers(self) -> dict[str, str]:
        if not self.auth:
            return {}
        token = base64.b64encode(f"{self.admin_user}:{self.admin_password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def query(self, q: str, db: str | None = None) -> dict[str, Any]:
        """Run InfluxQL (POST /query, epoch=ns); raises ServerError on any error."""
        params = {"q": q, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        status, body = _http(
            "POST",
            f"{self.url}/query",
            body=urllib.parse.urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", **self._auth_headers()},
        )
        if status != 200:
            raise ServerError(f"query {q!r}: HTTP {status}: {body.decode('utf-8', 'replace')}")
        result: dict[str, Any] = json.loads(body)
        for statement in result.get("results", []):
            if "error" in statement:
                raise ServerError(f"query {q!r}: {statement['error']}")
        return result

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{_quote_ident(name)}"')

    def drop_database(self, name: str) -> None:
        self.query(f'DROP DATABASE "{_quote_ident(name)}"')

    def series(self, q: str, db: str) -> list[dict[str, Any]]:
        """The ``series`` list of the first statement's result (empty if none)."""
        result = self.query(q, db)
        statements = result.get("results", [])
        if not statements:
            return []
        series: list[dict[str, Any]] = statements[0].get("series", [])
        return series


def _quote_ident(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')
