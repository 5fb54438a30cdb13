"""The API's own documentation: Swagger UI at /docs from files shipped in a Python package (no CDN: the page works
air-gapped), and the OpenAPI schema's security scheme, so that its "Authorize" button sends the API key."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"


def install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI, served from the `swagger-ui-bundle` package) and its assets; the app must be built
    with `docs_url=None, redoc_url=None` (ReDoc has no offline copy here and is not served)."""
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)


def declare_security(schema: dict[str, Any], keyed: bool) -> dict[str, Any]:
    """With an API key, the bearer scheme the key routes declared; without one, no route asks for it."""
    if keyed:
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearerAuth"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the server's LMSERVE_API_KEY",
        }
        return schema
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.pop("security", None)
    return schema
