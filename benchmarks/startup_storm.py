#!/usr/bin/env python3
"""Many drones starting at once against a login sshd with OpenSSH's default MaxStartups.

OpenSSH's default ``MaxStartups 10:30:100`` drops new connections at random
once 10 are unauthenticated, and all of them at 100. When a site's drones
start together (a batch of jobs, or every drone reconnecting after an
outage), their tunnels reach the login node's sshd together. The tunnel
supervisor must spread its starts so that sshd drops few of them and no
drone passes its tunnel's ready timeout.

A second, real sshd runs on the lab's login node on a port workers may reach
(:data:`STORM_PORT`), configured like the login sshd but with ``MaxStartups``
left at OpenSSH's default; its log counts every dropped connection ("past
MaxStartups"). DRONES rendered drone scripts (mode socks, the supervisor as
configured, no pool probe, ``sleep`` as the payload) are started directly on
the workers, split evenly, all released by one FIFO at the same instant (a
batch system would add its own spread; this is the worst case). Reported:
when each tunnel was ready (the drone's own "stage tunnel ready" line), how
many drones failed their tunnel stage, and sshd's dropped connections (its
own "N connections dropped" summary, or the clients' kex_exchange_identification
errors if more: sshd logs single drops rate-limited).

    python benchmarks/startup_storm.py [--drones 100] [--supervisor builtin]

Short form (what tests/lab/test_startup_storm.py runs, on the shared lab):
the same 100 drones, which take about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Optional

from tardis_netadapter_lab import Lab
from tardis_netadapter_lab import layout as L
from tardis_netadapter_lab.netns import is_alive, is_listening, terminate

from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget
from tardis_netadapter.render import render_drone_script

#: in the srun port range, which the site firewall lets workers reach on login
STORM_PORT = 60061
READY = re.compile(r"stage tunnel ready after ([\d.]+)s")
FAILED = re.compile(r"stage tunnel failed|stage tunnel not ready|not up after")
#: sshd's summary when it stops throttling (it logs single drops rate-limited)
DROPPED = re.compile(r"MaxStartups throttling after \S+, (\d+) connections dropped")
#: what a dropped client's ssh says (sshd closes before the key exchange)
CLIENT_DROPPED = re.compile(r"^kex_exchange_identification: ", re.M)


@dataclass
class StormResult:
    """What one storm measured."""

    drones: int
    supervisor: str
    ready_seconds: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dropped: int = 0
    ready_timeout: float = 0.0
    #: drones whose tunnel took longer than the ready timeout
    late: int = 0

    def to_dict(self) -> dict[str, Any]:
        ready = sorted(self.ready_seconds)
        return {
            "drones": self.drones,
            "supervisor": self.supervisor,
            "tunnels_up": len(ready),
            "failed": len(self.failed),
            "late": self.late,
            "ready_timeout_s": self.ready_timeout,
            "ready_median_s": round(median(ready), 2) if ready else None,
            "ready_max_s": round(ready[-1], 2) if ready else None,
            "sshd_dropped": self.dropped,
        }


def storm_sshd_config(lab: Lab) -> str:
    """The login sshd's configuration on STORM_PORT with MaxStartups at default."""
    text = (lab.layout.ssh_dir / "login_sshd_config").read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("MaxStartups"):
            continue  # OpenSSH's default: 10:30:100
        if line.startswith("ListenAddress"):
            line = f"ListenAddress {L.LOGIN_SITE}:{STORM_PORT}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def storm_known_hosts(lab: Lab) -> str:
    """The login node's host key under the storm port's known_hosts name."""
    key = (lab.layout.ssh_dir / "login_host_ed25519.pub").read_text().split()
    return f"[{L.LOGIN_SITE}]:{STORM_PORT} {key[0]} {key[1]}\n"


def profile_data(
    lab: Lab, known_hosts: str, supervisor: str, ready_timeout: float = 10.0
) -> dict[str, Any]:
    """A drone with only a tunnel worth measuring: no pool probe, sleep payload."""
    return {
        "firewall": {"idle_timeout": lab.idle_timeout},
        "tunnel": {
            "hops": [{"host": L.LOGIN_SITE, "port": STORM_PORT}],
            "known_hosts": known_hosts,
            "supervisor": supervisor,
            "ready_timeout": ready_timeout,
        },
        "chain": {"localnet": ["127.0.0.0/8", L.SITE_NET]},
        "pool": {"collector": ""},
        "monitoring": {"enabled": False},
        "payload": {"command": ["sleep", "3600"]},
    }


#: per worker: start COUNT drones from FIRST on, each blocked on the FIFO
#: until the benchmark opens it; each records its pid for the stop
LAUNCHER = r"""
dir=$1 first=$2 count=$3
for ((i = first; i < first + count; i++)); do
    (
        : <"$dir/go"
        echo "$BASHPID" >"$dir/pid.$i"
        SLURM_JOB_ID=$i TardisDroneUuid=storm-$i exec bash "$dir/drone.sh" \
            >"$dir/out.$i" 2>&1
    ) &
done
wait
"""


def _start_sshd(lab: Lab, stack: ExitStack, run_dir: Path) -> Path:
    config = run_dir / "sshd_config"
    config.write_text(storm_sshd_config(lab))
    log_path = run_dir / "sshd.log"
    log = stack.enter_context(log_path.open("wb"))
    proc = lab.popen(
        "login", ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=log
    )
    stack.callback(_stop, proc)
    deadline = time.monotonic() + 10
    while not is_listening(proc.pid, L.LOGIN_SITE, STORM_PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"storm sshd did not start: {log_path.read_text()}")
        time.sleep(0.05)
    return log_path


def _stop(proc: subprocess.Popen[Any]) -> None:
    terminate([proc.pid])
    proc.wait(timeout=10)


def _stop_drones(run_dir: Path) -> None:
    """TERM every drone script (its own cleanup stops its tunnel), then wait."""
    pids = []
    for path in run_dir.glob("pid.*"):
        try:
            pids.append(int(path.read_text()))
        except (OSError, ValueError):
            continue
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    terminate([pid for pid in pids if is_alive(pid)])


def storm(
    lab: Lab,
    drones: int = 100,
    supervisor: str = "builtin",
    timeout: float = 90,
    ready_timeout: float = 10.0,
) -> StormResult:
    """Start DRONES drones at once on the lab's workers; measure their tunnels.

    ``ready_timeout`` is the drones' ``tunnel.ready_timeout`` (the product's
    default, 10 s, unless a caller on a busier machine needs more)."""
    home = lab.layout.home(lab.drone_user)
    run_dir = home / f"storm-{os.getpid()}"
    run_dir.mkdir(mode=0o755)
    os.mkfifo(run_dir / "go", 0o666)
    known_hosts = run_dir / "known_hosts"
    known_hosts.write_text(storm_known_hosts(lab))
    profile = load_profile(
        profile_data(lab, str(known_hosts), supervisor, ready_timeout)
    )
    budget = derive_budget(profile)
    (run_dir / "drone.sh").write_text(
        render_drone_script(
            profile,
            budget,
            site_name="NetLab",
            machine_type="storm",
            job_id_variable="SLURM_JOB_ID",
        )
    )
    subprocess.run(["chown", "-R", lab.drone_user, str(run_dir)], check=True)
    result = StormResult(drones, supervisor, ready_timeout=ready_timeout)
    workers = lab.layout.worker_hosts
    with ExitStack() as stack:
        stack.callback(_cleanup_dir, run_dir)
        keep = os.environ.get("TNA_KEEP_LOGS")
        if keep:  # the drones' output and sshd's log, for a closer look
            stack.callback(
                shutil.copytree,
                run_dir,
                Path(keep) / run_dir.name,
                ignore=shutil.ignore_patterns("go"),
            )
        sshd_log = _start_sshd(lab, stack, run_dir)
        stack.callback(_stop_drones, run_dir)
        share, extra = divmod(drones, len(workers))
        first = 1
        for index, worker in enumerate(workers):
            count = share + (1 if index < extra else 0)
            launcher = lab.popen(
                worker,
                ["bash", "-c", LAUNCHER, "storm", str(run_dir), str(first), str(count)],
                user=lab.drone_user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(_reap, launcher)
            first += count
        time.sleep(2)  # every drone blocked on the FIFO
        with open(run_dir / "go", "w"):
            pass  # opening it for writing releases every reader at once
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outs = [_read(run_dir / f"out.{i}") for i in range(1, drones + 1)]
            settled = [o for o in outs if READY.search(o) or FAILED.search(o)]
            if len(settled) == drones:
                break
            time.sleep(0.5)
        for i in range(1, drones + 1):
            out = _read(run_dir / f"out.{i}")
            match = READY.search(out)
            if match:
                result.ready_seconds.append(float(match.group(1)))
            else:
                result.failed.append(f"storm-{i}: {out.strip()[-300:]}")
        result.late = sum(1 for s in result.ready_seconds if s > result.ready_timeout)
        # sshd's own count, or the clients' where sshd was still throttling
        outs = "".join(_read(run_dir / f"out.{i}") for i in range(1, drones + 1))
        result.dropped = max(
            sum(int(n) for n in DROPPED.findall(_read(sshd_log))),
            len(CLIENT_DROPPED.findall(outs)),
        )
    return result


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _reap(proc: subprocess.Popen[Any]) -> None:
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        terminate([proc.pid])
        proc.wait()


def _cleanup_dir(run_dir: Path) -> None:
    subprocess.run(["rm", "-rf", "--", str(run_dir)], check=False)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drones", type=int, default=100, help="default 100")
    parser.add_argument(
        "--supervisor",
        default="builtin",
        choices=("builtin", "autossh"),
        help="Network.tunnel.supervisor of the drones (default builtin)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=10.0,
        help="the drones' Network.tunnel.ready_timeout in seconds (default 10)",
    )
    parser.add_argument("--workers", type=int, default=2, help="lab workers")
    parser.add_argument("--name", default=f"sto{os.getpid() % 1000}", help="lab name")
    args = parser.parse_args(argv)
    if args.drones < 1:
        parser.error(f"--drones: got {args.drones}; expected at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    lab = Lab(name=args.name, workers=args.workers, idle_timeout=300)
    with ExitStack() as stack:
        stack.callback(lab.down)
        lab.up()
        result = storm(
            lab, args.drones, args.supervisor, ready_timeout=args.ready_timeout
        )
    print(json.dumps(result.to_dict(), indent=2))
    for line in result.failed[:5]:
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
