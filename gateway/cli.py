"""``cellgate run | check | sim | demo | init``: the command line. Thin: parse arguments, call into the package."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.errors import ConfigError, GatewayError
from gateway.vocabulary import OpcUaSecurityMode, OpcUaSecurityPolicy

if TYPE_CHECKING:
    from gateway.tagmap import Plant

EXIT_CONFIG_ERROR = 2
EXIT_RUNTIME_ERROR = 1
# Package data (gateway/data/): the example tag map (config/demo.yaml, which matches the simulators), an
# environment file and the systemd units. They ship in the wheel, so an installed `cellgate` finds them.
DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_DEMO_CONFIG = DATA_DIR / "tagmap.yaml"
# `cellgate init` writes these (source under DATA_DIR -> name in the target directory).
INIT_FILES = {
    "tagmap.yaml": "tagmap.yaml",
    "cellgate.env": "cellgate.env",
    "systemd/cellgate.service": "cellgate.service",
    "systemd/cellgate-simulators.service": "cellgate-simulators.service",
}


def default_state_dir() -> Path:
    """systemd's $STATE_DIRECTORY (StateDirectory=cellgate), else $XDG_STATE_HOME/cellgate or ~/.local/state."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cellgate"


def _load_or_report(path: str) -> object:
    from gateway.tagmap import load_plant

    try:
        return load_plant(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} problem(s); nothing started", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None


def _shard(plant: Plant, shard: tuple[int, int] | None) -> Plant:
    from gateway.sharding import select_shard

    return plant if shard is None else select_shard(plant, *shard)


def _shard_argument(text: str) -> tuple[int, int]:
    from gateway.sharding import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_shard(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--shard",
        type=_shard_argument,
        default=None,
        metavar="K/N",
        help="read only the devices of shard K of N (one tag map spread over N gateways)",
    )


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.assembly import describe_plant
    from gateway.tagmap import Plant

    plant = _load_or_report(args.config)
    assert isinstance(plant, Plant)
    if args.shard:
        shard, count = args.shard
        print(f"shard {shard} of {count}")
    print(describe_plant(_shard(plant, args.shard), list_tags=args.tags))
    if args.explain:
        from gateway.explain import explain_plant, render_explain

        print(render_explain(explain_plant(_shard(plant, args.shard), rtt_ms=args.assume_rtt_ms),
                             rtt_ms=args.assume_rtt_ms))
    from gateway.pki_cli import (
        check_security_files,
        crl_warnings,
        describe_endpoints,
        own_certificate_warnings,
        secure_devices,
    )

    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    problems = check_security_files(plant, state_dir, create=False)
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG_ERROR
    for warning in [*own_certificate_warnings(plant, state_dir), *crl_warnings(plant, state_dir)]:
        print(f"WARNING {warning}", file=sys.stderr)
    if secure_devices(plant) and not args.offline:
        print("OPC UA endpoints (GetEndpoints):")
        print("\n".join(f"  {line}" for line in describe_endpoints(_shard(plant, args.shard), state_dir)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.event_loop import choose_event_loop
    from gateway.notify import SystemdNotifier
    from gateway.observability import configure_logging
    from gateway.runtime import serve
    from gateway.tagmap import Plant, load_plant

    plant = _load_or_report(args.config)
    assert isinstance(plant, Plant)
    configure_logging(level=args.log_level, log_format=args.log_format)
    from gateway.pki_cli import check_security_files, crl_warnings, own_certificate_warnings

    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    problems = check_security_files(plant, state_dir, create=True)  # the own certificate is made on first start
    for problem in problems:
        print(f"cellgate: {problem}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG_ERROR
    import structlog

    for warning in own_certificate_warnings(plant, state_dir):
        structlog.get_logger("cellgate.pki").warning("pki_certificate_expiry", error=warning)
    for warning in crl_warnings(plant, state_dir):
        structlog.get_logger("cellgate.pki").warning("pki_crl_expiry", error=warning)
    first: list[Plant] = [plant]
    del plant  # the gateway keeps the models only until it has built its read plans (see runtime.without_tags)

    def load() -> Plant:
        # The first call returns the map checked above; later calls (SIGHUP) read the file again.
        return _shard(first.pop() if first else load_plant(args.config), args.shard)

    try:
        choice = choose_event_loop(first[0].gateway.event_loop)
        with SystemdNotifier.from_environ() as notifier, asyncio.Runner(loop_factory=choice.factory) as runner:
            runner.run(serve(load=load, state_dir=state_dir, notifier=notifier))
    except GatewayError as exc:
        print(f"cellgate: {exc}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(
        config=args.config, broker_url=args.broker, view=not args.no_view, secure=args.secure, any_ports=args.any_ports
    )


def cmd_tail(args: argparse.Namespace) -> int:
    from gateway.tail import run_tail

    return run_tail(config=args.config, broker_url=args.broker, topic_filter=args.topic_filter,
                    protocol=args.protocol, interval_s=args.interval)


def _add_tail(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = commands.add_parser("tail", help="live view of the values, equipment and gateway status on a broker")
    source = tail.add_mutually_exclusive_group()
    source.add_argument("-c", "--config", default=None, help="tag map: its broker, and its site as default filter")
    source.add_argument("--broker", default=None,
                        help="mqtt[s]://[USER:PASSWORD@]HOST[:PORT] (default mqtt://127.0.0.1:1883, filter '#')")
    tail.add_argument("topic_filter", nargs="?", default=None, metavar="TOPIC_FILTER",
                      help="MQTT topic filter (default: ENTERPRISE/SITE/# of the tag map, or '#')")
    tail.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version with --broker (default 5)")
    tail.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                      help="redraw every SECONDS (default 1 on a terminal, 5 into a pipe or file)")
    tail.set_defaults(func=cmd_tail)


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.directory)
    existing = [name for name in INIT_FILES.values() if (target / name).exists()]
    if existing and not args.force:
        print(f"cellgate init: {', '.join(existing)} already in {target}; nothing written (--force overwrites)",
              file=sys.stderr)
        return EXIT_CONFIG_ERROR
    target.mkdir(parents=True, exist_ok=True)
    for source, name in INIT_FILES.items():
        destination = target / name
        destination.write_bytes((DATA_DIR / source).read_bytes())
        if name == "cellgate.env":
            destination.chmod(0o600)  # it is where the broker password goes
        print(destination)
    print(
        f"next: edit {target / 'tagmap.yaml'}, then `cellgate check -c {target / 'tagmap.yaml'}`; "
        "the units expect /etc/cellgate/tagmap.yaml, /etc/cellgate/cellgate.env and /opt/cellgate/venv "
        "(README, \"Run as a systemd service\")"
    )
    return 0


def cmd_browse(args: argparse.Namespace) -> int:
    from gateway.browse import run_browse

    return run_browse(
        endpoint=args.endpoint, root=args.root, depth=args.depth, include=args.include, exclude=args.exclude,
        output=args.output, area=args.area, line=args.line, templates=not args.no_templates,
        timeout_s=args.timeout, max_references=args.max_references,
        security=None if args.security is None else OpcUaSecurityPolicy(args.security),
        security_mode=OpcUaSecurityMode(args.mode), username=args.username, password_file=args.password_file,
        pki_root=(Path(args.state_dir) if args.state_dir else default_state_dir()) / "pki",
        check_hostname=not args.no_check_hostname,
    )


def _add_browse(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    browse = commands.add_parser("browse", help="walk an OPC UA server and write a tag map of its variables")
    browse.add_argument("endpoint", help="opc.tcp://HOST:PORT")
    browse.add_argument("--root", default=None, help="node to start at (default Objects), e.g. nsu=URI;s=Machines")
    browse.add_argument("--depth", type=int, default=10, help="levels below the root to walk (default 10)")
    browse.add_argument("--include", action="append", default=[], metavar="GLOB",
                        help="keep only variables whose browse path (Device/Group/Var) matches; repeatable")
    browse.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="leave out variables whose browse path matches; repeatable")
    browse.add_argument("--area", default="area", help="ISA-95 area written for every device (default 'area')")
    browse.add_argument("--line", default="line", help="ISA-95 line written for every device (default 'line')")
    browse.add_argument("--no-templates", action="store_true", help="write every tag; no templates + repeat")
    browse.add_argument("--timeout", type=float, default=10.0, help="request timeout in seconds (default 10)")
    browse.add_argument("--max-references", type=int, default=1000, metavar="N",
                        help="references per node per Browse answer before BrowseNext (default 1000)")
    browse.add_argument("-o", "--output", default=None, help="write the tag map here (default: standard output)")
    secure = browse.add_argument_group("security (as a device's `security:` block; README, Security)")
    secure.add_argument("--security", default=None, metavar="POLICY",
                        choices=[policy.value for policy in OpcUaSecurityPolicy],
                        help="secure channel: auto (the strongest offered) or a policy name; default: None")
    secure.add_argument("--mode", default=OpcUaSecurityMode.SIGN_AND_ENCRYPT.value,
                        choices=[mode.value for mode in reversed(OpcUaSecurityMode)],
                        help="message security mode with --security (default SignAndEncrypt)")
    secure.add_argument("--state-dir", default=None,
                        help="state directory whose pki/ holds the certificate and trust list (as for `run`)")
    secure.add_argument("--no-check-hostname", action="store_true",
                        help="accept a server certificate that does not name the endpoint's host")
    secure.add_argument("--username", default=None, help="user-name identity")
    secure.add_argument("--password-file", default=None, metavar="FILE",
                        help="the password (first line; a relative name is a systemd credential)")
    browse.set_defaults(func=cmd_browse)


def cmd_scan(args: argparse.Namespace) -> int:
    from gateway.scan import run_scan

    return run_scan(
        url=args.url, unit_id=args.unit, table=args.table, address_range=args.range, rate=args.rate,
        timeout_s=args.timeout, max_requests=args.max_requests, block=args.block,
    )


def _add_scan(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scan = commands.add_parser("scan", help="read a Modbus table and report which address ranges answer (reads only)")
    scan.add_argument("url", help="modbus://HOST[:PORT]")
    scan.add_argument("--unit", type=int, default=1, help="unit id (default 1)")
    scan.add_argument("--table", choices=("holding", "input", "coil", "discrete"), default="holding")
    scan.add_argument("--range", default="0-9999", metavar="FIRST-LAST", help="addresses to scan (default 0-9999)")
    scan.add_argument("--rate", type=float, default=20.0, help="at most this many requests per second (default 20)")
    scan.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each answer (default 1)")
    scan.add_argument("--max-requests", type=int, default=2000, help="stop after this many requests (default 2000)")
    scan.add_argument("--block", type=int, default=None,
                      help="largest read (default 125 registers / 2000 bits, the protocol maximum)")
    scan.set_defaults(func=cmd_scan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellgate", description="Battery-plant PLC data to MQTT.")
    parser.add_argument("--version", action="version", version=f"cellgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_logging(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
        sub.add_argument(
            "--log-format", choices=("auto", "json", "console"), default="auto",
            help="JSON lines, or a console renderer (auto: console on a terminal)",
        )

    run = commands.add_parser("run", help="run the gateway on a tag map until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", required=True, help="tag-map YAML file")
    run.add_argument(
        "--state-dir",
        default=None,
        help="spool and seq numbers (default: $STATE_DIRECTORY under systemd, else ~/.local/state/cellgate)",
    )
    _add_shard(run)
    add_logging(run)
    run.set_defaults(func=cmd_run)

    check = commands.add_parser("check", help="validate a tag map and print what would be read and published")
    check.add_argument("-c", "--config", required=True, help="tag-map YAML file")
    check.add_argument("--tags", action="store_true", help="also list every tag: topic <- source, type, unit")
    check.add_argument("--state-dir", default=None, help="state directory, for the PKI folder (as for `run`)")
    check.add_argument("--offline", action="store_true", help="do not ask secure OPC UA devices for their endpoints")
    check.add_argument("--explain", action="store_true",
                       help="also print the requests/s, values/s, messages/s and bytes/s per device and in total, "
                            "and warn about plans that cannot keep their interval, gappy reads, oversized messages")
    check.add_argument("--assume-rtt-ms", type=float, default=5.0, metavar="MS",
                       help="round trip of one TCP/OPC UA request for --explain (default 5)")
    _add_shard(check)
    check.set_defaults(func=cmd_check)

    commands.add_parser(
        "sim",
        add_help=False,
        help="run the equipment simulators (coater over OPC UA, rack over Modbus); see `cellgate sim --help`",
    )

    demo = commands.add_parser("demo", help="simulators + embedded MQTT broker + gateway, with a live view")
    demo.add_argument(
        "-c", "--config", default=str(DEFAULT_DEMO_CONFIG), help="tag map (default: the bundled config/demo.yaml)"
    )
    demo.add_argument("--broker", default=None, help="use this broker (mqtt://host:port) instead of the embedded one")
    demo.add_argument("--no-view", action="store_true", help="no live view; log instead")
    demo.add_argument(
        "--any-ports", action="store_true",
        help="free ports for the simulators and the embedded broker, not the tag map's (4840, 1883, ...)",
    )  # fmt: skip
    demo.add_argument(
        "--secure", action="store_true",
        help="OPC UA with certificates, SignAndEncrypt and a user login (the demo trusts its simulator by itself)",
    )
    demo.set_defaults(func=cmd_demo)

    from gateway.pki_cli import add_pki_commands

    pki = commands.add_parser("pki", help="OPC UA certificates: show, list, trust a server, renew")
    add_pki_commands(pki, default_state_dir=default_state_dir)

    init = commands.add_parser(
        "init", help="write an example tag map, an environment file and the systemd units to adapt"
    )
    init.add_argument("directory", nargs="?", default=".", help="where to write them (default: here)")
    init.add_argument("--force", action="store_true", help="overwrite files that are already there")
    init.set_defaults(func=cmd_init)

    _add_browse(commands)
    _add_scan(commands)
    _add_tail(commands)

    from gateway.spool_cli import add_spool_commands

    spool = commands.add_parser("spool", help="look at the spool offline: dead letters, requeue them")
    add_spool_commands(spool, default_state_dir=default_state_dir)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["sim"]:
        # argparse cannot forward options it does not know; `cellgate sim` hands them all to the simulators.
        from simulators.__main__ import main as simulators_main

        return simulators_main(arguments[1:])
    args = build_parser().parse_args(arguments)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
