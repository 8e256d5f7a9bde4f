"""``python -m simulators fault --control-port N ACTION MACHINE ...``: a client for the control interface.

Examples (the simulators were started with ``python -m simulators --control-port 8765``)::

    python -m simulators fault --control-port 8765 list
    python -m simulators fault --control-port 8765 drop rack-01
    python -m simulators fault --control-port 8765 drop rack-01 --duration-s 5      # link down for 5 s
    python -m simulators fault --control-port 8765 hang coater-01 --duration-s 10
    python -m simulators fault --control-port 8765 latency rack-01 0.5
    python -m simulators fault --control-port 8765 exception rack-01 holding 1000 1032 --code 2
    python -m simulators fault --control-port 8765 bad coater-01 Line.Speed --status BadSensorFailure
    python -m simulators fault --control-port 8765 bad rack-01 Ch001.Voltage         # NaN on Modbus
    python -m simulators fault --control-port 8765 freeze coater-01                   # whole machine
    python -m simulators fault --control-port 8765 restart coater-01 --extra-namespaces 1
    python -m simulators fault --control-port 8765 clear rack-01 [KIND]

Prints the control interface's JSON answer. Exit status 0 on success, 1 if the request was refused, 2 if the
control interface cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from simulators.servers.control_http import request_control


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulators fault", description="Set or clear simulator faults.")
    parser.add_argument("--control-port", type=int, required=True, help="port of the simulators' control interface")
    parser.add_argument("--control-host", default="127.0.0.1")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="show the active faults of every machine")
    clear = actions.add_parser("clear", help="clear the faults of a machine (all, or one kind)")
    clear.add_argument("machine")
    clear.add_argument("kind", nargs="?", choices=("drop", "hang", "latency", "exception", "bad", "freeze"))

    def fault(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text)
        sub.add_argument("machine")
        if name != "restart":
            sub.add_argument("--duration-s", type=float, default=None, help="clear by itself after this long")
        return sub

    fault("drop", "close every connection now (with --duration-s: also refuse new ones that long)")
    fault("hang", "keep connections but answer nothing")
    fault("latency", "answer every request later").add_argument("seconds", type=float)
    exception = fault("exception", "Modbus exception for requests touching [start, end) of a table")
    exception.add_argument("table", choices=("coil", "discrete", "holding", "input"))
    exception.add_argument("start", type=int)
    exception.add_argument("end", type=int)
    exception.add_argument("--code", type=int, default=4, help="exception code (2 illegal address, 4 device failure)")
    bad = fault("bad", "OPC UA bad status / Modbus NaN on points (none given: every point)")
    bad.add_argument("points", nargs="*")
    bad.add_argument("--status", default="BadSensorFailure")
    fault("freeze", "stop values changing on points (none given: every point)").add_argument("points", nargs="*")
    restart = fault("restart", "restart the OPC UA server with our namespace at another index")
    restart.add_argument("--extra-namespaces", type=int, default=1)
    restart.add_argument("--down-s", type=float, default=0.0)
    return parser.parse_args(argv)


def request_of(args: argparse.Namespace) -> tuple[str, str, dict[str, object] | None]:
    """(method, path, JSON body) for the parsed command line."""
    if args.action == "list":
        return "GET", "/faults", None
    if args.action == "clear":
        return "DELETE", f"/faults/{args.machine}" + (f"/{args.kind}" if args.kind else ""), None
    body: dict[str, object] = {"fault": args.action}
    if args.action == "latency":
        body["seconds"] = args.seconds
    elif args.action == "exception":
        body.update(table=args.table, start=args.start, end=args.end, code=args.code)
    elif args.action in ("bad", "freeze"):
        body["points"] = args.points or None
        if args.action == "bad":
            body["status"] = args.status
    elif args.action == "restart":
        body.update(extra_namespaces=args.extra_namespaces, down_s=args.down_s)
    if getattr(args, "duration_s", None) is not None:
        body["duration_s"] = args.duration_s
    return "POST", f"/faults/{args.machine}", body


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    method, path, body = request_of(args)
    try:
        status, answer = request_control(args.control_port, method, path, body, host=args.control_host)
    except OSError as exc:
        print(f"simulators fault: cannot reach the control interface on port {args.control_port}: {exc}",
              file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2))
    return 0 if 200 <= status < 300 else 1
