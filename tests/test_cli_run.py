"""The real commands as processes: `urbanpulse run` + `urbanpulse sim`, and `demo`.

A clean stop (SIGTERM) must flush everything buffered: the output batching is
set so long that nothing is written before the signal, so every stored point
proves the flush on exit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import LogReader, urbanpulse_env
from servers import MosquittoServer, VictoriaMetricsServer

pytestmark = pytest.mark.integration

N = 1500


_env = urbanpulse_env


def test_run_then_sigterm_flushes_everything(
    mosquitto: MosquittoServer, victoria_metrics: VictoriaMetricsServer, tmp_path: Path
) -> None:
    env = _env(
        MQTT__PORT=str(mosquitto.port),
        MQTT__QOS="1",
        OUTPUT__KIND="influx2",
        OUTPUT__INFLUX2__URL=victoria_metrics.url,
        OUTPUT__BATCH_MAX_MS="600000",
        OUTPUT__BATCH_MAX_LINES="1000000",
        LOG__FORMAT="json",
        LOG__STATS_INTERVAL_S="0.3",
        STATE_DIR=str(tmp_path / "state"),
        SPOOL__DIRECTORY=str(tmp_path / "spool"),
        SIM__CITY="bandung",
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "urbanpulse.cli", "run"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stderr is not None
    logs = LogReader(run.stderr)
    try:
        deadline = time.monotonic() + 20
        while not any(r.get("msg") == "mqtt connected" for r in logs.lines):
            assert run.poll() is None, "".join(logs.text)
            assert time.monotonic() < deadline, "".join(logs.text)
            time.sleep(0.05)
        sim = subprocess.run(
            [
                sys.executable,
                "-m",
                "urbanpulse.cli",
                "sim",
                "--count",
                str(N),
                "--rate",
                "3000",
                "--qos",
                "1",
                "--seed",
                "5",
                "--quiet",
            ],
            env=env | {"URBANPULSE_MQTT__QOS": "1"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sim.returncode == 0, sim.stderr
        assert json.loads(sim.stdout)["sent"] == N
        deadline = time.monotonic() + 20
        while (logs.last_stats() or {}).get("messages_ok", 0) < N:
            assert time.monotonic() < deadline, json.dumps(logs.last_stats())
            time.sleep(0.1)
        stats = logs.last_stats()
        assert stats is not None
        assert stats["points_written"] == 0, "nothing may be written before the stop"
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) == 0
    finally:
        if run.poll() is None:
            run.kill()
        logs.join()
    final = [r for r in logs.lines if r.get("msg") == "final"][-1]["stats"]
    assert final["messages_ok"] == N
    assert final["pending_points"] == 0
    assert final["points_written"] >= N
    # VictoriaMetrics makes accepted rows searchable asynchronously: under load
    # they can lag a force_flush, so poll (the written count above is exact).
    deadline = time.monotonic() + 20
    while True:
        victoria_metrics.force_flush()
        rows = victoria_metrics.export('{__name__=~"air_pm25|traffic_intensity"}')
        samples = sum(len(r["values"]) for r in rows)
        if samples >= N or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert samples >= N  # every message carries pm25 (air) or intensity (traffic)
    with np.load(tmp_path / "state" / "checkpoint.npz") as snap:
        assert json.loads(snap["meta"].tobytes())["seq"] > 0


def test_demo_runs_without_external_services(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "urbanpulse.cli",
            "demo",
            "--duration",
            "6",
            "--speed",
            "120",
            "--n-air",
            "20",
            "--n-traffic",
            "5",
            "--out",
            str(tmp_path),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "embedded MQTT broker" in proc.stdout
    files = sorted((tmp_path / "lineprotocol").glob("*.lp"))
    assert files, proc.stdout
    text = "".join(f.read_text() for f in files)
    assert "\nair," in "\n" + text
    assert "\nair_1m," in "\n" + text  # at x120 a minute passes every half second
    assert "done." in proc.stdout


def test_spool_status_and_replay_after_a_stop_with_the_database_down(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    from servers import VictoriaMetricsServer, free_port

    vm_port = free_port()
    env = _env(
        MQTT__PORT=str(mosquitto.port),
        MQTT__QOS="1",
        OUTPUT__KIND="influx2",
        OUTPUT__INFLUX2__URL=f"http://127.0.0.1:{vm_port}",  # nothing listens yet
        OUTPUT__RETRY_MAX_S="0.5",
        SHUTDOWN_TIMEOUT_S="2",
        LOG__FORMAT="json",
        LOG__STATS_INTERVAL_S="0.3",
        STATE_DIR=str(tmp_path / "state"),
        SPOOL__DIRECTORY=str(tmp_path / "spool"),
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "urbanpulse.cli", "run"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert run.stderr is not None
    logs = LogReader(run.stderr)
    try:
        deadline = time.monotonic() + 20
        while not any(r.get("msg") == "mqtt connected" for r in logs.lines):
            assert run.poll() is None, "".join(logs.text)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sim = subprocess.run(
            [sys.executable, "-m", "urbanpulse.cli", "sim", "--count", "800", "--rate", "2000",
             "--qos", "1", "--seed", "9", "--quiet"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert sim.returncode == 0, sim.stderr
        deadline = time.monotonic() + 20
        while (logs.last_stats() or {}).get("messages_ok", 0) < 800:
            assert time.monotonic() < deadline, json.dumps(logs.last_stats())
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) == 0  # bounded stop even though nothing could be written
    finally:
        if run.poll() is None:
            run.kill()
        logs.join()

    def cli(*args: str) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "urbanpulse.cli", "spool", *args],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        out: dict[str, Any] = json.loads(proc.stdout)
        return out

    before = cli("status")
    assert before["pending_records"] > 0
    with VictoriaMetricsServer(tmp_path / "vm", port=vm_port) as vm:
        replayed = cli("replay", "--timeout", "60")
        assert replayed["replayed_records"] == before["pending_records"]
        assert replayed["points_written"] >= 800
        vm.force_flush()
        rows = vm.export('{__name__=~"air_pm25|traffic_intensity"}')
        assert sum(len(r["values"]) for r in rows) >= 800
    after = cli("status")
    assert after["pending_records"] == 0


def test_sim_with_a_bundled_city_a_scenario_and_ground_truth(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    scenario = Path(__file__).resolve().parent.parent / "sim/scenarios/sindangraja-demo.toml"
    labels = tmp_path / "labels.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "urbanpulse.cli", "sim", "--city", "sindangraja",
         "--scenario", str(scenario), "--ground-truth", str(labels), "--count", "500",
         "--speed", "600", "--quiet"],
        env=_env(MQTT__PORT=str(mosquitto.port)), capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["sent"] == 500
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert {r["fault"] for r in rows} >= {"haze", "spike", "stuck", "dropout", "fog"}
    assert all(r["end_ns"] > r["start_ns"] for r in rows)
