"""The dashboard: ``GET /`` serves the page, ``/static/...`` its scripts and styles.

Both are open routes (no API key to load the page; its data calls carry the key) and left out
of the OpenAPI document. The files are package data in ``ingest_producer/static``; the page is
read once, when the routes are built. Asset URLs carry a digest of the assets, so browsers may
keep them for a year, while the page itself is revalidated on every load (ETag).

No ``from __future__ import annotations`` here: Litestar reads handler annotations at runtime.
"""

import hashlib
from importlib.resources import files
from pathlib import Path
from typing import Any

from litestar import MediaType, Request, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.handlers import HTTPRouteHandler
from litestar.router import Router
from litestar.static_files import create_static_files_router

STATIC_PATH = "/static"
# Replaced in index.html by a digest of the assets: a new release gets new asset URLs.
VERSION_PLACEHOLDER = "__ASSET_VERSION__"
_ASSETS = (
    "app.js",
    "app.css",
    "favicon.svg",
    "vendor/uplot/uPlot.iife.min.js",
    "vendor/uplot/uPlot.min.css",
)
# The page only ever loads its own files and calls its own API; server data is rendered with
# textContent, and this policy stops anything injected anyway from running or leaking.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_ASSET_CACHE = CacheControlHeader(public=True, max_age=365 * 24 * 3600, immutable=True)


def static_dir() -> Path:
    """The package's ``static`` directory (a real directory: the package is never zipped)."""
    return Path(str(files("ingest_producer").joinpath("static")))


def dashboard_routes() -> list[HTTPRouteHandler | Router]:
    """``GET /`` and the static files under ``/static``."""
    directory = static_dir()
    digest = hashlib.sha256()
    for asset in _ASSETS:
        digest.update((directory / asset).read_bytes())
    version = digest.hexdigest()[:16]
    page = (directory / "index.html").read_text().replace(VERSION_PLACEHOLDER, version)
    body = page.encode()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'

    @get("/", include_in_schema=False, media_type=MediaType.HTML)
    async def dashboard(request: Request[Any, Any, Any]) -> Response[bytes]:
        headers = {**_PAGE_HEADERS, "ETag": etag}
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None and etag in if_none_match:
            return Response(b"", status_code=304, headers=headers, media_type=MediaType.HTML)
        return Response(body, headers=headers, media_type=MediaType.HTML)

    assets = create_static_files_router(
        path=STATIC_PATH,
        directories=[directory],
        cache_control=_ASSET_CACHE,
        include_in_schema=False,
        name="dashboard_static",
    )
    return [dashboard, assets]
