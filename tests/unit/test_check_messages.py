"""``check``'s messages for the malformed configurations issue 17 names, one test each.

Each builds a small TARDIS YAML, runs the real CLI (``main(["check", ...])``)
and reads what an operator would read: several files, a typo'd key, keys
copied from TARDIS's stock Slurm adapter, a case slip in ``adapter``, a
missing Walltime, a partition name Slurm would refuse.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tardis_netadapter.batch import DRIVERS, SlurmDriver
from tardis_netadapter.cli import main

SITE: dict[str, Any] = {
    "MachineTypes": ["cpu1"],
    "MachineTypeConfiguration": {"cpu1": {"Walltime": "30", "Partition": "batch"}},
    "MachineMetaData": {"cpu1": {"Cores": 1, "Memory": 1, "Disk": 1}},
    "Network": {"tunnel": {"hops": [{"host": "login.example.org"}]}},
}


def write(tmp_path: Path, name: str = "site.yml", adapter: str = "NetSlurm", **edit):
    """A TARDIS YAML with one site NetLab; ``edit`` replaces keys of its section."""
    section = copy.deepcopy(SITE)
    section.update(edit)
    config = {
        "Sites": [{"name": "NetLab", "adapter": adapter, "quota": 1}],
        "NetLab": section,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def check(*files: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(["check", *map(str, files)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def machine_type(**keys: Any) -> dict[str, Any]:
    return {"cpu1": keys}


def test_several_files_get_a_verdict_each_and_one_failure_fails_all(
    tmp_path, capsys
) -> None:
    good = write(tmp_path, "good.yml")
    bad = write(tmp_path, "bad.yml", MachineTypeConfiguration=machine_type())
    also_good = write(tmp_path, "also-good.yml")
    code, out, err = check(good, bad, also_good, capsys=capsys)
    assert code == 2
    assert f"{good}: ready" in out and f"{also_good}: ready" in out
    assert f"{bad}: not ready: invalid configuration" in out
    assert "3 files: 1 not ready" in out
    assert f"{bad}: invalid configuration" in err  # the bad file is named
    # the failing file did not stop the one after it
    assert out.index(f"== {also_good}") > out.index(f"{bad}: not ready")


def test_all_example_configs_at_once_are_ready(capsys) -> None:
    configs = sorted((Path(__file__).parents[2] / "configs").glob("*.yml"))
    code, out, _ = check(*configs, capsys=capsys)
    assert code == 0, out
    assert out.rstrip().endswith(f"{len(configs)} files: all ready")


def test_a_failed_item_in_one_of_two_files_exits_1(tmp_path, capsys) -> None:
    good = write(tmp_path, "good.yml")
    other = write(tmp_path, "other.yml", adapter="Netslurm")
    code, out, _ = check(good, other, capsys=capsys)
    assert code == 1
    assert f"{other}: not ready: fix the items marked FAIL" in out


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            {"Network": {**SITE["Network"], "tunel": {}}},
            "NetLab.Network.tunel: got {}; unknown key (did you mean 'tunnel'?)",
        ),
        (
            {"comand_timeout": 30},
            "NetLab.comand_timeout: unknown key (did you mean 'command_timeout'?)",
        ),
        (
            {"MachineTypeConfiguration": machine_type(Walltime="30", walltime="30")},
            "NetLab.MachineTypeConfiguration.cpu1.walltime: got '30'; unknown key "
            "(did you mean 'Walltime'?)",
        ),
        (
            {
                "MachineTypeConfiguration": machine_type(
                    Walltime="30", SubmitOption={"long": {"qos": "normal"}}
                )
            },
            "(did you mean 'SubmitOptions'?)",
        ),
    ],
)
def test_a_typod_key_names_the_closest_allowed_key(
    tmp_path, capsys, edit, expected
) -> None:
    code, _, err = check(write(tmp_path, **edit), capsys=capsys)
    assert code == 2
    assert expected in err


@pytest.mark.parametrize(
    ("edit", "where", "replacement"),
    [
        (
            {
                "MachineTypeConfiguration": machine_type(
                    Walltime="30", StartupCommand="x.sh"
                )
            },
            "NetLab.MachineTypeConfiguration.cpu1.StartupCommand: got 'x.sh'; unknown key",
            "Network.payload.command",
        ),
        ({"StartupCommand": "x.sh"}, "NetLab.StartupCommand: unknown key", "payload"),
        ({"StatusUpdate": 1}, "NetLab.StatusUpdate: unknown key", "status_max_age"),
        (
            {
                "MachineTypeConfiguration": machine_type(
                    Walltime="30", StatusOptions={"long": {"me": None}}
                )
            },
            "cpu1.StatusOptions: got",
            "one squeue per site and cycle",
        ),
        ({"bulk_size": 10}, "NetLab.bulk_size: unknown key", "one squeue per site"),
    ],
)
def test_a_stock_slurm_adapter_key_says_what_replaces_it(
    tmp_path, capsys, edit, where, replacement
) -> None:
    code, _, err = check(write(tmp_path, **edit), capsys=capsys)
    assert code == 2
    line = next(line for line in err.splitlines() if where in line)
    assert "TARDIS's stock Slurm adapter" in line and replacement in line
    assert "allowed:" not in line  # the pointer, not a list to hunt through


def test_an_adapter_name_with_a_case_slip_fails_check(tmp_path, capsys) -> None:
    code, out, _ = check(write(tmp_path, adapter="Netslurm"), capsys=capsys)
    assert code == 1
    assert (
        "[FAIL] Sites[NetLab].adapter: got 'Netslurm' (did you mean 'NetSlurm'?)" in out
    )
    assert "fix: write adapter: NetSlurm" in out


def test_adapter_names_come_from_the_registered_drivers(
    tmp_path, capsys, monkeypatch
) -> None:
    """A driver registered by another module (Grid Engine) is suggested too."""
    monkeypatch.setitem(DRIVERS, "NetGridEngine", SlurmDriver)
    code, out, _ = check(write(tmp_path, adapter="NetGridengine"), capsys=capsys)
    assert code == 1
    assert "(did you mean 'NetGridEngine'?)" in out


def test_an_unknown_adapter_lists_the_registered_ones(tmp_path, capsys) -> None:
    code, out, _ = check(write(tmp_path, adapter="NetPBS"), capsys=capsys)
    assert code == 1
    assert "Sites[NetLab].adapter: got 'NetPBS'" in out
    assert all(repr(name) in out for name in DRIVERS)


def test_a_stock_tardis_adapter_site_is_named_not_failed(tmp_path, capsys) -> None:
    path = write(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["Sites"].append({"name": "Plain", "adapter": "Slurm", "quota": 1})
    path.write_text(yaml.safe_dump(config))
    code, out, _ = check(path, capsys=capsys)
    assert code == 0, out
    assert "[warn] Sites[Plain]: adapter 'Slurm' is one of TARDIS's own" in out


def test_render_names_the_adapter_it_meant(tmp_path, capsys) -> None:
    path = write(tmp_path, adapter="Netslurm")
    code = main(["render", str(path), "--site", "NetLab", "--machine-type", "cpu1"])
    assert code == 2
    assert "got 'Netslurm' (did you mean 'NetSlurm'?)" in capsys.readouterr().err


def test_a_missing_walltime_says_the_format(tmp_path, capsys) -> None:
    edit = {"MachineTypeConfiguration": machine_type(Partition="batch")}
    code, _, err = check(write(tmp_path, **edit), capsys=capsys)
    assert code == 2
    line = next(line for line in err.splitlines() if ".Walltime:" in line)
    assert "got None" not in line
    assert "cpu1.Walltime: missing; required" in line
    assert '"02:00:00"' in line and '"1-12:00:00"' in line


@pytest.mark.parametrize("walltime", [30, "2h", "forever"])
def test_a_wrong_walltime_says_the_format(tmp_path, capsys, walltime) -> None:
    edit = {"MachineTypeConfiguration": machine_type(Walltime=walltime)}
    code, _, err = check(write(tmp_path, **edit), capsys=capsys)
    assert code == 2
    line = next(line for line in err.splitlines() if ".Walltime:" in line)
    assert f"got {walltime!r}" in line and '"HH:MM:SS"' in line


@pytest.mark.parametrize(
    ("partition", "why"),
    [
        ("gpu nodes", "holds a blank"),
        ("batch#1", "holds a blank, '#'"),
        ("a=b", "'='"),
        ("batch,", "an empty name in the list"),
        ("batch,,gpu", "an empty name in the list"),
        ("default", "DEFAULT is slurm.conf's record of defaults"),
    ],
)
def test_a_partition_slurm_would_refuse_is_refused(
    tmp_path, capsys, partition, why
) -> None:
    edit = {
        "MachineTypeConfiguration": machine_type(Walltime="30", Partition=partition)
    }
    code, _, err = check(write(tmp_path, **edit), capsys=capsys)
    assert code == 2
    line = next(line for line in err.splitlines() if ".Partition:" in line)
    assert f"cpu1.Partition: got {partition!r}" in line and why in line


@pytest.mark.parametrize("partition", ["batch", "dc-gpu", "gpu_a100.big", "a,b"])
def test_partition_names_slurm_takes_pass(tmp_path, capsys, partition) -> None:
    edit = {
        "MachineTypeConfiguration": machine_type(Walltime="30", Partition=partition)
    }
    code, out, err = check(write(tmp_path, **edit), capsys=capsys)
    assert code == 0, out + err


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        (
            {"mode": "sock", "tunnel": SITE["Network"]["tunnel"]},
            "NetLab.Network.mode: got 'sock'; allowed: one of",
        ),
        (
            {**SITE["Network"], "chain": {"tool": "proxychain"}},
            "NetLab.Network.chain.tool: got 'proxychain'; allowed: one of",
        ),
    ],
)
def test_a_misspelt_choice_names_the_closest_one(
    tmp_path, capsys, network, expected
) -> None:
    code, _, err = check(write(tmp_path, Network=network), capsys=capsys)
    assert code == 2
    line = next(line for line in err.splitlines() if expected in line)
    word = "socks" if "mode" in expected else "proxychains"
    assert line.endswith(f"(did you mean {word!r}?)")


def test_a_misspelt_adapter_does_not_hide_the_sections_errors(tmp_path, capsys) -> None:
    """The section is checked as the driver meant, so all errors show at once."""
    edit = {"MachineTypeConfiguration": machine_type(Partition="batch")}
    code, out, err = check(write(tmp_path, adapter="Netslurm", **edit), capsys=capsys)
    assert code == 2
    assert "[FAIL] Sites[NetLab].adapter: got 'Netslurm'" in out
    assert "cpu1.Walltime: missing; required" in err


def test_a_misspelt_adapter_with_a_valid_section_checks_the_rest(
    tmp_path, capsys
) -> None:
    code, out, _ = check(write(tmp_path, adapter="netslurm"), capsys=capsys)
    assert code == 1
    assert "[ok  ] NetLab: configuration valid" in out
    assert "cpu1: drone script renders and passes bash -n" in out


def test_missing_machine_meta_data_says_the_unit(tmp_path, capsys) -> None:
    edit = {"MachineMetaData": {"cpu1": {"Cores": 1, "Disk": 1}}}
    code, _, err = check(write(tmp_path, **edit), capsys=capsys)
    assert code == 2
    assert (
        "NetLab.MachineMetaData.cpu1.Memory: missing; required: a number; "
        "expected format: GB per drone" in err
    )
