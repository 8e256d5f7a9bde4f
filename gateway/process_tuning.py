"""Process tuning for a long-running gateway: the cyclic garbage collector and returning freed heap to the OS.

Called by the runtime after start-up and after every reload, when the tag-map models used to build the plans
are garbage; ``memory_usage_mb`` is what the ``memory_released`` log line reports.
"""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path


def release_freed_memory() -> None:
    """Collect all garbage, frozen objects included, and hand freed heap pages back to the OS (``malloc_trim``).

    Building the read plans of a large tag map peaks well above what the running gateway keeps; without this,
    that peak stays in the resident size for good. After a reload the replaced channels and the cancelled
    sources (whose tasks, frames and CancelledError tracebacks form reference cycles) are garbage too. They were
    built before the last ``settle_garbage_collector`` (at start-up or the previous reload) and so are frozen, and
    a frozen object is never collected, nor is any cycle it belongs to: everything is unfrozen first. Call
    ``settle_garbage_collector`` afterwards to freeze what survived.
    """
    gc.unfreeze()
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return
    libc.malloc_trim(0)


def memory_usage_mb() -> dict[str, float]:
    """``rss_mb`` (resident now) and ``peak_rss_mb`` (high-water mark) of this process in MiB, from
    ``/proc/self/status``; empty where there is no such file. ``MemoryMax`` of the systemd unit bounds these."""
    try:
        status = Path("/proc/self/status").read_text(errors="replace")
    except OSError:
        return {}
    fields = {"VmRSS": "rss_mb", "VmHWM": "peak_rss_mb"}
    usage: dict[str, float] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in fields:
            usage[fields[key]] = round(int(rest.split()[0]) / 1024, 1)  # the kernel writes "123456 kB"
    return usage


GC_YOUNG_THRESHOLD = 50_000
"""Container allocations (net of frees) between two young-generation collections; CPython's default is 700."""


def settle_garbage_collector() -> None:
    """Freeze what start-up built and collect the young generation less often.

    The hot path allocates tens of thousands of short-lived tuples and payloads a second and frees nearly all of
    them by reference counting; what it holds a moment longer (queued messages, a Publish response's readings)
    is still counted by the cyclic collector, which with the default threshold of 700 ran several young and
    middle collections per poll cycle and now and then a full one over the whole tag plan (hundreds of
    thousands of objects). ``gc.freeze`` moves the start-up objects (plans, transforms, topics) out of every
    collection, and the higher young threshold makes the remaining collections rare. The gateway makes few
    reference cycles, so in practice garbage is still freed at once, by reference counting.
    """
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
