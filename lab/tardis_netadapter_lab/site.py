"""The Lab: bring a simulated restricted site up, use it, break it, remove it.

This module only orchestrates; what the site looks like lives in layout.py,
how each part is made in topology/firewall/accounts/configs/services.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import (
    accounts,
    cnet,
    configs,
    faults,
    firewall,
    gridengine,
    services,
    sitenat,
    toolbox,
    topology,
    vpn,
    webroot,
)
from . import layout as L
from .netns import in_namespace, pids_in_namespaces, pids_of_uids, terminate, user_env

log = logging.getLogger(__name__)

NODE_READY_TIMEOUT = 20.0


class LabError(RuntimeError):
    """The lab cannot do what was asked (already up, not up, bad host...)."""


class Lab:
    """One simulated site, named so that several can coexist on a machine."""

    def __init__(
        self, name: str = L.DEFAULT_NAME, workers: int = 2, idle_timeout: int = 30
    ) -> None:
        self.layout = L.LabLayout(name=name, workers=workers)
        self.idle_timeout = int(idle_timeout)

    @classmethod
    def attach(cls, name: str = L.DEFAULT_NAME) -> Lab:
        """The lab of this name that is up (e.g. started by another process)."""
        config_file = L.LabLayout(name=name).config_file
        try:
            config = json.loads(config_file.read_text())
        except FileNotFoundError:
            raise LabError(f"lab {name!r} is not up (no {config_file})") from None
        return cls(
            name=name, workers=config["workers"], idle_timeout=config["idle_timeout"]
        )

    # names ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def state_dir(self) -> Path:
        return self.layout.state_dir

    @property
    def drone_user(self) -> str:
        return self.layout.drone_user

    @property
    def other_user(self) -> str:
        return self.layout.other_user

    @property
    def hosts(self) -> list[str]:
        return self.layout.hosts

    def namespace(self, host: str) -> str:
        return self.layout.namespace(host)

    def address(self, host: str, net: str | None = None) -> str:
        """Address of a host on "site" or "public" (login needs `net`)."""
        return self.layout.address(host, net)

    def endpoint(self, service: str) -> tuple[str, int]:
        """(address, port) a client uses to reach a service."""
        entry = services.service_table(self.layout)[service]
        address = entry.address
        if address == "0.0.0.0":
            address = self.layout.addresses(entry.host).get("site") or self.address(
                entry.host
            )
        return address, entry.port

    @property
    def services(self) -> list[str]:
        return list(services.service_table(self.layout))

    # the DMZ's VPN server (issue 13) -----------------------------------------
    @property
    def vpn_pin(self) -> str:
        """`pin-sha256:...` of ocserv's certificate, for `openconnect --servercert`."""
        return vpn.pin(self.layout)

    @property
    def vpn_user(self) -> str:
        """The VPN login: the drone user (password or client certificate)."""
        return self.layout.drone_user

    @property
    def vpn_password_file(self) -> Path:
        """~drone/.tardis-netadapter/vpn.password (0600, the drone user's)."""
        return self.layout.vpn_password_file

    @property
    def vpn_client_cert(self) -> Path:
        return self.layout.vpn_client_cert

    @property
    def vpn_client_key(self) -> Path:
        return self.layout.vpn_client_key

    @property
    def vpn_ca_cert(self) -> Path:
        """The lab CA (`--cafile`: verification by CA instead of by pin)."""
        return vpn.ca_cert(self.layout)

    # the site NAT (issue 14) ---------------------------------------------------
    @property
    def site_nat(self) -> sitenat.SiteNat:
        """GSI's NAT router pair and the workers' marked route: off until
        ``lab.site_nat.up()`` (see sitenat.py)."""
        return sitenat.SiteNat(self.layout)

    # Grid Engine (issue 16) -------------------------------------------------
    @property
    def gridengine(self) -> gridengine.GridEngine:
        """Debian's real Grid Engine on login and the workers: off until
        ``lab.gridengine.up()`` (see gridengine.py)."""
        return gridengine.GridEngine(self.layout)

    # the EPN partition (issue 15) --------------------------------------------
    @property
    def apptainer(self) -> Path:
        """The site-local setuid apptainer whose --net joins the partition."""
        return self.layout.apptainer

    def partition_leases(self) -> list[Path]:
        """host-local IPAM's lease files of the partition: one per address held."""
        return cnet.leases(self.layout)

    def container_netns(self) -> dict[int, Path]:
        """Network namespaces of running partition containers, by container pid
        (``/proc/PID/ns/net``; the namespaces have no name, as apptainer's)."""
        return {
            pid: Path(f"/proc/{pid}/ns/net")
            for pid in cnet.containers(self.layout).values()
        }

    # lifecycle --------------------------------------------------------------
    def is_up(self) -> bool:
        return (
            bool(topology.lab_namespaces(self.name))
            and self.layout.config_file.exists()
        )

    def up(self) -> Lab:
        """Build the whole site; on any failure remove what was built and raise."""
        if topology.lab_namespaces(self.name):
            raise LabError(
                f"lab {self.name!r} already exists: run `lab down --name {self.name}`"
            )
        teardown(self.name)  # leftovers of a crashed run (users, state dir)
        started = time.monotonic()
        try:
            self._build()
        except BaseException:
            log.error("lab %s failed to come up; tearing it down", self.name)
            teardown(self.name)
            raise
        log.info("lab %s up in %.1f s", self.name, time.monotonic() - started)
        return self

    def down(self) -> dict[str, list[str]]:
        """Remove everything of this lab name; safe to call any number of times."""
        return teardown(self.name)

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _build(self) -> None:
        lab = self.layout
        for directory in (lab.state_dir, lab.run_dir, lab.log_dir, lab.slurm_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.chmod(L.STATE_ROOT, 0o755)
        os.chmod(L.STATE_ROOT.parent, 0o755)
        topology.create(lab)
        firewall.install(lab, self.idle_timeout)
        accounts.create(lab)
        vpn.create(lab)
        self._write_configs()
        webroot.build(lab.www_dir)
        toolbox.install(lab.bin_dir)
        toolbox.install_site_software(
            lab.home(lab.drone_user), lab.bin_dir, lab.drone_user
        )
        cnet.build(lab)
        self._save_config()
        self._start_services()

    def _write_configs(self) -> None:
        lab = self.layout
        ssh = lab.ssh_dir
        (ssh / "login_sshd_config").write_text(
            configs.sshd_config(
                lab,
                host_key=ssh / "login_host_ed25519",
                listen="0.0.0.0",
                port=L.SSH_PORT,
                login_node=True,
            )
        )
        (ssh / "gateway_sshd_config").write_text(
            configs.sshd_config(
                lab,
                host_key=ssh / "gateway_host_ed25519",
                listen=L.OUTSIDE_GATEWAY,
                port=L.HTTPS_PORT,
                login_node=False,
            )
        )
        (ssh / "login2_sshd_config").write_text(
            configs.sshd_config(
                lab,
                host_key=ssh / "login2_host_ed25519",
                listen="0.0.0.0",
                port=L.SSH_PORT,
                login_node=True,
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privsep dir
        lab.slurm_conf.write_text(configs.slurm_conf(lab))
        configs.write_gres(lab)  # the workers' stand-in GPUs (issue 15)
        for sub in ("state", "spool"):
            (lab.slurm_dir / sub).mkdir(exist_ok=True)
        for worker in lab.worker_hosts:
            (lab.slurm_dir / "spool" / worker).mkdir()
        dante = lab.state_dir / "dante"
        dante.mkdir()
        (dante / "danted.conf").write_text(configs.danted_conf(lab))
        squids = (
            ("login", "127.0.0.1"),
            ("login2", "127.0.0.1"),
            ("outside", L.OUTSIDE_HTTP),
        )
        for role, listen in squids:
            work = lab.state_dir / "squid" / role
            work.mkdir(parents=True)
            (work / "squid.conf").write_text(
                configs.squid_conf(lab, role=role, listen=listen, port=L.SQUID_PORT)
            )
            shutil.chown(work, "proxy", "proxy")
        services.pool_state(lab).parent.mkdir()
        lab.echo_dir.mkdir()
        for protocol in ("tcp", "udp"):
            handler = services.echo_handler(lab, protocol)
            handler.write_text(configs.echo_script(lab, protocol))
            handler.chmod(0o755)
            configs.echo_log(lab, protocol).touch()

    def _save_config(self) -> None:
        config = {
            "name": self.name,
            "workers": self.layout.workers,
            "idle_timeout": self.idle_timeout,
            "created": time.time(),
        }
        self.layout.config_file.write_text(json.dumps(config, indent=2) + "\n")

    def _start_services(self) -> None:
        lab = self.layout
        table = services.service_table(lab)
        if not (lab.bin_dir / "pool").exists():
            log.warning("pool stand-in missing: the lab runs without a pool")
            del table["pool"]
        slurmds = [s for s in table.values() if s.name.startswith("slurmd-")]
        first = [s for s in table.values() if s not in slurmds]
        for service in first:
            services.start(lab, service)
        # slurmd registers at once when slurmctld already listens: no retry wait
        services.wait_ready(lab, [table["slurmctld"]])
        for service in slurmds:
            services.start(lab, service)
        services.wait_ready(lab, first + slurmds)
        self.wait_nodes_idle()

    def wait_nodes_idle(self, timeout: float = NODE_READY_TIMEOUT) -> None:
        """Block until every worker shows as idle in Slurm."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.node_states()
            if len(states) == self.layout.workers and all(
                state == "idle" for state in states.values()
            ):
                return
            time.sleep(0.2)
        raise LabError(f"slurm nodes not idle after {timeout:.0f} s: {states}")

    def node_states(self) -> dict[str, str]:
        result = self.run("login", ["sinfo", "-h", "-N", "-o", "%N %t"], timeout=10)
        states = {}
        for line in result.stdout.splitlines():
            node, _, state = line.partition(" ")
            states[node] = state.strip()
        return states

    # running things ---------------------------------------------------------
    def env(
        self, host: str, user: str | None = None, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Environment of lab commands: stand-ins first on PATH, SLURM_CONF."""
        self.layout.namespace(host)
        base = {
            "PATH": self.layout.default_path(),
            "SLURM_CONF": str(self.layout.slurm_conf),
        }
        env = user_env(user, base)
        env.update(extra or {})
        return env

    def command(
        self, host: str, argv: Sequence[str], user: str | None = None
    ) -> list[str]:
        """Argv that runs `argv` on a lab host (inside its namespace)."""
        return in_namespace(self.layout.namespace_path(host), argv, user)

    def _cwd(self, user: str | None) -> str:
        return str(self.layout.home(user)) if user else "/"

    def run(
        self,
        host: str,
        argv: Sequence[str],
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 60,
        input: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on a lab host and capture its output (text)."""
        return subprocess.run(
            self.command(host, argv, user),
            env=self.env(host, user, env),
            cwd=self._cwd(user),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=check,
        )

    def popen(
        self,
        host: str,
        argv: Sequence[str],
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start a command on a lab host in the background (`lab down` stops it)."""
        kwargs.setdefault("cwd", self._cwd(user))
        return subprocess.Popen(
            self.command(host, argv, user), env=self.env(host, user, env), **kwargs
        )

    # faults -----------------------------------------------------------------
    def kill_service(self, name: str) -> bool:
        """Stop a service as a crash would; False if it was not running."""
        self._service(name)
        return services.stop(self.layout, name)

    def restart_service(self, name: str) -> int:
        """(Re)start a service and wait until it listens; returns its pid."""
        service = self._service(name)
        services.stop(self.layout, name)
        pid = services.start(self.layout, service)
        services.wait_ready(self.layout, [service])
        return pid

    def cut_link(self, host: str, seconds: float, wait: bool = False) -> None:
        """Silently cut a host's uplink (worker: to login; login/control: to the
        public net) for `seconds`; restored in the background unless `wait`."""
        if wait:
            topology.set_link(self.layout, host, up=False)
            try:
                time.sleep(seconds)
            finally:
                topology.set_link(self.layout, host, up=True)
        else:
            faults.cut_link(self.layout, host, seconds)

    def restore_link(self, host: str) -> None:
        faults.restore_link(self.layout, host)

    def link_is_up(self, host: str) -> bool:
        return topology.link_is_up(self.layout, host)

    def set_idle_timeout(self, seconds: int) -> None:
        """Change the login firewall's idle timeout for established TCP flows."""
        firewall.set_idle_timeout(self.layout, seconds)
        self.idle_timeout = int(seconds)
        if self.layout.config_file.exists():
            self._save_config()

    def limit_bandwidth(self, host: str, rate: str | None) -> None:
        """Shape a host's uplink with tbf (e.g. "100mbit"); None removes it."""
        faults.limit_bandwidth(self.layout, host, rate)

    def _service(self, name: str) -> services.Service:
        table = services.service_table(self.layout)
        if name not in table:
            raise LabError(f"no service {name!r}; services: {', '.join(table)}")
        return table[name]

    # reporting --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Everything a test, the demo or a person needs to use the lab."""
        lab = self.layout
        up = self.is_up()
        service_status = {}
        for name, service in services.service_table(lab).items():
            pid = services.recorded_pid(lab, name) if up else None
            entry = service.to_dict()
            entry.update({"pid": pid, "alive": pid is not None})
            service_status[name] = entry
        hosts = {
            host: {"namespace": lab.namespace(host), "addresses": lab.addresses(host)}
            for host in lab.hosts
        }
        hosts["outside"]["addresses"].update(
            {"socks": L.OUTSIDE_SOCKS, "gateway": L.OUTSIDE_GATEWAY}
        )
        vpn_status = {
            "server": f"{L.DMZ_SITE}:{L.HTTPS_PORT}",
            "pool": L.VPN_POOL,
            "user": lab.drone_user,
            "pin": vpn.pin(lab) if up else None,
            "password_file": str(lab.vpn_password_file),
            "client_cert": str(lab.vpn_client_cert),
            "client_key": str(lab.vpn_client_key),
            "ca_cert": str(vpn.ca_cert(lab)),
        }
        return {
            "name": self.name,
            "up": up,
            "state_dir": str(lab.state_dir),
            "workers": lab.workers,
            "idle_timeout": self.idle_timeout,
            "networks": {
                "site": L.SITE_NET,
                "public": L.PUBLIC_NET,
                "partition": L.PARTITION_NET,
            },
            "apptainer": str(lab.apptainer),
            "hosts": hosts,
            "services": service_status,
            "users": {"drone": lab.drone_user, "other": lab.other_user},
            "ssh": {
                "login_public": f"{L.LOGIN_PUBLIC}:{L.SSH_PORT}",
                "login_site": f"{L.LOGIN_SITE}:{L.SSH_PORT}",
                "login2_public": f"{L.LOGIN2_PUBLIC}:{L.SSH_PORT}",
                "login2_site": f"{L.LOGIN2_SITE}:{L.SSH_PORT}",
                "gateway": f"{L.OUTSIDE_GATEWAY}:{L.HTTPS_PORT}",
                "control_key": str(lab.control_key),
                "drone_key": str(lab.drone_key),
                "known_hosts": str(lab.known_hosts),
            },
            "slurm": {
                "conf": str(lab.slurm_conf),
                "partition": "batch",
                "nodes": lab.worker_hosts,
            },
            "vpn": vpn_status,
            "nat": self.site_nat.status() if up else {"up": False},
            "gridengine": self.gridengine.status() if up else {"up": False},
            "bin_dir": str(lab.bin_dir),
            "path": lab.default_path(),
            "log_dir": str(lab.log_dir),
            "pool_state": str(services.pool_state(lab)),
            "http": {
                "base": f"http://{L.OUTSIDE_HTTP}:{L.HTTP_PORT}",
                "files": dict(webroot.FILES),
                "cvmfs_repos": dict(webroot.CVMFS_REPOS),
            },
        }


#: the lab's squids (services.squid_service names their shared memory)
SQUID_ROLES = ("login", "login2", "outside")


def teardown(name: str) -> dict[str, list[str]]:
    """Remove a lab by name, also after a crash: processes, namespaces, users,
    state dir. Signals only processes inside the lab's namespaces or recorded
    in its pid files (pid and start time both matching)."""
    L.validate_name(name)
    lab = L.LabLayout(name=name)
    namespaces = topology.lab_namespaces(name)
    paths = [topology.netns_path(ns) for ns in namespaces]
    # the lab's users exist for this lab only: what runs as them is the lab's
    # (also drones in private namespaces of their own, which are in none of ours)
    uids = [
        pwd.getpwnam(user).pw_uid for user in lab.users if accounts.user_exists(user)
    ]
    stopped: list[int] = []
    for _ in range(3):  # daemons may fork while we stop them: sweep again
        pids = (
            set(pids_in_namespaces(paths))
            | set(_recorded_pids(lab))
            | set(pids_of_uids(uids))
        )
        if not pids:
            break
        terminate(sorted(pids), grace=0.5 if not stopped else 0.2)
        stopped += sorted(pids)
    services.reap_all()
    # leases of containers whose holder is gone (all, by now): CNI DEL
    collected = cnet.collect(lab)
    # squid's shared memory, left behind when a squid had to be killed
    for role in SQUID_ROLES:
        for segment in Path("/dev/shm").glob(f"{services.squid_service(lab, role)}-*"):
            segment.unlink(missing_ok=True)
    removed = topology.destroy(name)
    users = accounts.remove(name)
    if lab.state_dir.exists():
        shutil.rmtree(lab.state_dir, ignore_errors=True)
    return {
        "namespaces": removed,
        "users": users,
        "pids": [str(pid) for pid in stopped],
        "leases": collected,
    }


def _recorded_pids(lab: L.LabLayout) -> list[int]:
    """Pids from the lab's pid files whose start time still matches."""
    if not lab.run_dir.is_dir():
        return []
    pids = []
    for pid_file in lab.run_dir.glob("*.pid"):
        name = pid_file.name.removesuffix(".pid")
        pid = services.recorded_pid(lab, name)
        if pid is not None:
            pids.append(pid)
    return pids
