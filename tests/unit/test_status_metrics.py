"""The metrics exporter (issue 17): bind address and port, up when the adapter starts.

Before issue 17 the exporter started with the first listing, i.e. once the
site had a drone, and always on 127.0.0.1. These tests scrape a real HTTP
exporter right after the adapter is built, with no drone at all.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.request

import pytest
from fakelogin import ShellExecutor, record
from fakesite import NETWORK, site_section

from tardis_netadapter import site as sites
from tardis_netadapter.connectivity.heartbeat import from_dict
from tardis_netadapter.connectivity.metrics import ConnectivityMetrics, exported_names
from tardis_netadapter.connectivity.verdict import Judgement, Verdict
from tardis_netadapter.siteadapter import NetSlurmAdapter


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return response.read().decode()


def monitored(port: int, **keys) -> dict:
    return {
        **NETWORK,
        "monitoring": {"heartbeat_dir": "~/hb", "metrics_port": port, **keys},
    }


@pytest.mark.parametrize(
    "address, ok",
    [("127.0.0.1", True), ("0.0.0.0", True), ("::1", True), ("localhost", False)],
)
def test_metrics_address_must_be_an_ip_address(address, ok):
    from tardis_netadapter.config import load_profile
    from tardis_netadapter.schema import ConfigurationError

    base = {"mode": "direct", "chain": {"tool": "none"}, "pool": {"collector": "cm"}}
    profile = {**base, "monitoring": {"metrics_port": 9100, "metrics_address": address}}
    if ok:
        assert load_profile(profile).monitoring.metrics_address == address
        return
    with pytest.raises(ConfigurationError) as caught:
        load_profile(profile)
    message = str(caught.value)
    assert "Network.monitoring.metrics_address: got 'localhost'" in message
    assert "0.0.0.0" in message  # the fix is named


def test_the_default_bind_address_is_loopback():
    from tardis_netadapter.profile import Monitoring

    assert Monitoring().metrics_address == "127.0.0.1"


async def test_endpoint_is_up_when_the_adapter_is_built_without_any_drone(
    configure, login
):
    port = free_port()
    executor = ShellExecutor(login["env"])
    configure(site_section(executor, Network=monitored(port)))
    NetSlurmAdapter(machine_type="small", site_name="NetLab")
    url = f"http://127.0.0.1:{port}/metrics"
    text = ""
    for _ in range(50):  # the exporter starts as a task on this loop
        await asyncio.sleep(0.05)
        try:
            text = await asyncio.to_thread(scrape, url)
            break
        except OSError:
            continue
    assert executor.calls == 0  # nothing asked the site: no drone, no listing
    assert 'tna_drones{site="NetLab",verdict="connected"} 0' in text
    assert 'tna_site_outage{site="NetLab",stage="login"} 0' in text
    assert 'tna_brake_engaged{site="NetLab"} 0' in text
    assert 'tna_grace_seconds{site="NetLab"}' in text
    assert 'tna_drones_ended_total{site="NetLab",verdict="lost"} 0' in text
    # a scrape is not worth a log line (unless the logging configuration says so)
    assert logging.getLogger("aiohttp.access").level == logging.WARNING
    sites.get("NetLab")._exporter_task.cancel()


def test_without_a_running_loop_the_start_goes_to_cobalds_runtime(
    configure, login, monkeypatch
):
    """As in ``cobald run``: adapters are built before any event loop runs."""
    from cobald.daemon import runtime

    adopted = []
    monkeypatch.setattr(
        runtime, "adopt", lambda payload, flavour: adopted.append((payload, flavour))
    )
    port = free_port()
    configure(
        site_section(
            ShellExecutor(login["env"]),
            Network=monitored(port, metrics_address="127.0.0.1"),
        )
    )
    NetSlurmAdapter(machine_type="small", site_name="NetLab")
    NetSlurmAdapter(machine_type="large", site_name="NetLab")  # same site: once
    assert len(adopted) == 1 and adopted[0][1] is asyncio

    async def run_payload() -> str:
        await adopted[0][0]()  # what COBalD's asyncio runner does with it
        return await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")

    assert 'tna_drones_running{site="NetLab"} 0' in asyncio.run(run_payload())


async def test_a_taken_port_is_logged_and_never_raised(configure, login, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        configure(site_section(ShellExecutor(login["env"]), Network=monitored(port)))
        NetSlurmAdapter(machine_type="small", site_name="NetLab")
        await sites.get("NetLab")._exporter_task
    assert f"metrics exporter on 127.0.0.1:{port} failed" in caplog.text
    assert "metrics_port" in caplog.text


def judgement(verdict: Verdict) -> Judgement:
    return Judgement(verdict=verdict, reason="")


def heartbeat(uuid: str, restarts: int):
    return from_dict(record(uuid, 1000.0, restarts=restarts))


def test_ended_drones_are_counted_once_each_and_restarts_add_up():
    metrics = ConnectivityMetrics()
    metrics.prime("NetLab", 15, 60)
    lost = {"a": judgement(Verdict.LOST), "b": judgement(Verdict.CONNECTED)}
    records = {"a": heartbeat("a", 2), "b": heartbeat("b", 1)}
    for _ in range(3):  # the same verdict seen in three cycles
        metrics.update("NetLab", lost, records)
    labels = {"site": "NetLab", "verdict": "lost"}
    assert metrics.drones_ended.get(labels) == 1
    assert metrics.tunnel_restarts.get({"site": "NetLab"}) == 3
    records["b"] = heartbeat("b", 4)  # b's supervisor restarted 3 more times
    metrics.update("NetLab", {"b": judgement(Verdict.CONNECTED)}, records)
    assert metrics.tunnel_restarts.get({"site": "NetLab"}) == 6
    assert metrics.running.get({"site": "NetLab"}) == 1


def test_exported_names_include_the_summary_series():
    names = exported_names()
    assert {"tna_drones", "tna_probe_latency_milliseconds_count"} <= names
    assert "tna_probe_latency_milliseconds_sum" in names
