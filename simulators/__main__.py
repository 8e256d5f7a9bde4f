"""``python -m simulators`` (also ``cellgate sim``): serve the simulator set until SIGTERM/SIGINT, or describe it.

Prints exactly one line on stdout once every server accepts connections, for scripts and end-to-end tests::

    simulators ready opcua=opc.tcp://127.0.0.1:4840/ modbus=127.0.0.1:5020 \
        modbus_ports=stacker-01:5022,rack-01:5020,rack-02:5021          (one line)

``modbus=`` is the first rack's port; ``modbus_ports=`` lists every Modbus machine (device:port). Port 0 picks free
ports; the line shows the real ones. Exit status 0 after a signal, 2 if a server cannot start or an option is bad.
With ``--control-port N`` the HTTP fault control interface (``simulators.servers.control_http``) listens on
127.0.0.1:N with every machine registered and the line ends with `` control=PORT``.
``python -m simulators fault ...`` is its client (``simulators.fault_cli``).
With ``--security PKI_DIR`` the OPC UA server offers only secure endpoints (Basic256Sha256, Aes128_Sha256_RsaOaep,
Aes256_Sha256_RsaPss, each with Sign and SignAndEncrypt), keeps its certificate in PKI_DIR/own/cert.der, and
logs users in from ``--users-file`` (``name:password`` lines) or ``--user-cert`` X.509 certificates.

``--record-results FILE`` appends every record a machine's result FIFO takes to FILE as JSON lines
(``simulators.ground_truth``: ground truth for end-to-end tests; off by default).

``--describe`` (with the same options) prints the address map as a tag-map fragment instead of serving: a
``templates`` + ``devices`` YAML document that needs only ``gateway:`` and ``mqtt:`` sections to run.

Examples::

    python -m simulators                                   # the default set (coater, calender, stacker, 2 racks)
    python -m simulators --only modbus --racks 10 --channels 256 --modbus-port 0
    python -m simulators --serve calender=modbus --encoding scaled --word-order CDAB --describe
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from simulators.describe import (
    DEFAULT_CHANNELS,
    DEFAULT_MODBUS_PORT,
    DEFAULT_OPCUA_PORT,
    DEFAULT_RACK_STEP_HZ,
    DEFAULT_RACKS,
    DEFAULT_STEP_HZ,
    MachineKind,
    Protocol,
    SimulatorOptions,
    SimulatorPlan,
    describe_yaml,
    plan_simulators,
)
from simulators.runner import RunningSimulators, serve_plan
from simulators.servers.address_map import NumberFormat, WordOrder
from simulators.servers.opcua_server import ServerSecurity


def _kind_protocol(text: str) -> tuple[MachineKind, Protocol]:
    kind, sep, protocol = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return MachineKind(kind.strip().lower()), Protocol(protocol.strip().lower())
    except ValueError:
        kinds = "|".join(k.value for k in MachineKind)
        raise argparse.ArgumentTypeError(f"expected KIND=PROTOCOL ({kinds} = opcua|modbus), got {text!r}") from None


def _device_port(text: str) -> tuple[str, int]:
    device, sep, port = text.partition("=")
    try:
        if not sep or not device:
            raise ValueError
        return device.strip(), int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DEVICE=PORT (e.g. rack-02=6021), got {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulators",
        description="Serve the equipment simulators: coater and calender over OPC UA, a stacker and formation racks "
                    "over Modbus TCP (one port per Modbus machine), or print their address map (--describe).",
    )
    parser.add_argument("--describe", action="store_true",
                        help="print the address map as a tag-map fragment (YAML) and exit; serves nothing")
    parser.add_argument("--racks", type=int, default=DEFAULT_RACKS, help="formation racks (default %(default)s)")
    parser.add_argument("--channels", type=int, default=DEFAULT_CHANNELS,
                        help="channels per rack, 1..1008 (default %(default)s)")
    parser.add_argument("--coaters", type=int, default=1, help="electrode coaters (default %(default)s)")
    parser.add_argument("--calenders", type=int, default=1, help="calenders (default %(default)s)")
    parser.add_argument("--stackers", type=int, default=1, help="cell stackers (default %(default)s)")
    parser.add_argument("--serve", type=_kind_protocol, action="append", default=[], metavar="KIND=PROTOCOL",
                        help="serve a machine type over the other protocol, e.g. calender=modbus or rack=opcua "
                             "(repeatable; default coater/calender=opcua, stacker/rack=modbus)")
    parser.add_argument("--only", choices=("opcua", "modbus"), default=None,
                        help="serve only the machines of this protocol (default: both)")
    parser.add_argument("--opcua-port", type=int, default=DEFAULT_OPCUA_PORT,
                        help="OPC UA port of every OPC UA machine (0 = any free; default %(default)s)")
    parser.add_argument("--modbus-port", type=int, default=DEFAULT_MODBUS_PORT,
                        help="port of rack-01; every next Modbus machine takes the next port (racks, then stackers, "
                             "then others); 0 = a free port for each (default %(default)s)")
    parser.add_argument("--port", type=_device_port, action="append", default=[], metavar="DEVICE=PORT",
                        help="pin one Modbus machine to a port, e.g. stacker-01=6000 (repeatable)")
    parser.add_argument("--encoding", choices=[f.value for f in NumberFormat], default=NumberFormat.FLOAT32.value,
                        help="Modbus analog values: float32 or scaled integers (default %(default)s)")
    parser.add_argument("--word-order", choices=[o.value for o in WordOrder], default=WordOrder.ABCD.value,
                        help="Modbus 32-bit word order: ABCD high word first, CDAB low word first "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed; the same seed gives the same run")
    parser.add_argument("--speedup", type=float, default=1.0, help="model seconds per wall-clock second")
    parser.add_argument("--step-hz", "--rate", dest="step_hz", type=float, default=DEFAULT_STEP_HZ,
                        help="model steps per second of the coater, calender and stacker (default %(default)s)")
    parser.add_argument("--rack-step-hz", type=float, default=DEFAULT_RACK_STEP_HZ,
                        help="model steps per second of the formation racks served over Modbus "
                             "(default %(default)s: cyclers record live values once a second)")
    parser.add_argument(
        "--control-port", type=int, default=None,
        help="serve the HTTP fault control interface on this port (0 = any free; default: off)",
    )
    parser.add_argument(
        "--security", metavar="PKI_DIR", default=None,
        help="OPC UA: secure endpoints only (every policy, Sign and SignAndEncrypt); the server certificate is "
             "kept in PKI_DIR/own/cert.der",
    )
    parser.add_argument(
        "--users-file", metavar="FILE", default=None,
        help="with --security: user database, one `name:password` a line (else sessions are anonymous)",
    )
    parser.add_argument(
        "--user-cert", metavar="FILE", action="append", default=[],
        help="with --security: accept this X.509 user certificate (DER or PEM); repeatable",
    )
    parser.add_argument(
        "--record-results", metavar="FILE", default=None,
        help="append every result record a machine pushes to FILE as JSON lines (ground truth for tests; "
             "default: off)",
    )
    return parser.parse_args(argv)


def opcua_security_of(args: argparse.Namespace) -> ServerSecurity | None:
    """The secure-endpoint settings the command line asks for (raises ValueError on unreadable files)."""
    if args.security is None:
        if args.users_file or args.user_cert:
            raise ValueError("--users-file and --user-cert need --security")
        return None
    users: dict[str, str] = {}
    if args.users_file:
        try:
            lines = Path(args.users_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read {args.users_file}: {exc.strerror}") from None
        for line in lines:
            name, sep, password = line.partition(":")
            if line.strip() and not sep:
                raise ValueError(f"{args.users_file}: a line without `name:password`")
            if sep:
                users[name.strip()] = password
    thumbprints = set()
    for path in args.user_cert:
        try:
            data = Path(path).read_bytes()
            pem = b"-----BEGIN" in data
            cert = x509.load_pem_x509_certificate(data) if pem else x509.load_der_x509_certificate(data)
        except (OSError, ValueError):
            raise ValueError(f"cannot read the X.509 user certificate {path}") from None
        der = cert.public_bytes(serialization.Encoding.DER)
        thumbprints.add(hashlib.sha1(der, usedforsecurity=False).hexdigest())
    return ServerSecurity(pki_dir=Path(args.security), users=users, user_certificates=frozenset(thumbprints))


def options_of(args: argparse.Namespace) -> SimulatorOptions:
    """The simulator options the command line asks for (raises ValueError on a bad combination)."""
    return SimulatorOptions(
        racks=args.racks, channels=args.channels, coaters=args.coaters, calenders=args.calenders,
        stackers=args.stackers, protocols=dict(args.serve), number_format=NumberFormat(args.encoding),
        word_order=WordOrder(args.word_order), opcua_port=args.opcua_port, modbus_port=args.modbus_port,
        modbus_ports=dict(args.port), seed=args.seed, speedup=args.speedup, step_hz=args.step_hz,
        rack_step_hz=args.rack_step_hz,
    )


def _ready(running: RunningSimulators) -> None:
    print(running.ready_line(), flush=True)


async def _serve(plan: SimulatorPlan, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve_plan(
        plan,
        stop=stop,
        on_ready=_ready,
        serve=(args.only,) if args.only else ("opcua", "modbus"),
        control_port=args.control_port,
        opcua_security=opcua_security_of(args),
        results_log=Path(args.record_results) if args.record_results else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["fault"]:
        from simulators.fault_cli import main as fault_main

        return fault_main(arguments[1:])
    args = parse_args(arguments)
    try:
        plan = plan_simulators(options_of(args))
        opcua_security_of(args)  # reports unreadable user files before anything starts
    except ValueError as exc:
        print(f"simulators: {exc}", file=sys.stderr)
        return 2
    if args.describe:
        sys.stdout.write(describe_yaml(plan))
        return 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # asyncua warns on every start that SecurityPolicy None has no signing; that is the point of a local simulator.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    try:
        asyncio.run(_serve(plan, args))
    except (OSError, RuntimeError, ValueError) as exc:  # port taken, bad argument
        print(f"simulators: cannot run: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
