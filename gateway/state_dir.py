"""The state directory's lock: two gateways (or a gateway and ``cellgate spool requeue``) never share a spool.

The lock is ``flock`` on the directory itself, opened read-only, so it also works on a read-only or full
file system where no lock file can be created. The holder's pid goes into ``cellgate.lock`` when the
directory is writable, only so that a refused second process can name it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError

LOCK_FILE_NAME = "cellgate.lock"


class StateDirBusyError(GatewayError):
    """Another process holds the state directory's lock."""


@dataclass(frozen=True, slots=True)
class StateDirLock:
    """What ``locked_state_dir`` could do: ``locked`` False means the directory could not even be opened."""

    locked: bool
    pid_written: bool
    problem: str | None
    """Why the lock or the pid file is missing (for one loud log line), None when both are in place."""


def lock_holder(state_dir: Path) -> str:
    """Who holds ``state_dir``'s lock: "cellgate pid N" from the pid file, else "another process"."""
    try:
        pid = (state_dir / LOCK_FILE_NAME).read_text(encoding="utf-8").strip()
    except OSError:
        pid = ""
    return f"cellgate pid {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def locked_state_dir(state_dir: Path) -> Iterator[StateDirLock]:
    """Hold ``state_dir``'s lock for the ``with`` block; StateDirBusyError when another process holds it.

    A directory that cannot be created, opened or locked (missing parent, EACCES, no flock) yields
    ``locked=False`` instead of failing: the caller runs (without a spool if it cannot be opened) and says so.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        yield StateDirLock(locked=False, pid_written=False, problem=f"cannot open {state_dir}: {exc}")
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                # A file system without flock (e.g. some network mounts): run, and say so.
                yield StateDirLock(locked=False, pid_written=False, problem=f"cannot lock {state_dir}: {exc}")
                return
            raise StateDirBusyError(
                f"the state directory {state_dir} is in use by {lock_holder(state_dir)}; "
                "give each gateway its own --state-dir"
            ) from exc
        problem: str | None = None
        try:
            (state_dir / LOCK_FILE_NAME).write_text(f"{os.getpid()}\n", encoding="utf-8")
        except OSError as exc:
            problem = f"cannot write {state_dir / LOCK_FILE_NAME}: {exc}"
        try:
            yield StateDirLock(locked=True, pid_written=problem is None, problem=problem)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
