"""tus 1.0.0 uploads at /v1/tus/ on the node's own upload sessions (API.md, "HTTP")."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application, face) -> None:
    """Registered by node.http.face; the tus handlers come in the next step of issue 12."""
