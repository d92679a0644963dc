"""The heartbeat's ``vpn`` object (issue 13): parsed field by field, shown by
``status`` as the VPN column (``dtls``, ``tls``, ``-``) and carried by
``status --json`` as the drone's ``vpn`` key."""

from __future__ import annotations

import json
from typing import Any, Optional

import pytest
from fakelogin import record

from tardis_netadapter.connectivity.heartbeat import Vpn, parse_record
from tardis_netadapter.connectivity.report import make_row, render_table, to_json
from tardis_netadapter.connectivity.verdict import Judgement, Verdict

DTLS = {"transport": "dtls", "address": "10.66.8.17"}
TLS = {"transport": "tls", "address": "10.66.8.18"}
DOWN = {"transport": None, "address": None}


def vpn_of(value: Any) -> Optional[Vpn]:
    """The parsed vpn of a record carrying ``value`` (``...``: no key)."""
    data = record("netlab-aaa", 1000.0)
    if value is not ...:
        data["vpn"] = value
    heartbeat = parse_record(json.dumps(data))
    assert heartbeat is not None, "a bad vpn object must not drop the record"
    return heartbeat.vpn


def test_the_three_states_parse() -> None:
    assert vpn_of(DTLS) == Vpn("dtls", "10.66.8.17")
    assert vpn_of(TLS) == Vpn("tls", "10.66.8.18")
    down = vpn_of(DOWN)
    assert down == Vpn(None, None) and down.label == "-"
    assert vpn_of(DTLS).label == "dtls" and vpn_of(TLS).label == "tls"


@pytest.mark.parametrize("value", [..., None, "dtls", 3, ["dtls"]])
def test_absent_or_not_an_object_is_none(value: Any) -> None:
    assert vpn_of(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"transport": "quic", "address": "10.66.8.1"}, Vpn(None, "10.66.8.1")),
        ({"transport": "DTLS", "address": "10.66.8.1"}, Vpn(None, "10.66.8.1")),
        ({"transport": "dtls", "address": "10.66.8.1\x1b[31m"}, Vpn("dtls", None)),
        ({"transport": "dtls", "address": "not an address"}, Vpn("dtls", None)),
        ({"transport": "tls", "address": 167903233}, Vpn("tls", None)),
        ({"transport": "tls", "address": "fd00::8:1"}, Vpn("tls", "fd00::8:1")),
        ({"transport": 1, "address": "1" * 5000}, Vpn(None, None)),
    ],
)
def test_fields_are_parsed_one_by_one(value: Any, expected: Vpn) -> None:
    assert vpn_of(value) == expected


def row_for(vpn: Any, uuid: str = "netlab-aaa"):
    data = record(uuid, 1000.0, host="wn7")
    if vpn is not ...:
        data["vpn"] = vpn
    heartbeat = parse_record(json.dumps(data))
    judgement = Judgement(Verdict.CONNECTED, "probes answered", None, 1.0, 8.5)
    return make_row(uuid, "11", "RUNNING", judgement, heartbeat)


def vpn_cells(text: str) -> list[str]:
    lines = text.splitlines()
    start, end = lines[0].index("VPN"), lines[0].index("ROUTE")
    return [line[start:end].strip() for line in lines[1:-1]]


def test_status_table_has_a_vpn_column() -> None:
    rows = [
        row_for(DTLS, "netlab-aaa"),
        row_for(TLS, "netlab-bbb"),
        row_for(DOWN, "netlab-ccc"),
        row_for(..., "netlab-ddd"),
    ]
    text = render_table(rows, "NetLab")
    assert vpn_cells(text) == ["dtls", "tls", "-", "-"]
    # after the isolation columns, before the reason
    header = text.splitlines()[0].split()
    assert header.index("LEAKS") < header.index("VPN") < header.index("REASON")


def test_status_json_carries_the_vpn_object() -> None:
    rows = [row_for(DTLS), row_for(DOWN, "netlab-bbb"), row_for(..., "netlab-ccc")]
    drones = json.loads(to_json(rows, "NetLab", 1000.0))["drones"]
    assert drones[0]["vpn"] == DTLS
    assert drones[1]["vpn"] == DOWN
    assert drones[2]["vpn"] is None
    # additive: the keys scripts already read are all still there
    assert {"uuid", "verdict", "isolation", "slurm_state"} <= set(drones[0])
