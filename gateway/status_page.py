"""The status page at ``/``: one server-rendered HTML document, no script, refreshed by ``<meta refresh>``.

Pure: ``render_status(state)`` returns the page; the HTTP listener serves it.
"""

from __future__ import annotations

import time
from html import escape

from gateway.health import Readiness
from gateway.metrics import DeviceState, GatewayState

REFRESH_S = 2
"""The page reloads itself this often."""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0.5rem;color:#111;background:#fafafa}
h1{font-size:1.2rem;margin:0.2rem 0}h2{font-size:1rem;margin:1rem 0 0.3rem}
table{border-collapse:collapse;width:100%;font-size:0.9rem}
th,td{text-align:left;padding:0.25rem 0.4rem;border-bottom:1px solid #ddd;vertical-align:top}
.wrap{overflow-x:auto}.up{color:#0a6b1f;font-weight:600}.down{color:#b00020;font-weight:600}
.unknown{color:#666}.err{color:#b00020;overflow-wrap:anywhere}dl{display:grid;grid-template-columns:auto 1fr;
gap:0.2rem 0.8rem;margin:0}dt{color:#555}dd{margin:0}
@media (max-width:640px){#devices thead{display:none}#devices tr{display:block;border-bottom:2px solid #bbb;
padding:0.3rem 0}#devices td{display:grid;grid-template-columns:7.5rem 1fr;border:0;padding:0.1rem 0.2rem}
#devices td::before{content:attr(data-label);color:#555}}
"""


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    full = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f'<time title="{full}">{full[11:]}</time> ({max(0.0, now - at):.0f} s ago)'


def _or_dash(value: int | None) -> str:
    return "–" if value is None else str(value)


def _link(device: DeviceState) -> tuple[str, str]:
    if device.connected is None:
        return "unknown", "unknown"
    return ("up", "up") if device.connected else ("down", "down")


def _device_row(device: DeviceState, state: GatewayState) -> str:
    css, text = _link(device)
    running_s = max(1.0, state.now - state.started)
    rate = device.messages / running_s
    return (
        f'<tr id="device-{escape(device.name)}" data-link="{text}">'
        f'<td data-label="Device"><span>{escape(device.name)} <small>{escape(device.protocol)}</small></span></td>'
        f'<td data-label="Link" class="{css}">{text}</td>'
        f'<td data-label="Since"><span>{_when(device.since, state.now)}</span></td>'
        f'<td data-label="Last good read"><span>{_when(device.last_message_at, state.now)}</span></td>'
        f'<td data-label="Error" class="err">{escape(device.error or "")}</td>'
        f'<td data-label="Tags">{device.tags}</td>'
        f'<td data-label="Msgs/s">{rate:.1f}</td>'
        f'<td data-label="Overruns">{_or_dash(device.source_count("overruns", "poll_overruns"))}</td>'
        "</tr>"
    )


def render_status(state: GatewayState, ready: Readiness) -> str:
    """The whole page for ``state``."""
    rows = "".join(_device_row(device, state) for device in state.devices)
    up = sum(1 for device in state.devices if device.connected)
    broker_css = "up" if state.mqtt_connected else "down"
    broker_text = "connected" if state.mqtt_connected else "disconnected"
    failover = ", ".join(escape(b) for b in state.brokers[1:]) or "none"
    failed = sum(state.failed_by_reason.values())
    dropped = sum(state.spool_dropped_by_reason.values())
    spool = (
        f"{state.spool_messages} messages, {state.spool_bytes / 1e6:.1f} of {state.spool_max_bytes / 1e6:.0f} MB"
        if state.spool_available
        else '<span class="down">unavailable</span>'
    )
    events = "".join(
        f"<tr><td>{_when(event.at, state.now)}</td><td>{escape(event.device)}</td>"
        f'<td class="{"up" if event.connected else "down"}">{"up" if event.connected else "down"}</td>'
        f'<td class="err">{escape(event.error or "")}</td></tr>'
        for event in reversed(state.events)
    )
    sparkplug = state.sparkplug
    sparkplug_row = (
        ""
        if sparkplug is None
        else f'<dt>Sparkplug</dt><dd id="sparkplug">bdSeq {sparkplug.bd_seq}, {sparkplug.rebirths} rebirths, '
        f"{sparkplug.commands_refused} writes refused, {sparkplug.commands_malformed} malformed commands</dd>\n"
    )
    ready_css = "up" if ready.ready else "down"
    not_ready = ", ".join(name for name, ok in ready.checks.items() if not ok)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>Cellgate {escape(state.gateway_id)}</title><style>{_STYLE}</style></head>
<body>
<h1>Cellgate {escape(state.gateway_id)} <small>{escape(state.version)}</small></h1>
<p id="ready" class="{ready_css}">{"ready" if ready.ready else "not ready: " + escape(not_ready)}</p>
<h2>Devices <span id="devices-up">{up}/{len(state.devices)}</span> up</h2>
<div class="wrap"><table id="devices"><thead><tr><th>Device</th><th>Link</th><th>Since</th><th>Last good read</th>
<th>Error</th><th>Tags</th><th>Msgs/s</th><th>Overruns</th></tr></thead><tbody>{rows}</tbody></table></div>
<h2>Output</h2>
<dl>
<dt>Broker</dt><dd id="broker" class="{broker_css}">{broker_text} ({escape(state.broker)})</dd>
<dt>Fail-over</dt><dd>{failover}</dd>
<dt>In flight</dt><dd>{state.inflight}</dd>
<dt>Published</dt><dd>{state.published}</dd>
<dt>Failed</dt><dd>{failed}</dd>
<dt>Queue</dt><dd id="queue">{state.queue_messages} of {state.queue_capacity}</dd>
<dt>Spool</dt><dd id="spool">{spool}</dd>
<dt>Spooled / replayed</dt><dd>{state.spooled_total} / {state.replayed_total}</dd>
<dt>Spool dropped</dt><dd>{dropped}</dd>
<dt>Source restarts</dt><dd>{state.source_restarts}</dd>
{sparkplug_row}</dl>
<h2>Last link changes</h2>
<div class="wrap"><table id="events"><thead><tr><th>When</th><th>Device</th><th>Link</th><th>Error</th></tr></thead>
<tbody>{events}</tbody></table></div>
<p><small>Refreshes every {REFRESH_S} s. <a href="/metrics">metrics</a> · <a href="/readyz">readyz</a></small></p>
</body></html>
"""
