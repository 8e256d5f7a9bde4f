"""``cellgate demo``: simulators + an embedded MQTT broker + the gateway, with a live view of the latest values.

Everything binds 127.0.0.1. The ports in the tag map (config/demo.yaml: OPC UA 4840, Modbus 5020 rack-01,
5021 rack-02 and 5022 stacker-01, MQTT 1883) are used when free; a busy one is replaced by a free port and the
tag map is adjusted to match, so the demo starts even next to a running Mosquitto. ``--broker URL`` uses a real
broker instead of the embedded one.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from gateway.errors import ConfigError
from gateway.live_view import LiveView, show, start_subscriber
from gateway.observability import configure_logging
from gateway.runtime import Gateway
from gateway.tagmap import ModbusDevice, MqttSection, OpcUaDevice, Plant, load_plant

log = structlog.get_logger("cellgate.demo")

LOCALHOST = "127.0.0.1"
VIEW_INTERVAL_S = 1.0
PIPE_VIEW_INTERVAL_S = 5.0  # stdout is not a terminal: a new block every few seconds, not every second


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCALHOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or LOCALHOST
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class DemoPorts:
    opcua: int
    modbus: Mapping[str, int]  # Modbus device name -> port: every simulated Modbus machine has its own
    broker: int


def choose_ports(plant: Plant, *, any_ports: bool = False) -> DemoPorts:
    """The demo tag map's simulator ports, or free ones where those are busy; ``any_ports``: free ones throughout
    (two demos at once, e.g. in tests, would otherwise both find the map's ports free and race to bind them)."""
    opcua = next((urlsplit(d.endpoint).port or 4840 for d in plant.devices if isinstance(d, OpcUaDevice)), 4840)
    broker = plant.mqtt.port

    chosen: set[int] = set()

    def pick(wanted: int) -> int:
        """``wanted`` if it is free (and not ``any_ports``), else a free port; never one already chosen."""
        port = wanted if not any_ports and wanted not in chosen and port_is_free(wanted) else free_port()
        while port in chosen:
            port = free_port()
        chosen.add(port)
        return port

    opcua = pick(opcua)
    modbus = {device.name: pick(device.port) for device in plant.devices if isinstance(device, ModbusDevice)}
    return DemoPorts(opcua=opcua, modbus=modbus, broker=pick(broker))


def retarget_plant(plant: Plant, ports: DemoPorts, *, broker_url: str | None) -> Plant:
    """The same tag map pointed at the demo's simulators and broker."""
    devices: list[OpcUaDevice | ModbusDevice] = []
    for device in plant.devices:
        if isinstance(device, OpcUaDevice):
            devices.append(device.model_copy(update={"endpoint": _with_port(device.endpoint, ports.opcua)}))
        else:
            devices.append(device.model_copy(update={"port": ports.modbus.get(device.name, device.port)}))
    if broker_url is None:
        # amqtt speaks MQTT 3.1.1 only.
        mqtt: MqttSection = plant.mqtt.model_copy(
            update={"url": f"mqtt://{LOCALHOST}:{ports.broker}", "protocol": "3.1.1"}
        )
    else:
        mqtt = plant.mqtt.model_copy(update={"url": broker_url})
    return plant.model_copy(update={"devices": tuple(devices), "mqtt": mqtt})


async def _embedded_broker(port: int) -> Any:
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{LOCALHOST}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    return broker


DEMO_OPCUA_USER = "demo"


def secure_plant(plant: Plant, password: str) -> Plant:
    """The tag map with every OPC UA device on SignAndEncrypt (strongest policy) and a user-name login."""
    from pydantic import SecretStr

    from gateway.tagmap.model import OpcUaSecurity

    devices = [
        device.model_copy(
            update={"security": OpcUaSecurity(), "username": DEMO_OPCUA_USER, "password": SecretStr(password)}
        )
        if isinstance(device, OpcUaDevice)
        else device
        for device in plant.devices
    ]
    return plant.model_copy(update={"devices": tuple(devices)})


def trust_demo_server(plant: Plant, state_dir: Path, server_pki: Path) -> str:
    """Demo only: put the simulator's certificate in the gateway's trusted/ (a real gateway never does this)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from gateway.pki import Pki, application_uri, thumbprint

    pki = Pki(state_dir / "pki", uri=application_uri(plant.gateway.id))
    pki.ensure()
    cert = x509.load_der_x509_certificate((server_pki / "own" / "cert.der").read_bytes())
    thumb = thumbprint(cert)
    (pki.folder("trusted") / f"{thumb}.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return thumb


async def _demo(
    plant: Plant, *, broker_url: str | None, view_enabled: bool, secure: bool = False, any_ports: bool = False
) -> None:
    import secrets

    from simulators.runner import run_simulators
    from simulators.servers.opcua_server import ServerSecurity

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    ports = choose_ports(plant, any_ports=any_ports)
    plant = retarget_plant(plant, ports, broker_url=broker_url)
    password = secrets.token_urlsafe(18)  # made up per run, never printed
    if secure:
        plant = secure_plant(plant, password)
    broker = await _embedded_broker(ports.broker) if broker_url is None else None
    prefix = f"{plant.gateway.enterprise}/{plant.gateway.site}"
    print(
        f"cellgate demo: OPC UA opc.tcp://{LOCALHOST}:{ports.opcua}/  Modbus "
        f"{', '.join(f'{name} {LOCALHOST}:{port}' for name, port in ports.modbus.items())}  "
        f"MQTT mqtt://{plant.mqtt.host}:{plant.mqtt.port} ({'embedded' if broker else 'external'})\n"
        f"  try: mosquitto_sub -h {plant.mqtt.host} -p {plant.mqtt.port} -t '{prefix}/#' -v",
        flush=True,
    )
    view = LiveView(topic_filter=prefix + "/#")
    # The live view's subscriber (paho-mqtt, from the demo extra) runs only when there is a view.
    subscriber = (
        start_subscriber(plant.mqtt.host, plant.mqtt.port, plant.mqtt.protocol, view, client_name="cellgate-demo-view")
        if view_enabled
        else None
    )
    try:
        # The demo keeps no state between runs: its spool lives in a temporary directory.
        with tempfile.TemporaryDirectory(prefix="cellgate-demo-") as state_dir:
            server_pki = Path(state_dir) / "simulator-pki"
            security = ServerSecurity(pki_dir=server_pki, users={DEMO_OPCUA_USER: password}) if secure else None
            async with asyncio.TaskGroup() as group:
                simulators_ready = asyncio.Event()
                group.create_task(
                    run_simulators(
                        opcua_port=ports.opcua,
                        modbus_ports=ports.modbus,
                        stop=stop,
                        on_ready=lambda _running: simulators_ready.set(),
                        opcua_security=security,
                    ),
                    name="demo.simulators",
                )
                # Start the gateway once the simulators listen, so the demo does not open with connect errors.
                await simulators_ready.wait()
                if secure:
                    thumb = trust_demo_server(plant, Path(state_dir), server_pki)
                    print(
                        f"cellgate demo --secure: OPC UA over the strongest policy with SignAndEncrypt, user "
                        f"{DEMO_OPCUA_USER!r}; the simulator's certificate {thumb} was trusted automatically "
                        "(demo only: a real gateway puts unknown servers in rejected/ until `cellgate pki trust`)",
                        flush=True,
                    )
                group.create_task(Gateway(plant, state_dir=Path(state_dir)).run(stop), name="demo.gateway")
                if view_enabled:
                    tty = sys.stdout.isatty()
                    group.create_task(
                        show(view, stop, prefix=prefix, out=sys.stdout, tty=tty,
                             interval_s=VIEW_INTERVAL_S if tty else PIPE_VIEW_INTERVAL_S,
                             hint="Ctrl-C stops the demo"),
                        name="demo.view",
                    )
    finally:
        if subscriber is not None:
            subscriber.loop_stop()
            subscriber.disconnect()
        if broker is not None:
            await broker.shutdown()


def missing_demo_modules(*, broker_url: str | None, view: bool) -> list[str]:
    """The modules of the ``demo`` extra this run needs and cannot import: amqtt (embedded broker), paho (view)."""
    needed = ({} if broker_url else {"amqtt": "amqtt"}) | ({"paho.mqtt": "paho-mqtt"} if view else {})
    missing = []
    for module, distribution in needed.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    return missing


def run_demo(*, config: str, broker_url: str | None, view: bool, secure: bool = False, any_ports: bool = False) -> int:
    try:
        plant = load_plant(config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    missing = missing_demo_modules(broker_url=broker_url, view=view)
    if missing:
        print(
            f"cellgate demo: {' and '.join(missing)} missing; install the demo extra: pip install 'cellgate[demo]' "
            "(or run `cellgate demo --broker mqtt://HOST:PORT --no-view`, which needs neither)",
            file=sys.stderr,
        )
        return 2
    # The live view owns stdout; log state changes (warnings and up) to stderr, or everything when there is no view.
    configure_logging(level="WARNING" if view else "INFO", log_format="auto", stream=sys.stderr)
    asyncio.run(_demo(plant, broker_url=broker_url, view_enabled=view, secure=secure, any_ports=any_ports))
    return 0
