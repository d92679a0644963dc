"""Issue 11 in the real lab: the login node's sshd down for 60 s is a site outage.

A real ``cobald`` daemon (configs/lab.yml, COBalD's demand fixed at three
drones) runs NetSlurm drones on the lab's Slurm. Once all three are Available
and their heartbeats are good, the login node's sshd is stopped for
``OUTAGE`` seconds (env ``TNA_OUTAGE_SECONDS``, default 60; the 10-minute
soak is ``TNA_OUTAGE_SECONDS=600``, docs/benchmarks.md) and every one of its
sessions is killed (the drones'
tunnels and the daemon's own SSH connection): only processes of this lab's
login sshd, by pid (its pid file, its descendants, and sshd processes inside
the lab's login namespace), never by name machine-wide.

Asserted once sshd is back, within a bounded wait: no drone of the three
reached Cleanup/Down (SqliteRegistry), their Slurm jobs are the same job ids,
still RUNNING; the daemon logged "site outage in stage login ..." once (its
own ssh to login is down for the whole outage: listings failing for 30 s are
the site's outage, tardis_netadapter/site.py) and "... is over after ..." as
often as an outage was declared (a second, in stage chain, when the first
listing after sshd's return still sees stale failing heartbeats; with the
builtin supervisor the tunnels are usually back by then; measured.json has
the lines as ``log`` and ``outage_declared``); it is alive and logged no Traceback; and every tunnel
is back within ``TUNNEL_BACK`` (3 s) of sshd's return (issue 11; the drones'
supervisor, drone_scripts/lib/supervise.sh, probes the login node's port
while it is down and reconnects after a spread of at most 1 s).

Measured and printed (median and max): the seconds from sshd's return to
each tunnel's ssh connection being accepted again (the start time of the
sshd process serving each established connection from the site network to
:22 on login), and to each drone's first good heartbeat (its record's own
time, the worker's clock, which is this machine's; whole seconds, so up to
1 s early). ``TNA_KEEP_LOGS=DIR`` keeps the daemon's log,
registry and ``measured.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median
from typing import Any

import pytest
from tardis_netadapter_lab import Lab, faults
from tardis_netadapter_lab.daemon import (
    CobaldDaemon,
    fixed_demand,
    heartbeats,
    pool_request,
    registry_states,
    slurm_jobs,
    wait_for,
    write_config,
)
from tardis_netadapter_lab.netns import pids_in_namespaces, start_time, terminate
from tardis_netadapter_lab.services import recorded_pid
from test_chain_support import descendants

pytestmark = [pytest.mark.lab, pytest.mark.slow]

DRONES = 3
#: issue 11's CI case: sshd down for a minute, all its sessions killed;
#: TNA_OUTAGE_SECONDS=600 is the 10-minute soak (docs/benchmarks.md)
OUTAGE = float(os.environ.get("TNA_OUTAGE_SECONDS", "60"))
#: issue 11: every tunnel back within this many seconds of sshd's return
TUNNEL_BACK = 3.0
ENDED = {"CleanupState", "DownState", "ShutDownState", "ShuttingDownState"}
OUTAGE_LINE = re.compile(r"NetLab: site outage in stage (\S+): .*no drone is ended")
OVER_LINE = re.compile(r"NetLab: site outage in stage (\S+) is over after ([\d.]+) s")
#: bounded wait after sshd's return for the tunnels, heartbeats and the end of
#: the outage (the tunnels take ~2 s; heartbeats and the adapter's listing more)
RECOVERY = 150
#: seconds after sshd's return before the outage lines are judged: the
#: adapter reconnects and lists a few times (drone_heartbeat_interval 5 s)
SETTLE = 20


@pytest.fixture(scope="module")
def site(lab: Lab) -> Iterator[Lab]:
    """The session's lab (tests/conftest.py), Slurm faults cleared around the module."""
    faults.clear_slurm_faults(lab.layout)
    yield lab
    faults.clear_slurm_faults(lab.layout)
    if recorded_pid(lab.layout, "login-sshd") is None:  # a failure mid-outage
        lab.restart_service("login-sshd")


def tunnel_connections(site: Lab) -> int:
    """Established ssh connections from the site network (the workers) to login:22."""
    result = site.run(
        "login",
        ["ss", "-Htn", "state", "established", "( sport = :22 and dst 10.66.1.0/24 )"],
    )
    return len([line for line in result.stdout.splitlines() if line.strip()])


def tunnel_session_starts(site: Lab) -> list[float]:
    """When login's sshd accepted each tunnel connection (CLOCK_BOOTTIME seconds).

    Each established connection from the site network to :22 is served by
    sshd processes forked for it; the earliest one's kernel start time is the
    moment sshd accepted the connection, exact to a clock tick, unlike
    polling ``ss``.
    """
    result = site.run(
        "login",
        ["ss", "-Htnp", "state", "established", "( sport = :22 and dst 10.66.1.0/24 )"],
    )
    ticks = os.sysconf("SC_CLK_TCK")
    starts = []
    for line in result.stdout.splitlines():
        times = [start_time(int(pid)) for pid in re.findall(r"pid=(\d+)", line)]
        known = [t for t in times if t is not None]
        if known:
            starts.append(min(known) / ticks)
    return sorted(starts)


def login_sshd_processes(site: Lab) -> set[int]:
    """sshd processes in this lab's login namespace (the listener's orphaned sessions)."""
    found = set()
    for pid in pids_in_namespaces([site.layout.namespace_path("login")]):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if os.path.basename(exe) == "sshd":
            found.add(pid)
    return found


def stop_login_sshd_and_sessions(site: Lab) -> list[int]:
    """Stop login's sshd and kill all its sessions; the session pids killed.

    The sessions are the listener's descendants (per-connection sshd, the
    commands they run), taken before the listener dies (then they are
    orphans); afterwards, any sshd left in the login namespace (a session
    forked in between). All by pid, all inside this lab's login namespace.
    """
    in_login = set(pids_in_namespaces([site.layout.namespace_path("login")]))
    listener = recorded_pid(site.layout, "login-sshd")
    assert listener is not None, "login sshd is not running"
    sessions = descendants(listener) & in_login
    assert site.kill_service("login-sshd")
    sessions |= login_sshd_processes(site)
    terminate(sorted(sessions))
    left = login_sshd_processes(site)
    assert not left, f"sshd processes left in the login namespace: {left}"
    return sorted(sessions)


def test_login_sshd_down_60s_is_a_site_outage_and_no_drone_is_ended(
    site: Lab, tmp_path: Path
) -> None:
    config = write_config(site, tmp_path, replace=fixed_demand(DRONES))
    cobald = CobaldDaemon(site, tmp_path, config).start().wait_running()
    started = time.monotonic()
    events: list[str] = []
    measured: dict[str, Any] = {"outage": OUTAGE, "drones": DRONES}
    loaded: set[str] = set()

    def say(text: str) -> None:
        events.append(f"{time.monotonic() - started:6.1f}s {text}")

    def why() -> str:
        home = site.layout.home(site.drone_user)
        outputs = "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}"
            for path in sorted(home.glob("tardis-*.out"))[-DRONES:]
        )
        beats = {
            u: (round(h.time), h.failing_stage, h.stages, h.last_error)
            for u, h in heartbeats(site).items()
        }
        return (
            "events:\n  "
            + "\n  ".join(events[-60:])
            + f"\ndrones={registry_states(cobald.db)}\nslurm={slurm_jobs(site)}\n"
            f"heartbeats={beats}\n{outputs}\n"
            f"--- cobald log (tail)\n{cobald.all_logs()[-6000:]}"
        )

    try:
        # 1. three busy drones, Available, their latest heartbeats good
        def ready() -> bool:
            assert cobald.alive, "cobald exited\n" + why()
            for uuid in registry_states(cobald.db):
                if uuid not in loaded and pool_request(
                    site, {"op": "set_load", "uuid": uuid, "load": 1.0}
                ).get("ok"):
                    loaded.add(uuid)
            drones = registry_states(cobald.db)
            beats = heartbeats(site)
            good = [
                u
                for u, (_job, state) in drones.items()
                if state == "AvailableState" and u in beats and beats[u].ok
            ]
            return len(good) >= DRONES

        measured["ready_after"] = round(
            wait_for("three connected drones", ready, 300, why)
        )
        ours = {
            u: job
            for u, (job, state) in registry_states(cobald.db).items()
            if state == "AvailableState"
        }
        assert len(ours) == DRONES, why()
        jobs = slurm_jobs(site)
        assert {jobs[job][0] for job in ours.values()} == {"RUNNING"}, why()
        assert tunnel_connections(site) >= DRONES, why()
        say(f"ready: {ours}")

        # 2. sshd down for OUTAGE seconds, every session killed
        killed = stop_login_sshd_and_sessions(site)
        down_at = time.monotonic()
        say(f"login sshd stopped, {len(killed)} session processes killed")
        assert tunnel_connections(site) == 0, why()
        trail: dict[str, str] = {}

        def watch_drones() -> None:
            """No drone of ours ended, none moved to another job; states to events."""
            assert cobald.alive, "cobald exited\n" + why()
            drones = registry_states(cobald.db)
            beats = heartbeats(site)
            for uuid, job in ours.items():
                record = drones.get(uuid)
                assert record is not None, f"{uuid} left the registry\n{why()}"
                assert record[1] not in ENDED, f"{uuid} is {record[1]}\n{why()}"
                assert record[0] == job, f"{uuid}: job {job} -> {record[0]}\n{why()}"
                beat = beats.get(uuid)
                seen = f"{record[1]} beat={beat.failing_stage if beat else '-'}"
                if trail.get(uuid) != seen:
                    trail[uuid] = seen
                    say(f"{uuid}: {seen}")

        while time.monotonic() - down_at < OUTAGE:
            watch_drones()
            time.sleep(1)

        # 3. sshd back: tunnels, heartbeats and the end of the outage
        sshd = site.restart_service("login-sshd")
        # sshd's return is its new process's start (it listens a few ms later):
        # every time below counts from there, on the boot clock and the wall clock
        back_boot = (start_time(sshd) or 0) / os.sysconf("SC_CLK_TCK")
        late = time.clock_gettime(time.CLOCK_BOOTTIME) - back_boot
        back_mono, back_wall = time.monotonic() - late, time.time() - late
        say("login sshd back")
        tunnels: list[float] = []
        first_good: dict[str, float] = {}

        def recovered() -> bool:
            watch_drones()
            count = tunnel_connections(site)
            while len(tunnels) < min(count, DRONES):
                tunnels.append(round(time.monotonic() - back_mono, 1))
                say(f"{len(tunnels)} tunnel(s) back")
            for uuid, beat in heartbeats(site).items():
                fresh = uuid in ours and uuid not in first_good
                if fresh and beat.ok and beat.time > back_wall:
                    first_good[uuid] = round(beat.time - back_wall, 1)
                    say(f"{uuid}: first good heartbeat")
            logs = cobald.all_logs()
            return (
                len(tunnels) >= DRONES
                and len(first_good) == DRONES
                # a few of the adapter's cycles (5 s) after sshd's return, so
                # that its first listings have judged the drones
                and time.monotonic() - back_mono >= SETTLE
                and len(OUTAGE_LINE.findall(logs)) == len(OVER_LINE.findall(logs))
            )

        measured["recovered_after"] = round(
            wait_for(
                "tunnels, heartbeats and the outage's end", recovered, RECOVERY, why
            ),
            1,
        )
        measured["tunnel_seen_after"] = tunnels  # polled: about 1 s resolution
        measured["tunnel_back_after"] = [
            round(start - back_boot, 2) for start in tunnel_session_starts(site)
        ]
        assert len(measured["tunnel_back_after"]) >= DRONES, why()
        measured["first_good_heartbeat_after"] = sorted(first_good.values())
        for name in ("tunnel_back_after", "first_good_heartbeat_after"):
            values = measured[name]
            measured[f"{name}_median_max"] = [median(values), max(values)]
        say(
            "tunnels back after {} s (median {:.2f} s, max {:.2f} s)".format(
                measured["tunnel_back_after"], *measured["tunnel_back_after_median_max"]
            )
        )
        time.sleep(5)  # one more status cycle: a late cancel would show now
        watch_drones()

        logs = cobald.all_logs()
        began = OUTAGE_LINE.findall(logs)
        over = OVER_LINE.findall(logs)
        measured["log"] = [
            line
            for line in logs.splitlines()
            if OUTAGE_LINE.search(line) or OVER_LINE.search(line)
        ]
        say(f"outage lines: {measured['log']}")
        measured["outage_declared"] = bool(began)
        assert began and began[0] == "login", f"outage lines {began}\n{why()}"
        assert len(began) <= 2, f"outage declared {len(began)} times\n{why()}"
        assert len(over) == len(began), f"outage ended {len(over)} times\n{why()}"
        jobs = slurm_jobs(site)
        still = {job: jobs.get(job, ("gone",))[0] for job in ours.values()}
        assert set(still.values()) == {"RUNNING"}, f"{still}\n{why()}"
        lost = re.findall(r"drone (\S+) is (?:lost|never-connected) \(", logs)
        assert not set(lost) & set(ours), f"judged lost: {lost}\n{why()}"
        assert cobald.alive, why()
        assert "Traceback" not in logs, why()
        measured["events"] = events
        print(json.dumps({k: v for k, v in measured.items() if k != "events"}))
        back_median, back_max = measured["tunnel_back_after_median_max"]
        print(
            f"outage {OUTAGE:.0f} s: tunnels back after median {back_median:.2f} s, "
            f"max {back_max:.2f} s; first good heartbeat median "
            f"{measured['first_good_heartbeat_after_median_max'][0]:.1f} s, max "
            f"{measured['first_good_heartbeat_after_median_max'][1]:.1f} s"
        )
        assert back_max <= TUNNEL_BACK, (
            f"a tunnel came back {back_max:.2f} s after sshd (target "
            f"{TUNNEL_BACK:.0f} s): {measured['tunnel_back_after']}\n{why()}"
        )
    finally:
        measured.setdefault("events", events)
        cobald.stop()
        if recorded_pid(site.layout, "login-sshd") is None:
            site.restart_service("login-sshd")
        site.run("login", ["scancel", "--me"], user=site.drone_user)
        (tmp_path / "measured.json").write_text(json.dumps(measured, indent=2))
        if os.environ.get("TNA_KEEP_LOGS"):
            shutil.copytree(tmp_path, os.environ["TNA_KEEP_LOGS"], dirs_exist_ok=True)
        try:
            site.wait_nodes_idle(timeout=60)
        except Exception as error:  # the next module says so if it matters
            print(f"nodes not idle after the test: {error!r}")
