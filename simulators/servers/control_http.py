"""A tiny HTTP/JSON control interface for simulator faults, on 127.0.0.1 (stdlib asyncio streams only).

Started by ``python -m simulators --control-port N`` (0 = a free port, shown as ``control=PORT`` in the ready
line). Machine names are the equipment names of the simulators (``Coater01``, ``Rack01``); matching ignores
case, ``-`` and ``_``, so the tag map's ``rack-01`` works too. Routes::

    GET    /faults                     {"machines": {"Coater01": {"protocol": "opcua", "faults": [...]}, ...}}
    GET    /faults/{machine}           {"machine": "Rack01", "protocol": "modbus", "faults": [...]}
    POST   /faults/{machine}           body: one fault as JSON (below); answers like GET /faults/{machine}
    DELETE /faults/{machine}           clear every fault of the machine (and the connection faults of its server)
    DELETE /faults/{machine}/{kind}    clear one kind: drop | hang | latency | exception | bad | freeze

Fault bodies (``duration_s`` is optional everywhere but restart; without it a fault lasts until cleared,
except drop, which is one-shot unless given a duration)::

    {"fault": "drop", "duration_s": 3}
    {"fault": "hang", "duration_s": 5}
    {"fault": "latency", "seconds": 0.5}
    {"fault": "exception", "table": "holding", "start": 1000, "end": 1032, "code": 2}     (Modbus)
    {"fault": "bad", "points": ["Ch001.Voltage"], "status": "BadSensorFailure"}           (points: null = all)
    {"fault": "freeze", "points": null}
    {"fault": "restart", "extra_namespaces": 1, "down_s": 0}                              (OPC UA; answers
                                                                                           once it is back)

Errors answer 400 (bad JSON or fault, with ``{"error": "..."}``), 404 (unknown machine or path) or 405.
Each fault entry in an answer is the fault as JSON plus ``remaining_s`` (null = until cleared). Example::

    curl -s -X POST localhost:PORT/faults/rack-01 -d '{"fault": "hang", "duration_s": 5}'
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Protocol, Self

from simulators.faults import Fault, FaultKind, FaultState, Restart, fault_from_json

MAX_BODY_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 10.0

_log = logging.getLogger(__name__)


class FaultTarget(Protocol):
    """What the control interface needs from a simulator server (both servers implement it)."""

    @property
    def machines(self) -> tuple[str, ...]: ...

    @property
    def faults(self) -> FaultState: ...

    async def set_fault(self, fault: Fault | Restart, *, duration_s: float | None = None) -> None: ...

    async def clear_faults(self, kind: FaultKind | None = None, *, machine: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlledMachine:
    name: str
    protocol: str  # opcua | modbus
    server: FaultTarget


def _normalised(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: HTTPStatus
    body: object


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlServer:
    """``async with ControlServer(machines=[...], port=0) as control: control.port`` serves until exit."""

    def __init__(self, *, machines: list[ControlledMachine], host: str = "127.0.0.1", port: int = 0) -> None:
        self._machines = {_normalised(m.name): m for m in machines}
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        return self._port

    async def __aenter__(self) -> Self:
        try:
            self._server = await asyncio.start_server(self._serve, self._host, self._port)
        except OSError as exc:
            raise OSError(exc.errno, f"control interface cannot listen on {self._host}:{self._port}: "
                                     f"{exc.strerror}") from exc
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    method, path, body = await _read_request(reader)
                reply = await self.handle(method, path, body)
            except _HttpError as exc:
                reply = Reply(status=exc.status, body={"error": str(exc)})
            except TimeoutError:
                reply = Reply(status=HTTPStatus.REQUEST_TIMEOUT, body={"error": "request not complete in time"})
            payload = json.dumps(reply.body, indent=2).encode() + b"\n"
            writer.write(
                f"HTTP/1.1 {reply.status.value} {reply.status.phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def handle(self, method: str, path: str, body: bytes) -> Reply:
        """Answer one request (public so tests of routing need no socket)."""
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        if not parts or parts[0] != "faults" or len(parts) > 3:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no such path {path!r}; try GET /faults")
        if len(parts) == 1:
            if method != "GET":
                raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "only GET /faults")
            return Reply(status=HTTPStatus.OK, body={"machines": {
                m.name: {"protocol": m.protocol, "faults": self._describe(m)} for m in self._machines.values()
            }})
        machine = self._machines.get(_normalised(parts[1]))
        if machine is None:
            known = ", ".join(m.name for m in self._machines.values())
            raise _HttpError(HTTPStatus.NOT_FOUND, f"unknown machine {parts[1]!r}; known: {known}")
        try:
            if method == "GET" and len(parts) == 2:
                pass
            elif method == "POST" and len(parts) == 2:
                try:
                    document = json.loads(body or b"null")
                except ValueError as exc:
                    raise _HttpError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
                fault, duration_s = fault_from_json(document, machine=machine.name)
                await machine.server.set_fault(fault, duration_s=duration_s)
            elif method == "DELETE":
                kind = None
                if len(parts) == 3:
                    try:
                        kind = FaultKind(parts[2])
                    except ValueError:
                        raise _HttpError(HTTPStatus.NOT_FOUND, f"no fault kind {parts[2]!r}") from None
                await machine.server.clear_faults(kind, machine=machine.name)
            else:
                raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} {path} is not a route; see GET /faults")
        except ValueError as exc:
            raise _HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        except _HttpError:
            raise
        except Exception as exc:  # a fault that failed to apply (e.g. a restart that cannot bind) is the caller's news
            _log.exception("fault control request failed: %s %s", method, path)
            raise _HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}") from None
        return Reply(status=HTTPStatus.OK, body={
            "machine": machine.name, "protocol": machine.protocol, "faults": self._describe(machine),
        })

    @staticmethod
    def _describe(machine: ControlledMachine) -> list[dict[str, object]]:
        state = machine.server.faults
        now = asyncio.get_running_loop().time()
        return state.describe(now=now, machine=machine.name)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    request_line = (await reader.readline()).decode("latin-1").strip()
    fields = request_line.split()
    if len(fields) != 3 or not fields[2].startswith("HTTP/"):
        raise _HttpError(HTTPStatus.BAD_REQUEST, f"not an HTTP request line: {request_line[:80]!r}")
    length = 0
    while True:
        line = (await reader.readline()).decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise _HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
    if not 0 <= length <= MAX_BODY_BYTES:
        raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY_BYTES} bytes")
    body = await reader.readexactly(length) if length else b""
    return fields[0].upper(), fields[1], body


def request_control(
    port: int, method: str, path: str, body: object | None = None, *, host: str = "127.0.0.1", timeout_s: float = 60.0
) -> tuple[int, object]:
    """Blocking client for the control interface: (HTTP status, decoded JSON answer). Raises OSError if down."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()
