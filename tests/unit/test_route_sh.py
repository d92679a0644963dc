"""drone_scripts/lib/route.sh (mode nat, issue 14) against a real routing table.

Everything runs inside a throwaway network namespace made here as root
(``unshare -n``), documentation and lab-shaped addresses only, nothing leaves
it. The namespace is the worker: a veth link ``site0`` 10.66.1.10/24 to a
second, nested namespace that stands in for the NAT router (it holds the
gateway 10.66.1.250, the "outside" address 203.0.113.5 with a TCP listener
and an address echo on :8080 answering with the caller's address). The
worker's nft rule marks the packets of user nobody (``meta skuid``), and
``ip rule``/``ip route`` send the mark through table 201 to the gateway, as
``tna-nat-routing apply`` does on a real worker. The check runs as nobody
(setpriv), as a drone would: ``ip rule``, ``ip route get`` and the connects
need no privilege. Then the routing is broken in the ways a worker breaks
(rule gone, a wrong gateway, a user that is not marked) and each failure must
name what is wrong.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "drone_scripts" / "lib"
NOBODY = 65534
TOOLS = ("unshare", "nsenter", "setpriv", "ip", "nft", "socat", "timeout")


def _why_not() -> str:
    if os.geteuid() != 0:
        return "needs root for a throwaway network namespace (unshare -n)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    return ""


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "runs")

# The worker's side, run as root inside `unshare -n`: the router namespace,
# the marking and the policy routing; then CASES; then the router's
# processes are stopped by pid.
SETUP = r"""
set -u
ip link set lo up
unshare -n sleep 120 &
router=$!
for _ in $(seq 50); do
    [ "$(readlink /proc/$router/ns/net)" != "$(readlink /proc/self/ns/net)" ] && break
    sleep 0.05
done
ip link add site0 type veth peer name nat0
ip link set nat0 netns "$router"
ip addr add 10.66.1.10/24 dev site0
ip link set site0 up
in_router() { nsenter -t "$router" -n "$@"; }
in_router ip link set lo up
in_router ip addr add 10.66.1.250/24 dev nat0
in_router ip addr add 203.0.113.5/32 dev lo
in_router ip link set nat0 up
in_router ip route add default dev nat0
nsenter -t "$router" -n timeout 150 socat TCP-LISTEN:9618,bind=203.0.113.5,fork,reuseaddr \
    SYSTEM:true &
listener=$!
echo_script=$(mktemp)
printf '%s\n' '#!/bin/sh' 'while read -r l && [ "${#l}" -gt 1 ]; do :; done' \
    'printf "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n%s\n" "$SOCAT_PEERADDR"' \
    >"$echo_script"
chmod 755 "$echo_script"
nsenter -t "$router" -n timeout 150 socat TCP-LISTEN:8080,bind=203.0.113.5,fork,reuseaddr \
    EXEC:"$echo_script" &
echo_server=$!
# (timeout: nothing outlives a test that was killed before its trap ran)
stop() {
    kill "$listener" "$echo_server" "$router" 2>/dev/null
    wait 2>/dev/null
    rm -f "$echo_script"
}
trap stop EXIT
nft -f - <<'EOF'
table inet tna_test {
    chain output {
        type route hook output priority mangle; policy accept;
        ip daddr 10.66.1.0/24 return
        meta skuid 65534 meta mark set 0x1
    }
}
EOF
ip rule add fwmark 1 table 201
ip route add default via 10.66.1.250 dev site0 table 201
# the site's ordinary default router (nothing answers there: "nothing out");
# connect() needs a route in the main table before the mark reroutes it
ip route add default via 10.66.1.1 dev site0
for _ in $(seq 50); do
    in_router bash -c 'exec 3<>/dev/tcp/203.0.113.5/8080' 2>/dev/null && break
    sleep 0.1
done
"""


def settings(**override: str) -> str:
    values = {
        "NAT_GATEWAY": "10.66.1.250",
        "NAT_PUBLIC_ADDRESS": "10.66.1.10",  # no NAT in the stand-in router
        "NAT_MARK": "1",
        "NAT_TABLE": "201",
        "NAT_TABLE_NAME": "tna_nat",
        "NAT_USERS": "(nobody)",
        "NAT_GROUPS": "()",
        "NAT_CHECK_HOST": "203.0.113.5",
        "NAT_CHECK_PORT": "9618",
        "NAT_ADDRESS_ECHO": "http://203.0.113.5:8080/",
        "NAT_CHECK_TIMEOUT_S": "2",
        "NAT_READY_TIMEOUT_MS": "300",
        **override,
    }
    return "".join(
        f"{name}={value}\n"
        if value.startswith("(")
        else f"{name}={shlex.quote(value)}\n"
        for name, value in values.items()
    )


def check_as_nobody(label: str, strict: bool = False, **override: str) -> str:
    """A case: run nat_route_check as nobody; print its result under LABEL.
    ``strict``: under ``set -euo pipefail``, as the watchdog's tests run it."""
    body = (
        ("set -euo pipefail\n" if strict else "")
        + settings(**override)
        + f"source {shlex.quote(str(LIB / 'route.sh'))}\n"
        + "rc=0; nat_route_check || rc=$?\n"
        + 'printf "rc=%s ok=%s via=%s seen=%s\\n" "$rc" "$NAT_ROUTE_OK" '
        '"$NAT_ROUTE_VIA" "$NAT_ROUTE_SEEN"\n'
        + 'printf "reason=%s\\n" "$NAT_ROUTE_REASON"\n'
        + 'printf "item=%s\\n" "${NAT_ROUTE_ITEMS[@]}"\n'
    )
    return (
        f"echo '=== {label}'\n"
        f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
        f'env -i PATH="$PATH" bash -c {shlex.quote(body)}\n'
    )


def run(cases: str) -> dict[str, list[str]]:
    result = subprocess.run(
        ["unshare", "-n", "bash", "-c", SETUP + cases],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found: dict[str, list[str]] = {}
    label = ""
    for line in result.stdout.splitlines():
        if line.startswith("=== "):
            label = line[4:]
            found[label] = []
        elif label:
            found[label].append(line)
    return found


@pytest.fixture(scope="module")
def results() -> dict[str, list[str]]:
    cases = (
        check_as_nobody("good")
        + check_as_nobody("wrong public", NAT_PUBLIC_ADDRESS="10.66.2.100")
        + check_as_nobody("no echo", NAT_ADDRESS_ECHO="")
        + check_as_nobody("not marked", NAT_USERS="(aliprod)", NAT_GROUPS="(alice)")
        + check_as_nobody("by group", NAT_USERS="()", NAT_GROUPS="(nogroup)")
        + check_as_nobody("hex mark", NAT_MARK="0x1")
        + check_as_nobody("strict", strict=True, NAT_GROUPS="()")
        + "ip rule del fwmark 1 table 201\n"
        + check_as_nobody("no rule")
        + check_as_nobody("strict no rule", strict=True)
        + "ip rule add fwmark 1 table 201\n"
        + "ip route replace default via 10.66.1.251 dev site0 table 201\n"
        + check_as_nobody("wrong via")
        + "ip route flush table 201\n"
        + check_as_nobody("no route")
        + "ip route add default via 10.66.1.250 dev site0 table 201\n"
        + check_as_nobody("repaired")
        + "nft flush ruleset\n"
        + check_as_nobody("mark gone")
        + "ip route del default via 10.66.1.1 dev site0\n"
        + check_as_nobody("no main route")
    )
    return run(cases)


def field(lines: list[str], name: str) -> str:
    for line in lines:
        if line.startswith(f"{name}="):
            return line[len(name) + 1 :]
    raise AssertionError(f"no {name}= in {lines}")


def test_a_worker_with_the_nat_route_passes(results):
    good = results["good"]
    assert good[0] == "rc=0 ok=1 via=10.66.1.250 seen=10.66.1.10", good
    assert field(good, "reason") == ""
    items = [line.split(" ", 2)[:2] for line in good if line.startswith("item=")]
    assert items == [
        ["item=user", "ok"],
        ["item=rule", "ok"],
        ["item=via", "ok"],
        ["item=connect", "ok"],
        ["item=address", "ok"],
    ]
    assert "fwmark 0x1 lookup 201" in "\n".join(good)
    assert results["repaired"][0] == good[0]
    assert results["hex mark"][0] == good[0]
    assert results["by group"][0] == good[0]
    assert results["strict"][0] == good[0]
    assert "in group nogroup" in "\n".join(results["by group"])


def test_without_an_address_echo_the_public_address_is_not_checked(results):
    lines = results["no echo"]
    assert lines[0] == "rc=0 ok=1 via=10.66.1.250 seen=", lines
    assert "item=address skip no nat.address_echo" in "\n".join(lines)


def test_the_echo_seeing_another_address_names_both(results):
    lines = results["wrong public"]
    assert lines[0].startswith("rc=1 ok=0 via=10.66.1.250 seen=10.66.1.10"), lines
    assert field(lines, "reason") == (
        "address echo http://203.0.113.5:8080/ saw us as 10.66.1.10, expected "
        "nat.public_address 10.66.2.100"
    )


def test_a_missing_rule_is_named(results):
    lines = results["no rule"]
    assert lines[0].startswith("rc=1 ok=0"), lines
    reason = field(lines, "reason")
    assert reason.startswith("ip rule: no rule fwmark 0x1 lookup tna_nat (table 201)")
    assert results["strict no rule"][:2] == lines[:2]


def test_a_wrong_gateway_is_named(results):
    lines = results["wrong via"]
    assert lines[0].startswith("rc=1 ok=0 via=10.66.1.251"), lines
    assert field(lines, "reason") == (
        "ip route get 203.0.113.5 mark 0x1 goes via 10.66.1.251, expected via "
        "10.66.1.250 (nat.gateway)"
    )


def test_an_empty_table_is_named(results):
    lines = results["no route"]
    assert lines[0].startswith("rc=1 ok=0 via="), lines
    reason = field(lines, "reason")
    assert reason.startswith("ip route get 203.0.113.5 mark 0x1"), reason
    assert "expected via 10.66.1.250" in reason


def test_a_user_the_site_does_not_mark_is_named(results):
    lines = results["not marked"]
    assert lines[0].startswith("rc=1 ok=0"), lines
    reason = field(lines, "reason")
    assert reason.startswith("drone user nobody (groups: nogroup) is in neither")
    assert "nat.users (aliprod) nor nat.groups (alice)" in reason


def test_unmarked_packets_do_not_reach_the_target(results):
    # the rule and route are there, but nothing marks nobody's packets: the
    # route lookup with the mark still passes, the connect itself fails
    lines = results["mark gone"]
    assert lines[0].startswith("rc=1 ok=0 via=10.66.1.250"), lines
    reason = field(lines, "reason")
    assert reason.startswith("TCP connect to 203.0.113.5:9618 failed:"), reason


def test_no_main_table_route_is_explained(results):
    # the marked table is fine, but connect() fails before any mark is set
    lines = results["no main route"]
    assert lines[0].startswith("rc=1 ok=0 via=10.66.1.250"), lines
    reason = field(lines, "reason")
    assert reason.startswith(
        "TCP connect to 203.0.113.5:9618 failed: Network is unreachable; the "
        "main table has no route to 203.0.113.5"
    ), reason


def test_the_stage_without_monitoring_ends_the_drone_with_exit_35(tmp_path):
    body = (
        settings()
        + f"source {shlex.quote(str(LIB / 'common.sh'))}\n"
        + f"source {shlex.quote(str(LIB / 'route.sh'))}\n"
        + "SITE_NAME=s MACHINE_TYPE=m NETWORK_MODE=nat TMPDIR=/tmp\n"
        + "drone_setup\nnat_route_stage\necho READY\n"
    )
    stage = (
        "ip rule del fwmark 1 table 201\n"
        f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups env -i "
        f'PATH="$PATH" TardisDroneUuid=s-1 bash -c {shlex.quote(body)} 2>&1; '
        'echo "exit=$?"\n'
        "ip rule add fwmark 1 table 201\n"
        f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups env -i "
        f'PATH="$PATH" TardisDroneUuid=s-2 bash -c {shlex.quote(body)} 2>&1; '
        'echo "exit=$?"\n'
    )
    result = subprocess.run(
        ["unshare", "-n", "bash", "-c", SETUP + stage],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = result.stdout
    broken, _, good = out.partition("exit=35\n")
    assert "stage route failed: ip rule: no rule fwmark 0x1" in broken, out
    assert "READY" not in broken
    assert "stage route ready after" in good and "READY" in good, out
    assert "the pool sees us as 10.66.1.10" in good
    assert good.rstrip().endswith("exit=0"), out
