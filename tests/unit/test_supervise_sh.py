"""drone_scripts/lib/supervise.sh and tunnel.sh's ssh classification, run for real.

The rendered drone script is sourced (main does not run) and its functions
called with a real bash. The supervised "connections" are fake ssh scripts
that print what ssh prints and exit as ssh exits; first hops are probed on
127.0.0.1 ports opened or closed here. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tardis_netadapter import render
from tardis_netadapter.config import load_profile
from tardis_netadapter.keepalive import derive_budget

LOGIN = "10.66.1.1"
PROFILE = {
    "tunnel": {"hops": [{"host": LOGIN, "user": "drone"}]},
    "pool": {"collector": "10.66.2.1:9618"},
}


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    profile = load_profile(json.loads(json.dumps(PROFILE)))
    text = render.render_drone_script(
        profile,
        derive_budget(profile),
        site_name="S",
        machine_type="cpu",
        job_id_variable="SLURM_JOB_ID",
    )
    path = tmp_path_factory.mktemp("drone") / "drone.sh"
    path.write_text(text)
    return path


def run(script: Path, body: str, tmp_path: Path, timeout: float = 60, **env: str):
    """Source the rendered script in a real bash and run ``body``."""
    return subprocess.run(
        ["bash", "-c", f'source "$1"\n{body}', "test", str(script)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        timeout=timeout,
        check=False,
    )


def test_rendered_settings_name_the_targets_and_the_timings(script: Path) -> None:
    text = script.read_text()
    assert "TUNNEL_TARGETS=(tardis-hop-1)\n" in text
    assert f"TUNNEL_FIRST_HOPS=({LOGIN}:22)\n" in text
    assert "TUNNEL_SUPERVISOR=builtin\n" in text
    assert "SUPERVISE_SPREAD_MS=1000\n" in text
    assert "SUPERVISE_BACKOFF_CAP_MS=10000\n" in text
    assert "# >>> lib/supervise.sh\n" in text


def test_loop_is_a_synonym_of_builtin_and_autossh_stays() -> None:
    def rendered(supervisor: str) -> str:
        data = json.loads(json.dumps(PROFILE))
        data["tunnel"]["supervisor"] = supervisor
        profile = load_profile(data)
        return render.render_drone_script(
            profile,
            derive_budget(profile),
            site_name="S",
            machine_type="cpu",
            job_id_variable="SLURM_JOB_ID",
        )

    assert "TUNNEL_SUPERVISOR=builtin\n" in rendered("loop")
    assert "TUNNEL_SUPERVISOR=autossh\n" in rendered("autossh")


# -- back-off and jitter -------------------------------------------------------


def test_backoff_is_capped_exponential_with_full_jitter(script, tmp_path) -> None:
    body = """
SUPERVISE_BACKOFF_BASE_MS=200 SUPERVISE_BACKOFF_CAP_MS=3000
for n in 0 1 2 3 4 5 8 30; do
    for i in $(seq 300); do supervise_backoff d "$n"; printf '%s %s\\n' "$n" "$d"; done
done
"""
    result = run(script, body, tmp_path)
    assert result.returncode == 0, result.stderr
    samples: dict[int, list[int]] = {}
    for line in result.stdout.split("\n"):
        if line:
            n, value = map(int, line.split())
            samples.setdefault(n, []).append(value)
    for n, values in samples.items():
        limit = min(3000, 200 * 2**n)
        assert all(0 <= v <= limit for v in values), (n, max(values))
        # full jitter: the whole range is used, not one fixed delay
        assert max(values) > 0.8 * limit and min(values) < 0.2 * limit, (n, limit)
        assert len(set(values)) > 30
    assert max(samples[30]) <= 3000  # capped, no overflow at large n


def test_random_differs_between_supervisors(script, tmp_path) -> None:
    """Drones started together must not draw the same spread."""
    body = "supervise_random a 100000; printf '%s\\n' \"$a\""
    values = {run(script, body, tmp_path).stdout for _ in range(5)}
    assert len(values) >= 4


# -- classification --------------------------------------------------------------

MISMATCH = (
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
    "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
    "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\n"
    "Offending ED25519 key in /home/drone/.ssh/known_hosts:1\r\n"
    f"Host key for {LOGIN} has changed and you have requested strict checking.\r\n"
    "Host key verification failed.\r\n"
)
CASES = [
    (MISMATCH, 255, 0, "host key mismatch", "Host key for 10.66.1.1 has changed"),
    (
        f"No ED25519 host key is known for {LOGIN} and you have requested strict "
        "checking.\r\nHost key verification failed.\r\n",
        255,
        0,
        "host key unknown",
        "Host key verification failed.",
    ),
    (
        f"drone@{LOGIN}: Permission denied (publickey).\r\n",
        255,
        0,
        "key refused",
        "Permission denied (publickey)",
    ),
    (
        f"ssh: connect to host {LOGIN} port 22: Connection refused\r\n",
        255,
        0,
        "connection refused",
        "Connection refused",
    ),
    (
        f"ssh: connect to host {LOGIN} port 22: Connection timed out\r\n",
        255,
        0,
        "timeout",
        "timed out",
    ),
    (
        f"Timeout, server {LOGIN} not responding.\r\n",
        255,
        1,
        "timeout",
        "not responding",
    ),
    (
        "kex_exchange_identification: Connection closed by remote host\r\n"
        f"Connection closed by {LOGIN} port 22\r\n",
        255,
        0,
        "dropped at MaxStartups",
        f"Connection closed by {LOGIN} port 22",
    ),
    (
        "kex_exchange_identification: read: Connection reset by peer\r\n"
        f"Connection reset by {LOGIN} port 22\r\n",
        255,
        0,
        "dropped at MaxStartups",
        "Connection reset",
    ),
    (
        "bind [127.0.0.1]:20000: Address already in use\r\n"
        "channel_setup_fwd_listener_tcpip: cannot listen to port: 20000\r\n"
        "Could not request local forwarding.\r\n",
        255,
        0,
        "forwarding refused",
        "Could not request local forwarding.",
    ),
    (
        f"ssh: connect to host {LOGIN} port 22: No route to host\r\n",
        255,
        0,
        "no route",
        "No route to host",
    ),
    (
        "ssh: Could not resolve hostname login.example: Name or service not known\r\n",
        255,
        0,
        "name unknown",
        "Could not resolve hostname",
    ),
    (
        f"Connection to {LOGIN} closed by remote host.\r\n",
        255,
        1,
        "exited",
        "closed by remote host",
    ),
    ("", 1, 1, "exited", "exit status 1"),
]


@pytest.mark.parametrize(
    "stderr,status,was_up,cls,detail",
    CASES,
    ids=[c[3] + f"-{i}" for i, c in enumerate(CASES)],
)
def test_ssh_failures_are_classified(
    script, tmp_path, stderr, status, was_up, cls, detail
) -> None:
    (tmp_path / "err").write_text(stderr)
    result = run(script, f'tunnel_classify {status} "$HOME/err" {was_up}', tmp_path)
    assert result.returncode == 0, result.stderr
    got_class, got_detail = result.stdout.rstrip("\n").split("\t")
    assert got_class == cls
    assert detail in got_detail and "\r" not in got_detail


def known_hosts_line(tmp_path: Path, host: str) -> str:
    key = tmp_path / "hostkey"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
    )
    return (
        f"{host} {key.with_suffix('.pub').read_text().split(' ')[0]} "
        + (key.with_suffix(".pub").read_text().split(" ")[1])
    )


def test_bare_verification_failure_is_a_mismatch_only_with_a_key_on_file(
    script, tmp_path
) -> None:
    """ "Host key verification failed" alone: a key on file for the first hop
    differs (mismatch); none on file: unknown."""
    (tmp_path / "err").write_text("Host key verification failed.\r\n")
    (tmp_path / ".ssh").mkdir()
    body = 'tunnel_classify 255 "$HOME/err" 0'
    assert run(script, body, tmp_path).stdout.startswith("host key unknown\t")
    (tmp_path / ".ssh" / "known_hosts").write_text(
        known_hosts_line(tmp_path, LOGIN) + "\n"
    )
    assert run(script, body, tmp_path).stdout.startswith("host key mismatch\t")


# -- the loop -----------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A bound, not yet listening socket on 127.0.0.1 (call .listen() to open it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                sock.accept()[0].close()
            except OSError:
                time.sleep(0.02)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock
    stop.set()
    thread.join()
    sock.close()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# a fake connection command: per target, what the file $DIR/TARGET says:
# "refused" -> ssh's refused message, exit 255; "key" -> refused key;
# "dropped" -> sshd's MaxStartups drop; "up" -> mark $DIR/up.TARGET and stay until killed
LOOP = r"""
fake_command() { printf '%s\0' fake_ssh "$1"; }
fake_ssh() {
    local mode
    mode=$(cat "$DIR/$1")
    printf '%s %s %s\n' "$(now_us)" "$1" "$mode" >>"$DIR/starts"
    case $mode in
    refused) echo "ssh: connect to host $1 port 22: Connection refused" >&2; exit 255 ;;
    key) echo "drone@$1: Permission denied (publickey)." >&2; exit 255 ;;
    dropped)
        echo "kex_exchange_identification: Connection closed by remote host" >&2
        echo "Connection closed by 127.0.0.1 port 22" >&2
        exit 255
        ;;
    up) : >"$DIR/up.$1"; rm -f "$DIR/down"; exec sleep 60 ;;
    esac
}
fake_up() { compgen -G "$DIR/up.*" >/dev/null; }
DRONE_DIR=$DIR
SUPERVISE_RESTARTS_FILE=$DIR/tunnel.restarts
SUPERVISE_ERROR_FILE=$DIR/tunnel.error
SUPERVISE_LABEL=test
"""


def start_loop(script: Path, tmp_path: Path, settings: str) -> subprocess.Popen:
    body = (
        LOOP
        + settings
        + (
            "\nsupervise_run fake_command fake_up tunnel_classify &\n"
            'echo $! >"$DIR/pid"\nwait\n'
        )
    )
    return subprocess.Popen(
        ["bash", "-c", f'source "$1"\n{body}', "test", str(script)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "log", "w"),
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DIR": str(tmp_path)},
        start_new_session=True,
    )


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def stop_loop(proc: subprocess.Popen, tmp_path: Path) -> None:
    pid = int((tmp_path / "pid").read_text())
    os.kill(pid, signal.SIGTERM)  # the supervisor ends its command, then itself
    try:
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def starts(tmp_path: Path) -> list[tuple[float, str, str]]:
    path = tmp_path / "starts"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(int(us) / 1e6, target, mode) for us, target, mode in rows]


def test_connection_failure_moves_to_the_next_target(script, tmp_path, listener):
    listener.listen(16)
    (tmp_path / "a").write_text("refused")
    (tmp_path / "b").write_text("up")
    proc = start_loop(
        script,
        tmp_path,
        f"SUPERVISE_TARGETS=(a b)\nSUPERVISE_PROBES=(127.0.0.1:{closed_port()} "
        f"127.0.0.1:{listener.getsockname()[1]})",
    )
    try:
        assert wait_for(lambda: (tmp_path / "up.b").exists(), 10), (
            tmp_path / "log"
        ).read_text()
        rows = starts(tmp_path)
        assert [(t, m) for _, t, m in rows] == [("a", "refused"), ("b", "up")]
        assert rows[1][0] - rows[0][0] < 1.0  # at once, no back-off, no probing
        restarts = (tmp_path / "tunnel.restarts").read_text().splitlines()
        assert len(restarts) == 1 and restarts[0].endswith(" 255 connection refused")
        assert wait_for(lambda: not (tmp_path / "tunnel.error").exists(), 2)
    finally:
        stop_loop(proc, tmp_path)
    assert "test: ssh: connect to host a" not in (tmp_path / "log").read_text()
    assert (
        "ssh: connect to host a port 22: Connection refused"
        in (tmp_path / "log").read_text()
    )  # ssh's stderr stays in the drone log


def test_all_down_probes_first_hops_and_reconnects_soon_after_one_answers(
    script, tmp_path, listener
):
    (tmp_path / "a").write_text("refused")
    (tmp_path / "b").write_text("refused")
    proc = start_loop(
        script,
        tmp_path,
        f"SUPERVISE_TARGETS=(a b)\nSUPERVISE_PROBES=(127.0.0.1:{closed_port()} "
        f"127.0.0.1:{listener.getsockname()[1]})",
    )
    try:
        time.sleep(2.5)  # both refused, then probing: no ssh starts meanwhile
        rows = starts(tmp_path)
        assert [t for _, t, _ in rows] == ["a", "b"], rows
        error = (tmp_path / "tunnel.error").read_text().rstrip("\n").split("\t")
        assert error[1] == "connection refused" and "Connection refused" in error[2]
        (tmp_path / "b").write_text("up")
        back = time.time()
        listener.listen(16)  # b's first hop answers again
        assert wait_for(lambda: (tmp_path / "up.b").exists(), 5)
        rows = starts(tmp_path)
        assert rows[-1][1] == "b" and len(rows) == 3
        # probe interval (<= 0.6 s) + spread (<= 1 s) + slack for a busy machine
        assert rows[-1][0] - back < 2.2, rows[-1][0] - back
    finally:
        stop_loop(proc, tmp_path)


def test_refused_key_backs_off_and_is_reported(script, tmp_path):
    (tmp_path / "a").write_text("key")
    proc = start_loop(
        script,
        tmp_path,
        "SUPERVISE_TARGETS=(a)\nSUPERVISE_PROBES=('')\n"
        "SUPERVISE_BACKOFF_BASE_MS=100 SUPERVISE_BACKOFF_CAP_MS=400",
    )
    try:
        time.sleep(4)
        rows = starts(tmp_path)
        gaps = [b[0] - a[0] for a, b in zip(rows, rows[1:])]
        assert len(rows) >= 8, rows  # retried, at most 0.4 s apart (+ overhead)
        assert max(gaps) < 0.4 + 0.5, gaps
        error = (tmp_path / "tunnel.error").read_text().rstrip("\n").split("\t")
        assert error[1] == "key refused" and int(error[0]) <= time.time()
        lines = (tmp_path / "tunnel.restarts").read_text().splitlines()
        assert len(lines) in (len(rows) - 1, len(rows))  # one per start after the first
        assert all(re.fullmatch(r"\d{16} 255 key refused", line) for line in lines)
    finally:
        stop_loop(proc, tmp_path)


def test_sigusr1_forces_a_reconnect_at_once(script, tmp_path):
    (tmp_path / "a").write_text("up")
    proc = start_loop(script, tmp_path, "SUPERVISE_TARGETS=(a)\nSUPERVISE_PROBES=('')")
    try:
        assert wait_for(lambda: (tmp_path / "up.a").exists(), 5)
        assert wait_for(lambda: (tmp_path / "pid").exists(), 5)
        pid = int((tmp_path / "pid").read_text())
        time.sleep(0.3)
        (tmp_path / "up.a").unlink()
        forced = time.time()
        os.kill(pid, signal.SIGUSR1)
        assert wait_for(lambda: (tmp_path / "up.a").exists(), 3)
        rows = starts(tmp_path)
        assert len(rows) == 2 and rows[1][0] - forced < 0.6
        restarts = (tmp_path / "tunnel.restarts").read_text().splitlines()
        assert len(restarts) == 1 and restarts[0].endswith(" forced")
        assert not (tmp_path / "tunnel.error").exists()  # forced is no failure
        # the old command is gone: only one sleep 60 is left under the supervisor
        out = subprocess.run(
            ["pgrep", "-f", "-P", str(pid), "sleep 60"], capture_output=True, text=True
        )
        assert len(out.stdout.split()) <= 1
    finally:
        stop_loop(proc, tmp_path)


def test_dropped_at_maxstartups_moves_on_with_backoff(script, tmp_path, listener):
    """sshd answers but sheds us (MaxStartups): the next target, after a
    jittered back-off (not at once: the hop is busy, not down)."""
    listener.listen(16)
    hop = f"127.0.0.1:{listener.getsockname()[1]}"
    (tmp_path / "a").write_text("dropped")
    (tmp_path / "b").write_text("up")
    settings = (
        f"SUPERVISE_TARGETS=(a b)\nSUPERVISE_PROBES=({hop} {hop})\n"
        "SUPERVISE_BACKOFF_BASE_MS=400 SUPERVISE_BACKOFF_CAP_MS=400\n"
    )
    proc = start_loop(script, tmp_path, settings)
    try:
        assert wait_for(lambda: (tmp_path / "up.b").exists(), 10), (
            tmp_path / "log"
        ).read_text()
        rows = starts(tmp_path)
        assert [(t, m) for _, t, m in rows] == [("a", "dropped"), ("b", "up")]
        assert rows[1][0] - rows[0][0] < 0.4 + 0.5
        restarts = (tmp_path / "tunnel.restarts").read_text()
        assert restarts.endswith(" 255 dropped at MaxStartups\n")
        assert "starting again through b in " in (tmp_path / "log").read_text()
    finally:
        stop_loop(proc, tmp_path)
