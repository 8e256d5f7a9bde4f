"""``cellgate spool dead-letters | requeue``: look at and act on the spool offline.

``dead-letters`` only reads (safe while a gateway runs). ``requeue`` moves dead letters back into the message
table, where the next run replays them once the broker's policy is fixed; it takes the state directory's
lock, so it refuses (exit 2) while a gateway holds it. Imports are local, as in ``gateway.cli``: building
the parser stays cheap for every other command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError, GatewayError

if TYPE_CHECKING:
    from gateway.tagmap import SpoolSection

EXIT_OK = 0
EXIT_REFUSED = 2
EXIT_FAILED = 1


def add_spool_commands(spool: argparse.ArgumentParser, *, default_state_dir: Callable[[], Path]) -> None:
    """Add the sub-commands of ``cellgate spool`` to its parser."""
    actions = spool.add_subparsers(dest="spool_command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--state-dir", default=None, help="the gateway's state directory (as for `cellgate run`)")
        sub.add_argument("-c", "--config", default=None, help="tag map, for spool.path and the spool limits")
        sub.set_defaults(default_state_dir=default_state_dir)

    listing = actions.add_parser("dead-letters", help="messages the broker refused, counted by reason")
    common(listing)
    listing.set_defaults(func=cmd_dead_letters)
    requeue = actions.add_parser("requeue", help="move dead letters back to the spool; the next run replays them")
    requeue.add_argument("--reason", default=None, help="only dead letters of this reason (e.g. not_authorized)")
    common(requeue)
    requeue.set_defaults(func=cmd_requeue)


def _settings(args: argparse.Namespace) -> tuple[Path, Path, SpoolSection]:
    """The state directory, the spool file and the spool settings the arguments name."""
    from gateway.tagmap import SpoolSection, load_plant

    state_dir = Path(args.state_dir) if args.state_dir else args.default_state_dir()
    settings = SpoolSection()
    if args.config:
        try:
            settings = load_plant(args.config).spool
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            raise SystemExit(EXIT_REFUSED) from None
    path = Path(settings.path) if settings.path else state_dir / "spool.db"
    return state_dir, path, settings


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from gateway.sinks.spool import read_dead_letter_counts

    _, path, _ = _settings(args)
    try:
        counts = read_dead_letter_counts(path)
    except GatewayError as exc:
        print(f"cellgate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not counts:
        print(f"{path}: no dead letters")
        return EXIT_OK
    for reason, count in sorted(counts.items()):
        print(f"{reason}\t{count}")
    print(f"{path}: {sum(counts.values())} dead letter(s); `cellgate spool requeue [--reason R]` replays them")
    return EXIT_OK


def cmd_requeue(args: argparse.Namespace) -> int:
    from gateway.sinks.spool import Spool
    from gateway.state_dir import StateDirBusyError, locked_state_dir

    state_dir, path, settings = _settings(args)
    if not path.exists():
        print(f"{path}: no spool, nothing to requeue")
        return EXIT_OK
    try:
        with locked_state_dir(state_dir):
            spool = Spool(
                path,
                max_bytes=int(settings.max_mb * 1_000_000),
                dead_letter_max_bytes=int(settings.dead_letter_max_mb * 1_000_000),
            )
            try:
                moved = spool.requeue_dead_letters(args.reason)
            finally:
                spool.close()
    except StateDirBusyError as exc:
        print(f"cellgate: {exc}; stop it before `cellgate spool requeue`", file=sys.stderr)
        return EXIT_REFUSED
    except GatewayError as exc:
        print(f"cellgate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    which = f" of reason {args.reason}" if args.reason else ""
    print(f"{path}: {moved} dead letter(s){which} requeued; the next `cellgate run` replays them")
    return EXIT_OK
