"""The live view of ``cellgate demo`` and ``cellgate tail``: the latest payload per topic, rendered as text.

A paho-mqtt subscriber thread (paho is in the ``demo`` and ``test`` extras, imported only when a view starts)
feeds ``LiveView``; the event loop renders it every interval. ``render_view`` is pure: topics in the UNS layout
``{enterprise}/{site}/{area}/{line}/{equipment}/{tag...}``, the equipment's ``_status`` and the gateway's
``{enterprise}/{site}/_gateway/{id}/status`` become one block per equipment under a header. Event records
(``.../{equipment}/_events/{event}``) feed a ``gateway.genealogy.Genealogy``: the view ends with the last finished
cells and their genealogy (``render_cells``). Quality is shown by colour (ANSI) when asked for, i.e. on a
terminal; the text is the same either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

import orjson

from gateway.genealogy import CellGenealogy, Genealogy, RollGenealogy
from gateway.tagmap.events import EVENTS_SEGMENT

TAGS_SHOWN_PER_EQUIPMENT: Final = 12
CELLS_SHOWN: Final = 5
GENEALOGY_RECORDS_KEPT: Final = 20_000
"""Event records the view keeps for the genealogy (the oldest go first): some days of the simulated line."""
GRADES: Final = {0: "-", 1: "A", 2: "B", 3: "C", 4: "NG"}
CLEAR_SCREEN: Final = "\x1b[H\x1b[2J"

# ANSI SGR colours: quality good / uncertain / bad, and states (connected, disconnected, offline).
GREEN: Final = "\x1b[32m"
YELLOW: Final = "\x1b[33m"
RED: Final = "\x1b[31m"
BOLD: Final = "\x1b[1m"
RESET: Final = "\x1b[0m"
QUALITY_COLOURS: Final = {"good": GREEN, "uncertain": YELLOW, "bad": RED}
# Topic tails the view does not show as tags: the retained catalogue, and batches (recorded per tag instead).
BATCH: Final = "_batch"
SKIPPED_TAGS: Final = frozenset({"_meta", BATCH, EVENTS_SEGMENT})


@dataclass(slots=True)
class LiveView:
    """Latest JSON-object payload per topic, fed from the subscriber thread; rendered by the event loop.

    The samples of a ``_batch`` are recorded as if each had come on its own tag topic; event records also go to
    ``genealogy``."""

    topic_filter: str
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: int = 0
    connected: bool = False  # the subscriber's link to the broker, set from its thread
    lock: threading.Lock = field(default_factory=threading.Lock)
    genealogy: Genealogy = field(default_factory=lambda: Genealogy(max_records=GENEALOGY_RECORDS_KEPT))

    def record(self, topic: str, payload: bytes) -> None:
        try:
            body = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            return
        if not isinstance(body, dict):
            return
        entries = {topic: body}
        if topic.endswith("/" + BATCH) and isinstance(body.get("samples"), list):
            # A batch (publish: batch) carries the samples that changed: each becomes its tag's latest value.
            base = topic[: -len(BATCH) - 1]
            entries = {
                f"{base}/{sample['tag']}": sample
                for sample in body["samples"]
                if isinstance(sample, dict) and isinstance(sample.get("tag"), str) and sample["tag"]
            }
        with self.lock:
            self.latest.update(entries)
            self.messages += 1
            if f"/{EVENTS_SEGMENT}/" in topic:
                self.genealogy.add(topic, payload)

    def set_connected(self, connected: bool) -> None:
        with self.lock:
            self.connected = connected

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], int, bool]:
        """The latest payload per topic, the number of messages so far, and whether the broker is connected."""
        with self.lock:
            return dict(self.latest), self.messages, self.connected

    def last_cells(self, count: int = CELLS_SHOWN) -> list[CellGenealogy]:
        """The latest cells with their genealogy (``Genealogy.last_cells``)."""
        with self.lock:
            return self.genealogy.last_cells(count)


def _paint(text: str, colour: str | None, enabled: bool) -> str:
    return f"{colour}{text}{RESET}" if enabled and colour else text


def format_value(body: Mapping[str, Any], *, colour: bool = False) -> str:
    """``3.712 V``, or ``None A (bad: comm_failure)`` for a value that is not good; coloured by quality."""
    value = body.get("value")
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    unit = body.get("unit")
    if unit:
        text += f" {unit}"
    quality = body.get("quality")
    if quality not in (None, "good"):
        text += f" ({quality}: {body.get('status')})"
    return _paint(text, QUALITY_COLOURS.get(str(quality)), colour)


def _shorten(tag: str, width: int) -> str:
    return tag if len(tag) <= width else "…" + tag[-(width - 1) :]


def _pad(text: str, plain: str, width: int) -> str:
    """``text`` (maybe with colour codes) padded to ``width`` by the length of its ``plain`` form."""
    return text + " " * max(width - len(plain), 0)


def render_view(
    latest: Mapping[str, Mapping[str, Any]],
    *,
    prefix: str | None,
    messages: int,
    rate: float,
    colour: bool = False,
    hint: str = "Ctrl-C stops the demo",
    broker_connected: bool | None = None,
    finished_cells: Sequence[CellGenealogy] = (),
) -> str:
    """A compact text view: the gateways' status, then one block per equipment with its link state and tags,
    then ``finished_cells`` with their genealogy (``render_cells``; nothing while there are none).

    ``prefix`` (``enterprise/site``) is left out of the equipment names; with None every ``enterprise/site`` seen
    is shown, and stays part of the names. ``broker_connected`` None leaves the broker's state out of the header.
    """
    equipment: dict[str, dict[str, Mapping[str, Any]]] = {}
    statuses: dict[str, Mapping[str, Any]] = {}
    gateways: dict[str, bool] = {}
    head = 0 if prefix is None else len(prefix.split("/"))
    for topic, body in latest.items():
        if prefix is not None and not topic.startswith(prefix + "/"):
            continue
        parts = topic.split("/")
        site, rest = parts[:2], parts[2:]
        if len(rest) >= 2 and rest[0] == "_gateway":
            name = "/".join([*site, rest[1]]) if prefix is None else rest[1]
            gateways[name] = bool(body.get("online"))
            continue
        if len(rest) < 4:
            continue
        key = "/".join(parts[head:5])
        tag = "/".join(parts[5:])
        if tag == "_status":
            statuses[key] = body
        elif parts[5] in SKIPPED_TAGS:  # also the further parts of a split catalogue, _meta/2 ...
            continue
        else:
            equipment.setdefault(key, {})[tag] = body
    if gateways:
        gateway_text = "  ".join(
            f"gateway {name}: " + (_paint("online", GREEN, colour) if online else _paint("OFFLINE", RED, colour))
            for name, online in sorted(gateways.items())
        )
    else:
        gateway_text = "gateway: unknown"
    title = prefix if prefix is not None else "all sites"
    if broker_connected is None:
        broker_text = ""
    elif broker_connected:
        broker_text = "broker: " + _paint("connected", GREEN, colour) + "  "
    else:
        broker_text = "broker: " + _paint("NOT CONNECTED (retrying)", RED, colour) + "  "
    lines = [
        f"{_paint(title, BOLD, colour)}  {broker_text}{gateway_text}  {messages} messages ({rate:.0f}/s)  {hint}"
    ]
    for key in sorted(set(equipment) | set(statuses)):
        tags = equipment.get(key, {})
        status = statuses.get(key)
        if status is None:
            state = "no status yet"
        elif status.get("connected"):
            state = _paint("connected", GREEN, colour)
        else:
            state = _paint(f"DISCONNECTED ({status.get('error')})", RED, colour)
        lines.append("")
        lines.append(f"{key}  [{state}]  {len(tags)} tags seen")
        shown = sorted(tags)[:TAGS_SHOWN_PER_EQUIPMENT]
        cells = [
            f"{_shorten(tag, 30):>30} = "
            + _pad(format_value(tags[tag], colour=colour), format_value(tags[tag]), 18)
            for tag in shown
        ]
        for row in range(0, len(cells), 2):
            lines.append("  " + "  ".join(cells[row : row + 2]).rstrip())
        if len(tags) > len(shown):
            lines.append(f"  ... and {len(tags) - len(shown)} more")
    if finished_cells:
        lines.append("")
        lines.extend(render_cells(finished_cells, colour=colour))
    return "\n".join(lines)


def _number(value: object, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def _roll_text(role: str, roll: RollGenealogy) -> str:
    """``cathode CL01-R000201 <- CT01-R000101 coat 220.5±1.5 g/m2``: the roll, the rolls it was made from, and
    the first roll's coat weight when its record was seen (``?`` marks a roll without a record)."""
    chain = roll.chain()
    text = f"{role} " + " <- ".join(link.roll_id + ("" if link.record is not None else "?") for link in chain)
    origin = chain[-1].record
    if origin is not None and "coat_weight_mean" in origin.fields:
        mean, std = origin.fields.get("coat_weight_mean"), origin.fields.get("coat_weight_std")
        text += f" coat {_number(mean)}±{_number(std)} g/m2"
    return text


def render_cells(cells: Sequence[CellGenealogy], *, colour: bool = False) -> list[str]:
    """The lines of the genealogy block: per cell its id, where and how it finished (grade, discharge capacity),
    or that it is stacked and not graded yet, then its rolls (README "Traceability")."""
    lines = [f"{_paint('cells', BOLD, colour)}  (newest first; ? = no record of that roll seen)"]
    for cell in cells:
        finished = cell.finished
        if finished is None:
            state = "stacked, not graded yet"
        else:
            grade = finished.fields.get("grade")
            name = GRADES.get(grade, str(grade)) if isinstance(grade, int) else "?"
            good = name in ("A", "B", "C")
            state = (f"{finished.equipment} grade " + _paint(name, GREEN if good else RED, colour)
                     + f"  {_number(finished.fields.get('discharge_capacity'))} A.h")
        lines.append(f"  {cell.cell_id}  {state}")
        if cell.stacked is None:
            lines.append("      no stacker record (made before the gateway ran)")
        else:
            lines.append("      " + " | ".join(_roll_text(role, roll) for role, roll in cell.rolls.items()))
    return lines


def start_subscriber(
    host: str, port: int, protocol: str, view: LiveView, *, client_name: str, tls: bool = False,
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
    username: str | None = None, password: str | None = None,
) -> Any:
    """A paho-mqtt client subscribed to ``view.topic_filter`` in its own thread (``loop_stop`` ends it).

    Raises ImportError when paho-mqtt is not installed: callers check first (see ``missing_paho``).
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    version = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_name}-{time.time_ns()}", protocol=version)
    if tls:
        client.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
    if username is not None:
        client.username_pw_set(username, password)

    def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if reason.is_failure:
            return
        view.set_connected(True)
        c.subscribe(view.topic_filter, qos=0)

    def on_disconnect(_c: Any, _u: Any, _f: Any, _reason: Any, _p: Any = None) -> None:
        view.set_connected(False)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        view.record(msg.topic, msg.payload)

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    client.reconnect_delay_set(min_delay=1, max_delay=5)
    client.connect_async(host, port, keepalive=30)
    client.loop_start()
    return client


def missing_paho() -> bool:
    """True when paho-mqtt (the view's subscriber, from the ``demo`` extra) cannot be imported."""
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        return True
    return False


async def show(
    view: LiveView, stop: asyncio.Event, *, prefix: str | None, out: TextIO, tty: bool, interval_s: float,
    hint: str, broker_state: bool = False,
) -> None:
    """Render ``view`` to ``out`` every ``interval_s`` until ``stop``: a refreshed, coloured screen on a terminal,
    otherwise plain blocks one after the other (for a pipe or a log file). ``broker_state``: show whether the
    subscriber is connected (the demo's embedded broker always is)."""
    last_count, last_time = 0, time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        latest, count, connected = view.snapshot()
        now = time.monotonic()
        rate = (count - last_count) / max(now - last_time, 1e-6)
        last_count, last_time = count, now
        text = render_view(latest, prefix=prefix, messages=count, rate=rate, colour=tty, hint=hint,
                           broker_connected=connected if broker_state else None, finished_cells=view.last_cells())
        out.write(CLEAR_SCREEN + text + "\n" if tty else text + "\n\n")
        out.flush()
