"""Tag maps for the benchmark scenarios, as YAML text (pure functions: sizes and addresses in, text out).

Every map uses ``repeat`` templates, as an integrator would, and no deadband: the bench servers change every
value on every read, so every tag is published on every cycle and the offered load is exactly
``tags * 1000 / interval_ms`` values per second.

The Modbus devices use the tag map's default of one request in flight (``max_concurrent_requests: 1``) unless
asked otherwise (``run.py --modbus-concurrent-requests N``). The raw bench server (``servers.py --impl raw``)
answers pipelined requests; pymodbus 3.16's server does not (it takes one frame per packet).
"""

from __future__ import annotations

ENTERPRISE = "bench"
SITE = "lab"
# Requests in flight per Modbus connection: the tag map's default.
MODBUS_CONCURRENT_REQUESTS = 1


def _header(
    *, broker_url: str, gateway_id: str, queue_size: int, qos: int, connections: int, protocol: str
) -> list[str]:
    # `connections` only when not the default, so the maps also load in a gateway without the setting.
    more = f", connections: {connections}" if connections != 1 else ""
    more += f', protocol: "{protocol}"'
    return [
        f"gateway: {{id: {gateway_id}, enterprise: {ENTERPRISE}, site: {SITE}, queue_size: {queue_size}}}",
        f'mqtt: {{url: "{broker_url}", qos: {qos}{more}}}',
    ]


def modbus_1k(
    *, broker_url: str, port: int, registers: int, interval_ms: int, publish: str,
    max_concurrent_requests: int = MODBUS_CONCURRENT_REQUESTS, qos: int = 1, connections: int = 1, protocol: str = "5",
) -> str:
    """One Modbus device with ``registers`` uint16 holding registers at 0..registers-1, one tag each."""
    lines = _header(
        broker_url=broker_url, gateway_id="bench-modbus", queue_size=10000, qos=qos, connections=connections,
        protocol=protocol,
    )
    lines += [
        "templates:",
        "  register:",
        "    - {name: value, address: 0, type: uint16}",
        "devices:",
        "  - name: plc-01",
        "    area: bench",
        "    line: line-1",
        "    protocol: modbus",
        "    host: 127.0.0.1",
        f"    port: {port}",
        f"    interval_ms: {interval_ms}",
        f"    publish: {publish}",
        f"    max_concurrent_requests: {max_concurrent_requests}",
        f"    repeat: {{template: register, count: {registers}, start: 0, stride: 1, name: 'hr{{n:05d}}'}}",
    ]
    return "\n".join(lines) + "\n"


# One formation channel: 8 tags in 13 of 16 registers, so reads merge into full 125-register requests.
HALL_CHANNEL = [
    "  channel:",
    "    - {name: voltage, address: 0, type: float32, unit: V}",
    "    - {name: current, address: 2, type: float32, unit: A}",
    "    - {name: capacity, address: 4, type: float32, unit: A.h}",
    "    - {name: energy, address: 6, type: float32, unit: W.h}",
    "    - {name: temperature, address: 8, type: int16, scale: 0.1, unit: Cel}",
    "    - {name: step, address: 9, type: uint16}",
    "    - {name: status, address: 10, type: uint16}",
    "    - {name: cell_time, address: 11, type: uint32, unit: s}",
]
HALL_TAGS_PER_CHANNEL = 8


def hall(
    *, broker_url: str, ports: list[int], channels: int, interval_ms: int, publish: str,
    max_concurrent_requests: int = MODBUS_CONCURRENT_REQUESTS, qos: int = 1, connections: int = 1, protocol: str = "5",
) -> str:
    """One Modbus rack per port, ``channels`` channels of 8 tags each (channel n at 1000 + 16 * (n - 1))."""
    lines = _header(
        broker_url=broker_url, gateway_id="bench-hall", queue_size=10000, qos=qos, connections=connections,
        protocol=protocol,
    )
    lines += ["templates:", *HALL_CHANNEL, "devices:"]
    for index, port in enumerate(ports, start=1):
        lines += [
            f"  - name: rack-{index:02d}",
            "    area: formation",
            "    line: hall-a",
            "    protocol: modbus",
            "    host: 127.0.0.1",
            f"    port: {port}",
            f"    interval_ms: {interval_ms}",
            f"    publish: {publish}",
            f"    max_concurrent_requests: {max_concurrent_requests}",
            f"    repeat: {{template: channel, count: {channels}, start: 1000, stride: 16, name: 'ch{{n:03d}}'}}",
        ]
    return "\n".join(lines) + "\n"


def opcua_20k(
    *, broker_url: str, endpoint: str, namespace: str, objects: int, per_object: int, interval_ms: int,
    publish: str, timeout_ms: int, secure: bool = False, qos: int = 1, connections: int = 1, protocol: str = "5",
) -> str:
    """One OPC UA device subscribing to ``objects * per_object`` variables ``s=B{object:03d}.V{index:03d}``
    (``secure``: over the strongest policy the server offers, SignAndEncrypt)."""
    lines = _header(
        broker_url=broker_url, gateway_id="bench-opcua", queue_size=10000, qos=qos, connections=connections,
        protocol=protocol,
    )
    lines += ["templates:", "  block:"]
    lines += [f'    - {{name: v{k:03d}, node: "s=B{{n:03d}}.V{k:03d}", type: float64}}' for k in range(per_object)]
    lines += [
        "devices:",
        "  - name: server-01",
        "    area: bench",
        "    line: line-1",
        "    protocol: opcua",
        f"    endpoint: {endpoint}",
        f"    namespace: {namespace}",
        "    mode: subscribe",
        f"    interval_ms: {interval_ms}",
        f"    publish: {publish}",
        f"    timeout_ms: {timeout_ms}",
        # Two values per item per Publish. asyncua's client keeps one PublishRequest outstanding; while a
        # 20,000-item response is encoded, sent and read the server holds none, and a publishing cycle that falls
        # in that time waits for the next request. Meanwhile the next 1 Hz write of the same variable would
        # overwrite the one still waiting if the item kept only one value (with one slot, about 6 % of the
        # values never left the server). Two slots keep every write.
        "    queue_size: 2",
        f"    repeat: {{template: block, count: {objects}, first: 0, name: 'b{{n:03d}}'}}",
    ]
    if secure:
        lines.append("    security: {policy: auto, mode: SignAndEncrypt}")
    return "\n".join(lines) + "\n"


def with_device_setting(text: str, key: str, value: int) -> str:
    """``text`` with ``key: value`` added to every device (after its ``protocol:`` line)."""
    out: list[str] = []
    for line in text.splitlines():
        out.append(line)
        if line.startswith("    protocol: "):
            out.append(f"    {key}: {value}")
    return "\n".join(out) + "\n"


SPARKPLUG_GROUP = "Bench"
OUTPUTS = {"uns-json": ("uns-json",), "sparkplug": ("sparkplug",), "both": ("uns-json", "sparkplug")}
"""``run.py --outputs`` choices -> the gateway's ``outputs``."""


def with_outputs(text: str, outputs: str) -> str:
    """``text`` with the gateway's ``outputs`` for ``outputs`` (a key of OUTPUTS) and, when it lists Sparkplug, a
    ``sparkplug`` section (group SPARKPLUG_GROUP; the edge node is the gateway id). Unchanged for ``uns-json``,
    the default, so the map also loads in a gateway without the setting."""
    chosen = OUTPUTS[outputs]
    if chosen == ("uns-json",):
        return text
    extra = f", outputs: [{', '.join(chosen)}]"
    if "sparkplug" in chosen:
        extra += f", sparkplug: {{group_id: {SPARKPLUG_GROUP}}}"
    out = []
    for line in text.splitlines():
        if line.startswith("gateway: {") and line.endswith("}"):
            line = line[:-1] + extra + "}"
        out.append(line)
    return "\n".join(out) + "\n"
