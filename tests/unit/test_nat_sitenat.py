"""The drone's route check against the site's own routing script (issue 14).

The two halves of mode nat meet on a worker: ``tardis-netadapter site-nat``
renders ``tna-nat-routing`` (nft marking, ip rule, the table's route) from
the ``Network.nat`` section, and the drone's lib/route.sh checks, from the
same section, that the result carries its traffic. Here the real rendered
script is applied in the throwaway worker namespace of test_route_sh.py and
the drone's check (as nobody) must pass; after ``remove`` it must name the
missing rule, and after the table lost its route (a link flap) it must name
the wrong gateway. A change on either side that breaks the other fails here.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_nat_check import ROUTER_SNAT
from test_route_sh import SETUP, WHY_NOT, check_as_nobody, field

from tardis_netadapter.sitenat.config import NatSection
from tardis_netadapter.sitenat.render import InstallPaths, render_worker

pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "runs")

NAT = {
    "gateway": "10.66.1.250",
    "public_address": "203.0.113.100",
    "users": ["nobody"],
    "site_subnets": ["10.66.1.0/24"],
    "address_echo": "http://203.0.113.5:8080/",
}
PUBLIC = {"NAT_PUBLIC_ADDRESS": "203.0.113.100"}


@pytest.fixture
def installed() -> Iterator[Path]:
    """The worker's rendered files in a directory of their own."""
    directory = Path(tempfile.mkdtemp(prefix="tna-nat-site-"))
    try:
        nat, problems = NatSection.from_mapping(NAT, "nat")
        assert not problems and nat is not None
        paths = InstallPaths(
            sbin=str(directory),
            etc=str(directory),
            run=str(directory),
            systemd=str(directory),
            rt_tables=str(directory),
        )
        for name, rendered in render_worker(nat, paths).items():
            (directory / name).write_text(rendered.text)
            (directory / name).chmod(rendered.mode)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_check_passes_on_the_sites_routing_and_names_what_breaks(
    installed: Path,
) -> None:
    # the stand-in worker without the test's own marking and policy routing:
    # the site's script does that
    start = SETUP.index("nft -f - <<'EOF'")
    end = SETUP.index("# the site's ordinary default router")
    setup = SETUP[:start] + SETUP[end:]
    routing = installed / "tna-nat-routing"
    cases = (
        f"{routing} apply\n{routing} apply\n"
        + check_as_nobody("applied", **PUBLIC)
        + f"{routing} remove\n"
        + check_as_nobody("removed", **PUBLIC)
        + f"{routing} apply\nip route flush table 201\n"
        + check_as_nobody("flushed", **PUBLIC)
        + f"{routing} apply\n"
        + check_as_nobody("reapplied", **PUBLIC)
        + f"{routing} remove\n"
    )
    result = subprocess.run(
        ["unshare", "-n", "bash", "-c", setup + ROUTER_SNAT + cases],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("=== "):
            label = line[4:]
            found[label] = []
        else:
            found[label].append(line)
    good = "rc=0 ok=1 via=10.66.1.250 seen=203.0.113.100"
    assert found["applied"][0] == good, found
    assert found["reapplied"][0] == good, found
    assert field(found["removed"], "reason").startswith(
        "ip rule: no rule fwmark 0x1 lookup tna_nat (table 201)"
    )
    # the table's route gone: the marked lookup falls through to the main
    # table's default router
    assert field(found["flushed"], "reason") == (
        "ip route get 203.0.113.5 mark 0x1 goes via 10.66.1.1, expected via "
        "10.66.1.250 (nat.gateway)"
    )
