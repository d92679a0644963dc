"""Shared fixtures: the session-wide lab for tests marked `lab`.

Lab tests need root and the lab's Debian packages. Without them they skip
with the reason, except under CI=true, where they fail: CI runs as root with
the packages installed, so a skip there would hide a broken setup.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Optional

import pytest
from tardis_netadapter_lab import Lab, teardown
from tardis_netadapter_lab.topology import lab_namespaces

Probe = Callable[..., str]


@pytest.fixture(autouse=True, scope="session")
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The brake writes its state file under XDG_STATE_HOME: keep tests out of ~."""
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield
    if saved is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = saved


SlurmJob = Callable[..., "tuple[str, str]"]

REQUIRED_BINARIES = (
    "sshd",
    "ssh",
    "slurmctld",
    "slurmd",
    "sbatch",
    "danted",
    "squid",
    "nft",
    "proxychains4",
    "autossh",
    "curl",
    "ip",
    "tc",
    "nsenter",
    "setpriv",
    "useradd",
    "socat",  # the outside's address echo (issue 14)
    "keepalived",  # the site NAT's routers (issue 14)
    "conntrackd",
)
SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]
)
LAB_NAME = f"tnt{os.getpid() % 1000}"
LAB_IDLE_TIMEOUT = 30

_labs_started: list[str] = []


def lab_unavailable_reason() -> Optional[str]:
    """Why lab tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, users, daemons)"
    missing = [
        name for name in REQUIRED_BINARIES if not shutil.which(name, path=SEARCH_PATH)
    ]
    if missing:
        return f"lab tests need {', '.join(missing)}: run scripts/install-system-deps"
    return None


def require_lab() -> None:
    """Skip (or fail under CI=true) when the lab cannot run."""
    reason = lab_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """One two-worker lab for the whole session, always torn down."""
    require_lab()
    teardown(LAB_NAME)  # a crashed earlier session with the same pid suffix
    _labs_started.append(LAB_NAME)
    instance = Lab(name=LAB_NAME, workers=2, idle_timeout=LAB_IDLE_TIMEOUT)
    try:
        instance.up()
        yield instance
    finally:
        instance.down()


@pytest.fixture
def lab_name_factory() -> Iterator[Callable[[str], str]]:
    """Names for extra short-lived labs of one test; each is removed after it."""
    names: list[str] = []

    def make(suffix: str) -> str:
        name = f"{LAB_NAME}{suffix}"
        names.append(name)
        _labs_started.append(name)
        return name

    yield make
    for name in names:
        teardown(name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No lab namespace may outlive the session: clean up and fail if one did."""
    if not _labs_started:
        return
    leftovers = [ns for name in set(_labs_started) for ns in lab_namespaces(name)]
    if leftovers:
        for name in set(_labs_started):
            teardown(name)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"lab namespaces left after the session: {', '.join(leftovers)}"
        if reporter is not None:
            reporter.write_line(f"ERROR: {message}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


PROBE_SCRIPT = r"""
import socket, sys
sock = socket.socket()
sock.settimeout(float(sys.argv[3]))
try:
    sock.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
except OSError as error:
    print(f"error {error.strerror}")
"""


@pytest.fixture(scope="session")
def probe(lab: Lab) -> Probe:
    """probe(host, address, port) -> "open" | "refused" | "timeout" | "error ...":
    one TCP connect attempt made from inside a lab host."""

    def run(host: str, address: str, port: int, timeout: float = 2.0) -> str:
        result = lab.run(
            host,
            ["/usr/bin/python3", "-c", PROBE_SCRIPT, address, str(port), str(timeout)],
            timeout=timeout + 10,
        )
        return result.stdout.strip() or f"crashed: {result.stderr.strip()}"

    return run


@pytest.fixture(scope="session")
def slurm_job(lab: Lab) -> SlurmJob:
    """slurm_job(script, timeout=60) -> (node, output): submit a bash script
    with sbatch on login as the drone user, wait for it, return its output."""

    def run(script: str, timeout: float = 60.0) -> tuple[str, str]:
        user = lab.drone_user
        if not script.startswith("#!"):
            script = "#!/bin/bash\n" + script
        submitted = lab.run(
            "login",
            ["sbatch", "--parsable", "-o", "job-%j.out", "-J", "labtest"],
            user=user,
            input=script,
            timeout=30,
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().split(";")[0]
        node = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = lab.run(
                "login",
                ["squeue", "-h", "-j", job_id, "-t", "PD,CF,R,CG", "-o", "%T %N"],
                user=user,
            )
            if not queue.stdout.strip():
                break
            node = queue.stdout.split()[-1] if len(queue.stdout.split()) > 1 else node
            time.sleep(0.3)
        else:
            lab.run("login", ["scancel", job_id], user=user)
            raise AssertionError(f"job {job_id} still queued after {timeout} s")
        home = lab.layout.home(user)
        return node, (home / f"job-{job_id}.out").read_text()

    return run
