"""The HTCondor stand-ins (pool, condor_master payload, condor_status, condor_drain).

Everything runs on 127.0.0.1 in the root namespace. condor_status is driven
with the command lines real TARDIS composes and its output is parsed with
TARDIS's own parser, so the contract is checked against TARDIS itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import pytest
from tardis.adapters.batchsystems.htcondor import htcondor_status_updater
from tardis.utilities.attributedict import AttributeDict
from tardis.utilities.executors.shellexecutor import ShellExecutor
from tardis.utilities.utils import csv_parser, htcondor_status_cmd_composer

STANDINS = Path(__file__).resolve().parents[1] / "tardis_netadapter_lab" / "standins"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
RATIOS = {
    "cpu_ratio": "Real(TotalSlotCpus-Cpus)/TotalSlotCpus",
    "memory_ratio": "Real(TotalSlotMemory-Memory)/TotalSlotMemory",
}


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = ""
) -> Any:
    """Poll a condition with a hard deadline so no test can hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def load_module(name: str) -> ModuleType:
    """Import a stand-in from its file, as the lab runs it (not as a package)."""
    spec = importlib.util.spec_from_file_location(
        f"standin_{name}", STANDINS / f"{name}.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PoolProcess:
    """A pool stand-in started by this test; stopped by its own Popen handle."""

    def __init__(self, tmp: Path, port: int = 0, extra: Optional[list[str]] = None):
        self.state = tmp / "pool-state.json"
        self.log = tmp / f"pool-{time.monotonic_ns()}.log"
        if port == 0 and self.state.exists():
            self.state.unlink()
        cmd = [PYTHON, str(STANDINS / "pool.py"), "--listen", f"127.0.0.1:{port}"]
        cmd += ["--state", str(self.state), "--retire-seconds", "0.5", *(extra or [])]
        self.started = time.time()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stderr=log, stdin=subprocess.DEVNULL)
        wait_for(self._listening, what="pool to listen")
        self.port = int(self.read()["collector"]["address"].rsplit(":", 1)[1])
        self.address = f"127.0.0.1:{self.port}"

    def _listening(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return self.read()["collector"]["pid"] == self.proc.pid
        except (OSError, ValueError, KeyError):
            return False

    def read(self) -> dict[str, Any]:
        return json.loads(self.state.read_text())

    def drone(self, uuid: str) -> dict[str, Any]:
        return self.read()["drones"].get(uuid, {})

    def request(self, msg: Any) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            data = msg if isinstance(msg, bytes) else json.dumps(msg).encode() + b"\n"
            sock.sendall(data)
            with sock.makefile("rb") as stream:
                return json.loads(stream.readline())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class PayloadProcess:
    def __init__(
        self, tmp: Path, env: dict[str, str], args: Optional[list[str]] = None
    ):
        self.log = tmp / f"payload-{time.monotonic_ns()}.log"
        full_env = {
            k: v for k, v in os.environ.items() if not k.upper().startswith("_CONDOR_")
        }
        full_env.pop("CONDOR_CONFIG", None)
        full_env.update(env)
        cmd = [PYTHON, str(STANDINS / "payload.py"), "-f", *(args or [])]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=full_env, stderr=log, stdin=subprocess.DEVNULL
            )

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Every process a test starts goes here and is stopped afterwards."""
    started: list[Any] = []
    yield started
    for item in reversed(started):
        item.stop()


@pytest.fixture
def pool(tmp_path: Path, processes: list[Any]) -> PoolProcess:
    started = PoolProcess(tmp_path)
    processes.append(started)
    return started


def payload_env(pool: PoolProcess, uuid: str, interval: str = "1") -> dict[str, str]:
    return {
        "_CONDOR_COLLECTOR_HOST": pool.address,
        "_CONDOR_TardisDroneUuid": f'"{uuid}"',
        "_CONDOR_CCB_HEARTBEAT_INTERVAL": interval,
        "_CONDOR_NUM_CPUS": "8",
        "_CONDOR_MEMORY": "16000",
    }


def start_payload(
    tmp: Path,
    processes: list[Any],
    env: dict[str, str],
    args: Optional[list[str]] = None,
) -> PayloadProcess:
    payload = PayloadProcess(tmp, env, args)
    processes.append(payload)
    return payload


def condor_status(
    command: str, env: Optional[dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """Run a TARDIS-composed `condor_status ...` line against the stand-in."""
    argv = shlex.split(command)
    assert argv[0] == "condor_status"
    return subprocess.run(
        [PYTHON, str(STANDINS / "condor_status.py"), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def connected(pool: PoolProcess, uuid: str, count: int = 1) -> Callable[[], bool]:
    def check() -> bool:
        record = pool.drone(uuid)
        return bool(record.get("connected")) and record.get("connect_count") == count

    return check


# -- payload and pool ---------------------------------------------------------
def test_payload_registers_and_heartbeats(tmp_path, pool, processes):
    payload = start_payload(tmp_path, processes, payload_env(pool, "drone-a"))
    wait_for(connected(pool, "drone-a"), what="registration")
    first = pool.drone("drone-a")
    assert first["cpus"] == 8 and first["memory"] == 16000
    assert first["heartbeat_interval"] == 1.0
    assert first["remote"].startswith("127.0.0.1:")
    assert (first["state"], first["activity"], first["load"]) == (
        "Unclaimed",
        "Idle",
        0.0,
    )
    wait_for(lambda: pool.drone("drone-a")["heartbeats"] >= 2, what="two heartbeats")
    later = pool.drone("drone-a")
    assert later["last_heard"] > first["last_heard"]
    assert later["conn"] == first["conn"], "heartbeats must reuse the one connection"
    assert (
        f"registered with {pool.address} as drone-a (conn {first['conn']})"
        in payload.text()
    )
    assert payload.stop() == 0
    wait_for(lambda: not pool.drone("drone-a")["connected"], what="disconnect")


def test_pool_death_is_reported_and_give_up_zero_exits_1(tmp_path, pool, processes):
    env = dict(payload_env(pool, "drone-b"), TNA_PAYLOAD_GIVE_UP="0")
    payload = start_payload(tmp_path, processes, env)
    wait_for(connected(pool, "drone-b"), what="registration")
    pool.stop(signal.SIGKILL)
    assert payload.proc.wait(timeout=10) == 1
    text = payload.text()
    assert f"condor_master stand-in: lost the pool at {pool.address}: " in text
    assert "giving up" in text


def test_unanswered_heartbeat_means_lost(tmp_path, processes):
    """A pool that accepts the registration but never acks a heartbeat is lost."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)
    port = server.getsockname()[1]
    env = {
        "_CONDOR_COLLECTOR_HOST": f"127.0.0.1:{port}",
        "_CONDOR_TardisDroneUuid": "silent",
        "_CONDOR_CCB_HEARTBEAT_INTERVAL": "1",
    }
    payload = start_payload(tmp_path, processes, env, ["--give-up", "0"])
    conn, _ = server.accept()
    try:
        conn.settimeout(10)
        assert b'"op":"register"' in conn.recv(4096)
        conn.sendall(b'{"ok":true,"conn":7}\n')
        assert payload.proc.wait(timeout=15) == 1
    finally:
        conn.close()
        server.close()
    text = payload.text()
    assert f"registered with 127.0.0.1:{port} as silent (conn 7)" in text
    assert (
        f"lost the pool at 127.0.0.1:{port}: no answer to heartbeat within 1 s" in text
    )


def test_restarted_pool_sees_the_payload_again(tmp_path, pool, processes):
    payload = start_payload(
        tmp_path, processes, payload_env(pool, "drone-c"), ["--retry", "0.2"]
    )
    wait_for(connected(pool, "drone-c"), what="first registration")
    port = pool.port
    pool.stop(signal.SIGKILL)
    wait_for(lambda: "lost the pool" in payload.text(), what="loss to be logged")
    assert payload.proc.poll() is None, "a forever-retrying payload must keep running"
    again = PoolProcess(tmp_path, port=port)
    processes.append(again)
    wait_for(connected(again, "drone-c", count=2), timeout=15, what="re-registration")
    assert payload.text().count("registered with") == 2
    assert payload.stop() == 0


def test_sigterm_exits_zero_even_without_pool(tmp_path, processes):
    env = {"_CONDOR_COLLECTOR_HOST": "127.0.0.1:9", "_CONDOR_TardisDroneUuid": "x"}
    payload = start_payload(tmp_path, processes, env, ["--retry", "0.2"])
    wait_for(lambda: "cannot register with" in payload.text(), what="first attempt")
    assert payload.stop() == 0


def test_config_file_local_dir_and_env_precedence(tmp_path, pool, processes):
    local = tmp_path / "config.d"
    local.mkdir()
    (local / "10-drone").write_text(
        'TardisDroneUuid = "from-config-d"\nSTARTD_NAME = $(DRONE_SITE)-node\n'
    )
    (local / "20-cpus").write_text("NUM_CPUS = 3\n")
    config = tmp_path / "condor_config"
    config.write_text(
        "# written like a site's config\n"
        "COLLECTOR_HOST = 127.0.0.1:9\n"
        f"LOCAL_CONFIG_DIR = {local}\n"
        "DRONE_SITE = fzj\n"
        "NUM_CPUS = 1\n"
        "CCB_HEARTBEAT_INTERVAL = 600\n"
    )
    env = {
        "CONDOR_CONFIG": str(config),
        "_condor_collector_host": pool.address,  # env wins, any case
        "_CONDOR_ccb_heartbeat_interval": "1",
    }
    start_payload(tmp_path, processes, env)
    wait_for(connected(pool, "from-config-d"), what="registration from config")
    record = pool.drone("from-config-d")
    assert record["name"] == "fzj-node"
    assert record["cpus"] == 3
    assert record["heartbeat_interval"] == 1.0


def test_config_defaults_and_quoting():
    payload = load_module("payload")
    config = payload.Config({"_CONDOR_TardisDroneUuid": '"a\\"b"'})
    assert payload.classad_string(config.get("TARDISDRONEUUID")) == 'a"b'
    assert config.number("CCB_HEARTBEAT_INTERVAL", 1200) == 1200
    assert payload.parse_collector("pool.example.org") == ("pool.example.org", 9618)
    assert payload.parse_collector("<10.0.0.1:9619?sock=collector>") == (
        "10.0.0.1",
        9619,
    )
    assert payload.parse_collector("[::1]:9620, other:1") == ("::1", 9620)
    with pytest.raises(payload.ConfigError):
        payload.Config({"CONDOR_CONFIG": "/nonexistent/condor_config"})
    assert payload.Config({"CONDOR_CONFIG": "ONLY_ENV"}).get("COLLECTOR_HOST") is None


def test_installed_name_condor_master_runs(tmp_path, pool, processes):
    """The lab copies payload.py to bin/condor_master and runs it by name."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(STANDINS / "payload.py", bin_dir / "condor_master")
    (bin_dir / "condor_master").chmod(0o755)
    log = tmp_path / "master.log"
    env = dict(os.environ, **payload_env(pool, "by-name"))
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [str(bin_dir / "condor_master"), "-f"], env=env, stderr=handle
        )
    try:
        wait_for(connected(pool, "by-name"), what="registration")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


# -- pool robustness -----------------------------------------------------------
def test_pool_survives_garbage(pool):
    for bad in (
        b"not json\n",
        b"[1,2]\n",
        b'{"op":"nope"}\n',
        b'{"op":"register"}\n',
        b'{"op":"heartbeat"}\n',
        b'{"op":"set_load","uuid":"*","load":7}\n',
        b'{"op":"register","uuid":"u","cpus":"many"}\n',
        b"\xff\xfe\n",
    ):
        answer = pool.request(bad)
        assert answer["ok"] is False and answer["error"], bad
    with socket.create_connection(("127.0.0.1", pool.port), timeout=5) as sock:
        sock.sendall(b"x" * 200_000)  # longer than any request line may be
        sock.shutdown(socket.SHUT_WR)
        sock.recv(4096)
    info = pool.request({"op": "info"})
    assert info["ok"] and info["machine"] and abs(info["start_time"] - pool.started) < 5


def test_pool_holds_a_thousand_connections(pool):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1000
    if soft < want + 200:
        if hard != resource.RLIM_INFINITY and hard < want + 200:
            pytest.skip(f"file descriptor limit {hard} too low")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want + 200, hard))
    socks: list[socket.socket] = []
    try:
        for i in range(want):
            sock = socket.create_connection(("127.0.0.1", pool.port), timeout=10)
            socks.append(sock)
            msg = {"op": "register", "uuid": f"many-{i}", "heartbeat_interval": 60}
            sock.sendall(json.dumps(msg).encode() + b"\n")
        for sock in socks:
            with sock.makefile("rb") as stream:
                assert json.loads(stream.readline())["ok"] is True
        answer = pool.request({"op": "query"})
        live = [d for d in answer["drones"] if d["connected"]]
        assert len(live) == want
        assert len({d["conn"] for d in live}) == want
    finally:
        for sock in socks:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    wait_for(
        lambda: not any(d["connected"] for d in pool.read()["drones"].values()),
        what="all disconnects in the state file",
    )


def test_silent_registration_expires(pool):
    with socket.create_connection(("127.0.0.1", pool.port), timeout=5) as sock:
        msg = {"op": "register", "uuid": "mute", "heartbeat_interval": 0.2}
        sock.sendall(json.dumps(msg).encode() + b"\n")
        wait_for(lambda: pool.drone("mute").get("connected"), what="registration")
        wait_for(lambda: not pool.drone("mute")["connected"], timeout=8, what="expiry")
        assert pool.drone("mute")["disconnect_reason"].startswith("expired")


# -- condor_status / condor_drain against TARDIS ---------------------------------
def tardis_status(pool: PoolProcess) -> dict[str, dict[str, Any]]:
    attributes = AttributeDict(
        Machine="Machine",
        Name="Name",
        State="State",
        Activity="Activity",
        TardisDroneUuid="TardisDroneUuid",
    )
    attributes.update({key: shlex.quote(value) for key, value in RATIOS.items()})
    cmd = htcondor_status_cmd_composer(
        attributes=attributes,
        options=AttributeDict(pool=pool.address),
        constraint="PartitionableSlot=?=True",
    )
    result = condor_status(cmd)
    assert result.returncode == 0, result.stderr
    rows = csv_parser(
        input_csv=result.stdout,
        fieldnames=tuple(attributes.keys()),
        delimiter="\t",
        replacements={"undefined": None},
    )
    return {row["TardisDroneUuid"] or row["Machine"].split(".")[0]: row for row in rows}


def test_condor_status_answers_tardis_queries(tmp_path, pool, processes):
    start_payload(tmp_path, processes, payload_env(pool, "drone-d"))
    named = dict(payload_env(pool, "drone-e"), _CONDOR_STARTD_NAME="worker1.lab")
    start_payload(tmp_path, processes, named)
    wait_for(connected(pool, "drone-d"), what="drone-d")
    wait_for(connected(pool, "drone-e"), what="drone-e")

    collectors_cmd = htcondor_status_cmd_composer(
        attributes=AttributeDict(Machine="Machine"),
        options=AttributeDict(pool=pool.address, collector=None),
    )
    result = condor_status(collectors_cmd)
    assert result.returncode == 0, result.stderr
    collectors = [r["Machine"] for r in csv_parser(result.stdout, ("Machine",), "\t")]
    assert collectors == [pool.read()["collector"]["machine"]]

    master_cmd = htcondor_status_cmd_composer(
        attributes=AttributeDict(Machine="Machine", DaemonStartTime="DaemonStartTime"),
        options=AttributeDict(pool=pool.address, master=None),
        constraint=" || ".join(f'Machine == "{fqdn}"' for fqdn in collectors),
    )
    result = condor_status(master_cmd)
    assert result.returncode == 0, result.stderr
    rows = list(csv_parser(result.stdout, ("Machine", "DaemonStartTime"), "\t"))
    assert [r["Machine"] for r in rows] == collectors
    assert abs(int(rows[0]["DaemonStartTime"]) - pool.started) < 5

    status = tardis_status(pool)
    assert set(status) == {"drone-d", "drone-e"}
    assert status["drone-d"] == {
        "Machine": "drone-d",
        "Name": "slot1@drone-d",
        "State": "Unclaimed",
        "Activity": "Idle",
        "TardisDroneUuid": "drone-d",
        "cpu_ratio": "0.0",
        "memory_ratio": "0.0",
    }
    assert status["drone-e"]["Machine"] == "worker1.lab"
    assert status["drone-e"]["Name"] == "slot1@worker1.lab"

    assert pool.request({"op": "set_load", "uuid": "drone-d", "load": 0.25})["ok"]
    status = tardis_status(pool)
    assert float(status["drone-d"]["cpu_ratio"]) == 0.25
    assert float(status["drone-d"]["memory_ratio"]) == 0.25
    assert float(status["drone-e"]["cpu_ratio"]) == 0.0
    assert pool.request({"op": "set_load", "uuid": "*", "load": 1.0})["updated"] == 2
    assert all(float(row["cpu_ratio"]) == 1.0 for row in tardis_status(pool).values())


def test_only_connected_drones_are_listed(tmp_path, pool, processes):
    payload = start_payload(tmp_path, processes, payload_env(pool, "drone-f"))
    wait_for(connected(pool, "drone-f"), what="registration")
    assert "drone-f" in tardis_status(pool)
    payload.stop()
    wait_for(lambda: not pool.drone("drone-f")["connected"], what="disconnect")
    assert tardis_status(pool) == {}


async def test_real_tardis_updater_uses_the_stand_in(
    tmp_path, pool, processes, monkeypatch
):
    """TARDIS's own htcondor_status_updater, via its ShellExecutor and $PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(STANDINS / "condor_status.py", bin_dir / "condor_status")
    (bin_dir / "condor_status").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    start_payload(tmp_path, processes, payload_env(pool, "drone-g"))
    wait_for(connected(pool, "drone-g"), what="registration")
    attributes = {
        "Machine": "Machine",
        "Name": "Name",
        "State": "State",
        "Activity": "Activity",
        "TardisDroneUuid": "TardisDroneUuid",
    }
    attributes.update({key: shlex.quote(value) for key, value in RATIOS.items()})
    status = await htcondor_status_updater(
        AttributeDict(pool=pool.address), attributes, ShellExecutor(), {}
    )
    assert status["drone-g"]["State"] == "Unclaimed"
    assert status["drone-g"]["Name"] == "slot1@drone-g"


def test_condor_drain_moves_through_retiring_to_idle(tmp_path, pool, processes):
    start_payload(tmp_path, processes, payload_env(pool, "drone-h"))
    wait_for(connected(pool, "drone-h"), what="registration")
    drain = [PYTHON, str(STANDINS / "condor_drain.py"), "-pool", pool.address]
    result = subprocess.run(
        [*drain, "-graceful", "slot1@drone-h"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    row = tardis_status(pool)["drone-h"]
    assert (row["State"], row["Activity"]) == ("Drained", "Retiring")

    def drained_idle() -> bool:
        record = pool.drone("drone-h")
        return (record["state"], record["activity"]) == ("Drained", "Idle")

    wait_for(drained_idle, what="Drained/Idle")
    row = tardis_status(pool)["drone-h"]
    assert (row["State"], row["Activity"]) == ("Drained", "Idle")
    unknown = subprocess.run(
        [*drain, "-graceful", "slot1@nobody"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unknown.returncode == 1
    assert "slot1@nobody" in unknown.stderr


def test_condor_status_reports_unreachable_collector(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]  # bound, never listening: refused
        env = dict(os.environ, _CONDOR_COLLECTOR_HOST=f"127.0.0.1:{port}")
        result = condor_status("condor_status -af:t Machine -collector", env=env)
    assert result.returncode != 0
    assert "Failed communication with collector" in result.stderr
    assert result.stdout == ""


def test_condor_status_options_before_attributes(pool):
    result = condor_status(
        f"condor_status -pool {pool.address} -master -af:t Machine DaemonStartTime"
    )
    assert result.returncode == 0, result.stderr
    machine, start = result.stdout.strip().split("\t")
    assert machine == pool.read()["collector"]["machine"]
    assert abs(int(start) - pool.started) < 5


def test_classad_evaluator():
    status = load_module("condor_status")
    ad = {
        "machine": "Node1.lab",
        "cpus": 2,
        "totalslotcpus": 8,
        "partitionableslot": True,
    }

    def ev(text: str) -> Any:
        return status.compile_expr(text)(ad)

    assert ev("PartitionableSlot=?=True") is True
    assert ev("Missing =?= True") is False
    assert ev('Machine == "node1.lab"') is True  # == ignores case
    assert ev('Machine =?= "node1.lab"') is False  # =?= does not
    assert ev('Machine == "a" || Machine == "Node1.lab"') is True
    assert ev("Missing == 1") is None
    assert ev("Missing == 1 || true") is True
    assert ev("false && Missing") is False
    assert ev("Real(TotalSlotCpus-Cpus)/TotalSlotCpus") == 0.75
    assert ev("(TotalSlotCpus-Cpus)/TotalSlotCpus") == 0  # integer division
    assert ev('ifThenElse(Cpus > 1, "big", "small")') == "big"
    assert ev("MY.Cpus * 2 + 1") == 5
    assert ev("Cpus > 1 ? 10 : 20") == 10
    assert ev('"x" + 1') is status.ERROR
    with pytest.raises(SyntaxError):
        status.compile_expr("Cpus ==")


def test_pool_request_client_mode(pool):
    """`pool --request` is how a human (or the demo) pokes a running pool."""
    cli = [PYTHON, str(STANDINS / "pool.py"), "--request", pool.address]
    ok = subprocess.run(
        [*cli, '{"op":"set_load","uuid":"*","load":0.5}'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"ok": True, "updated": 0}
    bad = subprocess.run(
        [*cli, '{"op":"drain","name":"ghost"}'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1
    assert "no connected startd named ghost" in bad.stdout


def test_startd_cron_attributes_reach_condor_status(tmp_path, pool, processes):
    """The project's own STARTD_CRON knobs publish the watchdog's ad file."""
    from tardis_netadapter.connectivity.startd_cron import (
        environment,
        startd_cron_knobs,
    )

    ad_file = tmp_path / "tna.ad"
    ad_file.write_text(
        'TnaVerdict = "connected"\nTnaFailingStage = undefined\n'
        'TnaHeartbeatTime = 1700000000\nState = "Hijacked"\n'
    )
    env = dict(
        payload_env(pool, "drone-i"), **environment(startd_cron_knobs(str(ad_file), 1))
    )
    start_payload(tmp_path, processes, env)
    wait_for(connected(pool, "drone-i"), what="registration")
    cmd = (
        f"condor_status -af:t Machine State TnaVerdict TnaFailingStage TnaHeartbeatTime"
        f" -constraint 'TnaVerdict =?= \"connected\"' -pool {pool.address}"
    )

    def row() -> str:
        result = condor_status(cmd)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert wait_for(row, what="cron attributes") == (
        "drone-i\tUnclaimed\tconnected\tundefined\t1700000000"
    )
    ad_file.write_text('TnaVerdict = "broken"\nTnaFailingStage = "tunnel"\n')
    wait_for(lambda: pool.drone("drone-i")["attrs"].get("TnaVerdict") == '"broken"')
    assert row() == "", "the constraint no longer matches"
