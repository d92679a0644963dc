"""Bulk heartbeat collection: the shell command run for real, splitting, garbage."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tardis_netadapter.batch.slurm import parse_elapsed as slurm_elapsed
from tardis_netadapter.connectivity.collect import (
    BEGIN,
    END,
    HeartbeatProbe,
    HeartbeatStore,
    cleanup_command,
    collection_command,
    combine_command,
    parse_collection,
    prune_command,
    shell_path,
    split_output,
)
from tardis_netadapter.connectivity.heartbeat import parse_record, parse_records


def record(uuid: str, time: float = 1000.0, seq: int = 1, **extra) -> str:
    data = {"v": 1, "uuid": uuid, "time": time, "seq": seq, "probes": [], **extra}
    return json.dumps(data)


def sh(command: str, home: Path) -> subprocess.CompletedProcess:
    """Run like the executor does: a POSIX shell (dash on Debian), HOME set."""
    return subprocess.run(
        ["/bin/sh", "-c", command],
        capture_output=True,
        text=True,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def test_shell_path_quotes_and_expands_home():
    assert shell_path("~/.hb dir") == "\"$HOME\"/'.hb dir'"
    assert shell_path("/a/b;rm -rf x") == "'/a/b;rm -rf x'"


@pytest.mark.parametrize(
    "path", ["~", "~/", "/", "$HOME", "-delete", "~other/x", "hb", "~/a/../b", "~/a/"]
)
def test_shell_path_refuses_what_a_command_could_misread(path):
    """Validation keeps these out of the configuration; the commands refuse too."""
    with pytest.raises(ValueError, match="refusing path"):
        shell_path(path)
    with pytest.raises(ValueError):
        prune_command(path)
    with pytest.raises(ValueError):
        collection_command(path)
    with pytest.raises(ValueError):
        cleanup_command(path, ["netlab-0123456789"])


def test_every_command_takes_the_directory_as_an_operand():
    for command in (
        prune_command("~/hb"),
        collection_command("~/hb"),
        cleanup_command("~/hb", ["netlab-0123456789"]),
    ):
        assert ' "$HOME"/hb' in command
    assert "rm -f -- " in cleanup_command("/hb", ["netlab-0123456789"])


def old_file(path: Path, text: str, days: int = 9) -> Path:
    path.write_text(text)
    when = time.time() - days * 86400
    os.utime(path, (when, when))
    return path


def test_the_prune_removes_only_old_files_named_and_written_like_records(tmp_path):
    directory = tmp_path / "hb"
    directory.mkdir()
    heartbeat = old_file(
        directory / "netlab-0123456789.json", record("netlab-x") + "\n"
    )
    keep = [
        old_file(directory / "notes.json", record("notes") + "\n"),  # name
        old_file(directory / "netlab-abcdefabcd.json", '{"notes": 1}\n'),  # content
        old_file(directory / "NetLab-0123456789.json", record("x")),  # upper case
        old_file(directory / "netlab x-0123456789.json", record("x")),  # blank
        old_file(directory / ".netlab-0123456789.json.tmp.7", record("x")),  # in flight
        old_file(directory / "netlab-9999999999.json", record("x"), days=1),  # young
    ]
    result = sh(prune_command("~/hb"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert not heartbeat.exists()
    assert all(path.exists() for path in keep), [p.name for p in keep if not p.exists()]


def test_a_directory_named_like_an_option_is_not_read_as_one(tmp_path):
    """find has no --: a word starting with - was its expression (``-delete``)."""
    (tmp_path / "-delete").mkdir()
    victim = old_file(tmp_path / "netlab-0123456789.json", record("x"))
    result = sh(prune_command(str(tmp_path / "-delete")), tmp_path)
    assert result.returncode == 0
    assert victim.exists()


def test_collection_reads_every_record_with_site_clock(tmp_path):
    directory = tmp_path / "hb dir; $(touch pwned)"
    directory.mkdir()
    for index in range(5):
        (directory / f"site-{index}.json").write_text(record(f"site-{index}") + "\n")
    (directory / "site-5.json").write_text(record("site-5"))  # no final newline
    (directory / ".site-6.json.tmp.123").write_text(record("site-6"))  # in flight
    (directory / "notes.txt").write_text(record("site-7"))
    result = sh(collection_command(str(directory)), tmp_path)
    assert result.returncode == 0
    assert not (tmp_path / "pwned").exists()
    collection = parse_collection(result.stdout)
    assert collection.complete
    assert collection.site_time is not None and collection.site_time > 1e9
    assert sorted(collection.records) == [f"site-{i}" for i in range(6)]


def test_collection_expands_tilde_on_the_login_node(tmp_path):
    (tmp_path / ".hb").mkdir()
    (tmp_path / ".hb" / "d-1.json").write_text(record("d-1") + "\n")
    result = sh(collection_command("~/.hb"), tmp_path)
    assert sorted(parse_collection(result.stdout).records) == ["d-1"]


def test_missing_directory_is_an_empty_complete_collection(tmp_path):
    result = sh(collection_command(str(tmp_path / "nowhere")), tmp_path)
    assert result.returncode == 0
    collection = parse_collection(result.stdout)
    assert collection.complete and collection.records == {}


def test_ten_thousand_files_in_one_call(tmp_path):
    """find -exec cat {} + batches names: no argument-list limit at 10k drones."""
    directory = tmp_path / "hb"
    directory.mkdir()
    padding = "x" * 300
    for index in range(10_000):
        name = f"site-{index:05d}-{'a' * 110}"
        (directory / f"{name}.json").write_text(record(name, last_error=padding) + "\n")
    result = sh(collection_command(str(directory)), tmp_path)
    assert result.returncode == 0
    assert len(parse_collection(result.stdout).records) == 10_000


def test_binary_garbage_and_huge_files_do_not_break_decoding(tmp_path):
    directory = tmp_path / "hb"
    directory.mkdir()
    (directory / "bin.json").write_bytes(b"\xff\xfe\x00garbage\xc3\x28\n")
    (directory / "huge.json").write_text(record("huge", last_error="y" * 100_000))
    (directory / "ok.json").write_text(record("ok") + "\n")
    result = subprocess.run(
        ["/bin/sh", "-c", collection_command(str(directory))],
        capture_output=True,
        check=True,
    )
    text = result.stdout.decode("utf-8")  # strict: would raise on a stray byte
    assert sorted(parse_collection(text).records) == ["ok"]


def test_combined_command_keeps_squeue_output_and_exit_code(tmp_path):
    directory = tmp_path / "hb"
    directory.mkdir()
    (directory / "d-1.json").write_text(record("d-1") + "\n")
    good = sh(
        combine_command("printf '1|RUNNING|n1||d-1\\n'", str(directory)), tmp_path
    )
    assert good.returncode == 0
    squeue, collection = split_output(good.stdout)
    assert squeue == "1|RUNNING|n1||d-1\n"
    assert list(collection.records) == ["d-1"] and collection.complete
    bad = sh(combine_command("echo broken >&2; exit 3", str(directory)), tmp_path)
    assert bad.returncode == 3
    assert "broken" in bad.stderr
    assert list(split_output(bad.stdout)[1].records) == ["d-1"]


def test_split_output_without_collection():
    squeue, collection = split_output("1|RUNNING|n1||d-1\n")
    assert squeue == "1|RUNNING|n1||d-1\n"
    assert collection.records == {} and not collection.complete


def test_split_output_stripped_by_executor():
    """TARDIS's ShellExecutor strips stdout; nothing may depend on a final newline."""
    text = f"{BEGIN} 2000\n{record('d-1')}\n{END}"
    squeue, collection = split_output(text)
    assert squeue == ""
    assert collection.complete and collection.site_time == 2000


def test_truncated_output_is_incomplete_and_keeps_whole_lines():
    text = f"job\n{BEGIN} 2000\n{record('d-1')}\n{record('d-2')[:25]}"
    squeue, collection = split_output(text)
    assert squeue == "job\n"
    assert not collection.complete
    assert list(collection.records) == ["d-1"]


GARBAGE = [
    "",
    "   ",
    "not json",
    "{",
    "[]",
    "null",
    '{"uuid": "d-1"}',
    '{"uuid": "d-1", "time": "yesterday"}',
    '{"uuid": "../etc/passwd", "time": 1}',
    '{"uuid": 5, "time": 1}',
    '{"uuid": "d-1", "time": NaN}',
    '{"uuid": "d-1", "time": true}',
    '"just a string"',
    '{"uuid": "d-1", "time": 1, "probes": "x", "stages": [1]}',
]


@pytest.mark.parametrize("line", GARBAGE)
def test_garbage_lines_never_raise(line):
    parsed = parse_record(line)
    if parsed is not None:  # the last case is usable: bad parts are dropped
        assert parsed.probes == () and parsed.stages == {}


def test_odd_field_types_are_tolerated():
    parsed = parse_record(
        json.dumps(
            {
                "uuid": "d-1",
                "time": 5,
                "seq": "x",
                "restarts": None,
                "probes": [{"endpoint": "a:1", "ok": "yes", "latency_ms": "fast"}, 7],
                "last_ok": "never",
                "failing_stage": 3,
            }
        )
    )
    assert parsed is not None
    assert parsed.seq == 0 and parsed.restarts == 0 and parsed.last_ok is None
    assert parsed.probes[0].ok is False and parsed.probes[0].latency_ms is None
    assert parsed.failing_stage == "3"


def test_newest_record_wins():
    text = "\n".join([record("d-1", 10, 2), record("d-1", 20, 3), record("d-1", 15, 9)])
    assert parse_records(text)["d-1"].time == 20


def test_store_keeps_knowledge_through_incomplete_collections():
    store = HeartbeatStore()
    store.update(parse_collection(f"{BEGIN} 100\n{record('d-1', 90)}\n{END}"))
    assert store.now == 100
    store.update(parse_collection(f"{BEGIN} 200\n{record('d-2', 190)}"))  # cut short
    assert store.now == 100  # the verdict clock stands still
    assert sorted(store.records) == ["d-1", "d-2"]
    store.update(parse_collection(f"{BEGIN} 300\n{record('d-1', 80)}\n{END}"))
    assert store.get("d-1").time == 90  # an older record never replaces a newer
    assert store.now == 300
    store.forget(["d-1"])
    assert store.get("d-1") is None


def test_cleanup_command_removes_only_named_files(tmp_path):
    directory = tmp_path / "hb"
    directory.mkdir()
    for name in ("d-1", "d-2", "d-3"):
        (directory / f"{name}.json").write_text(record(name))
    command = cleanup_command("~/hb", ["d-1", "d-3", "../../etc/passwd", "-rf"])
    assert command is not None and "passwd" not in command
    assert sh(command, tmp_path).returncode == 0
    assert sorted(p.name for p in directory.iterdir()) == ["d-2.json"]
    assert cleanup_command("~/hb", []) is None
    assert cleanup_command("~/hb", ["../x"]) is None


def test_prune_command_runs(tmp_path):
    assert sh(prune_command(str(tmp_path / "none")), tmp_path).returncode == 0


def test_probe_objects_fit_the_poller():
    probe = HeartbeatProbe("~/hb")
    assert probe.name == "heartbeats"
    assert probe.command == (
        f"{prune_command('~/hb', 7, 30)}; {collection_command('~/hb')}"
    )
    assert probe.parse(f"{BEGIN} 5\n{END}").complete


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0:00", 0),
        ("59:59", 3599),
        ("1:00:00", 3600),
        ("2-00:00:01", 172801),
        ("x", None),
        ("-1:00", None),
        ("1:2:3:4", None),
    ],
)
def test_parse_elapsed(text, seconds):
    """Slurm's TimeUsed, read by the Slurm driver from the one listing per cycle."""
    from tardis_netadapter.batch.slurm import parse_elapsed

    assert parse_elapsed(text) == seconds


@pytest.mark.parametrize(
    "monitoring, fragment",
    [
        ({"metrics_port": 0}, "Network.monitoring.metrics_port: got 0"),
        ({"metrics_port": 70000}, "Network.monitoring.metrics_port: got 70000"),
        ({"heartbeat_dir": " "}, "Network.monitoring.heartbeat_dir"),
    ],
)
def test_monitoring_keys_are_validated(monitoring, fragment):
    from tardis_netadapter.config import load_profile
    from tardis_netadapter.schema import ConfigurationError

    base = {
        "mode": "direct",
        "chain": {"tool": "none"},
        "pool": {"collector": "cm:9618"},
    }
    with pytest.raises(ConfigurationError, match=fragment):
        load_profile({**base, "monitoring": monitoring})
    assert (
        load_profile(
            {**base, "monitoring": {"metrics_port": 9100}}
        ).monitoring.metrics_port
        == 9100
    )


def test_a_uuid_with_a_trailing_newline_is_no_heartbeat_and_not_removed():
    assert parse_record(record("d-1\n")) is None
    assert cleanup_command("~/.hb", ["d-1\n"]) is None
    assert slurm_elapsed("1:00\n") == 60.0  # stripped first, then matched whole
