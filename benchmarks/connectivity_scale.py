"""Connectivity collection at scale: executor calls and adapter CPU per cycle.

Builds a fake login node in a temp dir (a ``squeue`` answering for N drones and
N heartbeat files in the watchdog's format, with a realistic mix of healthy,
failing, silent and queued drones), then runs full collection cycles the way
the adapter does: the real SitePoller command (squeue with TimeUsed + heartbeat
collection) through an executor that runs it in /bin/sh after a simulated
network round trip, then SiteMonitor verdicts and metrics.

Adapter CPU is ``time.process_time()`` of this process around the cycle (the
shell's own CPU is the login node's, not counted). Run:

    python benchmarks/connectivity_scale.py [--drones 1000] [--cycles 5] [--rtt 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tardis_netadapter.batch import SlurmDriver  # noqa: E402
from tardis_netadapter.batch.poller import SitePoller  # noqa: E402
from tardis_netadapter.connectivity.metrics import ConnectivityMetrics  # noqa: E402
from tardis_netadapter.connectivity.monitor import SiteMonitor  # noqa: E402
from tardis_netadapter.connectivity.verdict import Timing  # noqa: E402

MAX_CALLS, MAX_CPU = 10, 0.5


class RttShellExecutor:
    """Runs the command in /bin/sh after ``rtt`` seconds, like an SSH executor would."""

    def __init__(self, env: dict[str, str], rtt: float) -> None:
        self.env, self.rtt, self.calls, self.bytes = env, rtt, 0, 0

    async def run_command(self, command: str, stdin_input=None):
        self.calls += 1
        await asyncio.sleep(self.rtt / 2)
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await process.communicate()
        await asyncio.sleep(self.rtt / 2)
        self.bytes += len(stdout)
        return SimpleNamespace(
            stdout=stdout.decode().strip(), stderr=stderr.decode(), exit_code=0
        )


def heartbeat(uuid: str, now: int, kind: str, seq: int) -> dict:
    """A record shaped exactly like watchdog.sh writes it."""
    ok = kind == "ok"
    good = {"ok": True, "latency_ms": 11.7, "error": None, "condor": None}
    bad = {
        "ok": False,
        "latency_ms": None,
        "error": "tna-probe: line 1: connect: Connection timed out",
        "condor": None,
    }
    probes = [
        {"endpoint": "collector.example.org:9618", **(good if ok else bad)},
        {"endpoint": "schedd01.example.org:9618", **(good if ok else bad)},
    ]
    failing_since = {"degraded": now - 40, "lost": now - 4000}.get(kind)
    return {
        "v": 1,
        "uuid": uuid,
        "time": now - 7,
        "seq": seq,
        "job": str(100000 + seq),
        "host": f"jrc{seq:04d}.jureca",
        "interval": 30,
        "stages": {"cvmfs": "ok", "tunnel": "ok", "chain": "ok", "payload": "ok"},
        "probes": probes,
        "restarts": 0 if ok else 1,
        "last_ok": now - 7 if ok else now - 5000,
        "failing_since": failing_since,
        "last_error": None if ok else bad["error"],
        "failing_stage": None if ok else "chain",
    }


def build_site(root: Path, drones: int) -> tuple[dict[str, str], dict[str, int]]:
    """squeue + heartbeat files for ``drones`` drones; returns env and the mix."""
    now = int(time.time())
    hb = root / "home" / "hb"
    hb.mkdir(parents=True)
    kinds = (
        ["ok"] * 80 + ["degraded"] * 5 + ["lost"] * 5 + ["silent"] * 5 + ["queued"] * 5
    )
    mix: dict[str, int] = {}
    jobs = []
    for index in range(drones):
        kind = kinds[index % len(kinds)]
        mix[kind] = mix.get(kind, 0) + 1
        uuid = f"jureca-{index:010x}"
        state = "PENDING" if kind == "queued" else "RUNNING"
        used = "2:00:00" if state == "RUNNING" else "0:00"
        jobs.append(f"{100000 + index}|{state}|jrc{index:04d}|None|{used}|{uuid}")
        if kind not in ("silent", "queued"):
            record = heartbeat(uuid, now, kind, index)
            (hb / f"{uuid}.json").write_text(json.dumps(record) + "\n")
    table = root / "jobs.txt"
    table.write_text("\n".join(jobs) + "\n")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text(f"#!/bin/sh\ncat {table}\n")
    squeue.chmod(0o755)
    env = {"HOME": str(root / "home"), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return env, mix


async def cycles(env: dict[str, str], count: int, rtt: float) -> list[dict]:
    executor = RttShellExecutor(env, rtt)
    timing = Timing(interval=30, grace=120, connect_deadline=600)
    monitor = SiteMonitor("~/hb", timing)
    metrics = ConnectivityMetrics()
    poller = SitePoller(
        SlurmDriver(), executor, probes=[monitor.probe], max_age=0, name="JURECA"
    )
    results = []
    for _ in range(count):
        calls_before = executor.calls
        wall, cpu = time.perf_counter(), time.process_time()
        snapshot = await poller.refresh()
        cpu_call = time.process_time() - cpu
        cpu_parse = time.process_time()
        judgements = monitor.observe(snapshot)
        metrics.update("JURECA", judgements, monitor.store.records)
        cpu_judge = time.process_time() - cpu_parse
        results.append(
            {
                "calls": executor.calls - calls_before,
                "cpu_total": time.process_time() - cpu,
                "cpu_call": cpu_call,
                "cpu_judge": cpu_judge,
                "wall": time.perf_counter() - wall,
                "bytes": executor.bytes,
                "counts": monitor.counts(),
            }
        )
        executor.bytes = 0
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drones", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--rtt", type=float, default=0.05, help="simulated RTT (s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env, mix = build_site(Path(tmp), args.drones)
        results = asyncio.run(cycles(env, args.cycles, args.rtt))
    cpu = [r["cpu_total"] for r in results]
    last = results[-1]
    print(
        f"## {args.drones} drones, {args.cycles} cycles, RTT {args.rtt * 1000:.0f} ms\n"
    )
    print("| metric | value | limit |")
    print("| --- | --- | --- |")
    print(
        f"| executor calls per cycle (max) | {max(r['calls'] for r in results)} | {MAX_CALLS} |"
    )
    print(
        f"| adapter CPU per cycle, median / max | {statistics.median(cpu) * 1000:.0f} ms / {max(cpu) * 1000:.0f} ms | {MAX_CPU * 1000:.0f} ms |"
    )
    print(
        f"| of which call + split + parse (median) | {statistics.median(r['cpu_call'] for r in results) * 1000:.0f} ms | |"
    )
    print(
        f"| of which verdicts + metrics (median) | {statistics.median(r['cpu_judge'] for r in results) * 1000:.0f} ms | |"
    )
    print(
        f"| wall time per cycle (median) | {statistics.median(r['wall'] for r in results) * 1000:.0f} ms | |"
    )
    print(f"| output per cycle | {last['bytes'] / 1024:.0f} KiB | |")
    print(f"| drone mix | {', '.join(f'{n} {k}' for k, n in sorted(mix.items()))} | |")
    verdicts = ", ".join(f"{n} {v}" for v, n in last["counts"].items() if n)
    print(f"| verdicts | {verdicts} | |")
    ok = max(r["calls"] for r in results) <= MAX_CALLS and max(cpu) <= MAX_CPU
    print(
        f"\nresult: {'PASS' if ok else 'FAIL'} (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
