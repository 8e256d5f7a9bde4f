"""sd_notify client: pure parsing/formatting by table, then real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from structlog.testing import capture_logs

from gateway.notify import (
    SystemdNotifier,
    format_message,
    parse_notify_socket,
    parse_watchdog_interval_s,
    read_notify_environment,
    ready_message,
    reloading_message,
    status_message,
    stopping_message,
    watchdog_message,
)
from tests.support.systemd import NotifyListener

OWN_PID = 4242

# --- pure part ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "address"),
    [
        (None, None),
        ("", None),
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@/org/freedesktop/systemd1/notify/1", "\0/org/freedesktop/systemd1/notify/1"),
        ("@", None),  # an empty abstract name is not an address
        ("vsock:2:1234", None),  # systemd >= 253 in VMs; not a gateway's case
        ("run/relative", None),
    ],
)
def test_parse_notify_socket(value: str | None, address: str | None) -> None:
    assert parse_notify_socket(value) == address


@pytest.mark.parametrize(
    ("usec", "pid", "interval_s"),
    [
        (None, None, None),
        ("", None, None),
        ("30000000", None, 15.0),  # WatchdogSec=30 -> ping every 15 s
        ("30000000", str(OWN_PID), 15.0),
        ("30000000", str(OWN_PID + 1), None),  # inherited from a watched parent: not our watchdog
        ("30000000", "not-a-pid", None),
        ("1000", None, 0.0005),
        ("0", None, None),
        ("-5", None, None),
        ("30s", None, None),
    ],
)
def test_parse_watchdog_interval(usec: str | None, pid: str | None, interval_s: float | None) -> None:
    assert parse_watchdog_interval_s(usec, pid, own_pid=OWN_PID) == interval_s


def test_read_notify_environment_combines_both() -> None:
    env = read_notify_environment(
        {"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(OWN_PID)}, own_pid=OWN_PID
    )
    assert env.address == "\0sd"
    assert env.watchdog_interval_s == 1.0


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (ready_message(), b"READY=1"),
        (ready_message("publishing 12 devices"), b"READY=1\nSTATUS=publishing 12 devices"),
        (watchdog_message(), b"WATCHDOG=1"),
        (stopping_message(), b"STOPPING=1"),
        (stopping_message("draining"), b"STOPPING=1\nSTATUS=draining"),
        (reloading_message(123456789), b"RELOADING=1\nMONOTONIC_USEC=123456789"),
        (status_message("broker down\nspooling"), b"STATUS=broker down spooling"),  # a newline would split it
        (status_message("Zelle über 4,2 V"), "STATUS=Zelle über 4,2 V".encode()),
        (format_message({"A": "1", "B": "x\r\ny"}), b"A=1\nB=x y"),
    ],
)
def test_message_wire_format(message: bytes, wire: bytes) -> None:
    assert message == wire


def test_reloading_rejects_negative_timestamp() -> None:
    with pytest.raises(ValueError, match="monotonic_usec"):
        reloading_message(-1)


# --- real sockets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sends_exact_datagrams(abstract: bool) -> None:
    with NotifyListener(abstract=abstract) as listener, SystemdNotifier.from_environ(listener.environ) as notifier:
        assert notifier.enabled
        monotonic_usec = time.monotonic_ns() // 1000
        assert notifier.ready("up")
        assert notifier.watchdog()
        assert notifier.status("3 of 4 devices connected")
        assert notifier.reloading(monotonic_usec)
        assert notifier.ready()
        assert notifier.stopping()
        received = [listener.receive() for _ in range(6)]
        assert received == [
            b"READY=1\nSTATUS=up",
            b"WATCHDOG=1",
            b"STATUS=3 of 4 devices connected",
            f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}".encode(),
            b"READY=1",
            b"STOPPING=1",
        ]
        assert notifier.messages_sent == 6
        assert listener.pending() == []


def test_reads_os_environ_by_default_in_a_real_process() -> None:
    # The way systemd starts us: NOTIFY_SOCKET/WATCHDOG_* in the process environment, WATCHDOG_PID = our pid
    # (here the child's, so it is only known inside; the child reports what it parsed in its status).
    script = (
        "import os\n"
        "from gateway.notify import SystemdNotifier\n"
        "os.environ['WATCHDOG_PID'] = str(os.getpid())\n"
        "with SystemdNotifier.from_environ() as n:\n"
        "    n.ready(f'interval={n.watchdog_interval_s}')\n"
    )
    with NotifyListener() as listener:
        environ = {**os.environ, **listener.environ, "WATCHDOG_USEC": "30000000"}
        subprocess.run([sys.executable, "-c", script], env=environ, check=True, timeout=60)
        assert listener.receive() == b"READY=1\nSTATUS=interval=15.0"


def test_watchdog_interval_from_environ() -> None:
    with NotifyListener() as listener:
        ours = {**listener.environ, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
        assert SystemdNotifier.from_environ(ours).watchdog_interval_s == 15.0
        theirs = {**listener.environ, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
        assert SystemdNotifier.from_environ(theirs).watchdog_interval_s is None
        assert SystemdNotifier.from_environ(listener.environ).watchdog_interval_s is None


def test_inert_without_notify_socket() -> None:
    # A watchdog without a socket to feed it is no watchdog: nothing to do, nothing to report.
    notifier = SystemdNotifier.from_environ({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    results = [
        notifier.ready("up"),
        notifier.watchdog(),
        notifier.status("x"),
        notifier.reloading(1),
        notifier.stopping(),
    ]
    assert results == [False] * 5
    assert (notifier.messages_sent, notifier.messages_dropped, notifier.messages_failed) == (0, 0, 0)
    notifier.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_vanished_socket_is_logged_once_and_never_raises(abstract: bool) -> None:
    with NotifyListener(abstract=abstract) as listener, SystemdNotifier.from_environ(listener.environ) as notifier:
        assert notifier.ready()
        assert listener.receive() == b"READY=1"
        listener.vanish()
        with capture_logs() as logs:
            assert not notifier.watchdog()
            assert not notifier.status("still here")
            assert not notifier.stopping()
        assert notifier.messages_failed == 3
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert len(warnings) == 1
        assert warnings[0]["socket"] == listener.notify_socket
        assert warnings[0]["error"].startswith(("ENOENT", "ECONNREFUSED"))
        # systemd re-created its socket (daemon-reexec): we reach it again without being rebuilt.
        listener.rebind()
        assert notifier.watchdog()
        assert listener.receive() == b"WATCHDOG=1"


def test_full_socket_buffer_drops_and_counts_without_blocking() -> None:
    # Nobody reads the listener: the kernel queue fills (max_dgram_qlen, default 10 datagrams) and a blocking
    # sender would hang here forever. The non-blocking one drops and counts.
    attempts = 500
    with NotifyListener() as listener, SystemdNotifier.from_environ(listener.environ) as notifier:
        with capture_logs() as logs:
            started = time.monotonic()
            delivered = sum(notifier.watchdog() for _ in range(attempts))
            elapsed_s = time.monotonic() - started
        assert delivered == notifier.messages_sent
        assert notifier.messages_dropped > 0
        assert notifier.messages_sent + notifier.messages_dropped == attempts
        assert notifier.messages_failed == 0
        assert elapsed_s < 5.0
        assert [entry["event"] for entry in logs] == ["notify socket buffer full; dropping notifications"]
        assert len(listener.pending()) == delivered
        # Once systemd has read its queue, messages go through again.
        assert notifier.ready()
        assert listener.receive() == b"READY=1"


def test_closed_notifier_is_inert() -> None:
    with NotifyListener() as listener:
        with SystemdNotifier.from_environ(
            {**listener.environ, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
        ) as notifier:
            assert notifier.watchdog_interval_s == 0.5
        assert not notifier.enabled
        assert notifier.watchdog_interval_s is None
        assert not notifier.ready()
        assert listener.pending() == []
