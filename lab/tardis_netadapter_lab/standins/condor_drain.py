#!/usr/bin/python3
"""Stand-in for HTCondor's `condor_drain`, draining a drone in the pool stand-in.

Usage: condor_drain [-pool HOST:PORT] [-graceful|-quick|-fast] [-reason TEXT]
                    [-resume-on-completion|-exit-on-completion] [-check EXPR]
                    [-start EXPR] [-cancel] MACHINE-OR-SLOT-NAME

Honoured: TARDIS's call `condor_drain [-pool X] -graceful slot1@MACHINE`; the
target may be a slot name, a machine name or a drone uuid. The pool moves the
drone to Drained/Retiring and, after its --retire-seconds, to Drained/Idle;
-cancel returns it to Unclaimed/Idle. Exit 0 on success; exit 1 when the pool
cannot be reached or has no connected startd of that name (real condor_drain
exits 1 when it cannot reach the startd, which TARDIS treats as "already
gone"). The pool comes from -pool, else _CONDOR_COLLECTOR_HOST/COLLECTOR_HOST.

Not honoured: the drain styles differ only in name (no jobs exist to retire),
-check/-start/-reason are accepted and ignored, no request ids.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from typing import Any, Optional

DEFAULT_PORT = 9618
WITH_VALUE = {"-pool", "-reason", "-check", "-start", "-request-id", "-name"}
FLAGS = {
    "-graceful",
    "-quick",
    "-fast",
    "-coalesce",
    "-resume-on-completion",
    "-exit-on-completion",
    "-restart-on-completion",
    "-cancel",
    "-debug",
}


def collector_address(pool: Optional[str]) -> tuple[str, int]:
    """-pool wins, then _CONDOR_COLLECTOR_HOST (any case), then COLLECTOR_HOST."""
    value = pool
    if not value:
        for key, env_value in os.environ.items():
            if key.upper() == "_CONDOR_COLLECTOR_HOST":
                value = env_value
    value = value or os.environ.get("COLLECTOR_HOST") or ""
    first = re.split(r"[,\s]+", value.strip())[0].strip("<>").split("?", 1)[0]
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        host, port = first, str(DEFAULT_PORT)
    if not host:
        raise OSError("no collector: give -pool or set _CONDOR_COLLECTOR_HOST")
    return host.strip("[]"), int(port)


def request(host: str, port: int, msg: dict[str, Any]) -> dict[str, Any]:
    timeout = float(os.environ.get("TNA_COLLECTOR_TIMEOUT", "20"))
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(json.dumps(msg).encode() + b"\n")
        with sock.makefile("rb") as stream:
            line = stream.readline()
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise ValueError(f"garbled answer {line[:80]!r}")
    return answer


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pool: Optional[str] = None
    cancel = False
    targets: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in WITH_VALUE:
            if i >= len(argv):
                print(f"ERROR: {arg} requires an argument", file=sys.stderr)
                return 1
            if arg == "-pool":
                pool = argv[i]
            elif arg == "-name":
                targets.append(argv[i])
            i += 1
        elif arg in FLAGS:
            cancel = cancel or arg == "-cancel"
        elif arg.startswith("-"):
            print(f"ERROR: unknown option {arg}", file=sys.stderr)
            return 1
        else:
            targets.append(arg)
    if len(targets) != 1:
        print("Usage: condor_drain [options] machine-name", file=sys.stderr)
        return 1
    target = targets[0]
    try:
        host, port = collector_address(pool)
        answer = request(host, port, {"op": "drain", "name": target, "cancel": cancel})
    except (OSError, ValueError) as exc:
        print(
            f"ERROR: Failed communication with collector: {exc}\n"
            f"Can't find address for startd {target}",
            file=sys.stderr,
        )
        return 1
    if not answer.get("ok"):
        print(
            f"Can't find address for startd {target}: {answer.get('error')}",
            file=sys.stderr,
        )
        return 1
    verb = "cancel draining of" if cancel else "drain"
    print(f"Sent request to {verb} {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
