"""Processes for the benchmark harness: Mosquitto, children with a ready line, and CPU/RSS from /proc.

Everything here is Linux-only on purpose: CPU time and memory come from ``/proc/<pid>/stat`` and
``/proc/<pid>/status`` of each process, so the numbers are the process's own and not the harness's.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------ /proc


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcSample:
    """CPU seconds (user + system, all threads) and memory of one process at one moment."""

    cpu_s: float
    rss_mb: float
    peak_rss_mb: float
    threads: int


def proc_sample(pid: int) -> ProcSample | None:
    """Read ``/proc/<pid>``; None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), counted from 1
    kib: dict[str, int] = {}
    threads = 0
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            kib[key] = int(rest.split()[0])
        elif key == "Threads":
            threads = int(rest)
    return ProcSample(
        cpu_s=(utime + stime) / CLOCK_TICKS_PER_S,
        rss_mb=kib.get("VmRSS", 0) / 1024,
        peak_rss_mb=kib.get("VmHWM", 0) / 1024,
        threads=threads,
    )


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``: how loaded the whole box was."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


# ------------------------------------------------------------------------------------------ children


class ChildError(RuntimeError):
    """A child process did not start as expected; the message carries the end of its output."""


class Child:
    """A child process; stderr goes to ``log_path``, and stdout too with ``stdout_to_log`` (a process that logs
    a lot, like the gateway, must never block on a pipe nobody reads), else stdout is a pipe we read lines from.
    """

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None, stdin_pipe: bool = False, stdout_to_log: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        log = log_path.open("ab")
        try:
            self.process: subprocess.Popen[str] = subprocess.Popen(
                list(argv), cwd=cwd, env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
                stdout=log if stdout_to_log else subprocess.PIPE, stderr=log, text=True,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def read_line(self, timeout_s: float) -> str:
        """The next stdout line (without the newline); ChildError on timeout or exit."""
        stdout = self.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if not selector.select(timeout=timeout_s):
                raise ChildError(f"{self.name}: no output within {timeout_s:.0f} s; log:\n{self.log_tail()}")
        line = stdout.readline()
        if not line:
            status = self.process.wait(timeout=5)
            raise ChildError(f"{self.name} exited with status {status}; log:\n{self.log_tail()}")
        return line.rstrip("\n")

    def wait_for_prefix(self, prefix: str, timeout_s: float) -> str:
        """Read lines until one starts with ``prefix``; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.read_line(max(0.01, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line

    def send(self, line: str) -> None:
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None, f"{self.name} has no stdin pipe"
        stdin.write(line + "\n")
        stdin.flush()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> tuple[int, str]:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit status and what it still wrote on stdout."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            # communicate() also drains stdout, so a child that prints on exit cannot block on a full pipe.
            rest, _ = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            rest, _ = self.process.communicate()
        return self.process.returncode, rest or ""


class Broker:
    """Mosquitto on a free 127.0.0.1 port, no persistence, queues large enough for a benchmark."""

    def __init__(self, workdir: Path, *, max_inflight_messages: int = 20) -> None:
        self.max_inflight_messages = max_inflight_messages
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.workdir / "mosquitto.log").read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def start(self, timeout_s: float = 5.0, *, same_port: bool = False) -> None:
        """Start on a free port, or (``same_port``, after a ``stop``) on the port of the previous start."""
        for _ in range(1 if same_port else 3):  # another process may take the free port before mosquitto binds it
            if not same_port:
                self.port = free_port()
            config = self.workdir / "mosquitto.conf"
            lines = [
                f"listener {self.port} {HOST}",
                "allow_anonymous true",
                "persistence false",
                # A slow subscriber must show up as loss we can count, not as unbounded broker memory.
                "max_queued_messages 1000000",
                # Also the Receive Maximum Mosquitto announces to MQTT 5 clients: the gateway's window.
                f"max_inflight_messages {self.max_inflight_messages}",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
            ]
            if os.geteuid() == 0:
                lines.append("user root")
            config.write_text("\n".join(lines) + "\n")
            with (self.workdir / "mosquitto.log").open("ab") as log:
                self.process = subprocess.Popen(
                    [MOSQUITTO, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with socket.create_connection((HOST, self.port), timeout=0.2):
                        return
                except OSError:
                    time.sleep(0.02)
            self.stop()
        raise ChildError(f"mosquitto did not start; log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
