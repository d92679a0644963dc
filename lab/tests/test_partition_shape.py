"""The EPN partition's shape (issue 15): pure layout and config data, no lab."""

from __future__ import annotations

import ipaddress

from tardis_netadapter_lab import cnet, configs
from tardis_netadapter_lab import layout as L


def test_epngw_is_a_host_with_the_gateway_and_a_public_leg() -> None:
    lab = L.LabLayout(name="shape", workers=2)
    assert "epngw" in lab.hosts
    assert lab.addresses("epngw") == {
        "partition": L.PARTITION_GATEWAY,
        "public": L.EPNGW_PUBLIC,
    }
    assert L.namespace_pattern("shape").match("shape-epngw")
    assert ipaddress.ip_address(L.EPNGW_PUBLIC) in ipaddress.ip_network(L.PUBLIC_NET)
    # no host but epngw has a partition address: workers only get ib1 unnumbered
    partition = ipaddress.ip_network(L.PARTITION_NET)
    on_partition = [
        host
        for host in lab.hosts
        for address in lab.addresses(host).values()
        if ipaddress.ip_address(address) in partition
    ]
    assert on_partition == ["epngw"]
    every = [a for host in lab.hosts for a in lab.addresses(host).values()]
    assert len(every) == len(set(every))


def test_conflist_is_macvlan_on_ib1_with_host_local_in_the_partition() -> None:
    lab = L.LabLayout(name="shape", workers=1)
    conflist = cnet.conflist(lab)
    assert conflist["name"] == L.PARTITION_NETWORK == "epn-public"
    (plugin,) = conflist["plugins"]
    assert (plugin["type"], plugin["master"], plugin["mode"]) == (
        "macvlan",
        L.PARTITION_IF,
        "bridge",
    )
    ipam = plugin["ipam"]
    ((rng,),) = ipam["ranges"]
    partition = ipaddress.ip_network(L.PARTITION_NET)
    assert rng["subnet"] == L.PARTITION_NET
    assert rng["gateway"] == L.PARTITION_GATEWAY
    assert ipaddress.ip_address(rng["rangeStart"]) in partition
    assert ipaddress.ip_address(rng["rangeEnd"]) in partition
    assert L.PARTITION_GATEWAY not in (rng["rangeStart"], rng["rangeEnd"])
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}]
    assert ipam["dataDir"] == str(lab.cni_lease_dir)
    assert lab.cni_lease_dir.is_relative_to(lab.apptainer_dir)


def test_apptainer_conf_allows_the_drone_user_and_the_network_only() -> None:
    lab = L.LabLayout(name="shape", workers=1)
    lines = cnet.apptainer_conf(lab).splitlines()
    assert "allow setuid = yes" in lines
    assert f"allow net users = {lab.drone_user}" in lines
    assert f"allow net networks = {L.PARTITION_NETWORK}" in lines
    assert f"cni plugin path = {cnet.CNI_PLUGINS_DIR}" in lines
    assert lab.other_user not in cnet.apptainer_conf(lab)


def test_the_labs_container_net_section_names_what_the_lab_built() -> None:
    lab = L.LabLayout(name="shape", workers=1)
    section = configs.container_net_section(lab)
    assert section["network"] == cnet.conflist(lab)["name"]
    assert section["subnet"] == L.PARTITION_NET
    assert section["check_target"] == f"{L.OUTSIDE_HTTP}:{L.COLLECTOR_PORT}"
    assert section["address_echo"] == configs.echo_url()
    container = configs.container_section(lab)
    assert container["apptainer"] == str(lab.apptainer)
    assert container["apptainer"].startswith("/")
    assert container["gpu"] == "amd"
