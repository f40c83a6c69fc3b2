"""The API docs at ``/schema``, working offline: Swagger UI from an installed package.

Litestar's render plugins load their scripts from a public CDN (at ``@latest`` for Scalar), so
``/schema`` is a blank page without the internet. Here the Swagger UI files come from the
``swagger-ui-py`` wheel and are served under ``/schema/assets``; the page names no other host.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

from ingest_producer.openapi import PublishedOpenAPIConfig

if TYPE_CHECKING:
    from litestar import Router

__all__ = ["ASSETS_PATH", "api_docs_config", "swagger_ui_dir"]

SCHEMA_PATH = "/schema"
ASSETS_PATH = f"{SCHEMA_PATH}/assets"
_FAVICON = f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>"


def swagger_ui_dir() -> Path:
    """The Swagger UI distribution inside the installed ``swagger-ui-py`` package.

    Found by its import spec, not imported: the package's ``__init__`` pulls in web-framework
    adapters we do not use.
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        msg = "swagger-ui-py is not installed; it ships the assets of the /schema page"
        raise RuntimeError(msg)
    return Path(next(iter(spec.submodule_search_locations))) / "static"


class OfflineSwaggerPlugin(SwaggerRenderPlugin):
    """Swagger UI with its scripts, styles and icon served by the app itself."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=_FAVICON,
            **kwargs,
        )

    def receive_router(self, router: Router) -> None:
        """Add ``/schema/assets/...`` to the router that serves the docs (and the OAuth page)."""
        super().receive_router(router)
        router.register(
            create_static_files_router(
                path=ASSETS_PATH.removeprefix(SCHEMA_PATH),
                directories=[swagger_ui_dir()],
                name="api_docs_assets",
                include_in_schema=False,
            )
        )


def api_docs_config(*, title: str, version: str, description: str) -> PublishedOpenAPIConfig:
    """``/schema`` (Swagger UI, also at ``/schema/swagger``), ``/schema/openapi.json``: the
    document with ECMA-262 patterns (see ``ingest_producer.openapi``)."""
    return PublishedOpenAPIConfig(
        title=title,
        version=version,
        description=description,
        path=SCHEMA_PATH,
        render_plugins=[OfflineSwaggerPlugin(path="/swagger")],
    )
