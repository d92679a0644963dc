"""``status --watch`` in a real terminal: tmux runs it, the test reads the pane.

The watch runs against the fake login node (a real /bin/sh running the
adapter's listing and heartbeat collection over real record files; only
squeue is faked). tmux gives it a real pseudo-terminal of a known size, so
what is checked is what an operator sees: the header, the table, the redraw
in place (one header on the screen after several rounds, not a scroll of
them), a change at the site shown in the next round, and the width cut.
The tmux server is this test's own (its socket in the test's directory), ended
by it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakelogin import CONFIG, record, write_heartbeat


def tmux_or_skip() -> str:
    found = shutil.which("tmux")
    if found is None:
        pytest.skip("tmux is not installed (scripts/install-system-deps)")
    return found


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    """``tmux -S SOCKET`` of a server of this test's own; killed afterwards.

    The socket lives in the test's directory, so nothing is left in
    /tmp/tmux-UID and no other tmux server is ever addressed.
    """
    base = [tmux_or_skip(), "-S", str(tmp_path / "tmux.sock")]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, check=False)


def pane(tmux: list[str]) -> str:
    return subprocess.run(
        [*tmux, "capture-pane", "-p", "-t", "watch"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def wait_for(tmux: list[str], predicate, timeout: float = 20.0) -> str:
    """The pane once ``predicate(pane)`` holds; fails with the last pane."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = pane(tmux)
        if predicate(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"pane never matched; last pane:\n{text}")


def start_watch(tmux: list[str], login: dict, *options: str, width: int = 220) -> None:
    config = login["tmp"] / "cobald.yml"
    config.write_text(CONFIG.format(hb=login["hb"]))
    argv = [sys.executable, "-m", "tardis_netadapter.cli", "status", str(config)]
    argv += ["--brake-state", str(login["tmp"] / "no-brake.json"), *options]
    script = login["tmp"] / "watch.sh"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in login["env"].items())
    # the exit status goes to a file: tmux does not always learn a dead
    # pane's status (pane_dead_status stayed empty in about a third of runs);
    # `trap : INT` keeps this shell alive through Ctrl-C to write it, while
    # the watch gets SIGINT with its default handling (a trap, unlike an
    # ignored signal, is not inherited)
    script.write_text(
        f"#!/bin/sh\ntrap : INT\nenv {env} TERM=screen {shlex.join(argv)} "
        f"2>{shlex.quote(str(login['tmp'] / 'watch.err'))}\n"
        f"echo $? >{shlex.quote(str(login['tmp'] / 'watch.status'))}\n"
    )
    script.chmod(0o755)
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "watch", "-x", str(width), "-y", "30"]
        + [str(script)],
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    subprocess.run(  # keep the pane when the command ends, to read why
        [*tmux, "set-option", "-t", "watch", "remain-on-exit", "on"], check=True
    )


def rows(text: str) -> dict[str, list[str]]:
    return {
        line.split()[0]: line.split()
        for line in text.splitlines()
        if line.startswith("netlab-")
    }


def test_watch_redraws_the_table_in_place_and_follows_the_site(tmux, login):
    now = time.time()
    login["jobs"].write_text("21|RUNNING|netlab-aaa|10:00\n")
    write_heartbeat(login, record("netlab-aaa", now, host="wn017", restarts=1))
    start_watch(tmux, login, "--watch", "1", "--wide")
    first = wait_for(tmux, lambda t: "netlab-aaa" in t)
    lines = first.splitlines()
    assert lines[0].startswith("Every 1s: tardis-netadapter status NetLab")
    assert lines[0].rstrip().endswith("UTC")
    header = lines[2].split()
    assert header[:5] == ["DRONE", "JOB", "STATE", "VERDICT", "STAGE"]
    assert "RESTARTS" in header and "NODE" in header
    row = rows(first)["netlab-aaa"]
    assert row[1:4] == ["21", "RUNNING", "connected"] and "wn017" in row
    assert "NetLab: 1 drone(s): 1 connected" in first

    # the site changes: a second drone starts; the next round shows it
    login["jobs"].write_text(
        "21|RUNNING|netlab-aaa|10:00\n22|PENDING|netlab-bbb|0:00\n"
    )
    second = wait_for(tmux, lambda t: "netlab-bbb" in t)
    assert rows(second)["netlab-bbb"][1:4] == ["22", "PENDING", "pending"]
    assert "NetLab: 2 drone(s): 1 pending, 1 connected" in second

    # several rounds later: still one frame on the screen, redrawn in place
    stamp = second.splitlines()[0]
    third = wait_for(tmux, lambda t: t.splitlines()[0] != stamp)
    assert third.count("Every 1s:") == 1
    assert third.count("DRONE") == 1
    assert third.splitlines()[0].startswith("Every 1s:")  # at the top, not scrolled

    # Ctrl-C ends the watch quietly, with exit status 0 and no traceback
    subprocess.run([*tmux, "send-keys", "-t", "watch", "C-c"], check=True)
    status = wait_for_exit(tmux, login)
    assert status == "0", (status, (login["tmp"] / "watch.err").read_text())
    assert "Traceback" not in (login["tmp"] / "watch.err").read_text()


def wait_for_exit(tmux: list[str], login: dict, timeout: float = 10.0) -> str:
    """The watch's exit status once it has ended (watch.sh writes it)."""
    status_file = login["tmp"] / "watch.status"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status_file.exists() and status_file.read_text().strip():
            return status_file.read_text().strip()
        time.sleep(0.2)
    raise AssertionError(f"the watch did not end on Ctrl-C:\n{pane(tmux)}")


def test_watch_cuts_lines_to_a_narrow_terminal(tmux, login):
    login["jobs"].write_text("21|RUNNING|netlab-aaa|10:00\n")
    write_heartbeat(login, record("netlab-aaa", time.time()))
    start_watch(tmux, login, "--watch", "1", width=60)
    text = wait_for(tmux, lambda t: "netlab-aaa" in t)
    lines = text.splitlines()
    assert all(len(line) <= 60 for line in lines)
    # cut, not wrapped: the row stays on one line and the summary follows it
    index = next(i for i, line in enumerate(lines) if line.startswith("netlab-aaa"))
    assert lines[index + 1].startswith("NetLab: 1 drone(s)"), text


def test_watch_shows_the_reason_first_while_the_site_is_unreachable(tmux, login):
    login["env"]["PATH"] = "/nonexistent"  # the login node's shell finds nothing
    start_watch(tmux, login, "--watch", "1")
    text = wait_for(tmux, lambda t: "unreachable" in t)
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].startswith("Every 1s:")
    assert lines[1].startswith("site NetLab: unreachable: the listing command failed")
