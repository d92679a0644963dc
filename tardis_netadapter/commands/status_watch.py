"""``status --watch [SECONDS]``: follow a site live.

In a terminal each round redraws the screen in place (cursor home, each line
cleared to its end, the rest of the screen cleared), cut to the terminal's
width so a wide table never wraps and scrolls the frame away; nothing is
printed between rounds, so there is no flicker. When stdout is not a terminal
(a pipe, a log file) the rounds are plain successive tables, each after a
header line with the time, so the output is a readable log; with ``--json``
each round is one JSON document on one line (JSON Lines).

One round is one listing of the site, as ``status`` makes once: ``SECONDS``
is the pause between the end of one round and the start of the next, at
least 0.5 s. Ctrl-C ends the watch (exit 0); so does ``--count N`` after N
rounds. An unreachable site does not end it: its reason heads the frame and
the next round asks again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .status import Frame, StatusSource

#: ANSI: cursor to the top left; clear to the end of the line; of the screen
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def header(source: StatusSource, seconds: float, now: float) -> str:
    """``Every 5s: status NetLab    2026-12-01 21:03:07 UTC`` (as watch(1) heads)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    return f"Every {seconds:g}s: tardis-netadapter status {source.site}    {stamp}"


def screen(text: str, width: int) -> str:
    """``text`` as one in-place redraw on a terminal ``width`` columns wide."""
    lines = [line[:width] for line in text.rstrip("\n").split("\n")]
    return HOME + "".join(line + CLEAR_LINE + "\n" for line in lines) + CLEAR_BELOW


def terminal_width(out: TextIO) -> int:
    """The width of the terminal ``out`` writes to, asked each round (resizes).

    The terminal itself is asked first: a ``COLUMNS`` inherited from another
    shell (which ``shutil`` prefers) would cut at the wrong width or let
    lines wrap and break the redraw.
    """
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError):  # no descriptor (io.UnsupportedOperation is both)
        return shutil.get_terminal_size((200, 50)).columns


def show(
    frame: Frame,
    source: StatusSource,
    args: argparse.Namespace,
    out: TextIO,
    now: float,
) -> None:
    """Write one round to ``out``: a redraw, a logged table or a JSON line."""
    if args.json:
        out.write(frame.json(source.monitor, indent=None) + "\n")
    else:
        text = header(source, args.watch, now) + "\n\n"
        text += frame.text(source.monitor, args.wide)
        if out.isatty():
            out.write(screen(text, terminal_width(out)))
        else:
            out.write(text + "\n")  # a blank line between rounds
    out.flush()


async def _rounds(source: StatusSource, args: argparse.Namespace, out: TextIO) -> None:
    done = 0
    while args.count is None or done < args.count:
        if done:
            await asyncio.sleep(args.watch)
        frame = await source.frame()
        show(frame, source, args, out, time.time())
        done += 1


def watch(source: StatusSource, args: argparse.Namespace) -> int:
    """Run rounds until interrupted (or ``--count``); exit 0."""
    if args.count is not None and args.count < 1:
        print(
            f"tardis-netadapter status: --count: got {args.count}; expected 1 or more",
            file=sys.stderr,
        )
        return 2
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the usual way out
        asyncio.run(_rounds(source, args, sys.stdout))
    return 0
