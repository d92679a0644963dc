"""Issue 9 in the real lab: a lying squeue, a daemon killed mid-sbatch, a black hole.

A real ``cobald`` daemon (configs/lab.yml, COBalD's demand fixed with the
Standardiser so it does not depend on load) runs NetSlurm drones on the lab's
Slurm, while the login node misbehaves through the lab's fault hooks
(``lab/tardis_netadapter_lab/faults.py``: wrappers first on PATH only for
sessions of login's sshd, i.e. for the daemon; ``Lab.run`` still sees the
truth):

a. squeue prints nothing (exit 0), then truncates a RUNNING job's line to
   ``<id>|RUNN``, for about three status cycles each, while two drones are
   Available: no drone is ended and their Slurm jobs keep running.
b. sbatch submits, then stalls 20 s; the daemon is SIGKILLed while three
   sbatches are in flight and restarted on the same SqliteRegistry: the site
   ends with exactly one job per drone uuid and no orphan.
c. a black-hole site (the payload stand-in exits at once) with a small brake:
   the jobs submitted in the window stay under the bound derived from the
   brake settings; once the payload is fixed the site recovers by itself.
   ``TNA_BLACK_HOLE_MINUTES=10`` (or benchmarks/black_hole.py) runs the
   window for longer.

TARDIS states come from the daemon's SqliteRegistry, job states from squeue
run as the drone user through ``Lab.run``. ``TNA_KEEP_LOGS=DIR`` keeps the
daemon's logs and registry.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tardis_netadapter_lab import Lab, faults
from tardis_netadapter_lab.daemon import (
    CobaldDaemon,
    brake_bound,
    brake_probes,
    drone_jobs,
    fixed_demand,
    pool_request,
    registry_states,
    slurm_jobs,
    wait_for,
    with_brake,
    write_config,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

#: configs/lab.yml: drone_heartbeat_interval 5 s, status_max_age 3 s, so one
#: status cycle (every drone asked, squeue read once) takes at most 8 s
CYCLE = 8
LIE_CYCLES = 3
SBATCH_STALL = 20
ENDED = {"CleanupState", "DownState", "ShutDownState", "ShuttingDownState"}
ACTIVE = {"RUNNING", "PENDING", "CONFIGURING", "COMPLETING"}

BRAKE = {"after": 2, "min_lifetime": 30, "backoff": 10, "max_backoff": 40}
BLACK_HOLE_DRONES = 3
#: the CI window; TNA_BLACK_HOLE_MINUTES=10 gives the issue's 10-minute run
BLACK_HOLE_WINDOW = 60 * float(os.environ.get("TNA_BLACK_HOLE_MINUTES", "1.5"))


@pytest.fixture(scope="module")
def site(lab: Lab) -> Iterator[Lab]:
    """The session's lab for this module's tests, its faults always cleared.

    (One lab for all three tests: tests/conftest.py's session-scoped ``lab``.)
    """
    faults.clear_slurm_faults(lab.layout)
    yield lab
    faults.clear_slurm_faults(lab.layout)


@pytest.fixture
def daemon(site: Lab, tmp_path: Path) -> Iterator[Callable[[dict], CobaldDaemon]]:
    """make(replace) -> a started daemon; stopped, faults cleared, jobs cancelled."""
    started: list[CobaldDaemon] = []

    def make(replace: dict[str, str]) -> CobaldDaemon:
        config = write_config(site, tmp_path, replace=replace)
        cobald = CobaldDaemon(site, tmp_path, config).start()
        started.append(cobald)
        return cobald.wait_running()

    yield make
    for cobald in started:
        cobald.stop()
    faults.clear_slurm_faults(site.layout)
    site.run("login", ["scancel", "--me"], user=site.drone_user)
    if os.environ.get("TNA_KEEP_LOGS"):
        shutil.copytree(tmp_path, os.environ["TNA_KEEP_LOGS"], dirs_exist_ok=True)
    try:
        site.wait_nodes_idle(timeout=60)
    except Exception as error:  # the next test says so if it matters
        print(f"nodes not idle after the test: {error!r}")


def explain(site: Lab, cobald: CobaldDaemon, events: list[str]) -> str:
    home = site.layout.home(site.drone_user)
    outputs = "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')[-1200:]}"
        for path in sorted(home.glob("tardis-*.out"))[-2:]
    )
    return (
        "events:\n  "
        + "\n  ".join(events[-40:])
        + f"\ndrones={registry_states(cobald.db)}\nslurm={slurm_jobs(site)}\n{outputs}\n"
        f"--- cobald logs (tail)\n{cobald.all_logs()[-5000:]}"
    )


def keep_busy(site: Lab, cobald: CobaldDaemon, loaded: set[str]) -> None:
    """Registered drones report load 1, so nothing wants to drain them."""
    for uuid in registry_states(cobald.db):
        if uuid not in loaded and pool_request(
            site, {"op": "set_load", "uuid": uuid, "load": 1.0}
        ).get("ok"):
            loaded.add(uuid)


def available(cobald: CobaldDaemon) -> dict[str, str]:
    return {
        u: job
        for u, (job, s) in registry_states(cobald.db).items()
        if s == "AvailableState"
    }


def test_lying_squeue_ends_no_drone(site: Lab, daemon) -> None:
    cobald = daemon(fixed_demand(2))
    events: list[str] = []
    loaded: set[str] = set()

    def why() -> str:
        return explain(site, cobald, events)

    def two_available() -> bool:
        assert cobald.alive, "cobald exited\n" + why()
        keep_busy(site, cobald, loaded)
        return len(available(cobald)) >= 2

    took = wait_for("two drones in AvailableState", two_available, 240, why)
    ours = dict(list(available(cobald).items())[:2])
    events.append(f"{took:.0f}s: Available {ours}")
    jobs = slurm_jobs(site)
    assert all(jobs[job][0] == "RUNNING" for job in ours.values()), why()

    trail: dict[str, str] = {}
    for mode in ("empty", "truncate", "off"):
        faults.set_squeue(site.layout, mode)
        events.append(f"squeue {mode}")
        until = time.monotonic() + LIE_CYCLES * CYCLE
        while time.monotonic() < until:
            assert cobald.alive, f"cobald exited (squeue {mode})\n" + why()
            drones = registry_states(cobald.db)
            for uuid in ours:
                state = drones.get(uuid, ("", "gone from the registry"))[1]
                if trail.get(uuid) != state:
                    trail[uuid] = state
                    events.append(f"squeue {mode}: {uuid} {state}")
            for uuid, job in ours.items():
                record = drones.get(uuid)
                assert record is not None, (
                    f"squeue {mode}: {uuid} (job {job}) left the registry "
                    f"(DownState)\n" + why()
                )
                assert record[1] not in ENDED, (
                    f"squeue {mode}: {uuid} (job {job}) is {record[1]}\n" + why()
                )
                assert record[0] == job, f"{uuid}: job {job} -> {record[0]}\n{why()}"
            time.sleep(1)

    jobs = slurm_jobs(site)
    still = {job: jobs.get(job, ("gone",))[0] for job in ours.values()}
    assert set(still.values()) == {"RUNNING"}, f"{still}\n{why()}"
    assert {registry_states(cobald.db)[u][1] for u in ours} == {"AvailableState"}, why()
    assert "Traceback" not in cobald.all_logs(), why()


def test_sigkill_mid_sbatch_leaves_one_job_per_drone(site: Lab, daemon) -> None:
    baseline = max((int(job) for job in slurm_jobs(site)), default=0)
    faults.set_sbatch_delay(site.layout, SBATCH_STALL)
    cobald = daemon(fixed_demand(3))
    events: list[str] = []

    def why() -> str:
        return explain(site, cobald, events)

    def new_jobs() -> dict[str, str]:
        return {j: n for j, n in drone_jobs(site).items() if int(j) > baseline}

    def three_in_flight() -> bool:
        assert cobald.alive, "cobald exited\n" + why()
        requested = {
            uuid
            for uuid, (job, state) in registry_states(cobald.db).items()
            if state == "RequestState" and job == "None"
        }
        submitted = set(new_jobs().values())
        return len(requested & submitted) >= 3

    # the jobs exist in Slurm while their sbatch still stalls: kill now
    took = wait_for("three sbatches in flight", three_in_flight, SBATCH_STALL + 40, why)
    pid = cobald.kill()
    events.append(f"{took:.0f}s: SIGKILL {pid}; jobs {new_jobs()}")
    faults.set_sbatch_delay(site.layout, 0)
    before = registry_states(cobald.db)
    cobald.restart().wait_running()

    def settled() -> bool:
        assert cobald.alive, "restarted cobald exited\n" + why()
        drones = registry_states(cobald.db)
        tracked = [job for job, _state in drones.values() if job != "None"]
        return len(drones) >= 3 and len(tracked) == len(drones)

    took = wait_for("every drone tracking a job", settled, 90, why)
    time.sleep(2 * CYCLE)  # a late duplicate sbatch would show up by now
    events.append(f"settled {took:.0f}s after the restart")

    drones = registry_states(cobald.db)
    jobs = new_jobs()
    by_name: dict[str, list[str]] = {}
    for job, name in jobs.items():
        by_name.setdefault(name, []).append(job)
    duplicated = {name: ids for name, ids in by_name.items() if len(ids) > 1}
    assert not duplicated, (
        f"more than one job per drone uuid: {duplicated}\n"
        f"registry before the restart: {before}\n{why()}"
    )
    orphans = {
        job: name
        for job, name in jobs.items()
        if name not in drones or drones[name][0] != job
    }
    assert not orphans, f"jobs no drone tracks: {orphans}\n{why()}"
    for uuid in before:
        assert uuid in drones or uuid not in by_name, why()


def test_black_hole_site_is_braked_and_recovers(site: Lab, daemon) -> None:
    baseline = max((int(job) for job in slurm_jobs(site)), default=0)
    faults.set_payload(site.layout, "exit")
    cobald = daemon(with_brake(fixed_demand(BLACK_HOLE_DRONES), **BRAKE))
    events: list[str] = []
    seen: set[str] = set()

    def why() -> str:
        return explain(site, cobald, events)

    # Measured without a brake (benchmarks/black_hole.py --no-brake): black-hole
    # drones die about 11 s after their request and come back in waves of 3
    # every ~30 s, so after the first deaths the site keeps getting ~6 jobs a
    # minute. With the brake, once it engages only probes get through, one at
    # a time, one per back-off (10, 20, 40, 40 ... s): the jobs after the
    # engagement are bounded by the back-offs that end within the window, and
    # before it by quota + after - 1 (daemon.brake_bound's first period).
    started = time.monotonic()
    counts: list[tuple[int, int]] = []
    engaged_at: float | None = None
    jobs_at_engagement = 0
    while time.monotonic() - started < BLACK_HOLE_WINDOW:
        assert cobald.alive, "cobald exited on the black-hole site\n" + why()
        seen |= {job for job in drone_jobs(site) if int(job) > baseline}
        elapsed = time.monotonic() - started
        if not counts or counts[-1][1] != len(seen):
            counts.append((int(elapsed), len(seen)))
        if engaged_at is None and "brake engaged" in cobald.all_logs():
            engaged_at, jobs_at_engagement = elapsed, len(seen)
        time.sleep(2)
    events.append(f"jobs over time (s, count): {counts}; engaged at {engaged_at}")
    assert engaged_at is not None, "the brake never engaged\n" + why()
    first_period = brake_bound(0, BLACK_HOLE_DRONES, BRAKE["after"], 1, 1)
    probes = brake_probes(
        BLACK_HOLE_WINDOW - engaged_at, BRAKE["backoff"], BRAKE["max_backoff"]
    )
    after = len(seen) - jobs_at_engagement
    print(
        f"black hole: {len(seen)} jobs in {BLACK_HOLE_WINDOW:.0f} s; brake engaged "
        f"at {engaged_at:.0f} s after {jobs_at_engagement} jobs; {after} after it "
        f"(at most {probes} probes)"
    )
    assert len(seen) >= BRAKE["after"], f"the site was never tried\n{why()}"
    # +1: a job submitted in the 2 s between a look at squeue and at the log
    assert jobs_at_engagement <= first_period + 1, why()
    assert after <= probes + 1, (
        f"{after} jobs after the brake engaged, more than {probes} probes\n{why()}"
    )

    # the payload is fixed: without anyone touching the daemon, drones come up
    faults.set_payload(site.layout, "off")
    events.append("payload fixed")
    loaded: set[str] = set()

    def recovered() -> bool:
        assert cobald.alive, "cobald exited\n" + why()
        keep_busy(site, cobald, loaded)
        return len(available(cobald)) >= 1

    recovery = wait_for(
        "a drone Available after the fix", recovered, BRAKE["max_backoff"] + 150, why
    )
    events.append(f"first drone Available {recovery:.0f}s after the fix")

    # the brake is lifted: the whole demand is deployed again and comes up
    def all_available() -> bool:
        assert cobald.alive, "cobald exited\n" + why()
        keep_busy(site, cobald, loaded)
        return len(available(cobald)) >= BLACK_HOLE_DRONES

    wait_for("the whole demand Available", all_available, 120, why)
    print(f"black hole: recovered {recovery:.0f} s after the fix")
    assert "Traceback" not in cobald.all_logs(), why()
