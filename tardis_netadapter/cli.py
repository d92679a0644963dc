"""The ``tardis-netadapter`` command line: one subcommand per module.

Each module in COMMAND_MODULES provides ``add_parser(subparsers)`` that
registers its subcommand(s) and sets ``func`` (taking the parsed arguments and
returning an exit code). Heavy imports (TARDIS, asyncssh, htcondor) stay
inside each command's ``run`` so ``--help`` and ``lab`` start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional

from . import __version__
from .schema import ConfigurationError

COMMAND_MODULES: tuple[str, ...] = (
    # in the order an operator meets them: write a config, then run and watch
    "tardis_netadapter.commands.check",
    "tardis_netadapter.commands.render",
    "tardis_netadapter.commands.status",
    "tardis_netadapter.commands.demo",
    "tardis_netadapter.lab.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="tardis-netadapter",
        description="COBalD/TARDIS drones on network-restricted HPC sites.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # asyncssh logs every channel at INFO (TARDIS's session probe opens
        # hundreds); an operator wants the checklist, not the chatter
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except ConfigurationError as error:
        print(f"tardis-netadapter: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
