"""The dashboard at ``GET /`` in a real chromium, on a real producer and a real Redis.

Events for three metrics from two devices (plus one device gone quiet) are ingested and
processed, one malformed entry is dead-lettered by the processor, and one valid entry is put
straight into the dead-letter stream so a replay can move it back.
"""

from __future__ import annotations

import contextlib
import math
import re
from datetime import datetime, timedelta
from itertools import chain
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import ViewportSize, expect

from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_shared.streams import dead_letter_fields

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from playwright.async_api import (
        Browser,
        BrowserContext,
        ConsoleMessage,
        Locator,
        Page,
        Request,
        Route,
    )
    from redis.asyncio import Redis
    from tests.browser.conftest import Producer, ProducerFactory

pytestmark = pytest.mark.slow

Entries: TypeAlias = list[tuple[bytes, dict[bytes, bytes]]]

KEYS = Settings().keys
GROUP = Settings().consumer_group
STUCK_CONSUMER = "stuck-consumer"
METRICS = ("cpu", "mem", "temp")
SOURCES = ("sensor-a", "sensor-b")
QUIET_SOURCE = "sensor-old"  # last heard 10 minutes ago: stale after the default 5
READINGS = 30
READING_EVERY_MS = 20_000
REPLAY_REASON = "forced by the browser test"
WRITE_KEY = "browser-write-key-0001"
READ_KEY = "browser-read-key-00001"
DESKTOP = ViewportSize(width=1280, height=800)
PHONE = ViewportSize(width=390, height=844)
# Every panel in view at once: the page then polls all of them.
TALL = ViewportSize(width=1280, height=4000)
# Only the queue and the top of the charts in view.
SHORT = ViewportSize(width=1280, height=400)
WAIT_MS = 10_000
# One refresh: these calls and no others, whatever the number of metrics.
REFRESH_CALLS = sorted(
    [
        "/api/ingest/summary",
        "/api/ingest/charts",
        "/api/ingest/events/recent",
        "/api/ingest/sources",
        "/api/ingest/dead-letters",
    ]
)
QUEUE_FIELDS = {
    "total": "queue-total",
    "added": "queue-added",
    "pending": "queue-pending",
    "lag": "queue-lag",
    "dead_lettered": "queue-dead-lettered",
}
# The age of the oldest pending entry grows between the page's call and the test's.
AGE_TOLERANCE_MS = 5_000
# A zone with a half-hour offset and no daylight saving: a time shown in UTC, or with a whole
# hour's offset, cannot pass for local time there.
ZONE = "Asia/Kolkata"
ZONE_LABEL = "UTC+05:30"
ROLLUP_BUCKET_MS = Settings().rollup_rules[0].bucket_ms
# Every text uPlot (or anything else) writes on a canvas: the axis labels.
RECORD_CANVAS_TEXT = """
window.drawnTexts = [];
const fillText = CanvasRenderingContext2D.prototype.fillText;
CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
  window.drawnTexts.push(String(text));
  return fillText.call(this, text, ...rest);
};
"""
# Every chart the page makes, as uPlot holds it: what is drawn where, whatever the page's code.
RECORD_PLOTS = """
window.plots = [];
let wrapped;
Object.defineProperty(window, "uPlot", {
  configurable: true,
  get() { return wrapped; },
  set(real) {
    wrapped = function (options, data, target) {
      const plot = new real(options, data, target);
      window.plots.push(plot);
      return plot;
    };
    Object.assign(wrapped, real);
  },
});
"""


class PageWatch:
    """Everything a page reports that a test must see: console errors, uncaught errors, and
    every request (all must stay on the producer's origin: the page works offline)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", self._page_error)
        page.on("request", self._request)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} at {message.location}")

    def _page_error(self, error: Exception) -> None:
        self.errors.append(f"pageerror: {error}")

    def _request(self, request: Request) -> None:
        self.requests.append(request.url)

    def api_calls(self) -> list[str]:
        return [urlsplit(url).path for url in self.requests if "/api/" in url]

    def assert_clean(self, base_url: str) -> None:
        assert self.errors == []
        foreign = [url for url in self.requests if not url.startswith(base_url + "/")]
        assert foreign == []


async def process(http: httpx.AsyncClient) -> dict[str, int]:
    response = await http.post(
        "/api/ingest/workers/process", json={"consumer": "browser-test", "count": 1000}
    )
    assert response.status_code == 200, response.text
    result: dict[str, int] = response.json()
    return result


async def seed(http: httpx.AsyncClient, redis: Redis) -> str:
    """Ingest and process readings, dead-letter a malformed entry and plant a replayable one.

    Returns the id of the replayable dead letter.
    """
    now = now_ms()
    start = now - READINGS * READING_EVERY_MS
    events: list[dict[str, Any]] = [
        {
            "source": source,
            "metric": metric,
            "value": round(50 + 10 * m + 8 * math.sin(i / 4 + s), 3),
            "occurredAt": format_ms(start + i * READING_EVERY_MS),
        }
        for m, metric in enumerate(METRICS)
        for s, source in enumerate(SOURCES)
        for i in range(READINGS)
    ]
    events.append(
        {"source": QUIET_SOURCE, "metric": "cpu", "value": 1.0, "occurredAt": format_ms(start)}
    )
    response = await http.post("/api/ingest/events", json=events)
    assert response.status_code == 200, response.text
    assert (await process(http))["processed"] == len(events)

    # Written around the producer's validation, as a foreign or older writer could.
    await redis.xadd(
        KEYS.stream,
        {"source": "sensor-a", "metric": "cpu", "value": "abc", "occurredAt": format_ms(now)},
    )
    assert (await process(http))["dead_lettered"] == 1

    payload = {
        b"source": b"sensor-b",
        b"metric": b"mem",
        b"value": b"42.5",
        b"occurredAt": format_ms(now).encode(),
    }
    fields = dead_letter_fields(b"1-1", REPLAY_REASON, payload, "browser-test", now)
    replayable: bytes = await call(redis, "XADD", KEYS.dead_letter, "*", *chain(*fields.items()))

    # Queue numbers that all differ: entries never processed (lag), three of them delivered to
    # a consumer that never acknowledges (pending), one processed entry deleted (total < added).
    late = [{"source": "sensor-a", "metric": "cpu", "value": 1.0}] * 4
    response = await http.post("/api/ingest/events", json=late)
    assert response.status_code == 200, response.text
    await call(
        redis, "XREADGROUP", "GROUP", GROUP, STUCK_CONSUMER, "COUNT", 3, "STREAMS", KEYS.stream, ">"
    )
    # A second, idle consumer (the process route removes its own once done).
    await call(redis, "XGROUP", "CREATECONSUMER", KEYS.stream, GROUP, "idle-consumer")
    oldest: Entries = await call(redis, "XRANGE", KEYS.stream, "-", "+", "COUNT", 1)
    assert await call(redis, "XDEL", KEYS.stream, oldest[0][0]) == 1
    return replayable.decode()


async def ingest_readings(http: httpx.AsyncClient, span_ms: int) -> None:
    """Readings of every metric from every source, every READING_EVERY_MS over the last
    ``span_ms``, ingested and processed."""
    now = now_ms()
    events = [
        {
            "source": source,
            "metric": metric,
            "value": 50.0 + m + s,
            "occurredAt": format_ms(at),
        }
        for m, metric in enumerate(METRICS)
        for s, source in enumerate(SOURCES)
        for at in range(now - span_ms, now, READING_EVERY_MS)
    ]
    response = await http.post("/api/ingest/events", json=events)
    assert response.status_code == 200, response.text
    assert (await process(http))["processed"] == len(events)


async def refreshes(page: Page) -> int:
    count = await page.evaluate("() => Number(document.body.dataset.refreshes || 0)")
    assert isinstance(count, int)
    return count


async def wait_refreshes(page: Page, at_least: int) -> None:
    await page.wait_for_function(
        "n => Number(document.body.dataset.refreshes || 0) >= n", arg=at_least, timeout=WAIT_MS
    )


async def open_page(
    browser: Browser,
    producer: Producer,
    viewport: ViewportSize,
    *,
    hash: str = "",
    timezone: str | None = None,
    init_script: str | None = None,
) -> tuple[BrowserContext, Page, PageWatch]:
    context = await browser.new_context(viewport=viewport, locale="en-US", timezone_id=timezone)
    if init_script is not None:
        await context.add_init_script(init_script)
    page = await context.new_page()
    watch = PageWatch(page)
    await page.goto(producer.base_url + "/" + hash)
    return context, page, watch


class SeededPage(NamedTuple):
    producer: Producer
    http: httpx.AsyncClient
    page: Page


@contextlib.asynccontextmanager
async def seeded_page(
    browser: Browser,
    start_producer: ProducerFactory,
    redis: Redis,
    *,
    window: str,
    source: str = "",
    **open_options: Any,
) -> AsyncIterator[SeededPage]:
    """A producer with the seed data, and a desktop page on it once it drew ``window`` of
    ``source``; at the end the page must have logged no error."""
    async with (
        start_producer() as producer,
        httpx.AsyncClient(base_url=producer.base_url, timeout=5) as http,
    ):
        await seed(http, redis)
        context, page, watch = await open_page(browser, producer, DESKTOP, **open_options)
        await wait_refreshes(page, 1)
        await assert_charts_drawn(page, window, source)
        yield SeededPage(producer, http, page)
        watch.assert_clean(producer.base_url)
        await context.close()


def chart(page: Page, metric: str) -> Locator:
    return page.locator(f'[data-testid="chart"][data-metric="{metric}"]')


async def assert_charts_drawn(page: Page, window: str, source: str) -> None:
    charts = page.get_by_test_id("charts")
    await expect(charts).to_have_attribute("data-window", window, timeout=WAIT_MS)
    await expect(charts).to_have_attribute("data-source", source, timeout=WAIT_MS)
    await expect(page.locator('[data-testid="chart"]')).to_have_count(len(METRICS))
    for metric in METRICS:
        card = chart(page, metric)
        await expect(card).to_have_attribute("data-window", window)
        raw = await card.get_attribute("data-raw-points")
        rollup = await card.get_attribute("data-rollup-points")
        assert raw is not None
        assert int(raw) > 0, (metric, window, source)
        assert rollup is not None
        assert int(rollup) > 0, (metric, window, source)


async def assert_queue_matches(page: Page, http: httpx.AsyncClient) -> None:
    summary = (await http.get("/api/ingest/summary")).json()["queue"]
    # All different, so that a number shown in the wrong place cannot pass.
    values = [summary[field] for field in QUEUE_FIELDS]
    assert len(set(values)) == len(values), summary
    assert len(summary["consumers"]) == 2, summary
    for field, test_id in QUEUE_FIELDS.items():
        shown = page.get_by_test_id(test_id)
        expected = summary.get(field)
        await expect(shown).to_have_attribute(
            "data-value", "" if expected is None else str(expected), timeout=WAIT_MS
        )
        await expect(shown).to_have_text("unknown" if expected is None else f"{expected:,}")
    age = await page.get_by_test_id("queue-oldest-pending").get_attribute("data-value")
    expected_age = summary["oldestPendingAgeMs"]
    assert age is not None
    assert expected_age is not None
    assert abs(int(age) - expected_age) < AGE_TOLERANCE_MS
    consumers = page.locator('[data-testid="consumers"] tbody tr')
    await expect(consumers).to_have_count(len(summary["consumers"]))
    for consumer in summary["consumers"]:
        row = page.locator(f'[data-testid="consumers"] tr[data-consumer="{consumer["name"]}"]')
        await expect(row.locator("td").nth(1)).to_have_attribute(
            "data-value", str(consumer["pending"])
        )


async def test_dashboard_shows_the_pipeline_and_replays_a_dead_letter(
    browser: Browser,
    start_producer: ProducerFactory,
    redis: Redis,
    artifacts: Path,
) -> None:
    async with (
        start_producer() as producer,
        httpx.AsyncClient(base_url=producer.base_url, timeout=5) as http,
    ):
        replayable = await seed(http, redis)
        context, page, watch = await open_page(browser, producer, DESKTOP)
        await wait_refreshes(page, 1)

        await expect(page.get_by_test_id("access")).to_have_text("auth off")
        await expect(page.get_by_test_id("key-panel")).to_be_hidden()
        await assert_queue_matches(page, http)
        # Ten minutes of data: the default window is the 15 minutes that hold them.
        await assert_charts_drawn(page, "15m", "")
        api_charts = (await http.get("/api/ingest/charts", params={"window": "15m"})).json()
        for shown in api_charts["charts"]:
            await expect(chart(page, shown["metric"])).to_have_attribute(
                "data-last-bucket-open", str(shown["lastBucketOpen"]).lower()
            )

        recent = (await http.get("/api/ingest/events/recent", params={"count": 20})).json()
        rows = page.locator('[data-testid="recent-events"] tbody tr')
        await expect(rows).to_have_count(20)
        await expect(rows.first).to_have_attribute("data-id", recent[0]["id"])
        stale = page.locator('[data-testid="stale-sources"] tbody tr')
        await expect(stale).to_have_count(1)
        await expect(stale.first).to_have_attribute("data-source", QUIET_SOURCE)

        dead = (await http.get("/api/ingest/dead-letters", params={"count": 20})).json()
        entries = dead["deadLetters"]
        assert len(entries) == 2
        await expect(page.get_by_test_id("dead-letter")).to_have_count(2)
        for entry in entries:
            row = page.locator(f'[data-testid="dead-letter"][data-id="{entry["id"]}"]')
            assert entry["reason"]
            await expect(row.get_by_test_id("dead-letter-reason")).to_have_text(entry["reason"])
        await page.screenshot(path=artifacts / "dashboard-desktop.png", full_page=True)

        # A refresh is the same five calls, never one per metric (every panel in view).
        await page.set_viewport_size(TALL)
        count = await refreshes(page)
        await wait_refreshes(page, count + 1)
        watch.requests.clear()
        await wait_refreshes(page, count + 2)
        assert sorted(watch.api_calls()) == REFRESH_CALLS

        await page.get_by_test_id("window-24h").check()
        await assert_charts_drawn(page, "24h", "")
        await page.get_by_test_id("window-15m").check()
        await assert_charts_drawn(page, "15m", "")
        options = page.locator('[data-testid="source-select"] option')
        await expect(options).to_have_count(1 + len(SOURCES) + 1)
        await page.get_by_test_id("source-select").select_option("sensor-a")
        await assert_charts_drawn(page, "15m", "sensor-a")
        await page.get_by_test_id("source-select").select_option("")
        await assert_charts_drawn(page, "15m", "")

        await page.locator(f'[data-testid="replay"][data-id="{replayable}"]').click()
        await expect(page.get_by_test_id("replay-result")).to_have_text("Replayed 1.")
        await expect(page.get_by_test_id("dead-letter")).to_have_count(1, timeout=WAIT_MS)
        await expect(page.get_by_test_id("queue-dead-lettered")).to_have_attribute(
            "data-value", "1", timeout=WAIT_MS
        )
        assert await redis.xlen(KEYS.dead_letter) == 1
        newest: Entries = await call(redis, "XREVRANGE", KEYS.stream, "+", "-", "COUNT", 1)
        [(_, moved)] = newest
        assert moved[b"source"] == b"sensor-b"
        assert moved[b"metric"] == b"mem"
        assert moved[b"value"] == b"42.5"
        watch.assert_clean(producer.base_url)
        await context.close()

        phone, page, watch = await open_page(browser, producer, PHONE)
        await wait_refreshes(page, 1)
        await assert_charts_drawn(page, "15m", "")
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"], "the page scrolls sideways on a phone"
        await page.screenshot(path=artifacts / "dashboard-phone.png", full_page=True)
        watch.assert_clean(producer.base_url)
        await phone.close()


async def test_only_panels_in_view_are_polled_and_a_refused_refresh_backs_off(
    browser: Browser, start_producer: ProducerFactory, redis: Redis
) -> None:
    async with (
        start_producer() as producer,
        httpx.AsyncClient(base_url=producer.base_url, timeout=5) as http,
    ):
        await seed(http, redis)
        context, page, watch = await open_page(browser, producer, SHORT)
        # The first refresh draws every panel, in view or not.
        await wait_refreshes(page, 1)
        await expect(page.get_by_test_id("dead-letter")).to_have_count(2)
        count = await refreshes(page)
        await wait_refreshes(page, count + 1)
        watch.requests.clear()
        await wait_refreshes(page, count + 2)
        polled = watch.api_calls()
        assert "/api/ingest/summary" in polled
        assert "/api/ingest/dead-letters" not in polled

        # Scrolled into view: refreshed at once, not a refresh interval later.
        async with page.expect_request("**/api/ingest/dead-letters*", timeout=1_500):
            await page.get_by_test_id("dead-letter").first.scroll_into_view_if_needed()

        # Refused for load with Retry-After: 5 s, then twice that; a clean answer resets it.
        await page.set_viewport_size(TALL)
        # The panels now in view are refreshed at once: let that refresh end first, so that
        # no refresh is in flight when the refusals begin.
        await wait_refreshes(page, await refreshes(page) + 1)
        busy = {"status_code": 503, "detail": "busy", "errors": []}

        async def refuse(route: Route) -> None:
            await route.fulfill(status=503, headers={"Retry-After": "5"}, json=busy)

        await page.route("**/api/ingest/summary", refuse)
        await page.get_by_test_id("window-24h").check()
        await expect(page.locator("body")).to_have_attribute("data-refresh-ms", "5000")
        await page.get_by_test_id("window-15m").check()
        await expect(page.locator("body")).to_have_attribute("data-refresh-ms", "10000")
        await page.unroute("**/api/ingest/summary", refuse)
        await page.get_by_test_id("window-1h").check()
        await expect(page.locator("body")).to_have_attribute("data-refresh-ms", "2000")
        await context.close()


async def test_a_read_key_sees_everything_but_replay_and_a_write_key_can_replay(
    browser: Browser,
    start_producer: ProducerFactory,
    redis: Redis,
    artifacts: Path,
) -> None:
    keys = {"INGEST_API_KEYS": WRITE_KEY, "INGEST_READ_KEYS": READ_KEY}
    async with (
        start_producer(keys) as producer,
        httpx.AsyncClient(
            base_url=producer.base_url,
            timeout=5,
            headers={"Authorization": f"Bearer {WRITE_KEY}"},
        ) as http,
    ):
        await seed(http, redis)
        context, page, watch = await open_page(browser, producer, DESKTOP)
        key_panel = page.get_by_test_id("key-panel")
        await expect(key_panel).to_be_visible()
        await expect(page.get_by_test_id("queue-total")).to_be_hidden()

        await page.get_by_test_id("key-input").fill(READ_KEY)
        await page.get_by_test_id("key-submit").click()
        await expect(page.get_by_test_id("access")).to_have_text("read key (no replay)")
        await wait_refreshes(page, 1)
        await assert_queue_matches(page, http)
        await assert_charts_drawn(page, "15m", "")
        await expect(page.locator('[data-testid="recent-events"] tbody tr')).to_have_count(20)
        await expect(page.locator('[data-testid="stale-sources"] tbody tr')).to_have_count(1)
        await expect(page.get_by_test_id("dead-letter")).to_have_count(2)
        await expect(page.get_by_test_id("dead-letter-reason").first).not_to_be_empty()
        await expect(page.get_by_test_id("replay")).to_have_count(0)
        await expect(page.get_by_test_id("replay-all")).to_be_hidden()
        await page.screenshot(path=artifacts / "dashboard-read-key.png", full_page=True)

        # Typed once: a reload in the same tab keeps the key.
        await page.reload()
        await expect(page.get_by_test_id("access")).to_have_text("read key (no replay)")
        await expect(key_panel).to_be_hidden()

        await page.get_by_test_id("forget-key").click()
        await expect(key_panel).to_be_visible()
        stored = await page.evaluate("() => sessionStorage.length")
        assert stored == 0

        await page.get_by_test_id("key-input").fill("not-a-known-key-000")
        await page.get_by_test_id("key-submit").click()
        await expect(page.get_by_test_id("key-message")).to_contain_text("not accepted")

        await page.get_by_test_id("key-input").fill(WRITE_KEY)
        await page.get_by_test_id("key-submit").click()
        await expect(page.get_by_test_id("access")).to_have_text("write key")
        await expect(page.get_by_test_id("replay")).to_have_count(2, timeout=WAIT_MS)
        await expect(page.get_by_test_id("replay-all")).to_be_visible()
        watch.assert_clean(producer.base_url)
        await context.close()


async def test_the_default_window_fits_the_data_present_and_an_explicit_window_wins(
    browser: Browser, start_producer: ProducerFactory, redis: Redis
) -> None:
    async with (
        start_producer() as producer,
        httpx.AsyncClient(base_url=producer.base_url, timeout=5) as http,
    ):
        # A fresh stack: the last 15 minutes.
        context, page, watch = await open_page(browser, producer, DESKTOP)
        await wait_refreshes(page, 1)
        charts = page.get_by_test_id("charts")
        await expect(charts).to_have_attribute("data-window", "15m", timeout=WAIT_MS)
        await expect(page.get_by_test_id("window-15m")).to_be_checked()

        # Forty minutes of data: the hour that holds them, chosen without writing the URL.
        await ingest_readings(http, 40 * 60_000)
        await page.reload()
        await assert_charts_drawn(page, "1h", "")
        await expect(page.get_by_test_id("window-1h")).to_be_checked()
        assert "window=" not in await page.evaluate("() => location.hash")

        # The window in the URL wins over the data, and a choice is written to the URL.
        await page.goto(producer.base_url + "/#window=15m")
        await page.reload()
        count = await refreshes(page)
        await wait_refreshes(page, count + 2)
        await assert_charts_drawn(page, "15m", "")
        await page.get_by_test_id("window-24h").check()
        await assert_charts_drawn(page, "24h", "")
        assert await page.evaluate("() => location.hash") == "#window=24h"
        watch.assert_clean(producer.base_url)
        await context.close()


async def test_every_time_is_24_hour_local_time_with_its_zone_shown(
    browser: Browser, start_producer: ProducerFactory, redis: Redis
) -> None:
    async with seeded_page(
        browser, start_producer, redis, window="15m", timezone=ZONE, init_script=RECORD_CANVAS_TEXT
    ) as on:
        http, page = on.http, on.page
        # The time axes: 24-hour labels of local minutes within the last hour.
        zone = ZoneInfo(ZONE)
        now = datetime.now(zone)
        minutes = {(now - timedelta(minutes=m)).strftime("%H:%M") for m in range(62)}
        drawn: list[str] = await page.evaluate("() => window.drawnTexts")
        labels = [t for t in drawn if re.search(r"\d:\d\d|am|pm", t, re.IGNORECASE)]
        assert labels, drawn
        for label in labels:
            assert re.fullmatch(r"\d\d:\d\d(:\d\d)?", label), label
            assert label[:5] in minutes, (label, sorted(minutes))

        # The tables: the same clock, to the millisecond.
        recent = (await http.get("/api/ingest/events/recent", params={"count": 20})).json()
        occurred = datetime.fromisoformat(recent[0]["value"]["occurredAt"]).astimezone(zone)
        expected = occurred.strftime("%H:%M:%S.%f")[:-3]
        if occurred.date() != now.date():
            expected = f"{occurred:%Y-%m-%d} {expected}"
        first = page.locator('[data-testid="recent-events"] tbody tr').first
        await expect(first.locator("td").first).to_have_text(expected)
        for cells in ("recent-events", "stale-sources", "dead-letters"):
            for text in await page.locator(f'[data-testid="{cells}"] td.when').all_inner_texts():
                assert re.fullmatch(r"(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d\.\d{3}", text), text

        # The zone, wherever times are shown.
        await expect(page.get_by_test_id("chart-legend")).to_contain_text(ZONE_LABEL)
        for header in ("Occurred at", "Last seen", "Failed at"):
            await expect(page.locator("th", has_text=header)).to_contain_text(ZONE_LABEL)


async def test_rollups_are_drawn_at_their_buckets_middle_and_the_open_bucket_explained_once(
    browser: Browser, start_producer: ProducerFactory, redis: Redis
) -> None:
    async with seeded_page(
        browser,
        start_producer,
        redis,
        window="15m",
        source="sensor-a",
        hash="#source=sensor-a",
        init_script=RECORD_PLOTS,
    ) as on:
        page = on.page
        await expect(page.get_by_test_id("chart-legend")).to_contain_text("middle")

        # uPlot's own data: series 2 is the closed rollup buckets, null where it has no point.
        plots: list[dict[str, Any]] = await page.evaluate(
            """() => window.plots.filter((u) => u.root.isConnected).map((u) => ({
                xs: u.data[0], ys: u.data[2] }))"""
        )
        assert len(plots) == len(METRICS)
        half = ROLLUP_BUCKET_MS // 2
        for plot in plots:
            drawn = [x for x, y in zip(plot["xs"], plot["ys"], strict=True) if y is not None]
            assert drawn, plot
            for x in drawn:
                assert (x - half) % ROLLUP_BUCKET_MS == 0, (x, ROLLUP_BUCKET_MS)

        # sensor-a's cpu got a later sample: its last bucket is open, said once for the page.
        await expect(chart(page, "cpu")).to_have_attribute("data-last-bucket-open", "true")
        await expect(page.get_by_text("closes when a later sample arrives")).to_have_count(1)


async def test_hover_readouts_show_only_while_hovering(
    browser: Browser, start_producer: ProducerFactory, redis: Redis
) -> None:
    async with seeded_page(browser, start_producer, redis, window="15m", timezone=ZONE) as on:
        page = on.page
        readouts = page.locator('[data-testid="chart"] .u-legend')
        await expect(readouts).to_have_count(len(METRICS))
        for i in range(len(METRICS)):
            await expect(readouts.nth(i)).to_be_hidden()

        await chart(page, "mem").locator(".u-over").hover()
        readout = chart(page, "mem").locator(".u-legend")
        await expect(readout).to_be_visible()
        time = readout.locator(".u-value").first
        await expect(time).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))
        await expect(chart(page, "cpu").locator(".u-legend")).to_be_hidden()

        await page.get_by_test_id("queue-total").hover()
        await expect(readout).to_be_hidden()


async def test_page_and_assets_are_open_cacheable_and_left_out_of_the_api_document(
    start_producer: ProducerFactory,
) -> None:
    keys = {"INGEST_API_KEYS": WRITE_KEY, "INGEST_READ_KEYS": READ_KEY}
    async with (
        start_producer(keys) as producer,
        httpx.AsyncClient(base_url=producer.base_url, timeout=5) as http,
    ):
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "://" not in page.text, "the page must not name any other origin"
        revalidated = await http.get("/", headers={"If-None-Match": page.headers["etag"]})
        assert revalidated.status_code == 304

        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert len(assets) == 5
        for asset in assets:
            response = await http.get(asset)
            assert response.status_code == 200, asset
            assert "immutable" in response.headers["cache-control"]
            if asset.startswith(("/static/app.js", "/static/app.css")):
                assert "://" not in response.text, asset

        # The data behind the page is not open.
        assert (await http.get("/api/ingest/summary")).status_code == 401
        paths = (await http.get("/schema/openapi.json")).json()["paths"]
        assert "/" not in paths
        assert not [path for path in paths if path.startswith("/static")]
