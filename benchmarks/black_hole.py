#!/usr/bin/env python3
"""A black-hole site in the lab: how many jobs does it get in N minutes?

Brings up its own lab (``--name``, default ``tnbh``), makes the payload
stand-in exit at once (``lab fault payload exit``), runs the real COBalD
daemon with configs/lab.yml at a fixed demand of ``--drones`` drones and the
site brake ``--brake``: ``small`` (``{after: 2, min_lifetime: 30, backoff:
10, max_backoff: 40}``, printed with the bound ``daemon.brake_bound`` derives
from it), ``default`` (the shipped defaults) or ``off``; counts the drone
jobs Slurm saw every 2 s. The lab is always torn down.

    python benchmarks/black_hole.py --minutes 10                   # small brake
    python benchmarks/black_hole.py --minutes 10 --brake default   # shipped defaults
    python benchmarks/black_hole.py --minutes 10 --brake off       # no brake

Needs root and the lab's packages (docs/lab.md). The CI-sized check with the
same settings is tests/lab/test_lab_never_lose.py::test_black_hole_site_is_braked_and_recovers
(``TNA_BLACK_HOLE_MINUTES=10`` runs that test for 10 minutes, too).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tardis_netadapter_lab import Lab, faults
from tardis_netadapter_lab.daemon import (
    CobaldDaemon,
    brake_bound,
    drone_jobs,
    fixed_demand,
    with_brake,
    write_config,
)

BRAKE = {"after": 2, "min_lifetime": 30, "backoff": 10, "max_backoff": 40}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--drones", type=int, default=3, help="fixed demand/quota")
    parser.add_argument(
        "--brake",
        choices=("small", "default", "off"),
        default="small",
        help="small: the CI test's settings; default: no brake key (the "
        "shipped defaults); off: brake.enabled false (TARDIS's own behaviour)",
    )
    parser.add_argument("--name", default="tnbh", help="lab name (default tnbh)")
    parser.add_argument("--keep", metavar="DIR", help="copy the daemon's files here")
    args = parser.parse_args(argv)
    window = 60 * args.minutes
    replace = fixed_demand(args.drones)
    result: dict = {"minutes": args.minutes, "drones": args.drones}
    if args.brake == "small":
        replace = with_brake(replace, **BRAKE)
        result["brake"] = BRAKE
        result["bound"] = brake_bound(
            window, args.drones, BRAKE["after"], BRAKE["backoff"], BRAKE["max_backoff"]
        )
    elif args.brake == "off":
        replace = {**replace, "  NetLab:\n": "  NetLab:\n    brake: {enabled: false}\n"}
        result["brake"] = "off"
    else:
        result["brake"] = "shipped defaults"
    lab = Lab(name=args.name, workers=2)
    with tempfile.TemporaryDirectory() as tmp, lab:
        faults.set_payload(lab.layout, "exit")
        config = write_config(lab, Path(tmp), replace=replace)
        cobald = CobaldDaemon(lab, Path(tmp), config).start().wait_running()
        try:
            seen: set[str] = set()
            per_minute: list[int] = []
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < window:
                if not cobald.alive:
                    result["error"] = "cobald exited: " + cobald.log_tail(1500)
                    break
                seen |= set(drone_jobs(lab))
                while len(per_minute) < int(elapsed // 60):
                    per_minute.append(len(seen))
                time.sleep(2)
            result["jobs"] = len(seen)
            result["jobs_by_minute"] = per_minute
            result["brake_lines"] = [
                line[:200]
                for line in cobald.all_logs().splitlines()
                if "brake" in line.lower()
            ][:10]
        finally:
            cobald.stop()
            if args.keep:
                shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
    print(json.dumps(result, indent=2))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
