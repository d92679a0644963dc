"""The workers' ``tna-nat-routing`` for real, in a fresh network namespace (root).

A veth ``site0`` carries the worker's site address (10.66.1.5/24) and a main
default route via 10.66.1.1 (the site's usual gateway, as at GSI); the NAT
gateway is 10.66.1.250. Nothing answers on the other end, so where a packet
was sent shows in the neighbour table: an ARP entry for the address it was
routed to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_sitenat_config import load, nat_section
from test_sitenat_render import install, lab_paths

from tardis_netadapter.sitenat.render import render_worker

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "nft", "ip")),
    reason="needs root, unshare, nft and ip",
)

SETUP = """
set -u
ip link set lo up
ip link add site0 type veth peer name site0p
ip link set site0 up; ip link set site0p up
ip addr add 10.66.1.5/24 dev site0
ip route add default via 10.66.1.1
"""

SNAPSHOT = """
snap() {
    { nft list ruleset; echo ---; ip rule; echo ---; ip -4 route show table all |
        grep -v -e '^local ' -e '^broadcast '; } >"$1"
}
"""


def script(tmp_path: Path, interval: float = 2) -> str:
    """Render and install the worker files for users nobody; the script's path."""
    nat = load(nat_section(users=["nobody"], groups=[], keeper={"interval": interval}))
    paths = lab_paths(tmp_path)
    install(render_worker(nat, paths))
    return f"{paths.sbin}/tna-nat-routing"


def in_netns(body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["unshare", "-n", "bash", "-c", SETUP + SNAPSHOT + body],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result


def test_apply_twice_equals_once_and_remove_restores_exactly(tmp_path: Path) -> None:
    routing = script(tmp_path)
    out = tmp_path / "snap"
    out.mkdir()
    result = in_netns(
        # someone else's rule, route and table: remove must leave them
        "ip rule add pref 100 fwmark 0x7 table 300\n"
        "ip route add 10.99.0.0/16 via 10.66.1.1 table 201\n"
        "nft add table inet other\n"
        f"snap {out}/before\n"
        f"{routing} apply || exit 11\n"
        f"snap {out}/once\n"
        f"{routing} apply || exit 12\n"
        f"snap {out}/twice\n"
        f"{routing} remove || exit 13\n"
        f"snap {out}/removed\n"
        f"{routing} remove || exit 14\n"
    )
    assert result.returncode == 0, result.stderr
    before, once = (out / "before").read_text(), (out / "once").read_text()
    assert (out / "twice").read_text() == once
    assert (out / "removed").read_text() == before
    assert once != before
    assert "table inet tna_nat {" in once and "table inet other {" in once
    assert "32000:\tfrom all fwmark 0x1 lookup 201" in once
    assert "default via 10.66.1.250 dev site0 table 201" in once
    assert "10.99.0.0/16 via 10.66.1.1 dev site0 table 201" in before


def test_check_names_exactly_what_is_missing(tmp_path: Path) -> None:
    routing = script(tmp_path)
    result = in_netns(
        f"{routing} check; echo rc=$?\n"
        f"{routing} apply >/dev/null 2>&1\n"
        f"{routing} check; echo rc=$?\n"
        "ip route del default table 201\n"
        f"{routing} check; echo rc=$?\n"
    )
    codes = [line for line in result.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=1", "rc=0", "rc=1"], result.stdout + result.stderr
    parts = result.stderr.split("tna-nat-routing: ok:")
    assert len(parts) == 2, result.stderr
    first, last = parts
    for missing in (
        "missing: nft table inet tna_nat",
        "missing: rule fwmark 0x1 lookup 201",
        "missing: route default via 10.66.1.250 table 201",
    ):
        assert missing in first
    assert last.count("missing:") == 1
    assert "missing: route default via 10.66.1.250 table 201" in last


def test_only_the_drone_user_is_marked_and_the_site_stays_on_main(
    tmp_path: Path,
) -> None:
    routing = script(tmp_path)
    # nothing answers: a connect only sends a SYN after resolving the next hop
    connect = "timeout 1 bash -c 'exec 3<>/dev/tcp/{0}/80' 2>/dev/null"
    result = in_netns(
        f"{routing} apply || exit 11\n"
        "neigh() { ip neigh show dev site0 | awk '{print $1}' | sort | tr '\\n' ' '; }\n"
        f"runuser -u daemon -- {connect.format('10.99.0.1')}\n"
        'echo "other: $(neigh)"; ip neigh flush dev site0\n'
        f"runuser -u nobody -- {connect.format('10.99.0.1')}\n"
        'echo "drone: $(neigh)"; ip neigh flush dev site0\n'
        f"runuser -u nobody -- {connect.format('10.66.1.77')}\n"
        'echo "drone to the site: $(neigh)"\n'
        "ip route get 10.99.0.1 mark 0x1\n"
    )
    lines = dict(
        line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line
    )
    assert lines.get("other") == "10.66.1.1 ", result.stdout + result.stderr
    assert lines.get("drone") == "10.66.1.250 ", result.stdout
    assert lines.get("drone to the site") == "10.66.1.77 ", result.stdout
    assert "10.99.0.1 via 10.66.1.250 dev site0 table 201" in result.stdout


FLAP = """
{routing} apply >/dev/null 2>&1 || exit 11
{keeper}
sleep 0.5
ip link set site0 down
ip addr flush dev site0
ip link set site0 up
ip addr add 10.66.1.5/24 dev site0
ip route add default via 10.66.1.1
start=$(date +%s%N)
back=none
for i in $(seq 60); do
    if ip -4 route show table 201 | grep -q 'default via 10.66.1.250'; then
        back=$(( ($(date +%s%N) - start) / 1000000 )); break
    fi
    sleep 0.1
done
echo "back_ms=$back"
{routing} check >/dev/null 2>&1; echo "check=$?"
{stop}
"""


def test_the_keeper_restores_the_route_after_a_link_flap_and_logs_it(
    tmp_path: Path,
) -> None:
    routing = script(tmp_path, interval=2)
    log = tmp_path / "keeper.log"
    result = in_netns(
        FLAP.format(
            routing=routing,
            keeper=f"{routing} keep 2>{log} & keeper=$!",
            stop='kill "$keeper"; wait "$keeper"; echo "keeper_rc=$?"',
        )
    )
    words = dict(w.split("=") for w in result.stdout.split() if "=" in w)
    assert words.get("back_ms") not in (None, "none"), result.stdout + result.stderr
    assert int(words["back_ms"]) < 5000
    assert words["check"] == "0"
    assert words["keeper_rc"] == "0"  # it ends cleanly on SIGTERM
    text = log.read_text()
    assert "tna-nat-routing: repaired: route default via 10.66.1.250 table 201" in text
    print(f"route back {words['back_ms']} ms after the flap; keeper log:\n{text}")


def test_without_the_keeper_the_route_stays_broken(tmp_path: Path) -> None:
    """The control run: what the keeper repairs does not heal by itself."""
    routing = script(tmp_path)
    result = in_netns(FLAP.format(routing=routing, keeper="", stop=""))
    assert "back_ms=none" in result.stdout, result.stdout + result.stderr
    assert "check=1" in result.stdout


def test_the_keeper_repairs_a_deleted_rule_and_nft_table(tmp_path: Path) -> None:
    routing = script(tmp_path, interval=1)
    log = tmp_path / "keeper.log"
    result = in_netns(
        f"{routing} apply >/dev/null 2>&1 || exit 11\n"
        f"{routing} keep 2>{log} & keeper=$!\n"
        "sleep 0.5\n"
        "ip rule del pref 32000 fwmark 0x1 table 201\n"
        "nft delete table inet tna_nat\n"
        "sleep 2.5\n"
        f"{routing} check >/dev/null 2>&1; echo check=$?\n"
        'kill "$keeper"; wait "$keeper"\n'
    )
    assert "check=0" in result.stdout, result.stdout + result.stderr
    text = log.read_text()
    assert "repaired: rule fwmark 0x1 lookup 201" in text, text
    assert "repaired: nft table inet tna_nat" in text, text


def test_check_notes_a_main_route_on_another_interface_or_none(tmp_path: Path) -> None:
    routing = script(tmp_path)
    result = in_netns(
        f"{routing} check 2>&1 | grep note: ; echo ---\n"
        "ip link add eth0 type veth peer name eth0p\n"
        "ip link set eth0 up; ip link set eth0p up\n"
        "ip addr add 10.66.3.5/24 dev eth0\n"
        "ip route replace default via 10.66.3.1\n"
        f"{routing} check 2>&1 | grep note: ; echo ---\n"
        "ip route del default\n"
        f"{routing} check 2>&1 | grep note: ; echo ---\n"
    )
    same, other, none, _ = result.stdout.split("---\n")
    assert same == "", result.stdout
    assert (
        "note: the main default route leaves through eth0 but the gateway "
        "10.66.1.250 is on site0" in other
    )
    assert "net.ipv4.conf.site0.rp_filter=2" in other
    assert "note: the main table has no default route" in none


def test_the_keeper_says_once_why_it_cannot_repair_yet(tmp_path: Path) -> None:
    routing = script(tmp_path, interval=0.2)
    log = tmp_path / "keeper.log"
    result = in_netns(
        f"{routing} apply >/dev/null 2>&1 || exit 11\n"
        f"{routing} keep 2>{log} & keeper=$!\n"
        "sleep 0.3\n"
        "ip link set site0 down\n"
        "sleep 1.5\n"  # several periodic checks while the link is down
        "ip link set site0 up\n"
        "ip route add default via 10.66.1.1\n"
        "sleep 1\n"
        f"{routing} check >/dev/null 2>&1; echo check=$?\n"
        'kill "$keeper"; wait "$keeper"\n'
    )
    assert "check=0" in result.stdout, result.stdout + result.stderr
    text = log.read_text()
    assert text.count("cannot repair yet: route default via 10.66.1.250 table 201") == 1
    assert "the gateway is on no connected network" in text
    assert text.rstrip().endswith("repaired: route default via 10.66.1.250 table 201")
