"""/schema in a real chromium with every other host cut off: Swagger UI still renders the API."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from playwright.async_api import expect

if TYPE_CHECKING:
    from playwright.async_api import Browser, Route
    from tests.browser.conftest import ProducerFactory

pytestmark = pytest.mark.slow

WAIT_MS = 15_000


@pytest.mark.parametrize("page_path", ["/schema", "/schema/swagger"])
async def test_swagger_ui_renders_every_route_with_no_network_but_the_producer(
    browser: Browser, start_producer: ProducerFactory, page_path: str
) -> None:
    async with start_producer() as producer:
        origin = urlsplit(producer.base_url).netloc
        blocked: list[str] = []
        errors: list[str] = []
        page = await browser.new_page()

        async def only_the_producer(route: Route) -> None:
            if urlsplit(route.request.url).netloc == origin:
                await route.continue_()
            else:  # what a machine without internet access would see
                blocked.append(route.request.url)
                await route.abort("internetdisconnected")

        await page.route("**/*", only_the_producer)
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            await page.goto(producer.base_url + page_path)
            operations = page.locator(".opblock-summary-path")
            await expect(operations.first).to_be_visible(timeout=WAIT_MS)
            paths = set(
                await operations.evaluate_all("els => els.map(e => e.getAttribute('data-path'))")
            )
        finally:
            await page.close()

    assert blocked == []
    assert errors == []
    assert {"/api/ingest/events", "/api/ingest/summary", "/ready"} <= paths
