"""A real mosquitto broker for tests, and a subscriber that records what it receives.

Plain classes and context managers (no pytest fixtures here; conftest.py wires them):

    with Mosquitto() as broker:                         # free 127.0.0.1 port, anonymous, no persistence
        with Subscriber(broker.host, broker.port, "t1/#") as sub:
            ...
            await sub.wait_for(lambda msgs: len(msgs) >= 3, timeout_s=5)
        broker.restart()                                # same port, same config

Password auth: ``Mosquitto(users={"gw": "secret"})`` writes a password file with ``mosquitto_passwd``
and turns anonymous access off. ``persistence=True`` keeps retained messages and persistent sessions
across a graceful ``stop()`` / ``start()`` (a ``stop(kill=True)`` crash loses what was not saved).

TLS: ``Mosquitto(tls=ListenerTls(...))`` makes the listener mqtts-only (``url`` says ``mqtts://``);
``require_certificate=True`` also demands a client certificate signed by ``ca_file`` (mTLS). Give the
subscriber ``tls=ClientTls(...)`` to match. tests/support/tls.py generates the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class BrokerError(RuntimeError):
    """mosquitto did not start or stop as asked; the message carries the end of its log."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerTls:
    """PEM files for a TLS listener. ``ca_file`` verifies client certificates when they are required."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False

    def config_lines(self) -> list[str]:
        # Listener options: they apply to the ``listener`` line above them.
        return [
            f"cafile {self.ca_file}",
            f"certfile {self.cert_file}",
            f"keyfile {self.key_file}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTls:
    """TLS for a test client: trust ``ca_file``; ``cert_file``/``key_file`` is the client certificate (mTLS)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


class Mosquitto:
    """One mosquitto process on 127.0.0.1 with a generated config in its own directory."""

    def __init__(
        self,
        *,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        persistence: bool = False,
        workdir: Path | None = None,
        tls: ListenerTls | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.host = HOST
        self._extra_config = tuple(extra_config)  # more mosquitto.conf lines, e.g. "max_packet_size 1000"
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._users = dict(users or {})
        self._persistence = persistence
        self.tls = tls
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="cellgate-mosquitto-"))
        self.log_path = self.workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this run's lines begin in log_path (restarts append)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------------------ config

    def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} {self.host}",
            *(self.tls.config_lines() if self.tls else []),
            f"allow_anonymous {'false' if self._users else 'true'}",
            "max_queued_messages 100000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if self._persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            # Run as root, mosquitto would switch to user 'mosquitto', which cannot read our private
            # temp dir (the password file, the persistence db). 'root' means: do not switch.
            lines.append("user root")
        if self._users:
            password_file = self.workdir / "passwords"
            password_file.unlink(missing_ok=True)
            for index, (user, password) in enumerate(self._users.items()):
                create = ["-c"] if index == 0 else []
                subprocess.run(
                    [MOSQUITTO_PASSWD, *create, "-b", str(password_file), user, password],
                    check=True,
                    capture_output=True,
                )
            lines.append(f"password_file {password_file}")
        lines += self._extra_config
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    # --------------------------------------------------------------------------- lifecycle

    def start(self, timeout_s: float = 30.0) -> None:
        """Start mosquitto and return once the port accepts TCP connections."""
        if self.running:
            raise BrokerError("mosquitto is already running")
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            self._spawn()
            if self._wait_listening(timeout_s):
                return
            self._terminate()
            in_use = "Address already in use" in self.log_text()
            if in_use and attempt + 1 < attempts:
                self.port = free_port()  # lost the race for the port: pick another before first use
                continue
            break
        raise BrokerError(f"mosquitto did not start on port {self.port}:\n{self.log_text()[-2000:]}")

    def _spawn(self) -> None:
        config = self._write_config()
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [MOSQUITTO, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()  # the child has its own copy of the descriptor

    def _wait_listening(self, timeout_s: float) -> bool:
        """True once this process logged that its listeners are open and the port accepts a connection.

        The log line matters when tests run in parallel: a connection alone could reach another process that
        took the port between ``free_port()`` and mosquitto's bind (mosquitto then exits "Address in use").
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                return False
            if self._logged_running():
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.2):
                        return self.running
                except OSError:
                    pass
            time.sleep(0.02)
        return False

    def _logged_running(self) -> bool:
        # "mosquitto version X running" comes after every listener is bound (log_type information).
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return re.search(rb"mosquitto version \S+ running", log.read()) is not None
        except FileNotFoundError:
            return False

    def stop(self, timeout_s: float = 5.0, *, kill: bool = False) -> None:
        """Stop mosquitto: SIGTERM (graceful, saves persistence), SIGKILL after ``timeout_s``.

        ``kill=True`` sends SIGKILL at once: a broker crash.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            if kill:
                process.kill()
            else:
                process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout_s)
        self._process = None

    def _terminate(self) -> None:
        self.stop(timeout_s=2.0)

    def restart(self, timeout_s: float = 30.0, *, kill: bool = False, down_s: float = 0.0) -> None:
        """Stop, wait ``down_s``, start again on the same port."""
        self.stop(timeout_s, kill=kill)
        if down_s:
            time.sleep(down_s)
        self._fixed_port = True
        self.start(timeout_s)

    def pause(self) -> None:
        """SIGSTOP: the TCP connections stay open but nothing is answered (a hung broker)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the broker and remove the directory this object created."""
        if self._process is not None:
            self.resume()  # a stopped process does not act on SIGTERM until continued
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ------------------------------------------------------------------------------------ subscriber


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the subscriber saw it; ``at`` is ``time.monotonic()`` on arrival."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    at: float


Predicate = Callable[[list["Received"]], bool]


class Subscriber:
    """A paho client in its own thread that records every message matching ``topic_filter``.

    ``start()`` returns after the SUBACK, so nothing published afterwards is missed. It reconnects and
    subscribes again on its own (fast backoff) if the broker restarts. ``session=True`` uses a persistent
    session (MQTT 3.1.1 clean_session=False, fixed client id) so a broker with persistence queues QoS1
    messages for it while it is away.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        *,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        client_id: str = "",
        session: bool = False,
        tls: ClientTls | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.topic_filter = topic_filter
        self._qos = qos
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        self.subscriptions = 0  # SUBACKs received: 1 after start, +1 after every reconnect
        if session and not client_id:
            raise ValueError("a persistent session needs a client_id")
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=not session,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set(
                ca_certs=str(tls.ca_file),
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
        # paho annotates the delays as int but handles floats; a quick resubscribe keeps tests short.
        self._client.reconnect_delay_set(min_delay=cast(int, 0.1), max_delay=cast(int, 0.5))
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags, reason: ReasonCode, props: object
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic_filter, qos=self._qos)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: list[ReasonCode], props: object
    ) -> None:
        with self._lock:
            self.subscriptions += 1
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received = Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.monotonic())
        with self._lock:
            self._messages.append(received)

    def start(self, timeout_s: float = 30.0) -> None:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise BrokerError(f"no SUBACK for {self.topic_filter!r} within {timeout_s} s")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ reading

    @property
    def messages(self) -> list[Received]:
        """A copy of everything received so far, in arrival order."""
        with self._lock:
            return list(self._messages)

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    async def wait_for(self, predicate: Predicate, timeout_s: float = 15.0) -> list[Received]:
        """Poll until ``predicate(messages)`` is true and return the messages; AssertionError on timeout.

        Async so the event loop (and the sink under test) keeps running while we wait.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            messages = self.messages
            if predicate(messages):
                return messages
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout_s} s waiting on {self.topic_filter!r}; "
                    f"{len(messages)} messages: {[(m.topic, m.payload[:80]) for m in messages[-10:]]}"
                )
            await asyncio.sleep(0.01)

    def wait_for_blocking(self, predicate: Predicate, timeout_s: float = 15.0) -> list[Received]:
        """``wait_for`` for code without an event loop."""
        deadline = time.monotonic() + timeout_s
        while True:
            messages = self.messages
            if predicate(messages):
                return messages
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout_s} s; {len(messages)} messages")
            time.sleep(0.01)


async def retained_snapshot(
    host: str,
    port: int,
    topic_filter: str,
    *,
    settle_s: float = 0.3,
    username: str | None = None,
    password: str | None = None,
    tls: ClientTls | None = None,
) -> dict[str, bytes]:
    """Topic -> payload of the retained messages a new subscriber gets right now.

    The broker sends retained messages right after the SUBACK; ``settle_s`` is how long we listen.
    """
    with Subscriber(host, port, topic_filter, username=username, password=password, tls=tls) as sub:
        await asyncio.sleep(settle_s)
        return {m.topic: m.payload for m in sub.messages if m.retain}


@contextlib.asynccontextmanager
async def persistent_broker_and_host(
    tmp_path: Path, topic_filter: str, client_id: str
) -> AsyncIterator[tuple[Mosquitto, Subscriber]]:
    """A broker that keeps sessions on disk (in ``tmp_path/broker``) and a subscriber with a persistent session on
    ``topic_filter``, for tests that crash and restart the broker and expect the subscriber to miss nothing."""
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(persistence=True, workdir=tmp_path / "broker")
    broker.start()
    host = Subscriber(broker.host, broker.port, topic_filter, client_id=client_id, session=True)
    try:
        host.start()
        await asyncio.sleep(1.5)  # autosave_interval 1: the subscriber's session is on disk before any crash
        yield broker, host
    finally:
        host.stop()
        broker.close()
