"""``render``'s header prints the values the adapter derives, as the docs promise.

docs/configuration.md says ``render`` shows every derived value (grace,
connect deadline, ...); an operator at a site found none of them. Each is
compared with the budget the adapter itself derives (keepalive.py), and a
value set in the configuration is marked as set.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tardis_netadapter.cli import main
from tardis_netadapter.siteconfig import load_site_from_file, read_yaml, tardis_section

ROOT = Path(__file__).resolve().parents[2]


def header(config: Path, site: str, machine_type: str, capsys) -> str:
    assert (
        main(["render", str(config), "--site", site, "--machine-type", machine_type])
        == 0
    )
    out = capsys.readouterr().out
    return out.split("# ---- script", 1)[0]


def test_grace_and_connect_deadline_are_printed_as_derived(capsys) -> None:
    config = ROOT / "configs" / "fzj-jureca.yml"
    text = header(config, "JURECA", "dc-cpu", capsys)
    budget = load_site_from_file(config, "JURECA").settings.budget
    assert f"monitoring.grace: {budget.grace}s (derived)" in text
    assert f"monitoring.connect_deadline: {budget.connect_deadline}s (derived)" in text
    assert (
        f"monitoring.heartbeat_interval: {budget.watchdog_interval}s (derived)" in text
    )
    assert (
        f"keepalive.server_alive_interval: {budget.server_alive_interval}s (derived)"
        f" x server_alive_count_max {budget.server_alive_count_max}: a dead tunnel "
        f"is noticed after {budget.dead_tunnel_detection}s"
    ) in text
    # FZJ's idle timeout is 300 s: a third would be 100 s, the cap keeps 30 s
    assert budget.idle_timeout == 300 and budget.server_alive_interval == 30
    assert "UPDATE_INTERVAL=150" in text
    assert "status_max_age: 30s (set)" in text and "command_timeout: 120s" in text


def test_values_set_in_the_configuration_are_marked_set(tmp_path, capsys) -> None:
    lab = ROOT / "configs" / "lab.yml"
    data, _ = tardis_section(read_yaml(lab), lab)
    section = data["NetLab"]
    section.pop("status_max_age")
    section["Network"]["monitoring"] = {"grace": 500, "connect_deadline": 900}
    section.pop("executor", None)
    path = tmp_path / "site.yml"
    path.write_text(yaml.safe_dump({"Sites": data["Sites"], "NetLab": section}))
    text = header(path, "NetLab", "cpu1", capsys)
    assert "monitoring.grace: 500s (set)" in text
    assert "monitoring.connect_deadline: 900s (set)" in text
    heartbeat = data["Sites"][0]["drone_heartbeat_interval"]
    assert re.search(rf"status_max_age: {heartbeat / 2:g}s \(derived: half of", text)


def test_vpn_mode_prints_its_dpd(capsys) -> None:
    config = ROOT / "configs" / "lab-vpn.yml"
    site = load_site_from_file(config, "NetLab")
    machine_type = next(iter(site.settings.machine_types))
    text = header(config, "NetLab", machine_type, capsys)
    assert re.search(r"vpn\.dpd: \d+s \((derived|set)\): openconnect --force-dpd", text)


def test_a_misspelt_machine_type_is_suggested(capsys) -> None:
    config = ROOT / "configs" / "fzj-jureca.yml"
    code = main(
        ["render", str(config), "--site", "JURECA", "--machine-type", "dc-cpus"]
    )
    assert code == 2
    assert (
        "no machine type 'dc-cpus' (did you mean 'dc-cpu'?)" in capsys.readouterr().err
    )


def test_only_script_only_output_is_a_script_sbatch_takes(capsys) -> None:
    """sbatch wants '#!' on the first line: deployment.md saves --script-only."""
    config = str(ROOT / "configs" / "fzj-jureca.yml")
    args = ["render", config, "--site", "JURECA", "--machine-type", "dc-cpu"]
    assert main(args) == 0
    assert not capsys.readouterr().out.startswith("#!")
    assert main([*args, "--script-only"]) == 0
    assert capsys.readouterr().out.startswith("#!/bin/bash\n")
    page = (ROOT / "docs" / "deployment.md").read_text()
    assert "--script-only > drone.sh" in page
