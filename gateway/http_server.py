"""The operations listener: a tiny HTTP/1.1 server on asyncio (GET only, one request per connection).

Routes: ``/metrics`` (Prometheus text format from the gateway's registry), ``/healthz`` (200 while the event loop
answers), ``/readyz`` (200 ready / 503 not ready, JSON with each check), ``/`` (the status page). With a token
every request needs ``Authorization: Bearer <token>`` (401 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Callable
from pathlib import Path

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.health import readiness
from gateway.metrics import GatewayState
from gateway.status_page import render_status

log = structlog.get_logger("cellgate.http")

REQUEST_TIMEOUT_S = 5.0
MAX_HEADER_BYTES = 16_384
LISTEN_RETRY_S = 30.0
"""How often a listener that could not bind its port tries again."""

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}  # fmt: skip


def read_token(path: str | None) -> str | None:
    """The bearer token from ``http.token_file`` (surrounding whitespace removed)."""
    if path is None:
        return None
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"http.token_file {path} is empty")
    return token


class OpsHttp:
    """Answers one request from the gateway's state; ``handle`` is the asyncio.start_server callback."""

    def __init__(
        self, *, state: Callable[[], GatewayState], registry: CollectorRegistry, token: str | None = None
    ) -> None:
        self._state = state
        self._registry = registry
        self._token = token.encode() if token is not None else None

    def respond(self, method: str, path: str, authorization: bytes | None) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        if self._token is not None:
            expected = b"Bearer " + self._token
            if authorization is None or not hmac.compare_digest(authorization, expected):
                return 401, "application/json", b'{"error":"bearer token required"}'
        if method not in ("GET", "HEAD"):
            return 405, "application/json", b'{"error":"GET only"}'
        route = path.split("?", 1)[0]
        if route == "/healthz":
            return 200, "application/json", b'{"status":"alive"}'
        if route == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        state = self._state()
        ready = readiness(state)
        if route == "/readyz":
            body = orjson.dumps({"status": "ready" if ready.ready else "not ready", "checks": ready.checks})
            return (200 if ready.ready else 503), "application/json", body
        if route == "/":
            return 200, "text/html; charset=utf-8", render_status(state, ready).encode()
        return 404, "application/json", b'{"error":"not found"}'

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            status, content_type, body, method = self._answer(head)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[int, str, bytes, str]:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, "application/json", b'{"error":"bad request"}', "GET"
        authorization = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                authorization = value.strip()
        method = parts[0].decode("ascii", "replace")
        status, content_type, body = self.respond(method, parts[1].decode("ascii", "replace"), authorization)
        return status, content_type, body, method


async def serve_http(ops: OpsHttp, host: str, port: int, *, retry_s: float = LISTEN_RETRY_S) -> None:
    """Listen until cancelled. A port that cannot be bound (already in use) is logged and tried again every
    ``retry_s`` while the gateway runs on: the operations view must never stop data acquisition, and it comes
    back by itself once the port is free."""
    problem = None
    while True:
        try:
            server = await asyncio.start_server(ops.handle, host, port, limit=MAX_HEADER_BYTES)
        except OSError as exc:
            if str(exc) != problem:  # once per distinct error, not every retry
                problem = str(exc)
                log.error("http_listen_failed", listen=f"{host}:{port}", error=problem, retry_in_s=retry_s)
            await asyncio.sleep(retry_s)
            continue
        break
    bound = server.sockets[0].getsockname()
    log.info("http_listening", listen=f"{bound[0]}:{bound[1]}", after_failures=problem is not None)
    async with server:
        await server.serve_forever()
