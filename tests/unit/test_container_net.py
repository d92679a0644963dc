"""Mode container-net (issue 15): the profile, and lib/container_net.sh run for
real: a whole drone with a fake apptainer on PATH that records its argv and
runs the command after the image, the reporter in a throwaway network
namespace (root), the watchdog's "container_net" object and check --probe's
site checks against a fake apptainer installation."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hostcheck import unavailable  # noqa: E402
from profiles import problems_of, script_for, setting  # noqa: E402

from tardis_netadapter.config import load_profile  # noqa: E402
from tardis_netadapter.connectivity.heartbeat import from_dict  # noqa: E402
from tardis_netadapter.connectivity.report import COLUMNS  # noqa: E402
from tardis_netadapter.modes import get  # noqa: E402

EXIT_CONTAINER_NET = 45

FAKE_APPTAINER = r"""#!/bin/bash
# a stand-in apptainer: records its argv, refuses like apptainer when the
# network is not allowed, else runs the command after the image with the
# --env-file's variables
printf '%s\0' "$@" >>"$FAKE_LOG"
printf '\n' >>"$FAKE_LOG"
env_file=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [[ ${args[i]} == --env-file ]] && env_file=${args[i+1]}
    if [[ ${args[i]} == "$FAKE_IMAGE" ]]; then
        shift $((i + 1))
        break
    fi
done
if [[ -e ${FAKE_DENY:-/nonexistent} ]]; then
    echo "INFO:    Setting up network" >&2
    echo "FATAL:   container creation failed: network epn-public is not allowed for user $(id -un)" >&2
    exit 255
fi
if [[ -n $env_file && -s $env_file ]]; then
    set -a
    . "$env_file"
    set +a
fi
exec "$@"
"""

#: the container's interface as `ip -4 -o addr show scope global` prints it
FAKE_IP = """#!/bin/sh
echo "5: ib0    inet ${FAKE_ADDRESS:-10.66.9.20}/24 brd 10.66.9.255 scope global ib0"
"""


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts (the pool's collector)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def profile_data(tmp_path: Path, port: int, **section: Any) -> dict[str, Any]:
    return {
        "mode": "container-net",
        "cvmfs": {"mode": "none"},
        "pool": {"collector": f"127.0.0.1:{port}"},
        "monitoring": {"enabled": False},
        "container": {
            "runtime": "apptainer",
            "image": str(tmp_path / "image.sif"),
            "apptainer": str(tmp_path / "opt" / "bin" / "apptainer"),
            "gpu": "amd",
        },
        "container_net": {
            "network": "epn-public",
            "network_args": ["IP=10.66.9.20"],
            "subnet": "10.66.9.0/24",
            "ready_timeout": 3,
            **section,
        },
    }


def fake_site(tmp_path: Path) -> dict[str, str]:
    """The fake apptainer, `ip` and image; the environment the drone runs in."""
    (tmp_path / "opt" / "bin").mkdir(parents=True)
    app = tmp_path / "opt" / "bin" / "apptainer"
    app.write_text(FAKE_APPTAINER)
    app.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").write_text(FAKE_IP)
    (bin_dir / "ip").chmod(0o755)
    (tmp_path / "image.sif").write_text("")
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "TardisDroneUuid": "cnet-0001",
        "FAKE_LOG": str(tmp_path / "apptainer.argv"),
        "FAKE_IMAGE": str(tmp_path / "image.sif"),
        "FAKE_DENY": str(tmp_path / "deny"),
    }


def run_drone(
    script: str, tmp_path: Path, env: dict[str, str]
) -> subprocess.CompletedProcess:
    path = tmp_path / "drone.sh"
    path.write_text(script)
    return subprocess.run(
        ["bash", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def recorded(tmp_path: Path) -> list[list[str]]:
    """The fake apptainer's calls, each its argv."""
    text = (tmp_path / "apptainer.argv").read_text()
    return [call.split("\0") for call in text.split("\0\n")[:-1]]


# -- the profile -------------------------------------------------------------


def test_a_container_net_profile_loads_and_renders(tmp_path: Path) -> None:
    script = script_for(profile_data(tmp_path, 9618))
    assert setting(script, "CNET_NETWORK").strip("'") == "epn-public"
    assert setting(script, "CNET_SUBNET").strip("'") == "10.66.9.0/24"
    assert setting(script, "CNET_READY_TIMEOUT_MS").strip("'") == "3000"
    assert "container_net_stage" in script
    assert "network mode container-net" in script  # tunnel, chain skipped


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ({"network": ""}, "container_net.network", "missing"),
        ({"network": "epn public"}, "container_net.network", "'epn public'"),
        ({"subnet": "10.66.9.1/24"}, "container_net.subnet", "'10.66.9.1/24'"),
        ({"network_args": ["a b"]}, "container_net.network_args[0]", "'a b'"),
        ({"check_target": "nohost"}, "container_net.check_target", "'nohost'"),
        ({"address_echo": "ftp://x"}, "container_net.address_echo", "'ftp://x'"),
        ({"ready_timeout": 0}, "container_net.ready_timeout", "0"),
    ],
)
def test_bad_values_name_key_and_value(
    tmp_path: Path, section: dict[str, Any], key: str, value: str
) -> None:
    problems = problems_of(profile_data(tmp_path, 9618, **section))
    assert any(f"Network.{key}" in p and value in p for p in problems), problems


def test_container_net_needs_a_container(tmp_path: Path) -> None:
    data = profile_data(tmp_path, 9618)
    data["container"] = {"runtime": "none"}
    problems = problems_of(data)
    assert any("container.runtime" in p and "container-net" in p for p in problems)


def test_a_section_of_container_net_in_another_mode_is_refused(tmp_path: Path) -> None:
    data = profile_data(tmp_path, 9618)
    data["mode"] = "direct"
    problems = problems_of(data)
    assert any("container_net" in p and "'container-net'" in p for p in problems)


def test_warnings_name_missing_echo_and_apptainer(tmp_path: Path) -> None:
    data = profile_data(tmp_path, 9618)
    data["container"].pop("apptainer")
    profile = load_profile(json.loads(json.dumps(data)))
    texts = " ".join(what for what, _ in get("container-net").warnings(profile))
    assert "address_echo" in texts and "container.apptainer" in texts


# -- the drone, run --------------------------------------------------------------


def test_drone_probes_then_runs_the_payload_in_the_container_net(
    tmp_path: Path, listener: int
) -> None:
    env = fake_site(tmp_path)
    out = tmp_path / "seen.state"
    data = profile_data(tmp_path, listener)
    # the payload waits for the background reporter's first report and keeps it
    data["payload"] = {
        "command": [
            "/bin/sh",
            "-c",
            'for i in 1 2 3 4 5 6 7 8 9 10; do [ -s "$TARDIS_DRONE_DIR/'
            'container-net.state" ] && break; sleep 0.2; done; '
            f'cp "$TARDIS_DRONE_DIR/container-net.state" {out}',
        ]
    }
    result = run_drone(script_for(data), tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert "stage container-net ready" in result.stderr or (
        "container-net: the container gets 10.66.9.20" in result.stderr
    ), result.stderr
    calls = recorded(tmp_path)
    assert len(calls) == 2  # one probe container, then the payload's
    probe, payload = calls
    for call in calls:
        assert call[0] == "exec"
        assert "--rocm" in call
        i = call.index("--net")
        assert call[i : i + 5] == [
            "--net",
            "--network",
            "epn-public",
            "--network-args",
            "IP=10.66.9.20",
        ]
    image = env["FAKE_IMAGE"]
    assert probe[probe.index(image) + 1 :][:1] == ["/bin/bash"]
    assert probe[-2] == "--once"
    assert probe[-1].endswith("/container-net.state")
    # inside the container, after the container's own marker: the reporter
    # in the background, then the payload
    inside = payload[payload.index(image) + 1 :]
    at = inside.index("/bin/bash")
    assert inside[at - 2].endswith("/stages/container") and inside[at - 1] == "--"
    assert inside[at + 1].endswith("/bin/cnet-report")
    assert inside[at + 2] == "--background" and inside[at + 4] == "--"
    state = out.read_text().rstrip("\n").split("\t")
    assert state[:2] == ["ok", "10.66.9.20"], state


def test_a_user_not_allowed_fails_stage_container_net_before_any_payload(
    tmp_path: Path, listener: int
) -> None:
    env = fake_site(tmp_path)
    (tmp_path / "deny").write_text("")
    result = run_drone(script_for(profile_data(tmp_path, listener)), tmp_path, env)
    assert result.returncode == EXIT_CONTAINER_NET, result.stderr
    assert "stage container-net failed" in result.stderr
    assert "FATAL:" in result.stderr and "not allowed" in result.stderr
    assert len(recorded(tmp_path)) == 1  # the probe only: no payload container
    assert "stage payload" not in result.stderr


def test_an_address_outside_the_subnet_fails_with_the_reason(
    tmp_path: Path, listener: int
) -> None:
    env = fake_site(tmp_path)
    env["FAKE_ADDRESS"] = "192.0.2.7"
    result = run_drone(script_for(profile_data(tmp_path, listener)), tmp_path, env)
    assert result.returncode == EXIT_CONTAINER_NET, result.stderr
    assert "no address in container_net.subnet 10.66.9.0/24" in result.stderr
    assert "192.0.2.7" in result.stderr


def test_an_echo_that_sees_another_address_fails(tmp_path: Path, listener: int) -> None:
    env = fake_site(tmp_path)
    server = subprocess.Popen(
        [sys.executable, "-c", ECHO_SERVER, "127.0.0.1", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        data = profile_data(
            tmp_path, listener, address_echo=f"http://127.0.0.1:{port}/"
        )
        result = run_drone(script_for(data), tmp_path, env)
    finally:
        server.terminate()
        server.wait()
    assert result.returncode == EXIT_CONTAINER_NET, result.stderr
    assert "saw us as 127.0.0.1, expected the container's address 10.66.9.20" in (
        result.stderr
    )


#: answers every GET with the caller's address (prints its port first)
ECHO_SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (self.client_address[0] + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


# -- the reporter in a real network namespace ----------------------------------


NETNS_SKIP = unavailable(("ip", "unshare", "setpriv"), "to create a network namespace")


def reporter_script(tmp_path: Path, data: dict[str, Any]) -> Path:
    """The reporter the stage writes, written by the rendered script's function."""
    path = tmp_path / "drone.sh"
    path.write_text(script_for(data))
    (tmp_path / "w" / "bin").mkdir(parents=True)
    subprocess.run(
        [
            "bash",
            "-c",
            f'source "$1"; DRONE_DIR={tmp_path}/w; DRONE_UUID=x; cnet_write_reporter',
            "t",
            str(path),
        ],
        check=True,
        timeout=30,
    )
    return tmp_path / "w" / "bin" / "cnet-report"


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[str]:
    if NETNS_SKIP:
        pytest.skip(NETNS_SKIP)
    name = f"tnacnet{os.getpid()}"
    sbin = os.environ["PATH"] + ":/usr/sbin:/sbin"
    ip = shutil.which("ip", path=sbin)
    assert ip
    subprocess.run([ip, "netns", "add", name], check=True)
    try:
        for cmd in (
            "link set lo up",
            # the container's interface: an address on lo is as global as one
            # on a CNI link for the reporter (this kernel may lack dummy/veth)
            "addr add 10.66.9.20/24 dev lo",
        ):
            subprocess.run([ip, "-n", name, *cmd.split()], check=True)
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=False)


def test_reporter_in_a_netns_sees_its_address_and_the_echo(
    tmp_path: Path, netns: str
) -> None:
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", ECHO_SERVER]
        + ["10.66.9.20", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        data = profile_data(
            tmp_path,
            port,
            check_target=f"10.66.9.20:{port}",
            address_echo=f"http://10.66.9.20:{port}/",
        )
        reporter = reporter_script(tmp_path, data)
        state = tmp_path / "state"
        ok = subprocess.run(
            ["ip", "netns", "exec", netns, "bash", str(reporter), "--once", str(state)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert ok.returncode == 0, (ok.stderr, state.read_text())
        assert state.read_text() == "ok\t10.66.9.20\t10.66.9.20\t\n"
        # without `ip` in the image: the kernel's own table still names it
        tools = tmp_path / "tools"
        tools.mkdir()
        for tool in ("sort", "timeout", "mv", "cat"):
            (tools / tool).symlink_to(shutil.which(tool))  # type: ignore[arg-type]
        bare = subprocess.run(
            ["ip", "netns", "exec", netns, "env", f"PATH={tools}", "/bin/bash"]
            + [str(reporter), "--once", str(state)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert bare.returncode == 0, (bare.stderr, state.read_text())
        assert state.read_text().startswith("ok\t10.66.9.20\t")
    finally:
        server.terminate()
        server.wait()
    # the host's own namespace has no partition address: the same check fails
    host = subprocess.run(
        ["bash", str(reporter), "--once", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert host.returncode == 1
    assert state.read_text().startswith("fail\t\t\tno address in container_net.subnet")


# -- the watchdog's record -------------------------------------------------------


def watchdog_object(tmp_path: Path, state: str, age_s: int = 0) -> Any:
    data = profile_data(tmp_path, 9618)
    data["monitoring"] = {"enabled": True}
    path = tmp_path / "drone.sh"
    path.write_text(script_for(data))
    state_file = tmp_path / "container-net.state"
    state_file.write_text(state)
    if age_s:
        old = time.time() - age_s
        os.utime(state_file, (old, old))
    out = subprocess.run(
        [
            "bash",
            "-c",
            f'source "$1"; TNA_CNET_STATE_FILE={state_file} TNA_CNET_STALE_S=90;'
            ' tna_cnet o; printf "%s" "$o"',
            "t",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def test_the_record_carries_the_containers_report(tmp_path: Path) -> None:
    got = watchdog_object(tmp_path, "ok\t10.66.9.20\t10.66.9.20\t\n")
    assert got == {
        "ok": True,
        "address": "10.66.9.20",
        "seen": "10.66.9.20",
        "reason": "",
    }
    beat = from_dict({"uuid": "d", "time": 1.0, "container_net": got})
    assert beat is not None and beat.container_net is not None
    assert (
        beat.container_net.label == "ok" and beat.container_net.address == "10.66.9.20"
    )
    assert ("container_net", "CNET") in COLUMNS


def test_a_stale_report_is_failing(tmp_path: Path) -> None:
    got = watchdog_object(tmp_path, "ok\t10.66.9.20\t\t\n", age_s=600)
    assert got["ok"] is False
    assert "reporter in the payload's container is gone" in got["reason"]


# -- check --probe's site checks ---------------------------------------------------


def site_probe(tmp_path: Path, conf: str, conflist: bool, setuid: bool) -> list[str]:
    prefix = tmp_path / "opt"
    (prefix / "bin").mkdir(parents=True)
    app = prefix / "bin" / "apptainer"
    app.write_text("#!/bin/sh\n")
    app.chmod(0o4755 if setuid else 0o755)
    etc = prefix / "etc" / "apptainer"
    (etc / "network").mkdir(parents=True)
    (etc / "apptainer.conf").write_text(conf)
    if conflist:
        (etc / "network" / "epn-public.conflist").write_text("{}")
    profile = load_profile(json.loads(json.dumps(profile_data(tmp_path, 9618))))
    lines = get("container-net").probe_job_lines(profile)
    script = 'mark() { printf \'%s|%s|%s\\n\' "$1" "$2" "$3"; }\n' + "\n".join(lines)
    result = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.skipif(os.geteuid() != 0, reason="setuid root needs a root-owned file")
def test_probe_job_passes_a_good_site(tmp_path: Path) -> None:
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    conf = f"allow setuid = yes\nallow net users = other, {user}\nallow net networks = epn-public\n"
    marks = site_probe(tmp_path, conf, conflist=True, setuid=True)
    states = {line.split("|")[0]: line.split("|")[1] for line in marks}
    assert states["cnet:setuid"] == "ok", marks
    assert states["cnet:allow"] == "ok", marks
    assert states["cnet:network"] == "ok", marks


def test_probe_job_names_what_the_site_lacks(tmp_path: Path) -> None:
    conf = "allow net users = somebodyelse\nallow net networks = epn-public\n"
    marks = site_probe(tmp_path, conf, conflist=False, setuid=False)
    states = {line.split("|")[0]: line for line in marks}
    assert states["cnet:setuid"].split("|")[1] == "fail"
    assert "admit neither" in states["cnet:allow"]
    assert "epn-public.conflist does not exist" in states["cnet:network"]
    mode = get("container-net")
    assert all(
        mode.probe_fix(name) for name in ("cnet:setuid", "cnet:allow", "cnet:network")
    )


def test_the_rendered_script_passes_shellcheck(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck missing")
    data = profile_data(tmp_path, 9618)
    data["monitoring"] = {"enabled": True}
    path = tmp_path / "drone.sh"
    path.write_text(script_for(data))
    lint = subprocess.run(
        ["shellcheck", "-S", "warning", "-s", "bash", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout


def test_the_example_config_loads_mode_container_net() -> None:
    from tardis_netadapter.siteconfig import load_site_from_file

    root = Path(__file__).resolve().parents[2]
    found = load_site_from_file(root / "configs" / "alice-epn.yml", "EPN")
    profile = found.settings.profile
    assert profile.mode == "container-net"
    assert profile.container.gpu_kind == "amd"
    assert profile.container.apptainer == "/opt/apptainer/bin/apptainer"
    assert profile.container_net.network == "epn-public"


PAYLOAD_WATCHING = r"""#!/bin/bash
# the payload: waits for a heartbeat with the container's report ok, then
# takes the container's address away and waits for the watchdog to blame
# stage container-net
hb=$HB_DIR/$TardisDroneUuid.json
wait_for() {
    for _ in $(seq 1 100); do
        if grep -q "$2" "$hb" 2>/dev/null; then
            cp "$hb" "$OUT/$1.json"
            return 0
        fi
        sleep 0.2
    done
    return 1
}
wait_for ok '"failing_stage":null.*"container_net":{"ok":true' || exit 3
echo 192.0.2.7 >"$FAKE_ADDRESS_FILE"
wait_for broken '"failing_stage":"container-net"' || exit 4
"""


def test_the_watchdog_follows_the_containers_reports(
    tmp_path: Path, listener: int
) -> None:
    env = fake_site(tmp_path)
    (tmp_path / "bin" / "ip").write_text(
        '#!/bin/sh\nread -r a <"$FAKE_ADDRESS_FILE"\n'
        'echo "5: ib0    inet $a/24 brd 10.66.9.255 scope global ib0"\n'
    )
    address = tmp_path / "address"
    address.write_text("10.66.9.20\n")
    out = tmp_path / "out"
    out.mkdir()
    payload = tmp_path / "payload.sh"
    payload.write_text(PAYLOAD_WATCHING)
    payload.chmod(0o755)
    data = profile_data(tmp_path, listener)
    data["monitoring"] = {
        "heartbeat_dir": str(tmp_path / "hb"),
        "heartbeat_interval": 2,
    }
    data["payload"] = {
        "command": [str(payload)],
        "environment": {"HB_DIR": str(tmp_path / "hb"), "OUT": str(out)},
    }
    env["FAKE_ADDRESS_FILE"] = str(address)
    result = run_drone(script_for(data), tmp_path, env)
    assert result.returncode == 0, result.stderr
    ok = json.loads((out / "ok.json").read_text())
    assert ok["stages"]["container-net"] == "ok"
    assert ok["container_net"]["address"] == "10.66.9.20"
    broken = json.loads((out / "broken.json").read_text())
    assert broken["container_net"]["ok"] is False
    assert "no address in container_net.subnet" in broken["last_error"]
    beat = from_dict(broken)
    assert beat is not None and beat.failing_stage == "container-net"


def test_check_probe_job_reports_the_site_apptainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check --probe's job through the batch driver (a stand-in srun that runs
    the job's /bin/sh -s here): one item per site check, with the fix."""
    import asyncio

    from tardis.utilities.executors.shellexecutor import ShellExecutor

    from tardis_netadapter.commands.check import job_items
    from tardis_netadapter.siteconfig import load_site_settings

    srun = tmp_path / "srun"
    srun.write_text(
        '#!/bin/sh\nwhile [ "$#" -gt 0 ] && [ "$1" != /bin/sh ]; do shift; done\n'
        'exec "$@"\n'
    )
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    prefix = tmp_path / "opt"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "apptainer").write_text("#!/bin/sh\n")
    (prefix / "bin" / "apptainer").chmod(0o755)  # not setuid
    etc = prefix / "etc" / "apptainer"
    (etc / "network").mkdir(parents=True)
    (etc / "network" / "epn-public.conflist").write_text("{}")
    (etc / "apptainer.conf").write_text(
        "allow net users = nobody-else\nallow net networks = epn-public\n"
    )
    network = profile_data(tmp_path, 9618)
    network["container"]["apptainer"] = str(prefix / "bin" / "apptainer")
    section = {
        "MachineTypes": ["epn"],
        "MachineTypeConfiguration": {"epn": {"Walltime": "60", "Partition": "grid"}},
        "MachineMetaData": {"epn": {"Cores": 1, "Memory": 1, "Disk": 1}},
        "Network": network,
    }
    settings = load_site_settings("EPN", json.loads(json.dumps(section)))
    items = asyncio.run(job_items(settings, ShellExecutor(), 60))
    found = {item.what.split(": ")[0]: item for item in items}
    assert found["probe job ran on a worker of machine type epn"].ok
    assert not found["cnet:setuid"].ok and "starter-suid" in found["cnet:setuid"].fix
    assert not found["cnet:allow"].ok and "allow net users" in found["cnet:allow"].fix
    assert found["cnet:network"].ok, found["cnet:network"].what
