"""The API docs under /schema work offline: no page names another host, and every script,
style sheet and icon a page references is served by the app itself."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from litestar import MediaType
from litestar.routes import HTTPRoute

from ingest_producer.app import create_app
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from litestar import Litestar
    from redis.asyncio import Redis
    from tests.conftest import AppClient

BASE = "http://testserver"
# Every absolute or protocol-relative URL in a page, quoted or not.
ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.\-]+(?::\d+)?[^\s"'<>)]*""")
# What the browser fetches by itself when it renders the page.
REFERENCE = re.compile(r"""<(?:script|link|img)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""")
ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


def docs_pages(app: Litestar) -> list[str]:
    """Every HTML page Litestar serves under /schema (routes without path parameters)."""
    pages = [
        route.path
        for route in app.routes
        if isinstance(route, HTTPRoute)
        and route.path.startswith("/schema")
        and not route.path_parameters
        and any(
            "GET" in handler.http_methods and handler.media_type == MediaType.HTML
            for handler in route.route_handlers
        )
    ]
    return sorted(pages)


def make_app(redis: Redis, redis_url: str) -> Litestar:
    return create_app(dataclasses.replace(Settings(), redis_url=redis_url), redis)


async def test_every_docs_page_names_no_other_host_and_serves_what_it_references(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    app = make_app(redis, redis_url)
    pages = docs_pages(app)
    assert {"/schema", "/schema/swagger"} <= set(pages)

    async with serve(app) as http:
        referenced: set[str] = set()
        for page in pages:
            response = await http.get(page)
            assert response.status_code == 200, page
            html = response.text
            foreign = [
                url for url in ABSOLUTE_URL.findall(html) if urlsplit(url).netloc != "testserver"
            ]
            assert foreign == [], f"{page} names other hosts"
            referenced |= {urljoin(f"{BASE}{page}", ref) for ref in REFERENCE.findall(html)}

        assert referenced, "the docs pages reference no assets at all"
        for url in sorted(referenced):
            path = urlsplit(url).path
            asset = await http.get(path)
            assert asset.status_code == 200, path
            assert asset.content, path
            suffix = path[path.rfind(".") :]
            assert ASSET_TYPES[suffix] in asset.headers["content-type"], path


async def test_the_docs_page_loads_swagger_ui_from_the_app(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(make_app(redis, redis_url)) as http:
        html = (await http.get("/schema")).text
        bundle = await http.get("/schema/assets/swagger-ui-bundle.js")

    assert '<script src="/schema/assets/swagger-ui-bundle.js"' in html
    assert "SwaggerUIBundle" in bundle.text
    # The OpenAPI document is inlined, so the page needs no further request to show the API.
    assert '"/api/ingest/events"' in html


async def test_an_unknown_asset_is_404_not_a_page(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(make_app(redis, redis_url)) as http:
        response = await http.get("/schema/assets/no-such-file.js")

    assert response.status_code == 404
