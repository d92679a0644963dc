"""Fault hooks on a running lab: cut a link, limit its bandwidth.

(Killing and restarting services and the idle timeout live with the services
and the firewall; the Lab class exposes them all under one roof.)
"""

from __future__ import annotations

import re
import subprocess

from . import layout as L
from . import topology
from .netns import check_call, in_namespace, start_time

_RATE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([kmg]?)bit$")
_FACTORS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def rate_bits(rate: str) -> int:
    """'100mbit' -> 100000000; only tc's bit units, to keep meaning obvious."""
    match = _RATE_RE.match(rate.strip().lower())
    if not match:
        raise ValueError(
            f"rate {rate!r}: use tc bit units like 500kbit, 100mbit, 1gbit"
        )
    return int(float(match.group(1)) * _FACTORS[match.group(2)])


def limit_bandwidth(lab: L.LabLayout, host: str, rate: str | None) -> None:
    """tbf on both ends of a host's uplink (tbf shapes egress only); None clears."""
    for namespace, ifname in topology.link_ends(lab, host):
        if rate is None:
            subprocess.run(
                ["tc", "-n", namespace, "qdisc", "del", "dev", ifname, "root"],
                capture_output=True,
                check=False,
            )
            continue
        bits = rate_bits(rate)
        burst = max(bits // 8 // 100, 16 * 1024)  # 10 ms worth, at least 16 KiB
        check_call(
            ["tc", "-n", namespace, "qdisc", "replace", "dev", ifname, "root", "tbf"]
            + ["rate", str(bits), "burst", str(burst), "latency", "100ms"]
        )


def cut_link(lab: L.LabLayout, host: str, seconds: float) -> int:
    """Take a host's uplink down now and bring it back after `seconds`.

    The restore runs as a small process inside the lab (in the namespace that
    owns the switch port), so it survives the caller and `lab down` stops it.
    Returns the restorer's pid.
    """
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    hub_namespace, port = topology.link_ends(lab, host)[1]
    topology.set_link(lab, host, up=False)
    script = 'sleep "$1"; exec ip -n "$2" link set "$3" up'
    argv = in_namespace(
        lab.namespace_path(_hub_host(lab, host)),
        ["/bin/sh", "-c", script, "restore-link", str(seconds), hub_namespace, port],
    )
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    (lab.run_dir / f"restore-link-{host}.pid").write_text(
        f"{proc.pid} {start_time(proc.pid) or 0}\n"
    )
    _restorers[proc.pid] = proc
    return proc.pid


def restore_link(lab: L.LabLayout, host: str) -> None:
    topology.set_link(lab, host, up=True)


def _hub_host(lab: L.LabLayout, host: str) -> str:
    return "login" if host.startswith("worker") else "outside"


_restorers: dict[int, subprocess.Popen[bytes]] = {}
