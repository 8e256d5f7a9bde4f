"""``cellgate tail [-c MAP | --broker URL] [TOPIC_FILTER]``: the demo's live view against any broker.

With ``-c`` the broker (URL, protocol, credentials, TLS files) and the default filter ``{enterprise}/{site}/#``
come from the tag map; with ``--broker`` the filter defaults to ``#`` and every site seen is shown. Only reads:
it subscribes with QoS 0 and publishes nothing.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass
from typing import Final, TextIO
from urllib.parse import unquote, urlsplit

from gateway.errors import ConfigError, GatewayError
from gateway.live_view import LiveView, missing_paho, show, start_subscriber

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
TTY_INTERVAL_S: Final = 1.0
PIPE_INTERVAL_S: Final = 5.0
DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}
HINT: Final = "Ctrl-C stops"


@dataclass(frozen=True, slots=True, kw_only=True)
class TailTarget:
    """Where ``tail`` subscribes and what it shows."""

    host: str
    port: int
    protocol: str
    topic_filter: str
    prefix: str | None  # enterprise/site left out of the equipment names; None: show every site
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None


def filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not an MQTT topic filter, or None (``#`` only last, ``+`` a whole level)."""
    if not topic_filter:
        return "an empty topic filter"
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return f"topic filter {topic_filter!r}: '#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return f"topic filter {topic_filter!r}: '+' must be a whole level"
    return None


def target_from_url(url: str, topic_filter: str | None, *, protocol: str) -> TailTarget:
    """``mqtt://[user:password@]host[:port]`` (or mqtts://); raises ValueError for anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"--broker {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ValueError(f"--broker {url!r}: {exc}") from None
    return TailTarget(
        host=parts.hostname, port=port, protocol=protocol, topic_filter=topic_filter or "#", prefix=None,
        tls=scheme == "mqtts",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def target_from_map(config: str, topic_filter: str | None) -> TailTarget:
    """The tag map's broker and site; raises ConfigError (bad map) or GatewayError (unreadable password file)."""
    from gateway.secrets import read_secret_file
    from gateway.tagmap import load_plant

    plant = load_plant(config)
    mqtt = plant.mqtt
    prefix = f"{plant.gateway.enterprise}/{plant.gateway.site}"
    password = mqtt.password.get_secret_value() if mqtt.password is not None else None
    if password is None and mqtt.password_file is not None:
        password = read_secret_file(mqtt.password_file)
    return TailTarget(
        host=mqtt.host, port=mqtt.port, protocol=mqtt.protocol, topic_filter=topic_filter or prefix + "/#",
        # A filter reaching beyond the map's site shows every site seen, the names with their enterprise/site.
        prefix=prefix if topic_filter is None or topic_filter.startswith(prefix + "/") else None,
        tls=mqtt.tls, ca_file=mqtt.ca_file, cert_file=mqtt.cert_file, key_file=mqtt.key_file,
        username=mqtt.username, password=password,
    )


async def _tail(target: TailTarget, *, out: TextIO, interval_s: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    view = LiveView(topic_filter=target.topic_filter)
    client = start_subscriber(
        target.host, target.port, target.protocol, view, client_name="cellgate-tail", tls=target.tls,
        ca_file=target.ca_file, cert_file=target.cert_file, key_file=target.key_file,
        username=target.username, password=target.password,
    )
    tty = out.isatty()
    try:
        await show(
            view, stop, prefix=target.prefix, out=out, tty=tty,
            interval_s=interval_s or (TTY_INTERVAL_S if tty else PIPE_INTERVAL_S),
            hint=f"{target.host}:{target.port} {target.topic_filter}  {HINT}", broker_state=True,
        )
    finally:
        client.loop_stop()
        client.disconnect()


def run_tail(
    *, config: str | None, broker_url: str | None, topic_filter: str | None, protocol: str,
    interval_s: float | None,
) -> int:
    if missing_paho():
        print("cellgate tail: paho-mqtt missing; install the demo extra: pip install 'cellgate[demo]'",
              file=sys.stderr)
        return EXIT_USAGE
    bad_filter = None if topic_filter is None else filter_problem(topic_filter)
    if bad_filter is not None:
        print(f"cellgate tail: {bad_filter}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if config is not None:
            target = target_from_map(config, topic_filter)
        else:
            target = target_from_url(broker_url or "mqtt://127.0.0.1:1883", topic_filter, protocol=protocol)
    except ConfigError as exc:
        for config_problem in exc.problems:
            print(config_problem, file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, GatewayError) as exc:
        print(f"cellgate tail: {exc}", file=sys.stderr)
        return EXIT_USAGE
    asyncio.run(_tail(target, out=sys.stdout, interval_s=interval_s))
    return EXIT_OK
