"""Fault hooks on a running lab: cut a link, limit its bandwidth, make the
login node's Slurm commands lie or stall, make the payload die at once.

(Killing and restarting services and the idle timeout live with the services
and the firewall; the Lab class exposes them all under one roof.)

Slurm command faults are per lab, never machine-wide: the lab namespaces share
the machine's filesystem, so nothing goes to /usr/local/bin. Instead
``<state>/faults/bin/{squeue,sbatch}`` are wrappers that come first on PATH
only for sessions of the lab's login sshd (its ``SetEnv PATH=``, see
configs.sshd_config), i.e. for what the COBalD daemon's SSH executor runs.
``Lab.run``/``lab exec`` keep the plain PATH, so tests read the truth with
the same ``squeue``. A wrapper misbehaves only for the lab's drone user,
only outside Slurm jobs (no ``SLURM_JOB_ID``), and only while its mode file
(``<state>/faults/<command>``) says so; otherwise it execs the real binary.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

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
    return "login" if host.startswith("worker") or host == "dmz" else "outside"


_restorers: dict[int, subprocess.Popen[bytes]] = {}


# --------------------------------------------------------------------------
# Slurm command faults: squeue that lies, sbatch that stalls
# --------------------------------------------------------------------------

#: squeue modes: ``empty`` prints nothing (exit 0, as a login-node hiccup);
#: ``truncate`` prints the real output up to one job line, cut to ``<id>|RUNN``
#: (the last RUNNING job's line, else the last line; nothing after it, as
#: when the transfer broke there); ``off`` is the real squeue.
SQUEUE_MODES = ("off", "empty", "truncate")
#: payload modes: ``exit`` makes the payload stand-in exit at once with status
#: 1 (a black-hole site); ``off`` runs it normally.
PAYLOAD_MODES = ("off", "exit")

_REAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_SQUEUE_WRAPPER = r"""#!/bin/bash
# tardis-netadapter lab {name}: squeue fault wrapper (faults.py), generated
real={real}
mode=off
if [ "$(id -un)" = {user} ] && [ -z "${{SLURM_JOB_ID:-}}" ] && [ -r {mode_file} ]; then
    read -r mode < {mode_file} || mode=off
fi
case "$mode" in
empty)
    exit 0 ;;
truncate)
    out=$("$real" "$@")
    rc=$?
    [ -n "$out" ] && printf '%s
' "$out" | awk '
        {{ line[NR] = $0; if ($0 ~ /(^|[| ])RUNNING([| ]|$)/) cut = NR }}
        END {{
            if (!cut) cut = NR
            for (i = 1; i < cut; i++) print line[i]
            split(line[cut], field, /[| ]/)
            print field[1] "|RUNN"
        }}'
    exit "$rc" ;;
*)
    exec "$real" "$@" ;;
esac
"""

_SBATCH_WRAPPER = r"""#!/bin/bash
# tardis-netadapter lab {name}: sbatch fault wrapper (faults.py), generated
real={real}
delay=0
if [ "$(id -un)" = {user} ] && [ -z "${{SLURM_JOB_ID:-}}" ] && [ -r {delay_file} ]; then
    read -r delay < {delay_file} || delay=0
fi
case "$delay" in
''|0|*[!0-9.]*)
    exec "$real" "$@" ;;
esac
# submit for real (the script comes on stdin), then stall before answering:
# the job exists while the caller still waits for its id
out=$("$real" "$@")
rc=$?
sleep "$delay"
[ -n "$out" ] && printf '%s
' "$out"
exit "$rc"
"""


def real_binary(command: str) -> str:
    """The machine's own ``command`` (never a lab wrapper or stand-in)."""
    found = shutil.which(command, path=_REAL_PATH)
    if found is None:
        raise FileNotFoundError(f"{command} not found on {_REAL_PATH}")
    return found


def wrapper_text(
    lab: L.LabLayout, command: str, real: str | None = None, user: str | None = None
) -> str:
    """The bash wrapper for ``squeue`` or ``sbatch`` of this lab.

    ``real`` and ``user`` (default: the machine's binary, the drone user)
    exist for unit tests, which run the wrapper against a fake binary.
    """
    template = {"squeue": _SQUEUE_WRAPPER, "sbatch": _SBATCH_WRAPPER}[command]
    mode_file = str(lab.faults_dir / command)
    return template.format(
        name=lab.name,
        real=shlex.quote(real or real_binary(command)),
        user=shlex.quote(user or lab.drone_user),
        mode_file=shlex.quote(mode_file),
        delay_file=shlex.quote(mode_file),
    )


def install_wrappers(lab: L.LabLayout, real: dict[str, str] | None = None) -> Path:
    """Write the wrappers into ``fault_bin_dir`` (idempotent); returns that dir.

    Installed on first use: the directory is on login sessions' PATH from
    ``lab up`` on, and a missing PATH entry is simply skipped until then.
    """
    for directory in (lab.faults_dir, lab.fault_bin_dir):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)
    for command in ("squeue", "sbatch"):
        target = lab.fault_bin_dir / command
        text = wrapper_text(lab, command, (real or {}).get(command))
        if not target.exists() or target.read_text() != text:
            temporary = target.with_suffix(".new")
            temporary.write_text(text)
            os.chmod(temporary, 0o755)
            temporary.replace(target)  # never a half-written wrapper on PATH
    return lab.fault_bin_dir


def _write_mode(lab: L.LabLayout, name: str, value: str) -> None:
    lab.faults_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(lab.faults_dir, 0o755)
    path = lab.faults_dir / name
    temporary = path.with_suffix(".new")
    temporary.write_text(value + "\n")
    os.chmod(temporary, 0o644)
    temporary.replace(path)


def _read_mode(lab: L.LabLayout, name: str, default: str) -> str:
    try:
        return (lab.faults_dir / name).read_text().strip() or default
    except FileNotFoundError:
        return default


def set_squeue(lab: L.LabLayout, mode: str) -> None:
    """Make the login node's squeue lie (``empty``/``truncate``) or not (``off``)."""
    if mode not in SQUEUE_MODES:
        raise ValueError(f"squeue mode {mode!r}: use one of {', '.join(SQUEUE_MODES)}")
    install_wrappers(lab)
    _write_mode(lab, "squeue", mode)


def squeue_mode(lab: L.LabLayout) -> str:
    return _read_mode(lab, "squeue", "off")


def set_sbatch_delay(lab: L.LabLayout, seconds: float) -> None:
    """sbatch submits, then stalls ``seconds`` before printing the id (0: off)."""
    if not 0 <= seconds <= 3600:
        raise ValueError(f"sbatch delay {seconds!r}: use 0 (off) to 3600 seconds")
    install_wrappers(lab)
    _write_mode(lab, "sbatch", f"{seconds:g}")


def sbatch_delay(lab: L.LabLayout) -> float:
    return float(_read_mode(lab, "sbatch", "0"))


def set_payload(lab: L.LabLayout, mode: str) -> None:
    """``exit``: every payload stand-in started from now on exits at once."""
    if mode not in PAYLOAD_MODES:
        raise ValueError(
            f"payload mode {mode!r}: use one of {', '.join(PAYLOAD_MODES)}"
        )
    _write_mode(lab, "payload", mode)


def payload_mode(lab: L.LabLayout) -> str:
    return _read_mode(lab, "payload", "off")


def clear_slurm_faults(lab: L.LabLayout) -> None:
    """Every command and payload fault off (the wrappers stay, passing through)."""
    for name in ("squeue", "sbatch", "payload"):
        (lab.faults_dir / name).unlink(missing_ok=True)
