"""Render the drone script: one bash file per machine type from the Network profile.

Why templates: the script and the configuration files it writes (ssh_config,
proxychains.conf, tsocks.conf) should read like the OpenSSH and proxychains
configs they are, so a site operator can review exactly what runs
(``tardis-netadapter render``). Why it is safe: every configured value reaches
bash through ``shquote`` (single quotes) and ssh_config through ``sshvalue``;
the bash libraries in drone_scripts/lib are plain files inserted verbatim, so
no configured value is ever parsed as code. Per-drone values are not rendered
at all: they arrive as environment variables exported by sbatch, or, for the
local ports set to ``auto``, are chosen by the script at run time; the rendered
text holds a placeholder ``@TARDIS_PORT_<i>@`` (0: SOCKS, i: forward i) for
each such port, which the script replaces once it has chosen.
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import math
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2

from .config import AUTO, NetworkProfile, PortSetting
from .keepalive import KeepaliveBudget
from .schema import ConfigurationError

__all__ = [
    "cvmfs_http_proxy",
    "port_placeholder",
    "proxychains_conf_text",
    "render_drone_script",
    "ssh_config_text",
    "template_dir",
    "tsocks_conf_text",
]

TEMPLATE_PACKAGE = "tardis_netadapter.drone_scripts"
#: terminator of the quoted here-documents that carry the configuration files
HEREDOC_END = "TARDIS_NETADAPTER_EOF"
#: bash libraries of the drone script, in the order they are inserted
LIBRARIES = (
    "common.sh",
    "tunnel.sh",
    "cvmfs.sh",
    "chain.sh",
    "container.sh",
    "payload.sh",
)
#: the connectivity watchdog and its glue, inserted when monitoring is enabled
MONITORING_LIBRARIES = ("watchdog.sh", "monitoring.sh")
#: how long mountrepo may take per repository (s)
CVMFS_MOUNT_TIMEOUT = 300
#: the chain gets at least this long to reach the collector (ms)
MIN_CHAIN_READY_TIMEOUT_MS = 30_000
#: grace between SIGTERM and SIGKILL for the payload (ms); below Slurm's KillWait
PAYLOAD_STOP_TIMEOUT_MS = 20_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def template_dir() -> Path:
    """drone_scripts/ of an installed package, else of the repository checkout."""
    try:
        spec = importlib.util.find_spec(TEMPLATE_PACKAGE)
    except ModuleNotFoundError:
        spec = None
    # a namespace package (no __init__.py): its directories, not a resource path
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "drone.sh.j2").is_file():
            return Path(location)
    checkout = Path(__file__).resolve().parent.parent / "drone_scripts"
    if (checkout / "drone.sh.j2").is_file():
        return checkout
    raise FileNotFoundError(
        f"drone script templates not found (package {TEMPLATE_PACKAGE} or {checkout})"
    )


# -- filters ----------------------------------------------------------------


def shquote(value: Any) -> str:
    """One bash word whose value is exactly ``value`` (single-quoted if needed)."""
    if isinstance(value, bool):
        raise TypeError("use the shbool filter for booleans")
    return shlex.quote(str(value))


def shwords(values: Iterable[Any]) -> str:
    """Bash words for an array literal ``(a 'b c')``."""
    return " ".join(shquote(value) for value in values)


def shbool(value: bool) -> str:
    """1 or 0, for bash's ``(( ))``."""
    return "1" if value else "0"


def comment(value: Any) -> str:
    """Text that stays inside one ``#`` comment line."""
    return _CONTROL.sub("?", str(value))


def sshvalue(value: str) -> str:
    """A literal ssh_config argument: %-tokens escaped, quoted when needed.

    A leading ``~`` is still expanded by ssh (as in any ssh_config).
    """
    if _CONTROL.search(value):
        raise ValueError(f"control character in ssh_config value {value!r}")
    value = value.replace("%", "%%")
    if value and not re.search(r"[\s\"'\\#=]", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=4)
def _environment(directory: Path) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # bash's ${#array[@]} would open a Jinja comment
        comment_start_string="{##",
        comment_end_string="##}",
    )
    environment.filters.update(
        shquote=shquote,
        shwords=shwords,
        shbool=shbool,
        comment=comment,
        sshvalue=sshvalue,
    )
    return environment


def _render(name: str, **context: Any) -> str:
    return _environment(template_dir()).get_template(name).render(**context)


# -- configuration files -----------------------------------------------------


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _hops(profile: NetworkProfile) -> list[dict[str, Any]]:
    hops = []
    for index, hop in enumerate(profile.tunnel.hops, start=1):
        hops.append(
            {
                "alias": f"tardis-hop-{index}",
                "host": hop.host,
                "port": hop.port,
                "user": hop.user,
                "jump": f"tardis-hop-{index - 1}" if index > 1 else None,
            }
        )
    return hops


def port_placeholder(index: int) -> str:
    """What the script replaces with the ``index``-th local port it chose."""
    return f"@TARDIS_PORT_{index}@"


def _port(index: int, setting: PortSetting) -> str:
    """A local port in rendered text: its number, or the run-time placeholder."""
    return port_placeholder(index) if setting == AUTO else str(setting)


def tunnel_route(profile: NetworkProfile) -> str:
    """Human wording of the tunnel for log lines and headers."""
    if profile.mode != "socks" or not profile.tunnel.hops:
        return "no tunnel"
    hops = " -> ".join(f"{hop.destination}:{hop.port}" for hop in profile.tunnel.hops)
    return f"ssh {hops}, SOCKS on 127.0.0.1:{_port(0, profile.tunnel.socks_port)}"


def chain_route(profile: NetworkProfile) -> str:
    """Human wording of the proxy chain for log lines and headers."""
    hops = [f"socks5 127.0.0.1:{_port(0, profile.tunnel.socks_port)} (ssh tunnel)"]
    hops += [
        f"{proxy.type} {_endpoint(proxy.host, proxy.port)}"
        for proxy in profile.chain.proxies
    ]
    return " -> ".join(hops)


def _check_paths(profile: NetworkProfile, path: str = "Network") -> None:
    problems = []
    for key in ("identity_file", "known_hosts"):
        value = getattr(profile.tunnel, key)
        if _CONTROL.search(value) or not value:
            problems.append(
                f"{path}.tunnel.{key}: got {value!r}; expected a file path "
                "without control characters"
            )
    server_url = profile.cvmfs.server_url
    if server_url is not None and re.search(r"[\x00-\x1f\x7f\"$`\\]", server_url):
        problems.append(
            f"{path}.cvmfs.server_url: got {server_url!r}; a URL must not contain "
            "control characters, \", $, ` or \\ (it is written into cvmfs's "
            "configuration)"
        )
    if problems:
        raise ConfigurationError(problems)


def cvmfs_http_proxy(profile: NetworkProfile) -> str:
    """CVMFS_HTTP_PROXY with every ``forward:NAME`` turned into its local address.

    An ``auto`` forward's port becomes its placeholder, replaced at run time.
    """
    tunnel = profile.tunnel

    def resolve(part: str) -> str:
        if not part.startswith("forward:"):
            return part  # a proxy, DIRECT, or a ';' or '|' between them
        index = tunnel.forward_index(part.removeprefix("forward:"))
        if index is None:  # load_profile refuses this; a hand-built profile may not
            raise ConfigurationError([f"cvmfs.http_proxy: no forward for {part!r}"])
        return (
            f"http://127.0.0.1:{_port(index + 1, tunnel.forwards[index].listen_port)}"
        )

    return "".join(
        resolve(part) for part in re.split(r"([;|])", profile.cvmfs.http_proxy)
    )


def _forward_lines(profile: NetworkProfile) -> list[str]:
    """The -L/-D options the script gives ssh, for the ssh_config's header."""
    tunnel = profile.tunnel
    lines = [
        f"-L 127.0.0.1:{f.listen_port}:{_endpoint(f.host, f.port)}"
        + (f" ({f.name})" if f.name else "")
        for f in tunnel.forwards
    ]
    return lines + [f"-D 127.0.0.1:{tunnel.socks_port}"]


def ssh_config_text(profile: NetworkProfile, budget: KeepaliveBudget) -> str:
    """The tunnel's ssh_config (hops as ProxyJump chain).

    The -D/-L forwards are not in it: their local ports may be chosen per
    drone, so the script gives them on ssh's command line (tunnel_command).
    """
    _check_paths(profile)
    tunnel = profile.tunnel
    return _render(
        "conf/ssh_config.j2",
        route=tunnel_route(profile),
        hops=_hops(profile),
        forwards=_forward_lines(profile),
        strict_host_key_checking="yes" if tunnel.strict_host_key_checking else "no",
        known_hosts=tunnel.known_hosts,
        identity_file=tunnel.identity_file,
        server_alive_interval=budget.server_alive_interval,
        server_alive_count_max=budget.server_alive_count_max,
        connect_timeout=max(1, math.ceil(tunnel.ready_timeout)),
    )


def _localnets(
    profile: NetworkProfile,
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The configured local networks, loopback always first (the -L forwards)."""
    nets = [ipaddress.ip_network("127.0.0.0/8")]
    for net in profile.chain.localnets:
        if net not in nets:
            nets.append(net)
    return nets


def proxychains_conf_text(profile: NetworkProfile) -> str:
    """proxychains-ng configuration: strict chain from the tunnel's SOCKS port."""
    localnet = [
        f"{net.network_address}/{net.netmask}"
        if net.version == 4
        else f"{net.network_address}/{net.prefixlen}"
        for net in _localnets(profile)
    ]
    return _render(
        "conf/proxychains.conf.j2",
        route=chain_route(profile),
        quiet=profile.chain.quiet,
        remote_dns=profile.chain.remote_dns,
        localnet=localnet,
        socks_port=_port(0, profile.tunnel.socks_port),
        proxies=profile.chain.proxies,
    )


def tsocks_conf_text(profile: NetworkProfile) -> str:
    """tsocks configuration: the tunnel's SOCKS port, IPv4 local networks."""
    localnet = [
        f"{net.network_address}/{net.netmask}"
        for net in _localnets(profile)
        if net.version == 4
    ]
    return _render(
        "conf/tsocks.conf.j2",
        route=chain_route(profile),
        localnet=localnet,
        socks_port=_port(0, profile.tunnel.socks_port),
    )


# -- the drone script ----------------------------------------------------------


def _library(directory: Path, name: str) -> str:
    text = (directory / "lib" / name).read_text(encoding="utf-8")
    return text if text.endswith("\n") else text + "\n"


def _heredoc_safe(**texts: str) -> None:
    for name, text in texts.items():
        if HEREDOC_END in text.splitlines():
            raise ValueError(f"{name} contains the here-document end {HEREDOC_END}")


def render_drone_script(
    profile: NetworkProfile,
    budget: KeepaliveBudget,
    site_name: str,
    machine_type: str,
    job_id_variable: str = "SLURM_JOB_ID",  # interim: the modes work renders it
) -> str:
    """The drone's job script for one machine type: pure and deterministic.

    Raises ConfigurationError for a value that cannot be written safely.
    """
    _check_paths(profile)
    directory = template_dir()
    socks = profile.mode == "socks" and bool(profile.tunnel.hops)
    ssh_config = ssh_config_text(profile, budget) if socks else ""
    proxychains_conf = proxychains_conf_text(profile)
    tsocks_conf = tsocks_conf_text(profile)
    _heredoc_safe(
        ssh_config=ssh_config, proxychains=proxychains_conf, tsocks=tsocks_conf
    )
    names = list(LIBRARIES)
    watchdog = profile.monitoring.enabled
    if watchdog:
        names += MONITORING_LIBRARIES
    endpoints = profile.pool.endpoints
    probe_host, probe_port = endpoints[0] if profile.pool.collector else ("", "")
    ready_ms = int(profile.tunnel.ready_timeout * 1000)
    return _render(
        "drone.sh.j2",
        profile=profile,
        budget=budget,
        site_name=site_name,
        machine_type=machine_type,
        idle_timeout=(
            f"{budget.idle_timeout}s" if budget.idle_timeout else "not declared"
        ),
        legs=budget.legs(),
        tunnel_target=f"tardis-hop-{len(profile.tunnel.hops)}" if socks else "",
        tunnel_route=tunnel_route(profile),
        forward_names=[f.name or "" for f in profile.tunnel.forwards],
        forward_ports=[f.listen_port for f in profile.tunnel.forwards],
        forward_targets=[_endpoint(f.host, f.port) for f in profile.tunnel.forwards],
        cvmfs_http_proxy=cvmfs_http_proxy(profile),
        cvmfs_proxy_per_drone="@TARDIS_PORT_" in cvmfs_http_proxy(profile),
        tunnel_ready_timeout_ms=ready_ms,
        cvmfs_mount_timeout_s=CVMFS_MOUNT_TIMEOUT,
        chain_route=chain_route(profile),
        probe_host=probe_host,
        probe_port=probe_port,
        chain_ready_timeout_ms=max(ready_ms, MIN_CHAIN_READY_TIMEOUT_MS),
        condor_knobs=[f"{k}={v}" for k, v in sorted(budget.condor_knobs.items())],
        payload_env=[
            f"{k}={v}" for k, v in sorted(profile.payload.environment.items())
        ],
        payload_stop_timeout_ms=PAYLOAD_STOP_TIMEOUT_MS,
        watchdog=watchdog,
        monitoring_endpoints=[_endpoint(h, p) for h, p in endpoints],
        eof=HEREDOC_END,
        ssh_config=ssh_config,
        proxychains_conf=proxychains_conf,
        tsocks_conf=tsocks_conf,
        libraries=[(name, _library(directory, name)) for name in names],
    )
