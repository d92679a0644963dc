#!/usr/bin/python3
"""Stand-in for HTCondor's `condor_status`, answering from the pool stand-in.

Usage (the invocations TARDIS's HTCondor batch-system adapter makes, with
options in any order):
  condor_status -af:t Machine -collector [-pool HOST:PORT]
  condor_status -af:t Machine DaemonStartTime -constraint EXPR -master [...]
  condor_status -af:t Machine Name State Activity TardisDroneUuid EXPR...
                -constraint 'PartitionableSlot=?=True' [-pool HOST:PORT] [...]

Honoured: -af/-autoformat with :t (tab), :, (comma), :h (header) and :l
(labels); -constraint with a real ClassAd expression evaluator (literals,
attribute references, arithmetic, comparison, =?=/=!=, three-valued &&/||,
?:, common functions); -collector, -master, -startd (default), -any; -long;
-pool; positional machine/slot names restricting the output; `undefined` for
missing attributes; exit status 1 and "Failed communication with collector" on
stderr when the pool cannot be reached. The pool comes from -pool, else
_CONDOR_COLLECTOR_HOST / COLLECTOR_HOST (default port 9618).

The ads: only CONNECTED drones appear as startds, one partitionable slot each:
Machine = STARTD_NAME or TardisDroneUuid, Name = slot1@<Machine>, State and
Activity from the pool, TardisDroneUuid, Cpus/Memory/TotalSlot* from the
registration, LoadAvg = the pool's load, plus the attributes the drone's
STARTD_CRON jobs published (they cannot override the attributes above). Any -af argument that is not a plain
attribute name (a ratio expression such as Real(TotalSlotCpus-Cpus)/TotalSlotCpus)
evaluates to that drone's load (0..1, set with the pool's set_load op).
-collector lists the pool itself; -master lists the pool (DaemonStartTime = the
pool's start time) and one master per connected drone.

Not honoured: CEDAR queries, -format, -json/-xml, -sort, -limit, -direct,
statistics, schedds/negotiators (empty output), the default table's columns
beyond Name/State/Activity/LoadAv/Mem. Unknown options are ignored with a
warning on stderr.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, Optional

DEFAULT_PORT = 9618


class _Error:
    """The ClassAd `error` value."""

    def __repr__(self) -> str:
        return "error"


ERROR = _Error()
UNDEFINED = None

# -- ClassAd expressions ------------------------------------------------------
TOKEN = re.compile(
    r"""\s*(?:
    (?P<num>\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>=\?=|=!=|==|!=|<=|>=|&&|\|\||[-+*/%<>!?:(),])
    )""",
    re.X,
)


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise SyntaxError(f"cannot parse {text[pos:]!r}")
        kind = match.lastgroup or "op"
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


Node = Callable[[dict], Any]
BINARY_LEVELS = [
    ["||"],
    ["&&"],
    ["==", "!=", "=?=", "=!=", "is", "isnt"],
    ["<", "<=", ">", ">="],
    ["+", "-"],
    ["*", "/", "%"],
]


class Parser:
    """Recursive descent over the token list; yields closures over an ad."""

    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self) -> Optional[str]:
        if self.pos < len(self.tokens):
            kind, value = self.tokens[self.pos]
            return value.lower() if kind == "name" else value
        return None

    def take(self, expected: Optional[str] = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise SyntaxError("unexpected end of expression")
        token = self.tokens[self.pos]
        if expected is not None and self.peek() != expected:
            raise SyntaxError(f"expected {expected!r}, got {token[1]!r}")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.ternary()
        if self.pos != len(self.tokens):
            raise SyntaxError(f"unexpected {self.tokens[self.pos][1]!r}")
        return node

    def ternary(self) -> Node:
        cond = self.binary(0)
        if self.peek() == "?":
            self.take("?")
            yes = self.ternary()
            self.take(":")
            no = self.ternary()
            return lambda ad: _choose(cond(ad), yes, no, ad)
        return cond

    def binary(self, level: int) -> Node:
        if level == len(BINARY_LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while self.peek() in BINARY_LEVELS[level]:
            op = self.take()[1].lower()
            right = self.binary(level + 1)
            node = _binary(op, node, right)
        return node

    def unary(self) -> Node:
        if self.peek() in ("-", "+", "!"):
            op = self.take()[1]
            operand = self.unary()
            return lambda ad: _unary(op, operand(ad))
        return self.primary()

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "num":
            number = float(value) if re.search(r"[.eE]", value) else int(value)
            return lambda ad: number
        if kind == "str":
            text = re.sub(r"\\(.)", r"\1", value[1:-1])
            return lambda ad: text
        if value == "(":
            node = self.ternary()
            self.take(")")
            return node
        if kind != "name":
            raise SyntaxError(f"unexpected {value!r}")
        lower = value.lower()
        if self.peek() == "(":
            self.take("(")
            args: list[Node] = []
            while self.peek() != ")":
                args.append(self.ternary())
                if self.peek() == ",":
                    self.take(",")
            self.take(")")
            return _call(lower, args)
        constants = {"true": True, "false": False, "undefined": UNDEFINED}
        if lower in constants:
            constant = constants[lower]
            return lambda ad: constant
        if lower == "error":
            return lambda ad: ERROR
        attr = re.sub(r"^(my|target)\.", "", lower)
        return lambda ad: ad.get(attr, UNDEFINED)


def _choose(cond: Any, yes: Node, no: Node, ad: dict) -> Any:
    if cond is UNDEFINED:
        return UNDEFINED
    if isinstance(cond, (bool, int, float)):
        return yes(ad) if cond else no(ad)
    return ERROR


def _unary(op: str, value: Any) -> Any:
    if value is UNDEFINED or value is ERROR:
        return value
    if op == "!":
        return (not value) if isinstance(value, bool) else ERROR
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ERROR
    return -value if op == "-" else value


def _same(left: Any, right: Any) -> bool:
    """=?= : identical type and value, strings case-sensitive."""
    if left is UNDEFINED or right is UNDEFINED:
        return left is right
    if left is ERROR or right is ERROR:
        return left is right
    if isinstance(left, bool) != isinstance(right, bool):
        return False
    if isinstance(left, str) != isinstance(right, str):
        return False
    return left == right


def _compare(op: str, left: Any, right: Any) -> Any:
    if left is ERROR or right is ERROR:
        return ERROR
    if left is UNDEFINED or right is UNDEFINED:
        return UNDEFINED
    if isinstance(left, str) and isinstance(right, str):
        left, right = left.lower(), right.lower()
    elif isinstance(left, str) or isinstance(right, str):
        return ERROR
    try:
        return {
            "==": left == right,
            "!=": left != right,
            "<": left < right,
            "<=": left <= right,
            ">": left > right,
            ">=": left >= right,
        }[op]
    except TypeError:
        return ERROR


def _arith(op: str, left: Any, right: Any) -> Any:
    if left is ERROR or right is ERROR:
        return ERROR
    if left is UNDEFINED or right is UNDEFINED:
        return UNDEFINED
    numeric = (int, float)
    if (
        isinstance(left, bool)
        or isinstance(right, bool)
        or not isinstance(left, numeric)
        or not isinstance(right, numeric)
    ):
        return ERROR
    if op in "/%" and right == 0:
        return ERROR
    if op == "/":
        if isinstance(left, int) and isinstance(right, int):
            return int(left / right)
        return left / right
    if op == "%":
        return int(left) - int(right) * int(left / right)
    return {"+": left + right, "-": left - right, "*": left * right}[op]


def _binary(op: str, left: Node, right: Node) -> Node:
    if op == "&&":

        def both(ad: dict) -> Any:
            a = left(ad)
            if a is False:
                return False
            b = right(ad)
            if a is ERROR or b is ERROR or not isinstance(a, (bool, type(None))):
                return ERROR
            if b is False:
                return False
            if not isinstance(b, (bool, type(None))):
                return ERROR
            return UNDEFINED if UNDEFINED in (a, b) else True

        return both
    if op == "||":

        def either(ad: dict) -> Any:
            a = left(ad)
            if a is True:
                return True
            b = right(ad)
            if a is ERROR or b is ERROR or not isinstance(a, (bool, type(None))):
                return ERROR
            if b is True:
                return True
            if not isinstance(b, (bool, type(None))):
                return ERROR
            return UNDEFINED if UNDEFINED in (a, b) else False

        return either
    if op in ("=?=", "is"):
        return lambda ad: _same(left(ad), right(ad))
    if op in ("=!=", "isnt"):
        return lambda ad: not _same(left(ad), right(ad))
    if op in ("==", "!=", "<", "<=", ">", ">="):
        return lambda ad: _compare(op, left(ad), right(ad))
    return lambda ad: _arith(op, left(ad), right(ad))


def _to_real(value: Any) -> Any:
    if value is UNDEFINED or value is ERROR:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return ERROR


def _to_int(value: Any) -> Any:
    real = _to_real(value)
    return int(real) if isinstance(real, float) else real


def _string(value: Any) -> Any:
    if value is UNDEFINED or value is ERROR:
        return value
    return unparse(value, quote=False)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "real": _to_real,
    "int": _to_int,
    "string": _string,
    "isundefined": lambda v: v is UNDEFINED,
    "iserror": lambda v: v is ERROR,
    "isstring": lambda v: isinstance(v, str),
    "isboolean": lambda v: isinstance(v, bool),
    "isinteger": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "isreal": lambda v: isinstance(v, float),
    "tolower": lambda v: v.lower() if isinstance(v, str) else ERROR,
    "toupper": lambda v: v.upper() if isinstance(v, str) else ERROR,
    "strcat": lambda *v: "".join(unparse(x, quote=False) for x in v),
    "size": lambda v: len(v) if isinstance(v, str) else ERROR,
    "time": lambda: int(time.time()),
    "floor": lambda v: math.floor(v) if isinstance(v, (int, float)) else ERROR,
    "ceiling": lambda v: math.ceil(v) if isinstance(v, (int, float)) else ERROR,
    "round": lambda v: int(round(v)) if isinstance(v, (int, float)) else ERROR,
    "strcmp": lambda a, b: (a > b) - (a < b) if isinstance(a, str) else ERROR,
    "stricmp": lambda a, b: (
        (a.lower() > b.lower()) - (a.lower() < b.lower())
        if isinstance(a, str) and isinstance(b, str)
        else ERROR
    ),
    "regexp": lambda p, t, o="": (
        bool(re.search(p, t, re.I if "i" in str(o).lower() else 0))
        if isinstance(p, str) and isinstance(t, str)
        else ERROR
    ),
    "min": lambda *v: (
        min(v) if v and all(isinstance(x, (int, float)) for x in v) else ERROR
    ),
    "max": lambda *v: (
        max(v) if v and all(isinstance(x, (int, float)) for x in v) else ERROR
    ),
}


def _call(name: str, args: list[Node]) -> Node:
    if name == "ifthenelse":
        if len(args) != 3:
            raise SyntaxError("ifThenElse takes three arguments")
        return lambda ad: _choose(args[0](ad), args[1], args[2], ad)
    function = FUNCTIONS.get(name)
    if function is None:
        return lambda ad: ERROR

    def call(ad: dict) -> Any:
        try:
            return function(*(arg(ad) for arg in args))
        except (TypeError, ValueError, re.error):
            return ERROR

    return call


def compile_expr(text: str) -> Node:
    return Parser(text).parse()


def unparse(value: Any, quote: bool) -> str:
    """Print a value the way `condor_status -af` (quote=False) or -long does."""
    if value is UNDEFINED:
        return "undefined"
    if value is ERROR:
        return "error"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value) if quote else value
    return str(value)


# -- the pool -------------------------------------------------------------------
class Unreachable(Exception):
    pass


def collector_address(pool: Optional[str]) -> tuple[str, int]:
    """-pool wins, then _CONDOR_COLLECTOR_HOST (any case), then COLLECTOR_HOST."""
    value = pool
    if not value:
        for key, env_value in os.environ.items():
            if key.upper() == "_CONDOR_COLLECTOR_HOST":
                value = env_value
    value = value or os.environ.get("COLLECTOR_HOST")
    if not value:
        raise Unreachable("no collector: give -pool or set _CONDOR_COLLECTOR_HOST")
    first = re.split(r"[,\s]+", value.strip())[0].strip("<>").split("?", 1)[0]
    if first.startswith("["):
        host, _, rest = first[1:].partition("]")
        port = rest.lstrip(":")
    elif first.count(":") == 1:
        host, _, port = first.partition(":")
    else:
        host, port = first, ""
    if not port.isdigit() and port:
        raise Unreachable(f"bad collector address {value!r}")
    return host, int(port) if port else DEFAULT_PORT


def query_pool(host: str, port: int) -> dict[str, Any]:
    """One short connection with one `query` request, as HTCondor tools do."""
    timeout = float(os.environ.get("TNA_COLLECTOR_TIMEOUT", "20"))
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b'{"op":"query"}\n')
            with sock.makefile("rb") as stream:
                line = stream.readline()
    except OSError as exc:
        raise Unreachable(str(exc)) from exc
    try:
        answer = json.loads(line)
    except ValueError as exc:
        raise Unreachable(f"garbled answer {line[:80]!r}") from exc
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise Unreachable(f"query refused: {answer!r}")
    return answer


def cron_value(text: str) -> Any:
    """A STARTD_CRON attribute's expression, evaluated like a literal."""
    try:
        return compile_expr(text)({})
    except (SyntaxError, RecursionError):
        return text


def startd_ad(drone: dict[str, Any]) -> dict[str, Any]:
    machine = drone.get("name") or drone.get("uuid") or drone.get("host") or "unknown"
    cpus = int(drone.get("cpus") or 1)
    memory = int(drone.get("memory") or 1024)
    load = float(drone.get("load") or 0.0)
    remote = drone.get("remote") or ""
    attrs = drone.get("attrs") if isinstance(drone.get("attrs"), dict) else {}
    cron = {str(k).lower(): cron_value(str(v)) for k, v in attrs.items()}
    return {
        **cron,
        "mytype": "Machine",
        "machine": machine,
        "name": f"slot1@{machine}",
        "state": drone.get("state", "Unclaimed"),
        "activity": drone.get("activity", "Idle"),
        "tardisdroneuuid": drone.get("uuid"),
        "partitionableslot": True,
        "slottype": "Partitionable",
        "slotid": 1,
        "totalslotcpus": cpus,
        "totalcpus": cpus,
        "cpus": round(cpus * (1.0 - load)),
        "totalslotmemory": memory,
        "totalmemory": memory,
        "memory": round(memory * (1.0 - load)),
        "loadavg": load,
        "condorloadavg": load,
        "totalloadavg": load * cpus,
        "myaddress": f"<{remote}>",
        "daemonstarttime": int(drone.get("registered_at") or 0),
        "lastheardfrom": int(drone.get("last_heard") or 0),
        "updatesequencenumber": int(drone.get("heartbeats") or 0),
        "ccbaddress": (drone.get("ad") or {}).get("ccb_address"),
        "start": True,
    }


def daemon_ads(answer: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    collector = answer.get("collector") or {}
    drones = [d for d in answer.get("drones") or [] if d.get("connected")]
    pool_ad = {
        "machine": collector.get("machine"),
        "name": collector.get("machine"),
        "daemonstarttime": int(collector.get("start_time") or 0),
        "myaddress": f"<{collector.get('address')}>",
    }
    if kind == "collector":
        return [dict(pool_ad, mytype="Collector")]
    masters = [dict(pool_ad, mytype="DaemonMaster")]
    for drone in drones:
        ad = startd_ad(drone)
        masters.append(
            {
                "mytype": "DaemonMaster",
                "machine": ad["machine"],
                "name": ad["machine"],
                "daemonstarttime": ad["daemonstarttime"],
                "myaddress": ad["myaddress"],
            }
        )
    if kind == "master":
        return masters
    startds = [startd_ad(d) for d in drones]
    if kind == "startd":
        return sorted(startds, key=lambda ad: ad["name"])
    if kind == "any":
        return [dict(pool_ad, mytype="Collector"), *masters, *startds]
    return []


# -- command line ---------------------------------------------------------------
FLAG_TYPES = {"collector", "master", "startd", "any", "schedd", "negotiator"}
OPTIONS_WITH_VALUE = {
    "constraint": 1,
    "pool": 1,
    "name": 1,
    "sort": 1,
    "limit": 1,
    "direct": 1,
    "attributes": 1,
    "format": 2,
    "statistics": 1,
    "subsystem": 1,
    "target": 1,
}
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Usage(Exception):
    pass


def parse_args(argv: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "af": None,
        "af_mode": "",
        "constraints": [],
        "pool": None,
        "kind": "startd",
        "long": False,
        "names": [],
    }
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            opts["names"].append(arg)
            continue
        word, _, mode = arg.lstrip("-").partition(":")
        lower = word.lower()
        if lower in ("af", "autoformat") or (
            len(lower) >= 3 and "autoformat".startswith(lower)
        ):
            attrs = []
            while i < len(argv) and not argv[i].startswith("-"):
                attrs.append(argv[i])
                i += 1
            if not attrs:
                raise Usage("-af requires at least one attribute")
            opts["af"] = (opts["af"] or []) + attrs
            opts["af_mode"] = mode
            continue
        if lower in ("l", "long"):
            opts["long"] = True
            continue
        matches = [name for name in OPTIONS_WITH_VALUE if name.startswith(lower)]
        if len(lower) >= 2 and len(matches) == 1:
            name = matches[0]
            count = OPTIONS_WITH_VALUE[name]
            if i + count > len(argv):
                raise Usage(f"-{name} requires {count} argument(s)")
            values = argv[i : i + count]
            i += count
            if name == "constraint":
                opts["constraints"].append(values[0])
            elif name == "pool":
                opts["pool"] = values[0]
            elif name != "name":
                warn(f"ignoring -{name} {' '.join(values)}")
            else:
                opts["names"].append(values[0])
            continue
        kinds = [k for k in FLAG_TYPES if k.startswith(lower)]
        if lower in FLAG_TYPES or (len(lower) >= 3 and len(kinds) == 1):
            opts["kind"] = lower if lower in FLAG_TYPES else kinds[0]
            continue
        warn(f"ignoring unsupported option {arg}")
    return opts


def warn(message: str) -> None:
    print(f"condor_status stand-in: {message}", file=sys.stderr)


def column(expr: str) -> Callable[[dict], Any]:
    """A plain attribute is looked up; any other expression is the drone's load."""
    if ATTRIBUTE_NAME.match(expr):
        key = expr.lower()
        return lambda ad: ad.get(key, UNDEFINED)
    return lambda ad: ad.get("loadavg", UNDEFINED)


def render(opts: dict[str, Any], ads: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    if opts["af"]:
        mode = opts["af_mode"]
        sep = "\t" if "t" in mode else ("," if "," in mode else " ")
        columns = [(expr, column(expr)) for expr in opts["af"]]
        if "h" in mode:
            lines.append(sep.join(name for name, _ in columns))
        for ad in ads:
            cells = [unparse(get(ad), quote=False) for _, get in columns]
            if "l" in mode:
                cells = [f"{name} = {cell}" for (name, _), cell in zip(columns, cells)]
            lines.append(sep.join(cells))
    elif opts["long"]:
        for ad in ads:
            lines.extend(
                f"{key} = {unparse(value, quote=True)}" for key, value in ad.items()
            )
            lines.append("")
    else:
        header = f"{'Name':<40} {'State':<10} {'Activity':<9} {'LoadAv':>6} {'Mem':>7}"
        lines.append(header)
        for ad in ads:
            lines.append(
                f"{str(ad.get('name')):<40} {str(ad.get('state', '')):<10} "
                f"{str(ad.get('activity', '')):<9} {float(ad.get('loadavg') or 0):>6.3f} "
                f"{str(ad.get('totalslotmemory', '')):>7}"
            )
    return "".join(line + "\n" for line in lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
        constraints = [compile_expr(text) for text in opts["constraints"]]
    except (Usage, SyntaxError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    try:
        host, port = collector_address(opts["pool"])
        answer = query_pool(host, port)
    except Unreachable as exc:
        where = opts["pool"] or "the configured collector"
        print(
            f"Error: Couldn't contact the condor_collector on {where}.\n"
            f"Failed communication with collector: {exc}",
            file=sys.stderr,
        )
        return 1
    ads = daemon_ads(answer, opts["kind"])
    ads = [ad for ad in ads if all(c(ad) is True for c in constraints)]
    if opts["names"]:
        wanted = {name.lower() for name in opts["names"]}
        ads = [
            ad
            for ad in ads
            if str(ad.get("machine")).lower() in wanted
            or str(ad.get("name")).lower() in wanted
        ]
    sys.stdout.write(render(opts, ads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
