"""A real COBalD daemon on the lab's control host, and what it can be asked.

The lab tests and ``tardis-netadapter demo`` run the installed ``cobald`` with
``configs/lab.yml`` (the lab's name filled in) in the ``control`` namespace,
then watch three sources of truth: TARDIS's SqliteRegistry (drone states),
Slurm on the login node (job states) and the pool stand-in (registrations).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

import tardis_netadapter
from tardis_netadapter.connectivity.heartbeat import Heartbeat, parse_records

from . import layout as L
from .site import Lab


def product_source() -> Path:
    """Where the product (``tardis_netadapter``) this process imports lives.

    In a checkout (``pip install -e .``) that is the checkout's root, which
    holds configs/ and drone_scripts/; in an ordinary install it is
    site-packages. Asked of the product, not of this file: the lab is a
    separate distribution, and the daemon must run the same product code as
    the caller (lab commands get a fresh environment, see CobaldDaemon.start).
    """
    return Path(tardis_netadapter.__file__).resolve().parent.parent


def lab_config(name: str = "lab.yml") -> Path:
    """configs/NAME of the checkout, else the copy shipped in the product wheel."""
    checkout = product_source() / "configs" / name
    if checkout.is_file():
        return checkout
    return Path(tardis_netadapter.__file__).resolve().parent / "configs" / name


#: the product's source root: the checkout, or site-packages
SOURCE = product_source()
#: the repository's lab configuration; ``${lab}`` stands for the lab's name
LAB_CONFIG = lab_config()
#: the same in mode vpn (issue 13): the drones' network is the DMZ's VPN
LAB_VPN_CONFIG = lab_config("lab-vpn.yml")
#: stands for the lab's ocserv pin in configs/lab-vpn.yml (a valid-looking
#: pin, so that `check` accepts the file as it is in the repository)
VPN_PIN_PLACEHOLDER = "pin-sha256:tardisnetadapterLabPinFilledInByWriteConfig="
#: the same in mode nat (issue 14): the site NAT's keepalived router pair
LAB_NAT_CONFIG = lab_config("lab-nat.yml")
#: the same in mode container-net (issue 15): the EPN partition through CNI
LAB_CNET_CONFIG = lab_config("lab-cnet.yml")
#: stands for the lab's drone user in configs/lab-nat.yml's nat.users
NAT_USER_PLACEHOLDER = "tna-lab-drone-user"
POOL = f"{L.OUTSIDE_HTTP}:{L.COLLECTOR_PORT}"


def write_config(
    lab: Lab, directory: Path, source: Path = LAB_CONFIG, replace: Optional[dict] = None
) -> Path:
    """``configs/lab.yml`` (or ``source``) for this lab in ``directory``.

    ``${lab}`` becomes the lab's name, VPN_PIN_PLACEHOLDER its ocserv's pin
    and NAT_USER_PLACEHOLDER its drone user; ``replace`` edits the text
    further.
    """
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} not found: install tardis-netadapter from a checkout "
            "(pip install -e . -e ./lab) or pass the configuration's path"
        )
    text = source.read_text().replace("${lab}", lab.name)
    if VPN_PIN_PLACEHOLDER in text:
        text = text.replace(VPN_PIN_PLACEHOLDER, lab.vpn_pin)
    text = text.replace(NAT_USER_PLACEHOLDER, lab.drone_user)
    for old, new in (replace or {}).items():
        if old not in text:
            raise ValueError(f"{old!r} does not occur in {source}")
        text = text.replace(old, new)
    path = directory / "cobald.yml"
    path.write_text(text)
    return path


def drone_states(db: Path) -> dict[str, tuple[str, str]]:
    """drone uuid -> (Slurm job id, TARDIS state) from the SqliteRegistry."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            rows = connection.execute(
                "SELECT R.drone_uuid, R.remote_resource_uuid, S.state FROM Resources R "
                "JOIN ResourceStates S ON R.state_id = S.state_id"
            ).fetchall()
    except sqlite3.Error:  # the daemon may be creating or writing it
        return {}
    return {uuid: (str(job), state) for uuid, job, state in rows}


def slurm_jobs(lab: Lab) -> dict[str, tuple[str, str]]:
    """job id -> (state, job name) of the drone user's jobs, as squeue sees them."""
    result = lab.run(
        "login",
        ["squeue", "-h", "-t", "all", "-o", "%i %T %j"],
        user=lab.drone_user,
    )
    jobs = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) >= 3:
            jobs[words[0]] = (words[1], words[2])
    return jobs


def pool_request(lab: Lab, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the pool stand-in, sent from the control host."""
    result = lab.run("control", ["pool", "--request", POOL, json.dumps(request)])
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        return {"ok": False, "error": result.stderr.strip() or result.stdout[-200:]}
    return answer if isinstance(answer, dict) else {"ok": False, "error": repr(answer)}


class LoginExecutor:
    """A TARDIS-style executor running commands on the lab's login node.

    Callers in the root namespace (tests, the demo) must never send traffic
    to lab addresses; ``Lab.run`` enters the login namespace instead, as the
    drone user, which is what the daemon's SSH session amounts to.
    """

    def __init__(self, lab: Lab, timeout: float = 60) -> None:
        self.lab = lab
        self.timeout = timeout

    async def run_command(self, command: str, stdin_input: Optional[str] = None) -> Any:
        from tardis.utilities.attributedict import AttributeDict

        result = await asyncio.to_thread(
            self.lab.run,
            "login",
            ["/bin/sh", "-c", command],
            user=self.lab.drone_user,
            input=stdin_input,
            timeout=self.timeout,
        )
        return AttributeDict(
            stdout=result.stdout, stderr=result.stderr, exit_code=result.returncode
        )


@dataclass
class CobaldDaemon:
    """``cobald CONFIG`` (the COBalD daemon) in the control namespace, with its log and registry."""

    lab: Lab
    workdir: Path
    config: Path
    process: Optional[subprocess.Popen] = None
    _log: Optional[IO[str]] = None
    _busy: set[str] = field(default_factory=set)

    @property
    def log_path(self) -> Path:
        return self.workdir / "cobald.log"

    @property
    def db(self) -> Path:
        """The SqliteRegistry file (configs/lab.yml: ``db_file: drones.db``)."""
        return self.workdir / "drones.db"

    def start(self) -> CobaldDaemon:
        cobald = Path(sys.executable).parent / "cobald"
        if not cobald.exists():
            raise FileNotFoundError(f"the cobald daemon is not installed at {cobald}")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - lives as long as the daemon
        self.process = self.lab.popen(
            "control",
            [str(cobald), str(self.config)],
            # the daemon runs the code of the caller's checkout, not whichever
            # one is installed in develop mode (lab commands get a fresh env)
            env={"PYTHONPATH": str(SOURCE)},
            cwd=str(self.workdir),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def drones(self) -> dict[str, tuple[str, str]]:
        return drone_states(self.db)

    def busy_and_available(self) -> dict[str, str]:
        """Make every drone that registered busy in the pool (load 1: TARDIS
        wants to keep it, so it becomes Available rather than drained);
        the Available ones, uuid -> job id. Fails if the daemon exited."""
        if not self.alive:
            raise RuntimeError(
                f"cobald exited ({self.process and self.process.poll()})"
            )
        for uuid in self.drones():
            if uuid not in self._busy and pool_request(
                self.lab, {"op": "set_load", "uuid": uuid, "load": 1.0}
            ).get("ok"):
                self._busy.add(uuid)
        return {
            uuid: job
            for uuid, (job, state) in self.drones().items()
            if state == "AvailableState"
        }

    def log_tail(self, characters: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-characters:]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; only the process we started."""
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> int:
        """SIGKILL the daemon now (a crash: no cleanup, no final registry write).

        Only the process this helper started, by its pid; ``lab.popen`` runs
        ``nsenter --net=... -- cobald``, and nsenter execs cobald in place,
        so the pid is the daemon's. Returns that pid.
        """
        process = self.process
        if process is None or process.poll() is not None:
            raise RuntimeError("the cobald daemon is not running")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return process.pid

    def restart(self) -> CobaldDaemon:
        """Start the daemon again with the same config, directory and registry.

        The previous run's log is kept as ``cobald.<n>.log``; ``all_logs``
        reads them all.
        """
        if self.alive:
            raise RuntimeError("stop or kill the running daemon before a restart")
        if self.log_path.exists():
            runs = len(list(self.workdir.glob("cobald.*.log")))
            self.log_path.rename(self.workdir / f"cobald.{runs + 1}.log")
        return self.start()

    def all_logs(self) -> str:
        """Every run's log, oldest first (see ``restart``)."""
        earlier = sorted(
            self.workdir.glob("cobald.*.log"),
            key=lambda path: int(path.name.split(".")[1]),
        )
        return "".join(
            path.read_text(errors="replace")
            for path in [*earlier, self.log_path]
            if path.exists()
        )

    def wait_running(self, timeout: float = 60.0) -> CobaldDaemon:
        """Block until COBalD's first demand line: the pool and registry exist.

        Reading the registry before that races with TARDIS's own setup
        (``PRAGMA journal_mode = WAL`` needs the database to itself), which
        makes the daemon exit with "database is locked".
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"cobald exited at start:\n{self.log_tail()}")
            if self.log_path.exists() and "demand = " in self.log_path.read_text(
                errors="replace"
            ):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"cobald not running after {timeout:.0f} s")

    def __enter__(self) -> CobaldDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# issue 9 ("never lose a drone"): configs and counts for the fault runs
# --------------------------------------------------------------------------


def fixed_demand(drones: int) -> dict[str, str]:
    """``write_config`` edits: COBalD always wants ``drones`` drones, quota alike.

    The Standardiser clamps whatever the LinearController decides, so the
    demand does not depend on the pool's load (drones that never register,
    or a run that ends them, are replaced at once).
    """
    return {
        "    minimum: 0\n    maximum: 2\n": (
            f"    minimum: {drones}\n    maximum: {drones}\n"
        ),
        "      quota: 2\n": f"      quota: {drones}\n",
    }


def with_brake(
    replace: dict[str, str],
    after: int,
    min_lifetime: float,
    backoff: float,
    max_backoff: float,
) -> dict[str, str]:
    """``replace`` plus a ``brake:`` block in the NetLab site section."""
    return {
        **replace,
        "  NetLab:\n": (
            "  NetLab:\n    brake:\n"
            f"      after: {after}\n      min_lifetime: {min_lifetime:g}\n"
            f"      backoff: {backoff:g}\n      max_backoff: {max_backoff:g}\n"
        ),
    }


def brake_bound(
    window: float,
    quota: int,
    after: int,
    backoff: float,
    max_backoff: float,
) -> int:
    """Most jobs a black-hole site can be sent in ``window`` seconds with a brake.

    Between two engagements of the brake (and before the first) at most
    ``quota`` drones are deployed at once, and at most ``after - 1`` of their
    slots are refilled before the ``after``-th young death engages the brake
    again: ``quota + after - 1`` submissions per open period. The k-th
    engagement lasts ``min(backoff * 2**(k-1), max_backoff)`` and nothing is
    submitted while it lasts, so a window holds at most 1 + (the number of
    engagements that end within it) open periods. Drones need time to die,
    which makes every open period longer: the bound is safe, not tight.
    """
    periods, elapsed, k = 1, 0.0, 1
    while True:
        elapsed += min(backoff * 2 ** (k - 1), max_backoff)
        if elapsed >= window:
            break
        periods += 1
        k += 1
    return periods * (quota + after - 1)


def brake_probes(window: float, backoff: float, max_backoff: float) -> int:
    """Most probes an engaged brake lets through in ``window`` seconds.

    While engaged nothing is submitted until a back-off ends; then exactly one
    probe goes through, and if it dies young the next back-off doubles (up to
    ``max_backoff``). Probes take time to die, so this is an upper bound.
    """
    probes, elapsed, k = 0, 0.0, 1
    while True:
        elapsed += min(backoff * 2 ** (k - 1), max_backoff)
        if elapsed >= window:
            return probes
        probes += 1
        k += 1


def drone_jobs(lab: Lab, prefix: str = "netlab-") -> dict[str, str]:
    """Slurm job id -> job name of the drone user's drone jobs (any state).

    Read with ``Lab.run`` (the plain PATH): never through the fault wrappers.
    """
    return {
        job: name
        for job, (_state, name) in slurm_jobs(lab).items()
        if name.startswith(prefix)
    }


def registry_states(db: Path, attempts: int = 20) -> dict[str, tuple[str, str]]:
    """Like ``drone_states``, but a registry that cannot be read is an error.

    ``drone_states`` answers ``{}`` while the daemon holds a lock, which a
    test of "no drone is ended" must not mistake for "every drone is gone":
    this retries for a few seconds and then raises.
    """
    if not db.exists():
        return {}
    error: Exception | None = None
    for _ in range(attempts):
        try:
            # closed explicitly: a connection kept alive by a traceback holds
            # the WAL open, and TARDIS (locking_mode EXCLUSIVE at start) then
            # fails a restart with "database is locked"
            with contextlib.closing(sqlite3.connect(db, timeout=1)) as connection:
                rows = connection.execute(
                    "SELECT R.drone_uuid, R.remote_resource_uuid, S.state "
                    "FROM Resources R JOIN ResourceStates S "
                    "ON R.state_id = S.state_id"
                ).fetchall()
            return {uuid: (str(job), state) for uuid, job, state in rows}
        except sqlite3.Error as exc:
            error = exc
            time.sleep(0.2)
    raise RuntimeError(f"cannot read the registry {db}: {error!r}")


def heartbeat_dir(lab: Lab) -> Path:
    """Where the lab's drones write their records (the default heartbeat_dir
    in the drone user's shared home)."""
    return lab.layout.home(lab.drone_user) / ".tardis-netadapter" / "heartbeats"


def heartbeat_record(lab: Lab, uuid: str) -> dict[str, Any]:
    """A drone's last heartbeat record as written ({} when none or half-written):
    the mode objects (``route``, ``container_net``, ...) as the drone wrote them."""
    path = heartbeat_dir(lab) / f"{uuid}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def heartbeats(lab: Lab) -> dict[str, Heartbeat]:
    """The drones' latest records, read from the shared home (file transport)."""
    text = ""
    for path in heartbeat_dir(lab).glob("*.json"):
        try:
            text += path.read_text(errors="replace") + "\n"
        except OSError:  # replaced while we read it
            continue
    return parse_records(text)


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    why: Callable[[], str],
    every: float = 1.0,
) -> float:
    """Poll ``check`` every ``every`` s: the seconds it took, or fail with ``why()``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(every)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s\n{why()}")
