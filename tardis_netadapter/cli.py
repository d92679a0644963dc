"""The ``tardis-netadapter`` command line: one subcommand per module.

Each module in COMMAND_MODULES provides ``add_parser(subparsers)`` that
registers its subcommand(s) and sets ``func`` (taking the parsed arguments and
returning an exit code). Heavy imports (TARDIS, asyncssh, htcondor) stay
inside each command's ``run`` so ``--help`` starts quickly.

Other distributions add subcommands without the product importing them: each
entry point of the group ``tardis_netadapter.commands`` names such an
``add_parser``. The lab distribution (lab/ in the repository) registers
``lab`` and ``demo`` this way; without it installed they are simply absent.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import re
import sys
from collections.abc import Callable
from typing import Any, Optional

from . import __version__
from .condor_knobs import HTCONDOR_EXTRA, have_htcondor
from .schema import ConfigurationError

COMMAND_MODULES: tuple[str, ...] = (
    # in the order an operator meets them: find an example, write a config,
    # then run and watch
    "tardis_netadapter.commands.examples",
    "tardis_netadapter.commands.check",
    "tardis_netadapter.commands.render",
    # a mode-nat site's own files (workers' routing, NAT routers)
    "tardis_netadapter.commands.sitenat",
    "tardis_netadapter.commands.status",
)

#: entry-point group through which other distributions add subcommands
COMMAND_GROUP = "tardis_netadapter.commands"


def plugin_commands() -> list[tuple[str, Callable[[Any], None]]]:
    """(name, add_parser) of every installed ``tardis_netadapter.commands`` entry.

    Sorted by name so ``--help`` does not depend on installation order. An
    entry that cannot be loaded (a half-installed lab) is skipped with a
    warning instead of breaking the operator's CLI.
    """
    found = []
    for entry in sorted(
        importlib.metadata.entry_points(group=COMMAND_GROUP), key=lambda e: e.name
    ):
        try:
            found.append((entry.name, entry.load()))
        except Exception as error:  # a broken plug-in must not break the product
            print(
                f"tardis-netadapter: skipping command {entry.name!r} "
                f"({entry.value}): {error}",
                file=sys.stderr,
            )
    return found


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
    for _name, add_parser in plugin_commands():
        add_parser(subparsers)
    plain_help(parser)
    return parser


#: reStructuredText inline literals (``x``) in docstrings used as help texts
_LITERAL = re.compile(r"``(.+?)``", re.S)


def plain_text(text: Optional[str]) -> Optional[str]:
    """``text`` without reST literal markup: a terminal shows ``x`` as is.

    Commands take their descriptions from their module docstrings, written
    for Sphinx-style readers; ``--help`` is read in a terminal.
    """
    return _LITERAL.sub(r"\1", text) if text else text


def plain_help(parser: argparse.ArgumentParser) -> None:
    """Strip reST markup from every help text of ``parser`` and its subcommands,
    plug-in commands included (their modules are not ours to edit)."""
    parser.description = plain_text(parser.description)
    parser.epilog = plain_text(parser.epilog)
    for action in parser._actions:
        action.help = plain_text(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain_text(choice.help)
            for subparser in set(action.choices.values()):
                plain_help(subparser)


def missing_extra(args: argparse.Namespace) -> Optional[str]:
    """Why the parsed command cannot run without an optional extra; None if it can.

    ``status --collector`` asks the pool's collector through the htcondor2
    bindings, which the ``htcondor`` extra installs. The query itself turns
    every failure into "unknown" (the adapter must not crash), so without
    this check a missing extra would look like an unreachable collector.
    """
    if getattr(args, "collector", False) and not have_htcondor():
        return (
            "--collector needs the HTCondor Python bindings (htcondor2), which "
            f"are not installed: {HTCONDOR_EXTRA}"
        )
    return None


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    problem = missing_extra(args)
    if problem is not None:
        print(f"tardis-netadapter: {problem}", file=sys.stderr)
        return 2
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
