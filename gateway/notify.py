"""A small sd_notify client: tell systemd we are ready, alive, reloading or stopping.

The protocol (``man sd_notify``) is one datagram per message, newline-separated ``KEY=VALUE`` assignments, sent
to the AF_UNIX socket named by ``$NOTIFY_SOCKET``; a leading ``@`` names a socket in the abstract namespace.
Without ``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=simple``) the notifier is inert, so the runtime
calls it unconditionally.

Sending never raises and never blocks the event loop: the socket is non-blocking, a full socket buffer drops
the message (counted in ``messages_dropped``), and a socket that has gone away is logged once and then ignored
(counted in ``messages_failed``; sending is still attempted, so a socket that comes back is used again).
A missed ``WATCHDOG=1`` is harmless as long as the next one arrives within ``WatchdogSec``; the runtime pings
every ``watchdog_interval_s`` (half of ``WatchdogSec``), the interval ``sd_watchdog_enabled(3)`` recommends.

The pure part (parsing the environment, formatting messages) is plain functions, tested without sockets.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

import structlog

log = structlog.get_logger("cellgate.notify")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

USEC_PER_S = 1_000_000


# ---------------------------------------------------------------------------------------------------------------
# Pure part: environment parsing and message formatting.
# ---------------------------------------------------------------------------------------------------------------


def parse_notify_socket(value: str | None) -> str | None:
    """The address to send to, from ``$NOTIFY_SOCKET``; None when unset, empty or of a kind we do not speak.

    ``/run/systemd/notify`` is a filesystem path; ``@name`` is the abstract-namespace socket ``\\0name`` (Python's
    AF_UNIX addresses spell the abstract namespace with a leading NUL). systemd >= 253 may also hand out
    ``vsock:CID:PORT`` for virtual machines; a gateway on an edge box never gets one, so it reads as "no socket".
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:] if len(value) > 1 else None
    if value.startswith("/"):
        return value
    return None


def parse_watchdog_interval_s(watchdog_usec: str | None, watchdog_pid: str | None, *, own_pid: int) -> float | None:
    """How often to send ``WATCHDOG=1``, in seconds: half of ``$WATCHDOG_USEC``, as ``sd_watchdog_enabled`` advises.

    None when no watchdog is configured, the value is not a positive integer, or ``$WATCHDOG_PID`` names another
    process (the variables were inherited from a parent that systemd watches, not us).
    """
    if not watchdog_usec:
        return None
    try:
        usec = int(watchdog_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    if watchdog_pid:
        try:
            pid = int(watchdog_pid)
        except ValueError:
            return None
        if pid != own_pid:
            return None
    return usec / USEC_PER_S / 2


def format_message(fields: Mapping[str, str]) -> bytes:
    """``{"READY": "1", "STATUS": "up"}`` -> ``b"READY=1\\nSTATUS=up"``, the wire form of one notification.

    Assignments are newline-separated, so a newline inside a value would start a bogus assignment: newlines in
    values become spaces. Keys are ours (constants below), never user input.
    """
    return "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items()).encode("utf-8")


def _one_line(value: str) -> str:
    return value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def ready_message(status: str | None = None) -> bytes:
    """Startup (or a reload) is complete; with an optional human-readable status line for ``systemctl status``."""
    fields = {"READY": "1"}
    if status is not None:
        fields["STATUS"] = status
    return format_message(fields)


def watchdog_message() -> bytes:
    return format_message({"WATCHDOG": "1"})


def stopping_message(status: str | None = None) -> bytes:
    fields = {"STOPPING": "1"}
    if status is not None:
        fields["STATUS"] = status
    return format_message(fields)


def reloading_message(monotonic_usec: int) -> bytes:
    """A reload has started; send ``READY=1`` when it is done.

    systemd >= 253 requires ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, microseconds; in Python
    ``time.monotonic_ns() // 1000``) next to ``RELOADING=1`` to tell this reload from an earlier one; older
    versions ignore the extra field.
    """
    if monotonic_usec < 0:
        raise ValueError(f"monotonic_usec must be >= 0, got {monotonic_usec}")
    return format_message({"RELOADING": "1", "MONOTONIC_USEC": str(monotonic_usec)})


def status_message(text: str) -> bytes:
    return format_message({"STATUS": text})


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyEnvironment:
    """What the environment says about systemd supervision of this process."""

    address: str | None
    """Where to send notifications (``\\0``-prefixed for the abstract namespace); None: not under systemd notify."""
    watchdog_interval_s: float | None
    """Half of ``WatchdogSec``; None when no watchdog watches this process."""


def read_notify_environment(environ: Mapping[str, str], *, own_pid: int) -> NotifyEnvironment:
    return NotifyEnvironment(
        address=parse_notify_socket(environ.get(NOTIFY_SOCKET_ENV)),
        watchdog_interval_s=parse_watchdog_interval_s(
            environ.get(WATCHDOG_USEC_ENV), environ.get(WATCHDOG_PID_ENV), own_pid=own_pid
        ),
    )


# ---------------------------------------------------------------------------------------------------------------
# I/O shell.
# ---------------------------------------------------------------------------------------------------------------


class SystemdNotifier:
    """Sends sd_notify messages; every method is a no-op when there is no notify socket.

    Build it with ``SystemdNotifier.from_environ()``. Use it as a context manager (or call ``close()``) so the
    socket is closed. Methods return True when the datagram was handed to the kernel, False when it was not
    (inert, dropped, socket gone); callers normally ignore the result.
    """

    def __init__(self, *, address: str | None, watchdog_interval_s: float | None = None) -> None:
        self._address = address
        self._watchdog_interval_s = watchdog_interval_s
        self._socket: socket.socket | None = None
        self._closed = False
        self._unreachable_logged = False
        self._full_logged = False
        self.messages_sent = 0
        self.messages_dropped = 0
        """Messages dropped because the socket buffer was full (systemd busy)."""
        self.messages_failed = 0
        """Messages not delivered because the socket is gone or unusable (logged once)."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """Read ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID`` (default: ``os.environ``)."""
        env = read_notify_environment(os.environ if environ is None else environ, own_pid=os.getpid())
        return cls(address=env.address, watchdog_interval_s=env.watchdog_interval_s)

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to (and the notifier is not closed)."""
        return self._address is not None and not self._closed

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between ``watchdog()`` calls (half of ``WatchdogSec``); None when no watchdog watches us."""
        return self._watchdog_interval_s if self.enabled else None

    def ready(self, status: str | None = None) -> bool:
        """Startup finished (``Type=notify`` units stay "activating" until then), or a reload finished."""
        return self._send(ready_message(status))

    def watchdog(self) -> bool:
        """Proof of life; systemd kills and restarts us (``Restart=on-failure``) if none arrives in ``WatchdogSec``."""
        return self._send(watchdog_message())

    def stopping(self, status: str | None = None) -> bool:
        """A graceful stop has begun."""
        return self._send(stopping_message(status))

    def reloading(self, monotonic_usec: int) -> bool:
        """A reload has begun (pass ``time.monotonic_ns() // 1000``); call ``ready()`` when it is done."""
        return self._send(reloading_message(monotonic_usec))

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status``."""
        return self._send(status_message(text))

    def close(self) -> None:
        self._closed = True
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _send(self, message: bytes) -> bool:
        if self._address is None or self._closed:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A blocking send would stall the event loop while systemd is busy; drop instead.
                self._socket.setblocking(False)
            # sendto (not connect + send) so that a notify socket re-created by systemd (daemon-reexec) still works.
            self._socket.sendto(message, self._address)
        except BlockingIOError:
            self.messages_dropped += 1
            if not self._full_logged:
                self._full_logged = True
                log.warning("notify socket buffer full; dropping notifications", socket=self._printable_address())
            return False
        except (OSError, ValueError) as exc:  # ValueError: an address Python refuses before any syscall
            self.messages_failed += 1
            if not self._unreachable_logged:
                self._unreachable_logged = True
                log.warning(
                    "notify socket unreachable; further failures are not logged",
                    socket=self._printable_address(),
                    error=_describe(exc),
                )
            return False
        self.messages_sent += 1
        return True

    def _printable_address(self) -> str:  # the abstract namespace as systemd spells it
        address = self._address or ""
        return "@" + address[1:] if address.startswith("\0") else address


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, str(exc.errno))}: {exc.strerror}"
    return str(exc)
