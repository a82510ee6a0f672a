"""What the service is (`/`), and its API documentation (`/docs`, `/redoc`) served with
no CDN: FastAPI's stock pages load Swagger UI and ReDoc from jsdelivr, which fails on a
machine without internet access. The files come from the `fastapi-offline` package
(Swagger UI: Apache-2.0; ReDoc: MIT; the package itself: MIT), served from here.

The app is created with `docs_url=None, redoc_url=None` so these routes take the paths."""
from __future__ import annotations

from html import escape
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from webhook_receiver.errors import error_response

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSET_FILES = {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"}
ASSET_PATH = "/docs/assets"

router = APIRouter(include_in_schema=False)

ABOUT = ("Lead Orchestrator's webhook receiver. It stores what ShopMonkey, Tekmetric, Twilio and SendGrid send "
         "(new estimates, delivery reports, replies, opt-outs) before answering; the lead's text and email "
         "go out from there within seconds.")
LINKS = {"docs": "/docs", "redoc": "/redoc", "openapi": "/openapi.json", "health": "/healthz",
         "ready": "/readyz"}


@router.get("/")
def root(request: Request) -> Response:
    """A browser gets a short page; anything else (curl, a monitor) gets JSON."""
    if "text/html" in request.headers.get("accept", ""):
        items = "".join(f'<li><a href="{escape(path)}">{escape(path)}</a> ({escape(name)})</li>'
                        for name, path in LINKS.items())
        return HTMLResponse(f"<!doctype html><html><head><meta charset=utf-8><title>{escape(request.app.title)}"
                            f"</title></head><body><h1>{escape(request.app.title)}</h1><p>{escape(ABOUT)}</p>"
                            f"<ul>{items}</ul></body></html>")
    return JSONResponse({"service": request.app.title, "version": request.app.version, "about": ABOUT,
                         "links": LINKS})


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - API",
        swagger_js_url=f"{root}{ASSET_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSET_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSET_PATH}/favicon.png",
        # Swagger UI would otherwise ask validator.swagger.io about the document.
        swagger_ui_parameters={"validatorUrl": None})


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - API",
                          redoc_js_url=f"{root}{ASSET_PATH}/redoc.standalone.js",
                          redoc_favicon_url=f"{root}{ASSET_PATH}/favicon.png", with_google_fonts=False)


@router.get(ASSET_PATH + "/{name}")
def asset(name: str) -> Response:
    if name not in ASSET_FILES:  # only the named files: no path ever reaches the filesystem
        return error_response(404, "not_found", "no such file")
    return FileResponse(ASSETS / name, headers={"Cache-Control": "public, max-age=86400"})
