"""The dashboard in a real browser (Debian's chromium, driven by Playwright).

Skipped, with the reason, where chromium or the playwright package is missing.
Never runs ``playwright install``: the browser is the system one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from alerts import AlertDispatcher, AlertsConfig, QueueConfig
from sim import SimOptions, Simulator, bundled_cities
from urbanpulse._app import NullWriter
from urbanpulse._clock import ManualClock
from urbanpulse._pipeline import Pipeline, PipelineOptions
from web import LiveOptions, WebOptions, WebServer, load_sensor_directory

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
T0_NS = 1_763_892_000 * 10**9
CITY = bundled_cities()["sindangraja"]

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the playwright package is not installed"
)
if shutil.which(CHROMIUM) is None:
    pytest.skip(
        f"no system chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True
    )


def _feed(pipeline: Pipeline, messages: list[tuple[str, bytes]]) -> None:
    for topic, payload in messages:
        pipeline.buffer.add(topic, payload)
    pipeline.process(pipeline.buffer.take())


def _publish_detections(pipeline: Pipeline) -> None:
    """What the pipeline's runtime does after ``process``: its detector events go
    on the bus (to the web server's and the alerts dispatcher's subscriptions)."""
    events = pipeline.take_events()
    pipeline.publish_events(events)


async def _browse(server: WebServer, drive: Callable[[Any], Awaitable[None]]) -> None:
    """Start the server, open one page in headless chromium and ``drive`` it."""
    await server.start()
    try:
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                ],
            )
            try:
                await drive(await browser.new_page(viewport={"width": 1400, "height": 1000}))
            finally:
                await browser.close()
    finally:
        await server.close()


def test_dashboard_loads_and_follows_live_batches() -> None:
    clock = ManualClock(T0_NS)
    pipeline = Pipeline(PipelineOptions(), writer=NullWriter(), clock=clock)
    server = WebServer(WebOptions(port=0, sensors_file=CITY, sse_interval_s=0.1), pipeline)
    sim = Simulator(SimOptions(city_file=str(CITY), start_ns=T0_NS - 900 * 10**9), clock)
    stranger = (
        "urbanpulse/sindangraja/cikaso/air/zz-unlisted",
        json.dumps({"dateObserved": T0_NS / 1e9 - 5, "pm25": 9.0}).encode(),
    )
    _feed(pipeline, [*sim.messages(600), stranger])
    directory = load_sensor_directory(CITY)
    ARTIFACTS.mkdir(exist_ok=True)
    latencies: list[float] = []

    async def drive(page: Any) -> None:
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        await page.goto(f"http://127.0.0.1:{server.port}/")
        await page.wait_for_selector("body[data-ready='1']", timeout=10_000)
        n_marks = await page.locator("#sensors .sensor").count()
        assert n_marks == len(directory.sensors)  # the unlisted one has no coordinates
        assert await page.locator("#districts polygon").count() == len(directory.districts)
        assert await page.locator("#districtTable tbody tr").count() == len(directory.districts)
        assert "zz-unlisted" in await page.locator("#unregistered").inner_text()
        coloured = await page.eval_on_selector_all(
            "#sensors circle.sensor",
            "els => els.filter(e => e.getAttribute('fill') !== '#ffffff').length",
        )
        assert coloured > 0  # some sensors carry an ISPU colour
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        topic = "urbanpulse/sindangraja/cikaso/air/aq-cikaso-01"
        mark = "#sensors [data-id='aq-cikaso-01']"
        for i, pm in enumerate((101.5, 202.5, 303.5)):
            doc = {"dateObserved": T0_NS / 1e9 + 1 + i, "pm25": pm}
            started = time.perf_counter()
            _feed(pipeline, [(topic, json.dumps(doc).encode())])
            await page.wait_for_function(
                "([sel, v]) => document.querySelector(sel).dataset.pm25 === v",
                arg=[mark, str(pm)],
                timeout=5_000,
            )
            latencies.append(time.perf_counter() - started)

        await page.click(mark)
        assert "303.5" in await page.locator("#detail-values").inner_text()
        await page.click("#lang")
        assert await page.locator("th[data-key='district']").inner_text() == "Kecamatan"
        await page.screenshot(path=str(ARTIFACTS / "dashboard-id.png"), full_page=True)

        # sort by district name, ascending then descending
        await page.click("th[data-key='district']")
        names = await page.locator("#districtTable tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.district)"
        )
        assert names == sorted(directory.districts)
        await page.click("th[data-key='district']")
        names = await page.locator("#districtTable tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.district)"
        )
        assert names == sorted(directory.districts, reverse=True)

        # silence: every sensor goes dead, and the page shows it without a reload
        clock.advance(LiveOptions().dead_after_s + 1)
        await page.wait_for_function(
            "n => document.querySelectorAll('#sensors .dead').length === n",
            arg=n_marks,
            timeout=5_000,
        )
        await page.screenshot(path=str(ARTIFACTS / "dashboard-dead.png"), full_page=True)
        origin = f"http://127.0.0.1:{server.port}/"
        assert all(u.startswith(origin) for u in requests), requests  # nothing external

    asyncio.run(_browse(server, drive))
    assert max(latencies) < 1.0, latencies
    print(f"SSE latency (process -> DOM), s: {[round(x, 3) for x in latencies]}")


def test_an_injected_anomaly_is_acknowledged_and_silenced_from_the_page(tmp_path: Path) -> None:
    clock = ManualClock(T0_NS)
    pipeline = Pipeline(PipelineOptions(), writer=NullWriter(), clock=clock)
    dispatcher = AlertDispatcher(
        AlertsConfig(queue=QueueConfig(directory=str(tmp_path), fsync=False)), [], clock=clock
    )
    server = WebServer(
        WebOptions(port=0, sensors_file=CITY, sse_interval_s=0.1), pipeline, alerts=dispatcher
    )
    bus_to_alerts = pipeline.bus.subscribe("alerts")
    sim = Simulator(SimOptions(city_file=str(CITY), start_ns=T0_NS - 900 * 10**9), clock)
    _feed(pipeline, sim.messages(600))
    _publish_detections(pipeline)
    ARTIFACTS.mkdir(exist_ok=True)
    sensor = "aq-cikaso-01"
    row = f"#alerts li[data-alertname='range'][data-sensor='{sensor}']"

    async def drive(page: Any) -> None:
        dispatching = asyncio.create_task(dispatcher.run(bus_to_alerts))
        try:
            await page.goto(f"http://127.0.0.1:{server.port}/")
            await page.wait_for_selector("body[data-ready='1']", timeout=10_000)
            assert await page.locator(row).count() == 0

            # the anomaly: PM2.5 above the plausible range -> a "range" event -> an alert
            doc = {"dateObserved": T0_NS / 1e9 + 1, "pm25": 950.0}
            _feed(
                pipeline,
                [(f"urbanpulse/sindangraja/cikaso/air/{sensor}", json.dumps(doc).encode())],
            )
            _publish_detections(pipeline)
            await page.wait_for_selector(row, timeout=10_000)
            fp = await page.locator(row).get_attribute("data-fingerprint")
            alert = dispatcher.engine.get(fp)
            assert alert.labels["sensor_id"] == sensor
            assert "950" in await page.locator(row).inner_text()

            # no operator name: refused in the page, nothing sent
            await page.fill("#operator", "")
            await page.click(f"{row} button.ack")
            await page.wait_for_function(
                "() => document.querySelector('#alertMsg').classList.contains('error')"
            )
            assert await page.locator("#alertMsg").inner_text() == "Enter your name first."
            assert dispatcher.engine.get(fp).acked_by == ""

            await page.fill("#operator", "rina")
            await page.click(f"{row} button.ack")
            await page.wait_for_selector(f"{row}[data-acked='rina']", timeout=10_000)
            assert dispatcher.engine.get(fp).acked_by == "rina"
            assert await page.locator(f"{row} button.ack").count() == 0
            assert "acknowledged by rina" in await page.locator(row).inner_text()
            await page.screenshot(path=str(ARTIFACTS / "dashboard-alert-acked.png"), full_page=True)

            await page.click("#lang")
            assert await page.locator(f"{row} button.silence").inner_text() == "Bisukan 1 jam"
            await page.click(f"{row} button.silence")
            await page.wait_for_selector(f"{row}[data-silenced]", timeout=10_000)
            assert dispatcher.engine.silenced(alert.labels)
            (silence,) = dispatcher.engine.silences(active_only=True)
            assert silence.created_by == "rina"
            assert silence.ends_ns - silence.starts_ns == 3600 * 10**9
            assert await page.locator("#alertMsg").inner_text() == "Dibisukan selama 1 jam."
            assert await page.locator(f"{row} button").count() == 0
            others = await page.locator("#alerts li[data-fingerprint]").evaluate_all(
                "lis => lis.filter(li => !li.dataset.silenced).map(li => li.dataset.sensor)"
            )
            assert sensor not in others  # the silence covers this series only
            await page.screenshot(
                path=str(ARTIFACTS / "dashboard-alert-silenced.png"), full_page=True
            )
        finally:
            dispatching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatching

    asyncio.run(_browse(server, drive))
