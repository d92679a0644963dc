"""``check``: offline items, the probe script (run for real, loopback only), fixes."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tardis_netadapter.cli import main
from tardis_netadapter.commands.check import MARK, Item, parse_probe, probe_script
from tardis_netadapter.siteconfig import load_site_settings

ROOT = Path(__file__).resolve().parents[2]


def settings_for(network: dict):
    section = {
        "MachineTypes": ["small"],
        "MachineTypeConfiguration": {"small": {"Walltime": "60"}},
        "MachineMetaData": {"small": {"Cores": 1, "Memory": 1, "Disk": 1}},
        "Network": network,
    }
    return load_site_settings("Site", section)


def run_probe(script: str, home: Path, path: str) -> list[Item]:
    result = subprocess.run(
        ["/bin/sh", "-s"],
        input=script,
        capture_output=True,
        text=True,
        env={"HOME": str(home), "PATH": path},
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return parse_probe(result.stdout)


@pytest.fixture
def listener():
    """A loopback TCP listener standing in for the first hop out of the site."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_probe_reports_what_is_missing_with_a_fix(tmp_path, listener):
    home = tmp_path / "home with space"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "key; rm -rf x").write_text("not a real key\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "squeue", "scancel", "ssh", "proxychains4"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    for tool in ("timeout", "bash", "mkdir", "ssh-keygen"):  # what the probe runs
        (bin_dir / tool).symlink_to(shutil.which(tool))
    network = {
        "tunnel": {
            "hops": [{"host": "127.0.0.1"}],
            "identity_file": "~/.ssh/key; rm -rf x",
            "known_hosts": "~/.ssh/known_hosts",
            "supervisor": "autossh",
        },
        "chain": {
            "proxies": [{"type": "socks5", "host": "127.0.0.1", "port": listener}]
        },
        "monitoring": {"heartbeat_dir": "~/$(touch pwned)/hb"},
    }
    script = probe_script(settings_for(network))
    items = run_probe(script, home, str(bin_dir))
    by_name = {i.what.split(": ")[0]: i for i in items}
    assert by_name["cmd:sbatch"].ok and by_name["cmd:proxychains4"].ok
    assert not by_name["cmd:autossh"].ok
    assert "tunnel.supervisor: builtin" in by_name["cmd:autossh"].fix
    assert by_name["key"].ok
    assert not by_name["known_hosts:127.0.0.1"].ok
    assert "known_hosts" in by_name["known_hosts:127.0.0.1"].fix
    assert by_name[f"outbound:127.0.0.1:{listener}"].ok
    assert by_name["heartbeat-dir"].ok
    # the hostile directory name was created literally, nothing was executed
    assert (home / "$(touch pwned)" / "hb").is_dir()
    assert not Path("pwned").exists() and not (home / "pwned").exists()


def test_probe_output_noise_is_ignored():
    items = parse_probe(f"motd line\n{MARK} cmd:sbatch fail missing\nstray\n")
    assert [(i.ok, i.what) for i in items] == [(False, "cmd:sbatch: missing")]


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yml")))
def test_every_example_config_checks_offline(config, capsys):
    code = main(["check", str(config)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[FAIL]" not in out and out.rstrip().endswith("ready")


def test_a_bad_config_names_the_key(tmp_path, capsys):
    text = (
        (ROOT / "configs" / "lab.yml")
        .read_text()
        .replace("idle_timeout: 30", "idle_timeout: -5")
    )
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    assert main(["check", str(bad)]) == 2
    assert "NetLab.Network.firewall.idle_timeout: got -5" in capsys.readouterr().err


def test_probe_asks_for_what_the_chosen_supervisor_needs():
    hops = [{"host": "127.0.0.1"}]
    builtin = probe_script(settings_for({"tunnel": {"hops": hops}}))
    assert "have timeout" in builtin and "have autossh" not in builtin
    autossh = probe_script(
        settings_for({"tunnel": {"hops": hops, "supervisor": "autossh"}})
    )
    assert "have autossh" in autossh
