"""The dashboard in a real browser (Debian's chromium, driven by Playwright).

Skipped, with the reason, where chromium or the playwright package is missing.
Never runs ``playwright install``: the browser is the system one.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from sim import SimOptions, Simulator, bundled_cities
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


class NullWriter:
    def write(self, lines: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def _feed(pipeline: Pipeline, messages: list[tuple[str, bytes]]) -> None:
    for topic, payload in messages:
        pipeline.buffer.add(topic, payload)
    pipeline.process(pipeline.buffer.take())


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

    async def go() -> None:
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

    asyncio.run(go())
    assert max(latencies) < 1.0, latencies
    print(f"SSE latency (process -> DOM), s: {[round(x, 3) for x in latencies]}")
