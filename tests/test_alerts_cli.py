"""`urbanpulse alerts list|ack|silence` against a running web server with alerts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from alerts import AlertDispatcher, AlertsConfig, QueueConfig
from urbanpulse._app import NullWriter
from urbanpulse._events import Event, Severity
from urbanpulse._pipeline import Pipeline, PipelineOptions
from web import WebOptions, WebServer

T0_NS = 1_763_892_000 * 10**9


def _event(sensor: str, district: str) -> Event:
    return Event(
        detector="flatline",
        state="start",
        severity=Severity.WARNING,
        kind="air",
        city="bandung",
        district=district,
        sensor_id=sensor,
        metric="pm25",
        event_ns=T0_NS,
        detected_ns=T0_NS,
        message=f"{sensor} stuck",
    )


async def _cli(port: int, *args: str) -> tuple[int, Any, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("URBANPULSE_")}
    env["URBANPULSE_WEB__PORT"] = str(port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "urbanpulse.cli", "alerts", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    code = await proc.wait()
    return code, json.loads(out) if code == 0 else None, err.decode()


def test_list_ack_and_silence_by_matchers_from_the_cli(tmp_path: Path) -> None:
    pipeline = Pipeline(PipelineOptions(), writer=NullWriter())
    dispatcher = AlertDispatcher(
        AlertsConfig(queue=QueueConfig(directory=str(tmp_path), fsync=False)), []
    )
    dispatcher.handle([_event("aq-1", "coblong"), _event("aq-2", "lengkong")])
    server = WebServer(WebOptions(port=0), pipeline, alerts=dispatcher)

    async def go() -> None:
        await server.start()
        try:
            code, doc, err = await _cli(server.port, "list")
            assert code == 0, err
            fps = {a["labels"]["sensor_id"]: a["fingerprint"] for a in doc["alerts"]}
            assert sorted(fps) == ["aq-1", "aq-2"]

            code, doc, err = await _cli(server.port, "ack", fps["aq-1"], "--by", "rina")
            assert code == 0, err
            assert dispatcher.engine.get(fps["aq-1"]).acked_by == "rina"

            code, doc, err = await _cli(
                server.port, "silence", "-m", "district=coblong", "-m", "alertname=~flatline|dead",
                "--duration", "7200", "--by", "rina",
            )  # fmt: skip
            assert code == 0, err
            assert doc["ends_ns"] - doc["starts_ns"] == 7200 * 10**9
            silenced = dispatcher.engine.silenced
            assert silenced({"district": "coblong", "alertname": "flatline"})
            assert not silenced({"district": "lengkong", "alertname": "flatline"})

            code, _, err = await _cli(server.port, "silence", "-m", "a=b", "--by", "")
            assert code == 2
            assert "HTTP 400" in err
        finally:
            await server.close()

    asyncio.run(go())


def test_a_clear_error_when_the_pipeline_is_not_running() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("URBANPULSE_")}
    env["URBANPULSE_WEB__PORT"] = "1"  # nothing listens on port 1
    proc = subprocess.run(
        [sys.executable, "-m", "urbanpulse.cli", "alerts", "list"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "cannot reach the pipeline" in proc.stderr
