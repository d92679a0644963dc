#!/usr/bin/python3
"""Stand-in for an HTCondor central manager (condor_collector + CCB server).

Usage: pool --listen HOST:PORT --state FILE [--pid-file F] [--name MACHINE]
            [--retire-seconds S] [--expiry-factor K] [--fresh] [-v]
       pool --request HOST:PORT JSON     (client: one request, answer on stdout)

Honoured: the part of the contract the lab depends on. A startd (the payload
stand-in) opens ONE long-lived TCP connection, registers its TardisDroneUuid and
keeps the connection alive with heartbeats, exactly the traffic pattern of
HTCondor's CCB connection that idle-timeout firewalls kill. The pool knows which
drones are connected and when each was last heard, can drain them (Unclaimed/Idle
-> Drained/Retiring -> Drained/Idle) and reports its own machine name and start
time, which is what TARDIS's HTCondor adapter asks `condor_status` for.
A registration whose heartbeats stop for longer than K heartbeat intervals
expires, like a collector ad outliving its lifetime.

Not honoured: the CEDAR wire protocol, ClassAd updates over UDP, security
negotiation, matchmaking, jobs. Unlike a real collector, which forgets all ads
on restart, the stand-in reloads its state file (every drone disconnected) so
that tests can count reconnections; pass --fresh to start empty.

Protocol: JSON objects, one per line, each answered with one JSON line.
  {"op":"register","uuid":U,"name":STARTD_NAME,"host":H,"cpus":N,"memory":MB,
   "heartbeat_interval":S,...}         -> {"ok":true,"conn":ID,"connect_count":C}
  {"op":"heartbeat"}  (same connection) -> {"ok":true,"state":..,"activity":..}
  {"op":"query"}                        -> {"ok":true,"collector":{..},"drones":[..]}
  {"op":"drain","name":N[,"cancel":true]} -> {"ok":true,"drone":{..}}
  {"op":"set_load","uuid":"*"|U,"load":X} -> {"ok":true,"updated":K}
  {"op":"update","uuid":U,"attrs":{"Name":"expr",..}} -> {"ok":true}
                                        (STARTD_CRON attributes, own connection)
  {"op":"info"}                         -> {"ok":true,"machine":M,"start_time":T,..}
Errors are answered {"ok":false,"error":"..."}; garbage never stops the pool.
The state file (JSON, replaced atomically within ~50 ms of every change) holds
{"collector":{..},"updated_at":T,"next_conn":N,"drones":{KEY:record}}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import socket
import sys
import time
from typing import Any, Optional

MAX_LINE = 1 << 16
WRITE_DELAY = 0.05
REGISTER_FIELDS = {"op", "uuid", "name", "host", "cpus", "memory", "heartbeat_interval"}
VERBOSE = False


def log(message: str) -> None:
    """One line per event on stderr, timestamped, so lab logs can be read later."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    print(f"{stamp} pool: {message}", file=sys.stderr, flush=True)


def parse_hostport(text: str) -> tuple[str, int]:
    """Split HOST:PORT (also [v6]:PORT and :PORT) as given to --listen."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def fmt_peer(peer: Any) -> str:
    """Format a socket peer address as host:port."""
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _str_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value else None


def _number(value: Any, default: float, minimum: float = 0.0) -> float:
    """Coerce a client-supplied number, refusing bools, NaN and negatives."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if value is None:
            return default
        raise ValueError(f"not a number: {value!r}")
    if value != value or value < minimum:
        raise ValueError(f"out of range: {value!r}")
    return value


class Pool:
    """All state of the collector; every mutation goes through `changed()`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.state_path: str = args.state
        self.machine: str = args.name or socket.gethostname()
        self.retire_seconds: float = args.retire_seconds
        self.expiry_factor: float = args.expiry_factor
        self.start_time = time.time()
        self.address = args.listen
        self.records: dict[str, dict[str, Any]] = {}
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.next_conn = 1
        self._write_handle: Optional[asyncio.TimerHandle] = None
        self.stopping = False
        if not args.fresh:
            self._load_previous()

    def _load_previous(self) -> None:
        """Keep records of an earlier run (all disconnected) to count reconnects."""
        try:
            with open(self.state_path, encoding="utf-8") as handle:
                old = json.load(handle)
            drones = old.get("drones", {})
            self.next_conn = max(int(old.get("next_conn", 1)), 1)
        except (OSError, ValueError, AttributeError, TypeError):
            return
        if not isinstance(drones, dict):
            return
        for key, record in drones.items():
            if isinstance(record, dict):
                if record.get("connected"):
                    record["connected"] = False
                    record["disconnected_at"] = record.get("last_heard")
                    record["disconnect_reason"] = "pool restarted"
                self.records[str(key)] = record
        log(f"loaded {len(self.records)} drone record(s) from {self.state_path}")

    # -- state file ---------------------------------------------------------
    def collector_info(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "address": self.address,
            "start_time": self.start_time,
            "pid": os.getpid(),
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "collector": self.collector_info(),
            "updated_at": time.time(),
            "next_conn": self.next_conn,
            "drones": self.records,
        }

    def changed(self) -> None:
        """Schedule one atomic state write; bursts of changes share it."""
        if self._write_handle is None and not self.stopping:
            loop = asyncio.get_running_loop()
            self._write_handle = loop.call_later(WRITE_DELAY, self.write_state)

    def write_state(self) -> None:
        """Write tmp + rename so readers never see a half-written file."""
        self._write_handle = None
        tmp = f"{self.state_path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(self.snapshot(), handle, indent=1, sort_keys=True)
            os.replace(tmp, self.state_path)
        except OSError as exc:
            log(f"cannot write state file {self.state_path}: {exc}")

    # -- records ------------------------------------------------------------
    def find(self, name: str) -> Optional[dict[str, Any]]:
        """Match a key, uuid, machine or slot name (slot1@machine); connected first."""
        found = None
        for key, record in self.records.items():
            machine = record.get("machine")
            if name in {key, record.get("uuid"), machine, f"slot1@{machine}"}:
                if record.get("connected"):
                    return record
                found = found or record
        return found

    def disconnect(self, key: str, conn: int, reason: str) -> None:
        record = self.records.get(key)
        if record is None or record.get("conn") != conn or not record["connected"]:
            return
        record["connected"] = False
        record["disconnected_at"] = time.time()
        record["disconnect_reason"] = reason
        self.writers.pop(conn, None)
        log(f"disconnected {key} (conn {conn}): {reason}")
        self.changed()

    def register(
        self, msg: dict[str, Any], conn: int, remote: str, writer: asyncio.StreamWriter
    ) -> tuple[dict[str, Any], str]:
        uuid = _str_or_none(msg.get("uuid"))
        name = _str_or_none(msg.get("name"))
        host = _str_or_none(msg.get("host"))
        key = uuid or name or host
        if key is None:
            raise ValueError("register needs a uuid, name or host string")
        cpus = int(_number(msg.get("cpus"), 1, 0))
        memory = int(_number(msg.get("memory"), 1024, 0))
        interval = float(_number(msg.get("heartbeat_interval"), 0, 0))
        now = time.time()
        record = self.records.get(key)
        if record is None:
            record = {"connect_count": 0, "state": "Unclaimed", "activity": "Idle"}
            record.update(load=0.0, heartbeats=0)
            self.records[key] = record
        elif record.get("connected") and record.get("conn") != conn:
            old = record.get("conn")
            log(f"{key} registered again (conn {conn}); closing stale conn {old}")
            old_writer = self.writers.pop(old, None) if isinstance(old, int) else None
            if old_writer is not None:
                old_writer.close()
        record.update(
            uuid=uuid,
            name=name,
            host=host,
            machine=name or uuid or host,
            connected=True,
            conn=conn,
            connect_count=int(record.get("connect_count", 0)) + 1,
            registered_at=now,
            last_heard=now,
            remote=remote,
            cpus=cpus,
            memory=memory,
            heartbeat_interval=interval,
            disconnected_at=None,
            disconnect_reason=None,
            ad={k: v for k, v in msg.items() if k not in REGISTER_FIELDS},
        )
        record.setdefault("state", "Unclaimed")
        record.setdefault("activity", "Idle")
        record.setdefault("load", 0.0)
        self.writers[conn] = writer
        log(
            f"registered {key} (conn {conn}, connect #{record['connect_count']}) "
            f"from {remote}, heartbeat every {interval:g} s"
        )
        self.changed()
        return {"ok": True, "conn": conn, "connect_count": record["connect_count"]}, key

    def heartbeat(self, key: Optional[str], conn: int) -> dict[str, Any]:
        record = self.records.get(key) if key else None
        if record is None or record.get("conn") != conn:
            raise ValueError("heartbeat before register on this connection")
        record["last_heard"] = time.time()
        record["heartbeats"] = int(record.get("heartbeats", 0)) + 1
        if VERBOSE:
            log(f"heartbeat from {key} (conn {conn})")
        self.changed()
        return {"ok": True, "state": record["state"], "activity": record["activity"]}

    def drain(self, msg: dict[str, Any]) -> dict[str, Any]:
        name = msg.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("drain needs a name")
        record = self.find(name)
        if record is None or not record.get("connected"):
            raise ValueError(f"no connected startd named {name}")
        if msg.get("cancel"):
            record.update(state="Unclaimed", activity="Idle")
            log(f"drain of {name} cancelled")
        else:
            record.update(state="Drained", activity="Retiring")
            log(f"draining {name} (Retiring for {self.retire_seconds:g} s)")
            loop = asyncio.get_running_loop()
            loop.call_later(self.retire_seconds, self._drained, record, name)
        self.changed()
        return {"ok": True, "drone": record}

    def _drained(self, record: dict[str, Any], name: str) -> None:
        if (record.get("state"), record.get("activity")) == ("Drained", "Retiring"):
            record["activity"] = "Idle"
            log(f"{name} is Drained/Idle")
            self.changed()

    def update(self, msg: dict[str, Any]) -> dict[str, Any]:
        """STARTD_CRON attributes of a drone (ClassAd expressions as text)."""
        target = msg.get("uuid")
        record = self.records.get(target) if isinstance(target, str) else None
        if record is None:
            raise ValueError(f"unknown drone {target!r}")
        attrs = msg.get("attrs")
        if not isinstance(attrs, dict) or len(attrs) > 200:
            raise ValueError("attrs must be an object of at most 200 attributes")
        for name, value in attrs.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"bad attribute name {name!r}")
            if not isinstance(value, str) or len(value) > 4096:
                raise ValueError(f"attribute {name}: value must be a short string")
        record["attrs"] = attrs
        record["attrs_updated_at"] = time.time()
        if VERBOSE:
            log(f"ad update from {target}: {len(attrs)} attribute(s)")
        self.changed()
        return {"ok": True}

    def set_load(self, msg: dict[str, Any]) -> dict[str, Any]:
        target = msg.get("uuid")
        load = float(_number(msg.get("load"), 0.0, 0.0))
        if load > 1.0:
            raise ValueError("load must be within 0..1")
        if target == "*":
            records = list(self.records.values())
        elif isinstance(target, str) and self.find(target) is not None:
            records = [self.find(target)]
        else:
            raise ValueError(f"unknown drone {target!r}")
        for record in records:
            if record is not None:
                record["load"] = load
        log(f"load of {target} set to {load:g} ({len(records)} drone(s))")
        self.changed()
        return {"ok": True, "updated": len(records)}

    def expire(self) -> None:
        """Close registrations whose heartbeats stopped (ad lifetime ran out)."""
        now = time.time()
        for key, record in list(self.records.items()):
            interval = float(record.get("heartbeat_interval") or 0)
            if not record.get("connected") or interval <= 0:
                continue
            silent = now - float(record.get("last_heard") or now)
            if silent > self.expiry_factor * interval + 2.0:
                conn = record.get("conn")
                writer = self.writers.get(conn) if isinstance(conn, int) else None
                self.disconnect(key, conn, f"expired: no heartbeat for {silent:.0f} s")
                if writer is not None:
                    writer.close()

    # -- connections --------------------------------------------------------
    def dispatch(
        self,
        line: bytes,
        conn: int,
        remote: str,
        key: Optional[str],
        writer: asyncio.StreamWriter,
    ) -> tuple[dict[str, Any], Optional[str]]:
        """Answer one request line; never raises for bad input."""
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("request must be a JSON object")
            op = msg.get("op")
            if op == "register":
                reply, new_key = self.register(msg, conn, remote, writer)
                if key is not None and key != new_key:
                    self.disconnect(key, conn, f"re-registered as {new_key}")
                return reply, new_key
            if op == "heartbeat":
                return self.heartbeat(key, conn), key
            if op == "query":
                drones = [dict(r, key=k) for k, r in sorted(self.records.items())]
                reply = {"ok": True, "collector": self.collector_info()}
                return dict(reply, drones=drones), key
            if op == "info":
                return dict(self.collector_info(), ok=True), key
            if op == "drain":
                return self.drain(msg), key
            if op == "update":
                return self.update(msg), key
            if op == "set_load":
                return self.set_load(msg), key
            raise ValueError(f"unknown op {op!r}")
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            return {"ok": False, "error": str(exc)}, key

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = self.next_conn
        self.next_conn += 1
        remote = fmt_peer(writer.get_extra_info("peername"))
        key: Optional[str] = None
        reason = "connection closed by peer"
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    break
                except asyncio.LimitOverrunError:
                    writer.write(b'{"ok":false,"error":"request line too long"}\n')
                    reason = "request line too long"
                    break
                if not line.strip():
                    continue
                reply, key = self.dispatch(line, conn, remote, key, writer)
                writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            reason = f"connection error: {exc}"
        except asyncio.CancelledError:
            reason = "pool stopping"
        finally:
            if key is not None:
                self.disconnect(key, conn, reason)
            with contextlib.suppress(Exception):
                writer.close()

    def stop_all(self) -> None:
        """Mark every drone disconnected and write the state synchronously."""
        self.stopping = True
        for key, record in self.records.items():
            if record.get("connected"):
                self.disconnect(key, record.get("conn"), "pool stopped")
        for writer in list(self.writers.values()):
            with contextlib.suppress(Exception):
                writer.close()
        if self._write_handle is not None:
            self._write_handle.cancel()
        self.write_state()


async def sweeper(pool: Pool) -> None:
    while True:
        await asyncio.sleep(1.0)
        pool.expire()


async def serve(args: argparse.Namespace) -> int:
    host, port = parse_hostport(args.listen)
    pool = Pool(args)
    server = await asyncio.start_server(
        pool.handle, host, port, limit=MAX_LINE, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()
    pool.address = fmt_peer(bound)
    pool.write_state()
    log(f"collector {pool.machine} listening on {pool.address} (pid {os.getpid()})")
    if args.pid_file:
        with open(args.pid_file, "w", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sweep = asyncio.create_task(sweeper(pool))
    await stop.wait()
    log("stopping")
    server.close()
    sweep.cancel()
    pool.stop_all()
    if args.pid_file:
        with contextlib.suppress(OSError):
            with open(args.pid_file, encoding="utf-8") as handle:
                mine = handle.read().strip() == str(os.getpid())
            if mine:
                os.unlink(args.pid_file)
    return 0


def raise_fd_limit() -> None:
    """Allow thousands of concurrent drone connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def client(address: str, request: str) -> int:
    """`pool --request HOST:PORT '{"op":"set_load",...}'` for humans and the demo."""
    try:
        host, port = parse_hostport(address)
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(request.strip().encode() + b"\n")
            with sock.makefile("rb") as stream:
                line = stream.readline()
        answer = json.loads(line)
    except (OSError, ValueError) as exc:
        print(f"pool: request to {address} failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=1, sort_keys=True))
    return 0 if isinstance(answer, dict) and answer.get("ok") else 1


def main(argv: Optional[list[str]] = None) -> int:
    global VERBOSE
    parser = argparse.ArgumentParser(
        prog="pool", description="HTCondor collector stand-in (JSON lines over TCP)"
    )
    parser.add_argument("--listen", help="HOST:PORT (port 0: any)")
    parser.add_argument("--state", help="JSON state file")
    parser.add_argument(
        "--request",
        nargs=2,
        metavar=("HOST:PORT", "JSON"),
        help="client mode: send one request to a running pool, print the answer",
    )
    parser.add_argument("--pid-file")
    parser.add_argument("--name", help="collector machine name (default: hostname)")
    parser.add_argument("--retire-seconds", type=float, default=3.0)
    parser.add_argument("--expiry-factor", type=float, default=3.0)
    parser.add_argument("--fresh", action="store_true", help="ignore an old state")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    VERBOSE = args.verbose
    if args.request:
        return client(*args.request)
    if not args.listen or not args.state:
        parser.error("--listen and --state are required to serve")
    try:
        parse_hostport(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    raise_fd_limit()
    try:
        return asyncio.run(serve(args))
    except OSError as exc:
        log(f"cannot serve on {args.listen}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
