"""render_drone_script and the configuration files it carries.

The rendered files are checked by the programs that read them where possible:
ssh's own parser (``ssh -G``), proxychains4, HTCondor's configuration parser,
and bash itself (the script is sourced and its functions called).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tardis_netadapter import condor_knobs, render, templates
from tardis_netadapter.config import NetworkProfile, load_profile
from tardis_netadapter.keepalive import derive_budget

ROOT = Path(__file__).resolve().parents[2]

LOGIN = {"host": "10.66.1.1", "user": "drone"}
GATEWAY = {"host": "10.66.2.3", "port": 443}
FZJ: dict[str, Any] = {
    "firewall": {"idle_timeout": 20},
    "tunnel": {
        "hops": [LOGIN],
        # numbered ports, as before `auto` (tests/unit/test_render_ports.py)
        "socks_port": 1080,
        "forwards": [{"listen_port": 3128, "host": "127.0.0.1", "port": 3128}],
    },
    "chain": {
        "proxies": [{"type": "socks5", "host": "10.66.2.2", "port": 443}],
        "localnet": ["127.0.0.0/8", "10.66.1.0/24"],
    },
    "cvmfs": {
        "mode": "mountrepo",
        "repositories": ["cms.cern.ch", "lab.cern.ch"],
        "http_proxy": "http://127.0.0.1:3128",
    },
    "pool": {"collector": "10.66.2.1:9618"},
}


def profile_of(data: dict[str, Any]) -> NetworkProfile:
    return load_profile(json.loads(json.dumps(data)))


def script_of(data: dict[str, Any], site: str = "FZJ", machine: str = "cpu") -> str:
    profile = profile_of(data)
    return render.render_drone_script(
        profile,
        derive_budget(profile),
        site_name=site,
        machine_type=machine,
        job_id_variable="SLURM_JOB_ID",
    )


def bash_with(script: str, body: str, tmp_path: Path, **env: str) -> str:
    """Source the rendered script (main does not run) and run ``body``."""
    path = tmp_path / "drone.sh"
    path.write_text(script)
    result = subprocess.run(
        ["bash", "-c", f'source "$1"\n{body}', "test", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def words(output: str) -> list[str]:
    return output.split("\0")[:-1]


# -- templates and determinism ---------------------------------------------------


def test_templates_are_found_in_the_checkout() -> None:
    assert (render.template_dir() / "drone.sh.j2").is_file()


def test_templates_are_found_in_an_installed_package(
    tmp_path: Path, monkeypatch
) -> None:
    """Installed, drone_scripts/ is the namespace package tardis_netadapter.drone_scripts."""
    (tmp_path / "drone.sh.j2").write_text("#!/bin/bash\n")
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(templates.importlib.util, "find_spec", lambda name: spec)
    assert render.template_dir() == tmp_path


def test_rendering_is_deterministic_and_has_no_per_drone_values() -> None:
    first, second = script_of(FZJ), script_of(FZJ)
    assert first == second
    assert first.startswith("#!/bin/bash\n")
    assert "#SBATCH" not in first
    assert re.search(r"\$\{?TardisDroneUuid", first)


def test_no_key_material_only_the_path() -> None:
    data = {**FZJ, "tunnel": {**FZJ["tunnel"], "identity_file": "/keys/drone_ed25519"}}
    script = script_of(data)
    assert "IdentityFile /keys/drone_ed25519" in script
    assert "PRIVATE KEY" not in script


# -- ssh_config: read back with ssh's own parser -----------------------------------


def ssh_settings(
    config: str, host: str, tmp_path: Path, options: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    if shutil.which("ssh") is None:
        pytest.skip("ssh is not installed")
    path = tmp_path / "ssh_config"
    path.write_text(config)
    output = subprocess.run(
        ["ssh", "-G", "-F", str(path), *options, host],
        capture_output=True,
        text=True,
        check=True,
        env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
    ).stdout
    settings: dict[str, list[str]] = {}
    for line in output.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, []).append(value)
    return settings


def forward_options(data: dict[str, Any], tmp_path: Path, *ports: int) -> tuple:
    """The -L/-D options tunnel_command gives ssh once the ports are chosen."""
    argv = words(
        bash_with(
            script_of(data),
            f"DRONE_DIR={tmp_path}; TUNNEL_SUPERVISOR=loop;"
            f" TUNNEL_PORTS=({' '.join(map(str, ports))}); tunnel_command",
            tmp_path,
        )
    )
    assert argv[:4] == ["ssh", "-N", "-F", f"{tmp_path}/ssh_config"]
    return tuple(argv[4:-1])


def test_one_hop_tunnel_as_ssh_reads_it(tmp_path: Path) -> None:
    profile = profile_of(FZJ)
    config = render.ssh_config_text(profile, derive_budget(profile))
    options = forward_options(FZJ, tmp_path, 1080, 3128)
    ssh = ssh_settings(config, "tardis-hop-1", tmp_path, options)
    assert ssh["hostname"] == ["10.66.1.1"]
    assert ssh["user"] == ["drone"]
    assert ssh["port"] == ["22"]
    assert ssh["dynamicforward"] == ["[127.0.0.1]:1080"]
    assert ssh["localforward"] == ["[127.0.0.1]:3128 [127.0.0.1]:3128"]
    assert ssh["batchmode"] == ["yes"]
    assert ssh["exitonforwardfailure"] == ["yes"]
    assert ssh["stricthostkeychecking"] == ["true"]
    assert ssh["identitiesonly"] == ["yes"]
    assert ssh["identityfile"] == ["~/.ssh/id_ed25519"]
    assert ssh["userknownhostsfile"][0].endswith("/.ssh/known_hosts")  # ~ expanded
    assert ssh["serveraliveinterval"] == ["6"]  # a third of the 20 s idle timeout
    assert ssh["serveralivecountmax"] == ["3"]
    assert "proxyjump" not in ssh


def test_hops_become_a_proxyjump_chain_with_forwards_on_the_last(
    tmp_path: Path,
) -> None:
    third = {"host": "gw2.example.org", "port": 2222, "user": "relay"}
    data = {**FZJ, "tunnel": {**FZJ["tunnel"], "hops": [LOGIN, GATEWAY, third]}}
    profile = profile_of(data)
    config = render.ssh_config_text(profile, derive_budget(profile))
    options = forward_options(data, tmp_path, 1080, 3128)
    last = ssh_settings(config, "tardis-hop-3", tmp_path, options)
    assert last["hostname"] == ["gw2.example.org"]
    assert last["port"] == ["2222"]
    assert last["proxyjump"] == ["tardis-hop-2"]
    assert last["dynamicforward"] == ["[127.0.0.1]:1080"]
    # ProxyJump starts its own ssh from the config alone: no forwards there
    middle = ssh_settings(config, "tardis-hop-2", tmp_path)
    assert middle["proxyjump"] == ["tardis-hop-1"]
    assert middle["port"] == ["443"]
    assert "dynamicforward" not in middle
    assert "localforward" not in middle
    assert script_of(data).count("TUNNEL_TARGET=tardis-hop-3\n") == 1


def test_the_proxyjump_hop_gets_the_same_fast_cipher_as_the_last(
    tmp_path: Path,
) -> None:
    """Chain (c) encrypts twice on the worker: the inner connection (to the
    gateway) inside the ProxyJump connection (ssh -W to login). The jump's
    ssh reads the same -F file, so the Ciphers line the script appends (under
    ``Host *``) must reach both hops; a hop left on ssh's default
    (chacha20-poly1305, about half AES-GCM's speed with AES instructions)
    would cost the nested path more CPU per byte."""
    if shutil.which("ssh") is None:
        pytest.skip("ssh is not installed")
    data = {**FZJ, "tunnel": {**FZJ["tunnel"], "hops": [LOGIN, GATEWAY]}}
    out = bash_with(
        script_of(data),
        # what tunnel_start writes to $DRONE_DIR/ssh_config
        'TUNNEL_PORTS=(1080 3128); { with_ports "$(write_ssh_config)";'
        ' printf "    Ciphers %s\\n" "$(tunnel_ciphers)"; } > cfg;'
        " for hop in tardis-hop-1 tardis-hop-2; do"
        ' ssh -G -F cfg "$hop" | grep "^ciphers "; done',
        tmp_path,
    )
    first, second = out.splitlines()
    assert first == second, out
    if "aes" in Path("/proc/cpuinfo").read_text():
        assert first.startswith("ciphers aes128-gcm@openssh.com,"), out


def test_host_key_checking_off_is_explicit(tmp_path: Path) -> None:
    data = {**FZJ, "tunnel": {**FZJ["tunnel"], "strict_host_key_checking": False}}
    profile = profile_of(data)
    config = render.ssh_config_text(profile, derive_budget(profile))
    assert ssh_settings(config, "tardis-hop-1", tmp_path)["stricthostkeychecking"] == [
        "false"
    ]


def test_keepalive_off_turns_server_alive_off(tmp_path: Path) -> None:
    data = {**FZJ, "keepalive": {"enabled": False}}
    profile = profile_of(data)
    config = render.ssh_config_text(profile, derive_budget(profile))
    assert ssh_settings(config, "tardis-hop-1", tmp_path)["serveraliveinterval"] == [
        "0"
    ]


def test_ipv6_forward_target_is_bracketed(tmp_path: Path) -> None:
    forward = {"listen_port": 8443, "host": "2001:db8::1", "port": 443}
    data = {**FZJ, "tunnel": {**FZJ["tunnel"], "forwards": [forward]}}
    profile = profile_of(data)
    config = render.ssh_config_text(profile, derive_budget(profile))
    options = forward_options(data, tmp_path, 1080, 8443)
    ssh = ssh_settings(config, "tardis-hop-1", tmp_path, options)
    assert ssh["localforward"] == ["[127.0.0.1]:8443 [2001:db8::1]:443"]


# -- proxychains and tsocks ------------------------------------------------------


def test_proxychains_conf_text() -> None:
    data = {**FZJ, "chain": {**FZJ["chain"], "localnet": ["10.66.1.0/24", "fd00::/8"]}}
    text = render.proxychains_conf_text(profile_of(data))
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert body == [
        "strict_chain",
        "quiet_mode",
        "proxy_dns",
        "remote_dns_subnet 224",
        "tcp_read_time_out 15000",
        "tcp_connect_time_out 8000",
        "localnet 127.0.0.0/255.0.0.0",
        "localnet 10.66.1.0/255.255.255.0",
        "localnet fd00::/8",
        "[ProxyList]",
        # dante straight through the tunnel's -L forward to it (an auto port,
        # index 2 after SOCKS and the squid forward): no SOCKS hop through ssh -D
        "socks5 127.0.0.1 @TARDIS_PORT_2@",
    ]


def test_proxychains_without_remote_dns_or_quiet_mode() -> None:
    chain = {"remote_dns": False, "quiet": False, "proxies": []}
    text = render.proxychains_conf_text(profile_of({**FZJ, "chain": chain}))
    assert "proxy_dns" not in text and "quiet_mode" not in text
    assert text.rstrip().endswith("[ProxyList]\nsocks5 127.0.0.1 1080")


def test_proxychains_reads_the_rendered_conf(tmp_path: Path) -> None:
    if shutil.which("proxychains4") is None:
        pytest.skip("proxychains4 is not installed")
    conf = tmp_path / "proxychains.conf"
    spread = {**FZJ, "tunnel": {**FZJ["tunnel"], "parallel": 4}}
    for data in (FZJ, spread):
        # the ports the script puts in for the placeholders (with_ports)
        text = re.sub(
            r"@TARDIS_PORT_(\d+)@",
            lambda m: str(20000 + int(m.group(1))),
            render.proxychains_conf_text(profile_of(data)),
        )
        conf.write_text(text)
        result = subprocess.run(
            ["proxychains4", "-f", str(conf), "true"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr


def test_tsocks_conf_text() -> None:
    data = {**FZJ, "chain": {"tool": "tsocks", "localnet": ["10.66.1.0/24"]}}
    text = render.tsocks_conf_text(profile_of(data))
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert body == [
        "local = 127.0.0.0/255.0.0.0",
        "local = 10.66.1.0/255.255.255.0",
        "server = 127.0.0.1",
        "server_port = 1080",
        "server_type = 5",
    ]


def test_the_script_writes_the_conf_files_byte_for_byte(tmp_path: Path) -> None:
    profile = profile_of(FZJ)
    out = bash_with(
        script_of(FZJ),
        "write_ssh_config; printf '\\0'; write_proxychains_conf; printf '\\0'",
        tmp_path,
    )
    ssh, proxychains = words(out)
    assert ssh == render.ssh_config_text(profile, derive_budget(profile))
    assert proxychains == render.proxychains_conf_text(profile)
    # only the chosen chain tool's configuration is carried: tsocks on its own
    data = {**FZJ, "chain": {"tool": "tsocks", "localnet": FZJ["chain"]["localnet"]}}
    (tsocks,) = words(
        bash_with(script_of(data), "write_tsocks_conf; printf '\\0'", tmp_path)
    )
    assert tsocks == render.tsocks_conf_text(profile_of(data))


# -- container and payload command lines ---------------------------------------


def fake_runtime(tmp_path: Path) -> dict[str, str]:
    """A PATH with a do-nothing apptainer and an image file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("apptainer", "singularity"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "image.sif").write_text("")
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


CONTAINER = {
    **FZJ,
    "container": {
        "runtime": "apptainer",
        "image": "~/image.sif",
        "binds": ["/scratch", "/data:/mnt/data:ro"],
        "gpu": True,
        "contain": True,
    },
}


def test_container_argv(tmp_path: Path) -> None:
    out = bash_with(
        script_of(CONTAINER),
        "DRONE_DIR=/w CVMFS_ACTIVE_MODE=mountrepo CVMFS_ROOT=/d/cvmfs"
        " DRONE_START_US=$(now_us); container_stage 2>/dev/null;"
        " printf '%s\\0' \"${CONTAINER_ARGV[@]}\"",
        tmp_path,
        **fake_runtime(tmp_path),
    )
    assert words(out) == [
        "apptainer",
        "exec",
        "--contain",
        "--nv",
        "--bind",
        "/d/cvmfs:/cvmfs",
        "--bind",
        "/scratch",
        "--bind",
        "/data:/mnt/data:ro",
        "--bind",
        "/w",
        "--env-file",
        "/w/container.env",
        f"{tmp_path}/image.sif",
    ]


def test_singcvmfs_takes_the_place_of_the_runtime(tmp_path: Path) -> None:
    data = {**CONTAINER, "cvmfs": {**FZJ["cvmfs"], "mode": "singcvmfs"}}
    out = bash_with(
        script_of(data),
        "DRONE_DIR=/w CVMFS_ACTIVE_MODE=singcvmfs CVMFS_TOOLS=/t"
        " DRONE_START_US=$(now_us); container_stage 2>/dev/null;"
        " printf '%s\\0' \"${CONTAINER_ARGV[@]:0:4}\"",
        tmp_path,
        **fake_runtime(tmp_path),
    )
    assert words(out) == ["/t/singcvmfs", "exec", "--contain", "--nv"]


PAYLOAD_ENV = {
    "TardisDroneUuid": "fzj-0123456789",
    "TardisDroneCores": "8",
    "TardisDroneMemory": "16000",
    "TardisDroneDisk": "50000000",
}


def payload_words(data: dict[str, Any], tmp_path: Path, setup: str = "") -> list[str]:
    out = bash_with(
        script_of(data),
        f"DRONE_DIR={tmp_path}/w; mkdir -p $DRONE_DIR; {setup}"
        " payload_environment; payload_argv",
        tmp_path,
        **PAYLOAD_ENV,
    )
    return words(out)


def test_payload_argv_without_container_passes_the_environment_with_env(
    tmp_path: Path,
) -> None:
    argv = payload_words(
        {**FZJ, "payload": {"command": ["condor_master", "-f", "a b"]}},
        tmp_path,
        setup="CHAIN_ENV=(LD_PRELOAD=/lib/pc.so PROXYCHAINS_CONF_FILE=/w/pc.conf);",
    )
    work = f"{tmp_path}/w"
    assert argv[0] == "env"
    assert '_CONDOR_TardisDroneUuid="fzj-0123456789"' in argv
    assert "_CONDOR_STARTD_NAME=fzj-0123456789" in argv
    assert "_CONDOR_NUM_CPUS=8" in argv and "_CONDOR_MEMORY=16000" in argv
    assert "_CONDOR_DISK=50000000" in argv
    assert "_CONDOR_COLLECTOR_HOST=10.66.2.1:9618" in argv
    assert "_CONDOR_CCB_ADDRESS=10.66.2.1:9618" in argv
    assert "_CONDOR_CCB_HEARTBEAT_INTERVAL=10" in argv
    assert "LD_PRELOAD=/lib/pc.so" in argv
    assert argv[-7:] == [
        "/bin/sh",
        f"{work}/bin/enter",
        f"{work}/stages/payload",
        "--",
        "condor_master",
        "-f",
        "a b",
    ]


def test_payload_argv_with_cvmfsexec_and_container_nests_the_markers(
    tmp_path: Path,
) -> None:
    argv = payload_words(
        CONTAINER,
        tmp_path,
        setup="CVMFS_ACTIVE_MODE=cvmfsexec CVMFS_TOOLS=/t"
        " CONTAINER_ARGV=(apptainer exec img);",
    )
    work = f"{tmp_path}/w"
    enter = ["/bin/sh", f"{work}/bin/enter"]
    assert argv == [
        "/t/cvmfsexec",
        "cms.cern.ch",
        "lab.cern.ch",
        "--",
        *enter,
        f"{work}/stages/cvmfs",
        "/cvmfs/cms.cern.ch",
        "/cvmfs/lab.cern.ch",
        "--",
        "apptainer",
        "exec",
        "img",
        *enter,
        f"{work}/stages/container",
        "--",
        *enter,
        f"{work}/stages/cvmfs-inside",
        "/cvmfs/cms.cern.ch",
        "/cvmfs/lab.cern.ch",
        "--",
        *enter,
        f"{work}/stages/payload",
        "--",
        "condor_master",
        "-f",
    ]


def test_container_env_file_is_single_quoted(tmp_path: Path) -> None:
    out = bash_with(
        script_of(CONTAINER),
        "container_env_file 'A=x y' \"B=it's\" 'C=\"q\"' 'D.E=skipped'",
        tmp_path,
    )
    assert out.splitlines() == ["A='x y'", "B='it'\\''s'", "C='\"q\"'"]


# -- HTCondor knobs: read back with HTCondor's own parser -------------------------


def knob_words(tmp_path: Path) -> list[str]:
    out = bash_with(script_of(FZJ), "condor_knobs", tmp_path, **PAYLOAD_ENV)
    return words(out)


def test_generated_knobs_read_back_by_htcondor_as_intended(tmp_path: Path) -> None:
    pytest.importorskip("htcondor2")
    knobs = dict(word.split("=", 1) for word in knob_words(tmp_path))
    literal = {k: v for k, v in knobs.items() if "$(" not in v}
    assert condor_knobs.mismatches(literal) == []
    assert knobs["TardisDroneUuid"] == '"fzj-0123456789"'


def test_environment_knobs_as_htcondor_reads_them(tmp_path: Path) -> None:
    """The _CONDOR_* variables the payload gets, through htcondor2.param."""
    pytest.importorskip("htcondor2")
    config = tmp_path / "condor_config"
    config.write_text("STARTD_ATTRS = GLIDEIN_Site\n")  # a glidein's own attrs
    env = {
        f"_CONDOR_{word.split('=', 1)[0]}": word.split("=", 1)[1]
        for word in knob_words(tmp_path)
    }
    names = ["STARTD_ATTRS", "TardisDroneUuid", "STARTD_NAME", "NUM_CPUS", "MEMORY"]
    names += ["COLLECTOR_HOST", "CCB_ADDRESS", "CCB_HEARTBEAT_INTERVAL", "DISK"]
    program = (
        "import json, sys, htcondor2\n"
        "print(json.dumps({n: htcondor2.param.get(n) for n in sys.argv[1:]}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, *names],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "CONDOR_CONFIG": str(config)},
        check=True,
        timeout=60,
    )
    seen = {name: str(value) for name, value in json.loads(result.stdout).items()}
    assert seen["STARTD_ATTRS"].split() == ["GLIDEIN_Site", "TardisDroneUuid"]
    assert seen["TardisDroneUuid"] == '"fzj-0123456789"'
    assert seen["STARTD_NAME"] == "fzj-0123456789"
    assert seen["NUM_CPUS"] == "8" and seen["MEMORY"] == "16000"
    assert seen["DISK"] == "50000000"
    assert seen["COLLECTOR_HOST"] == seen["CCB_ADDRESS"] == "10.66.2.1:9618"
    assert seen["CCB_HEARTBEAT_INTERVAL"] == "10"


def test_config_d_snippet_matches_the_environment(tmp_path: Path) -> None:
    out = bash_with(
        script_of(FZJ),
        f"DRONE_DIR={tmp_path}/w; mkdir -p $DRONE_DIR; payload_environment;"
        ' cat "$DRONE_DIR/condor_config.d/50-tardis-netadapter.config"',
        tmp_path,
        **PAYLOAD_ENV,
    )
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    assert lines == [" = ".join(word.split("=", 1)) for word in knob_words(tmp_path)]


# -- exit codes are documented ---------------------------------------------------


def test_exit_codes_match_the_documentation() -> None:
    common = (render.template_dir() / "lib" / "common.sh").read_text()
    codes = dict(re.findall(r"EXIT_([A-Z]+)=(\d+)", common))
    doc = (ROOT / "docs" / "drone-script.md").read_text()
    table = dict(re.findall(r"^\| `?(\d+)`? \| `?([a-z]+)`? \|", doc, re.MULTILINE))
    assert {stage.lower(): code for stage, code in codes.items()} == {
        stage: code for code, stage in table.items()
    }
