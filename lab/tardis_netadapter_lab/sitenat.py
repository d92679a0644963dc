"""The lab's site NAT (issue 14, mode nat): GSI's NAT router pair and the
workers' marked route, switched on and off, and broken on purpose.

The router namespaces ``<lab>-nat1`` and ``<lab>-nat2`` exist in every lab
(topology.py), but nothing runs there and the workers have no route out until
``lab.site_nat.up()``: other tests rely on workers reaching nothing outside.
``up()`` renders the files with the product's own renderers
(``tardis_netadapter.sitenat.render``) from the lab's ``Network.nat`` section
(``configs.nat_section``), with an ``InstallPaths`` tree per host under
``<state>/nat/<host>/``, and then does what the rendered systemd units say
(there is no systemd here): the router unit's commands (nft ruleset, sysctls),
Debian's real conntrackd and keepalived in each router namespace (pid files,
stopped by pid), the worker unit's ``tna-nat-routing apply`` in every worker
namespace and, with ``keeper=True``, the keeper unit's ``tna-nat-routing
keep``. ``down()`` undoes exactly that.

One thing is the lab's and not the rendered files': while the site NAT is up
every worker's main table has ``default via 10.66.1.1`` (login, which
forwards nothing). A real site's workers have a default route (GSI's "only
one router", into a firewall that lets nothing out); without one, connect()
fails with ENETUNREACH before the output hook could mark the packet, and the
marked route would never be used.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import configs, services, topology
from . import layout as L
from .netns import in_namespace

if TYPE_CHECKING:  # the product's API; imported lazily so the lab loads without it
    from tardis_netadapter.sitenat.config import NatSection
    from tardis_netadapter.sitenat.render import InstallPaths, RenderedFile

#: the workers' main-table default route while the site NAT is up: the
#: site's own router (login, no forwarding), as at GSI
SITE_ROUTER = L.LOGIN_SITE
#: how long `up()` waits for the highest-priority router to hold the VIPs
#: (VRRP: both start as BACKUP; 3 adverts + skew at a 1 s interval = 3.6 s)
MASTER_TIMEOUT = 10.0
#: kernel defaults the routers get back on `down()` (the rendered sysctl.conf
#: changes them; the router unit's stop does not restore them)
ROUTER_SYSCTL_DEFAULTS = (
    "net.ipv4.ip_forward=0",
    "net.netfilter.nf_conntrack_tcp_loose=1",
)


class SiteNatError(RuntimeError):
    """The site NAT could not be brought up or down as asked."""


@dataclass(frozen=True)
class UnitCommands:
    """What a rendered systemd unit runs, as argv lists (prefixes stripped)."""

    start_pre: list[list[str]]
    start: list[list[str]]
    stop: list[list[str]]

    @property
    def program(self) -> str:
        """The base name of the (first) ExecStart program, e.g. keepalived."""
        return Path(self.start[0][0]).name if self.start else ""


def unit_commands(text: str) -> UnitCommands:
    """Parse ExecStartPre/ExecStart/ExecStop lines of a unit, in order.

    systemd's prefixes (``-`` ignore failure, ``@``, ``+``, ``!``, ``:``) are
    dropped: the lab runs every command as root inside the host's namespace
    and checks failures itself.
    """
    found: dict[str, list[list[str]]] = {
        "ExecStartPre": [],
        "ExecStart": [],
        "ExecStop": [],
    }
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key not in found or not value.strip():
            continue
        command = value.strip().lstrip("-@+!:")
        found[key].append(shlex.split(command))
    return UnitCommands(found["ExecStartPre"], found["ExecStart"], found["ExecStop"])


def install_paths(lab: L.LabLayout, host: str) -> InstallPaths:
    """Where a host's rendered files live in the lab: ``<state>/nat/<host>/``."""
    from tardis_netadapter.sitenat.render import InstallPaths

    base = lab.nat_dir / host
    return InstallPaths(
        sbin=str(base / "sbin"),
        etc=str(base / "etc"),
        run=str(base / "run"),
        systemd=str(base / "systemd"),
    )


def nat_section(lab: L.LabLayout, conntrack_sync: bool = True) -> NatSection:
    """The lab's ``Network.nat`` section, validated by the product's parser."""
    from tardis_netadapter.sitenat.config import NatSection

    section, problems = NatSection.from_mapping(
        configs.nat_section(lab, conntrack_sync=conntrack_sync), "Network.nat"
    )
    if problems or section is None:
        raise SiteNatError("the lab's nat section is invalid: " + "; ".join(problems))
    return section


def destination(paths: InstallPaths, name: str, rendered: RenderedFile) -> Path:
    """Where a rendered file goes in the lab: units to ``systemd``, executables
    to ``sbin``, the rest (rulesets, daemon configs, rt_tables) to ``etc``.

    The lab never installs anything machine-wide: ``rt_tables.conf`` stays in
    ``etc`` (the scripts use the table number, not its name).
    """
    if name.endswith(".service"):
        return Path(paths.systemd) / name
    if rendered.mode & 0o111:
        return Path(paths.sbin) / name
    return Path(paths.etc) / name


def write_files(paths: InstallPaths, files: dict[str, RenderedFile]) -> dict[str, Path]:
    """Write rendered files with their modes; returns name -> path."""
    written = {}
    for directory in (paths.sbin, paths.etc, paths.run, paths.systemd):
        Path(directory).mkdir(parents=True, exist_ok=True, mode=0o755)
    for name, rendered in files.items():
        target = destination(paths, name, rendered)
        target.write_text(rendered.text)
        target.chmod(rendered.mode)
        written[name] = target
    return written


def _daemon(
    lab: L.LabLayout, host: str, what: str, argv: Sequence[str]
) -> services.Service:
    """A lab service record for a site-NAT process (no TCP port to wait for)."""
    return services.Service(
        name=f"{host}-{what}",
        host=host,
        argv=tuple(argv),
        address="",
        port=0,
        what=f"site NAT: {what} on {host}",
    )


class SiteNat:
    """The lab's site NAT: ``lab.site_nat`` (see the module docstring)."""

    def __init__(self, lab: L.LabLayout) -> None:
        self.layout = lab

    # state ------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.layout.nat_dir / "state.json"

    def state(self) -> dict[str, Any] | None:
        """What `up()` set up (None when the site NAT is down)."""
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def is_up(self) -> bool:
        return self.state() is not None

    def section(self, conntrack_sync: bool = True) -> NatSection:
        return nat_section(self.layout, conntrack_sync)

    def paths(self, host: str) -> InstallPaths:
        return install_paths(self.layout, host)

    # running things in a host ------------------------------------------------
    def _run(
        self, host: str, argv: Sequence[str], check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            in_namespace(self.layout.namespace_path(host), argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=services.daemon_env(self.layout),
            check=False,
        )
        if check and result.returncode != 0:
            raise SiteNatError(
                f"{host}: {shlex.join(argv)} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result

    def routing(self, worker: str, action: str) -> subprocess.CompletedProcess[str]:
        """Run the rendered ``tna-nat-routing ACTION`` in a worker (as root)."""
        script = Path(self.paths(worker).sbin) / "tna-nat-routing"
        return self._run(worker, [str(script), action], check=False)

    # up and down ---------------------------------------------------------------
    def render(self, conntrack_sync: bool = True) -> dict[str, dict[str, Path]]:
        """Render and write every host's files; returns host -> name -> path."""
        from tardis_netadapter.sitenat.render import render_router, render_worker

        nat = self.section(conntrack_sync)
        written = {}
        for router in self.layout.nat_hosts:
            paths = self.paths(router)
            written[router] = write_files(paths, render_router(nat, router, paths))
        for worker in self.layout.worker_hosts:
            paths = self.paths(worker)
            written[worker] = write_files(paths, render_worker(nat, paths))
        return written

    def up(self, conntrack_sync: bool = True, keeper: bool = True) -> SiteNat:
        """Routers with their daemons, the workers' marked route (and keeper).

        Returns once the highest-priority router holds both VIPs. On failure
        everything started is removed again.
        """
        if self.is_up():
            raise SiteNatError(f"site NAT of lab {self.layout.name} is already up")
        started = time.monotonic()
        written = self.render(conntrack_sync)
        self._save(
            {"conntrack_sync": conntrack_sync, "keeper": keeper, "site_routes": []}
        )
        try:
            for router in self.layout.nat_hosts:
                self._router_up(router, written[router], conntrack_sync)
            for worker in self.layout.worker_hosts:
                self._worker_up(worker, written[worker], keeper)
            self.wait_master(self.preferred_master(), MASTER_TIMEOUT)
        except BaseException:
            self.down()
            raise
        state = self.state() or {}
        state["up_seconds"] = round(time.monotonic() - started, 2)
        self._save(state)
        return self

    def down(self) -> None:
        """Undo `up()` exactly (idempotent): keepers, routing, daemons, rules."""
        state = self.state() or {}
        lab = self.layout
        for worker in lab.worker_hosts:
            services.stop(lab, f"{worker}-nat-keeper")
        for worker in lab.worker_hosts:
            if (Path(self.paths(worker).sbin) / "tna-nat-routing").exists():
                self.routing(worker, "remove")
        for worker in state.get("site_routes", []):
            self._run(
                worker,
                ["ip", "route", "del", "default", "via", SITE_ROUTER, "dev", L.HOST_IF],
                check=False,
            )
        for router in lab.nat_hosts:
            self._router_down(router)
        self.state_file.unlink(missing_ok=True)

    def _save(self, state: dict[str, Any]) -> None:
        self.layout.nat_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    def _units(self, files: dict[str, Path]) -> list[UnitCommands]:
        return [
            unit_commands(path.read_text())
            for name, path in files.items()
            if name.endswith(".service")
        ]

    def _router_up(self, router: str, files: dict[str, Path], sync: bool) -> None:
        lab = self.layout
        units = self._units(files)
        for unit in units:
            if unit.program in ("keepalived", "conntrackd"):
                continue
            for argv in unit.start_pre + unit.start:  # ruleset, then sysctls
                self._run(router, argv)
        daemons = {unit.program: unit for unit in units}
        if sync:
            unit = daemons.get("conntrackd")
            if unit is None:
                raise SiteNatError(
                    f"{router}: no conntrackd unit rendered with sync on"
                )
            for argv in unit.start_pre:
                self._run(router, argv)
            service = _daemon(lab, router, "conntrackd", unit.start[0])
            services.start(lab, service)
            self._wait_conntrackd(router)
        self.start_keepalived(router)

    def _router_down(self, router: str) -> None:
        lab = self.layout
        services.stop(lab, f"{router}-keepalived")
        services.stop(lab, f"{router}-conntrackd")
        files = {
            path.name: path
            for path in Path(self.paths(router).systemd).glob("*.service")
        }
        for unit in self._units(files):
            if unit.program not in ("keepalived", "conntrackd"):
                for argv in unit.stop:
                    self._run(router, argv, check=False)
        self._run(
            router, ["sysctl", "-q", "-e", "-w", *ROUTER_SYSCTL_DEFAULTS], check=False
        )
        self._run(router, ["conntrack", "-F"], check=False)
        # a keepalived killed hard leaves its VIPs: the lab's own addresses only
        for address, ifname in (
            (L.NAT_GATEWAY, L.NAT_SITE_IF),
            (L.NAT_PUBLIC, L.NAT_PUBLIC_IF),
        ):
            self._run(
                router,
                ["ip", "addr", "del", f"{address}/32", "dev", ifname],
                check=False,
            )

    def _worker_up(self, worker: str, files: dict[str, Path], keeper: bool) -> None:
        lab = self.layout
        routes = self._run(worker, ["ip", "route", "show", "default"]).stdout
        if not routes.strip():
            self._run(
                worker,
                ["ip", "route", "add", "default", "via", SITE_ROUTER, "dev", L.HOST_IF],
            )
            state = self.state() or {}
            state.setdefault("site_routes", []).append(worker)
            self._save(state)
        units = self._units(files)
        apply = [u for u in units if u.start and u.start[-1][-1] == "apply"]
        keep = [u for u in units if u.start and u.start[-1][-1] == "keep"]
        if not apply:
            raise SiteNatError(f"{worker}: no unit runs `tna-nat-routing apply`")
        for argv in apply[0].start_pre + apply[0].start:
            self._run(worker, argv)
        if keeper:
            if not keep:
                raise SiteNatError(f"{worker}: no unit runs `tna-nat-routing keep`")
            services.start(lab, _daemon(lab, worker, "nat-keeper", keep[0].start[-1]))

    def _wait_conntrackd(self, router: str, timeout: float = 5.0) -> None:
        """conntrackd is ready when its UNIX socket exists (it answers -s)."""
        lab = self.layout
        conf = Path(self.paths(router).etc) / "conntrackd.conf"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if services.recorded_pid(lab, f"{router}-conntrackd") is None:
                raise SiteNatError(
                    f"{router}: conntrackd exited during start:\n"
                    + services.log_tail(lab, f"{router}-conntrackd")
                )
            if (
                self._run(
                    router, ["conntrackd", "-C", str(conf), "-s"], check=False
                ).returncode
                == 0
            ):
                return
            time.sleep(0.05)
        raise SiteNatError(f"{router}: conntrackd not answering after {timeout:.0f} s")

    # VRRP ------------------------------------------------------------------------
    def preferred_master(self) -> str:
        """The router with the highest priority (holds the VIPs when healthy)."""
        return max(L.NAT_ROUTERS, key=lambda router: router.priority).name

    def holds_vips(self, router: str) -> dict[str, bool]:
        """Which of the two VIPs a router holds right now."""
        out = self._run(router, ["ip", "-4", "-o", "addr", "show"], check=False).stdout
        return {
            "gateway": f" {L.NAT_GATEWAY}/" in out,
            "public": f" {L.NAT_PUBLIC}/" in out,
        }

    def master(self) -> str | None:
        """The router holding the workers' gateway VIP, None if none does."""
        for router in self.layout.nat_hosts:
            if self.holds_vips(router)["gateway"]:
                return router
        return None

    def wait_master(self, router: str | None = None, timeout: float = 10.0) -> float:
        """Wait until `router` (or any router, when None) holds BOTH VIPs and no
        other router holds either; returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        holding: dict[str, dict[str, bool]] = {}
        while time.monotonic() < deadline:
            holding = {name: self.holds_vips(name) for name in self.layout.nat_hosts}
            full = [name for name, vips in holding.items() if all(vips.values())]
            partial = [name for name, vips in holding.items() if any(vips.values())]
            if len(full) == 1 and partial == full and router in (None, full[0]):
                return time.monotonic() - started
            time.sleep(0.05)
        raise SiteNatError(
            f"no single master{'' if router is None else ' ' + router} after "
            f"{timeout:.0f} s: {holding}"
        )

    # fault helpers ----------------------------------------------------------------
    def start_keepalived(self, router: str) -> int:
        """(Re)start keepalived on a router as its rendered unit says; its pid."""
        lab = self.layout
        files = {
            path.name: path
            for path in Path(self.paths(router).systemd).glob("*.service")
        }
        units = {unit.program: unit for unit in self._units(files)}
        unit = units.get("keepalived")
        if unit is None:
            raise SiteNatError(f"{router}: no keepalived unit rendered")
        for argv in unit.start_pre:
            self._run(router, argv)
        argv = list(unit.start[0])
        # the unit logs to the journal; the lab wants it in the service's log
        for flag in ("--log-console", "--log-detail"):
            if flag not in argv:
                argv.append(flag)
        services.stop(lab, f"{router}-keepalived")
        return services.start(lab, _daemon(lab, router, "keepalived", argv))

    def stop_keepalived(self, router: str, wait: bool = True) -> bool:
        """SIGTERM a router's keepalived by pid (it sends priority 0 and drops
        the VIPs at once, as on a clean shutdown); False if it was not running.

        keepalived itself takes about a second more to exit; ``wait=False``
        returns right after the signal (for timing a failover from it), and
        the next ``start_keepalived`` or ``down()`` collects the process.
        """
        if wait:
            return services.stop(self.layout, f"{router}-keepalived")
        pid = self.keepalived_pid(router)
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        return True

    def keepalived_pid(self, router: str) -> int | None:
        return services.recorded_pid(self.layout, f"{router}-keepalived")

    def cut_public_link(self, router: str) -> None:
        """Take the far end of a router's public leg down: its pub0 loses
        carrier (keepalived's track_interface) and the way out is gone."""
        self.layout.namespace(router)
        if router not in self.layout.nat_hosts:
            raise SiteNatError(f"{router} is not a NAT router")
        topology.set_link(self.layout, router, up=False)

    def restore_public_link(self, router: str) -> None:
        topology.set_link(self.layout, router, up=True)

    def flap_worker_link(self, worker: str, down_seconds: float = 0.5) -> float:
        """A worker's link goes down, loses its addresses, comes up and gets its
        address back (as an IPoIB link at GSI); returns time.monotonic() when
        the address is back.

        Like the site's network configuration would, the flap also restores
        the main table's default route; the marked table's route is gone with
        the link, and only the route keeper brings it back.
        """
        address = self.layout.worker_address(worker)
        dev = L.HOST_IF
        self._run(worker, ["ip", "link", "set", dev, "down"])
        self._run(worker, ["ip", "addr", "flush", "dev", dev])
        time.sleep(down_seconds)
        self._run(worker, ["ip", "link", "set", dev, "up"])
        self._run(
            worker, ["ip", "addr", "add", f"{address}/{L.PREFIX_LEN}", "dev", dev]
        )
        back = time.monotonic()
        if worker in (self.state() or {}).get("site_routes", []):
            self._run(
                worker,
                ["ip", "route", "replace", "default", "via", SITE_ROUTER, "dev", dev],
            )
        return back

    def stop_keeper(self, worker: str) -> bool:
        return services.stop(self.layout, f"{worker}-nat-keeper")

    def keeper_pid(self, worker: str) -> int | None:
        return services.recorded_pid(self.layout, f"{worker}-nat-keeper")

    def conntrack_entries(self, router: str) -> str:
        """The router's kernel conntrack table (`conntrack -L`)."""
        return self._run(router, ["conntrack", "-L"], check=False).stdout

    # reporting ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        lab = self.layout
        state = self.state()
        routers = {}
        for router in L.NAT_ROUTERS:
            entry: dict[str, Any] = {
                "namespace": lab.namespace(router.name),
                "site": router.site,
                "public": router.public,
                "priority": router.priority,
            }
            if state is not None:
                entry["keepalived"] = self.keepalived_pid(router.name)
                entry["conntrackd"] = services.recorded_pid(
                    lab, f"{router.name}-conntrackd"
                )
                entry["vips"] = self.holds_vips(router.name)
            routers[router.name] = entry
        return {
            "up": state is not None,
            "gateway": L.NAT_GATEWAY,
            "public_address": L.NAT_PUBLIC,
            "echo": configs.echo_url(),
            "conntrack_sync": None if state is None else state["conntrack_sync"],
            "keeper": None if state is None else state["keeper"],
            "routers": routers,
            "keepers": {worker: self.keeper_pid(worker) for worker in lab.worker_hosts}
            if state is not None
            else {},
        }
