"""Protocol limits, in one place: the tag-map validation and the Modbus read planner both import them.

Modbus numbers come from the Modbus Application Protocol Specification v1.1b3 (section 6): a read PDU is
capped at 253 bytes, so one "read holding/input registers" returns at most 125 registers (250 bytes) and
one "read coils/discrete inputs" at most 2000 bits. Addresses are 16-bit, and serial unit ids above 247 are
reserved.
"""

from __future__ import annotations

from typing import Final

MAX_REGISTERS_PER_READ: Final = 125
"""Registers one Modbus read (function 3 or 4) may return."""

MAX_BITS_PER_READ: Final = 2000
"""Coils or discrete inputs one Modbus read (function 1 or 2) may return."""

MAX_ADDRESS: Final = 65535
"""Highest 0-based Modbus protocol address of any table."""

MAX_UNIT_ID: Final = 247
"""Highest Modbus unit (device/slave) id; 0 is broadcast, 248..255 are reserved."""

MAX_BIT_INDEX: Final = 15
"""Highest bit of a 16-bit register (bit 0 is the least significant)."""

MIN_INTERVAL_MS: Final = 10
"""Shortest poll / publishing interval a device may ask for, in milliseconds."""

MAX_REPEAT_COUNT: Final = 65536
"""Most instances one ``repeat`` may produce (guards against a typo creating millions of tags)."""

MAX_FORMAT_WIDTH: Final = 64
"""Largest width or precision a ``{n:...}`` placeholder (repeat ``name``, template ``node``) may ask for:
``{n:>999999999}`` would build a gigabyte of padding, and a name never needs more than a few digits."""

MAX_TAGS_PER_PLANT: Final = 100_000
"""Most tags one tag map may expand to (explicit tags + template tags x repeat counts), so that the gateway fits
in the systemd unit's ``MemoryMax`` (see ``MEASURED_PEAK_MB_AT_LIMIT``); a larger plant is split over several
gateways. Checked on the raw YAML data before anything is validated or expanded, so a few lines of aliases or
repeats (``- *device`` a thousand times) cannot make the loader build millions of tags."""

MEASURED_PEAK_MB_AT_LIMIT: Final = 390
"""Peak resident size (VmHWM, MiB) of ``cellgate run`` with a Modbus map of ``MAX_TAGS_PER_PLANT`` tags: start-up
(load, validate, expand, plan) and then reloads that rebuild every device, the highest peak, since a reload holds
the running channels and the new map at once. The larger of the per-tag and batch runs of
``benchmarks/memory.py limit`` (numbers in the README's Performance section)."""

MEMORY_MARGIN: Final = 0.15
"""Share of ``MEASURED_PEAK_MB_AT_LIMIT`` that ``MemoryMax`` must hold on top of it (a busier broker link, a
longer queue, another Python build); tests/unit/test_systemd_units.py checks the unit file against it."""

MIN_SPOOL_MB: Final = 1
"""Smallest ``spool.max_mb``. The spool counts topic + payload + a row overhead per message against its cap and
drops the oldest past it: below a megabyte it could not keep one batch of a large device or one ``_meta`` part
(256 KiB by default), and SQLite's own pages and write-ahead log take more than that anyway."""

MAX_MQTT_STRING_BYTES: Final = 65535
"""Longest MQTT string (client id, user name) or binary field (password), in bytes: a two-byte length prefix."""

MIN_PAYLOAD_ROOM_BYTES: Final = 256
"""Room a packet must leave for the payload when ``mqtt.max_packet_size`` is set: a per-tag payload with its
quality, timestamp, seq and a short text value. A topic that leaves less could never be published."""
