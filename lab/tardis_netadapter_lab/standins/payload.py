#!/usr/bin/python3
"""Stand-in for `condor_master` starting an HTCondor startd: the drone's payload.

Usage: condor_master [-f] [-d] [-t] [--give-up SECONDS] [--retry SECONDS]

Honoured: HTCondor's configuration contract. Knobs come from the file named by
CONDOR_CONFIG (`KNOB = value` lines, `$(KNOB)` macros, `include : FILE`), then
LOCAL_CONFIG_DIR (files in sorted order) and LOCAL_CONFIG_FILE, and
`_CONDOR_<KNOB>` environment variables win over every file; knob names are
case-insensitive. CONDOR_CONFIG=ONLY_ENV reads no file. Used knobs:
COLLECTOR_HOST (host[:port], default port 9618; falls back to CONDOR_HOST),
CCB_ADDRESS (advertised), TardisDroneUuid (ClassAd string quotes stripped),
STARTD_NAME, NUM_CPUS, MEMORY, CCB_HEARTBEAT_INTERVAL (default 1200; 0 turns
heartbeats off as in HTCondor), UPDATE_INTERVAL (300), ALIVE_INTERVAL,
STARTER_UPDATE_INTERVAL (300), STARTD_CRON_JOBLIST with each job's
EXECUTABLE, ARGS, PERIOD (30, 30s, 5m, 1h), MODE (Periodic, OneShot) and
PREFIX: jobs run on schedule and the `Attr = value` lines they print are
published to the pool (on a short connection of their own, when they change
and every UPDATE_INTERVAL), so `condor_status -af Attr` shows them.

Model: a startd behind CCB keeps one long-lived TCP connection to the CCB
server (usually the collector) and sends a heartbeat on it every
CCB_HEARTBEAT_INTERVAL seconds; that idle-looking connection is what an
idle-timeout firewall kills. The stand-in opens that one connection to
COLLECTOR_HOST with a plain socket.create_connection (so proxychains'
LD_PRELOAD hooks it), registers, then heartbeats at CCB_HEARTBEAT_INTERVAL.
UPDATE_INTERVAL and the other intervals are only advertised; the only other
traffic is the short STARTD_CRON ad updates, never on the long-lived link.
A heartbeat unanswered within min(10 s, interval), a closed or failed
connection means the pool is lost: one line
`condor_master stand-in: lost the pool at HOST:PORT: REASON` goes to stderr and
the stand-in re-registers every --retry seconds (env TNA_PAYLOAD_RETRY,
default 3) for up to --give-up seconds (env TNA_PAYLOAD_GIVE_UP, default
forever; 0 exits 1 at once). SIGTERM/SIGINT close the connection and exit 0.

Not honoured: CEDAR, security, daemons other than this one startd, jobs,
`if`/`use` config statements (skipped), HTCondor's own logs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

PREFIX = "condor_master stand-in:"
DEFAULT_PORT = 9618
ACK_TIMEOUT = 10.0
MACRO = re.compile(r"\$\((?P<name>[A-Za-z0-9_.]+)(?::(?P<default>[^)]*))?\)")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def log(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


class ConfigError(Exception):
    """A configuration source named by the user cannot be read."""


class Config:
    """HTCondor-style knobs: files first, `_CONDOR_*` environment wins."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = environ
        self.files: dict[str, str] = {}
        self.env: dict[str, str] = {}
        for key, value in environ.items():
            if key[:8].upper() == "_CONDOR_" and len(key) > 8:
                self.env[key[8:].upper()] = value
        path = environ.get("CONDOR_CONFIG")
        if path and path != "ONLY_ENV":
            self.read_file(path, required=True)
        local_dir = self.get("LOCAL_CONFIG_DIR")
        if local_dir:
            for directory in re.split(r"[,\s]+", local_dir.strip()):
                if directory and os.path.isdir(directory):
                    for name in sorted(os.listdir(directory)):
                        full = os.path.join(directory, name)
                        if os.path.isfile(full) and not name.endswith(
                            ("~", ".rpmsave")
                        ):
                            self.read_file(full, required=False)
        local_files = self.get("LOCAL_CONFIG_FILE")
        if local_files:
            for name in re.split(r"[,\s]+", local_files.strip()):
                if name:
                    self.read_file(name, required=False)

    def read_file(self, path: str, required: bool, depth: int = 0) -> None:
        """Parse `KNOB = value` lines; later assignments win, like HTCondor."""
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError as exc:
            if required:
                raise ConfigError(f"cannot read config source {path}: {exc}") from exc
            return
        text = re.sub(r"\\\n", " ", text)
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = re.match(r"include\s*(?:ifexist)?\s*:\s*(.+)$", line, re.I)
            if include and depth < 10:
                target = os.path.join(os.path.dirname(path), include.group(1).strip())
                self.read_file(target, required=False, depth=depth + 1)
                continue
            match = re.match(r"([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*)$", line)
            if match:
                self.files[match.group(1).upper()] = match.group(2).strip()

    def raw(self, name: str) -> Optional[str]:
        key = name.upper()
        return self.env[key] if key in self.env else self.files.get(key)

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """Look a knob up and expand `$(OTHER)` / `$(OTHER:default)` macros."""
        value = self.raw(name)
        if value is None:
            return default
        for _ in range(20):
            if "$(" not in value:
                break

            def expand(match: re.Match[str]) -> str:
                inner = self.raw(match.group("name"))
                if inner is None:
                    return match.group("default") or ""
                return inner

            value = MACRO.sub(expand, value)
        return value

    def number(self, name: str, default: float) -> float:
        value = self.get(name)
        if value is None or not value.strip():
            return default
        try:
            return float(value)
        except ValueError:
            log(f"ignoring {name} = {value!r}: not a number, using {default:g}")
            return default


def classad_string(value: Optional[str]) -> Optional[str]:
    """Strip ClassAd string quotes: `"abc"` -> abc (HTCondor knobs may carry them)."""
    if value is None:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value or None


def parse_collector(value: str) -> tuple[str, int]:
    """First entry of COLLECTOR_HOST: host[:port], [v6]:port or <sinful>."""
    first = re.split(r"[,\s]+", value.strip())[0]
    first = first.strip("<>").split("?", 1)[0]
    if first.startswith("["):
        host, _, rest = first[1:].partition("]")
        port = rest.lstrip(":")
    elif first.count(":") == 1:
        host, _, port = first.partition(":")
    else:
        host, port = first, ""
    if not host:
        raise ValueError(f"no host in COLLECTOR_HOST {value!r}")
    return host, int(port) if port else DEFAULT_PORT


def total_memory_mb() -> int:
    """Physical memory in MB, as HTCondor detects MEMORY by default."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1024


def seconds(text: str, default: float) -> float:
    """HTCondor durations: `30`, `30s`, `5m`, `1h`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "", re.I)
    if not match:
        return default
    return (
        float(match.group(1))
        * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2).lower()]
    )


def cron_jobs(config: Config) -> list[dict]:
    """STARTD_CRON_JOBLIST and each job's EXECUTABLE, ARGS, PERIOD, MODE, PREFIX."""
    jobs = []
    for name in re.split(r"[,\s]+", config.get("STARTD_CRON_JOBLIST") or ""):
        if not name:
            continue
        knob = f"STARTD_CRON_{name}_"
        executable = config.get(knob + "EXECUTABLE")
        if not executable:
            log(f"STARTD_CRON job {name} has no EXECUTABLE; skipped")
            continue
        mode = (config.get(knob + "MODE") or "Periodic").lower()
        jobs.append(
            {
                "name": name,
                "argv": [executable, *(config.get(knob + "ARGS") or "").split()],
                "period": max(1.0, seconds(config.get(knob + "PERIOD") or "", 60)),
                "prefix": config.get(knob + "PREFIX") or "",
                "oneshot": mode == "oneshot",
                "due": 0.0,
                "attrs": {},
            }
        )
    return jobs


def run_cron_job(job: dict) -> Optional[dict[str, str]]:
    """Run one job; its stdout is `Attr = expression` lines up to a `-` line."""
    try:
        result = subprocess.run(
            job["argv"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=max(1.0, min(job["period"], 10.0)),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"STARTD_CRON job {job['name']} failed: {exc}")
        return None
    attrs: dict[str, str] = {}
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("-"):
            break
        match = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", line)
        if match:
            attrs[job["prefix"] + match.group(1)] = match.group(2)
    return attrs


class Lost(Exception):
    """The pool stopped answering on the long-lived connection."""


class Stop(Exception):
    """SIGTERM or SIGINT arrived."""


class Payload:
    def __init__(self, config: Config, retry: float, give_up: Optional[float]) -> None:
        collector = config.get("COLLECTOR_HOST") or config.get("CONDOR_HOST")
        if not collector:
            raise ConfigError("COLLECTOR_HOST is not set (try _CONDOR_COLLECTOR_HOST)")
        self.host, self.port = parse_collector(collector)
        self.where = f"{self.host}:{self.port}"
        self.uuid = classad_string(config.get("TardisDroneUuid"))
        self.name = classad_string(config.get("STARTD_NAME"))
        self.hostname = socket.gethostname()
        self.interval = config.number("CCB_HEARTBEAT_INTERVAL", 1200)
        self.ack_timeout = min(ACK_TIMEOUT, self.interval) if self.interval > 0 else 10
        self.retry = retry
        self.give_up = give_up
        self.register_msg = {
            "op": "register",
            "uuid": self.uuid,
            "name": self.name,
            "host": self.hostname,
            "cpus": int(config.number("NUM_CPUS", os.cpu_count() or 1)),
            "memory": int(config.number("MEMORY", total_memory_mb())),
            "heartbeat_interval": self.interval,
            "update_interval": config.number("UPDATE_INTERVAL", 300),
            "alive_interval": config.number("ALIVE_INTERVAL", 0) or None,
            "starter_update_interval": config.number("STARTER_UPDATE_INTERVAL", 300),
            "ccb_address": config.get("CCB_ADDRESS"),
            "collector_host": self.where,
            "pid": os.getpid(),
        }
        self.update_interval = config.number("UPDATE_INTERVAL", 300)
        self.cron_jobs = cron_jobs(config)
        self.cron_attrs: dict[str, str] = {}
        self.next_update = 0.0
        self.stop_requested = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        self.buffer = b""
        self.state = ("Unclaimed", "Idle")

    # -- signals ----------------------------------------------------------
    def install_signals(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def _on_hup(self, signum: int, frame: object) -> None:
        log("SIGHUP (condor_reconfig) ignored by the stand-in")

    def wait(self, fds: list[int], timeout: Optional[float]) -> list[int]:
        """select() that raises Stop as soon as a stop signal arrives."""
        if self.stop_requested:
            raise Stop
        try:
            ready, _, _ = select.select([*fds, self.wake_r], [], [], timeout)
        except InterruptedError:
            ready = []
        if self.wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 512)
        if self.stop_requested:
            raise Stop
        return [fd for fd in ready if fd != self.wake_r]

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.wait([], left)

    # -- protocol ---------------------------------------------------------
    def send(self, sock: socket.socket, msg: dict[str, object]) -> None:
        try:
            sock.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        except OSError as exc:
            raise Lost(f"send failed: {exc}") from exc

    def read_some(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError as exc:
            raise Lost(f"receive failed: {exc}") from exc
        if not data:
            raise Lost("connection closed by the pool")
        self.buffer += data

    def reply(self, sock: socket.socket, timeout: float, what: str) -> dict:
        """Wait for one JSON line; a missing answer means the pool is lost."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self.wait([sock.fileno()], left):
                if time.monotonic() >= deadline:
                    raise Lost(f"no answer to {what} within {timeout:g} s")
                continue
            self.read_some(sock)
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise Lost(f"garbled answer to {what}: {line[:80]!r}") from exc
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise Lost(f"{what} refused: {error}")
        return answer

    def session(self) -> None:
        """Register once, then heartbeat until the pool is lost (raises Lost)."""
        self.buffer = b""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=10)
        except OSError as exc:
            raise Lost(f"connect failed: {exc}") from exc
        try:
            sock.settimeout(10)
            self.send(sock, self.register_msg)
            answer = self.reply(sock, ACK_TIMEOUT, "register")
            log(
                f"registered with {self.where} as {self.key} (conn {answer.get('conn')})"
            )
            self.lost_since = None
            self.next_update = 0.0  # publish cron attributes right away
            forever = float("inf")
            now = time.monotonic()
            next_heartbeat = now + self.interval if self.interval > 0 else forever
            while True:
                self.cron_tick()
                now = time.monotonic()
                if now >= next_heartbeat:
                    self.send(sock, {"op": "heartbeat"})
                    ack = self.reply(sock, self.ack_timeout, "heartbeat")
                    self.note_state(ack)
                    next_heartbeat = time.monotonic() + self.interval
                    continue
                due = min(next_heartbeat, self.cron_due())
                timeout = None if due == forever else max(0.0, due - now)
                if self.wait([sock.fileno()], timeout):
                    self.read_some(sock)
        finally:
            sock.close()

    # -- STARTD_CRON ----------------------------------------------------------
    def cron_due(self) -> float:
        """When the next cron job or ad update is due (monotonic clock)."""
        due = [job["due"] for job in self.cron_jobs if job["due"] is not None]
        if self.cron_attrs:
            due.append(self.next_update)
        return min(due, default=float("inf"))

    def cron_tick(self) -> None:
        """Run due STARTD_CRON jobs; publish their attributes when they change
        and every UPDATE_INTERVAL, on a short connection of their own (as a
        startd's ad updates to the collector are separate from its CCB link)."""
        now = time.monotonic()
        changed = False
        for job in self.cron_jobs:
            if job["due"] is not None and job["due"] <= now:
                attrs = run_cron_job(job)
                job["due"] = None if job["oneshot"] else now + job["period"]
                if attrs is not None and attrs != job["attrs"]:
                    job["attrs"], changed = attrs, True
        if changed:
            merged: dict[str, str] = {}
            for job in self.cron_jobs:
                merged.update(job["attrs"])
            self.cron_attrs = merged
        if self.cron_attrs and (changed or now >= self.next_update):
            self.next_update = now + max(1.0, self.update_interval)
            self.send_update()

    def send_update(self) -> None:
        msg = {"op": "update", "uuid": self.key, "attrs": self.cron_attrs}
        try:
            with socket.create_connection((self.host, self.port), timeout=10) as sock:
                sock.settimeout(10)
                sock.sendall(json.dumps(msg).encode() + b"\n")
                with sock.makefile("rb") as stream:
                    answer = json.loads(stream.readline() or b"null")
            if not isinstance(answer, dict) or not answer.get("ok"):
                raise ValueError(f"refused: {answer}")
        except (OSError, ValueError) as exc:
            log(f"ad update to {self.where} failed: {exc}")

    def note_state(self, ack: dict) -> None:
        state = (ack.get("state"), ack.get("activity"))
        if state[0] and state != self.state:
            log(f"the pool reports this startd {state[0]}/{state[1]}")
            self.state = state

    @property
    def key(self) -> str:
        return self.uuid or self.name or self.hostname

    def run(self) -> int:
        log(
            f"starting: collector {self.where}, TardisDroneUuid {self.uuid}, "
            f"CCB heartbeat every {self.interval:g} s"
        )
        self.install_signals()
        self.lost_since: Optional[float] = time.monotonic()
        registered_once = False
        last_reason, last_logged = "", 0.0
        try:
            while True:
                try:
                    self.session()
                except Lost as exc:
                    now = time.monotonic()
                    if self.lost_since is None:
                        log(f"lost the pool at {self.where}: {exc}")
                        self.lost_since = now
                        registered_once = True
                    elif str(exc) != last_reason or now - last_logged > 60:
                        verb = (
                            "re-register with" if registered_once else "register with"
                        )
                        log(f"cannot {verb} the pool at {self.where}: {exc}")
                        last_reason, last_logged = str(exc), now
                    waited = now - self.lost_since
                    if self.give_up is not None and waited >= self.give_up:
                        log(f"giving up after {waited:.0f} s without the pool")
                        return 1
                    pause = self.retry
                    if self.give_up is not None:
                        pause = min(pause, max(0.0, self.give_up - waited))
                    self.sleep(pause)
        except Stop:
            log("stopping on signal")
            return 0


def env_seconds(name: str) -> Optional[float]:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else None


def fault_mode() -> str:
    """The lab's payload fault (faults.set_payload): ``exit`` or ``off``.

    Read from ``$TNA_LAB_FAULTS/payload``, else from ``<state>/faults/payload``
    beside the lab's bin dir this command was installed in, so a test can
    break and fix the payload of a running site without touching its jobs.
    """
    directory = os.environ.get("TNA_LAB_FAULTS") or str(
        Path(__file__).resolve().parent.parent / "faults"
    )
    try:
        with open(os.path.join(directory, "payload")) as handle:
            return handle.read().strip() or "off"
    except OSError:
        return "off"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="condor_master", description="HTCondor startd stand-in", allow_abbrev=False
    )
    parser.add_argument("-f", action="store_true", help="foreground (always)")
    parser.add_argument("-d", action="store_true", help="ignored")
    parser.add_argument("-t", action="store_true", help="ignored")
    parser.add_argument("--give-up", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--retry", type=float, default=None, metavar="SECONDS")
    args = parser.parse_args(argv)
    try:
        give_up = (
            args.give_up
            if args.give_up is not None
            else env_seconds("TNA_PAYLOAD_GIVE_UP")
        )
        retry = (
            args.retry if args.retry is not None else env_seconds("TNA_PAYLOAD_RETRY")
        )
    except ValueError as exc:
        log(f"bad number in TNA_PAYLOAD_*: {exc}")
        return 2
    if give_up is not None and give_up < 0:
        give_up = None
    if fault_mode() == "exit":
        # a black-hole site: the payload dies before it ever registers
        log("lab fault: payload exits at once (faults/payload = exit)")
        return 1
    try:
        payload = Payload(
            Config(dict(os.environ)), 3.0 if retry is None else retry, give_up
        )
    except (ConfigError, ValueError) as exc:
        log(f"ERROR: {exc}")
        return 1
    return payload.run()


if __name__ == "__main__":
    sys.exit(main())
