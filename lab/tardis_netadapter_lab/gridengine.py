"""The lab's Grid Engine (issue 16): Debian's real sge_qmaster on login and
sge_execd on every worker, a cell of the lab's own, switched on and off.

Nothing runs until ``lab.gridengine.up()``; Slurm keeps running beside it
(a site may have both; the adapter talks to one). What ``up()`` builds:

- ``<state>/sge``: the lab's own SGE_ROOT. ``bin``, ``lib``, ``util`` and
  ``utilbin`` link to Debian's ``/var/lib/gridengine`` tree (the binaries of
  gridengine-master/-exec/-client 8.1.9); the cell is named after the lab
  (``SGE_CELL=<lab name>``), so two labs never share a cell, a spool or a
  configuration, and nothing under /var/lib/gridengine is written.
- the cell as Debian's ``init_cluster`` makes it (``spoolinit`` berkeleydb,
  ``spooldefaults`` for the global configuration, complexes, usersets and
  managers), with the spool, the execd spool and the mailer in the lab, a
  per-lab ``gid_range`` (the job tracking groups) and a 2 s scheduler.
- sge_qmaster in login's namespace, sge_execd in each worker's (foreground:
  ``SGE_ND``), each in its own mount + UTS namespace with the lab's host
  table and its host name (gehost.py); the workers' also with the 0666
  /dev/net/tun slurmd's jobs get. Recorded and stopped by pid like every lab
  daemon (services.py); they run as ``sgeadmin`` after start, as Debian's do.
- queue ``all.q`` on all workers with 2 slots each (Slurm's lab allows two
  1-CPU jobs per worker too), ``shell_start_mode unix_behavior`` (the job
  script's ``#!`` line counts, as at most sites), no load thresholds (the
  2-core machine's load would otherwise put the queues in alarm), parallel
  environment ``smp`` (``$pe_slots``).
- login is admin and submit host; login's sshd is restarted in login's host
  view so the drone user's ``ssh login qsub ...`` comes from "login" and
  finds the cell through the lab's /etc/default/gridengine (Debian's
  /usr/bin/q* wrapper reads it: nothing in shell start-up files, which a
  non-interactive ssh command may not read), and the cell's ``sge_request``
  gives every job ``-v PATH=<lab bin>:...`` (the stand-ins, as Slurm jobs
  get them).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import firewall, gehost, services
from . import layout as L
from .netns import check_call, in_namespace, is_alive, terminate

SYSTEM_ROOT = Path("/var/lib/gridengine")
ROOT_LINKS = ("bin", "lib", "util", "utilbin")
LIBEXEC = Path("/usr/lib/gridengine")
RESOURCES = Path("/usr/share/gridengine/util/resources")
DEFAULT_CONFIGURATION = Path("/usr/share/gridengine/default-configuration")
ADMIN_USER = "sgeadmin"
QUEUE = "all.q"
SLOTS_PER_WORKER = 2
PE = "smp"
#: qmaster: first contact of the execds and their first load report
READY_TIMEOUT = 30.0
#: the comment that marks login's firewall rule for qrsh (``up(qrsh=True)``)
QRSH_RULE = "lab-gridengine-qrsh"


class GridEngineError(RuntimeError):
    """The lab's Grid Engine could not be brought up or used as asked."""


def gid_range(name: str) -> str:
    """A lab's own 100 tracking group ids: execds find a job's processes by
    the extra group each job gets, and two labs on one machine must not hand
    out the same one (Debian's default is 65400-65500 for everyone)."""
    base = 20000 + (zlib.crc32(name.encode()) % 400) * 100
    return f"{base}-{base + 99}"


def qmaster_service(lab: L.LabLayout) -> services.Service:
    return services.Service(
        "sge-qmaster",
        "login",
        _daemon_argv(lab, "login", "/usr/sbin/sge_qmaster"),
        "0.0.0.0",
        L.SGE_QMASTER_PORT,
        "Grid Engine 8.1.9 sge_qmaster (the lab's cell)",
    )


def execd_service(lab: L.LabLayout, worker: str) -> services.Service:
    return services.Service(
        f"sge-execd-{worker}",
        worker,
        _daemon_argv(lab, worker, "/usr/sbin/sge_execd", tun=True),
        "0.0.0.0",
        L.SGE_EXECD_PORT,
        f"Grid Engine sge_execd of {worker} (jobs see a 0666 /dev/net/tun)",
    )


def _daemon_argv(
    lab: L.LabLayout, host: str, program: str, tun: bool = False
) -> tuple[str, ...]:
    env = ["env", *(f"{k}={v}" for k, v in sge_env(lab).items()), "SGE_ND=true"]
    return gehost.host_view(lab, host, (*env, program), tun=tun)


def sge_env(lab: L.LabLayout) -> dict[str, str]:
    return {
        "SGE_ROOT": str(gehost.sge_root(lab)),
        "SGE_CELL": lab.name,
        "SGE_QMASTER_PORT": str(L.SGE_QMASTER_PORT),
        "SGE_EXECD_PORT": str(L.SGE_EXECD_PORT),
    }


class GridEngine:
    """Grid Engine of one lab: ``up()``, ``down()``, ``status()`` and helpers."""

    def __init__(self, lab: L.LabLayout) -> None:
        self.lab = lab

    # paths -----------------------------------------------------------------
    @property
    def root(self) -> Path:
        return gehost.sge_root(self.lab)

    @property
    def cell(self) -> str:
        return self.lab.name

    @property
    def common_dir(self) -> Path:
        return self.root / self.cell / "common"

    @property
    def settings_sh(self) -> Path:
        return self.common_dir / "settings.sh"

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    @property
    def template_dir(self) -> Path:
        return self.root / "templates"

    def services(self) -> list[services.Service]:
        return [qmaster_service(self.lab)] + [
            execd_service(self.lab, worker) for worker in self.lab.worker_hosts
        ]

    # lifecycle -------------------------------------------------------------
    def is_up(self) -> bool:
        return gehost.marker(self.lab).exists()

    def up(self, qrsh: bool = False) -> GridEngine:
        """Build the cell, start qmaster and execds, wait until every queue
        instance reports load; on failure take down what was started.

        ``qrsh=True`` also lets the workers open connections to login's
        unprivileged ports: qrsh's builtin method has the job's side connect
        back to the qrsh client on login on a port of its choosing, which the
        login firewall (a restricted site's) refuses, so by default qrsh
        waits forever, as it would at such a site."""
        if self.is_up():
            if services.recorded_pid(self.lab, "sge-qmaster") is not None:
                self.allow_qrsh(qrsh)
                return self
            self.down()  # a crashed qmaster: start over from a fresh cell
        if not self.lab.config_file.exists():
            raise GridEngineError(f"lab {self.lab.name} is not up")
        self._check_installed()
        started = time.monotonic()
        try:
            self._write_cell()
            self._init_spool()
            qmaster = qmaster_service(self.lab)
            services.start(self.lab, qmaster)
            services.wait_ready(self.lab, [qmaster])
            self._configure()
            execds = self.services()[1:]
            for execd in execds:
                services.start(self.lab, execd)
            services.wait_ready(self.lab, execds)
            gehost.marker(self.lab).write_text(
                json.dumps({"cell": self.cell, "started": time.time()}) + "\n"
            )
            self._restart_login_sshd()
            self.allow_qrsh(qrsh)
            self.wait_queues()
        except Exception:
            self.down()
            raise
        self.up_seconds = time.monotonic() - started
        return self

    def down(self) -> None:
        """Stop the daemons (by pid), give login's sshd back its plain form,
        remove the cell. Idempotent; also what `lab down` does implicitly."""
        was_up = gehost.marker(self.lab).exists()
        for service in self.services():
            services.stop(self.lab, service.name)
        # shepherds and jobs of the lab's workers run on after execd: the
        # jobs' processes are the drone user's; shepherds are root in a
        # worker namespace. Both are found by their parent chain below.
        self._stop_leftovers()
        gehost.marker(self.lab).unlink(missing_ok=True)
        if self.lab.namespace_path("login").exists():
            self.allow_qrsh(False)
        if was_up and self.lab.config_file.exists():
            self._restart_login_sshd()
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    # running Grid Engine commands ------------------------------------------
    def command(
        self, host: str, argv: Sequence[str], user: str | None = None
    ) -> list[str]:
        """Argv running `argv` on a lab host as Grid Engine sees that host."""
        inner: tuple[str, ...] = tuple(argv)
        if user is not None:
            inner = ("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups")
            inner += tuple(argv)
        return in_namespace(
            self.lab.namespace_path(host), gehost.host_view(self.lab, host, inner)
        )

    def env(self, user: str | None = None) -> dict[str, str]:
        entry = pwd.getpwnam(user or "root")
        env = {
            "HOME": entry.pw_dir,
            "USER": entry.pw_name,
            "LOGNAME": entry.pw_name,
            "LANG": "C.UTF-8",
            "PATH": self.lab.default_path(),
        }
        env.update(sge_env(self.lab))
        return env

    def run(
        self,
        host: str,
        argv: Sequence[str],
        user: str | None = None,
        input: str | None = None,
        timeout: float = 60,
        check: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """A Grid Engine command on a lab host (default root, a manager)."""
        full_env = self.env(user)
        full_env.update(env or {})
        result = subprocess.run(
            self.command(host, argv, user),
            env=full_env,
            cwd=str(self.lab.home(user)) if user else "/",
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise GridEngineError(
                f"{' '.join(argv)} on {host} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result

    def qstat_xml(self, user: str | None = None) -> str:
        """`qstat -xml -u USER` on login as that user (default the drone user)."""
        user = user or self.lab.drone_user
        return self.run(
            "login", ["qstat", "-xml", "-u", user], user=user, check=True
        ).stdout

    def jobs(self, user: str | None = None) -> dict[str, str]:
        """job id (``ID`` or ``ID.TASK``) -> state letters, from qstat -xml."""
        states: dict[str, str] = {}
        for job in ET.fromstring(self.qstat_xml(user)).iter("job_list"):
            number = job.findtext("JB_job_number", "")
            tasks = job.findtext("tasks")
            key = f"{number}.{tasks}" if tasks else number
            states[key] = job.findtext("state", "")
        return states

    def queue_of(self, job: str, user: str | None = None) -> str:
        """The worker a job's (first) task holds a slot on; "" when pending."""
        for entry in ET.fromstring(self.qstat_xml(user)).iter("job_list"):
            if entry.findtext("JB_job_number") == job:
                return entry.findtext("queue_name", "").partition("@")[2]
        return ""

    def queue_states(self) -> dict[str, str]:
        """queue instance -> state letters ("" when healthy; "u" unheard)."""
        result = self.run("login", ["qstat", "-f", "-xml", "-q", QUEUE], check=True)
        return {
            queue.findtext("name", ""): queue.findtext("state", "")
            for queue in ET.fromstring(result.stdout).iter("Queue-List")
        }

    def wait_queues(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until every worker's queue instance is known and not unheard."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.queue_states()
            if len(states) == self.lab.workers and not any(
                "u" in state for state in states.values()
            ):
                return
            time.sleep(0.3)
        raise GridEngineError(f"queues not ready after {timeout:.0f} s: {states}")

    def qrsh_allowed(self) -> bool:
        return bool(self._qrsh_handles())

    def allow_qrsh(self, allow: bool = True) -> None:
        """Open (or close again) login's unprivileged ports to the workers."""
        handles = self._qrsh_handles()
        login = self.lab.namespace_path("login")
        if allow and not handles:
            check_call(
                in_namespace(
                    login,
                    ["nft", "insert", "rule", "inet", firewall.TABLE, "input"]
                    + ["iifname", firewall.LOGIN_HOSTS["login"], "tcp", "dport"]
                    + ["1024-65535", "ct", "state", "new", "accept"]
                    + ["comment", f'"{QRSH_RULE}"'],
                )
            )
        if not allow:
            for handle in handles:
                check_call(
                    in_namespace(
                        login,
                        ["nft", "delete", "rule", "inet", firewall.TABLE, "input"]
                        + ["handle", handle],
                    )
                )

    def _qrsh_handles(self) -> list[str]:
        login = self.lab.namespace_path("login")
        if not login.exists():
            return []
        listing = check_call(
            in_namespace(login, ["nft", "-a", "list", "chain", "inet"])
            + [firewall.TABLE, "input"]
        )
        return [
            line.rsplit("# handle ", 1)[1].strip()
            for line in listing.splitlines()
            if QRSH_RULE in line and "# handle " in line
        ]

    # faults -------------------------------------------------------------------
    def execd_pid(self, worker: str) -> int | None:
        return services.recorded_pid(self.lab, f"sge-execd-{worker}")

    def freeze_execd(self, worker: str) -> None:
        """SIGSTOP a worker's execd: jobs keep running, nothing it should
        acknowledge (a dispatch, a deletion) finishes (states t, dr)."""
        pid = self._pid(f"sge-execd-{worker}")
        os.kill(pid, 19)  # SIGSTOP

    def thaw_execd(self, worker: str) -> None:
        os.kill(self._pid(f"sge-execd-{worker}"), 18)  # SIGCONT

    def _pid(self, name: str) -> int:
        pid = services.recorded_pid(self.lab, name)
        if pid is None:
            raise GridEngineError(f"{name} is not running")
        return pid

    # reporting ----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        up = self.is_up()
        daemons = {}
        for service in self.services():
            pid = services.recorded_pid(self.lab, service.name)
            entry = service.to_dict()
            entry.update({"pid": pid, "alive": pid is not None})
            daemons[service.name] = entry
        queues: dict[str, str] = {}
        if up and daemons["sge-qmaster"]["alive"]:
            try:
                queues = self.queue_states()
            except (GridEngineError, ET.ParseError, subprocess.SubprocessError):
                queues = {}
        return {
            "up": up,
            "sge_root": str(self.root),
            "sge_cell": self.cell,
            "settings": str(self.settings_sh),
            "qmaster": f"login ({L.LOGIN_SITE}):{L.SGE_QMASTER_PORT}",
            "queue": QUEUE,
            "slots_per_worker": SLOTS_PER_WORKER,
            "parallel_environment": PE,
            "gid_range": gid_range(self.lab.name),
            "qrsh": self.qrsh_allowed() if up else False,
            "daemons": daemons,
            "queues": queues,
        }

    # building the cell ----------------------------------------------------------
    def _check_installed(self) -> None:
        missing = [
            str(path)
            for path in (
                LIBEXEC / "sge_qmaster",
                LIBEXEC / "sge_execd",
                LIBEXEC / "qsub",
                LIBEXEC / "spoolinit",
            )
            if not path.exists()
        ]
        try:
            pwd.getpwnam(ADMIN_USER)
        except KeyError:
            missing.append(f"user {ADMIN_USER}")
        if missing:
            raise GridEngineError(
                "Grid Engine is not installed (missing "
                + ", ".join(missing)
                + "): run scripts/install-system-deps"
            )

    def _write_cell(self) -> None:
        lab, root = self.lab, self.root
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(mode=0o755)
        for name in ROOT_LINKS:
            (root / name).symlink_to(SYSTEM_ROOT / name)
        gehost.hosts_file(lab).write_text(gehost.hosts_table(lab))
        self.common_dir.mkdir(parents=True)
        for sub in ("qmaster", "execd", "db"):
            (self.spool_dir / sub).mkdir(parents=True)
        self.template_dir.mkdir()
        (self.common_dir / "bootstrap").write_text(
            "\n".join(
                [
                    f"admin_user              {ADMIN_USER}",
                    "default_domain          none",
                    "ignore_fqdn             true",
                    "spooling_method         berkeleydb",
                    "spooling_lib            libspoolb",
                    f"spooling_params         {self.spool_dir / 'db'}",
                    "binary_path             /usr/sbin",
                    f"qmaster_spool_dir       {self.spool_dir / 'qmaster'}",
                    "security_mode           none",
                    "listener_threads        2",
                    "worker_threads          2",
                    "scheduler_threads       1",
                ]
            )
            + "\n"
        )
        gehost.default_file(lab).write_text(
            "# the lab's cell (tardis-netadapter lab), read by Debian's q* wrapper\n"
            f"SGE_ROOT={root}\nSGE_CELL={self.cell}\n"
        )
        (self.common_dir / "act_qmaster").write_text("login\n")
        (self.common_dir / "cluster_name").write_text(f"lab_{lab.name}\n")
        self.settings_sh.write_text(
            f"SGE_ROOT={root}; export SGE_ROOT\n"
            f"SGE_CELL={self.cell}; export SGE_CELL\n"
            "SGE_ARCH=lx-amd64; export SGE_ARCH\n"
        )
        # every job's default request: the lab's PATH (stand-ins first), as
        # Slurm jobs get it by exporting the submitting session's PATH
        (self.common_dir / "sge_request").write_text(f"-v PATH={lab.default_path()}\n")
        configuration = DEFAULT_CONFIGURATION.read_text()
        replace = {
            "execd_spool_dir": str(self.spool_dir / "execd"),
            "mailer": "/bin/true",
            "administrator_mail": "none",
            "load_report_time": "00:00:05",
            "gid_range": gid_range(lab.name),
        }
        lines = []
        for line in configuration.splitlines():
            key = line.split(None, 1)[0] if line.strip() else ""
            if key in replace:
                line = f"{key:<22} {replace[key]}"
            lines.append(line)
        (self.template_dir / "global").write_text("\n".join(lines) + "\n")
        uid = pwd.getpwnam(ADMIN_USER)
        for path in [root / self.cell, *root.joinpath(self.cell).rglob("*")]:
            os.chown(path, uid.pw_uid, uid.pw_gid)
        for path in [self.spool_dir, *self.spool_dir.rglob("*")]:
            os.chown(path, uid.pw_uid, uid.pw_gid)

    def _admin(self, argv: Sequence[str]) -> None:
        """A spool tool as sgeadmin (files only; run in login's namespace)."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **sge_env(self.lab)}
        result = subprocess.run(
            in_namespace(self.lab.namespace_path("login"), argv, user=ADMIN_USER),
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise GridEngineError(
                f"{' '.join(argv)} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )

    def _init_spool(self) -> None:
        """What Debian's init_cluster does, for the lab's cell."""
        tool = str(LIBEXEC / "spooldefaults")
        self._admin(
            [str(LIBEXEC / "spoolinit"), "berkeleydb", "libspoolb"]
            + [str(self.spool_dir / "db"), "init"]
        )
        self._admin([tool, "configuration", str(self.template_dir / "global")])
        self._admin([tool, "complexes", str(RESOURCES / "centry")])
        self._admin([tool, "usersets", str(RESOURCES / "usersets")])
        self._admin([tool, "managers", ADMIN_USER, "root"])

    def _template(self, name: str, fields: Mapping[str, str]) -> str:
        path = self.template_dir / name
        path.write_text(
            "".join(f"{key:<20} {value}\n" for key, value in fields.items())
        )
        return str(path)

    def _configure(self) -> None:
        """Hosts, the parallel environment, the queue, the scheduler (qconf)."""
        lab = self.lab
        qconf = ["qconf"]
        self.run("login", qconf + ["-as", "login"], check=True)
        for worker in lab.worker_hosts:
            self.run("login", qconf + ["-ah", worker], check=True)
        pe = self._template(
            PE,
            {
                "pe_name": PE,
                "slots": "999",
                "user_lists": "NONE",
                "xuser_lists": "NONE",
                "start_proc_args": "NONE",
                "stop_proc_args": "NONE",
                "allocation_rule": "$pe_slots",
                "control_slaves": "FALSE",
                "job_is_first_task": "TRUE",
                "urgency_slots": "min",
                "accounting_summary": "FALSE",
                "qsort_args": "NONE",
            },
        )
        self.run("login", qconf + ["-Ap", pe], check=True)
        for worker in lab.worker_hosts:
            host = self._template(
                f"host-{worker}",
                {
                    "hostname": worker,
                    "load_scaling": "NONE",
                    "complex_values": "NONE",
                    "user_lists": "NONE",
                    "xuser_lists": "NONE",
                    "projects": "NONE",
                    "xprojects": "NONE",
                    "usage_scaling": "NONE",
                    "report_variables": "NONE",
                },
            )
            self.run("login", qconf + ["-Ae", host], check=True)
        # the queue: qconf's own template with the lab's values
        shown = self.run(
            "login", ["sh", "-c", "EDITOR=cat qconf -aq template"], check=False
        ).stdout
        values = {
            "qname": QUEUE,
            "hostlist": " ".join(lab.worker_hosts),
            "load_thresholds": "NONE",
            "pe_list": PE,
            "slots": str(SLOTS_PER_WORKER),
            "shell": "/bin/bash",
            "shell_start_mode": "unix_behavior",
        }
        queue = {}
        for line in shown.splitlines():
            key, _, value = line.partition(" ")
            if key and value.strip():
                queue[key] = values.get(key, value.strip())
        if "qname" not in queue:
            raise GridEngineError(f"no queue template from qconf: {shown!r}")
        self.run("login", qconf + ["-Aq", self._template(QUEUE, queue)], check=True)
        # the scheduler every 2 s (default 15 s) and at once on submit/finish
        scheduler = self.run("login", qconf + ["-ssconf"], check=True).stdout
        changes = {
            "schedule_interval": "0:0:2",
            "flush_submit_sec": "1",
            "flush_finish_sec": "1",
        }
        lines = []
        for line in scheduler.splitlines():
            key = line.split(None, 1)[0] if line.strip() else ""
            lines.append(f"{key:<33} {changes[key]}" if key in changes else line)
        path = self.template_dir / "sconf"
        path.write_text("\n".join(lines) + "\n")
        self.run("login", qconf + ["-Msconf", str(path)], check=True)

    def _restart_login_sshd(self) -> None:
        name = "login-sshd"
        table = services.service_table(self.lab)
        services.stop(self.lab, name)
        services.start(self.lab, table[name])
        services.wait_ready(self.lab, [table[name]])

    def _stop_leftovers(self) -> None:
        """sge_shepherd processes (and their jobs) of this lab's execds: root
        processes in a worker's namespace whose command is the shepherd."""
        paths = [self.lab.namespace_path(worker) for worker in self.lab.worker_hosts]
        from .netns import pids_in_namespaces

        shepherds = []
        for pid in pids_in_namespaces(paths):
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if exe.endswith("/sge_shepherd"):
                shepherds.append(pid)
        if shepherds:
            terminate(shepherds)
        for pid in shepherds:
            if is_alive(pid):
                time.sleep(0.1)
