"""drone_scripts/lib/watchdog.sh run for real: records, escaping, atomicity, healing.

Probes go only to listeners on 127.0.0.1 created here; the "chain" is a fake
prefix that logs its use and execs the probe.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tardis_netadapter import modes
from tardis_netadapter.connectivity.heartbeat import parse_record
from tardis_netadapter.connectivity.startd_cron import startd_cron_knobs
from tardis_netadapter.connectivity.verdict import JobView, Timing, Verdict, judge
from tardis_netadapter.modes.stages import watched_stages

WATCHDOG = Path(__file__).resolve().parents[2] / "drone_scripts" / "lib" / "watchdog.sh"
UUID = "netlab-0123456789"


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts (and closes) connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:  # a full backlog would make later probes time out
        while not stop.is_set():
            try:
                sock.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    sock.close()


@pytest.fixture
def closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    chain = tmp_path / "fakechain"
    chain.write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/chain.log"\nexec "$@"\n')
    chain.chmod(0o755)
    return {
        "tmp": tmp_path,
        "hb": tmp_path / "home" / "hb",
        "run": tmp_path / "run",
        "chain": chain,
        "log": tmp_path / "chain.log",
    }


def bash(site: dict[str, Path], body: str, endpoints: str = "", **variables: str):
    """Source watchdog.sh under set -euo pipefail with the usual inputs, run body."""
    settings = {
        "TNA_DRONE_UUID": UUID,
        "TNA_HEARTBEAT_DIR": "~/hb",
        "TNA_RUN_DIR": str(site["run"]),
        "TNA_POOL_ENDPOINTS": endpoints,
        "TNA_PROBE_TIMEOUT": "3",
        "TNA_JOB_ID": "4711",
        "TNA_CONDOR_PING": "off",
        **variables,
    }
    script = "set -euo pipefail\n"
    script += f"source {shlex.quote(str(WATCHDOG))}\n"
    script += "".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items())
    script += f"TNA_CHAIN_PREFIX=({shlex.quote(str(site['chain']))})\n"
    # the stage list as the drone script renders it for mode socks
    script += f"TNA_STAGES=({' '.join(watched_stages(modes.get('socks')))})\n"
    script += body
    home = site["tmp"] / "home"
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "HOSTNAME": "wn01"}
    return subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def read_record(site: dict[str, Path]) -> dict:
    text = (site["hb"] / f"{UUID}.json").read_bytes()
    assert text.endswith(b"\n") and text.count(b"\n") == 1
    text.decode("ascii")  # ASCII only, so no executor can fail decoding it
    return json.loads(text)


def test_round_writes_a_record_python_parses(site, listener, closed_port):
    result = bash(
        site,
        "tna_stage cvmfs ok\ntna_stage isolation ok\ntna_stage tunnel ok\n"
        "tna_stage chain ok\ntna_watchdog_once\n",
        endpoints=f"127.0.0.1:{listener} 127.0.0.1:{closed_port}",
    )
    assert result.returncode == 0, result.stderr
    data = read_record(site)
    assert data["uuid"] == UUID and data["seq"] == 1 and data["job"] == "4711"
    assert data["host"] == "wn01"
    assert data["stages"] == {
        "cvmfs": "ok",
        "isolation": "ok",
        "tunnel": "ok",
        "chain": "ok",
        "payload": "unknown",
    }
    good, bad = data["probes"]
    assert good["ok"] is True and good["latency_ms"] >= 0 and good["error"] is None
    assert bad["ok"] is False and "refused" in bad["error"].lower()
    assert data["failing_stage"] == "pool"  # one endpoint of two unreachable
    assert data["last_ok"] is None and data["failing_since"] == data["time"]
    assert (
        site["log"].read_text().count("/dev/tcp/") == 2
    )  # both went through the chain
    record = parse_record(json.dumps(data))
    assert record is not None and record.latency_ms == good["latency_ms"]


def test_healthy_drone_is_connected_for_the_adapter(site, listener):
    result = bash(
        site,
        "tna_watchdog_once\ntna_watchdog_once\n",
        endpoints=f"127.0.0.1:{listener}",
    )
    assert result.returncode == 0, result.stderr
    data = read_record(site)
    assert data["seq"] == 2 and data["failing_stage"] is None
    assert data["last_ok"] == data["time"] and data["failing_since"] is None
    record = parse_record(json.dumps(data))
    timing = Timing(30, 90, 300)
    judgement = judge(JobView(True, record.time - 10), record, record.time + 1, timing)
    assert judgement.verdict is Verdict.CONNECTED


def test_all_probes_failing_blames_the_chain(site, closed_port):
    bash(site, "tna_watchdog_once\n", endpoints=f"127.0.0.1:{closed_port}")
    data = read_record(site)
    assert data["failing_stage"] == "chain"
    assert data["last_error"]


def test_stage_not_up_is_blamed_before_the_chain(site, closed_port):
    bash(
        site,
        "tna_stage cvmfs ok\ntna_stage tunnel starting 'waiting for ssh'\n"
        "tna_watchdog_once\n",
        endpoints=f"127.0.0.1:{closed_port}",
    )
    data = read_record(site)
    assert data["failing_stage"] == "tunnel"
    assert data["last_error"] == "waiting for ssh"


HOSTILE = [
    'quote " and backslash \\ and \\" both',
    "newline\nand\r\ncarriage\ttab",
    "$(touch /tmp/pwned-by-watchdog) `id` ${HOME}",
    "ünïcödé ✓ 中文",
    "\x01\x02\x1b[31mansi\x7f",
    '}]},{"uuid":"evil","time":1}',
    "x" * 2000,
]


@pytest.mark.parametrize("detail", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_error_strings_stay_valid_json(site, detail):
    result = bash(
        site,
        'tna_stage tunnel failed "$DETAIL"\ntna_watchdog_once\n',
        endpoints="127.0.0.1:1",
        DETAIL=detail,
    )
    assert result.returncode == 0, result.stderr
    data = read_record(site)
    assert data["uuid"] == UUID and data["failing_stage"] == "tunnel"
    stored = data["last_error"]
    if detail.isascii() and detail.isprintable():
        assert stored == detail[:300]
    # stage files are one line: the detail ends at the first newline at the latest
    assert detail.encode().decode("latin-1").startswith(stored.split("\n")[0][:50])
    assert not Path("/tmp/pwned-by-watchdog").exists()
    ad = (site["run"] / "tna.ad").read_text("ascii")
    classad2 = pytest.importorskip("classad2")
    parsed = classad2.parseOne(ad)
    assert parsed["TnaFailingStage"] == "tunnel"
    assert parsed["TnaVerdict"] == "connecting"


def test_json_escape_of_random_bytes(site):
    """Every byte string becomes a JSON string decoding to its Latin-1 reading."""
    rng = random.Random(5)
    samples = [
        bytes(rng.randrange(1, 256) for _ in range(rng.randrange(0, 80)))
        for _ in range(60)
    ]
    samples += [b'"', b"\\", b"\\u0041", b"\xff", b"a\x00b".replace(b"\x00", b"")]
    script = (
        f"source {shlex.quote(str(WATCHDOG))}\n"
        'for s in "$@"; do tna_json_escape out "$s"; printf "%s\\n" "$out"; done\n'
    )
    result = subprocess.run(
        [b"bash", b"-c", script.encode(), b"bash", *samples],
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"},
    )
    lines = result.stdout.split(b"\n")[:-1]
    assert len(lines) == len(samples)
    for sample, line in zip(samples, lines):
        line.decode("ascii")
        assert json.loads(line) == sample.decode("latin-1")[:300]


def test_atomic_replacement_never_shows_a_partial_record(site, listener):
    """A reader polling the file while 150 rounds replace it sees only whole records."""
    path = site["hb"] / f"{UUID}.json"
    seen, bad, stop = [], [], threading.Event()

    def reader() -> None:
        while not stop.wait(0.0005):
            try:
                text = path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                seen.append(json.loads(text)["seq"])
            except ValueError:
                bad.append(text)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = bash(
            site,
            "for i in $(seq 150); do tna_watchdog_once; done\n",
            endpoints=f"127.0.0.1:{listener}",
            TNA_PROBE_TIMEOUT="2",
        )
    finally:
        stop.set()
        thread.join()
    assert result.returncode == 0, result.stderr
    assert not bad, bad[:1]
    assert len(seen) > 10 and seen == sorted(seen) and max(seen) == 150
    assert sorted(p.name for p in site["hb"].iterdir()) == [f"{UUID}.json"]


def test_dead_tunnel_is_restarted_and_counted(site, listener):
    pidfile = site["tmp"] / "tunnel.pid"
    body = f"""
pidfile={shlex.quote(str(pidfile))}
echo 999999 > "$pidfile"
restart_tunnel() {{ sleep 30 & echo $! > "$pidfile"; }}
TNA_TUNNEL_PIDFILE=$pidfile
TNA_TUNNEL_RESTART=restart_tunnel
tna_stage tunnel ok
tna_watchdog_once
cp "$HOME/hb/{UUID}.json" "$HOME/first.json"
tna_watchdog_once
kill "$(cat "$pidfile")"
"""
    result = bash(site, body, endpoints=f"127.0.0.1:{listener}")
    assert result.returncode == 0, result.stderr
    first = json.loads((site["tmp"] / "home" / "first.json").read_text())
    assert first["restarts"] == 1 and first["stages"]["tunnel"] == "restarting"
    assert first["failing_stage"] == "tunnel"
    assert "999999" in first["last_error"]
    second = read_record(site)
    assert second["restarts"] == 1 and second["stages"]["tunnel"] == "ok"
    assert second["failing_stage"] is None and second["last_error"] is None
    assert b"restart 1" in result.stderr


def test_restarts_by_the_tunnel_supervisor_are_counted(site, listener):
    """autossh or the supervisor loop heal a killed ssh before the watchdog looks;
    their restarts still show in the heartbeat and the startd ad."""
    restarts = site["tmp"] / "tunnel.restarts"
    restarts.write_text("1795000000000000 255\n1795000001000000 255\n")
    result = bash(
        site,
        "tna_stage tunnel ok\ntna_watchdog_once\n",
        endpoints=f"127.0.0.1:{listener}",
        TNA_TUNNEL_RESTARTS_FILE=str(restarts),
    )
    assert result.returncode == 0, result.stderr
    assert read_record(site)["restarts"] == 2
    assert "TnaRestarts = 2" in (site["run"] / "tna.ad").read_text()


def test_supervisor_failure_class_reaches_the_record_and_the_parser(site, closed_port):
    """tunnel.error (lib/supervise.sh) becomes "path_error"; gone, it is null."""
    error = site["tmp"] / "tunnel.error"
    error.write_text(
        "1795000000\thost key mismatch\tHost key for 10.66.1.1 has changed"
        ' and "you" have requested strict checking.\n'
    )
    body = (
        "tna_stage tunnel failed 'SOCKS port not up'\ntna_watchdog_once\n"
        f'cp "$HOME/hb/{UUID}.json" "$HOME/first.json"\n'
        f"rm {shlex.quote(str(error))}\ntna_watchdog_once\n"
    )
    result = bash(
        site,
        body,
        endpoints=f"127.0.0.1:{closed_port}",
        TNA_TUNNEL_ERROR_FILE=str(error),
    )
    assert result.returncode == 0, result.stderr
    first = json.loads((site["tmp"] / "home" / "first.json").read_text())
    assert first["path_error"] == {
        "class": "host key mismatch",
        "detail": 'Host key for 10.66.1.1 has changed and "you" have requested '
        "strict checking.",
        "since": 1795000000,
    }
    record = parse_record(json.dumps(first))
    assert record is not None and record.path_error is not None
    assert record.path_error.cls == "host key mismatch"
    assert record.path_error.since == 1795000000
    assert read_record(site)["path_error"] is None
    assert parse_record(json.dumps(read_record(site))).path_error is None


FAKE_SUPERVISOR = """
supervisor() {
    trap 'echo usr1 >> "$HOME/signals"' USR1
    while :; do sleep 0.05; done
}
supervisor &
TNA_TUNNEL_PID=$!
sleep 0.2
"""


def test_probes_failing_through_a_living_supervisor_force_a_reconnect(
    site, closed_port
):
    """Every probe failing for TNA_FORCE_AFTER seconds (two rounds at least)
    while the supervisor lives and reports nothing: SIGUSR1, then a new count;
    the supervisor's own restart line counts the reconnect."""
    body = FAKE_SUPERVISOR + (
        "tna_stage tunnel ok\n"
        "tna_watchdog_once\nsleep 1.1\n"
        "[[ ! -e $HOME/signals ]] || exit 7  # not after one round\n"
        "tna_watchdog_once\nsleep 0.3\n"
        "tna_watchdog_once\nsleep 0.3\n"  # failing again, but not for 1 s yet
        'kill "$TNA_TUNNEL_PID"\n'
    )
    result = bash(
        site,
        body,
        endpoints=f"127.0.0.1:{closed_port}",
        TNA_TUNNEL_FORCE_SIGNAL="USR1",
        TNA_FORCE_AFTER="1",
        TNA_TUNNEL_ERROR_FILE=str(site["tmp"] / "tunnel.error"),
    )
    assert result.returncode == 0, result.stderr
    assert (site["tmp"] / "home" / "signals").read_text() == "usr1\n"
    assert b"forcing a reconnect" in result.stderr
    assert read_record(site)["restarts"] == 0  # the supervisor counts its restarts


@pytest.mark.parametrize(
    "case", ["probes-ok", "supervisor-knows", "no-signal", "too-soon"]
)
def test_no_forced_reconnect_when_it_cannot_help(site, listener, closed_port, case):
    """Probes that answer, a supervisor already reconnecting (tunnel.error), no
    signal configured, or failing for less than TNA_FORCE_AFTER: nothing is sent."""
    error = site["tmp"] / "tunnel.error"
    if case == "supervisor-knows":
        error.write_text("1795000000\tconnection refused\tssh: Connection refused\n")
    port = listener if case == "probes-ok" else closed_port
    body = FAKE_SUPERVISOR + (
        "tna_stage tunnel ok\n"
        + "tna_watchdog_once\n" * 4
        + 'sleep 0.3\nkill "$TNA_TUNNEL_PID"\n'
    )
    result = bash(
        site,
        body,
        endpoints=f"127.0.0.1:{port}",
        TNA_TUNNEL_FORCE_SIGNAL="" if case == "no-signal" else "USR1",
        TNA_FORCE_AFTER="100" if case == "too-soon" else "0",
        TNA_TUNNEL_ERROR_FILE=str(error),
    )
    assert result.returncode == 0, result.stderr
    assert not (site["tmp"] / "home" / "signals").exists()


def test_rounds_come_faster_while_the_path_fails(site, closed_port):
    """TNA_FAILING_INTERVAL: a healed path shows in the next record sooner."""
    started = time.monotonic()
    result = bash(
        site,
        "tna_stage tunnel ok\ntna_watchdog_loop\n",
        endpoints=f"127.0.0.1:{closed_port}",
        TNA_HEARTBEAT_INTERVAL="30",
        TNA_FAILING_INTERVAL="1",
        TNA_WATCHDOG_ROUNDS="3",
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10  # not 2 x 30 s
    assert read_record(site)["seq"] == 3 and read_record(site)["interval"] == 30


def test_dead_tunnel_without_restart_function_fails(site, listener):
    result = bash(
        site,
        "tna_watchdog_once\n",
        endpoints=f"127.0.0.1:{listener}",
        TNA_TUNNEL_PID="999999",
    )
    assert result.returncode == 0
    data = read_record(site)
    assert data["stages"]["tunnel"] == "failed" and data["failing_stage"] == "tunnel"


def test_loop_runs_rounds_and_stops_with_its_parent(site, listener):
    start = time.monotonic()
    result = bash(
        site,
        "tna_watchdog_loop\n",
        endpoints=f"127.0.0.1:{listener}",
        TNA_HEARTBEAT_INTERVAL="1",
        TNA_WATCHDOG_ROUNDS="2",
    )
    assert result.returncode == 0, result.stderr
    assert read_record(site)["seq"] == 2
    assert time.monotonic() - start < 10
    (site["hb"] / f"{UUID}.json").unlink()
    result = bash(site, "tna_watchdog_loop\n", TNA_PARENT_PID="999999")
    assert result.returncode == 0
    assert not (site["hb"] / f"{UUID}.json").exists()


def test_background_start_and_kill(site, listener):
    body = (
        "tna_watchdog_start\n"
        f"for i in $(seq 50); do [[ -s $HOME/hb/{UUID}.json ]] && break; sleep 0.1; done\n"
        'kill "$TNA_WATCHDOG_PID"\nwait "$TNA_WATCHDOG_PID" || true\n'
    )
    result = bash(
        site, body, endpoints=f"127.0.0.1:{listener}", TNA_HEARTBEAT_INTERVAL="1"
    )
    assert result.returncode == 0, result.stderr
    assert read_record(site)["seq"] >= 1


def test_missing_required_inputs_do_not_kill_the_drone(site):
    result = bash(site, "tna_watchdog_loop\necho survived\n", TNA_DRONE_UUID="")
    assert result.returncode == 0 and b"survived" in result.stdout
    assert b"required" in result.stderr


def test_ssh_transport_sends_the_record_through_the_login_node(site, listener):
    """No shared filesystem: the record goes through ``ssh login 'cat > tmp && mv'``.
    The fake ssh runs the remote command in a local sh with HOME of the 'login node'."""
    login_home = site["tmp"] / "login home"
    login_home.mkdir()
    fakessh = site["tmp"] / "fakessh"
    fakessh.write_text(
        "#!/bin/bash\n"
        f"for last; do :; done\nexport HOME={shlex.quote(str(login_home))}\n"
        'exec sh -c "$last"\n'
    )
    fakessh.chmod(0o755)
    body = f"TNA_HEARTBEAT_SSH=({shlex.quote(str(fakessh))} -o BatchMode=yes login)\n"
    body += "tna_watchdog_once\n"
    result = bash(
        site,
        body,
        endpoints=f"127.0.0.1:{listener}",
        TNA_HEARTBEAT_TRANSPORT="ssh",
        TNA_HEARTBEAT_DIR="~/heart beats; $(touch pwned)",
    )
    assert result.returncode == 0, result.stderr
    target = login_home / "heart beats; $(touch pwned)" / f"{UUID}.json"
    data = json.loads(target.read_text())
    assert data["uuid"] == UUID and data["failing_stage"] is None
    assert not any(p.name == "pwned" for p in site["tmp"].rglob("pwned"))
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_startd_cron_env_matches_python_knobs(site):
    result = bash(
        site,
        "tna_startd_cron_env\nenv | grep '^_CONDOR_STARTD_CRON' | sort\n",
        TNA_HEARTBEAT_INTERVAL="20",
    )
    exported = dict(
        line.split("=", 1) for line in result.stdout.decode().splitlines() if line
    )
    knobs = startd_cron_knobs(str(site["run"] / "tna.ad"), 20)
    assert exported == {f"_CONDOR_{k}": v for k, v in knobs.items()}


def test_shellcheck_is_clean():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("shellcheck is required under CI=true")
        pytest.skip("shellcheck not installed")
    result = subprocess.run(
        ["shellcheck", "--shell=bash", str(WATCHDOG)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


# -- issue 12: the record's isolation object and the outer link's state ---------

NS_CASES = {
    # ns/isolation, ns/leaks (None: no file) -> the record's "isolation"
    "namespace": (
        "namespace\tpasta\t\n",
        "3 4\n",
        {"method": "namespace", "tool": "pasta", "reason": None, "leaks_blocked": 7},
    ),
    "namespace-no-leaks-yet": (
        "namespace\tslirp4netns\t\n",
        None,
        {
            "method": "namespace",
            "tool": "slirp4netns",
            "reason": None,
            "leaks_blocked": None,
        },
    ),
    "namespace-garbled-leaks": (
        "namespace\tpasta\t\n",
        "3 x\n",
        {"method": "namespace", "tool": "pasta", "reason": None, "leaks_blocked": None},
    ),
    # preload cannot count leaks: a stale ns/leaks is not reported
    "preload": (
        "preload\tproxychains\t\n",
        "5 5\n",
        {
            "method": "preload",
            "tool": "proxychains",
            "reason": None,
            "leaks_blocked": None,
        },
    ),
    "fallback": (
        'preload\tproxychains\tunshare: "write" failed: No space left on device\n',
        None,
        {
            "method": "preload",
            "tool": "proxychains",
            "reason": 'unshare: "write" failed: No space left on device',
            "leaks_blocked": None,
        },
    ),
    "no-file": (None, "1 1\n", None),
    "not-three-fields": ("namespace pasta\n", "1 1\n", None),
}


@pytest.mark.parametrize("case", NS_CASES, ids=list(NS_CASES))
def test_isolation_object_from_ns_files(site, listener, case):
    line, leaks, expected = NS_CASES[case]
    ns = site["tmp"] / "ns"
    ns.mkdir()
    if line is not None:
        (ns / "isolation").write_text(line)
    if leaks is not None:
        (ns / "leaks").write_text(leaks)
    result = bash(
        site,
        "tna_watchdog_once\n",
        endpoints=f"127.0.0.1:{listener}",
        TNA_ISOLATION_FILE=str(ns / "isolation"),
        TNA_LEAKS_FILE=str(ns / "leaks"),
    )
    assert result.returncode == 0, result.stderr
    data = read_record(site)
    assert data["isolation"] == expected
    # the adapter's parser reads back what the watchdog wrote
    parsed = parse_record(json.dumps(data))
    if expected is None:
        assert parsed.isolation is None
    else:
        assert parsed.isolation is not None
        assert parsed.isolation.method == expected["method"]
        assert parsed.isolation.leaks_blocked == expected["leaks_blocked"]
        assert parsed.isolation.fallback == (case == "fallback")


def test_isolation_is_null_without_the_setting(site, listener):
    """A preload-era script (no TNA_ISOLATION_FILE) still writes a valid record."""
    result = bash(site, "tna_watchdog_once\n", endpoints=f"127.0.0.1:{listener}")
    assert result.returncode == 0, result.stderr
    assert read_record(site)["isolation"] is None


@pytest.mark.parametrize(
    "state, blamed",
    [("down exited\n", "isolation"), ("up\n", None), (None, None)],
    ids=["down", "up", "no-file"],
)
def test_outer_link_down_blames_stage_isolation(site, listener, state, blamed):
    """The keeper's ns/outer.state says the link is down: isolation, not the chain.

    Every stage reports ok and the probe works (connections made before the
    link went down live on a moment): only the outer state can blame it.
    """
    outer = site["tmp"] / "outer.state"
    if state is not None:
        outer.write_text(state)
    result = bash(
        site,
        "for s in cvmfs isolation tunnel chain; do tna_stage $s ok; done\n"
        "tna_watchdog_once\n",
        endpoints=f"127.0.0.1:{listener}",
        TNA_OUTER_STATE_FILE=str(outer),
    )
    assert result.returncode == 0, result.stderr
    data = read_record(site)
    assert data["failing_stage"] == blamed
    if blamed:
        assert data["stages"]["isolation"] == "restarting"
        assert data["last_error"] == "outer link down: exited"
        verdict = parse_record(json.dumps(data))
        assert verdict.failing_stage == "isolation"
    else:
        assert data["stages"]["isolation"] == "ok"
        assert data["last_error"] is None
