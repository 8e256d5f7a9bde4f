"""``python -m simulators``: serve the default simulator set until SIGTERM/SIGINT.

Prints exactly one line on stdout once both servers accept connections, for scripts and end-to-end tests::

    simulators ready opcua=opc.tcp://127.0.0.1:4840/ modbus=127.0.0.1:5020

Port 0 picks a free port; the line shows the real one. Exit status 0 after a signal, 2 if a server cannot start.
With ``--control-port N`` the HTTP fault control interface (``simulators.servers.control_http``) listens on
127.0.0.1:N and the line ends with `` control=PORT``. ``python -m simulators fault ...`` is its client
(``simulators.fault_cli``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from simulators.runner import (
    DEFAULT_CHANNELS,
    DEFAULT_MODBUS_PORT,
    DEFAULT_OPCUA_PORT,
    DEFAULT_STEP_HZ,
    RunningSimulators,
    run_simulators,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulators",
        description="Serve the default simulator set (coater over OPC UA, formation rack over Modbus TCP).",
    )
    parser.add_argument("--opcua-port", type=int, default=DEFAULT_OPCUA_PORT, help="OPC UA port (0 = any free)")
    parser.add_argument("--modbus-port", type=int, default=DEFAULT_MODBUS_PORT, help="Modbus TCP port (0 = any free)")
    parser.add_argument("--channels", type=int, default=DEFAULT_CHANNELS, help="formation rack channels (1..1024)")
    parser.add_argument("--seed", type=int, default=1, help="random seed; the same seed gives the same run")
    parser.add_argument("--speedup", type=float, default=1.0, help="model seconds per wall-clock second")
    parser.add_argument(
        "--only", choices=("opcua", "modbus"), default=None, help="serve only this protocol (default: both)"
    )
    parser.add_argument("--step-hz", type=float, default=DEFAULT_STEP_HZ, help="model steps per second")
    parser.add_argument(
        "--control-port", type=int, default=None,
        help="serve the HTTP fault control interface on this port (0 = any free; default: off)",
    )
    return parser.parse_args(argv)


def _ready(running: RunningSimulators) -> None:
    print(running.ready_line(), flush=True)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_simulators(
        opcua_port=args.opcua_port,
        modbus_port=args.modbus_port,
        channels=args.channels,
        seed=args.seed,
        speedup=args.speedup,
        step_hz=args.step_hz,
        stop=stop,
        on_ready=_ready,
        serve=(args.only,) if args.only else ("opcua", "modbus"),
        control_port=args.control_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["fault"]:
        from simulators.fault_cli import main as fault_main

        return fault_main(arguments[1:])
    args = parse_args(arguments)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # asyncua warns on every start that SecurityPolicy None has no signing; that is the point of a local simulator.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    try:
        asyncio.run(_serve(args))
    except (OSError, RuntimeError, ValueError) as exc:  # port taken, bad argument
        print(f"simulators: cannot run: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
