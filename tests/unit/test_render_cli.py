"""`tardis-netadapter render` and the shipped configs/ (lab, FZJ JURECA)."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
import types
from pathlib import Path

import asyncssh
import pytest
from cobald.daemon.core.config import load as cobald_load
from tardis.configuration.configuration import Configuration

import tardis_netadapter
from tardis_netadapter import cli, siteadapter
from tardis_netadapter import site as sites
from tardis_netadapter.siteconfig import load_site_from_file

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "configs" / "lab.yml"
JURECA = ROOT / "configs" / "fzj-jureca.yml"
SCRIPT = "#!/bin/bash\n# rendered drone script\nexec true\n"


@pytest.fixture(autouse=True)
def fake_render(monkeypatch):
    """render.render_drone_script is the drone-scripts work; a recorder stands in."""
    calls = []

    def render_drone_script(profile, budget, site_name, machine_type, **_):
        calls.append((site_name, machine_type, profile, budget))
        return SCRIPT

    fake = types.ModuleType("tardis_netadapter.render")
    fake.render_drone_script = render_drone_script
    monkeypatch.setitem(sys.modules, "tardis_netadapter.render", fake)
    monkeypatch.setattr(tardis_netadapter, "render", fake, raising=False)
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("tardis_netadapter.commands.render",))
    siteadapter.reset_caches()

    async def no_connections(*args, **kwargs):
        raise AssertionError("render must not connect anywhere")

    monkeypatch.setattr(asyncssh, "connect", no_connections)
    yield calls
    siteadapter.reset_caches()


def render(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["render", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_render_prints_command_header_and_script(capsys, fake_render):
    code, out, _ = render(capsys, LAB, "--site", "NetLab", "--machine-type", "cpu1")
    assert code == 0
    header, script = out.split(
        "# ---- script (use --script-only for the exact bytes) ----\n"
    )
    assert script == SCRIPT
    command = next(
        line[2:] for line in header.splitlines() if line.startswith("# sbatch ")
    )
    words = shlex.split(command)
    assert words[:2] == ["sbatch", "--parsable"]
    assert "--job-name=netlab-0000000000" in words
    (site, machine_type, profile, budget) = fake_render[0]
    assert (site, machine_type) == ("NetLab", "cpu1")
    assert profile.chain.proxies[0].port == 443 and budget.idle_timeout == 30


def test_render_command_only_is_what_the_adapter_submits(capsys):
    code, out, _ = render(
        capsys,
        LAB,
        "--site",
        "NetLab",
        "--machine-type",
        "cpu1",
        "--command-only",
        "--uuid",
        "netlab-abcdef0123",
    )
    assert code == 0
    words = shlex.split(out)
    assert words[words.index("-p") + 1] == "batch"
    assert words[words.index("-t") + 1] == "30"
    assert "--mem=256M" in words and "--output=tardis-%j.out" in words
    export = next(w for w in words if w.startswith("--export="))
    assert export == (
        "--export=TardisDroneCores=1,TardisDroneMemory=256,"
        "TardisDroneDisk=1048576,TardisDroneUuid=netlab-abcdef0123,"
        "TardisDroneWalltime=1800,PATH"  # the lab's export_environment
    )
    settings = load_site_from_file(LAB, "NetLab").settings
    expected = siteadapter.build_submission(
        settings, "cpu1", "netlab-abcdef0123", siteadapter.HTCONDOR_TRANSLATION
    )
    assert out == expected.command + "\n"


def test_render_script_only_is_exact(capsys):
    code, out, _ = render(
        capsys, JURECA, "--site", "JURECA", "--machine-type", "dc-cpu", "--script-only"
    )
    assert code == 0 and out == SCRIPT


def test_render_jureca_command(capsys):
    _, out, _ = render(
        capsys, JURECA, "--site", "JURECA", "--machine-type", "dc-cpu", "--command-only"
    )
    words = shlex.split(out)
    assert "--account=csinpp" in words and "-p" in words and "--mem=491520M" in words


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (
            ("idle_timeout: 30", "idle_timeout: -3"),
            "NetLab.Network.firewall.idle_timeout: got -3",
        ),
        (
            ('Walltime: "30"', "Walltime: soon"),
            "NetLab.MachineTypeConfiguration.cpu1.Walltime",
        ),
        (("Cores: 1", "Cores: one"), "NetLab.MachineMetaData.cpu1.Cores: got 'one'"),
        (
            ("      mode: socks", "      mode: socks\n      colour: blue"),
            "NetLab.Network.colour",
        ),
        (
            ("      adapter: NetSlurm", "      adapter: Slurm"),
            "Sites[NetLab].adapter: got 'Slurm'",
        ),
    ],
)
def test_bad_config_exits_2_naming_the_key(capsys, tmp_path, edit, fragment):
    text = LAB.read_text()
    assert edit[0] in text
    bad = tmp_path / "bad.yml"
    bad.write_text(text.replace(edit[0], edit[1], 1))
    code, out, err = render(capsys, bad, "--site", "NetLab", "--machine-type", "cpu1")
    assert code == 2 and out == ""
    assert fragment in err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--site", "Nowhere", "--machine-type", "cpu1"), "no site named 'Nowhere'"),
        (
            ("--site", "NetLab", "--machine-type", "gpu"),
            "no machine type 'gpu'; known: cpu1",
        ),
        (
            ("--site", "NetLab", "--machine-type", "cpu1", "--uuid", "a,b"),
            "--uuid: got 'a,b'",
        ),
    ],
)
def test_unknown_names_exit_2(capsys, args, fragment):
    code, _, err = render(capsys, LAB, *args)
    assert code == 2 and fragment in err


def test_missing_and_broken_files_exit_2(capsys, tmp_path):
    code, _, err = render(
        capsys, tmp_path / "nope.yml", "--site", "S", "--machine-type", "m"
    )
    assert code == 2 and "cannot read" in err
    broken = tmp_path / "broken.yml"
    broken.write_text("tardis: [unclosed\n")
    code, _, err = render(capsys, broken, "--site", "S", "--machine-type", "m")
    assert code == 2 and "not valid YAML" in err


def test_separate_tardis_file_is_followed(capsys, tmp_path):
    text = LAB.read_text()
    pipeline, tardis = text.split("\ntardis:\n")
    (tmp_path / "tardis.yml").write_text(
        "\n".join(line[2:] for line in tardis.splitlines())
    )
    (tmp_path / "cobald.yml").write_text(
        pipeline.replace(
            "- !NetadapterPoolFactory",
            "- !NetadapterPoolFactory {configuration: tardis.yml}",
        )
    )
    code, out, _ = render(
        capsys,
        tmp_path / "cobald.yml",
        "--site",
        "NetLab",
        "--machine-type",
        "cpu1",
        "--command-only",
    )
    assert code == 0 and out.startswith("sbatch ")


# -- the shipped configurations load in the real cobald daemon loader -----------


@pytest.mark.parametrize("path, site", [(LAB, "NetLab"), (JURECA, "JURECA")])
def test_shipped_configs_build_a_tardis_pool(tmp_path, monkeypatch, path, site):
    text = path.read_text().replace("${lab}", "tnlab")
    text = text.replace("/var/lib/cobald/drones.db", "drones.db")
    config = tmp_path / "cobald.yml"
    config.write_text(text)
    monkeypatch.chdir(tmp_path)
    saved = dict(Configuration._shared_state)
    Configuration._shared_state.clear()
    try:
        with cobald_load(str(config)):
            pass
        state = sites.get(site)
        assert state.settings.name == site
    finally:
        Configuration._shared_state.clear()
        Configuration._shared_state.update(saved)
        sys.modules.pop("tardis.adapters.sites.netslurm", None)


@pytest.mark.skipif(
    importlib.util.find_spec("tardis_netadapter.render") is None,
    reason="tardis_netadapter/render.py (drone scripts) not written yet",
)
def test_console_script_renders_real_script(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tardis_netadapter.cli",
            "render",
            str(LAB),
            "--site",
            "NetLab",
            "--machine-type",
            "cpu1",
            "--script-only",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#!")
    script = tmp_path / "drone.sh"
    script.write_text(result.stdout)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_render_never_touches_the_daemons_brake_state(tmp_path, monkeypatch, capsys):
    """The adapter's process writes the brake state for status; a CLI must not reset it."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    code = cli.main(
        [
            "render",
            str(LAB),
            "--site",
            "NetLab",
            "--machine-type",
            "cpu1",
            "--command-only",
        ]
    )
    assert code == 0
    assert not (tmp_path / "tardis-netadapter").exists()
