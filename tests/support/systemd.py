"""Test helpers for the systemd integration: a real sd_notify listener and a unit-file parser.

* ``NotifyListener`` binds an AF_UNIX SOCK_DGRAM socket, at a short filesystem path or in the abstract
  namespace, and hands out ``environ`` for ``SystemdNotifier.from_environ`` (``NOTIFY_SOCKET`` spelled as
  systemd spells it). ``receive()`` waits for one datagram; ``pending()`` returns what has arrived, without waiting.
* ``parse_unit(text)`` reads a unit file into ``{section: {key: [values...]}}``: systemd allows repeated keys
  (``DeviceAllow=``, ``SystemCallFilter=``) and line continuations, which ``configparser`` does not model.
* ``systemd_analyze_verify(paths)`` runs ``systemd-analyze verify``; ``systemd_analyze_unusable_reason(dir)`` says
  why it cannot run here (or None); ``with_existing_executables(text, replacements=...)`` points Exec*= lines at
  binaries that exist on this machine, which verify insists on.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

RECEIVE_TIMEOUT_S = 30.0  # a deadline for a datagram that must come: a loaded machine starts a gateway slowly


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket that records what the gateway sends."""

    def __init__(self, *, abstract: bool = False) -> None:
        self.abstract = abstract
        self._dir: str | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"cellgate-test-{uuid.uuid4().hex}"
            self.notify_socket = "@" + name
            self.sock.bind("\0" + name)
        else:
            # pytest's tmp_path can exceed the 108-byte AF_UNIX limit; a short directory of our own cannot.
            self._dir = tempfile.mkdtemp(prefix="cg-notify-")
            self.path = Path(self._dir) / "notify"
            self.notify_socket = str(self.path)
            self.sock.bind(self.notify_socket)
        self.sock.settimeout(RECEIVE_TIMEOUT_S)

    @property
    def environ(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.notify_socket}

    def receive(self) -> bytes:
        """The next datagram; raises TimeoutError after RECEIVE_TIMEOUT_S."""
        return self.sock.recv(65536)

    async def receive_async(self) -> bytes:
        """The next datagram without blocking the event loop; raises TimeoutError after RECEIVE_TIMEOUT_S."""
        return await asyncio.to_thread(self.receive)

    def pending(self) -> list[bytes]:
        """Every datagram already queued, without waiting."""
        received: list[bytes] = []
        # With a timeout set, Python waits for readability even under MSG_DONTWAIT; go non-blocking meanwhile.
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    received.append(self.sock.recv(65536))
                except BlockingIOError:
                    return received
        finally:
            self.sock.settimeout(RECEIVE_TIMEOUT_S)

    def vanish(self) -> None:
        """Close the socket and remove its path: systemd went away (or was never there)."""
        self.sock.close()
        if not self.abstract:
            self.path.unlink(missing_ok=True)

    def rebind(self) -> None:
        """A new socket at the same address, as after ``systemctl daemon-reexec``."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = "\0" + self.notify_socket[1:] if self.abstract else self.notify_socket
        self.sock.bind(address)
        self.sock.settimeout(RECEIVE_TIMEOUT_S)

    def close(self) -> None:
        self.vanish()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


UnitFile = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> UnitFile:
    """``[Section]`` / ``Key=Value`` lines -> ``{section: {key: [value, ...]}}`` in file order.

    Follows systemd.syntax(7) as far as our units use it: ``#``/``;`` comment lines, trailing-backslash
    continuations, whitespace around ``=`` ignored. An empty assignment (``CapabilityBoundingSet=``) is kept as
    ``""`` because for systemd it means something (reset / empty set).
    """
    sections: UnitFile = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"not a unit-file line: {raw!r}")
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def cellgate_script() -> Path | None:
    """The installed ``cellgate`` console script of the running interpreter's environment, if any."""
    candidate = Path(sys.executable).parent / "cellgate"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("cellgate")
    return Path(found) if found else None


SYSTEMD_ANALYZE = Path("/usr/bin/systemd-analyze")
VERIFY_ARGS = ("verify", "--man=no", "--recursive-errors=no")
VERIFY_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    returncode: int
    output: str
    """stdout and stderr together: verify prints its findings on stderr and exits 0 for mere warnings."""

    def lines_about(self, unit_name: str, unit_path: Path) -> list[str]:
        return [line for line in self.output.splitlines() if unit_name in line or str(unit_path) in line]


def systemd_analyze_verify(unit_paths: list[Path]) -> VerifyResult:
    """Run ``systemd-analyze verify`` on unit files (not installed ones) the way an administrator would."""
    completed = subprocess.run(
        [str(SYSTEMD_ANALYZE), *VERIFY_ARGS, *map(str, unit_paths)],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_S,
        # No pager, no colour, and nothing borrowed from a user session.
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
        check=False,
    )
    return VerifyResult(returncode=completed.returncode, output=completed.stdout + completed.stderr)


def systemd_analyze_unusable_reason(workdir: Path) -> str | None:
    """None when ``systemd-analyze verify`` works here; otherwise why not, in its own words.

    Probes with a minimal unit that is valid everywhere, so a failure is the tool's or the container's, not ours.
    """
    if not SYSTEMD_ANALYZE.exists():
        return f"{SYSTEMD_ANALYZE} is not installed"
    probe = workdir / "cellgate-verify-probe.service"
    probe.write_text(f"[Unit]\nDescription=probe\n\n[Service]\nType=simple\nExecStart={shutil.which('true')}\n")
    try:
        result = systemd_analyze_verify([probe])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEMD_ANALYZE} cannot run here: {exc}"
    finally:
        probe.unlink()
    if result.returncode != 0 or result.output.strip():
        return (
            f"{SYSTEMD_ANALYZE} {' '.join(VERIFY_ARGS)} rejects even a minimal valid unit in this environment "
            f"(exit {result.returncode}): {result.output.strip()}"
        )
    return None


def with_existing_executables(unit_text: str, *, replacements: Mapping[str, Path]) -> str:
    """The unit with the executables of Exec*= lines swapped for ones that exist here.

    ``verify`` refuses a unit whose ExecStart binary is missing; on a build machine /opt/cellgate does not exist.
    Only the executable is replaced, the arguments stay as written.
    """
    lines = []
    for line in unit_text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().startswith("Exec"):
            executable, space, arguments = value.strip().partition(" ")
            if executable in replacements:
                line = f"{key}={replacements[executable]}{space}{arguments}"
        lines.append(line)
    return "\n".join(lines) + "\n"
