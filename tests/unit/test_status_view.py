"""``status`` for an operator (issue 17): reason first, ``--wide``, ``--watch``, JSON.

The command runs against the fake login node (a real /bin/sh, a fake squeue,
real heartbeat files), as in the other status tests.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from types import SimpleNamespace

import asyncssh
import pytest
from fakelogin import CONFIG, record, write_heartbeat
from tardis.exceptions.executorexceptions import CommandExecutionFailure

from tardis_netadapter import cli
from tardis_netadapter.batch.poller import StatusUnavailable
from tardis_netadapter.commands import status_watch
from tardis_netadapter.commands.status_reason import unreachable
from tardis_netadapter.connectivity.heartbeat import from_dict
from tardis_netadapter.connectivity.report import (
    WIDE_COLUMNS,
    drone_stage,
    render_table,
)


@pytest.fixture
def site(login, monkeypatch):
    """Two running drones: one all the way up, one whose chain fails."""
    now = time.time()
    login["jobs"].write_text(
        "21|RUNNING|netlab-aaa|10:00\n22|RUNNING|netlab-bbb|10:00\n"
    )
    up = record(
        "netlab-aaa",
        now - 2,
        host="wn017",
        restarts=3,
        stages={"cvmfs": "ok", "tunnel": "ok", "chain": "ok", "payload": "ok"},
    )
    failing = record(
        "netlab-bbb",
        now - 2,
        ok=False,
        host="wn018",
        stages={"cvmfs": "ok", "tunnel": "ok", "chain": "failed"},
        last_error="chain: collector cm:9618 not reachable through socks5 127.0.0.1:1080",
        failing_since=now - 20,
    )
    write_heartbeat(login, up)
    write_heartbeat(login, failing)
    config = login["tmp"] / "cobald.yml"
    config.write_text(CONFIG.format(hb=login["hb"]))
    monkeypatch.setenv("PATH", login["env"]["PATH"])
    return [str(config), "--brake-state", str(login["tmp"] / "no-brake.json")]


def table(text: str) -> list[dict[str, str]]:
    """The rows of a table, by column title (titles are single spaced words)."""
    lines = [line for line in text.splitlines() if line.startswith(("DRONE", "net"))]
    header = lines[0]
    starts = [header.index(title) for _, title in WIDE_COLUMNS if title in header]
    titles = [header[s:].split("  ")[0].strip() for s in starts]
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        rows.append(dict(zip(titles, cells)))
    return rows


# -- the reason first ----------------------------------------------------------------


def test_an_unreachable_site_says_why_on_the_first_line(site, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli.main(["status", *site]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("site NetLab: unreachable: the listing command failed")
    assert "not found" in err[0]  # the shell's own words, not a repr
    assert err[1].startswith("  detail: CommandExecutionFailure(")


def test_an_unreachable_site_in_json(site, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli.main(["status", *site, "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["drones"] == [] and document["outage"] is None
    assert document["unreachable"]["reason"].startswith("the listing command failed")
    assert "CommandExecutionFailure" in document["unreachable"]["detail"]


@pytest.mark.parametrize(
    "error, reason",
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (OSError(113, "No route to host"), "no route to host"),
        (asyncio.TimeoutError(), "no answer after 60 s"),
        (asyncssh.PermissionDenied("Permission denied"), "ssh: Permission denied"),
        (
            CommandExecutionFailure(
                message="m", exit_code=1, stdout="", stderr="squeue: error: x\n"
            ),
            "the listing command failed (exit 1): squeue: error: x",
        ),
    ],
)
def test_the_reason_is_the_innermost_cause_in_words(error, reason):
    wrapped = StatusUnavailable("NetLab: the job listing failed 0.1s ago")
    wrapped.__cause__ = error
    found = unreachable(wrapped, timeout=60)
    assert found.reason.startswith(reason)
    assert found.headline("NetLab") == f"site NetLab: unreachable: {found.reason}"
    assert "StatusUnavailable" in found.detail


# -- --wide ----------------------------------------------------------------------------


def test_wide_shows_stage_restarts_last_error_age_and_node(site, capsys):
    assert cli.main(["status", *site, "--wide"]) == 0
    out = capsys.readouterr().out
    rows = table(out)
    print(out)  # shown when an assertion below fails
    assert [r["DRONE"] for r in rows] == ["netlab-aaa", "netlab-bbb"]
    assert rows[0]["STAGE"] == "payload:ok" and rows[1]["STAGE"] == "chain:failed"
    assert rows[0]["RESTARTS"] == "3" and rows[1]["RESTARTS"] == "0"
    assert rows[0]["NODE"] == "wn017" and rows[1]["NODE"] == "wn018"
    assert rows[0]["LAST ERROR"] == "-"
    assert rows[1]["LAST ERROR"].startswith("chain: collector cm:9618 not reachable")
    age = rows[0]["HB AGE"]
    assert age.endswith("s") and 0 <= int(age[:-1]) < 60


def test_the_narrow_table_keeps_its_columns(site, capsys):
    assert cli.main(["status", *site]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "RESTARTS" not in header and "NODE" not in header
    assert header.split()[:4] == ["DRONE", "JOB", "STATE", "VERDICT"]


def test_json_carries_stage_and_last_error(site, capsys):
    assert cli.main(["status", *site, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["unreachable"] is None
    drones = {d["uuid"]: d for d in document["drones"]}
    assert drones["netlab-bbb"]["stage"] == "chain:failed"
    assert drones["netlab-bbb"]["last_error"].startswith("chain: collector")
    assert drones["netlab-aaa"]["restarts"] == 3 and drones["netlab-aaa"]["host"]


def test_stage_without_record_or_stages():
    assert drone_stage(None) is None
    assert drone_stage(from_dict(record("netlab-x", 1.0))) is None
    failing = from_dict(record("netlab-x", 1.0, ok=False))  # chain, no stages map
    assert drone_stage(failing) == "chain:failing"


def test_wide_reason_is_not_cut_but_the_narrow_one_is():
    from tardis_netadapter.connectivity.report import StatusRow

    row = StatusRow("netlab-x", "1", "RUNNING", "lost", reason="r" * 100)
    assert "r" * 100 in render_table([row], wide=True)
    assert "r" * 100 not in render_table([row])


# -- --watch ---------------------------------------------------------------------------


def test_watch_to_a_pipe_prints_successive_tables(site, capsys):
    assert cli.main(["status", *site, "--watch", "0.5", "--count", "2"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out  # no terminal codes in a log
    assert out.count("Every 0.5s: tardis-netadapter status NetLab") == 2
    assert out.count("NetLab: 2 drone(s): 1 connected, 1 ") == 2


def test_watch_json_is_one_document_per_line(site, capsys):
    assert cli.main(["status", *site, "--json", "--watch", "0.5", "--count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert [len(json.loads(line)["drones"]) for line in lines] == [2, 2]


def test_watch_keeps_going_while_the_site_is_unreachable(site, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli.main(["status", *site, "--watch", "0.5", "--count", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    heads = [i for i, line in enumerate(out) if line.startswith("Every ")]
    assert len(heads) == 2
    for i in heads:  # the reason right under the header, before anything else
        assert out[i + 2].startswith("site NetLab: unreachable: ")


@pytest.mark.parametrize("value", ["0", "-1", "x", "0.1"])
def test_watch_refuses_a_senseless_interval(site, value, capsys):
    with pytest.raises(SystemExit):
        cli.main(["status", *site, "--watch", value])
    assert "at least 0.5" in capsys.readouterr().err


def test_in_a_terminal_each_round_redraws_in_place(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(
        status_watch.shutil,
        "get_terminal_size",
        lambda fallback: SimpleNamespace(columns=20),
    )
    frame = SimpleNamespace(text=lambda monitor, wide: "A" * 50 + "\nshort\n")
    source = SimpleNamespace(site="NetLab", monitor=None)
    args = SimpleNamespace(json=False, watch=5.0, wide=False)
    out = Tty()
    status_watch.show(frame, source, args, out, 0.0)
    text = out.getvalue()
    assert text.startswith(status_watch.HOME) and text.endswith(
        status_watch.CLEAR_BELOW
    )
    lines = text[len(status_watch.HOME) : -len(status_watch.CLEAR_BELOW)].split("\n")
    assert lines[0] == "Every 5s: tardis-net" + status_watch.CLEAR_LINE  # cut to 20
    assert "A" * 20 + status_watch.CLEAR_LINE in lines
    assert "A" * 21 not in text


def test_count_without_watch_is_refused(site, capsys):
    assert cli.main(["status", *site, "--count", "2"]) == 2
    assert "--count N needs --watch" in capsys.readouterr().err


def test_help_has_no_rst_markup(capsys):
    with pytest.raises(SystemExit):
        cli.main(["status", "--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "tardis-netadapter status CONFIG:" in out
