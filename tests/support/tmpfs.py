"""A small tmpfs mounted for one test: a real file system that fills up, or turns read-only."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, *, size: str) -> Iterator[Path]:
    """``mount -t tmpfs -o size=SIZE tmpfs DIRECTORY`` for the block; skips the test where mounting is refused."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root, e.g. CI): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        _run("umount", "-l", str(directory))


def remount_read_only(directory: Path) -> None:
    """Make a tmpfs from ``mounted_tmpfs`` read-only (EROFS on every write)."""
    remounted = _run("mount", "-o", "remount,ro", str(directory))
    assert remounted.returncode == 0, remounted.stderr


def fill_disk(directory: Path) -> None:
    """Write a filler file until the file system is full (ENOSPC)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
